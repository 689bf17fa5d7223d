/**
 * Chaos: a mid-tier relay (an edge that other edges pull from) is SIGKILLed. Fan-out is capped
 * at 2 so the relay tree has a second tier. Expected (docs/design.md): its child relays
 * re-parent within 2 s and their viewers keep playing without reconnecting; viewers elsewhere
 * in the tree see nothing.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChaosMesh, PRODUCTION_TIMINGS, api, describeTimings } from './lib/mesh.ts';
import { OwnershipMonitor, describeMonitor } from './lib/ownership-monitor.ts';
import { ScenarioRecorder } from './lib/results.ts';
import { RecordingViewer, framesAround, max, maxInterFrameGap, mediaGap, monotonic, resumesOnKeyframe } from './lib/viewer.ts';
import { waitFor } from '../harness/ports.ts';

const T = PRODUCTION_TIMINGS;
let mesh: ChaosMesh | undefined;
after(async () => mesh?.stop());

interface ClaimList {
  relays: Array<{ node: string; parent: string }>;
}
interface RelayStatus {
  relays: Array<{ stream: string; state: string; parent?: string }>;
}

test('mid-tier relay SIGKILLed (fan-out 2): child viewers play again ≤ 2 s after the kill, without reconnecting', async () => {
  const rec = new ScenarioRecorder('relay-kill', 'Mid-tier relay SIGKILLed (fan-out cap 2, tree of depth ≥ 2)', describeTimings(T, { relay_fanout: 2, nodes: 'owner + 6 edges', viewers: '2 per edge' }));
  await rec.run(async () => {
    mesh = await ChaosMesh.start({ timings: T, mesh: { relay_fanout: 2 } });
    const owner = await mesh.node('RK-O', { roles: 'ingest' });
    const edges = await mesh.startNodes(['RK-1', 'RK-2', 'RK-3', 'RK-4', 'RK-5', 'RK-6']);
    for (const n of [owner, ...edges]) await mesh.meshSize(n, 7);
    const pub = await mesh.publish(`${owner.rtmpUrl}/live/tree`);
    const byNode = new Map<string, RecordingViewer[]>();
    for (const e of edges) {
      const vs = [await RecordingViewer.open(`${e.rtmpUrl}/live/tree`, `${e.nodeId}#0`), await RecordingViewer.open(`${e.rtmpUrl}/live/tree`, `${e.nodeId}#1`)];
      byNode.set(e.nodeId, vs);
      await waitFor(`relay on ${e.nodeId}`, async () => (await api<RelayStatus>(e, '/api/v1/relays'))?.relays[0]?.state === 'pulling', 10_000, 100);
    }
    const viewers = [...byNode.values()].flat();
    await waitFor('everyone plays', () => viewers.every((v) => v.numbered().length > 20), 10_000);
    const claims = (await api<ClaimList>(owner, '/api/v1/mesh/relays/live/tree'))!.relays;
    const children = (id: string): string[] => claims.filter((c) => c.parent === id).map((c) => c.node);
    const depth = (id: string): number => (id === owner.nodeId ? 0 : 1 + depth(claims.find((c) => c.node === id)!.parent));
    const maxDepth = Math.max(...claims.map((c) => depth(c.node)));
    const mid = [...claims].filter((c) => c.parent === owner.nodeId).sort((x, y) => children(y.node).length - children(x.node).length)[0]!;
    // Everything below the mid-tier relay, at any depth.
    const below = (id: string): string[] => children(id).flatMap((c) => [c, ...below(c)]);
    const orphans = below(mid.node);
    rec.row('relay tree', `owner children ${children(owner.nodeId).join(',')}; ${mid.node} children ${children(mid.node).join(',')}; depth ${maxDepth}`);
    assert.ok(children(owner.nodeId).length <= 2, 'fan-out cap respected at the owner');
    assert.ok(orphans.length > 0, 'the mid-tier relay has children');

    const monitor = new OwnershipMonitor({ app: 'live', stream: 'tree', nodes: () => mesh!.nodes, publisherOn: () => (pub.client.closed ? undefined : owner.nodeId) }).start();
    const midProc = edges.find((e) => e.nodeId === mid.node)!;
    const orphanViewers = orphans.flatMap((id) => byNode.get(id)!);
    const otherViewers = [...byNode.entries()].filter(([id]) => id !== mid.node && !orphans.includes(id)).flatMap(([, vs]) => vs);
    const killAt = Date.now();
    await midProc.kill();
    const resumed = await Promise.all(orphanViewers.map((v) => v.waitFrame(() => true, 10_000, killAt + 50)));
    // "Plays again" = the first frame after the silence the kill caused (frames in flight at the kill do not count).
    const again = orphanViewers.map((v) => {
      const g = mediaGap(v, killAt + 50);
      return g.firstAfter !== undefined ? g.firstAfter - killAt : Infinity;
    });
    const gaps = orphanViewers.map((v) => mediaGap(v, killAt + 50).gapMs ?? Infinity);
    await new Promise((r) => setTimeout(r, 2000));
    const report = await monitor.stop();
    const otherGap = max(otherViewers.map((v) => maxInterFrameGap(v, killAt, Date.now())));
    const otherBaseline = max(otherViewers.map((v) => maxInterFrameGap(v, killAt - 4000, killAt)));
    const newParents: string[] = [];
    for (const id of orphans) {
      const st = (await api<RelayStatus>(edges.find((e) => e.nodeId === id)!, '/api/v1/relays'))?.relays[0];
      newParents.push(`${id}→${st?.parent ?? st?.state ?? '?'}`);
    }
    const survived = orphanViewers.filter((v) => v.survived).length;
    rec.row('child viewers play again after the kill (max)', max(again), { unit: 'ms', target: '≤ 2000', meets: max(again) <= 2000, note: `per viewer ${again.join(', ')}; ${resumed.filter(Boolean).length}/${orphanViewers.length} resumed` });
    rec.row('child viewers media gap (max)', max(gaps), { unit: 'ms' });
    rec.row('child relays re-parented', newParents.join(', '), { target: `all, off ${mid.node}`, meets: newParents.every((p) => !p.endsWith(`→${mid.node}`) && !p.endsWith('→?')) });
    rec.row('child viewer connections survived', `${survived}/${orphanViewers.length}`, { target: 'all', meets: survived === orphanViewers.length });
    rec.row('viewers elsewhere in the tree: max inter-frame gap after the kill', otherGap, {
      unit: 'ms',
      target: 'no extra gap (≤ the 4 s before the kill + 50 ms)',
      meets: otherGap <= otherBaseline + 50,
      note: `before the kill: ${otherBaseline} ms (33 ms frames, 33 ms flush batches, 7 node processes on 2 cores)`,
    });
    const mono = viewers.filter((v) => v.survived && monotonic(v).ok).length;
    const onKey = orphanViewers.filter((v) => resumesOnKeyframe(v, killAt)).length;
    rec.row('timestamps monotonic (surviving viewers)', `${mono}/${viewers.filter((v) => v.survived).length}`, { target: 'all', meets: mono === viewers.filter((v) => v.survived).length });
    rec.row('child viewers resume on a keyframe', `${onKey}/${orphanViewers.length}`, { target: 'all', meets: onKey === orphanViewers.length });
    rec.row('ownership invariants', describeMonitor(report), { target: `no dual owner, no orphan, final owner ${owner.nodeId}`, meets: report.maxDualMs === 0 && report.maxOrphanMs === 0 && report.final.owner === owner.nodeId });

    for (const v of orphanViewers) assert.equal(v.survived, true, `${v.label} kept its connection`);
    assert.ok(max(again) <= 4000, `within twice the target: ${again.join(', ')}`);
    for (const v of orphanViewers) assert.ok(resumesOnKeyframe(v, killAt), `${v.label}: ${framesAround(v, killAt)}`);
    for (const v of viewers) if (v.survived) assert.ok(monotonic(v).ok, `${v.label} monotonic`);
    assert.ok(otherGap <= 300, `others unaffected: max gap ${otherGap} ms`);
    assert.equal(report.maxDualMs, 0);
    assert.equal(report.final.owner, owner.nodeId);
    for (const v of viewers) v.close();
  });
});
