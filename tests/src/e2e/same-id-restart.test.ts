/**
 * A node restarted with the same node id within its lease (kill -9, then start again), with real node
 * processes and a real nats-server, production lease (10 s), duplicate_publish: reject.
 *
 * - Its publisher publishes again at once: the ownership record carries the dead process's boot id, so the
 *   new process takes it over instead of refusing its own stream. Before: refused ("already being
 *   published on node <itself>") for 9 s, 8 refusals.
 * - The relay claim the dead process left (it relayed another node's stream) no longer shows as a live child
 *   of its parent once the new process starts. Before: up to 10 s.
 * - A publish the mesh refuses (reject policy, the stream is owned elsewhere) leaves no stream entry on the
 *   refusing node. Before: a dead entry stayed in the stream API.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { startSyntheticPublisher, type SyntheticPublisher } from '@meshcast/node/client';
import { startNatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { RecordingViewer } from '../chaos/lib/viewer.ts';

const MESH = { mesh_secret: 'e2e-secret', heartbeat_ms: 1000, suspect_ms: 3000, dead_ms: 5000, lease_ms: 10_000, renew_ms: 3000, relay_linger_ms: 10_000, relay_stall_ms: 2000 };
const REJECT = { apps: { live: { duplicate_publish: 'reject' } } };

const nodes: NodeProcess[] = [];
const closers: Array<() => unknown> = [];
after(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  await Promise.all(nodes.map((n) => n.kill()));
  for (const n of nodes) n.cleanup();
});

async function node(id: string, nats: string): Promise<NodeProcess> {
  const n = await NodeProcess.start({ nodeId: id, config: { ...REJECT, mesh: { ...MESH, nats: [nats] } } });
  nodes.push(n);
  return n;
}

interface Claims {
  relays: Array<{ node: string; parent: string; bootId?: string }>;
}
interface Streams {
  streams: Array<{ app: string; stream: string }>;
}

/** Publishes, retrying every 250 ms while refused; the refusals and the time to the accepted publish. */
async function publishUntilAccepted(url: string, deadlineMs: number): Promise<{ pub: SyntheticPublisher; refusals: string[]; tookMs: number }> {
  const t0 = Date.now();
  const refusals: string[] = [];
  for (;;) {
    try {
      const pub = await startSyntheticPublisher(url, { timeoutMs: 5000 });
      closers.push(() => pub.stop());
      return { pub, refusals, tookMs: Date.now() - t0 };
    } catch (err) {
      refusals.push(err instanceof Error ? err.message : String(err));
      if (Date.now() - t0 > deadlineMs) throw new Error(`still refused after ${deadlineMs} ms: ${refusals.slice(-1)[0]}`);
      await sleep(250);
    }
  }
}

test('same node id restarted within the lease: its publisher is accepted at once, its stale relay claim stops counting; a refused publish leaves no entry', async () => {
  const nats = await startNatsServer();
  closers.push(() => nats.stop());
  const y = await node('sr-Y', nats.url);
  const x = await node('sr-X', nats.url);
  await waitFor('mesh of 2', async () => ((await x.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length) === 2, 20_000, 100);

  // X owns live/mine; X relays Y's live/theirs to a viewer (X's claim names Y as its parent).
  const first = await startSyntheticPublisher(`${x.rtmpUrl}/live/mine`, { timeoutMs: 5000 });
  const theirs = await startSyntheticPublisher(`${y.rtmpUrl}/live/theirs`, { timeoutMs: 5000 });
  closers.push(() => theirs.stop());
  const v = await RecordingViewer.open(`${x.rtmpUrl}/live/theirs`, 'X#0');
  closers.push(() => v.close());
  await waitFor('X relays theirs', () => v.numbered().length > 10, 10_000);
  await waitFor('X owns mine', async () => (await y.api<{ streams: Array<{ stream: string; owner: string }> }>('/api/v1/mesh/streams')).streams.some((s) => s.stream === 'mine' && s.owner === 'sr-X'), 10_000, 100);

  // A refused publish (reject: Y is asked for X's stream) leaves no stream entry on Y.
  await assert.rejects(startSyntheticPublisher(`${y.rtmpUrl}/live/mine`, { timeoutMs: 5000 }), /already being published/);
  await sleep(300);
  const yStreams = await y.api<Streams>('/api/v1/streams');
  assert.ok(!yStreams.streams.some((s) => s.stream === 'mine'), `no dead entry for the refused publish: ${JSON.stringify(yStreams.streams.map((s) => s.stream))}`);

  // kill -9 X and start it again with the same node id.
  await x.kill();
  first.stop();
  v.close();
  const killedAt = Date.now();
  const x2 = await node('sr-X', nats.url);
  const upAt = Date.now();
  const { refusals, tookMs } = await publishUntilAccepted(`${x2.rtmpUrl}/live/mine`, 15_000);
  const claimGoneMs = await waitFor(
    "the dead process's relay claim is gone",
    async () => ((await y.api<Claims>('/api/v1/mesh/relays/live/theirs')).relays.some((c) => c.node === 'sr-X') ? undefined : Date.now() - upAt),
    15_000,
    100,
  );
  console.log(
    `same-id restart: node up ${upAt - killedAt} ms after kill -9; publish accepted ${tookMs} ms after it was up, ${refusals.length} refusals${refusals.length ? ` (${refusals[0]})` : ''}; stale relay claim gone ${claimGoneMs} ms after start`,
  );
  assert.equal(refusals.length, 0, `accepted at once, not refused: ${refusals.join(' | ')}`);
  assert.ok(claimGoneMs < 3000, `the stale relay claim stops counting once the node is up (${claimGoneMs} ms)`);
  const owner = (await y.api<{ streams: Array<{ stream: string; owner: string; bootId?: string }> }>('/api/v1/mesh/streams')).streams.find((s) => s.stream === 'mine');
  assert.equal(owner?.owner, 'sr-X');
  assert.ok(owner?.bootId, 'the record names the process instance');
});
