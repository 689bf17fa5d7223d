/**
 * The mesh control plane against real nats-server (2.9 on Debian, works on
 * newer): the same scenarios as mesh/test on the in-process bus, over NATS,
 * with two (or more) bus connections acting as nodes.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { encodeHeartbeat, encodeOwnershipRecord, type Heartbeat } from '@meshcast/proto';
import {
  BusNoRespondersError,
  BusTimeoutError,
  chooseRelayParent,
  connectNatsBus,
  KvKeyExistsError,
  KvRevisionMismatchError,
  Membership,
  MeshEvents,
  OwnershipRegistry,
  RelayClaims,
  StreamNameError,
  StreamOwnedError,
  type Bus,
  type BusStatus,
  type KvEntry,
  type LeaseLostReason,
  type LoadSample,
  type NatsBusOptions,
  type OwnerChange,
} from '@meshcast/mesh';
import { startNatsCluster, startNatsServer, type NatsServer } from '../harness/nats.ts';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    try {
      if (await cond()) return Date.now() - t0;
    } catch {
      // not yet
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}
function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, matching: (re: RegExp) => lines.filter((l) => re.test(JSON.stringify(l))) };
}

let server: NatsServer;
const buses: Bus[] = [];
let prefixN = 0;
/** Every test uses its own subject prefix, hence its own KV buckets and event stream. */
const freshPrefix = () => `it${++prefixN}x${Math.random().toString(36).slice(2, 6)}`;

async function bus(name: string, prefix: string, extra: Partial<NatsBusOptions> = {}): Promise<Bus> {
  const b = await connectNatsBus({ servers: server.url, name, prefix, pingIntervalMs: 1000, ...extra });
  buses.push(b);
  return b;
}

before(async () => {
  server = await startNatsServer();
});

after(async () => {
  await Promise.all(buses.map((b) => b.close().catch(() => undefined)));
  await server?.stop();
});

test('harness: a JetStream-enabled nats-server on an ephemeral port', async () => {
  assert.match(server.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
  assert.notEqual(server.port, 4222);
  const j = await server.jsz();
  assert.ok(j.config?.store_dir?.startsWith(server.dir), 'JetStream stores in the server’s own temp dir');
});

test('bus over NATS: wildcards, order, request/reply, no responders, timeout', async () => {
  const p = freshPrefix();
  const a = await bus('a', p);
  const b = await bus('b', p);
  const star: string[] = [];
  const gt: string[] = [];
  b.subscribe(`${p}.node.*.hb`, (m) => star.push(dec(m.data)));
  b.subscribe(`${p}.>`, (m) => gt.push(m.subject));
  b.subscribe(`${p}.node.b.rpc.echo`, (m) => m.respond(enc(`echo:${dec(m.data)}`)));
  b.subscribe(`${p}.node.b.rpc.silent`, () => undefined);
  await sleep(100); // let the subscriptions reach the server
  for (let i = 0; i < 20; i++) a.publish(`${p}.node.n1.hb`, enc(String(i)));
  a.publish(`${p}.x.y.z`, enc('deep'));
  await waitFor(() => gt.length === 21, 2000, 'deliveries');
  assert.deepStrictEqual(star, Array.from({ length: 20 }, (_, i) => String(i)));
  assert.equal(dec(await a.request(`${p}.node.b.rpc.echo`, enc('hi'), { timeoutMs: 1000 })), 'echo:hi');
  await assert.rejects(a.request(`${p}.node.b.rpc.silent`, enc('x'), { timeoutMs: 200 }), BusTimeoutError);
  await assert.rejects(a.request(`${p}-elsewhere.node.nobody.rpc.echo`, enc('x'), { timeoutMs: 1000 }), BusNoRespondersError);
  assert.equal(a.status, 'connected');
});

test('KV over NATS: create-if-absent, CAS, delete by revision, keys; max_age expiry without a watch event (2.9)', async () => {
  const p = freshPrefix();
  const a = await (await bus('a', p)).kv(`${p}-kv`, { maxAgeMs: 1500 });
  const b = await (await bus('b', p)).kv(`${p}-kv`, { maxAgeMs: 1500 });
  assert.equal(a.maxAgeMs, 1500);
  const seen: KvEntry[] = [];
  const w = await b.watch((e) => seen.push(e));
  const r1 = await a.create('live.cam', enc('1'));
  await assert.rejects(b.create('live.cam', enc('2')), KvKeyExistsError);
  await assert.rejects(b.update('live.cam', enc('2'), r1 + 100), KvRevisionMismatchError);
  const r2 = await b.update('live.cam', enc('3'), r1);
  assert.ok(r2 > r1);
  await assert.rejects(a.delete('live.cam', { revision: r1 }), KvRevisionMismatchError);
  await a.put('live.other', enc('o'));
  assert.deepStrictEqual((await b.keys('live.*')).sort(), ['live.cam', 'live.other']);
  await a.delete('live.other');
  assert.deepStrictEqual(await b.keys('live.*'), ['live.cam']);
  const r3 = await a.create('live.other', enc('again'));
  assert.ok(r3 > r2, 'create after delete works, revisions are bucket-wide');
  await waitFor(() => seen.length === 5, 2000, 'watch events');
  assert.deepStrictEqual(
    seen.map((e) => `${e.operation}:${e.key}`),
    ['PUT:live.cam', 'PUT:live.cam', 'PUT:live.other', 'DEL:live.other', 'PUT:live.other'],
  );
  const written = Date.now();
  const expiredAfter = await waitFor(async () => (await a.get('live.cam')) === null, 5000, 'expiry by max_age');
  assert.ok(expiredAfter + (Date.now() - written - expiredAfter) >= 1000, 'not before max age');
  await sleep(300);
  assert.equal(seen.length, 5, 'expiry by max_age produces no watch event');
  await assert.rejects(a.update('live.cam', enc('late'), r2), KvRevisionMismatchError);
  assert.ok((await b.create('live.cam', enc('new'))) > r3);
  w.stop();
});

const T = { heartbeatMs: 100, suspectMs: 500, deadMs: 900 };
const load = (): LoadSample => ({ viewers: 1, publishers: 0, egressBps: 0, ingressBps: 0, cpu: 0, streamsOwned: 0, relaysHeld: 0, draining: false });

test('membership over NATS: convergence, garbage ignored and logged once, bye, silent node declared dead', async () => {
  const p = freshPrefix();
  const cap = captureLogger();
  const mk = async (id: string) => {
    const b = await bus(id, p);
    const events = new MeshEvents(b);
    const m = new Membership({ bus: b, self: { id, roles: ['playback'], addresses: { rtmp: `rtmp://${id}`, http: '' }, capacity: 10 }, load, events, logger: cap.logger, ...T });
    await m.start();
    return { id, b, m, events };
  };
  const n1 = await mk('n1');
  const n2 = await mk('n2');
  const n3 = await mk('n3');
  await waitFor(() => [n1, n2, n3].every((n) => n.m.table().map((v) => `${v.id}:${v.state}`).join() === 'n1:alive,n2:alive,n3:alive'), 3000, 'convergence');
  const evil = await bus('evil', p);
  const hb = { node: 'n1', roles: ['playback'], addresses: { rtmp: '', http: '' }, startedAt: 1, capacity: 1, viewers: 0, publishers: 0, egressBps: 0, ingressBps: 0, cpu: 0, streamsOwned: 0, relaysHeld: 0, draining: false, placementsSinceLastHb: 0, seq: 1, sentAt: 0 } satisfies Heartbeat;
  for (let i = 0; i < 30; i++) {
    evil.publish(`${p}.node.evil.hb`, enc('garbage'));
    evil.publish(`${p}.node.evil.bye`, new Uint8Array([0xc1, 0xc1]));
    evil.publish(`${p}.node.mallory.hb`, encodeHeartbeat(hb));
    evil.publish(`${p}.events.nodeDead`, enc('junk'));
    evil.publish(`${p}.anything.else`, new Uint8Array(512));
  }
  await sleep(300);
  for (const n of [n1, n2, n3]) assert.equal(n.m.table().length, 3);
  assert.equal(cap.matching(/ignoring undecodable heartbeat/).length, 3, 'once per (peer, reason) per node');
  assert.equal(cap.matching(/ignoring undecodable bye/).length, 3);
  assert.equal(cap.matching(/node id differs from its subject/).length, 3);
  // bye: removed at once
  const t0 = Date.now();
  await n3.m.stop({ reason: 'drain' });
  await waitFor(() => !n1.m.get('n3') && !n2.m.get('n3'), 2000, 'bye');
  assert.ok(Date.now() - t0 < T.suspectMs);
  // silent (its connection dies): suspect, then dead, one nodeDead by the lowest live id
  await sleep(T.deadMs); // past the start-up window in which deaths are not reported
  await n2.m.stop({ bye: false });
  await n2.b.close();
  const deadAfter = await waitFor(() => n1.m.get('n2')?.state === 'dead', 3000, 'n2 dead');
  assert.ok(deadAfter >= T.deadMs - 2 * T.heartbeatMs, `dead after ${deadAfter} ms`);
  await waitFor(async () => (await n1.events.read({ limit: 50 })).some((r) => r.event.type === 'nodeDead'), 2000, 'nodeDead event');
  const ev = await n1.events.read({ limit: 50 });
  assert.deepStrictEqual(ev.filter((r) => r.event.type === 'nodeDead').map((r) => [r.event.type === 'nodeDead' && r.event.node, r.event.type === 'nodeDead' && r.event.reportedBy]), [['n2', 'n1']]);
  assert.ok(ev.some((r) => r.event.type === 'nodeLeft' && r.event.node === 'n3'));
  assert.equal(ev.filter((r) => r.event.type === 'nodeJoined').length, 3);
  await n1.m.stop();
});

const O = { maxAgeMs: 2000, renewMs: 500 };

test('ownership over NATS: create, renew, reject duplicate, takeover fences the old owner at once', async () => {
  const p = freshPrefix();
  const ba = await bus('n1', p);
  const bb = await bus('n2', p);
  const bc = await bus('n3', p);
  const a = new OwnershipRegistry({ bus: ba, nodeId: 'n1', events: new MeshEvents(ba), ...O });
  const b = new OwnershipRegistry({ bus: bb, nodeId: 'n2', ...O });
  const c = new OwnershipRegistry({ bus: bc, nodeId: 'n3', ...O });
  const changes: OwnerChange[] = [];
  c.watch((ch) => changes.push(ch));
  await c.start();
  const la = await a.acquire('live', 'cam', { rtmp: 'rtmp://n1' }, { takeover: false });
  assert.equal(la.epoch, 1);
  assert.equal((await c.lookup('live', 'cam'))?.record.owner, 'n1');
  await sleep(O.maxAgeMs + 500);
  assert.ok(la.held, 'renewals keep it past the bucket max age');
  assert.ok(la.revision > la.acquiredRevision);
  assert.equal((await c.lookup('live', 'cam'))?.record.owner, 'n1');
  await assert.rejects(b.acquire('live', 'cam', { rtmp: 'rtmp://n2' }, { takeover: false }), StreamOwnedError);
  let lost: LeaseLostReason | undefined;
  let lostAt = 0;
  la.onLost((r) => {
    lost = r;
    lostAt = Date.now();
  });
  const t0 = Date.now();
  const lb = await b.acquire('live', 'cam', { rtmp: 'rtmp://n2' }, { takeover: true });
  assert.equal(lb.epoch, 2);
  assert.ok(lb.acquiredRevision > la.revision);
  await waitFor(() => lost !== undefined, 2000, 'old owner fenced');
  assert.ok(['SUPERSEDED', 'CAS_FAILED'].includes(lost!.code));
  assert.ok(lostAt - t0 < O.renewMs + 300, `fenced ${lostAt - t0} ms after the takeover`);
  await waitFor(() => changes.some((ch) => ch.kind === 'owner' && ch.record?.owner === 'n2'), 2000, 'watch sees the new owner');
  assert.deepStrictEqual(changes.filter((ch) => ch.kind === 'owner').map((ch) => [ch.record?.owner, ch.record?.epoch]), [['n1', 1], ['n2', 2]]);
  await lb.release();
  await waitFor(() => changes.some((ch) => ch.kind === 'gone' && ch.reason === 'deleted'), 2000, 'release seen');
  assert.equal(await c.lookup('live', 'cam'), null);
  await Promise.all([a.close(), b.close(), c.close()]);
});

test('ownership over NATS: when the owner’s connection dies, bucket max_age expires the lease and another node publishes without takeover', async () => {
  const p = freshPrefix();
  const ba = await bus('n1', p);
  const bb = await bus('n2', p);
  const a = new OwnershipRegistry({ bus: ba, nodeId: 'n1', ...O });
  const b = new OwnershipRegistry({ bus: bb, nodeId: 'n2', ...O });
  const gone: OwnerChange[] = [];
  b.watch((ch) => {
    if (ch.kind === 'gone') gone.push(ch);
  });
  await b.start();
  const la = await a.acquire('live', 'cam', { rtmp: 'rtmp://n1' }, { takeover: false });
  let lost: LeaseLostReason | undefined;
  let lostAt = 0;
  la.onLost((r) => {
    lost = r;
    lostAt = Date.now();
  });
  await sleep(O.renewMs + 100);
  const statuses: BusStatus[] = [];
  ba.onStatus((s) => statuses.push(s));
  const killedAt = Date.now();
  await ba.close(); // the owner's NATS connection is gone; it can no longer renew
  assert.deepStrictEqual(statuses, ['closed']);
  await assert.rejects(b.acquire('live', 'cam', { rtmp: 'rtmp://n2' }, { takeover: false }), StreamOwnedError);
  // no delete marker arrives on 2.9: watchers age the silent record out by its server timestamp
  const goneAfter = await waitFor(() => gone.some((g) => g.reason === 'expired' && g.previous?.owner === 'n1'), O.maxAgeMs + 2000, 'expired');
  assert.ok(goneAfter >= O.maxAgeMs - O.renewMs - 200, `reported gone ${goneAfter} ms after the owner died`);
  // the server's bucket max_age removes the record itself
  const kvB = await bb.kv(`${p}-streams`, { maxAgeMs: O.maxAgeMs });
  await waitFor(async () => (await kvB.get('live.cam')) === null, O.maxAgeMs + 2000, 'server-side expiry');
  const freeAfter = Date.now() - killedAt;
  assert.ok(freeAfter <= O.maxAgeMs + 1500, `expired ${freeAfter} ms after the owner died`);
  assert.ok(freeAfter >= O.maxAgeMs - O.renewMs - 200, `not before its last renewal aged out (${freeAfter} ms)`);
  const lb = await b.acquire('live', 'cam', { rtmp: 'rtmp://n2' }, { takeover: false });
  assert.equal(lb.epoch, 1, 'created afresh: the key was gone');
  assert.ok(lb.acquiredRevision > la.acquiredRevision);
  assert.equal(lost?.code, 'EXPIRED_LOCALLY');
  assert.ok(lostAt > 0 && lostAt <= killedAt + freeAfter, 'old owner fenced itself no later than the key expired');
  assert.ok(lb.held);
  await b.close();
  await a.close();
});

test('relay claims over NATS + parent choice from live claims', async () => {
  const p = freshPrefix();
  const ids = ['e1', 'e2', 'e3', 'e4'];
  const nodes = await Promise.all(ids.map(async (id) => ({ id, relays: new RelayClaims({ bus: await bus(id, p), nodeId: id, ...O }) })));
  const owner = 'origin';
  const alive = new Set(ids);
  for (const n of nodes) {
    const claims = (await n.relays.list('live', 'cam')).map((c) => c.claim);
    const parent = chooseRelayParent({ streamToken: 'live.cam', selfId: n.id, owner, claims, alive, fanout: 2 }) ?? owner;
    await n.relays.claim('live', 'cam', { parent, rtmp: `rtmp://${n.id}` });
  }
  const claims = await nodes[0]!.relays.list('live', 'cam');
  assert.equal(claims.length, 4);
  const kids = new Map<string, number>();
  for (const c of claims) kids.set(c.claim.parent, (kids.get(c.claim.parent) ?? 0) + 1);
  assert.equal(kids.get(owner), 2, 'owner takes F = 2 direct children');
  assert.ok([...kids.values()].every((k) => k <= 2));
  await sleep(O.maxAgeMs + 300);
  assert.equal((await nodes[3]!.relays.list('live', 'cam')).length, 4, 'claims renewed');
  await Promise.all(nodes.map((n) => n.relays.close()));
  assert.equal((await nodes[0]!.relays.list('live', 'cam')).length, 0, 'released');
});

test('events log on JetStream: stream kept 24 h, typed append/read/follow, junk skipped', async () => {
  const p = freshPrefix();
  const ba = await bus('a', p);
  const bb = await bus('b', p);
  const cap = captureLogger();
  const a = new MeshEvents(ba);
  const b = new MeshEvents(bb, cap.logger);
  const followed: string[] = [];
  const s1 = await a.append({ type: 'published', at: Date.now(), app: 'live', stream: '直播', node: 'n1' });
  const f = await b.follow((r) => followed.push(r.event.type));
  await ba.events.append('published', enc('junk'));
  await a.append({ type: 'relayStarted', at: Date.now(), app: 'live', stream: '直播', node: 'e1', parent: 'n1' });
  await a.append({ type: 'ownershipMoved', at: Date.now(), app: 'live', stream: '直播', from: 'n1', to: 'n2', epoch: 2, revision: 9 });
  await waitFor(() => followed.length === 2, 3000, 'follow');
  assert.deepStrictEqual(followed, ['relayStarted', 'ownershipMoved']);
  const all = await b.read({ limit: 10 });
  assert.deepStrictEqual(all.map((r) => r.event.type), ['published', 'relayStarted', 'ownershipMoved']);
  assert.equal(all[0]!.subject, `${p}.events.published`);
  assert.deepStrictEqual((await b.read({ since: s1, limit: 1 })).map((r) => r.event.type), ['relayStarted']);
  assert.equal(cap.matching(/ignoring undecodable mesh event/).length, 1);
  f.stop();
  const j = await server.jsz('accounts=true&streams=true&config=true');
  const streams = (j.account_details ?? []).flatMap((acc) => acc.stream_detail ?? []);
  const ev = streams.find((s) => s.name === `${p.toUpperCase()}_EVENTS`);
  assert.ok(ev, 'event stream exists');
  assert.equal(ev.config?.['max_age'], 24 * 3600 * 1e9);
  assert.deepStrictEqual(ev.config?.['subjects'], [`${p}.events.>`]);
});

test('weird stream keys and garbage records over NATS', async () => {
  const p = freshPrefix();
  const ba = await bus('n1', p);
  const cap = captureLogger();
  const reg = new OwnershipRegistry({ bus: ba, nodeId: 'n1', logger: cap.logger, ...O });
  const names = ['a.b', '*', '>', 'with space', '直播'];
  for (const s of names) await reg.acquire('live', s, { rtmp: '' }, { takeover: false });
  assert.deepStrictEqual((await reg.list()).map((i) => i.stream).sort(), [...names].sort());
  await assert.rejects(reg.acquire('live', 'k'.repeat(1024), { rtmp: '' }, { takeover: false }), StreamNameError);
  const kv = await ba.kv(`${p}-streams`, { maxAgeMs: O.maxAgeMs });
  assert.deepStrictEqual((await kv.keys()).sort(), ['live.=2A', 'live.=3E', 'live.=E7=9B=B4=E6=92=AD', 'live.a=2Eb', 'live.with=20space']);
  await kv.put('live.junk', enc('garbage'));
  await kv.put('live.fake', encodeOwnershipRecord({ owner: 'x', rtmp: '', epoch: 1, startedAt: 0, renewedAt: 0, tracks: {} }).subarray(0, 5));
  assert.equal(await reg.lookup('live', 'junk'), null);
  assert.equal((await reg.list()).length, names.length);
  assert.ok(cap.matching(/undecodable ownership record/).length >= 2);
  const l = await reg.acquire('live', 'junk', { rtmp: '' }, { takeover: false });
  assert.ok(l.held, 'garbage record counts as free');
  await reg.close();
});

test('NATS outage: the node notices, fences its leases, stays alive to itself; when NATS returns it reconnects and re-announces', async () => {
  const own = await startNatsServer();
  let again: NatsServer | undefined;
  const local: Bus[] = [];
  try {
    const p = freshPrefix();
    const mkb = async (name: string) => {
      const b = await connectNatsBus({ servers: own.url, name, prefix: p, pingIntervalMs: 500, reconnectTimeWaitMs: 200 });
      local.push(b);
      return b;
    };
    const ba = await mkb('n1');
    const bb = await mkb('n2');
    const mk = (b: Bus, id: string) =>
      new Membership({ bus: b, self: { id, roles: ['ingest', 'playback'], addresses: { rtmp: '', http: '' }, capacity: 10 }, load, ...T });
    const m1 = mk(ba, 'n1');
    const m2 = mk(bb, 'n2');
    await m1.start();
    await m2.start();
    await waitFor(() => m1.aliveIds().size === 2 && m2.aliveIds().size === 2, 3000, 'convergence');
    const reg = new OwnershipRegistry({ bus: ba, nodeId: 'n1', ...O });
    await reg.start(); // the watch runs, as on a node
    const lease = await reg.acquire('live', 'cam', { rtmp: '' }, { takeover: false });
    let lost: LeaseLostReason | undefined;
    lease.onLost((r) => {
      lost = r;
    });
    const statuses: BusStatus[] = [];
    ba.onStatus((s) => statuses.push(s));
    const downAt = Date.now();
    await own.kill('SIGKILL');
    await waitFor(() => ba.status !== 'connected', 3000, 'disconnect noticed');
    // Cut off, the registry answers from its watch's copy, as the listing does (records there still age out).
    const seen = await reg.lookup('live', 'cam');
    assert.equal(seen?.record.owner, 'n1');
    assert.equal(seen?.from, 'watch', 'the answer says it came from the watch, not the bucket');
    await waitFor(() => lost !== undefined, O.maxAgeMs + 1000, 'self-fence');
    assert.equal(lost?.code, 'EXPIRED_LOCALLY');
    assert.ok(Date.now() - downAt <= O.maxAgeMs + 500);
    await waitFor(() => m1.get('n2')?.state === 'dead', 3000, 'peer dead while cut off');
    assert.equal(m1.get('n1')?.state, 'alive', 'a node never declares itself dead');
    // NATS comes back on the same port with the same store
    again = await startNatsServer({ port: own.port, dir: own.dir });
    await waitFor(() => ba.status === 'connected' && bb.status === 'connected', 5000, 'reconnect');
    assert.deepStrictEqual([statuses[0], statuses[statuses.length - 1]], ['disconnected', 'connected']);
    await waitFor(() => m1.get('n2')?.state === 'alive' && m2.get('n1')?.state === 'alive', 3000, 're-announced');
    // the KV survived the restart; the fenced stream is free again (expired or stale)
    const l2 = await reg.acquire('live', 'cam', { rtmp: '' }, { takeover: false });
    assert.ok(l2.acquiredRevision > lease.acquiredRevision, 'revisions continue: the bucket data survived');
    await m1.stop();
    await m2.stop();
    await reg.close();
  } finally {
    await Promise.all(local.map((b) => b.close().catch(() => undefined)));
    await again?.stop();
    await own.stop();
  }
});

interface ClusterSetup {
  prefix: string;
  streamLeader: string;
  mk(name: string, servers: string[]): Promise<Bus>;
}

/** Start a 3-server cluster, create the R3 streams bucket, find its stream leader. */
async function withCluster(fn: (cluster: Awaited<ReturnType<typeof startNatsCluster>>, c: ClusterSetup) => Promise<void>): Promise<void> {
  const cluster = await startNatsCluster(3);
  const local: Bus[] = [];
  try {
    const leader = await cluster.waitForJetStreamLeader();
    assert.ok(cluster.servers.some((s) => s.name === leader), 'metadata leader is one of ours');
    const prefix = freshPrefix();
    const mk = async (name: string, servers: string[]) => {
      const b = await connectNatsBus({ servers, name, prefix, replicas: 3, pingIntervalMs: 1000, reconnectTimeWaitMs: 250 });
      local.push(b);
      return b;
    };
    const setupBus = await mk('setup', cluster.urls);
    const setupReg = new OwnershipRegistry({ bus: setupBus, nodeId: 'setup' });
    assert.equal(await setupReg.lookup('live', 'none'), null); // creates the R3 bucket
    let streamLeader = '';
    await waitFor(async () => {
      const j = await cluster.servers[0]!.jsz('accounts=true&streams=true');
      const s = (j.account_details ?? []).flatMap((a) => a.stream_detail ?? []).find((x) => x.name === `KV_${prefix}-streams`);
      streamLeader = s?.cluster?.leader ?? '';
      return streamLeader !== '' && (s?.cluster?.replicas?.length ?? 0) === 2;
    }, 5000, 'bucket stream leader and replicas');
    await fn(cluster, { prefix, streamLeader, mk });
    await setupReg.close();
  } finally {
    await Promise.all(local.map((b) => b.close().catch(() => undefined)));
    await cluster.stop();
  }
}

/** Resolves once the registry's ownership watch has delivered live/cam's owner (the watch's first values arrive asynchronously). */
function watchHasOwner(watcher: OwnershipRegistry): Promise<void> {
  return new Promise((resolve) => {
    const off = watcher.watch((c) => {
      if (c.kind === 'owner' && c.app === 'live' && c.stream === 'cam') {
        off();
        resolve();
      }
    });
  });
}

/** A watcher's ownership listing right after a NATS server died names the owner within its 1 s budget; returns where each row came from. */
async function listsOwnerWithinBudget(watcher: OwnershipRegistry, when: string): Promise<string[]> {
  const t0 = Date.now();
  const listed = await watcher.list();
  const listMs = Date.now() - t0;
  console.log(`cluster: ownership listing ${when} answered in ${listMs} ms from ${listed.map((i) => i.from).join(',') || 'nothing'}`);
  assert.deepStrictEqual(listed.map((i) => `${i.app}/${i.stream}@${i.record.owner}`), ['live/cam@owner']);
  assert.ok(listMs < 1600, `listing answered within its budget (${listMs} ms)`);
  return listed.map((i) => i.from);
}

test('3-server JetStream cluster: SIGKILL the server a node is connected to — KV works again within 5 s, lease survives', async () => {
  await withCluster(async (cluster, { prefix, streamLeader, mk }) => {
    // the owner is connected to exactly one server (it learns the others by gossip); that server dies
    const victim = cluster.servers.find((s) => s.name !== streamLeader)!;
    const survivor = cluster.servers.find((s) => s !== victim)!;
    const ownerBus = await mk('owner', [victim.url]);
    const watcherBus = await mk('watcher', [survivor.url]);
    const owner = new OwnershipRegistry({ bus: ownerBus, nodeId: 'owner' });
    const watcher = new OwnershipRegistry({ bus: watcherBus, nodeId: 'watcher' });
    const lease = await owner.acquire('live', 'cam', { rtmp: 'rtmp://owner' }, { takeover: false });
    let lost: LeaseLostReason | undefined;
    lease.onLost((r) => {
      lost = r;
    });
    const statuses: BusStatus[] = [];
    ownerBus.onStatus((st) => statuses.push(st));
    const revBefore = lease.revision;
    const kvOwner = await ownerBus.kv(`${prefix}-streams`, { maxAgeMs: 10_000 });
    assert.equal((await watcher.lookup('live', 'cam'))?.record.owner, 'owner');
    await watchHasOwner(watcher); // the copy a listing falls back on
    const killedAt = Date.now();
    await victim.kill('SIGKILL');
    await listsOwnerWithinBudget(watcher, 'after a non-leader died');
    await waitFor(async () => {
      await kvOwner.put('probe.owner', enc(String(Date.now())), { timeoutMs: 1000 });
      return true;
    }, 5000, 'owner-side KV write after the kill');
    await waitFor(async () => (await watcher.lookup('live', 'cam'))?.record.owner === 'owner', 5000, 'watcher-side read');
    await assert.rejects(watcher.acquire('live', 'cam', { rtmp: '' }, { takeover: false }), StreamOwnedError);
    const other = await watcher.acquire('live', 'other', { rtmp: '' }, { takeover: false });
    const recovered = Date.now() - killedAt;
    console.log(`cluster: owner's server killed; control plane usable again after ${recovered} ms`);
    assert.ok(recovered < 5000, `usable again ${recovered} ms after the kill`);
    assert.ok(statuses.includes('disconnected') && statuses[statuses.length - 1] === 'connected', `statuses ${statuses.join(',')}`);
    await waitFor(() => lease.revision > revBefore, 8000, 'a renewal after the kill');
    assert.equal(lost, undefined, 'lease not lost');
    await other.release();
    await Promise.all([owner.close(), watcher.close()]);
  });
});

test('3-server JetStream cluster: SIGKILL the KV stream leader — KV works again after the RAFT election; a 15 s lease survives', async () => {
  await withCluster(async (cluster, { prefix, streamLeader, mk }) => {
    const victim = cluster.servers.find((s) => s.name === streamLeader)!;
    const survivor = cluster.servers.find((s) => s !== victim)!;
    const ownerBus = await mk('owner', [victim.url]);
    const watcherBus = await mk('watcher', [survivor.url]);
    // nats-server 2.9 elects a new stream leader 4–9 s after the old one stops heart-beating,
    // so a lease must outlive that: 15 s max age, renew every 3 s (retries every 500 ms while failing)
    const owner = new OwnershipRegistry({ bus: ownerBus, nodeId: 'owner', maxAgeMs: 15_000, renewMs: 3000 });
    const watcher = new OwnershipRegistry({ bus: watcherBus, nodeId: 'watcher', maxAgeMs: 15_000, renewMs: 3000 });
    const lease = await owner.acquire('live', 'cam', { rtmp: 'rtmp://owner' }, { takeover: false });
    let lost: LeaseLostReason | undefined;
    lease.onLost((r) => {
      lost = r;
    });
    const revBefore = lease.revision;
    const kvWatcher = await watcherBus.kv(`${prefix}-streams`, { maxAgeMs: 15_000 });
    assert.equal((await watcher.lookup('live', 'cam'))?.record.owner, 'owner');
    await watchHasOwner(watcher); // the copy a listing falls back on
    const killedAt = Date.now();
    await victim.kill('SIGKILL');
    // No stream leader now, so bucket reads time out: the listing answers from the watch.
    const from = await listsOwnerWithinBudget(watcher, 'during the stream leader election');
    assert.deepStrictEqual(from, ['watch']);
    await waitFor(async () => {
      await kvWatcher.put('probe.watcher', enc(String(Date.now())), { timeoutMs: 1000 });
      return true;
    }, 12_000, 'KV write after the stream leader died');
    const recovered = Date.now() - killedAt;
    console.log(`cluster: KV stream leader killed; KV writable again after ${recovered} ms (2.9 RAFT election timeout 4-9 s)`);
    assert.ok(recovered < 12_000);
    await waitFor(() => lease.revision > revBefore, 5000, 'owner renewal after the election');
    assert.equal(lost, undefined, 'lease not lost');
    assert.equal((await watcher.lookup('live', 'cam'))?.record.owner, 'owner');
    await Promise.all([owner.close(), watcher.close()]);
  });
});
