/**
 * Someone who can publish on NATS but does not know the mesh secret, against a real mesh: a real
 * nats-server, three node processes, synthetic publishers and RTMP viewers, and a PLAIN NATS client
 * (no mesh secret, no mesh code) as the forger. Each forgery is one that changed the mesh before
 * the control plane was sealed (issue 11 §3): a forged ownership record (the owner evicted its
 * publisher, relays pulled from the forger's URL), heartbeats with a huge capacity (every placement
 * went to the forger), a `bye` (a live node removed), kick/drain/stats RPCs (obeyed, answered).
 * Now each changes nothing. Then the relay pull credential: replayed, shown to another node,
 * expired, or used for a second play, it is refused.
 *
 * Figures are printed as `# …` lines before the assertions, so running this file against an older
 * tree prints the "before" figures too.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { RtmpClient, startSyntheticPublisher, type SyntheticPublisher } from '@meshcast/node/client';
import { decodeAdmissionRequest, encodeAdmissionResponse, encodeBye, encodeHeartbeat, encodeOwnershipRecord, MeshMessageError, type Heartbeat } from '@meshcast/proto';
import { PULL_CREDENTIAL_WINDOW_MS, signCredential } from '../../../services/node/src/mesh/mesh-credential.ts';
import { encodeControlMessage } from '../../../tools/src/meshctl/control-messages.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { freePort, sleep, waitFor } from '../harness/ports.ts';

const SECRET = 'e2e-forgery-secret';
const MESH = { mesh_secret: SECRET, heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };

interface NodeRow {
  id: string;
  state: string;
}
interface Session {
  id: string;
  role: string;
  stream?: string;
}
interface OwnerRow {
  app: string;
  stream: string;
  owner: string;
  epoch: number;
  revision: number;
}

/** A viewer that notes when each frame arrived (for the largest gap). */
interface Viewer {
  client: RtmpClient;
  at: number[];
}
async function viewer(url: string): Promise<Viewer> {
  const v: Viewer = { client: undefined as unknown as RtmpClient, at: [] };
  v.client = await RtmpClient.openPlayer(url, { onFrame: (m) => void (m.type === 9 && v.at.push(Date.now())) });
  return v;
}
function maxGap(v: Viewer, from: number): number {
  const t = v.at.filter((x) => x >= from);
  let gap = t.length ? t[0]! - from : Date.now() - from;
  for (let i = 1; i < t.length; i++) gap = Math.max(gap, t[i]! - t[i - 1]!);
  return Math.max(gap, t.length ? Date.now() - t[t.length - 1]! : 0);
}

/** A TCP listener standing for the forger's RTMP server: counts who connects to it. */
async function forgerListener(): Promise<{ server: Server; url: string; connections: Socket[] }> {
  const port = await freePort('127.0.0.1');
  const connections: Socket[] = [];
  const server = createServer((s) => {
    connections.push(s);
    s.on('error', () => undefined);
  });
  await new Promise<void>((res) => server.listen(port, '127.0.0.1', res));
  return { server, url: `rtmp://127.0.0.1:${port}`, connections };
}

describe('a NATS user without the mesh secret changes nothing', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let a: NodeProcess;
  let b: NodeProcess;
  let c: NodeProcess;
  let forger: Awaited<ReturnType<typeof forgerListener>>;
  const pubs: SyntheticPublisher[] = [];
  const viewers: Viewer[] = [];

  before(async () => {
    nats = await startNatsServer();
    const start = (id: string, roles: string): Promise<NodeProcess> => NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats.url] } }, args: ['--roles', roles] });
    [a, b, c] = await Promise.all([start('FG-A', 'ingest'), start('FG-B', 'playback'), start('FG-C', 'playback')]);
    await waitFor('B sees 3 nodes', async () => (await b.api<{ nodes: NodeRow[] }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 3, 15_000, 100);
    nc = await connect({ servers: nats.url, name: 'forger' });
    forger = await forgerListener();
  });

  after(async () => {
    for (const v of viewers) v.client.close();
    for (const p of pubs) p.stop();
    await nc?.close();
    for (const s of forger?.connections ?? []) s.destroy();
    forger?.server.close();
    await Promise.all([a, b, c].map(async (n) => (n && n.exitCode === undefined ? n.kill() : undefined)));
    for (const n of [a, b, c]) n?.cleanup();
    await nats?.stop();
  });

  /** A plain JetStream KV put (what `nats kv put` does): publish to $KV.<bucket>.<key> and wait for the ack. */
  async function kvPut(bucket: string, key: string, value: Uint8Array): Promise<number> {
    const ack = JSON.parse(new TextDecoder().decode((await nc.request(`$KV.${bucket}.${key}`, value, { timeout: 2000 })).data)) as { seq?: number; error?: { description: string } };
    if (!ack.seq) throw new Error(`KV put refused: ${ack.error?.description ?? 'no ack'}`);
    return ack.seq;
  }
  const forgedRecord = (epoch: number): Uint8Array =>
    encodeOwnershipRecord({ owner: 'evil', rtmp: forger.url, epoch, startedAt: Date.now(), renewedAt: Date.now(), tracks: {} });

  test('a forged ownership record: the owner restores its own and keeps its publisher; no relay pulls from the forger', async () => {
    const pub = await startSyntheticPublisher(`${a.rtmpUrl}/live/forge`);
    pubs.push(pub);
    const vb = await viewer(`${b.rtmpUrl}/live/forge`);
    viewers.push(vb);
    await waitFor('frames on B', () => vb.at.length > 10, 10_000);
    const owner = async (): Promise<OwnerRow | undefined> => (await b.api<{ streams: OwnerRow[] }>('/api/v1/mesh/streams')).streams.find((s) => s.stream === 'forge');
    const before = await waitFor('owner listed', owner, 5000);
    const pubSession = (await a.api<{ sessions: Session[] }>('/api/v1/sessions')).sessions.find((s) => s.role === 'publisher');
    assert.ok(pubSession);

    // One forged write, then how long until the owner's record is back (what every node lists).
    const t0 = Date.now();
    const forgedRev = await kvPut('meshcast-streams', 'live.forge', forgedRecord(before.epoch + 1));
    const restored = await waitFor('the owner\'s record back over the forged revision', async () => {
      const o = await owner();
      return o && o.revision > forgedRev && o.owner === 'FG-A' ? o : undefined;
    }, 8000, 20).catch(() => undefined);
    const restoreMs = Date.now() - t0;
    // Then a forger that keeps writing (every 200 ms for 3 s) while a new viewer joins on C.
    let forgedWrites = 1;
    const joinAt = Date.now();
    const writing = (async () => {
      while (Date.now() - joinAt < 3000) {
        await kvPut('meshcast-streams', 'live.forge', forgedRecord(before.epoch + 1 + forgedWrites)).catch(() => undefined);
        forgedWrites++;
        await sleep(200);
      }
    })();
    const vc = await viewer(`${c.rtmpUrl}/live/forge`);
    viewers.push(vc);
    await writing;
    await sleep(1500);
    const sessionsNow = (await a.api<{ sessions: Session[] }>('/api/v1/sessions')).sessions;
    const after = await owner();
    const gapB = maxGap(vb, t0);
    console.log(
      `# forged ownership record (${forgedWrites} writes): owner's record restored in ${restored ? restoreMs : 'never'} ms; publisher evicted: ${pub.client.closed ? 'yes' : 'no'}; ` +
        `owner after: ${after?.owner} epoch ${after?.epoch} (was ${before.owner} epoch ${before.epoch}); connections to the forger's RTMP URL: ${forger.connections.length}; ` +
        `largest viewer gap on B: ${gapB} ms; frames on C's new viewer: ${vc.at.length}`,
    );
    assert.ok(restored, 'the owner wrote its record back over the forged revision');
    assert.equal(pub.client.closed, false, 'the publisher was not evicted');
    assert.ok(sessionsNow.some((s) => s.id === pubSession.id), 'its session is still on A');
    assert.equal(after?.owner, 'FG-A');
    assert.equal(after?.epoch, before.epoch, 'no new epoch: nothing was taken over');
    assert.equal(forger.connections.length, 0, 'no relay connected to the forger');
    assert.ok(gapB < 1000, `B's viewer kept playing (largest gap ${gapB} ms)`);
    assert.ok(vc.at.length > 10, "C's new viewer plays the real stream");
  });

  test('a forged record for a stream nobody publishes: a viewer elsewhere does not pull from the forger', async () => {
    await kvPut('meshcast-streams', 'live.ghost', forgedRecord(1));
    const listed = (await c.api<{ streams: OwnerRow[] }>('/api/v1/mesh/streams')).streams.some((s) => s.stream === 'ghost');
    const v = await viewer(`${c.rtmpUrl}/live/ghost`).catch(() => undefined);
    if (v) viewers.push(v);
    await sleep(2500);
    console.log(`# forged record of an unpublished stream: listed by the mesh: ${listed ? 'yes' : 'no'}; connections to the forger: ${forger.connections.length}`);
    assert.equal(listed, false, 'the mesh does not list a forged owner');
    assert.equal(forger.connections.length, 0, 'the relay on C did not connect to the forger');
    v?.client.close();
  });

  test('forged heartbeats with a huge capacity: not in the node table, no placement goes to the forger', async () => {
    const hb = (seq: number): Heartbeat => ({
      node: 'evil',
      roles: ['playback', 'ingest'],
      addresses: { rtmp: forger.url, http: 'http://127.0.0.1:9' },
      startedAt: 1,
      capacity: 1_000_000_000,
      viewers: 0,
      publishers: 0,
      egressBps: 0,
      ingressBps: 0,
      cpu: 0,
      streamsOwned: 0,
      relaysHeld: 0,
      draining: false,
      placementsSinceLastHb: 0,
      seq,
      sentAt: Date.now(),
    });
    // The forger answers admission RPCs too: always admitted.
    const admit = nc.subscribe('meshcast.node.evil.rpc.admit', {
      callback: (_e, m) => {
        const req = decodeAdmissionRequest(m.data);
        const requestId = req instanceof MeshMessageError ? 'x' : req.requestId;
        m.respond(encodeAdmissionResponse({ requestId, admitted: true, viewers: 0, capacity: 1_000_000_000 }));
      },
    });
    for (let i = 1; i <= 30; i++) {
      nc.publish('meshcast.node.evil.hb', encodeHeartbeat(hb(i)));
      await sleep(100);
    }
    const table = (await a.api<{ nodes: NodeRow[] }>('/api/v1/mesh/nodes')).nodes;
    let toForger = 0;
    const routes = 20;
    for (let i = 0; i < routes; i++) {
      const r = (await (await fetch(`${a.httpUrl}/api/v1/route/live/placed-${i}`)).json()) as { node: string };
      if (r.node === 'evil') toForger++;
      nc.publish('meshcast.node.evil.hb', encodeHeartbeat(hb(100 + i)));
    }
    admit.unsubscribe();
    console.log(`# forged heartbeats (capacity 1e9): forger in the node table: ${table.some((n) => n.id === 'evil') ? 'yes' : 'no'}; routes to the forger: ${toForger}/${routes}`);
    assert.ok(!table.some((n) => n.id === 'evil'), 'the forger is not a node');
    assert.equal(toForger, 0);
  });

  test('a forged bye removes nothing', async () => {
    const row = (await a.api<{ nodes: Array<NodeRow & { startedAt: number; seq: number }> }>('/api/v1/mesh/nodes')).nodes.find((n) => n.id === 'FG-B');
    assert.ok(row);
    nc.publish('meshcast.node.FG-B.bye', encodeBye({ node: 'FG-B', startedAt: row.startedAt, seq: row.seq + 1, sentAt: Date.now(), reason: 'drain' }));
    await nc.flush();
    let missing = 0;
    const polls = 15;
    for (let i = 0; i < polls; i++) {
      await sleep(200);
      const t = (await a.api<{ nodes: NodeRow[] }>('/api/v1/mesh/nodes')).nodes;
      if (t.find((n) => n.id === 'FG-B')?.state !== 'alive') missing++;
    }
    console.log(`# forged bye of FG-B: polls (every 200 ms for 3 s) where A did not list FG-B alive: ${missing}/${polls}`);
    assert.equal(missing, 0);
  });

  test('forged kick, drain and stats RPCs get no answer and do nothing', async () => {
    pubs.push(await startSyntheticPublisher(`${a.rtmpUrl}/live/rpc`));
    const vb = await viewer(`${b.rtmpUrl}/live/rpc`);
    viewers.push(vb);
    await waitFor('frames on B', () => vb.at.length > 5, 10_000);
    const session = (await b.api<{ sessions: Session[] }>('/api/v1/sessions')).sessions.find((s) => s.role === 'viewer' && s.stream === 'rpc');
    assert.ok(session, "B's viewer session");
    const ask = async (verb: string, msg: Parameters<typeof encodeControlMessage>[0]): Promise<string> => {
      try {
        await nc.request(`meshcast.node.FG-B.rpc.${verb}`, encodeControlMessage(msg), { timeout: 1000 });
        return 'answered';
      } catch (err) {
        return (err as Error).message.includes('503') || /no responders/i.test((err as Error).message) ? 'no responders' : 'no answer';
      }
    };
    const answers = {
      stats: await ask('stats', { op: 'stats', from: 'evil', sentAt: Date.now() }),
      kick: await ask('kick', { op: 'kick', session: session.id, from: 'evil', sentAt: Date.now() }),
      drain: await ask('drain', { op: 'drain', reason: 'forged', from: 'evil', sentAt: Date.now() }),
    };
    await sleep(1000);
    // A node that obeyed the drain may have exited already: that is a figure too.
    const stillThere = await b.api<{ sessions: Session[] }>('/api/v1/sessions').then((r) => r.sessions.some((s) => s.id === session.id), () => false);
    const ready = await fetch(`${b.httpUrl}/readyz`).then((r) => r.status, () => 'no answer (exited)');
    console.log(`# forged RPCs: stats ${answers.stats}, kick ${answers.kick}, drain ${answers.drain}; viewer kicked: ${stillThere ? 'no' : 'yes'}; B /readyz ${ready}`);
    assert.deepEqual(answers, { stats: 'no answer', kick: 'no answer', drain: 'no answer' });
    assert.equal(stillThere, true);
    assert.equal(vb.client.closed, false);
    assert.equal(ready, 200, 'B is not draining');
    assert.equal(b.exitCode, undefined);
  });

  test('a relay pull credential: replayed, shown to another node or expired it is refused; its connection plays one stream once', async () => {
    pubs.push(await startSyntheticPublisher(`${a.rtmpUrl}/live/cred`));
    const own = await waitFor('owner of live/cred', async () => (await c.api<{ streams: OwnerRow[] }>('/api/v1/mesh/streams')).streams.find((s) => s.stream === 'cred'), 5000);
    const pull = { app: 'live', stream: 'cred', owner: own.owner, epoch: own.epoch };
    const open = (n: NodeProcess, cred: object): Promise<RtmpClient> => RtmpClient.connect(`${n.rtmpUrl}/live/cred`, { timeoutMs: 5000, connectExtras: { meshcast: { ...cred } } });
    const outcome = (p: Promise<unknown>): Promise<string> => p.then(() => 'accepted', (err: unknown) => (err instanceof Error ? err.message : String(err)));
    // What a relay of C would show A (the secret is the test's: this stands for one captured on the wire).
    const captured = signCredential(SECRET, 'FG-C', { ...pull, to: 'FG-A' });
    const first = await open(a, captured);
    await first.play('cred', 5000);
    const results = {
      secondPlayOther: await outcome(first.play('ghost', 3000)),
      replay: await outcome(open(a, captured).then((cl) => cl.close())),
      otherNode: await outcome(open(c, signCredential(SECRET, 'FG-C', { ...pull, to: 'FG-A' })).then((cl) => cl.close())),
      expired: await outcome(open(a, signCredential(SECRET, 'FG-C', { ...pull, to: 'FG-A' }, Date.now() - PULL_CREDENTIAL_WINDOW_MS - 1000)).then((cl) => cl.close())),
    };
    first.close();
    console.log(`# relay credential: ${Object.entries(results).map(([k, v]) => `${k}: ${v}`).join('; ')}`);
    assert.match(results.secondPlayOther, /plays one stream, once/);
    assert.match(results.replay, /mesh pull refused: mesh credential already used/);
    assert.match(results.otherNode, /mesh pull refused: mesh credential is for node FG-A, not this one/);
    assert.match(results.expired, /mesh pull refused: mesh credential expired/);
  });
});
