/**
 * Same node id restarted within the lease: the ownership record and the relay claims carry the process
 * instance (boot id). The restarted process takes its predecessor's ownership at once (even where a live
 * record would be refused, `takeover: false`), and its predecessor's relay claims stop counting as live
 * children. The dead process is simulated by cutting its bus connection (nothing renews its lease).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { decodeOwnershipRecord, decodeRelayClaim, encodeOwnershipRecord, encodeRelayClaim } from '@meshcast/proto';
import { MemoryBusNetwork, OwnershipRegistry, PROCESS_BOOT_ID, RelayClaims, StreamOwnedError } from '../src/index.ts';

const T = { maxAgeMs: 4000, renewMs: 1000 };

function network(t: TestContext): MemoryBusNetwork {
  const net = new MemoryBusNetwork();
  t.after(() => net.close());
  return net;
}

test('a record of this node id under another boot id is taken over at once; under this boot id it is refused', async (t) => {
  const net = network(t);
  const oldBus = net.connect('n1-old');
  const before = new OwnershipRegistry({ bus: oldBus, nodeId: 'n1', bootId: 'boot-a', ...T });
  const other = new OwnershipRegistry({ bus: net.connect('n2'), nodeId: 'n2', ...T });
  t.after(() => other.close());
  const lease = await before.acquire('live', 'cam', { rtmp: 'rtmp://n1' }, { takeover: false });
  assert.equal(lease.record.bootId, 'boot-a');
  net.partition(oldBus); // the process dies: nobody renews its record, which stays live for the lease

  const restarted = new OwnershipRegistry({ bus: net.connect('n1-new'), nodeId: 'n1', bootId: 'boot-b', ...T });
  t.after(() => restarted.close());
  const t0 = Date.now();
  const again = await restarted.acquire('live', 'cam', { rtmp: 'rtmp://n1' }, { takeover: false });
  assert.ok(Date.now() - t0 < 1000, 'taken over at once, not after the lease');
  assert.equal(again.epoch, 2, 'a takeover: a new epoch');
  assert.equal(again.record.bootId, 'boot-b');
  assert.equal((await other.lookup('live', 'cam'))?.record.bootId, 'boot-b');

  // The same process asking again (another publisher here, reject policy) is refused as before; another node too.
  await assert.rejects(restarted.acquire('live', 'cam', { rtmp: 'rtmp://n1' }, { takeover: false }), StreamOwnedError);
  await assert.rejects(other.acquire('live', 'cam', { rtmp: 'rtmp://n2' }, { takeover: false }), StreamOwnedError);
});

test('records and claims without a boot id (older nodes) still decode, and are not taken for stale', async (t) => {
  const oldRecord = { owner: 'n1', rtmp: 'rtmp://n1', epoch: 3, startedAt: 1, renewedAt: 2, tracks: {} };
  const r = decodeOwnershipRecord(encodeOwnershipRecord(oldRecord));
  assert.deepEqual(r, oldRecord);
  const oldClaim = { node: 'e1', parent: 'o1', children: 0, rtmp: 'rtmp://e1', claimedAt: 1, renewedAt: 2 };
  assert.deepEqual(decodeRelayClaim(encodeRelayClaim(oldClaim)), oldClaim);
  assert.equal((decodeRelayClaim(encodeRelayClaim({ ...oldClaim, bootId: PROCESS_BOOT_ID })) as { bootId?: string }).bootId, PROCESS_BOOT_ID);

  const net = network(t);
  const reg = new OwnershipRegistry({ bus: net.connect('n1'), nodeId: 'n1', ...T });
  t.after(() => reg.close());
  const b = await net.connect('writer').kv('meshcast-streams', { maxAgeMs: T.maxAgeMs, history: 1 });
  await b.put('live.legacy', encodeOwnershipRecord({ ...oldRecord, startedAt: Date.now(), renewedAt: Date.now() }));
  await assert.rejects(reg.acquire('live', 'legacy', { rtmp: 'rtmp://n1' }, { takeover: false }), StreamOwnedError, 'no boot id: cannot tell, so it is live');
});

test("a relay claim of an earlier process of this node is not a live child: ignored by its own listing and removed at start", async (t) => {
  const net = network(t);
  const oldBus = net.connect('e1-old');
  const before = new RelayClaims({ bus: oldBus, nodeId: 'e1', bootId: 'boot-a', ...T });
  const parent = new RelayClaims({ bus: net.connect('o1'), nodeId: 'o1', ...T });
  t.after(() => parent.close());
  await before.claim('live', 'cam', { parent: 'o1', rtmp: 'rtmp://e1' });
  net.partition(oldBus);
  assert.deepEqual((await parent.list('live', 'cam')).map((c) => c.claim.node), ['e1'], 'the dead process still shows as a child (its lease runs)');

  const restarted = new RelayClaims({ bus: net.connect('e1-new'), nodeId: 'e1', bootId: 'boot-b', ...T });
  t.after(() => restarted.close());
  assert.deepEqual(await restarted.list('live', 'cam'), [], 'the restarted process does not count its predecessor');
  await restarted.start();
  assert.deepEqual(await parent.list('live', 'cam'), [], 'and removes it for everyone at start');
  const mine = await restarted.claim('live', 'cam', { parent: 'o1', rtmp: 'rtmp://e1' });
  assert.equal(mine.claim.bootId, 'boot-b');
  assert.deepEqual((await parent.list('live', 'cam')).map((c) => `${c.claim.node}:${c.claim.bootId}`), ['e1:boot-b']);
});
