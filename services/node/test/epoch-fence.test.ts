/**
 * The epoch fence on the media path, in one process on the in-process bus: a relay's pull names
 * the ownership epoch it expects (signed in its mesh credential); a parent that does not serve that
 * epoch refuses it, and an owner that loses its lease closes the pulls it serves at once. The same
 * code runs over NATS with real node processes in tests/src/e2e/epoch-fence.test.ts.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { RtmpMessage } from '@meshcast/proto';
import { RtmpClient, RtmpClientError } from '../src/client/rtmp-client.ts';
import { syntheticPublisherId } from '../src/client/synthetic-source.ts';
import type { MediaNode } from '../src/media-node.ts';
import { EPOCH_FENCE_CODE, NonceMemory, PULL_CREDENTIAL_WINDOW_MS, signCredential, verifyCredential, type MeshPull } from '../src/mesh/mesh-credential.ts';
import type { NodeMesh } from '../src/mesh/node-mesh.ts';
import { inProcessNode, recordingViewer, rtmpUrl, syntheticPublisher, until } from './support.ts';

let nodes: MediaNode[] = [];
const cleanups: Array<() => void> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  await Promise.all(nodes.map((n) => n.stop()));
  nodes = [];
});

/** A second publisher takes the stream over (a new epoch) whatever the default duplicate_publish is. */
const TAKEOVER = { apps: { live: { duplicate_publish: 'takeover' } } };

async function mesh(count: number): Promise<MediaNode[]> {
  const net = new MemoryBusNetwork();
  nodes = [];
  for (let i = 1; i <= count; i++) nodes.push(await inProcessNode(net, `n${i}`, TAKEOVER));
  await until('membership converged', () => nodes.every((n) => meshOf(n).membership.table().filter((v) => v.state === 'alive').length === count));
  return nodes;
}

function meshOf(n: MediaNode): NodeMesh {
  return (n as unknown as { mesh: NodeMesh }).mesh;
}

interface FakeRelayPull {
  client: RtmpClient;
  frames: RtmpMessage[];
  statuses: Array<{ code: string; description: string; at: number }>;
  closedAt: number | undefined;
}

/** Pulls like a relay of node `as` would, with a pull credential naming `pull`; resolves once playing. */
async function relayPull(parent: MediaNode, as: string, pull: MeshPull, path = `${pull.app}/${pull.stream}`): Promise<FakeRelayPull> {
  const client = await RtmpClient.connect(rtmpUrl(parent, path), { timeoutMs: 3000, connectExtras: { meshcast: { ...signCredential('test-secret', as, { ...pull, to: parent.config.node_id }) } } });
  const r: FakeRelayPull = { client, frames: [], statuses: [], closedAt: undefined };
  cleanups.push(() => client.close());
  client.on('status', (s: { code: string; description: string }) => r.statuses.push({ code: s.code, description: s.description, at: Date.now() }));
  client.once('close', () => (r.closedAt = Date.now()));
  client.onFrame = (m) => r.frames.push(m);
  await client.play(undefined, 3000);
  return r;
}

async function refusal(p: Promise<unknown>): Promise<RtmpClientError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof RtmpClientError, String(err));
    return err;
  }
  assert.fail('the pull was admitted');
}

test('the pull credential signs the stream, epoch, target node and nonce: altering any breaks the signature; a node credential carries none', () => {
  const c = signCredential('s', 'n3', { app: 'live', stream: 'x', owner: 'n1', epoch: 4, to: 'n1' });
  const at = (): { self: string; nonces: NonceMemory } => ({ self: 'n1', nonces: new NonceMemory() });
  assert.deepEqual(verifyCredential('s', c, at()), { ok: true, node: 'n3', pull: { app: 'live', stream: 'x', owner: 'n1', epoch: 4 } });
  for (const altered of [{ epoch: 5 }, { owner: 'n2' }, { stream: 'y' }, { to: 'n2' }, { nonce: '00'.repeat(12) }]) {
    assert.deepEqual(verifyCredential('s', { ...c, ...altered }, { ...at(), self: altered.to ?? 'n1' }), { ok: false, reason: 'bad mesh credential signature' }, JSON.stringify(altered));
  }
  assert.deepEqual(verifyCredential('s', { ...c, epoch: '4' }, at()), { ok: false, reason: 'malformed mesh credential (stream epoch, target node and nonce)' });
  // A node credential (the dashboard's) verifies as a node, never as a pull.
  assert.deepEqual(verifyCredential('s', signCredential('s', 'n3')), { ok: true, node: 'n3' });
  assert.deepEqual(verifyCredential('s', { ...signCredential('s', 'n3'), app: 'live', stream: 'x', owner: 'n1', epoch: 1, to: 'n1', nonce: 'aa' }, at()), { ok: false, reason: 'bad mesh credential signature' });
});

test('a pull credential is good once, at the node it names, for 10 s', () => {
  const now = 1_780_000_000_000;
  const nonces = new NonceMemory();
  const c = signCredential('s', 'n3', { app: 'live', stream: 'x', owner: 'n1', epoch: 1, to: 'n1' }, now);
  assert.deepEqual(verifyCredential('s', c, { self: 'n2', nonces, now }), { ok: false, reason: 'mesh credential is for node n1, not this one' });
  assert.equal(verifyCredential('s', c, { self: 'n1', nonces, now: now + 1000 }).ok, true);
  assert.deepEqual(verifyCredential('s', c, { self: 'n1', nonces, now: now + 2000 }), { ok: false, reason: 'mesh credential already used' });
  const late = signCredential('s', 'n3', { app: 'live', stream: 'x', owner: 'n1', epoch: 1, to: 'n1' }, now);
  assert.deepEqual(verifyCredential('s', late, { self: 'n1', nonces, now: now + PULL_CREDENTIAL_WINDOW_MS + 1 }), { ok: false, reason: 'mesh credential expired' });
  assert.equal(PULL_CREDENTIAL_WINDOW_MS, 10_000);
  // Bounded: used nonces are forgotten once their credentials expired, and never exceed the cap.
  const small = new NonceMemory(4);
  for (let i = 0; i < 10; i++) assert.equal(small.use(`n${i}`, now + 10_000, now), true);
  assert.ok(small.size <= 4);
  assert.equal(small.use('late', now + 30_000, now + 20_000), true);
  assert.equal(small.size, 1, 'expired nonces are dropped');
});

test('a captured pull credential opens nothing: replayed, shown to another node or expired it is refused; its connection plays one stream once', async () => {
  const [a, b] = await mesh(3);
  const pub = await syntheticPublisher(rtmpUrl(a!, 'live/cred'));
  cleanups.push(pub.stop);
  const pub2 = await syntheticPublisher(rtmpUrl(a!, 'live/other'));
  cleanups.push(pub2.stop);
  const owner = await until('owner a', async () => meshOf(b!).ownership.lookup('live', 'cred'));
  const pull = { app: 'live', stream: 'cred', owner: owner.record.owner, epoch: owner.record.epoch };
  const captured = signCredential('test-secret', 'n3', { ...pull, to: 'n1' });
  const open = (n: MediaNode, cred: object): Promise<RtmpClient> => RtmpClient.connect(rtmpUrl(n, 'live/cred'), { timeoutMs: 3000, connectExtras: { meshcast: { ...cred } } });
  const first = await open(a!, captured);
  cleanups.push(() => first.close());
  await first.play('cred', 3000);
  // The same connection asks for another stream, then the same one again: both refused.
  await assert.rejects(first.play('other', 3000), /plays one stream, once/);
  await assert.rejects(first.play('cred', 3000), /plays one stream, once/);
  await assert.rejects(open(a!, captured), /mesh pull refused: mesh credential already used/);
  await assert.rejects(open(b!, signCredential('test-secret', 'n3', { ...pull, to: 'n1' })), /mesh pull refused: mesh credential is for node n1, not this one/);
  await assert.rejects(open(a!, signCredential('test-secret', 'n3', { ...pull, to: 'n1' }, Date.now() - PULL_CREDENTIAL_WINDOW_MS - 1000)), /mesh pull refused: mesh credential expired/);
  // A fresh one is fine: relays sign one per pull.
  const fresh = await open(a!, signCredential('test-secret', 'n3', { ...pull, to: 'n1' }));
  cleanups.push(() => fresh.close());
  await fresh.play('cred', 3000);
});

test('a pull asking for a stale or foreign epoch is refused with a status naming both epochs; the current epoch is served', async () => {
  const [a, b, c] = await mesh(3);
  const pub = await syntheticPublisher(rtmpUrl(a!, 'live/fence'));
  cleanups.push(pub.stop);
  const owner = await until('owner a', async () => meshOf(b!).ownership.lookup('live', 'fence'));
  assert.equal(owner.record.owner, 'n1');
  const epoch = owner.record.epoch;

  const stale = await refusal(relayPull(a!, 'n3', { app: 'live', stream: 'fence', owner: 'n1', epoch: epoch + 1 }));
  assert.equal(stale.code, EPOCH_FENCE_CODE);
  assert.match(stale.message, new RegExp(`asked for epoch ${epoch + 1} of n1, node n1 serves live/fence at epoch ${epoch} of n1`));
  const foreign = await refusal(relayPull(a!, 'n3', { app: 'live', stream: 'fence', owner: 'n2', epoch }));
  assert.match(foreign.message, new RegExp(`asked for epoch ${epoch} of n2, node n1 serves live/fence at epoch ${epoch} of n1`));
  // A node that neither owns nor relays the stream refuses rather than starting a relay for a relay.
  const notServing = await refusal(relayPull(b!, 'n3', { app: 'live', stream: 'fence', owner: 'n1', epoch }));
  assert.equal(notServing.code, EPOCH_FENCE_CODE);
  assert.match(notServing.message, /node n2 neither owns nor relays live\/fence/);
  assert.equal(meshOf(b!).relayStatus().length, 0, 'the refused pull started no relay on n2');
  // A credential made for another stream cannot be used on this one.
  const otherStream = await refusal(relayPull(a!, 'n3', { app: 'live', stream: 'other', owner: 'n1', epoch }, 'live/fence'));
  assert.match(otherStream.message, /mesh credential is for live\/other, not live\/fence/);
  // A node credential without an epoch is no pull credential.
  const plain = await refusal(
    (async () => {
      const cl = await RtmpClient.connect(rtmpUrl(a!, 'live/fence'), { timeoutMs: 3000, connectExtras: { meshcast: { ...signCredential('test-secret', 'n3') } } });
      cleanups.push(() => cl.close());
      await cl.play(undefined, 3000);
    })(),
  );
  assert.match(plain.message, /names no ownership epoch/);

  const ok = await relayPull(a!, 'n3', { app: 'live', stream: 'fence', owner: 'n1', epoch });
  await until('frames of the current epoch', () => ok.frames.some((f) => f.type === 9));
  assert.ok(a!.sessions.list().some((s) => s.role === 'relay-pull'));

  // A relay parent serves only the epoch it pulls itself.
  const viewer = await recordingViewer(rtmpUrl(c!, 'live/fence'));
  cleanups.push(() => viewer.client.close());
  await until('relay on n3 pulling', () => meshOf(c!).relayStatus()[0]?.state === 'pulling');
  assert.equal(meshOf(c!).relayStatus()[0]?.epoch, `epoch ${epoch} of n1`);
  const viaRelay = await relayPull(c!, 'n2', { app: 'live', stream: 'fence', owner: 'n1', epoch });
  await until('frames through the relay', () => viaRelay.frames.some((f) => f.type === 9));
  const staleViaRelay = await refusal(relayPull(c!, 'n2', { app: 'live', stream: 'fence', owner: 'n1', epoch: epoch - 1 }));
  assert.match(staleViaRelay.message, new RegExp(`asked for epoch ${epoch - 1} of n1, node n3 serves live/fence at epoch ${epoch} of n1`));
});

test('an owner superseded by a takeover closes its relay pulls at once; relays re-parent to the new owner and their viewers see no old-epoch frame after a new one', async () => {
  const [a, b, c, d] = await mesh(4);
  const p1 = await syntheticPublisher(rtmpUrl(a!, 'live/move'));
  cleanups.push(p1.stop);
  const first = await until('owner a', async () => meshOf(b!).ownership.lookup('live', 'move'));
  assert.equal(first.record.owner, 'n1');
  // A real relay on n3 with a viewer, and a pull of "n4" whose close we can time.
  const viewer = await recordingViewer(rtmpUrl(c!, 'live/move'));
  cleanups.push(() => viewer.client.close());
  await until('relay on n3 pulling from n1', () => meshOf(c!).relayStatus()[0]?.parent === 'n1');
  const direct = await relayPull(a!, 'n4', { app: 'live', stream: 'move', owner: 'n1', epoch: first.record.epoch });
  await until('frames on the direct pull', () => direct.frames.some((f) => f.type === 9));
  let evictedAt: number | undefined;
  p1.client.once('close', () => (evictedAt = Date.now()));
  await until('viewer plays the first epoch', () => viewer.video().length > 20);

  const p2 = await syntheticPublisher(rtmpUrl(b!, 'live/move'), { startTs: 0 });
  cleanups.push(p2.stop);
  await until('n1 fenced its old publisher', () => evictedAt !== undefined, 6000);
  await until('the direct pull closed', () => direct.closedAt !== undefined, 2000);
  // Closed in the same turn as the publisher's fence, not on a later tick or renewal.
  assert.ok(Math.abs(direct.closedAt! - evictedAt!) <= 100, `pull closed ${direct.closedAt! - evictedAt!} ms after the publisher's fence`);
  const fence = direct.statuses.find((s) => s.code === EPOCH_FENCE_CODE);
  assert.ok(fence, `the pull was told why: ${JSON.stringify(direct.statuses)}`);
  assert.match(fence.description, new RegExp(`live/move at epoch ${first.record.epoch} of n1 is no longer served here`));

  const second = await until('owner b', async () => {
    const o = await meshOf(d!).ownership.lookup('live', 'move');
    return o?.record.owner === 'n2' ? o : undefined;
  });
  await until('relay on n3 re-parented to n2 at the new epoch', () => {
    const r = meshOf(c!).relayStatus()[0];
    return r?.state === 'pulling' && r.parent === 'n2' && r.epoch === `epoch ${second.record.epoch} of n2`;
  });
  await until('viewer plays the new publisher', () => viewer.frames.some((f) => syntheticPublisherId(f.type, f.payload) === p2.publisherId));
  await until('a few more frames', () => viewer.frames.filter((f) => syntheticPublisherId(f.type, f.payload) === p2.publisherId).length > 15);
  assert.equal(viewer.client.closed, false, 'the viewer on n3 kept its connection');
  const order = viewer.frames.map((f) => syntheticPublisherId(f.type, f.payload)).filter((id) => id !== undefined);
  const firstNew = order.indexOf(p2.publisherId);
  assert.ok(firstNew > 0, 'the viewer saw both epochs');
  assert.equal(order.slice(firstNew).filter((id) => id !== p2.publisherId).length, 0, 'no frame of the old epoch after the first frame of the new one');
  // n1 now relays the new epoch, so the old epoch is refused there too.
  const late = await refusal(relayPull(a!, 'n4', { app: 'live', stream: 'move', owner: 'n1', epoch: first.record.epoch }));
  assert.equal(late.code, EPOCH_FENCE_CODE);
});

test("a relay whose parent relay moves to a new epoch is fenced, re-reads the owner and keeps its viewers", async () => {
  const [a, b, c] = await mesh(3);
  const p1 = await syntheticPublisher(rtmpUrl(a!, 'live/chain'));
  cleanups.push(p1.stop);
  const first = await until('owner a', async () => meshOf(b!).ownership.lookup('live', 'chain'));
  // n3 relays from n1; "n2" pulls from n3 as a child relay.
  const viewer = await recordingViewer(rtmpUrl(c!, 'live/chain'));
  cleanups.push(() => viewer.client.close());
  await until('relay on n3 pulling', () => meshOf(c!).relayStatus()[0]?.state === 'pulling');
  const child = await relayPull(c!, 'n2', { app: 'live', stream: 'chain', owner: 'n1', epoch: first.record.epoch });
  await until('frames on the child pull', () => child.frames.some((f) => f.type === 9));
  // The stream moves within n1 (a publisher re-connecting to the same node): same owner, new epoch.
  const p2 = await syntheticPublisher(rtmpUrl(a!, 'live/chain'), { startTs: 0 });
  cleanups.push(p2.stop);
  await until('relay on n3 at the new epoch', () => {
    const r = meshOf(c!).relayStatus()[0];
    return r?.state === 'pulling' && r.epoch === `epoch ${first.record.epoch + 1} of n1`;
  });
  await until('child pull fenced', () => child.closedAt !== undefined, 3000);
  assert.ok(child.statuses.some((s) => s.code === EPOCH_FENCE_CODE), JSON.stringify(child.statuses));
  await until('viewer plays the new publisher', () => viewer.frames.filter((f) => syntheticPublisherId(f.type, f.payload) === p2.publisherId).length > 10);
  assert.equal(viewer.client.closed, false);
});

test('a relay that misses the owner change (cut off from the bus) is fenced by the old owner, retries reading the owner with backoff, and re-parents once it can, keeping its viewer', async () => {
  const net = new MemoryBusNetwork();
  nodes = [];
  for (let i = 1; i <= 3; i++) nodes.push(await inProcessNode(net, `n${i}`, TAKEOVER));
  const [a, b, c] = nodes;
  await until('membership converged', () => nodes.every((n) => meshOf(n).membership.table().filter((v) => v.state === 'alive').length === 3));
  const p1 = await syntheticPublisher(rtmpUrl(a!, 'live/cut'));
  cleanups.push(p1.stop);
  const first = await until('owner a', async () => meshOf(b!).ownership.lookup('live', 'cut'));
  const viewer = await recordingViewer(rtmpUrl(c!, 'live/cut'));
  cleanups.push(() => viewer.client.close());
  await until('relay on n3 pulling from n1', () => meshOf(c!).relayStatus()[0]?.state === 'pulling' && meshOf(c!).relayStatus()[0]?.parent === 'n1');
  await until('viewer plays', () => viewer.video().length > 10);

  // n3 no longer hears the mesh: only the old owner's fence can tell its relay that epoch 1 is over.
  net.partition(meshOf(c!).bus);
  const p2 = await syntheticPublisher(rtmpUrl(b!, 'live/cut'), { startTs: 0 });
  cleanups.push(p2.stop);
  await until('the relay on n3 lost its pull (fenced by n1)', () => meshOf(c!).relayStatus()[0]?.state !== 'pulling', 4000);
  assert.equal(meshOf(c!).relayStatus()[0]?.epoch, `epoch ${first.record.epoch} of n1`, 'it still names the epoch it last pulled');
  // While it cannot read the owner it keeps retrying (backoff), and its viewer stays.
  await new Promise((r) => setTimeout(r, 800));
  assert.notEqual(meshOf(c!).relayStatus()[0]?.state, 'pulling');
  assert.equal(viewer.client.closed, false);
  assert.equal(viewer.frames.some((f) => syntheticPublisherId(f.type, f.payload) === p2.publisherId), false, 'no new-epoch frame before it could read the owner');

  net.heal(meshOf(c!).bus);
  await until('relay on n3 re-parented to n2 at the new epoch', () => {
    const r = meshOf(c!).relayStatus()[0];
    return r?.state === 'pulling' && r.parent === 'n2' && r.epoch === `epoch ${first.record.epoch + 1} of n2`;
  }, 10_000);
  await until('viewer plays the new epoch', () => viewer.frames.filter((f) => syntheticPublisherId(f.type, f.payload) === p2.publisherId).length > 10);
  assert.equal(viewer.client.closed, false, 'the viewer kept its connection');
  const order = viewer.frames.map((f) => syntheticPublisherId(f.type, f.payload)).filter((id) => id !== undefined);
  assert.equal(order.slice(order.indexOf(p2.publisherId)).filter((id) => id !== p2.publisherId).length, 0, 'no old-epoch frame after a new one');
});
