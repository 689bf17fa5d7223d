/**
 * The mesh logic with several nodes in one process on the in-process bus: relays, the relay
 * tree, takeover, re-parenting and fencing, fast. The same code runs over NATS in tests/.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import type { NodeMesh } from '../src/mesh/node-mesh.ts';
import { inProcessNode, recordingViewer, rtmpUrl, sleep, syntheticPublisher, until } from './support.ts';

let nodes: MediaNode[] = [];
const cleanups: Array<() => void> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  await Promise.all(nodes.map((n) => n.stop()));
  nodes = [];
});

async function mesh(count: number, inline: Record<string, unknown> = {}): Promise<{ net: MemoryBusNetwork; nodes: MediaNode[] }> {
  const net = new MemoryBusNetwork();
  nodes = [];
  for (let i = 1; i <= count; i++) nodes.push(await inProcessNode(net, `n${i}`, inline));
  await until('membership converged', () => nodes.every((n) => meshOf(n).membership.table().filter((v) => v.state === 'alive').length === count));
  return { net, nodes };
}

function meshOf(n: MediaNode): NodeMesh {
  return (n as unknown as { mesh: NodeMesh }).mesh;
}

function frameNumbers(frames: Array<{ type: number; payload: Buffer }>): number[] {
  return frames.filter((f) => f.type === 9 && f.payload[1] === 1 && f.payload.length === 600).map((f) => f.payload.readUInt32BE(5));
}

test('viewers on other nodes get the stream through one relay per node, frames in order', async () => {
  const { nodes: [a, b, c] } = await mesh(3);
  const pub = await syntheticPublisher(rtmpUrl(a!, 'live/s1'));
  cleanups.push(pub.stop);
  await until('owner announced', async () => (await meshOf(b!).ownership.lookup('live', 's1'))?.record.owner === 'n1');
  assert.equal(meshOf(b!).relayStatus().length, 0, 'no relay before the first viewer');
  const vb1 = await recordingViewer(rtmpUrl(b!, 'live/s1'));
  const vb2 = await recordingViewer(rtmpUrl(b!, 'live/s1'));
  const vc = await recordingViewer(rtmpUrl(c!, 'live/s1'));
  cleanups.push(() => [vb1, vb2, vc].forEach((v) => v.client.close()));
  await until('frames on every viewer', () => [vb1, vb2, vc].every((v) => frameNumbers(v.frames).length > 40));
  for (const v of [vb1, vb2, vc]) {
    const nums = frameNumbers(v.frames);
    for (let i = 1; i < nums.length; i++) assert.equal(nums[i], nums[i - 1]! + 1, 'consecutive frames');
  }
  assert.equal(meshOf(b!).relayStatus().length, 1, 'one relay on b shared by its two viewers');
  const claims = await meshOf(a!).relayClaims.list('live', 's1');
  assert.deepEqual(claims.map((x) => x.claim.node).sort(), ['n2', 'n3']);
  assert.ok(claims.every((x) => x.claim.parent === 'n1'));
  // The owner serves exactly one upstream per relay node, not one per viewer.
  assert.equal(a!.sessions.list().filter((s) => s.role === 'relay-pull').length, 2);
});

test('the relay is released after the linger once the last viewer leaves', async () => {
  const { nodes: [a, b] } = await mesh(2);
  const pub = await syntheticPublisher(rtmpUrl(a!, 'live/linger'));
  cleanups.push(pub.stop);
  await until('owner announced', async () => (await meshOf(b!).ownership.lookup('live', 'linger')) !== null);
  const v = await recordingViewer(rtmpUrl(b!, 'live/linger'));
  await until('relay pulling', () => meshOf(b!).relayStatus()[0]?.state === 'pulling');
  v.client.close();
  await sleep(400);
  assert.equal(meshOf(b!).relayStatus().length, 1, 'still lingering right after the viewer left');
  await until('relay released', () => meshOf(b!).relayStatus().length === 0, 5000);
  await until('claim gone', async () => (await meshOf(a!).relayClaims.list('live', 'linger')).length === 0, 5000);
  assert.equal(a!.sessions.list().filter((s) => s.role === 'relay-pull').length, 0, 'upstream connection closed');
});

test('fan-out cap 2 with 6 playback nodes builds a tree; killing a mid-tier relay re-parents its children without closing viewers', async () => {
  const { nodes: all } = await mesh(7, { mesh: { relay_fanout: 2 } });
  const owner = all[0]!;
  const pub = await syntheticPublisher(rtmpUrl(owner, 'live/tree'));
  cleanups.push(pub.stop);
  await until('owner announced', async () => (await meshOf(all[1]!).ownership.lookup('live', 'tree')) !== null);
  const viewers: Awaited<ReturnType<typeof recordingViewer>>[] = [];
  for (const n of all.slice(1)) {
    viewers.push(await recordingViewer(rtmpUrl(n, 'live/tree')));
    await until(`relay on ${n.config.node_id}`, () => meshOf(n).relayStatus()[0]?.state === 'pulling');
  }
  cleanups.push(() => viewers.forEach((v) => v.client.close()));
  const claims = (await meshOf(owner).relayClaims.list('live', 'tree')).map((x) => x.claim);
  const childrenOf = (id: string): string[] => claims.filter((c) => c.parent === id).map((c) => c.node);
  assert.ok(childrenOf('n1').length <= 2, `owner has ${childrenOf('n1').length} children`);
  const depth = (id: string): number => (id === 'n1' ? 0 : 1 + depth(claims.find((c) => c.node === id)!.parent));
  assert.ok(Math.max(...claims.map((c) => depth(c.node))) >= 2, 'tree depth ≥ 2');
  for (const c of claims) assert.ok(childrenOf(c.node).length <= 2);

  // Kill a mid-tier relay (one that has children) abruptly.
  const mid = claims.find((c) => c.parent === 'n1' && childrenOf(c.node).length > 0)!;
  const midNode = all.find((n) => n.config.node_id === mid.node)!;
  const orphans = childrenOf(mid.node);
  const orphanViewers = orphans.map((id) => viewers[all.findIndex((n) => n.config.node_id === id) - 1]!);
  const killedAt = Date.now();
  await midNode.stop('killed by test');
  nodes = nodes.filter((n) => n !== midNode);
  for (const v of orphanViewers) {
    const before = v.frames.length;
    await until('orphan viewer receives again', () => v.frames.slice(before).some((f) => f.type === 9 && f.at > killedAt + 50), 6000);
    assert.equal(v.client.closed, false, 'viewer kept its connection');
  }
  for (const id of orphans) {
    const st = meshOf(all.find((n) => n.config.node_id === id)!).relayStatus()[0]!;
    assert.notEqual(st.parent, mid.node, 'orphan re-parented');
    assert.ok(st.upstreams >= 2);
  }
});

test('takeover: the publisher moves from A to B, viewers on C keep their connection, A holds no lease', async () => {
  // duplicate_publish: takeover — under the default (standby) a second live publisher waits as the standby.
  const { nodes: [a, b, c] } = await mesh(3, { apps: { live: { duplicate_publish: 'takeover' } } });
  const p1 = await syntheticPublisher(rtmpUrl(a!, 'live/move'));
  await until('owner a', async () => (await meshOf(c!).ownership.lookup('live', 'move'))?.record.owner === 'n1');
  const v = await recordingViewer(rtmpUrl(c!, 'live/move'));
  cleanups.push(() => v.client.close());
  await until('frames from a', () => frameNumbers(v.frames).length > 20);
  // The new connection arrives before the old one is gone (a network blip).
  const p2 = await syntheticPublisher(rtmpUrl(b!, 'live/move'), { startTs: 0 });
  cleanups.push(p2.stop);
  const switchedAt = Date.now();
  await until('owner b', async () => (await meshOf(c!).ownership.lookup('live', 'move'))?.record.owner === 'n2');
  await until('old publisher dropped by a (fenced)', () => p1.client.closed, 4000);
  await until('frames from b on c', () => v.frames.some((f) => f.at > switchedAt + 200 && f.type === 9), 6000);
  assert.equal(v.client.closed, false);
  const ts = v.frames.filter((f) => f.type !== 18).map((f) => f.timestamp);
  for (let i = 1; i < ts.length; i++) assert.ok(ts[i]! >= ts[i - 1]!, 'timestamps never go back for the viewer');
  assert.equal(a!.registry.get('live', 'move')?.publisher, undefined, 'a no longer publishes');
  assert.equal(meshOf(a!).nodeInfo()['leases'], 0, 'a holds no lease');
  p1.stop();
});

test('duplicate_publish: reject refuses a publish of a key owned elsewhere in the mesh', async () => {
  const { nodes: [a, b] } = await mesh(2, { apps: { strict: { duplicate_publish: 'reject' } } });
  const p1 = await syntheticPublisher(rtmpUrl(a!, 'strict/one'));
  cleanups.push(p1.stop);
  await until('owner', async () => (await meshOf(b!).ownership.lookup('strict', 'one')) !== null);
  await assert.rejects(syntheticPublisher(rtmpUrl(b!, 'strict/one')), /BadName.*already being published on node n1/);
});

test('an owner cut off from the bus keeps serving locally, and fences itself on return when the stream moved meanwhile', async () => {
  const { net, nodes: [a, b] } = await mesh(2);
  const p1 = await syntheticPublisher(rtmpUrl(a!, 'live/fence'));
  cleanups.push(p1.stop);
  await until('owner a', async () => (await meshOf(b!).ownership.lookup('live', 'fence'))?.record.owner === 'n1');
  const local = await recordingViewer(rtmpUrl(a!, 'live/fence'));
  cleanups.push(() => local.client.close());
  net.partition(meshOf(a!).bus);
  await sleep(3000); // longer than the 2 s lease
  assert.equal(p1.client.closed, false, 'cut off from NATS, the node still takes its local publisher');
  const before = frameNumbers(local.frames).length;
  await sleep(300);
  assert.ok(frameNumbers(local.frames).length > before, 'and its local viewers keep playing');
  // Meanwhile the stream moves: a publisher of the same key on b takes the expired record.
  const p2 = await syntheticPublisher(rtmpUrl(b!, 'live/fence'));
  cleanups.push(p2.stop);
  await until('owner b', async () => (await meshOf(b!).ownership.lookup('live', 'fence'))?.record.owner === 'n2');
  net.heal(meshOf(a!).bus);
  await until('a fences its stale publisher once it sees b owns the stream', () => p1.client.closed, 6000);
  assert.equal((await meshOf(a!).ownership.lookup('live', 'fence'))?.record.owner, 'n2', 'b stays the owner');
});

test('viewers waiting for a stream on another node start when it is published there', async () => {
  const { nodes: [a, b] } = await mesh(2);
  const v = await recordingViewer(rtmpUrl(b!, 'live/later'));
  cleanups.push(() => v.client.close());
  await sleep(300);
  assert.equal(v.frames.filter((f) => f.type !== 18).length, 0, 'no media before anyone publishes');
  const p = await syntheticPublisher(rtmpUrl(a!, 'live/later'));
  cleanups.push(p.stop);
  await until('frames arrive', () => frameNumbers(v.frames).length > 10, 6000);
});

test('a pull with a forged mesh credential is refused', async () => {
  const { nodes: [a] } = await mesh(1);
  const { RtmpClient } = await import('../src/client/rtmp-client.ts');
  await assert.rejects(
    RtmpClient.connect(rtmpUrl(a!, 'live/x'), { connectExtras: { meshcast: { node: 'evil', ts: Date.now(), sig: 'ab'.repeat(32) } } }),
    /mesh pull refused: bad mesh credential signature/,
  );
});

test('placement: every node gives the same answer, a burst of 1000 routes spreads within the cap', async () => {
  const { nodes: all } = await mesh(3, { mesh: { capacity: 1000 } });
  const answers = all.map((n) => meshOf(n).router.candidates('live', 'popular').map((c) => c.node));
  assert.deepEqual(answers[0], answers[1]);
  assert.deepEqual(answers[1], answers[2]);
  const counts = new Map<string, number>();
  const router = meshOf(all[0]!).router;
  for (let i = 0; i < 1000; i++) {
    const r = await router.route('live', 'popular');
    counts.set(r.node, (counts.get(r.node) ?? 0) + 1);
  }
  const max = Math.max(...counts.values());
  // cap = ceil(1.25 · (L + 1) / 3) at L = 999 → 417
  assert.ok(max <= 417, `max ${max} per node`);
  assert.equal(counts.size, 3, 'all nodes used');
  const res = await fetch(`http://${all[1]!.config.public_host}:${all[1]!.httpPort}/api/v1/route/live/popular`);
  const body = (await res.json()) as { node: string; rtmp: string; flv: string; hls: string; next: unknown[] };
  assert.equal(res.status, 200);
  assert.match(body.rtmp, /^rtmp:\/\/127\.0\.1\.\d+:\d+\/live\/popular$/);
  assert.match(body.flv, /\/live\/popular\.flv$/);
  assert.equal(body.next.length, 2);
  const redirect = await fetch(`http://${all[1]!.config.public_host}:${all[1]!.httpPort}/play/live/popular.flv?token=t`, { redirect: 'manual' });
  assert.equal(redirect.status, 302);
  assert.match(redirect.headers.get('location') ?? '', /\/live\/popular\.flv\?token=t$/);
});

test('RTMP redirect: a node that is not the chosen one sends the player on, and the client follows', async () => {
  const { nodes: all } = await mesh(3, { mesh: { rtmp_redirect: true } });
  const pub = await syntheticPublisher(rtmpUrl(all[0]!, 'live/redir'));
  cleanups.push(pub.stop);
  const chosen = meshOf(all[0]!).router.candidates('live', 'redir')[0]!.node;
  const other = all.find((n) => n.config.node_id !== chosen)!;
  const { RtmpClient } = await import('../src/client/rtmp-client.ts');
  const frames: number[] = [];
  const c = await RtmpClient.openPlayer(rtmpUrl(other, 'live/redir'), { onFrame: (m) => frames.push(m.type) });
  cleanups.push(() => c.close());
  assert.equal(c.url.port, all.find((n) => n.config.node_id === chosen)!.rtmpPort, 'ended on the chosen node');
  await until('frames after redirect', () => frames.filter((t) => t === 9).length > 10, 6000);
});

test('a relay whose claim expired while it was cut off from the bus claims again when the bus returns, without re-parenting', async () => {
  const { net, nodes: [a, b] } = await mesh(2);
  const pub = await syntheticPublisher(rtmpUrl(a!, 'live/reclaim'));
  cleanups.push(pub.stop);
  await until('owner announced', async () => (await meshOf(b!).ownership.lookup('live', 'reclaim'))?.record.owner === 'n1');
  const v = await recordingViewer(rtmpUrl(b!, 'live/reclaim'));
  cleanups.push(() => v.client.close());
  await until('relay claimed', async () => (await meshOf(a!).relayClaims.list('live', 'reclaim')).some((c) => c.claim.node === 'n2'));
  net.partition(meshOf(b!).bus);
  await until('the claim expired in the KV', async () => !(await meshOf(a!).relayClaims.list('live', 'reclaim')).some((c) => c.claim.node === 'n2'), 6000);
  const during = frameNumbers(v.frames).length;
  await sleep(300);
  assert.ok(frameNumbers(v.frames).length > during, 'the relay keeps pulling while cut off (media does not ride the bus)');
  net.heal(meshOf(b!).bus);
  await until('the relay claims again', async () => (await meshOf(a!).relayClaims.list('live', 'reclaim')).some((c) => c.claim.node === 'n2' && c.claim.parent === 'n1'), 5000);
  const status = meshOf(b!).relayStatus();
  assert.equal(status.length, 1);
  assert.equal(status[0]!.upstreams, 1, 'the same upstream all along: claimed again, not re-parented');
  assert.equal(v.client.closed, false);
});

test('a node that has not heard the other relays yet still counts their live claims: it does not attach to a full owner', async () => {
  // Slow heartbeats, so the new node starts its relay before it has heard b's first heartbeat.
  const timing = { relay_fanout: 1, heartbeat_ms: 2000, suspect_ms: 6000, dead_ms: 10_000 };
  const { net, nodes: [a, b] } = await mesh(2, { mesh: timing });
  const pub = await syntheticPublisher(rtmpUrl(a!, 'live/fresh'));
  cleanups.push(pub.stop);
  await until('owner announced', async () => (await meshOf(b!).ownership.lookup('live', 'fresh'))?.record.owner === 'n1');
  const vb = await recordingViewer(rtmpUrl(b!, 'live/fresh'));
  cleanups.push(() => vb.client.close());
  await until('b relays from the owner', () => meshOf(b!).relayStatus()[0]?.parent === 'n1' && frameNumbers(vb.frames).length > 5);
  const c = await inProcessNode(net, 'n3', { mesh: timing });
  nodes.push(c);
  const vc = await recordingViewer(rtmpUrl(c, 'live/fresh'));
  cleanups.push(() => vc.client.close());
  await until('c plays', () => frameNumbers(vc.frames).length > 5, 6000);
  assert.equal(meshOf(c).relayStatus()[0]?.parent, 'n2', 'the owner has its F = 1 child already: c attaches to b');
  assert.equal(a!.sessions.list().filter((s) => s.role === 'relay-pull').length, 1, 'the owner still feeds one relay');
});
