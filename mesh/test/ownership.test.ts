import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { decodeOwnershipRecord, encodeOwnershipRecord } from '@meshcast/proto';
import {
  encodeStreamToken,
  MemoryBusNetwork,
  MeshEvents,
  OwnershipRegistry,
  StreamNameError,
  StreamOwnedError,
  type LeaseLostReason,
  type OwnerChange,
} from '../src/index.ts';
import { captureLogger, enc, sleep, waitFor } from './helpers.ts';

const T = { maxAgeMs: 400, renewMs: 100 };

function setup(t: TestContext, n = 5) {
  const net = new MemoryBusNetwork();
  const nodes = Array.from({ length: n }, (_, i) => {
    const id = `n${i + 1}`;
    const bus = net.connect(id);
    const events = new MeshEvents(bus);
    const reg = new OwnershipRegistry({ bus, nodeId: id, events, ...T });
    return { id, bus, reg, events };
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await Promise.all(nodes.map((x) => x.reg.close()));
    await net.close();
  };
  t.after(close);
  return { net, nodes, close };
}

const rec = (id: string) => ({ rtmp: `rtmp://${id}:1935`, tracks: { video: { codec: 'avc1', width: 1280, height: 720 } } });

test('acquire creates the record; renewals keep it alive past max age; lookup/list see it', async (t) => {
  const { nodes, close } = setup(t, 2);
  const [a, b] = [nodes[0]!, nodes[1]!];
  const lease = await a.reg.acquire('live', 'cam1', rec('n1'), { takeover: false });
  assert.equal(lease.epoch, 1);
  assert.equal(lease.key, 'live.cam1');
  assert.equal(lease.revision, lease.acquiredRevision);
  const info = await b.reg.lookup('live', 'cam1');
  assert.equal(info?.record.owner, 'n1');
  assert.equal(info?.record.rtmp, 'rtmp://n1:1935');
  assert.equal(info?.revision, lease.acquiredRevision);
  assert.deepStrictEqual(info?.record.tracks, { video: { codec: 'avc1', width: 1280, height: 720 } });
  await sleep(T.maxAgeMs * 2);
  assert.ok(lease.held, 'renewed, still held');
  assert.ok(lease.revision > lease.acquiredRevision, 'renewals move the revision');
  const later = await b.reg.lookup('live', 'cam1');
  assert.equal(later?.record.owner, 'n1');
  assert.ok((later?.record.renewedAt ?? 0) > (info?.record.renewedAt ?? 0));
  assert.deepStrictEqual((await b.reg.list()).map((i) => `${i.app}/${i.stream}@${i.record.owner}`), ['live/cam1@n1']);
  await lease.updateTracks({ audio: { codec: 'mp4a', sampleRate: 48000, channels: 2 } });
  assert.deepStrictEqual((await b.reg.lookup('live', 'cam1'))?.record.tracks, { audio: { codec: 'mp4a', sampleRate: 48000, channels: 2 } });
  await close();
});

test('takeover:false on an owned stream throws StreamOwnedError (also for the same node)', async (t) => {
  const { nodes, close } = setup(t, 2);
  const lease = await nodes[0]!.reg.acquire('live', 'cam1', rec('n1'), { takeover: false });
  await assert.rejects(
    nodes[1]!.reg.acquire('live', 'cam1', rec('n2'), { takeover: false }),
    (e: unknown) => e instanceof StreamOwnedError && e.code === 'STREAM_OWNED' && e.owner === 'n1' && /already being published on node n1/.test(e.message),
  );
  await assert.rejects(nodes[0]!.reg.acquire('live', 'cam1', rec('n1'), { takeover: false }), StreamOwnedError);
  assert.ok(lease.held, 'a refused duplicate does not disturb the owner');
  await close();
});

test('takeover: new epoch and larger revision; the old owner is fenced at once; watchers and the event log see the move', async (t) => {
  const { nodes, close } = setup(t, 3);
  const [a, b, c] = [nodes[0]!, nodes[1]!, nodes[2]!];
  const changes: OwnerChange[] = [];
  c.reg.watch((ch) => changes.push(ch));
  await c.reg.start();
  const la = await a.reg.acquire('live', 'cam1', rec('n1'), { takeover: false });
  let lostAt = 0;
  let reason: LeaseLostReason | undefined;
  la.onLost((r) => {
    lostAt = Date.now();
    reason = r;
  });
  await waitFor(() => changes.length === 1);
  const t0 = Date.now();
  const lb = await b.reg.acquire('live', 'cam1', rec('n2'), { takeover: true });
  assert.equal(lb.epoch, 2);
  assert.ok(lb.acquiredRevision > la.acquiredRevision, 'fencing token grows');
  await waitFor(() => reason !== undefined, 1000, 'old owner fenced');
  assert.equal(reason?.code, 'SUPERSEDED');
  assert.ok(lostAt - t0 < T.renewMs, `fenced via the watch before the next renewal (${lostAt - t0} ms)`);
  assert.ok(!la.held);
  await waitFor(() => changes.length === 2);
  assert.deepStrictEqual(
    changes.map((ch) => [ch.kind, ch.record?.owner, ch.record?.epoch, ch.previous?.owner]),
    [
      ['owner', 'n1', 1, undefined],
      ['owner', 'n2', 2, 'n1'],
    ],
  );
  await sleep(T.renewMs * 3);
  assert.equal(changes.length, 2, 'renewals are not reported as changes');
  assert.ok(lb.held);
  assert.equal((await c.reg.lookup('live', 'cam1'))?.record.owner, 'n2');
  const ev = await c.events.read({ limit: 10 });
  assert.ok(ev.some((e) => e.event.type === 'ownershipMoved' && e.event.from === 'n1' && e.event.to === 'n2' && e.event.epoch === 2));
  // the same node taking over its own stream (publisher reconnected to the same node) fences the older lease too
  const lb2 = await b.reg.acquire('live', 'cam1', rec('n2'), { takeover: true });
  assert.equal(lb2.epoch, 3);
  await waitFor(() => !lb.held, 1000);
  assert.equal(lb.lostReason?.code, 'SUPERSEDED');
  await close();
});

test('partitioned owner fences itself by its own clock before anyone can take over; the stream is then free', async (t) => {
  const { net, nodes, close } = setup(t, 3);
  const [a, b, c] = [nodes[0]!, nodes[1]!, nodes[2]!];
  const gone: OwnerChange[] = [];
  c.reg.watch((ch) => {
    if (ch.kind === 'gone') gone.push(ch);
  });
  await c.reg.start();
  const la = await a.reg.acquire('live', 'cam1', rec('n1'), { takeover: false });
  let lostAt = 0;
  la.onLost(() => {
    lostAt = Date.now();
  });
  const t0 = Date.now();
  net.partition(a.bus);
  await assert.rejects(b.reg.acquire('live', 'cam1', rec('n2'), { takeover: false }), StreamOwnedError);
  await waitFor(() => lostAt > 0, 2000, 'self-fence');
  assert.equal(la.lostReason?.code, 'EXPIRED_LOCALLY');
  assert.ok(lostAt - t0 <= T.maxAgeMs + 50, `fenced within max age (${lostAt - t0} ms)`);
  // watchers age the record themselves (no delete marker on expiry)
  await waitFor(() => gone.length >= 1, 1000, 'expired reported');
  assert.equal(gone[0]?.reason, 'expired');
  assert.equal(gone[0]?.previous?.owner, 'n1');
  // the record has expired (bucket max age): free for a non-takeover publish
  await waitFor(async () => (await b.reg.lookup('live', 'cam1')) === null, 1000, 'expiry');
  const acquiredAt = Date.now();
  const lb = await b.reg.acquire('live', 'cam1', rec('n2'), { takeover: false });
  assert.ok(lostAt <= acquiredAt, 'old owner fenced before the new one acquired');
  assert.equal(lb.epoch, 1, 'epoch restarts after the key was gone');
  assert.ok(lb.acquiredRevision > la.acquiredRevision, 'but the revision still grows');
  // healing does not resurrect the old lease
  net.heal(a.bus);
  await sleep(T.renewMs * 3);
  assert.ok(!la.held);
  assert.equal((await c.reg.lookup('live', 'cam1'))?.record.owner, 'n2');
  await close();
});

test('a stale record still in the bucket counts as free (renewedAt/createdAt older than max age)', async () => {
  const net = new MemoryBusNetwork();
  const bus = net.connect('n1');
  // the bucket exists with no max age (e.g. created by an operator): staleness is judged by the record's age
  const kv = await bus.kv('meshcast-streams', { maxAgeMs: 0 });
  const old = { owner: 'ghost', rtmp: 'rtmp://ghost', epoch: 7, startedAt: 1, renewedAt: 1, tracks: {} };
  await kv.put('live.cam1', encodeOwnershipRecord(old));
  const reg = new OwnershipRegistry({ bus, nodeId: 'n1', ...T });
  assert.ok(await reg.lookup('live', 'cam1'), 'fresh record is live');
  await sleep(T.maxAgeMs + 50);
  assert.equal(await reg.lookup('live', 'cam1'), null, 'stale record is not reported');
  const lease = await reg.acquire('live', 'cam1', rec('n1'), { takeover: false });
  assert.equal(lease.epoch, 8);
  await reg.close();
  await net.close();
});

test('a foreign write to the key loses the lease (watch or CAS), release deletes and is not a loss', async (t) => {
  const { nodes, close } = setup(t, 2);
  const [a, b] = [nodes[0]!, nodes[1]!];
  const la = await a.reg.acquire('live', 'x', rec('n1'), { takeover: false });
  const reasons: string[] = [];
  la.onLost((r) => reasons.push(r.code));
  const kv = await b.bus.kv('meshcast-streams', { maxAgeMs: T.maxAgeMs });
  await kv.put('live.x', encodeOwnershipRecord({ owner: 'n2', rtmp: '', epoch: 1, startedAt: 0, renewedAt: 0, tracks: {} }));
  await waitFor(() => reasons.length === 1, 1000);
  assert.ok(['SUPERSEDED', 'CAS_FAILED'].includes(reasons[0]!));
  await assert.rejects(la.updateTracks({}), /no longer held/);

  const changes: OwnerChange[] = [];
  b.reg.watch((c) => changes.push(c));
  const ly = await a.reg.acquire('live', 'y', rec('n1'), { takeover: false });
  let lostY = false;
  ly.onLost(() => {
    lostY = true;
  });
  await ly.release();
  assert.equal(await b.reg.lookup('live', 'y'), null);
  await waitFor(() => changes.some((c) => c.key === 'live.y' && c.kind === 'gone'), 1000);
  assert.equal(changes.find((c) => c.key === 'live.y' && c.kind === 'gone')?.reason, 'deleted');
  await sleep(T.renewMs * 2);
  assert.equal(lostY, false);
  // released stream can be acquired again by anyone
  const lb = await b.reg.acquire('live', 'y', rec('n2'), { takeover: false });
  assert.equal(lb.epoch, 1);
  await close();
});

test('concurrent publishes of the same stream: exactly one wins with takeover:false', async (t) => {
  const { nodes, close } = setup(t, 5);
  const results = await Promise.allSettled(nodes.map((n) => n.reg.acquire('live', 'race', rec(n.id), { takeover: false })));
  const won = results.filter((r) => r.status === 'fulfilled');
  const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(won.length, 1);
  assert.equal(lost.length, 4);
  assert.ok(lost.every((r) => r.reason instanceof StreamOwnedError));
  await close();
});

test('weird stream keys work end to end; a 1 KB key is a StreamNameError', async (t) => {
  const { nodes, close } = setup(t, 2);
  const [a, b] = [nodes[0]!, nodes[1]!];
  const names = ['a.b', '*', '>', 'with space', '直播', 'a.*.>', '=3D'];
  for (const s of names) await a.reg.acquire('live', s, rec('n1'), { takeover: false });
  await a.reg.acquire('my.app', 'x', rec('n1'), { takeover: false });
  const listed = (await b.reg.list()).map((i) => `${i.app}|${i.stream}`).sort();
  assert.deepStrictEqual(listed, [...names.map((s) => `live|${s}`), 'my.app|x'].sort());
  for (const s of names) assert.equal((await b.reg.lookup('live', s))?.record.owner, 'n1', s);
  assert.equal(await b.reg.lookup('live', 'a'), null, '"a.b" did not create anything under "a"');
  await assert.rejects(a.reg.acquire('live', 'k'.repeat(1024), rec('n1'), { takeover: false }), StreamNameError);
  await assert.rejects(b.reg.lookup('live', 'k'.repeat(1024)), StreamNameError);
  await close();
});

test('garbage in the streams bucket is ignored by lookup/list (logged once) and counts as free', async () => {
  const net = new MemoryBusNetwork();
  const bus = net.connect('n1');
  const cap = captureLogger();
  const reg = new OwnershipRegistry({ bus, nodeId: 'n1', logger: cap.logger, ...T });
  const kv = await bus.kv('meshcast-streams', { maxAgeMs: T.maxAgeMs });
  await kv.put(encodeStreamToken('live', 'junk'), enc('garbage'));
  await kv.put('not-a-stream-key', enc('garbage'));
  assert.equal(await reg.lookup('live', 'junk'), null);
  assert.deepStrictEqual(await reg.list(), []);
  assert.equal(await reg.lookup('live', 'junk'), null);
  assert.equal(cap.matching(/ignoring undecodable ownership record/).length, 1, 'logged once');
  const lease = await reg.acquire('live', 'junk', rec('n1'), { takeover: false });
  assert.equal(lease.epoch, 1);
  const stored = await kv.get('live.junk');
  const decoded = decodeOwnershipRecord(stored!.value);
  assert.equal((decoded as { owner: string }).owner, 'n1');
  await reg.close();
  await net.close();
});

test('rejects renew interval that cannot keep a lease alive', () => {
  const net = new MemoryBusNetwork();
  assert.throws(() => new OwnershipRegistry({ bus: net.connect('n1'), nodeId: 'n1', maxAgeMs: 1000, renewMs: 600 }), /renewMs/);
});

test('watch() started while the bus is down keeps retrying and works once it is back', async (t) => {
  const { net, nodes } = setup(t, 2);
  const [a, b] = [nodes[0]!, nodes[1]!];
  net.partition(b.bus);
  const changes: OwnerChange[] = [];
  b.reg.watch((c) => changes.push(c));
  await assert.rejects(b.reg.start());
  await sleep(300);
  net.heal(b.bus);
  await a.reg.acquire('live', 'late', rec('n1'), { takeover: false });
  await waitFor(() => changes.some((c) => c.kind === 'owner' && c.record?.owner === 'n1'), 3000, 'watch after recovery');
});

test('list() answers from the watch when the bucket does not answer in time (a stream-leader election), and from the bucket otherwise', async (t) => {
  const net = new MemoryBusNetwork();
  const busA = net.connect('n1');
  const real = net.connect('n2');
  // n2's bucket reads hang while `stalled` is set, as JetStream requests do while a stream has no leader;
  // its watch keeps delivering, as the watch's consumer did before the leader died.
  let stalled = false;
  const never = new Promise<never>(() => undefined);
  const delegate = <T extends object>(target: T, own: Partial<T>): T =>
    new Proxy(target, {
      get(o, prop) {
        if (prop in own) return own[prop as keyof T];
        const v: unknown = Reflect.get(o, prop, o);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(o) : v;
      },
    });
  const busB = delegate(real, {
    kv: async (name, opts) => {
      const bucket = await real.kv(name, opts);
      return delegate(bucket, { entries: (filter?: string) => (stalled ? never : bucket.entries(filter)) });
    },
  });
  const a = new OwnershipRegistry({ bus: busA, nodeId: 'n1', ...T });
  const b = new OwnershipRegistry({ bus: busB, nodeId: 'n2', ...T, listTimeoutMs: 150 });
  const oneShot = new OwnershipRegistry({ bus: busB, nodeId: 'n3', ...T });
  t.after(async () => {
    await Promise.all([a.close(), b.close(), oneShot.close()]);
    await net.close();
  });
  await b.start();
  const lease = await a.acquire('live', 'cam', rec('n1'), { takeover: false });
  await waitFor(async () => (await b.list()).length === 1, 2000, 'n2 lists the stream');
  assert.deepStrictEqual((await b.list()).map((i) => [i.stream, i.record.owner, i.from]), [['cam', 'n1', 'kv']]);

  stalled = true;
  const t0 = Date.now();
  const during = await b.list();
  const took = Date.now() - t0;
  assert.ok(took >= 140 && took < 1000, `answered after the 150 ms budget, not later (${took} ms)`);
  assert.deepStrictEqual(during.map((i) => [i.stream, i.record.owner, i.record.rtmp, i.from]), [['cam', 'n1', 'rtmp://n1:1935', 'watch']]);
  assert.ok(during[0]!.revision >= lease.acquiredRevision, 'the watch copy carries the fencing revision');
  // Renewals reach the watch, so the copy stays live past max age; a release removes the stream from it.
  await sleep(T.maxAgeMs * 1.5);
  assert.deepStrictEqual((await b.list()).map((i) => i.from), ['watch']);
  await lease.release();
  await waitFor(async () => (await b.list()).length === 0, 2000, 'released stream leaves the watch copy');
  // A registry without a running watch (meshctl's) has no copy to answer from: it waits for the bucket.
  const raced = await Promise.race([oneShot.list().then(() => 'answered'), sleep(400).then(() => 'still waiting')]);
  assert.equal(raced, 'still waiting');
  stalled = false;
});
