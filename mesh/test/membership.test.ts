import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeHeartbeat, type Heartbeat } from '@meshcast/proto';
import { MemoryBusNetwork, Membership, MeshEvents, type Bus, type LoadSample, type MembershipChange } from '../src/index.ts';
import { captureLogger, enc, sleep, waitFor } from './helpers.ts';

const T = { heartbeatMs: 40, suspectMs: 200, deadMs: 350 };

function load(viewers = 0): () => LoadSample {
  return () => ({ viewers, publishers: 0, egressBps: 0, ingressBps: 0, cpu: 0.1, streamsOwned: 0, relaysHeld: 0, draining: false });
}

function makeNode(net: MemoryBusNetwork, id: string, extra: { viewers?: number; logger?: ReturnType<typeof captureLogger> } = {}) {
  const bus = net.connect(id);
  const events = new MeshEvents(bus);
  const m = new Membership({
    bus,
    self: { id, roles: ['ingest', 'playback'], addresses: { rtmp: `rtmp://${id}:1935`, http: `http://${id}:8080` }, capacity: 100 },
    load: load(extra.viewers ?? 0),
    events,
    ...T,
    ...(extra.logger ? { logger: extra.logger.logger } : {}),
  });
  return { id, bus, m, events };
}

async function startFive(net: MemoryBusNetwork, cap?: ReturnType<typeof captureLogger>) {
  const nodes = ['n1', 'n2', 'n3', 'n4', 'n5'].map((id, i) => makeNode(net, id, { viewers: i * 10, ...(cap ? { logger: cap } : {}) }));
  await Promise.all(nodes.map((n) => n.m.start()));
  return nodes;
}

const ids = (m: Membership) => m.table().map((n) => `${n.id}:${n.state}`).join(',');

test('5 nodes converge on the same table with everyone alive and their load', async () => {
  const net = new MemoryBusNetwork();
  const nodes = await startFive(net);
  const want = 'n1:alive,n2:alive,n3:alive,n4:alive,n5:alive';
  await waitFor(() => nodes.every((n) => ids(n.m) === want), 2000, 'convergence');
  for (const n of nodes) {
    const t = n.m.table();
    assert.deepStrictEqual(
      t.map((v) => v.heartbeat.viewers),
      [0, 10, 20, 30, 40],
    );
    assert.equal(t.filter((v) => v.self).length, 1);
    assert.equal(t.find((v) => v.self)?.id, n.id);
    assert.deepStrictEqual(t.find((v) => v.id === 'n3')?.heartbeat.addresses, { rtmp: 'rtmp://n3:1935', http: 'http://n3:8080' });
  }
  const ev = await nodes[0]!.events.read({ limit: 100 });
  assert.deepStrictEqual(ev.filter((e) => e.event.type === 'nodeJoined').map((e) => (e.event as { node: string }).node).sort(), ['n1', 'n2', 'n3', 'n4', 'n5']);
  await Promise.all(nodes.map((n) => n.m.stop()));
  await net.close();
});

test('silent node goes suspect after suspectMs and dead after deadMs; one nodeDead event, by the lowest live id', async () => {
  const net = new MemoryBusNetwork();
  const nodes = await startFive(net);
  await waitFor(() => nodes.every((n) => n.m.table().length === 5), 2000);
  await sleep(T.deadMs + 50); // past the "stale view after start" window for death reports
  const changes: (MembershipChange & { t: number })[] = [];
  nodes[0]!.m.onChange((c) => {
    if (c.node.id === 'n5' && c.kind !== 'updated') changes.push({ ...c, t: Date.now() });
  });
  const t0 = Date.now();
  await nodes[4]!.m.stop({ bye: false }); // goes silent (like SIGKILL)
  await waitFor(() => changes.some((c) => c.kind === 'dead'), 3000, 'dead');
  const suspect = changes.find((c) => c.kind === 'suspect');
  const dead = changes.find((c) => c.kind === 'dead');
  assert.ok(suspect && dead);
  assert.ok(suspect.t - t0 >= T.suspectMs - T.heartbeatMs, `suspect too early: ${suspect.t - t0}`);
  assert.ok(suspect.t - t0 <= T.suspectMs + 150, `suspect too late: ${suspect.t - t0}`);
  assert.ok(dead.t - t0 >= T.deadMs - T.heartbeatMs, `dead too early: ${dead.t - t0}`);
  assert.ok(dead.t - t0 <= T.deadMs + 150, `dead too late: ${dead.t - t0}`);
  for (const n of nodes.slice(0, 4)) {
    await waitFor(() => n.m.get('n5')?.state === 'dead', 1000);
    assert.ok(!n.m.aliveIds().has('n5'));
  }
  await sleep(100);
  const ev = await nodes[0]!.events.read({ limit: 100 });
  const deaths = ev.filter((e) => e.event.type === 'nodeDead');
  assert.equal(deaths.length, 1, 'exactly one node reports the death');
  assert.deepStrictEqual({ node: (deaths[0]!.event as { node: string }).node, by: (deaths[0]!.event as { reportedBy: string }).reportedBy }, { node: 'n5', by: 'n1' });
  await Promise.all(nodes.slice(0, 4).map((n) => n.m.stop()));
  await net.close();
});

test('bye removes the node at once everywhere and appends nodeLeft', async () => {
  const net = new MemoryBusNetwork();
  const nodes = await startFive(net);
  await waitFor(() => nodes.every((n) => n.m.table().length === 5), 2000);
  const left: string[] = [];
  nodes[1]!.m.onChange((c) => {
    if (c.kind === 'left') left.push(c.node.id);
  });
  const t0 = Date.now();
  await nodes[2]!.m.stop({ reason: 'drain' });
  await waitFor(() => nodes.filter((n) => n.id !== 'n3').every((n) => !n.m.get('n3')), 1000, 'removal');
  assert.ok(Date.now() - t0 < T.suspectMs, 'removed well before it could have turned suspect');
  assert.deepStrictEqual(left, ['n3']);
  // late heartbeats of that incarnation do not resurrect it
  await sleep(T.heartbeatMs * 3);
  assert.equal(nodes[0]!.m.get('n3'), undefined);
  const ev = await nodes[0]!.events.read({ limit: 100 });
  assert.ok(ev.some((e) => e.event.type === 'nodeLeft' && e.event.node === 'n3' && e.event.reason === 'drain'));
  assert.ok(!ev.some((e) => e.event.type === 'nodeDead'));
  // a restarted n3 (new incarnation) joins again
  const again = makeNode(net, 'n3');
  await again.m.start();
  await waitFor(() => nodes[0]!.m.get('n3')?.state === 'alive', 1000, 'rejoin');
  await again.m.stop();
  await Promise.all(nodes.map((n) => n.m.stop()));
  await net.close();
});

test('garbage on meshcast.> is ignored and logged once per (peer, reason)', async () => {
  const net = new MemoryBusNetwork();
  const cap = captureLogger();
  const nodes = await startFive(net, cap);
  await waitFor(() => nodes.every((n) => n.m.table().length === 5), 2000);
  const evil = net.connect('evil');
  const hb: Heartbeat = {
    node: 'n1',
    roles: ['playback'],
    addresses: { rtmp: '', http: '' },
    startedAt: 1,
    capacity: 1,
    viewers: 0,
    publishers: 0,
    egressBps: 0,
    ingressBps: 0,
    cpu: 0,
    streamsOwned: 0,
    relaysHeld: 0,
    draining: false,
    placementsSinceLastHb: 0,
    seq: 1,
    sentAt: 0,
  };
  for (let i = 0; i < 50; i++) {
    evil.publish('meshcast.node.evil.hb', enc('not msgpack at all'));
    evil.publish('meshcast.node.evil.bye', new Uint8Array([0xc1]));
    evil.publish('meshcast.node.mallory.hb', encodeHeartbeat(hb)); // claims to be n1
    evil.publish('meshcast.events.nodeDead', enc('junk'));
    evil.publish('meshcast.node.n2.rpc.admit', enc('junk'));
    evil.publish('meshcast.garbage.x', new Uint8Array(1000));
  }
  await evil.events.append('nodeDead', enc('junk in the log'));
  await sleep(100);
  for (const n of nodes) {
    assert.equal(ids(n.m), 'n1:alive,n2:alive,n3:alive,n4:alive,n5:alive');
  }
  const undecodable = cap.matching(/ignoring undecodable heartbeat/);
  // 5 nodes, each logs the (evil, reason) pair once
  assert.equal(undecodable.length, 5);
  assert.equal(undecodable[0]!['peer'], 'evil');
  assert.equal(cap.matching(/ignoring undecodable bye/).length, 5);
  assert.equal(cap.matching(/node id differs from its subject/).length, 5);
  // the event log reader skips the junk too
  const cap2 = captureLogger();
  const me = new MeshEvents(nodes[0]!.bus, cap2.logger);
  const ev = await me.read({ limit: 1000 });
  assert.ok(ev.every((e) => e.event.type === 'nodeJoined'));
  assert.equal(cap2.matching(/ignoring undecodable mesh event/).length, 1);
  // still healthy: another node joins normally
  const n6 = makeNode(net, 'n6');
  await n6.m.start();
  await waitFor(() => nodes.every((n) => n.m.get('n6')?.state === 'alive'), 1000);
  await n6.m.stop();
  await Promise.all(nodes.map((n) => n.m.stop()));
  await net.close();
});

test('partitioned node: both sides see the other dead; on heal it rejoins and announces itself', async () => {
  const net = new MemoryBusNetwork();
  const nodes = await startFive(net);
  await waitFor(() => nodes.every((n) => n.m.table().length === 5), 2000);
  const cut = nodes[3]!;
  const joins: string[] = [];
  nodes[0]!.m.onChange((c) => {
    if (c.kind === 'joined') joins.push(c.node.id);
  });
  net.partition(cut.bus);
  await waitFor(() => nodes[0]!.m.get('n4')?.state === 'dead', 2000, 'n4 dead on n1');
  await waitFor(() => cut.m.table().filter((n) => n.state === 'dead').length === 4, 2000, 'others dead on n4');
  assert.equal(cut.m.get('n4')?.state, 'alive', 'a node never declares itself dead');
  net.heal(cut.bus);
  await waitFor(() => nodes.every((n) => ids(n.m) === 'n1:alive,n2:alive,n3:alive,n4:alive,n5:alive'), 2000, 'reconverged');
  assert.deepStrictEqual(joins, ['n4']);
  await sleep(50);
  const ev = await nodes[0]!.events.read({ limit: 100 });
  assert.equal(ev.filter((e) => e.event.type === 'nodeJoined' && e.event.node === 'n4').length, 2, 'start + rejoin');
  assert.equal(ev.filter((e) => e.event.type === 'nodeDead' && e.event.node === 'n4').length, 1);
  assert.ok(!ev.some((e) => e.event.type === 'nodeDead' && e.event.reportedBy === 'n4'), 'the cut-off node reports nothing');
  await Promise.all(nodes.map((n) => n.m.stop()));
  await net.close();
});

test('rejects impossible timings and bad node ids', () => {
  const net = new MemoryBusNetwork();
  const bus: Bus = net.connect('x');
  const self = { id: 'x', roles: ['playback' as const], addresses: { rtmp: '', http: '' }, capacity: 1 };
  assert.throws(() => new Membership({ bus, self, load: load(), heartbeatMs: 100, suspectMs: 50, deadMs: 200 }), /timings/);
  assert.throws(() => new Membership({ bus, self: { ...self, id: 'a.b' }, load: load() }), /node id/);
});
