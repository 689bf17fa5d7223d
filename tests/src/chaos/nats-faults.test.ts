/**
 * Chaos: the control plane fails under a live stream.
 *
 * 1. One server of a 3-server JetStream cluster is SIGKILLed (the one the owner node is
 *    connected to). Nodes were given all three URLs, KV buckets and the event stream have 3
 *    replicas (`mesh.nats_replicas: 3`). Expected (docs/design.md): no media interruption at all on
 *    existing relays; control (route answers, ownership lookups, lease renewals) consistent
 *    again within 5 s.
 * 2. Then NATS becomes wholly unreachable for 10 s (every remaining server SIGSTOPped) and
 *    comes back (SIGCONT). Expected: local publish and play keep working meanwhile (the
 *    existing publisher stays, a new publish and new local viewers work); when NATS returns the
 *    nodes rejoin and re-announce their streams.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChaosMesh, PRODUCTION_TIMINGS, api, apiStatus, describeTimings, natsServerOf } from './lib/mesh.ts';
import { OwnershipMonitor, describeMonitor } from './lib/ownership-monitor.ts';
import { ScenarioRecorder } from './lib/results.ts';
import { RecordingViewer, max, maxInterFrameGap, monotonic, numberingHoles } from './lib/viewer.ts';
import { waitFor } from '../harness/ports.ts';
import type { NodeProcess } from '../harness/node-process.ts';
import type { SyntheticPublisher } from '@meshcast/node/client';
import { connectNatsBus, type Bus, type KvBucket } from '@meshcast/mesh';

const T = PRODUCTION_TIMINGS;
let mesh: ChaosMesh | undefined;
after(async () => mesh?.stop());

interface OwnersApi {
  streams: Array<{ app: string; stream: string; owner: string; revision: number }>;
}
interface NodesApi {
  nodes: Array<{ id: string; state: string }>;
}

async function ownerOf(n: NodeProcess, stream: string, timeoutMs = 1000): Promise<{ owner: string; revision: number } | null | undefined> {
  const o = await api<OwnersApi>(n, '/api/v1/mesh/streams', timeoutMs);
  if (!o) return undefined;
  const s = o.streams.find((x) => x.app === 'live' && x.stream === stream);
  return s ? { owner: s.owner, revision: s.revision } : null;
}

test('NATS faults: one of three servers killed (no media gap, control back ≤ 5 s); NATS wholly unreachable for 10 s (local publish/play keep working, nodes re-announce)', async () => {
  const rec = new ScenarioRecorder(
    'nats-faults',
    'One NATS server of 3 SIGKILLed; then NATS wholly unreachable for 10 s (SIGSTOP/SIGCONT)',
    describeTimings(T, { nats: '3-server JetStream cluster (2.9), nodes given all 3 URLs, nats_replicas 3, client ping 5 s', nodes: '4 (ingest+playback; NF-D without viewers until the fault)' }),
  );
  await rec.run(async () => {
    mesh = await ChaosMesh.start({ timings: T, cluster: true, mesh: { nats_replicas: 3 } });
    const cluster = mesh.cluster!;
    const [a, b, c, d] = await mesh.startNodes(['NF-A', 'NF-B', 'NF-C', 'NF-D']);
    // A probe of our own: when does JetStream accept a KV write again (independent of the nodes)?
    const probeBus: Bus = await connectNatsBus({ servers: cluster.urls, name: 'chaos-probe', replicas: 3, requestTimeoutMs: 1000 });
    mesh.onClose(() => void probeBus.close());
    const probeKv: KvBucket = await probeBus.kv('chaos-probe', { maxAgeMs: 60_000, history: 1 });
    const kvWritableAfter = async (since: number, limitMs: number): Promise<number | undefined> => {
      while (Date.now() - since < limitMs) {
        const ok = await probeKv.put('probe', new TextEncoder().encode(String(Date.now())), { timeoutMs: 1000 }).then(() => true, () => false);
        if (ok) return Date.now() - since;
        await new Promise((r) => setTimeout(r, 100));
      }
      return undefined;
    };
    for (const n of [a!, b!, c!, d!]) await mesh.meshSize(n, 4);
    let pub: SyntheticPublisher = await mesh.publish(`${a!.rtmpUrl}/live/nc`);
    let pubOn: string | undefined = a!.nodeId;
    const local = [await RecordingViewer.open(`${a!.rtmpUrl}/live/nc`, 'NF-A#local0'), await RecordingViewer.open(`${a!.rtmpUrl}/live/nc`, 'NF-A#local1')];
    const relayed: RecordingViewer[] = [];
    for (const n of [b!, c!]) for (let i = 0; i < 3; i++) relayed.push(await RecordingViewer.open(`${n.rtmpUrl}/live/nc`, `${n.nodeId}#${i}`));
    const all = [...local, ...relayed];
    await waitFor('everyone plays', () => all.every((v) => v.numbered().length > 30), 15_000);

    // Replicas as configured?
    const jsz = await cluster.servers[0]!.jsz('accounts=true&streams=true&config=true');
    const streams = jsz.account_details?.flatMap((x) => x.stream_detail ?? []) ?? [];
    const replicas = streams.map((s) => `${s.name}=${String(s.config?.['num_replicas'] ?? '?')}`).join(', ');
    rec.row('JetStream replicas of the mesh buckets and event stream', replicas, { target: 'all 3', meets: streams.length > 0 && streams.every((s) => s.config?.['num_replicas'] === 3) });

    const monitor = new OwnershipMonitor({ app: 'live', stream: 'nc', nodes: () => mesh!.nodes, publisherOn: () => (pub.client.closed ? undefined : pubOn) }).start();

    // ---------------------------------------------------------------- 1. one server killed
    const found = await natsServerOf(cluster.servers, a!.nodeId);
    const victim = found ?? cluster.servers[0]!;
    const before = await ownerOf(a!, 'nc');
    assert.equal(before?.owner, a!.nodeId);
    const baselineGap = max(all.map((v) => maxInterFrameGap(v, Date.now() - 4000, Date.now())));
    const nodes = [a!, b!, c!];
    // Control checks, each on every node: the route API answers, and the ownership record
    // (/api/v1/mesh/streams, a KV listing) names the owner.
    let renewedAt: number | undefined;
    const controlCheck = async (): Promise<{ route: string[]; owner: string[] }> => {
      const out = { route: [] as string[], owner: [] as string[] };
      await Promise.all(
        nodes.map(async (n) => {
          const [route, owner] = await Promise.all([apiStatus<{ node: string }>(n, '/api/v1/route/live/nc', 1500), ownerOf(n, 'nc', 1500)]);
          if (route.status !== 200 || !route.body?.node) out.route.push(`${n.nodeId} route ${route.status || 'timeout'}`);
          if (owner?.owner !== a!.nodeId) out.owner.push(`${n.nodeId} ${owner === undefined ? 'listing timed out' : `owner ${owner?.owner ?? 'none'}`}`);
          if (owner && before && owner.revision > before.revision) renewedAt ??= Date.now();
        }),
      );
      return out;
    };
    // Background: the same checks for 3 s before the fault.
    let baselineRoute = 0;
    let baselineOwner = 0;
    let baselineRounds = 0;
    for (const t0 = Date.now(); Date.now() - t0 < 3000; ) {
      baselineRounds++;
      const r = await controlCheck();
      if (r.route.length) baselineRoute++;
      if (r.owner.length) baselineOwner++;
      await new Promise((res) => setTimeout(res, 150));
    }
    renewedAt = undefined;
    const leaderJsz = await cluster.servers[0]!.jsz('accounts=true&streams=true');
    const streamsLeader = leaderJsz.account_details?.flatMap((x) => x.stream_detail ?? []).find((x) => x.name === 'KV_meshcast-streams')?.cluster?.leader;
    const killAt = Date.now();
    await victim.kill('SIGKILL');
    const jsAfterKill = kvWritableAfter(killAt, 9000);
    // A viewer arriving on a node that does not relay the stream yet: needs the ownership lookup to start a relay.
    const cold = (async () => {
      await new Promise((res) => setTimeout(res, 500));
      const t0 = Date.now();
      const v = await RecordingViewer.open(`${d!.rtmpUrl}/live/nc`, 'NF-D#cold');
      const f = await v.waitFrame(() => true, 8000);
      v.close();
      return f ? f.at - t0 : Infinity;
    })();
    let lastRouteBad = killAt;
    let lastOwnerBad = killAt;
    const routeProblems = new Set<string>();
    const ownerProblems = new Set<string>();
    let ownerBadRounds = 0;
    let rounds = 0;
    while (Date.now() - killAt < 9000) {
      const t = Date.now();
      const r = await controlCheck();
      rounds++;
      if (r.route.length) {
        lastRouteBad = Date.now();
        for (const x of r.route) routeProblems.add(x);
      }
      if (r.owner.length) {
        lastOwnerBad = Date.now();
        ownerBadRounds++;
        for (const x of r.owner) ownerProblems.add(x);
      }
      await new Promise((res) => setTimeout(res, Math.max(0, 150 - (Date.now() - t))));
    }
    const coldTtff = await cold;
    const writableAfterKill = await jsAfterKill;
    rec.row('control: JetStream accepts a KV write after the kill (probe client, R3 bucket)', writableAfterKill ?? 'not within 9 s', {
      unit: writableAfterKill !== undefined ? 'ms' : undefined,
      // This measures nats-server, not meshcast: its RAFT election after a leader dies takes 4-9 s in 2.9.
      // What meshcast must do meanwhile (media, routes, lookups, the lease) is judged by the rows below.
      target: '≤ 9000 (nats-server 2.9 RAFT election 4-9 s)',
      meets: writableAfterKill !== undefined && writableAfterKill <= 9000,
      note: 'when the killed server led a stream, nats-server elects a new leader first; lease renewals retry every 500 ms meanwhile (lease 10 s)',
    });
    const mediaGapAfterKill = max(all.map((v) => maxInterFrameGap(v, killAt, Date.now())));
    const holes = all.map((v) => numberingHoles(v, killAt, Date.now()));
    const skipped = holes.reduce((s2, h) => s2 + h.skipped, 0);
    const aLeases = (await api<{ leases: number }>(a!, '/api/v1/node'))?.leases;
    rec.row('killed NATS server', `${victim.name} (the owner NF-A was connected to it: ${found ? 'yes' : 'no'}; it led KV_meshcast-streams: ${streamsLeader === victim.name ? 'yes' : `no (${streamsLeader ?? '?'})`})`);
    rec.row('media: max inter-frame gap over all viewers after the kill', mediaGapAfterKill, { unit: 'ms', target: 'no interruption (≈ before the kill)', meets: mediaGapAfterKill <= baselineGap + 50 && skipped === 0, note: `before: ${baselineGap} ms; frames skipped: ${skipped}` });
    rec.row('control: route answers failing after the kill for', lastRouteBad - killAt, {
      unit: 'ms',
      target: '≤ 5000',
      meets: lastRouteBad - killAt <= 5000,
      note: `${routeProblems.size ? [...routeProblems].slice(0, 4).join('; ') : 'never failed'}; before the kill ${baselineRoute}/${baselineRounds} rounds failed`,
    });
    rec.row('control: ownership lease renewed (CAS on the KV) after the kill', renewedAt !== undefined ? renewedAt - killAt : 'not seen', { unit: renewedAt !== undefined ? 'ms' : undefined, note: `renew every ${T.renew_ms} ms` });
    rec.row('control: ownership lookup by a cold node (new viewer on NF-D 0.5 s after the kill, time to first frame)', coldTtff, { unit: 'ms', target: 'works', meets: coldTtff < 5000 });
    rec.row('control: ownership listing (/api/v1/mesh/streams) inconsistent after the kill for', lastOwnerBad - killAt, {
      unit: 'ms',
      target: '≤ 5000',
      meets: lastOwnerBad - killAt <= 5000,
      note: `${ownerBadRounds}/${rounds} rounds failed (${[...ownerProblems].slice(0, 3).join('; ') || 'none'}); before the kill ${baselineOwner}/${baselineRounds}. Keys are listed with one stream-info request (nats.js kv.keys() could stall 30 s here; see docs/chaos.md)`,
    });
    rec.row('publisher kept its connection and the lease', `${!pub.client.closed} / leases ${aLeases}`, { target: 'true / leases 1', meets: !pub.client.closed && aLeases === 1 });
    assert.equal(pub.client.closed, false, 'publisher survived the NATS server kill');
    for (const v of all) assert.equal(v.survived, true, `${v.label} survived`);
    assert.ok(skipped === 0, 'no frame lost');
    assert.ok(lastRouteBad - killAt <= 10_000, `route answers back within twice the 5 s target (${lastRouteBad - killAt} ms)`);
    assert.ok(coldTtff < 10_000, 'a new relay can start after the kill');

    // ---------------------------------------------------------------- 2. NATS wholly unreachable
    const running = cluster.servers.filter((s) => s.running);
    const stopAt = Date.now();
    let pubClosedAt: number | undefined;
    pub.client.once('close', () => (pubClosedAt = Date.now()));
    for (const s of running) process.kill(s.pid, 'SIGSTOP');
    let localPublishMs: number | string = 'failed';
    let localPub: SyntheticPublisher | undefined;
    let localViewer: RecordingViewer | undefined;
    let newLocalViewerOnA: RecordingViewer | undefined;
    let err2: string | undefined;
    try {
      await new Promise((r) => setTimeout(r, 2000));
      const t0 = Date.now();
      localPub = await mesh.publish(`${b!.rtmpUrl}/live/local`, 500_000);
      localPublishMs = Date.now() - t0;
      localViewer = await RecordingViewer.open(`${b!.rtmpUrl}/live/local`, 'NF-B#local-new');
      newLocalViewerOnA = await RecordingViewer.open(`${a!.rtmpUrl}/live/nc`, 'NF-A#new-during-outage');
    } catch (err) {
      err2 = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, Math.max(0, stopAt + 10_000 - Date.now())));
    const contAt = Date.now();
    for (const s of running) process.kill(s.pid, 'SIGCONT');
    const jsWritable = kvWritableAfter(contAt, 30_000);
    const outageGapLocal = max(local.map((v) => maxInterFrameGap(v, stopAt, contAt)));
    const outageGapRelayed = max(relayed.map((v) => maxInterFrameGap(v, stopAt, contAt)));
    const pubSurvived = !pub.client.closed;
    rec.row('outage: existing publisher kept its connection', pubSurvived, { target: 'true', meets: pubSurvived, note: pubSurvived ? '' : `closed ${pubClosedAt !== undefined ? pubClosedAt - stopAt : '?'} ms into the outage: ${pub.client.reason ?? '?'}` });
    // "No interruption": within 100 ms of the gap before the outage. The nodes' reconnect loops and the
    // 7 processes on 2 cores add scheduling jitter (a run measured 150 ms against 100 ms before); a
    // player buffers a second or more, and an interruption caused by the outage would last seconds.
    const OUTAGE_JITTER_MS = 100;
    rec.row('outage: local viewers on the owner, max inter-frame gap', outageGapLocal, { unit: 'ms', target: 'no interruption', meets: outageGapLocal <= baselineGap + OUTAGE_JITTER_MS });
    rec.row('outage: relayed viewers on other nodes, max inter-frame gap', outageGapRelayed, { unit: 'ms', target: 'no interruption (media does not ride NATS)', meets: outageGapRelayed <= baselineGap + OUTAGE_JITTER_MS });
    rec.row('outage: a new publish on another node accepted after', localPublishMs, { unit: typeof localPublishMs === 'number' ? 'ms' : undefined, target: 'works', meets: typeof localPublishMs === 'number', note: err2 ?? '' });
    const lvFrames = localViewer ? await localViewer.waitFrame(() => true, 3000) : undefined;
    const nvFrames = newLocalViewerOnA ? await newLocalViewerOnA.waitFrame(() => true, 3000) : undefined;
    rec.row('outage: new local viewers play (new stream on NF-B / existing stream on NF-A)', `${lvFrames ? 'yes' : 'no'} / ${nvFrames ? 'yes' : 'no'}`, { target: 'yes / yes', meets: !!lvFrames && !!nvFrames });

    // Rejoin and re-announce: each node holds its lease again (its own API), the others see it (KV listing), tables agree.
    let reannounced: number | undefined;
    let seenByOthers: number | undefined;
    let rejoined: number | undefined;
    // Three independent pollers, so a slow KV listing does not delay the other two figures.
    await Promise.all([
      waitFor('leases held again', async () => {
        const [la, lb] = await Promise.all([api<{ leases: number }>(a!, '/api/v1/node'), api<{ leases: number }>(b!, '/api/v1/node')]);
        if (la?.leases === 1 && (!localPub || lb?.leases === 1)) reannounced ??= Date.now();
        return reannounced;
      }, 30_000, 100).catch(() => undefined),
      waitFor('owners listed elsewhere', async () => {
        const [o1, o2] = await Promise.all([ownerOf(c!, 'nc'), ownerOf(c!, 'local')]);
        if (o1?.owner === a!.nodeId && (!localPub || o2?.owner === b!.nodeId)) seenByOthers ??= Date.now();
        return seenByOthers;
      }, 30_000, 100).catch(() => undefined),
      waitFor('members alive', async () => {
        const tables = await Promise.all([a!, b!, c!, d!].map((n) => api<NodesApi>(n, '/api/v1/mesh/nodes')));
        if (tables.every((t) => t && t.nodes.filter((x) => x.state === 'alive').length === 4)) rejoined ??= Date.now();
        return rejoined;
      }, 30_000, 100).catch(() => undefined),
    ]);
    const since = (t: number | undefined): number | string => (t !== undefined ? t - contAt : 'never (30 s)');
    const writable = await jsWritable;
    rec.row('after NATS returns: JetStream accepts a KV write again (probe client, R3 bucket)', writable ?? 'never (30 s)', { unit: writable !== undefined ? 'ms' : undefined, note: 'after a whole-cluster freeze the raft groups elect leaders again; the nodes cannot announce before this' });
    rec.row('after NATS returns: every node sees 4 alive members', since(rejoined), { unit: rejoined !== undefined ? 'ms' : undefined, target: 'within 30 s', meets: rejoined !== undefined });
    rec.row('after NATS returns: both publishing nodes hold their ownership lease again', since(reannounced), { unit: reannounced !== undefined ? 'ms' : undefined, target: 'within 30 s', meets: reannounced !== undefined, note: 're-announce retried with the shared jittered backoff (250 ms → 5 s)' });
    rec.row('after NATS returns: another node lists both owners', since(seenByOthers), { unit: seenByOthers !== undefined ? 'ms' : undefined, target: 'within 30 s', meets: seenByOthers !== undefined, note: 'KV listing after JetStream is writable again' });
    // The stream published during the outage is reachable from the rest of the mesh.
    let crossPlay: number | string = 'no';
    if (localPub) {
      const t0 = Date.now();
      const v = await RecordingViewer.open(`${c!.rtmpUrl}/live/local`, 'NF-C#local').catch(() => undefined);
      const f = await v?.waitFrame(() => true, 5000);
      crossPlay = f ? f.at - t0 : 'no frames in 5 s';
      v?.close();
    }
    rec.row('after NATS returns: the stream published during the outage plays on another node', crossPlay, { unit: typeof crossPlay === 'number' ? 'ms' : undefined, target: 'plays within 5 s', meets: typeof crossPlay === 'number' });

    if (pub.client.closed) {
      // The owner dropped its publisher: reconnect it (what an encoder would do) so the invariants below are about the mesh, not the test.
      pub = await mesh.publish(`${a!.rtmpUrl}/live/nc`, 900_000);
      pubOn = a!.nodeId;
    }
    await new Promise((r) => setTimeout(r, 1000));
    const report = await monitor.stop();
    // The monitor's last look may have hit a stalled KV listing: read the record until it answers.
    const finalOwner = await waitFor('final owner readable', async () => (await ownerOf(c!, 'nc', 3000))?.owner, 20_000, 200).catch(() => undefined);
    const mono = all.filter((v) => monotonic(v).ok).length;
    rec.row('timestamps monotonic', `${mono}/${all.length}`, { target: 'all', meets: mono === all.length });
    rec.row('ownership invariants (live/nc)', describeMonitor(report), { target: `dual ≤ lease, final owner NF-A`, meets: report.maxDualMs <= T.lease_ms && finalOwner === a!.nodeId, note: `final owner ${finalOwner ?? 'unreadable'}` });

    assert.ok(pubSurvived, 'the existing publisher keeps publishing while NATS is unreachable');
    assert.ok(typeof localPublishMs === 'number', `a new publish works while NATS is unreachable (${err2 ?? ''})`);
    assert.ok(lvFrames && nvFrames, 'new local viewers play while NATS is unreachable');
    assert.ok(outageGapLocal <= 1000 && outageGapRelayed <= 1000, 'media keeps flowing during the outage');
    assert.ok(reannounced !== undefined && rejoined !== undefined, 'nodes rejoin and re-announce');
    assert.ok(typeof crossPlay === 'number', 'the stream published during the outage plays elsewhere afterwards');
    assert.ok(report.maxDualMs <= T.lease_ms);
    assert.equal(finalOwner, a!.nodeId);
    for (const v of [...all, localViewer, newLocalViewerOnA]) v?.close();
    localPub?.stop();
  });
});
