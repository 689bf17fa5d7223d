/**
 * The relay actor when the mesh cannot tell it where a stream is (issue: partitions and restarts). A real
 * owner node on the in-process bus serves the pulls; the relay under test has its own bus connection,
 * registries and an injected clock, so the grace period is crossed by moving the clock, not by waiting.
 *
 * - Cut off from the bus, it keeps the pull from its parent while media flows (membership then calls every
 *   peer dead: it must not believe it), does not read the owner (no NATS), pulls again directly from the
 *   last parent when that goes quiet, and closes its viewers once they got no media for the grace period.
 * - Waiting for a stream nobody publishes, it reads the owner once and then waits for the ownership watch:
 *   no polling, one log line, viewers not closed however long they wait.
 * - An owner cut off from NATS keeps publishing locally; its record expires for everyone else, and a relay
 *   elsewhere still gets the stream from it (the last known owner, same epoch) within the grace period.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import pino from 'pino';
import { MemoryBusNetwork, MeshEvents, OwnershipRegistry, RelayClaims, type Bus, type Membership, type NodeView } from '@meshcast/mesh';
import { StreamHub, type MediaSink } from '../src/media/stream-hub.ts';
import type { MediaNode } from '../src/media-node.ts';
import type { NodeMesh } from '../src/mesh/node-mesh.ts';
import { RelayActor } from '../src/mesh/relay-actor.ts';
import { inProcessNode, rtmpUrl, syntheticPublisher, until } from './support.ts';

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** The in-process nodes' timings (test/support.ts): lease 2 s, renew 0.5 s. */
const LEASE = { maxAgeMs: 2000, renewMs: 500 };
const GRACE_MS = 60_000;

class CountingOwnership extends OwnershipRegistry {
  lookups = 0;
  override lookup(app: string, stream: string): ReturnType<OwnershipRegistry['lookup']> {
    this.lookups++;
    return super.lookup(app, stream);
  }
}

class FakeViewer implements MediaSink {
  readonly format = { kind: 'flv' } as const;
  writes = 0;
  evicted: string | undefined;
  constructor(
    readonly id: string,
    private readonly hub: StreamHub,
  ) {}
  bufferedBytes(): number {
    return 0;
  }
  write(): void {
    this.writes++;
  }
  evict(reason: string): void {
    // As a real viewer's connection does when it closes.
    this.evicted = reason;
    this.hub.removeSink(this);
  }
}

interface Line {
  msg: string;
  level: number;
}

interface Rig {
  owner: MediaNode;
  bus: Bus;
  ownership: CountingOwnership;
  relay: RelayActor;
  hub: StreamHub;
  viewer: FakeViewer;
  lines: Line[];
  /** Only the relay's clock moves (the registries judge record ages on real time). */
  clock: { skew: number };
  /** What this node's membership says: every peer dead once it is cut off (as a real one would after dead_ms). */
  cut: { on: boolean };
}

async function rig(net: MemoryBusNetwork, owner: MediaNode, stream: string): Promise<Rig> {
  const bus = net.connect('rx');
  const clock = { skew: 0 };
  const now = (): number => Date.now() + clock.skew;
  const ownership = new CountingOwnership({ bus, nodeId: 'rx', ...LEASE, keepExpiredMs: GRACE_MS });
  await ownership.start();
  const relays = new RelayClaims({ bus, nodeId: 'rx', ...LEASE });
  const cut = { on: false };
  const membership = {
    get: (id: string) => ({ id, state: cut.on ? 'dead' : 'alive' }) as unknown as NodeView,
    aliveIds: () => new Set(cut.on ? [] : [owner.config.node_id]),
  } as unknown as Membership;
  const lines: Line[] = [];
  const log = pino({ level: 'debug' }, new Writable({ write(chunk: Buffer, _e, cb) { for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Line); cb(); } }));
  const hub = new StreamHub('live', stream, { gopCache: true, gopCacheMaxBytes: 1 << 20, flushMs: 0, sinkQueueBytes: 1 << 20, maxLagMs: 60_000 }, log);
  const viewer = new FakeViewer('v1', hub);
  hub.addSink(viewer);
  const relay = new RelayActor(
    hub,
    {
      nodeId: 'rx',
      selfRtmp: 'rtmp://127.0.0.1:1',
      fanout: 4,
      lingerMs: 600_000,
      stallMs: 1000,
      graceMs: GRACE_MS,
      busConnected: () => bus.status === 'connected',
      now,
      secret: 'test-secret',
      ownership,
      relays,
      membership,
      events: new MeshEvents(bus),
      log,
      backoff: { baseMs: 100, capMs: 500 },
    },
    () => {},
  );
  cleanups.push(async () => {
    relay.handle({ type: 'stop', reason: 'test over' });
    await ownership.close();
    await relays.close();
  });
  return { owner, bus, ownership, relay, hub, viewer, lines, clock, cut };
}

async function ownerNode(net: MemoryBusNetwork, id: string): Promise<MediaNode> {
  const n = await inProcessNode(net, id);
  cleanups.push(() => n.stop());
  return n;
}

function meshOf(n: MediaNode): NodeMesh {
  return (n as unknown as { mesh: NodeMesh }).mesh;
}

/** Moves the injected clock in 250 ms ticks (the relay's own timer also ticks, on real time). */
function advance(r: Rig, ms: number): void {
  for (let t = 0; t < ms; t += 250) {
    r.clock.skew += 250;
    r.relay.handle({ type: 'tick' });
  }
}

test('cut off from the bus: keeps its parent while media flows, reads no owner, closes its viewers after the grace period', async () => {
  const net = new MemoryBusNetwork();
  const owner = await ownerNode(net, 'n1');
  const pub = await syntheticPublisher(rtmpUrl(owner, 'live/cut'));
  cleanups.push(pub.stop);
  await until('owner announced', async () => (await meshOf(owner).ownership.lookup('live', 'cut'))?.record.owner === 'n1');
  const r = await rig(net, owner, 'cut');
  r.relay.handle({ type: 'start' });
  await until('relay pulls', () => r.relay.status().state === 'pulling' && r.viewer.writes > 10);

  // Cut off: the bus is gone and the membership calls the parent dead. Media still comes from the parent.
  net.partition(r.bus);
  r.cut.on = true;
  r.relay.handle({ type: 'busDown' });
  const lookups = r.ownership.lookups;
  const writes = r.viewer.writes;
  await new Promise((res) => setTimeout(res, 1500));
  assert.equal(r.relay.status().state, 'pulling', 'a parent whose media flows is kept although the membership calls it dead');
  assert.equal(r.relay.status().parent, 'n1');
  assert.ok(r.viewer.writes > writes + 10, `the viewer keeps getting media (${r.viewer.writes - writes} writes)`);

  // The publisher leaves: the parent goes quiet. The relay asks the same parent again, directly (no owner read).
  pub.stop();
  await until('relay re-pulls from its last parent', () => r.lines.some((l) => l.msg === 'relay re-parenting'));
  await new Promise((res) => setTimeout(res, 1500));
  assert.equal(r.ownership.lookups, lookups, 'no owner lookups while cut off');
  assert.equal(r.viewer.evicted, undefined, 'viewers are not closed before the grace period');
  advance(r, GRACE_MS - 3000);
  assert.equal(r.viewer.evicted, undefined, 'still within the grace period');
  advance(r, 4000);
  assert.match(r.viewer.evicted ?? '', /cut off from the mesh bus/, 'closed once no media came for the grace period');
  assert.equal(r.hub.sinkCount, 0);
  assert.equal(r.ownership.lookups, lookups);
  net.heal(r.bus);
});

test('a viewer waiting for a stream nobody publishes: one owner read, no polling, one log line, woken by the watch', async () => {
  const net = new MemoryBusNetwork();
  const owner = await ownerNode(net, 'n1');
  const r = await rig(net, owner, 'nobody');
  const unwatch = r.ownership.watch((c) => {
    if (c.stream === 'nobody') r.relay.handle({ type: 'ownerChanged', owner: c.record ? { owner: c.record.owner, epoch: c.record.epoch } : undefined });
  });
  cleanups.push(unwatch);
  r.relay.handle({ type: 'start' });
  await until('relay waits', () => r.relay.status().state === 'awaitingOwner');
  advance(r, 5 * 60_000);
  assert.equal(r.ownership.lookups, 1, 'five minutes of waiting read the owner once');
  assert.equal(r.lines.filter((l) => /waiting for a publisher/.test(l.msg)).length, 1, 'logged once');
  assert.ok(r.lines.filter((l) => l.level >= 30).length <= 1, `info lines: ${r.lines.filter((l) => l.level >= 30).map((l) => l.msg).join(' | ')}`);
  assert.equal(r.viewer.evicted, undefined, 'a viewer waiting for a stream that is not published is not closed');

  const pub = await syntheticPublisher(rtmpUrl(owner, 'live/nobody'));
  cleanups.push(pub.stop);
  await until('the watch wakes the relay and it pulls', () => r.relay.status().state === 'pulling' && r.viewer.writes > 5);
});

test('an owner cut off from NATS keeps publishing; after its record expires a relay elsewhere still gets the stream from it', async () => {
  const net = new MemoryBusNetwork();
  const owner = await ownerNode(net, 'n1');
  const pub = await syntheticPublisher(rtmpUrl(owner, 'live/island'));
  cleanups.push(pub.stop);
  const r = await rig(net, owner, 'island');
  await until('the relay node sees the owner record', async () => (await r.ownership.lookup('live', 'island'))?.record.owner === 'n1');
  const epoch = (await r.ownership.lookup('live', 'island'))!.record.epoch;
  // The owner is cut off: its lease expires (locally, and for everyone else); its publisher keeps pushing.
  net.partition(meshOf(owner).bus);
  await until('record expired for the rest of the mesh', async () => (await r.ownership.lookup('live', 'island')) === null, 6000);
  assert.equal(r.ownership.lastExpired('live', 'island')?.record.owner, 'n1');
  assert.equal(pub.client.closed, false, 'the cut-off owner keeps its publisher');

  r.relay.handle({ type: 'start' });
  await until('the relay pulls the last known owner', () => r.relay.status().state === 'pulling' && r.viewer.writes > 10);
  assert.equal(r.relay.status().epoch, `epoch ${epoch} of n1`);
  assert.ok(r.lines.some((l) => l.msg === 'ownership record expired; pulling from the last known owner'));
  net.heal(meshOf(owner).bus);
});
