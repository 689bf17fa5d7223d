/**
 * Chaos: the owner node is SIGSTOPped for 8 s (a VM freeze, a stuck process) and continued.
 * Meanwhile its publisher gives up on it (after a last second of frames that sit unread in the
 * paused node's socket) and reconnects to another node, which takes the stream over.
 * Expected: after SIGCONT the old owner fences itself: it never claims the stream again and
 * never serves the stale publisher's buffered frames as owner; its own viewers, and the relays
 * that pulled from it, end up on the new owner.
 *
 * Run twice: with the production lease (10 s, longer than the pause: the old owner learns of the
 * takeover from NATS) and with a 4 s lease (shorter than the pause: the lease expires locally).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChaosMesh, FAST_TIMINGS, PRODUCTION_TIMINGS, api, describeTimings, type MeshTimings } from './lib/mesh.ts';
import { OwnershipMonitor, describeMonitor } from './lib/ownership-monitor.ts';
import { ScenarioRecorder } from './lib/results.ts';
import { RecordingViewer, framesAround, interleaving, interleavingAll, max, monotonic, resumesOnKeyframe } from './lib/viewer.ts';
import { waitFor } from '../harness/ports.ts';
import type { SyntheticPublisher } from '@meshcast/node/client';

interface StreamsApi {
  streams: Array<{ app: string; stream: string; publisher: { session: string; kind: string } | null }>;
}

const PAUSE_MS = 8000;
const meshes: ChaosMesh[] = [];
after(async () => {
  for (const m of meshes) await m.stop();
});

async function scenario(id: string, T: MeshTimings): Promise<void> {
  const rec = new ScenarioRecorder(
    id,
    `Owner node SIGSTOPped for 8 s while its publisher moves; lease ${T.lease_ms / 1000} s ${T.lease_ms > PAUSE_MS ? '>' : '<'} pause`,
    describeTimings(T, { pause: '8 s', nodes: 'owner + other ingest + 1 playback', viewers: '2 on the owner, 2 on the playback node' }),
  );
  await rec.run(async () => {
    const mesh = await ChaosMesh.start({ timings: T });
    meshes.push(mesh);
    const [a, b, c] = await mesh.startNodes([`${id}-A`, `${id}-B`, `${id}-C`]);
    for (const n of [a!, b!, c!]) await mesh.meshSize(n, 3);
    const p1 = await mesh.publish(`${a!.rtmpUrl}/live/frozen`);
    const cur: { p2?: SyntheticPublisher } = {};
    const onA = [await RecordingViewer.open(`${a!.rtmpUrl}/live/frozen`, 'A#0'), await RecordingViewer.open(`${a!.rtmpUrl}/live/frozen`, 'A#1')];
    const onC = [await RecordingViewer.open(`${c!.rtmpUrl}/live/frozen`, 'C#0'), await RecordingViewer.open(`${c!.rtmpUrl}/live/frozen`, 'C#1')];
    const all = [...onA, ...onC];
    await waitFor('everyone plays', () => all.every((v) => v.numbered().length > 30), 10_000);
    const monitor = new OwnershipMonitor({
      app: 'live',
      stream: 'frozen',
      nodes: () => mesh.nodes,
      publisherOn: () => (cur.p2 && !cur.p2.client.closed ? b!.nodeId : !p1.client.closed ? a!.nodeId : undefined),
      timeoutMs: 300,
    }).start();

    const sentBeforePause = p1.sent();
    const stopAt = Date.now();
    a!.signal('SIGSTOP');
    // The publisher keeps sending for a second (into the paused node's socket buffer), then gives up and moves.
    await new Promise((r) => setTimeout(r, 1000));
    const lastOldFrame = 1 + Math.max(...all.flatMap((v) => v.numbered().map((f) => f.n!)));
    const sentToFrozen = p1.sent();
    p1.stop();
    const movedAt = Date.now();
    cur.p2 = await mesh.publish(`${b!.rtmpUrl}/live/frozen`, 300_000);
    const publishedAt = Date.now();
    const onCResumed = await Promise.all(onC.map((v) => v.waitFrame((f) => f.n! >= 300_000, 6000, stopAt)));
    await new Promise((r) => setTimeout(r, Math.max(0, stopAt + PAUSE_MS - Date.now())));

    // Resume the old owner and watch it closely.
    const contAt = Date.now();
    a!.signal('SIGCONT');
    let claimedAfter = 0;
    let rounds = 0;
    const firstAnswers: string[] = [];
    const watchUntil = contAt + 4000;
    while (Date.now() < watchUntil) {
      const st = await api<StreamsApi>(a!, '/api/v1/streams', 2000);
      const kind = st?.streams.find((s) => s.stream === 'frozen')?.publisher?.kind ?? 'none';
      if (firstAnswers.length < 3) firstAnswers.push(`${kind}@${Date.now() - contAt}ms`);
      rounds++;
      if (kind === 'rtmp') claimedAfter++;
      await new Promise((r) => setTimeout(r, 50));
    }
    const aLeases = (await api<{ leases: number }>(a!, '/api/v1/node'))?.leases;
    const report = await monitor.stop();
    // Stale frames: sent by the old publisher while its node was paused (they waited in the node's socket), and
    // received by a viewer after SIGCONT. Frames the node had accepted before the pause and flushes on resume are
    // counted apart (`late`): they were current when the node was still the owner.
    const stale = all.map((v) => v.frames.filter((f) => f.n !== undefined && f.n >= sentBeforePause && f.n < 300_000 && f.at >= contAt).length);
    const late = all.map((v) => v.frames.filter((f) => f.n !== undefined && f.n < sentBeforePause && f.at >= contAt).length);
    const onAResumed = await Promise.all(onA.map((v) => v.waitFrame((f) => f.n! >= 300_000, 6000, contAt)));
    const aReplay = onAResumed.map((f) => (f ? f.at - contAt : Infinity));
    const cReplay = onCResumed.map((f) => (f ? f.at - publishedAt : Infinity));
    const ownersAfterB = report.owners.slice(report.owners.indexOf(b!.nodeId));

    rec.row('frames the publisher sent into the paused node before moving', sentToFrozen - lastOldFrame < 0 ? 0 : sentToFrozen - lastOldFrame, { note: `publisher moved ${movedAt - stopAt} ms into the pause; new publish accepted after ${publishedAt - movedAt} ms` });
    rec.row('after SIGCONT: rounds in which the old owner reported the stale RTMP publisher', `${claimedAfter}/${rounds}`, { target: '0', meets: claimedAfter === 0, note: `first answers: ${firstAnswers.join(', ')}` });
    rec.row('after SIGCONT: stale frames (sent by the old publisher during the pause) delivered to viewers', stale.reduce((x, y) => x + y, 0), {
      target: '0',
      meets: stale.every((x) => x === 0),
      note: `per viewer ${stale.join(', ')}; frames accepted before the pause and flushed on resume: ${late.join(', ')}`,
    });
    rec.row('after SIGCONT: old owner holds leases', aLeases ?? 'no answer', { target: '0', meets: aLeases === 0 });
    rec.row('ownership record never went back to the old owner', report.owners.join('→'), { target: `…→${b!.nodeId}`, meets: !ownersAfterB.includes(a!.nodeId) && report.final.owner === b!.nodeId });
    rec.row('viewers on the playback node play the new publish after (max)', max(cReplay), { unit: 'ms', target: '≤ 2000', meets: max(cReplay) <= 2000, note: `relay re-parented off the paused owner; per viewer ${cReplay.join(', ')}` });
    rec.row("the paused node's own viewers play the new owner's stream after SIGCONT (max)", max(aReplay), { unit: 'ms', note: `survived ${onA.filter((v) => v.survived).length}/${onA.length}` });
    rec.row('ownership invariants', describeMonitor(report), { target: `dual/stale ≤ lease (${T.lease_ms} ms); a paused node does not answer and counts as unknown`, meets: report.maxDualMs <= T.lease_ms && report.maxStaleBeliefMs <= T.lease_ms });
    const mono = all.filter((v) => monotonic(v).ok).length;
    rec.row('timestamps monotonic', `${mono}/${all.length}`, { target: 'all', meets: mono === all.length });
    rec.row('ownership polls that saw two owners', report.dualRounds, { note: `of ${report.rounds} polls; longest stretch ${report.maxDualMs} ms` });
    // Each publisher took the stream with a new ownership epoch: p1's on the paused node, then p2's (the takeover on B).
    const epochs = [p1.publisherId, cur.p2.publisherId];
    const inter = interleavingAll(all, epochs);
    const sawBoth = all.filter((v) => interleaving(v, epochs).publishers >= 2).length;
    rec.row('epoch invariant: frames of the old epoch received after one of the new epoch (violations)', inter.violations, {
      target: '0',
      meets: inter.violations === 0 && inter.unknown === 0,
      note: `per viewer ${inter.perViewer.join(', ')}; viewers that saw both epochs ${sawBoth}/${all.length}; unstamped frames ${inter.unstamped}; frames of no known epoch ${inter.unknown}${inter.first ? `; first: ${inter.first}` : ''}`,
    });

    assert.equal(inter.unstamped, 0, 'every numbered frame carries its publisher stamp');
    assert.equal(inter.unknown, 0, 'every stamped frame is of one of the two epochs');
    assert.equal(inter.violations, 0, `no viewer got the old publisher's frames after the new one's: ${inter.first ?? ''}`);
    assert.equal(claimedAfter, 0, `the old owner never reports the stale publisher after SIGCONT (${firstAnswers.join(', ')})`);
    for (const [i, v] of all.entries()) assert.equal(stale[i], 0, `${v.label} got no stale frames after SIGCONT: ${framesAround(v, contAt, 0, 6)}`);
    assert.equal(aLeases, 0);
    assert.ok(!ownersAfterB.includes(a!.nodeId), `owner history ${report.owners.join('→')}`);
    assert.equal(report.final.owner, b!.nodeId);
    assert.ok(max(cReplay) <= 4000, `playback viewers move to the new owner: ${cReplay.join(', ')}`);
    for (const v of onC) assert.equal(v.survived, true);
    for (const v of onC) assert.ok(resumesOnKeyframe(v, stopAt), `${v.label}: ${framesAround(v, publishedAt)}`);
    for (const v of all) v.close();
  });
}

/** Control case: a pause the publisher sits out (it stays connected): the owner keeps its stream after re-confirming it. */
async function staysScenario(T: MeshTimings): Promise<void> {
  const rec = new ScenarioRecorder('pause-stay', 'Owner node SIGSTOPped for 3 s, publisher stays connected (control case)', describeTimings(T, { pause: '3 s', nodes: 'owner + 1 playback', viewers: '2 on the owner, 2 on the playback node' }));
  await rec.run(async () => {
    const mesh = await ChaosMesh.start({ timings: T });
    meshes.push(mesh);
    const [a, c] = await mesh.startNodes(['PS-A', 'PS-C']);
    for (const n of [a!, c!]) await mesh.meshSize(n, 2);
    const p1 = await mesh.publish(`${a!.rtmpUrl}/live/stay`);
    const all = [
      await RecordingViewer.open(`${a!.rtmpUrl}/live/stay`, 'A#0'),
      await RecordingViewer.open(`${a!.rtmpUrl}/live/stay`, 'A#1'),
      await RecordingViewer.open(`${c!.rtmpUrl}/live/stay`, 'C#0'),
      await RecordingViewer.open(`${c!.rtmpUrl}/live/stay`, 'C#1'),
    ];
    await waitFor('everyone plays', () => all.every((v) => v.numbered().length > 30), 10_000);
    const stopAt = Date.now();
    a!.signal('SIGSTOP');
    await new Promise((r) => setTimeout(r, 3000));
    const contAt = Date.now();
    a!.signal('SIGCONT');
    const resumed = await Promise.all(all.map((v) => v.waitFrame(() => true, 8000, contAt + 1)));
    await new Promise((r) => setTimeout(r, 1500));
    const aLeases = (await api<{ leases: number }>(a!, '/api/v1/node'))?.leases;
    const again = resumed.map((f) => (f ? f.at - contAt : Infinity));
    rec.row('publisher kept its connection and the owner its lease', `${!p1.client.closed} / leases ${aLeases}`, { target: 'true / 1', meets: !p1.client.closed && aLeases === 1 });
    rec.row('viewers play again after SIGCONT (max)', max(again), { unit: 'ms', note: `per viewer ${again.join(', ')}; frames that waited in the socket during the pause are dropped until ownership is re-confirmed, then play resumes at a keyframe` });
    const onKey = all.filter((v) => resumesOnKeyframe(v, stopAt)).length;
    const mono = all.filter((v) => monotonic(v).ok).length;
    rec.row('viewers resume on a keyframe / monotonic', `${onKey}/${all.length} / ${mono}/${all.length}`, { target: 'all / all', meets: onKey === all.length && mono === all.length });
    assert.equal(p1.client.closed, false, 'a publisher that sat out the pause keeps publishing');
    assert.equal(aLeases, 1);
    assert.ok(max(again) < 5000, `viewers resume: ${again.join(', ')}`);
    for (const v of all) assert.ok(resumesOnKeyframe(v, stopAt), `${v.label}: ${framesAround(v, contAt)}`);
    for (const v of all) v.close();
  });
}

describe('owner node SIGSTOPped for 8 s while its publisher moves', () => {
  test('production lease 10 s (longer than the pause)', () => scenario('pause-lease10', PRODUCTION_TIMINGS));
  test('lease 4 s (shorter than the pause)', () => scenario('pause-lease4', FAST_TIMINGS));
  test('control: a 3 s pause the publisher sits out (production timings)', () => staysScenario(PRODUCTION_TIMINGS));
});
