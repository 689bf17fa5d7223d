/**
 * Chaos: a loaded playback node is drained with SIGTERM. Expected (docs/design.md): it stops
 * admitting, says `bye` (the others drop it from their tables at once, without waiting for the
 * dead timeout), its viewers' connections close cleanly (and they can re-route elsewhere), it
 * exits with code 0; viewers on other nodes are unaffected.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { RtmpClient } from '@meshcast/node/client';
import { ChaosMesh, PRODUCTION_TIMINGS, api, describeTimings } from './lib/mesh.ts';
import { OwnershipMonitor, describeMonitor } from './lib/ownership-monitor.ts';
import { ScenarioRecorder } from './lib/results.ts';
import { RecordingViewer, max, maxInterFrameGap, percentile } from './lib/viewer.ts';
import { RerouteHerd } from './lib/reroute-herd.ts';
import { waitFor } from '../harness/ports.ts';

const T = PRODUCTION_TIMINGS;
const LOAD = 60;
let mesh: ChaosMesh | undefined;
let herd: RerouteHerd | undefined;
after(async () => {
  await herd?.close();
  await mesh?.stop();
});

interface NodesApi {
  nodes: Array<{ id: string; state: string }>;
}

test('SIGTERM drain of a loaded playback node: stops admitting, bye, viewers closed cleanly, exit 0, others unaffected', async () => {
  const rec = new ScenarioRecorder('drain', 'SIGTERM drain of a playback node under load', describeTimings(T, { nodes: '1 ingest + 2 playback', viewers: `${LOAD} on the drained node, 10 on the other` }));
  await rec.run(async () => {
    mesh = await ChaosMesh.start({ timings: T });
    const owner = await mesh.node('DR-O', { roles: 'ingest' });
    const [p, q] = await mesh.startNodes(['DR-P', 'DR-Q']);
    for (const n of [owner, p!, q!]) await mesh.meshSize(n, 3);
    const pub = await mesh.publish(`${owner.rtmpUrl}/live/drain`);
    const onP: RecordingViewer[] = [];
    for (let i = 0; i < LOAD; i += 10) onP.push(...(await Promise.all(Array.from({ length: 10 }, (_, k) => RecordingViewer.open(`${p!.rtmpUrl}/live/drain`, `DR-P#${i + k}`, { light: true })))));
    const onQ = await Promise.all(Array.from({ length: 10 }, (_, k) => RecordingViewer.open(`${q!.rtmpUrl}/live/drain`, `DR-Q#${k}`, { light: true })));
    await waitFor('everyone plays', () => [...onP, ...onQ].every((v) => v.numbered().length > 20), 15_000);
    const monitor = new OwnershipMonitor({ app: 'live', stream: 'drain', nodes: () => mesh!.nodes, publisherOn: () => (pub.client.closed ? undefined : owner.nodeId) }).start();

    // The drained node's viewers re-route through DR-Q's route API when their connection closes.
    // They are other machines in real life, so they re-route in a worker thread: 60 handshakes
    // and GOP bursts in this event loop would delay the arrivals judged on DR-Q's viewers.
    herd = new RerouteHerd();
    const rerouted = onP.map(
      (v) =>
        new Promise<number>((resolve) => {
          v.client.once('close', () => {
            herd!.reroute(q!.httpUrl, 'live', 'drain', `${v.label}→`).then(resolve, () => resolve(Infinity));
          });
        }),
    );
    const exited = new Promise<number | null>((resolve) => p!.proc.once('exit', (code) => resolve(code)));
    const termAt = Date.now();
    p!.signal('SIGTERM');
    // Bye: how soon do the others drop DR-P?
    const dropped = Promise.all(
      [owner, q!].map((n) =>
        waitFor(`${n.nodeId} drops DR-P`, async () => {
          const t = await api<NodesApi>(n, '/api/v1/mesh/nodes', 500);
          return t && !t.nodes.some((x) => x.id === 'DR-P') ? Date.now() : undefined;
        }, 10_000, 20).then((t) => t - termAt, () => Infinity),
      ),
    );
    // Admission right after SIGTERM: a new viewer must be refused.
    await new Promise((r) => setTimeout(r, 100));
    let admission: string;
    try {
      const c = await RtmpClient.openPlayer(`${p!.rtmpUrl}/live/drain`, { timeoutMs: 2000, maxRedirects: 0 });
      admission = 'ADMITTED';
      c.close();
    } catch (err) {
      admission = `refused: ${(err as Error).message}`;
    }
    const code = await exited;
    const exitMs = Date.now() - termAt;
    const dropMs = await dropped;
    const replay = await Promise.all(rerouted);
    await new Promise((r) => setTimeout(r, 1000));
    const report = await monitor.stop();
    const closeMs = onP.map((v) => (v.closedAt ?? Infinity) - termAt);
    const unclean = onP.filter((v) => /ECONNRESET|EPIPE|protocol|undecodable/i.test(v.closeReason ?? ''));
    const statuses = [...new Set(onP.flatMap((v) => v.statuses.filter((s) => s.at >= termAt).map((s) => s.code)))];
    const routeAfter = await api<{ node: string }>(q!, '/api/v1/route/live/drain');
    const qGap = max(onQ.map((v) => maxInterFrameGap(v, termAt, Date.now())));
    const qBaseline = max(onQ.map((v) => maxInterFrameGap(v, termAt - 3000, termAt)));

    rec.row('new viewer 100 ms after SIGTERM', admission, { target: 'refused', meets: admission.startsWith('refused') });
    rec.row('others drop the node from their tables after (DR-O, DR-Q)', dropMs.join(', '), { unit: 'ms', target: `at once (≪ dead ${T.dead_ms} ms)`, meets: max(dropMs) < T.suspect_ms });
    rec.row("drained node's viewers: connection closed after (max)", max(closeMs), { unit: 'ms', note: `p50 ${percentile(closeMs, 50)} ms` });
    rec.row("drained node's viewers: closed cleanly (FIN, no reset)", `${onP.length - unclean.length}/${onP.length}`, { target: 'all', meets: unclean.length === 0, note: `statuses seen before the close: ${statuses.join(', ') || 'none'}${unclean.length ? `; unclean: ${unclean[0]!.closeReason}` : ''}` });
    rec.row("drained node's viewers: play again via DR-Q's route API after asking (max)", max(replay), { unit: 'ms', note: `p50 ${percentile(replay, 50)} ms` });
    rec.row('exit code / time to exit', `${code} / ${exitMs} ms`, { target: '0', meets: code === 0 });
    rec.row('route API after the drain answers', routeAfter?.node ?? 'no answer', { target: 'not DR-P', meets: routeAfter !== undefined && routeAfter.node !== 'DR-P' });
    rec.row('viewers on the other node: max inter-frame gap during the drain', qGap, { unit: 'ms', target: 'no extra gap', meets: qGap <= qBaseline + 50, note: `before: ${qBaseline} ms; connections survived ${onQ.filter((v) => v.survived).length}/${onQ.length}` });
    rec.row('ownership invariants', describeMonitor(report), { target: 'no dual owner, no orphan', meets: report.maxDualMs === 0 && report.maxOrphanMs === 0 });

    assert.ok(admission.startsWith('refused'), admission);
    assert.equal(code, 0, 'exit code 0');
    assert.ok(max(dropMs) < T.suspect_ms, `dropped from tables at once: ${dropMs.join(', ')}`);
    assert.equal(unclean.length, 0, 'viewers closed cleanly');
    assert.ok(max(replay) < 4000, 'drained viewers can play elsewhere');
    for (const v of onQ) assert.equal(v.survived, true);
    assert.ok(qGap <= Math.max(300, qBaseline + 100), `others unaffected: ${qGap} ms`);
    assert.notEqual(routeAfter?.node, 'DR-P');
    for (const v of onQ) v.close();
  });
});
