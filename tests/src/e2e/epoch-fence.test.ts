/**
 * The epoch fence on the media path with real parts: a real nats-server, three node processes.
 * A stream owned by A is taken over on B while a relay on C pulls it from A. A closes the pulls
 * it serves at once (with NetStream.Play.EpochMismatch), C's relay re-parents to B at the new
 * epoch, and C's viewer keeps its connection and never gets an old-epoch frame after a new one.
 * A pull that asks a node for an epoch it does not serve is refused with a status naming both.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { RtmpClient, RtmpClientError, startSyntheticPublisher, syntheticPublisherId, type SyntheticPublisher } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';
import { EPOCH_FENCE_CODE, signCredential, type MeshPull } from '../../../services/node/src/mesh/mesh-credential.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { waitFor } from '../harness/ports.ts';

const SECRET = 'e2e-epoch-secret';
const MESH = { mesh_secret: SECRET, heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };

interface OwnerList {
  streams: Array<{ app: string; stream: string; owner: string; epoch: number }>;
}
interface RelayList {
  relays: Array<{ stream: string; state: string; parent?: string; epoch?: string; upstreams: number }>;
}

let nats: NatsServer | undefined;
const nodes: NodeProcess[] = [];
const pubs: SyntheticPublisher[] = [];
const clients: RtmpClient[] = [];

before(async () => {
  nats = await startNatsServer();
});

after(async () => {
  for (const p of pubs) p.stop();
  for (const c of clients) c.close();
  await Promise.all(nodes.map(async (n) => (n.exitCode === undefined ? n.kill() : undefined)));
  for (const n of nodes) n.cleanup();
  await nats?.stop();
});

async function node(id: string, roles: string): Promise<NodeProcess> {
  // A second publisher takes the stream over (a new epoch) whatever the default duplicate_publish is.
  const n = await NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats!.url] }, apps: { live: { duplicate_publish: 'takeover' } } }, args: ['--roles', roles] });
  nodes.push(n);
  return n;
}

interface Pull {
  client: RtmpClient;
  video: number;
  statuses: Array<{ code: string; description: string; at: number }>;
  closedAt: number | undefined;
}

/** Pulls as a relay of node `as` would, naming `pull` in a pull credential signed with the mesh secret. */
async function relayPull(parent: NodeProcess, as: string, pull: MeshPull): Promise<Pull> {
  const client = await RtmpClient.connect(`${parent.rtmpUrl}/${pull.app}/${pull.stream}`, { timeoutMs: 5000, connectExtras: { meshcast: { ...signCredential(SECRET, as, { ...pull, to: parent.nodeId }) } } });
  clients.push(client);
  const p: Pull = { client, video: 0, statuses: [], closedAt: undefined };
  client.on('status', (s: { code: string; description: string }) => p.statuses.push({ code: s.code, description: s.description, at: Date.now() }));
  client.once('close', () => (p.closedAt = Date.now()));
  client.onFrame = (m) => {
    if (m.type === 9) p.video++;
  };
  await client.play(undefined, 5000);
  return p;
}

test('a stream taken over on B while C relays it from A: A fences the pulls it serves at once, C re-parents to the new epoch, its viewer keeps playing and never gets an old-epoch frame after a new one', async () => {
  const [a, b, c] = await Promise.all([node('EF-A', 'ingest'), node('EF-B', 'ingest'), node('EF-C', 'playback')]);
  await waitFor('EF-C sees 3 nodes', async () => (await c.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((x) => x.state === 'alive').length >= 3, 15_000, 100);
  const p1 = await startSyntheticPublisher(`${a.rtmpUrl}/live/epoch`);
  pubs.push(p1);
  const owner = async (): Promise<{ owner: string; epoch: number } | undefined> => (await c.api<OwnerList>('/api/v1/mesh/streams')).streams.find((s) => s.stream === 'epoch');
  const first = await waitFor('A owns live/epoch', async () => ((await owner())?.owner === 'EF-A' ? owner() : undefined), 15_000, 100);

  const frames: Array<{ pub: number; at: number }> = [];
  const viewer = await RtmpClient.openPlayer(`${c.rtmpUrl}/live/epoch`, {
    timeoutMs: 5000,
    onFrame: (m: RtmpMessage) => {
      const pub = syntheticPublisherId(m.type, m.payload);
      if (pub !== undefined) frames.push({ pub, at: Date.now() });
    },
  });
  clients.push(viewer);
  let viewerClosed: string | undefined;
  viewer.once('close', (r: string) => (viewerClosed = r));
  const relayOnC = async (): Promise<RelayList['relays'][number] | undefined> => (await c.api<RelayList>('/api/v1/relays')).relays.find((r) => r.stream === 'epoch');
  await waitFor('C relays from A', async () => (await relayOnC())?.state === 'pulling', 10_000, 100);
  assert.equal((await relayOnC())?.parent, 'EF-A');
  assert.equal((await relayOnC())?.epoch, `epoch ${first.epoch} of EF-A`);
  await waitFor('C plays the first epoch', () => frames.length > 30, 10_000, 50);

  // A refuses a pull for an epoch it does not hold, naming both.
  const stale = await relayPull(a, 'EF-X', { app: 'live', stream: 'epoch', owner: 'EF-A', epoch: first.epoch + 1 }).then(
    () => assert.fail('a stale epoch was admitted'),
    (err: unknown) => err,
  );
  assert.ok(stale instanceof RtmpClientError && stale.code === EPOCH_FENCE_CODE, String(stale));
  assert.match(stale.message, new RegExp(`asked for epoch ${first.epoch + 1} of EF-A, node EF-A serves live/epoch at epoch ${first.epoch} of EF-A`));
  // A pull for the current epoch that we watch close (another relay of A, as seen from its side).
  const probe = await relayPull(a, 'EF-X', { app: 'live', stream: 'epoch', owner: 'EF-A', epoch: first.epoch });
  await waitFor('frames on the probe pull', () => probe.video > 10, 5000, 20);
  let p1ClosedAt: number | undefined;
  p1.client.once('close', () => (p1ClosedAt = Date.now()));

  const takeoverAt = Date.now();
  const p2 = await startSyntheticPublisher(`${b.rtmpUrl}/live/epoch`);
  pubs.push(p2);
  const publishedAt = Date.now();
  await waitFor('A drops its old publisher (fenced)', () => p1ClosedAt !== undefined, 10_000, 10);
  await waitFor('A closes the probe pull', () => probe.closedAt !== undefined, 5000, 10);
  const fence = probe.statuses.find((s) => s.code === EPOCH_FENCE_CODE);
  assert.ok(fence, `the pull was told why it closed: ${JSON.stringify(probe.statuses)}`);
  assert.match(fence.description, new RegExp(`live/epoch at epoch ${first.epoch} of EF-A is no longer served here`));
  // "At once": in the same turn as A fenced its publisher, not on a later tick, renewal or stall timer.
  assert.ok(Math.abs(probe.closedAt! - p1ClosedAt!) <= 250, `probe closed ${probe.closedAt! - p1ClosedAt!} ms after the publisher's fence`);

  const second = await waitFor('B owns live/epoch', async () => ((await owner())?.owner === 'EF-B' ? owner() : undefined), 10_000, 50);
  assert.ok(second.epoch > first.epoch, `a takeover moves the epoch on (${first.epoch} → ${second.epoch})`);
  await waitFor('C re-parented to B at the new epoch', async () => {
    const r = await relayOnC();
    return r?.state === 'pulling' && r.parent === 'EF-B' && r.epoch === `epoch ${second.epoch} of EF-B`;
  }, 10_000, 50);
  await waitFor('C plays the new epoch', () => frames.filter((f) => f.pub === p2.publisherId).length > 30, 10_000, 50);

  assert.equal(viewerClosed, undefined, 'the viewer on C kept its connection');
  const firstNew = frames.findIndex((f) => f.pub === p2.publisherId);
  assert.ok(firstNew > 0 && frames.slice(0, firstNew).every((f) => f.pub === p1.publisherId), 'the viewer saw the first epoch, then the second');
  const oldAfterNew = frames.slice(firstNew).filter((f) => f.pub !== p2.publisherId).length;
  assert.equal(oldAfterNew, 0, 'no frame of the old epoch after the first frame of the new one');
  const lastOld = frames[firstNew - 1]!.at;
  console.log(
    `# epoch fence: takeover published after ${publishedAt - takeoverAt} ms; A fenced its publisher ${p1ClosedAt! - publishedAt} ms and the relay pull ${probe.closedAt! - publishedAt} ms after; ` +
      `C's viewer: last old-epoch frame → first new-epoch frame ${frames[firstNew]!.at - lastOld} ms, old-epoch frames after a new one ${oldAfterNew}`,
  );
  const reparent = c.logs().split('\n').filter((l) => l.includes('relay re-parenting')).map((l) => /"reason":"([^"]*)"/.exec(l)?.[1]);
  console.log(`# epoch fence: C re-parented because: ${reparent.join(' | ') || 'no re-parent line'}`);
});
