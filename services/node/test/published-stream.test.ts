/**
 * The PublishedStream actor under simulated time: its clock, its bus and its lease store are fakes driven
 * by the test (ticks are sent by hand), so every transition is checked without sleeping.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { BusUnavailableError, StreamOwnedError, type OwnershipLease } from '@meshcast/mesh';
import { CLAIM_WAIT_MS, FREEZE_MS, PublishedStream, decodeLivenessBeat, type AttachReply, type DuplicatePolicy, type LivenessBeat, type PublishedEffects } from '../src/mesh/published-stream.ts';
import type { PublisherHandle } from '../src/media/stream-hub.ts';

const SILENCE = 1000;
const log = pino({ level: 'silent' });

interface Pending {
  takeover: boolean;
  resolve: (l: OwnershipLease) => void;
  reject: (e: unknown) => void;
}

function fakeLease(epoch: number): OwnershipLease & { released: boolean } {
  const l = {
    app: 'live',
    stream: 'x',
    key: 'live.x',
    epoch,
    acquiredRevision: epoch,
    revision: epoch,
    record: {} as OwnershipLease['record'],
    held: true,
    lostReason: undefined,
    released: false,
    onLost: () => undefined,
    updateTracks: async () => undefined,
    release: async () => {
      l.released = true;
      l.held = false;
    },
  };
  return l;
}

function pub(id: string): PublisherHandle & { evicted: string[] } {
  const evicted: string[] = [];
  return { id, kind: 'rtmp', evicted, evict: (r) => evicted.push(r) };
}

class World {
  t = 1_000_000;
  bus = true;
  acquires: Pending[] = [];
  confirms: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  media = new Map<PublisherHandle, number>();
  served: Array<{ id: string; reason: string }> = [];
  standby: PublisherHandle | undefined;
  beats: LivenessBeat[] = [];
  promotions: Array<{ reason: string; from: string | undefined; to: string }> = [];
  releasedLease: Array<OwnershipLease | undefined> = [];
  fencedCount = 0;
  epoch = 0;
  readonly actor: PublishedStream;

  constructor(policy: DuplicatePolicy = 'standby', node = 'A') {
    const fx: PublishedEffects = {
      now: () => this.t,
      busConnected: () => this.bus,
      acquire: (takeover) => new Promise((resolve, reject) => this.acquires.push({ takeover, resolve, reject })),
      confirm: () => new Promise((resolve, reject) => this.confirms.push({ resolve, reject })),
      lastMediaAt: (p) => this.media.get(p) ?? 0,
      serve: (p, reason) => {
        this.served.push({ id: p.id, reason });
        if (this.standby === p) this.standby = undefined;
        this.media.set(p, this.t);
      },
      setStandby: (p) => {
        this.standby = p;
        if (p) this.media.set(p, this.t);
      },
      evict: (p, reason) => p.evict(reason),
      hold: () => undefined,
      beat: (b) => this.beats.push(b),
      fenced: () => this.fencedCount++,
      promoted: (f) => this.promotions.push({ reason: f.reason, from: f.from, to: f.to }),
      published: () => undefined,
      released: (l) => this.releasedLease.push(l),
    };
    this.actor = new PublishedStream('live', 'x', node, policy, SILENCE, fx, log);
  }

  advance(ms: number, live: PublisherHandle[] = []): void {
    // Media from `live` publishers keeps arriving while time passes; ticks every 250 ms as the driver sends them.
    const end = this.t + ms;
    while (this.t < end) {
      this.t = Math.min(end, this.t + 250);
      for (const p of live) this.media.set(p, this.t);
      this.actor.handle({ type: 'tick' });
    }
  }

  attach(p: PublisherHandle): Promise<AttachReply> {
    return new Promise((resolve) => this.actor.handle({ type: 'publisherAttached', publisher: p, reply: resolve }));
  }

  async grant(epoch = ++this.epoch): Promise<OwnershipLease & { released: boolean }> {
    const a = this.acquires.shift();
    assert.ok(a, 'an acquire is pending');
    const l = fakeLease(epoch);
    a.resolve(l);
    await settle();
    return l;
  }

  async refuse(err: unknown): Promise<Pending> {
    const a = this.acquires.shift();
    assert.ok(a, 'an acquire is pending');
    a.reject(err);
    await settle();
    return a;
  }

  beat(b: Partial<LivenessBeat> & { node: string }): void {
    this.actor.handle({ type: 'peerBeat', beat: { role: 'primary', live: true, since: this.t, ...b } });
  }
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A node that owns the stream with publisher `p`. */
async function owning(policy: DuplicatePolicy = 'standby'): Promise<{ w: World; p: ReturnType<typeof pub>; lease: OwnershipLease & { released: boolean } }> {
  const w = new World(policy);
  const p = pub('p1');
  const reply = w.attach(p);
  assert.equal(w.actor.state, 'claiming');
  const lease = await w.grant();
  assert.deepEqual(await reply, { ok: true, role: 'primary' });
  assert.equal(w.actor.state, 'owning');
  return { w, p, lease };
}

test('claim → owning: served after the lease, heartbeats live on every tick, released with a last "gone" beat when the publisher leaves', async () => {
  const { w, p, lease } = await owning();
  assert.deepEqual(w.served.map((s) => s.id), ['p1']);
  assert.equal(w.acquires.length, 0);
  w.advance(500, [p]);
  assert.ok(w.beats.length >= 2 && w.beats.every((b) => b.role === 'primary' && b.live && b.epoch === 1));
  assert.equal(w.actor.accepts(p), true);
  w.actor.handle({ type: 'publisherDetached', publisher: p });
  assert.equal(w.actor.state, 'released');
  assert.deepEqual(w.beats.at(-1), { node: 'A', role: 'primary', live: false, gone: true, epoch: 1, since: w.t });
  assert.equal(w.releasedLease[0], lease);
});

test('standby on one node: a second live publisher waits, a third is refused, the standby is promoted when the primary goes silent', async () => {
  const { w, p } = await owning();
  const s = pub('p2');
  assert.deepEqual(await w.attach(s), { ok: true, role: 'standby' });
  assert.equal(w.standby, s);
  assert.equal(w.actor.accepts(s), false, 'the standby\'s frames are not served');
  const third = await w.attach(pub('p3'));
  assert.equal(third.ok, false);
  assert.ok(!third.ok && third.code === 'NetStream.Publish.BadName' && /primary publisher \(node A\) and a standby \(node A\)/.test(third.description), JSON.stringify(third));
  // Both live for a while: nothing changes.
  w.advance(3000, [p, s]);
  assert.deepEqual(w.served.map((x) => x.id), ['p1']);
  // The primary stops sending: promoted after publisher_silence_ms, within one tick.
  const silentAt = w.t;
  w.advance(1500, [s]);
  assert.deepEqual(w.served.map((x) => x.id), ['p1', 'p2']);
  assert.equal(w.actor.accepts(s), true);
  assert.equal(w.standby, undefined);
  assert.deepEqual(w.promotions, [{ reason: 'primary silent', from: 'A', to: 'A' }]);
  assert.ok(w.t - silentAt <= 1500);
  // The promotion takes the lease again: a new epoch.
  assert.equal(w.acquires[0]?.takeover, true);
  await w.grant(2);
  assert.equal(w.actor.epoch, 2);
  void p;
});

test('standby on one node: promoted at once when the primary disconnects', async () => {
  const { w, p } = await owning();
  const s = pub('p2');
  await w.attach(s);
  w.actor.handle({ type: 'publisherDetached', publisher: p });
  assert.deepEqual(w.served.map((x) => x.id), ['p1', 'p2']);
  assert.equal(w.actor.state, 'owning');
  assert.deepEqual(w.promotions.map((x) => x.reason), ['primary gone']);
});

test('a second publisher of a silent primary takes over at once (never "already publishing"), under standby and reject alike', async () => {
  for (const policy of ['standby', 'reject'] as const) {
    const { w, p } = await owning(policy);
    w.advance(1250); // p sends nothing: silent
    const n = pub('p2');
    assert.deepEqual(await w.attach(n), { ok: true, role: 'primary' }, policy);
    assert.deepEqual(w.served.map((x) => x.id), ['p1', 'p2']);
    assert.match(w.served[1]!.reason, /silent/);
    assert.equal(w.acquires[0]?.takeover, true, 'a new epoch');
    void p;
  }
});

test('takeover and reject policies with a live primary', async () => {
  const t = await owning('takeover');
  assert.deepEqual(await t.w.attach(pub('p2')), { ok: true, role: 'primary' });
  assert.deepEqual(t.w.served.map((x) => x.id), ['p1', 'p2']);
  const r = await owning('reject');
  const refused = await r.w.attach(pub('p2'));
  assert.ok(!refused.ok && refused.code === 'NetStream.Publish.BadName' && /already being published/.test(refused.description));
  // reject across nodes: the live record of another node refuses at once.
  const w = new World('reject', 'B');
  const reply = w.attach(pub('q'));
  const a = await w.refuse(new StreamOwnedError('live', 'x', 'A'));
  assert.equal(a.takeover, false);
  const rr = await reply;
  assert.ok(!rr.ok && /already being published on node A/.test(rr.description));
  assert.equal(w.actor.state, 'released');
});

test('clock jump: frames are held until a CAS write confirms the lease, then flow again', async () => {
  const { w, p } = await owning();
  w.actor.handle({ type: 'clockJump', pausedMs: 8000 });
  assert.equal(w.actor.state, 'confirming');
  assert.equal(w.actor.accepts(p), false);
  assert.equal(w.confirms.length, 1);
  w.confirms.shift()!.resolve();
  await settle();
  assert.equal(w.actor.state, 'owning');
  assert.equal(w.actor.accepts(p), true);
});

test('clock jump: a lease lost after the pause fences the publisher (never served by a stale owner)', async () => {
  for (const kind of ['leaseLost', 'leaseSuperseded'] as const) {
    const { w, p, lease } = await owning();
    w.actor.handle({ type: 'clockJump', pausedMs: 8000 });
    w.actor.handle({ type: kind, lease, detail: 'test' });
    assert.equal(w.actor.state, 'released', kind);
    assert.equal(p.evicted.length, 1, kind);
    assert.equal(w.fencedCount, 1, 'viewers here follow the new owner');
  }
});

test('lease lost while the bus is down: keeps serving local viewers, re-announces when the bus is back', async () => {
  const { w, p, lease } = await owning();
  w.bus = false;
  w.actor.handle({ type: 'busDown' });
  w.advance(FREEZE_MS + 500, [p]);
  w.actor.handle({ type: 'leaseLost', lease, detail: 'no renewal acknowledged' });
  assert.equal(w.actor.state, 'local');
  assert.equal(w.actor.accepts(p), true, 'local viewers keep the stream');
  assert.equal(p.evicted.length, 0);
  w.advance(2000, [p]);
  assert.equal(w.acquires.length, 0, 'no announce while the bus is down');
  w.bus = true;
  w.actor.handle({ type: 'busUp' });
  w.advance(250, [p]);
  assert.equal(w.acquires[0]?.takeover, false, 'takes the key only if free, stale or ours');
  // Our own record from before the outage, not yet stale: taken back.
  await w.refuse(new StreamOwnedError('live', 'x', 'A'));
  assert.equal(w.acquires[0]?.takeover, true);
  await w.grant();
  assert.equal(w.actor.state, 'owning');
  assert.equal(p.evicted.length, 0);
});

test('lease lost while the bus is down, and the stream moved meanwhile: the local publisher is evicted on return', async () => {
  const { w, p, lease } = await owning();
  w.bus = false;
  w.advance(FREEZE_MS + 500, [p]);
  w.actor.handle({ type: 'leaseLost', lease, detail: 'no renewal acknowledged' });
  w.bus = true;
  w.actor.handle({ type: 'busUp' });
  w.advance(250, [p]);
  await w.refuse(new StreamOwnedError('live', 'x', 'B'));
  assert.equal(w.actor.state, 'released');
  assert.deepEqual(p.evicted, ['stream is owned by B in the mesh']);
});

test('a failed announce backs off (bus errors), and the claim of a publisher with the mesh unreachable serves locally', async () => {
  const w = new World();
  const p = pub('p1');
  const reply = w.attach(p);
  await w.refuse(new BusUnavailableError('bus down'));
  assert.deepEqual(await reply, { ok: true, role: 'primary' });
  assert.equal(w.actor.state, 'local');
  assert.deepEqual(w.served.map((x) => x.id), ['p1']);
  w.advance(250, [p]);
  // The first retry waits for the jittered backoff (≥ 250 ms).
  let attempts = 0;
  for (let i = 0; i < 40 && w.actor.state === 'local'; i++) {
    w.advance(250, [p]);
    if (w.acquires.length > 0) {
      attempts++;
      if (attempts < 3) await w.refuse(new BusUnavailableError('still down'));
      else await w.grant();
    }
  }
  assert.equal(attempts, 3);
  assert.equal(w.actor.state, 'owning');
});

test('a takeover racing a renewal: the superseded old lease does not fence the new publisher; a superseded current lease does', async () => {
  const { w, p, lease } = await owning('takeover');
  const n = pub('p2');
  await w.attach(n);
  const newLease = await w.grant(2);
  // The old lease's renewal then fails its CAS against our own takeover write.
  w.actor.handle({ type: 'leaseSuperseded', lease, detail: 'CAS_FAILED' });
  assert.equal(w.actor.state, 'owning');
  assert.equal(n.evicted.length, 0);
  assert.equal(w.actor.epoch, 2);
  // Another node takes it over now: fenced.
  w.actor.handle({ type: 'leaseSuperseded', lease: newLease, detail: 'SUPERSEDED' });
  assert.equal(w.actor.state, 'released');
  assert.equal(n.evicted.length, 1);
  void p;
});

test('a takeover racing a renewal: the watch reports our own takeover write before its answer; the old lease\'s loss does not fence', async () => {
  const { w, p, lease } = await owning();
  const s = pub('p2');
  await w.attach(s);
  w.actor.handle({ type: 'publisherDetached', publisher: p });
  assert.equal(w.acquires[0]?.takeover, true);
  w.actor.handle({ type: 'leaseSuperseded', lease, detail: 'SUPERSEDED by our own write' });
  assert.equal(s.evicted.length, 0);
  assert.equal(w.actor.state, 'owning');
  await w.grant(2);
  assert.equal(w.actor.epoch, 2);
  assert.equal(w.actor.accepts(s), true);
});

test('a renewal that lands after the takeover decision: the late grant of an abandoned attempt is released', async () => {
  const w = new World();
  const p = pub('p1');
  const reply = w.attach(p);
  w.actor.handle({ type: 'publisherDetached', publisher: p });
  const late = await w.grant();
  assert.equal(late.released, true);
  assert.equal((await reply).ok, false);
});

/** Node B: the stream is owned by node A, whose publisher is live; B's publisher becomes the standby. */
async function remoteStandby(): Promise<{ w: World; s: ReturnType<typeof pub> }> {
  const w = new World('standby', 'B');
  const s = pub('s1');
  const reply = w.attach(s);
  const first = await w.refuse(new StreamOwnedError('live', 'x', 'A'));
  assert.equal(first.takeover, false);
  w.beat({ node: 'A', epoch: 3 });
  assert.deepEqual(await reply, { ok: true, role: 'standby' });
  assert.equal(w.actor.state, 'standby');
  assert.equal(w.standby, s);
  return { w, s };
}

test('standby across nodes: kept while the owner\'s heartbeats say live; heartbeats of its own', async () => {
  const { w, s } = await remoteStandby();
  for (let i = 0; i < 20; i++) {
    w.advance(250, [s]);
    w.beat({ node: 'A', epoch: 3 });
  }
  assert.equal(w.acquires.length, 0);
  assert.ok(w.beats.length >= 20 && w.beats.every((b) => b.role === 'standby' && b.node === 'B'));
  assert.deepEqual((w.actor.status()['primary'] as { node: string }).node, 'A');
});

test('standby across nodes: promoted at once when the owner says its publisher is silent or gone (new epoch, then served)', async () => {
  for (const [beat, reason] of [[{ live: false }, 'primary silent'], [{ live: false, gone: true }, 'primary gone']] as const) {
    const { w, s } = await remoteStandby();
    w.beat({ node: 'A', ...beat });
    assert.equal(w.acquires[0]?.takeover, true);
    assert.equal(w.served.length, 0, 'served only once the lease is ours');
    await w.grant(4);
    assert.deepEqual(w.served.map((x) => x.id), ['s1']);
    assert.equal(w.actor.state, 'owning');
    assert.deepEqual(w.promotions, [{ reason, from: 'A', to: 'B' }]);
    assert.equal(w.actor.accepts(s), true);
  }
});

test('standby across nodes: the ownership record disappearing promotes it', async () => {
  const { w } = await remoteStandby();
  w.actor.handle({ type: 'ownerChanged', owner: undefined });
  assert.equal(w.acquires[0]?.takeover, true);
});

test('standby promoted while NATS is partitioned from the owner node: the owner\'s heartbeats stop, the standby takes over within publisher_silence_ms + one tick', async () => {
  const { w, s } = await remoteStandby();
  const lastBeat = w.t;
  while (w.acquires.length === 0) w.advance(250, [s]);
  assert.ok(w.t - lastBeat <= SILENCE + 250, `${w.t - lastBeat} ms`);
  await w.grant(4);
  assert.deepEqual(w.promotions.map((p) => p.reason), ['owner heartbeat lost']);
});

test('standby with NATS partitioned from its own node: not promoted while cut off; after the bus returns it judges fresh heartbeats only', async () => {
  const { w, s } = await remoteStandby();
  w.bus = false;
  w.actor.handle({ type: 'busDown' });
  w.advance(5000, [s]);
  assert.equal(w.acquires.length, 0, 'cannot take a lease without the bus, and heartbeats are not arriving');
  w.bus = true;
  w.actor.handle({ type: 'busUp' });
  w.advance(500, [s]);
  w.beat({ node: 'A' });
  w.advance(500, [s]);
  assert.equal(w.acquires.length, 0, 'the owner is live');
  w.advance(1000, [s]);
  assert.equal(w.acquires.length, 1, 'heartbeats stopped for publisher_silence_ms: promoted');
});

test('a claim that finds a live record but no heartbeat within the wait takes over (the owner\'s publisher is silent)', async () => {
  const w = new World('standby', 'B');
  const p = pub('p');
  const reply = w.attach(p);
  await w.refuse(new StreamOwnedError('live', 'x', 'A'));
  w.advance(CLAIM_WAIT_MS - 250);
  assert.equal(w.acquires.length, 0, 'still waiting for a heartbeat');
  w.advance(250);
  assert.equal(w.acquires[0]?.takeover, true);
  await w.grant(2);
  assert.deepEqual(await reply, { ok: true, role: 'primary' });
  assert.deepEqual(w.promotions, [{ reason: 'primary silent', from: 'A', to: 'B' }]);
});

test('a third publisher on another node is refused while a live primary and a live standby exist elsewhere', async () => {
  const w = new World('standby', 'C');
  const reply = w.attach(pub('p'));
  w.beat({ node: 'B', role: 'standby' });
  await w.refuse(new StreamOwnedError('live', 'x', 'A'));
  w.beat({ node: 'A' });
  const r = await reply;
  assert.ok(!r.ok && r.code === 'NetStream.Publish.BadName' && /node A.*standby \(node B\)/.test(r.description), JSON.stringify(r));
});

test('the owner fenced while a local standby waits: the standby stays, as standby of the new owner', async () => {
  const { w, p, lease } = await owning();
  const s = pub('p2');
  await w.attach(s);
  w.actor.handle({ type: 'leaseSuperseded', lease, detail: 'SUPERSEDED' });
  assert.equal(p.evicted.length, 1);
  assert.equal(w.actor.state, 'standby');
  assert.equal(s.evicted.length, 0);
});

test('liveness heartbeats decode only when well formed', () => {
  const ok = decodeLivenessBeat(Buffer.from(JSON.stringify({ node: 'A', role: 'primary', live: true, since: 1, epoch: 2 })));
  assert.deepEqual(ok, { node: 'A', role: 'primary', live: true, since: 1, epoch: 2 });
  assert.equal(decodeLivenessBeat(Buffer.from('nope')), undefined);
  assert.equal(decodeLivenessBeat(Buffer.from(JSON.stringify({ node: 'a b', role: 'primary', live: true, since: 1 }))), undefined);
  assert.equal(decodeLivenessBeat(Buffer.from(JSON.stringify({ node: 'A', role: 'boss', live: true, since: 1 }))), undefined);
});
