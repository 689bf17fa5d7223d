import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encodeOwnershipRecord, encodeRelayClaim } from '@meshcast/proto';
import { MemoryBusNetwork, OwnershipRegistry, RelayClaims, SEAL_WINDOW_MS, SealedBus, SealError, seal, sealKey, unseal, type LeaseLostReason, type SealContext } from '../src/index.ts';
import { captureLogger, dec, enc, sleep, waitFor } from './helpers.ts';

const ctxArb: fc.Arbitrary<SealContext> = fc.oneof(
  fc.record({ kind: fc.constantFrom('msg' as const, 'req' as const, 'evt' as const), subject: fc.string({ minLength: 1 }) }),
  fc.record({ kind: fc.constant('rep' as const), subject: fc.string({ minLength: 1 }), requestMac: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')) }),
  fc.record({ kind: fc.constant('kv' as const), bucket: fc.string({ minLength: 1 }), key: fc.string({ minLength: 1 }) }),
);
const K = sealKey('the mesh secret');
const NOW = 1_780_000_000_000;

test('seal/unseal: any payload round-trips for any subject, key or reply it was made for', () => {
  fc.assert(
    fc.property(ctxArb, fc.uint8Array({ maxLength: 2048 }), fc.integer({ min: -SEAL_WINDOW_MS, max: SEAL_WINDOW_MS }), (ctx, payload, skew) => {
      const o = unseal(K, ctx, seal(K, ctx, payload, NOW + skew), NOW);
      assert.deepEqual(Buffer.from(o.payload), Buffer.from(payload));
      assert.equal(o.ts, NOW + skew);
    }),
  );
});

test('seal/unseal: any single-bit change anywhere in the seal is refused', () => {
  fc.assert(
    fc.property(ctxArb, fc.uint8Array({ maxLength: 512 }), fc.nat(), fc.integer({ min: 0, max: 7 }), (ctx, payload, at, bit) => {
      const s = Buffer.from(seal(K, ctx, payload, NOW));
      const i = at % s.length;
      s[i] = s[i]! ^ (1 << bit);
      assert.throws(() => unseal(K, ctx, s, NOW), SealError);
    }),
  );
});

test('seal/unseal: another subject, key, kind, secret, or a stale or future time is refused', () => {
  fc.assert(
    fc.property(ctxArb, ctxArb, fc.uint8Array({ maxLength: 256 }), fc.string({ minLength: 1 }), fc.integer({ min: SEAL_WINDOW_MS + 1, max: 10 * 86_400_000 }), fc.boolean(), (ctx, other, payload, secret, off, future) => {
      const s = seal(K, ctx, payload, NOW);
      if (JSON.stringify(other) !== JSON.stringify(ctx)) assert.throws(() => unseal(K, other, s, NOW), /bad seal/);
      if (secret !== 'the mesh secret') assert.throws(() => unseal(sealKey(secret), ctx, s, NOW), /bad seal/);
      assert.throws(() => unseal(K, ctx, s, future ? NOW - off : NOW + off), /stale seal/);
      assert.throws(() => unseal(K, ctx, payload, NOW), SealError, 'an unsealed payload');
    }),
  );
});

/** Two nodes on one in-process network, sealed with the same secret, plus a raw connection (someone with bus access and no secret). */
function setup(t: TestContext) {
  const net = new MemoryBusNetwork();
  const cap = captureLogger('warn');
  const a = new SealedBus(net.connect('a'), { secret: 's3cret', logger: cap.logger });
  const b = new SealedBus(net.connect('b'), { secret: 's3cret', logger: cap.logger });
  const raw = net.connect('forger');
  const wrong = new SealedBus(net.connect('wrong'), { secret: 'other secret', logger: cap.logger });
  t.after(() => net.close());
  return { net, a, b, raw, wrong, cap };
}

test('sealed bus: sealed messages and requests flow; forged, replayed and wrong-secret ones are dropped and logged at a bounded rate', async (t) => {
  const { a, b, raw, wrong, cap } = setup(t);
  const got: string[] = [];
  b.subscribe('mesh.node.*.hb', (m) => got.push(dec(m.data)));
  let captured: Uint8Array | undefined;
  raw.subscribe('mesh.node.*.hb', (m) => (captured ??= m.data));
  a.publish('mesh.node.a.hb', enc('real'));
  await waitFor(() => got.length === 1 && captured !== undefined);
  for (let i = 0; i < 200; i++) raw.publish('mesh.node.a.hb', enc(`forged ${i}`));
  wrong.publish('mesh.node.a.hb', enc('wrong secret'));
  raw.publish('mesh.node.a.hb', captured!); // replay of the real one
  raw.publish('mesh.node.x.hb', captured!); // the real seal moved to another subject
  await sleep(100);
  assert.deepEqual(got, ['real']);
  const drops = cap.matching(/unverifiable mesh input dropped/);
  assert.ok(drops.length >= 1 && drops.length <= 10, `bounded log: ${drops.length} lines for 203 drops`);

  // RPC: only a sealed request is answered, and its answer verifies only for that request.
  let answered = 0;
  b.subscribe('mesh.node.b.rpc.stats', (m) => {
    answered++;
    m.respond(enc(`stats for ${dec(m.data)}`));
  });
  assert.equal(dec(await a.request('mesh.node.b.rpc.stats', enc('a'))), 'stats for a');
  await assert.rejects(raw.request('mesh.node.b.rpc.stats', enc('forger'), { timeoutMs: 300 }), /timed out|timeout/i);
  await assert.rejects(wrong.request('mesh.node.b.rpc.stats', enc('wrong'), { timeoutMs: 300 }), /timed out|timeout/i);
  assert.equal(answered, 1, 'forged requests reached no handler');
  // A forger answering a sealed request: the requester refuses the answer.
  raw.subscribe('mesh.node.f.rpc.admit', (m) => m.respond(enc('come to me')));
  await assert.rejects(a.request('mesh.node.f.rpc.admit', enc('?'), { timeoutMs: 500 }), SealError);
});

test('sealed bus: a forged KV value is invisible (get null, not listed, not watched); events too', async (t) => {
  const { a, b, raw } = setup(t);
  const ka = await a.kv('mesh-kv', { maxAgeMs: 0 });
  const kb = await b.kv('mesh-kv', { maxAgeMs: 0 });
  const kr = await raw.kv('mesh-kv', { maxAgeMs: 0 });
  const seen: string[] = [];
  const untrusted: number[] = [];
  await kb.watch((e) => seen.push(`${e.key}=${dec(e.value)}`), { onUntrusted: (_k, rev) => untrusted.push(rev) });
  await ka.put('k1', enc('real'));
  const forgedRev = await kr.put('k2', enc('forged'));
  // A real value copied to another key is not valid there.
  await kr.put('k3', (await kr.get('k1'))!.value);
  await waitFor(() => seen.length === 1 && untrusted.length === 2);
  assert.deepEqual(seen, ['k1=real']);
  assert.ok(untrusted.includes(forgedRev));
  assert.equal(await kb.get('k2'), null);
  assert.equal(await kb.get('k3'), null);
  assert.equal(dec((await kb.get('k1'))!.value), 'real');
  assert.deepEqual(await kb.keys(), ['k1']);
  assert.deepEqual((await kb.entries()).map((e) => e.key), ['k1']);

  await a.events.append('x', enc('real event'));
  await raw.events.append('x', enc('forged event'));
  assert.deepEqual((await b.events.read()).map((e) => dec(e.data)), ['real event']);
});

test('sealed bus: an owner that finds a forged record of its stream writes its own back and keeps its lease', async (t) => {
  const { a, b, raw } = setup(t);
  const ra = new OwnershipRegistry({ bus: a, nodeId: 'a', maxAgeMs: 2000, renewMs: 500 });
  const rb = new OwnershipRegistry({ bus: b, nodeId: 'b', maxAgeMs: 2000, renewMs: 500 });
  t.after(async () => {
    await ra.close();
    await rb.close();
  });
  await rb.start();
  const changes: string[] = [];
  rb.watch((c) => changes.push(`${c.kind}:${c.record?.owner ?? ''}`));
  const lease = await ra.acquire('live', 'cam', { rtmp: 'rtmp://a:1935' }, { takeover: false });
  const lost: LeaseLostReason[] = [];
  lease.onLost((r) => lost.push(r));
  await waitFor(() => changes.length === 1);
  const kr = await raw.kv(a.names.streamsBucket, { maxAgeMs: 2000 });
  const forged = { owner: 'evil', rtmp: 'rtmp://evil:1935', epoch: 99, startedAt: Date.now(), renewedAt: Date.now(), tracks: {} };
  const forgedRev = await kr.put('live.cam', encodeOwnershipRecord(forged));
  // Restored at once (the watch tells the lease), not at the next renewal.
  await waitFor(async () => lease.revision > forgedRev, 400, 'the owner restores its record over the forged revision');
  assert.equal(lease.held, true);
  assert.deepEqual(lost, []);
  assert.equal((await rb.lookup('live', 'cam'))?.record.owner, 'a');
  assert.deepEqual(changes, ['owner:a'], 'nobody was told of the forger');
  // A node acquiring a key that holds only a forged record writes over it.
  await kr.put('live.other', encodeOwnershipRecord({ ...forged, epoch: 5 }));
  const l2 = await rb.acquire('live', 'other', { rtmp: 'rtmp://b:1935' }, { takeover: false });
  assert.equal(l2.epoch, 1);
  assert.equal((await ra.lookup('live', 'other'))?.record.owner, 'b');
});

test('sealed bus: a forged relay claim at a relay\'s own key is written over; forged claims of others are not listed', async (t) => {
  const { a, b, raw } = setup(t);
  const ca = new RelayClaims({ bus: a, nodeId: 'a', maxAgeMs: 2000, renewMs: 500 });
  const cb = new RelayClaims({ bus: b, nodeId: 'b', maxAgeMs: 2000, renewMs: 500 });
  t.after(async () => {
    await ca.close();
    await cb.close();
  });
  await ca.start();
  const kr = await raw.kv(a.names.relaysBucket, { maxAgeMs: 2000 });
  const forged = (node: string) => encodeRelayClaim({ node, parent: 'evil', children: 0, rtmp: 'rtmp://evil:1935', claimedAt: Date.now(), renewedAt: Date.now() });
  const keys = async (): Promise<string[]> => (await kr.keys()).sort();
  await kr.put('live.cam.b', forged('b'));
  await kr.put('live.cam.evil', forged('evil'));
  assert.deepEqual(await keys(), ['live.cam.b', 'live.cam.evil'], 'both forged values are in the bucket');
  const lease = await cb.claim('live', 'cam', { parent: 'a', rtmp: 'rtmp://b:1935' });
  assert.equal(lease.held, true);
  const listed = await ca.list('live', 'cam');
  assert.deepEqual(listed.map((c) => `${c.claim.node}<-${c.claim.parent}`), ['b<-a']);
});
