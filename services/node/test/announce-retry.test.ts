/**
 * An owner cut off from the bus long enough for its lease to expire keeps its publisher, and
 * announces the stream again once the bus returns (nobody took it meanwhile). The announce
 * retries back off with jitter and log at warn once per streak (see relay-backoff.test.ts for
 * the relay's side); here the observable result: the record names this node again and the
 * publisher was never dropped.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import type { NodeMesh } from '../src/mesh/node-mesh.ts';
import { inProcessNode, rtmpUrl, sleep, syntheticPublisher, until } from './support.ts';

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const meshOf = (n: MediaNode): NodeMesh => (n as unknown as { mesh: NodeMesh }).mesh;

test('an owner whose lease expired while cut off announces the stream again when the bus returns', async () => {
  const net = new MemoryBusNetwork();
  const a = await inProcessNode(net, 'n1');
  cleanups.push(() => a.stop());
  const b = await inProcessNode(net, 'n2');
  cleanups.push(() => b.stop());
  const pub = await syntheticPublisher(rtmpUrl(a, 'live/back'));
  cleanups.push(pub.stop);
  await until('owner n1', async () => (await meshOf(b).ownership.lookup('live', 'back'))?.record.owner === 'n1');
  const revBefore = (await meshOf(b).ownership.lookup('live', 'back'))!.revision;
  net.partition(meshOf(a).bus);
  await sleep(3000); // longer than the 2 s lease: it expires locally
  assert.equal(pub.client.closed, false, 'the publisher stays while the mesh is unreachable');
  net.heal(meshOf(a).bus);
  const back = await until('n1 announced the stream again', async () => {
    const r = await meshOf(b).ownership.lookup('live', 'back');
    return r && r.record.owner === 'n1' && r.revision > revBefore ? r : undefined;
  }, 8000);
  assert.equal(back.record.owner, 'n1');
  assert.equal(pub.client.closed, false, 'and the publisher was never dropped');
  await until('n1 holds the lease', () => a.sessions.list().some((s) => s.role === 'publisher') && meshOf(a).nodeInfo()['leases'] === 1, 5000);
});
