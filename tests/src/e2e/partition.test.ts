/**
 * Partitions between a node and NATS, with real node processes, a real nats-server and a TCP proxy
 * (harness/tcp-proxy.ts) on one node's NATS link, cut by resetting and refusing its connections.
 *
 * (a) A playback node cut off from NATS while its viewers play a remote stream, and the publisher then
 *     reconnects (its media pauses ~1 s). Its viewers either keep getting media from their last parent or
 *     are closed within mesh.partition_grace_ms (+ the relay's stall timeout and a tick) so players
 *     re-route; it reports not-ready (/readyz 503); route answers stop naming it, its own and the others'.
 *     Before: viewers stayed connected with no media for ever (0 frames in 60 s, 5 of 5 runs), /readyz ok.
 * (b) An owner cut off from NATS while its publisher keeps pushing. Its record expires for the rest of the
 *     mesh after the lease; relays already pulling from it keep their media, and a new viewer elsewhere gets
 *     the stream from it (the last known owner, same epoch) within the grace period.
 *     Before: the new viewer waited 11 s or more (until the owner was back).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startSyntheticPublisher, type SyntheticPublisher } from '@meshcast/node/client';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { TcpProxy } from '../harness/tcp-proxy.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { RecordingViewer } from '../chaos/lib/viewer.ts';

const MESH = {
  mesh_secret: 'e2e-secret',
  heartbeat_ms: 500,
  suspect_ms: 1500,
  dead_ms: 2500,
  lease_ms: 4000,
  renew_ms: 1000,
  relay_linger_ms: 2000,
  relay_stall_ms: 1500,
  partition_grace_ms: 5000,
};

const nodes: NodeProcess[] = [];
const closers: Array<() => unknown> = [];
after(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  await Promise.all(nodes.map((n) => n.kill()));
  for (const n of nodes) n.cleanup();
});

async function node(id: string, nats: string): Promise<NodeProcess> {
  const n = await NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats] } } });
  nodes.push(n);
  return n;
}

async function alive(n: NodeProcess): Promise<number> {
  const r = await n.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes').catch(() => undefined);
  return r?.nodes.filter((x) => x.state === 'alive').length ?? 0;
}

async function publish(url: string, firstFrame: number): Promise<SyntheticPublisher> {
  const p = await startSyntheticPublisher(url, { firstFrame, timeoutMs: 5000 });
  closers.push(() => p.stop());
  return p;
}

async function viewer(url: string, label: string): Promise<RecordingViewer> {
  const v = await RecordingViewer.open(url, label);
  closers.push(() => v.close());
  return v;
}

interface Route {
  node: string;
  next: Array<{ node: string }>;
}

/** A route answer from `n`'s public port: the nodes it names (chosen + fallbacks), or its HTTP status. */
async function routeNames(n: NodeProcess, path: string): Promise<{ status: number; names: string[] }> {
  const r = await fetch(`${n.httpUrl}/api/v1/route/${path}`, { signal: AbortSignal.timeout(3000) }).catch(() => undefined);
  if (!r) return { status: 0, names: [] };
  if (r.status !== 200) return { status: r.status, names: [] };
  const body = (await r.json()) as Route;
  return { status: 200, names: [body.node, ...body.next.map((x) => x.node)] };
}

async function readyz(n: NodeProcess): Promise<number> {
  const r = await fetch(`${n.httpUrl}/readyz`, { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
  return r?.status ?? 0;
}

async function mesh(ids: string[], cutId: string): Promise<{ nats: NatsServer; proxy: TcpProxy; byId: Map<string, NodeProcess> }> {
  const nats = await startNatsServer();
  closers.push(() => nats.stop());
  const proxy = await TcpProxy.start('127.0.0.1', nats.port);
  closers.push(() => proxy.close());
  const started = await Promise.all(ids.map((id) => node(id, id === cutId ? proxy.url() : nats.url)));
  for (const n of started) await waitFor(`${n.nodeId} sees the mesh`, async () => (await alive(n)) >= ids.length, 20_000, 100);
  return { nats, proxy, byId: new Map(started.map((n) => [n.nodeId, n])) };
}

describe('partitions between a node and NATS', () => {
  test('(a) a playback node cut off from NATS: its viewers keep their media or are closed in bounded time; not ready; not routed to', async () => {
    const { proxy, byId } = await mesh(['pa-A', 'pa-B', 'pa-P'], 'pa-P');
    const [a, b, p] = [byId.get('pa-A')!, byId.get('pa-B')!, byId.get('pa-P')!];
    const pub1 = await publish(`${a.rtmpUrl}/live/cam`, 0);
    const onP = [await viewer(`${p.rtmpUrl}/live/cam`, 'P#0'), await viewer(`${p.rtmpUrl}/live/cam`, 'P#1')];
    const onB = await viewer(`${b.rtmpUrl}/live/cam`, 'B#0');
    await waitFor('everyone plays', () => [...onP, onB].every((v) => v.numbered().length > 20), 15_000);
    assert.equal((await routeNames(b, 'live/cam')).names.includes(p.nodeId), true, 'before the cut, P is a candidate');

    const cutAt = Date.now();
    proxy.cut();
    // The publisher reconnects to its node (the parent's media pauses for ~1 s), as in the soak.
    await sleep(1000);
    pub1.stop();
    await sleep(1000);
    const pub2 = await publish(`${a.rtmpUrl}/live/cam`, 100_000);
    const pausedAt = Date.now();

    const notReadyAfter = await waitFor('P reports not-ready', async () => ((await readyz(p)) === 503 ? Date.now() - cutAt : undefined), 5000, 100);
    const bound = MESH.partition_grace_ms + MESH.relay_stall_ms + 2000;
    const outcome = await Promise.all(
      onP.map(async (v) => {
        const f = await v.waitFrame((x) => x.n! >= 100_000, bound, pausedAt);
        if (f) return { v: v.label, resumedMs: f.at - pausedAt };
        await waitFor(`${v.label} closed`, () => v.closedAt, 3000, 50).catch(() => undefined);
        return { v: v.label, closedMs: v.closedAt !== undefined ? v.closedAt - pausedAt : undefined };
      }),
    );
    console.log(`(a) cut-off playback node: /readyz 503 after ${notReadyAfter} ms; viewers: ${JSON.stringify(outcome)}`);
    for (const o of outcome) {
      assert.ok('resumedMs' in o || (o.closedMs !== undefined && o.closedMs <= bound), `${o.v}: resumed, or closed within ${bound} ms: ${JSON.stringify(o)}`);
    }
    // The connected peer resumes (control).
    assert.ok(await onB.waitFrame((x) => x.n! >= 100_000, 5000, pausedAt), 'the connected node\'s viewer resumes');

    // The publisher moves to B: the cut-off node cannot learn the new owner, and its last parent stops serving.
    // Its viewers that still play must be closed within the bound (their players re-route), not stranded.
    const stillOnP = onP.filter((v) => v.survived);
    pub2.stop();
    const movedAt = Date.now();
    const pub3 = await publish(`${b.rtmpUrl}/live/cam`, 200_000);
    const closedAfter = await Promise.all(
      stillOnP.map(async (v) => {
        await waitFor(`${v.label} closed`, () => v.closedAt, bound + 3000, 50).catch(() => undefined);
        const lastFrame = Math.max(movedAt, ...v.numbered().map((f) => f.at));
        return { v: v.label, closedMs: v.closedAt !== undefined ? v.closedAt - lastFrame : undefined, framesOfNewOwner: v.numbered().filter((f) => f.n! >= 200_000).length };
      }),
    );
    console.log(`(a) publisher moved to B: P's viewers (ms from their last frame to close): ${JSON.stringify(closedAfter)}`);
    for (const c of closedAfter) assert.ok(c.closedMs !== undefined && c.closedMs <= bound, `${c.v} closed within ${bound} ms of its last frame: ${JSON.stringify(c)}`);
    assert.ok(await onB.waitFrame((x) => x.n! >= 200_000, 5000, movedAt), 'the connected node\'s viewer follows the move');

    // Route answers: the others stop naming P once it is dead to them; P does not offer itself.
    const fromB = await waitFor('B stops naming P', async () => {
      const r = await routeNames(b, 'live/cam');
      return r.status === 200 && !r.names.includes(p.nodeId) ? Date.now() - cutAt : undefined;
    }, MESH.dead_ms + 5000, 100);
    const fromP = await routeNames(p, 'live/cam');
    console.log(`(a) route answers: B stopped naming P ${fromB} ms after the cut; P answers ${fromP.status} naming [${fromP.names.join(', ')}]`);
    assert.ok(!fromP.names.includes(p.nodeId), `P does not route viewers to itself: ${fromP.status} [${fromP.names.join(', ')}]`);
    assert.equal(await readyz(p), 503);

    // Healed: ready again, and routable.
    proxy.heal();
    await waitFor('P ready again', async () => (await readyz(p)) === 200, 15_000, 200);
    await waitFor('B names P again', async () => (await routeNames(b, 'live/cam')).names.includes(p.nodeId), 10_000, 200);
    pub3.stop();
  });

  test('(b) an owner cut off from NATS while its publisher pushes: relays keep media, a new viewer elsewhere gets the stream', async () => {
    const { proxy, byId } = await mesh(['pb-A', 'pb-B', 'pb-P'], 'pb-A');
    const [a, b, p] = [byId.get('pb-A')!, byId.get('pb-B')!, byId.get('pb-P')!];
    const pub = await publish(`${a.rtmpUrl}/live/island`, 0);
    const onP = await viewer(`${p.rtmpUrl}/live/island`, 'P#0');
    await waitFor('P plays', () => onP.numbered().length > 20, 15_000);

    const cutAt = Date.now();
    proxy.cut();
    const goneAfter = await waitFor('the record expired for the rest of the mesh', async () => {
      const r = await b.api<{ streams: Array<{ stream: string }> }>('/api/v1/mesh/streams').catch(() => undefined);
      return r && !r.streams.some((s) => s.stream === 'island') ? Date.now() - cutAt : undefined;
    }, MESH.lease_ms + 6000, 100);
    const openedAt = Date.now();
    const onB = await viewer(`${b.rtmpUrl}/live/island`, 'B#new');
    const first = await onB.waitFrame(() => true, MESH.partition_grace_ms, openedAt);
    const firstMs = first ? first.at - openedAt : undefined;
    await sleep(1000);
    const pRecent = onP.numbered(Date.now() - 1000).length;
    console.log(`(b) cut-off owner: record gone for the mesh ${goneAfter} ms after the cut; new viewer on B: first frame after ${firstMs} ms; P's viewer frames in the last second: ${pRecent}; publisher connected: ${!pub.client.closed}`);
    assert.equal(pub.client.closed, false, 'the cut-off owner keeps its publisher');
    assert.ok(pRecent > 10, `the relay already pulling keeps its media (${pRecent} frames in the last second)`);
    assert.ok(firstMs !== undefined && firstMs <= 3000, `a new viewer elsewhere gets the stream from the last known owner (first frame after ${firstMs} ms)`);
    proxy.heal();
  });
});
