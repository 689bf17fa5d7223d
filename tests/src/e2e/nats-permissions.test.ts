/**
 * The NATS users and permissions we ship (compose/nats/auth.conf), on a real nats-server with
 * JetStream: the `mesh` user is enough for everything a node and meshctl do (heartbeats, KV
 * ownership and relay claims, the event stream, admission and stats RPCs, a relayed stream);
 * the read-only `inspect` user sees the mesh subjects but cannot publish on them, write a KV
 * value or answer a request; nobody gets in without a user.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { RtmpClient, startSyntheticPublisher, type SyntheticPublisher } from '@meshcast/node/client';
import { encodeOwnershipRecord } from '@meshcast/proto';
import { runMeshctl } from '../../../tools/src/meshctl/cli.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { sleep, waitFor } from '../harness/ports.ts';

const AUTH_CONF = resolve(import.meta.dirname, '../../../compose/nats/auth.conf');
const SECRET = 'e2e-permissions-secret';
const MESH_PASS = 'mesh-pw-e2e';
const INSPECT_PASS = 'inspect-pw-e2e';
const MESH = { mesh_secret: SECRET, heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000 };

describe("the compose NATS users: 'mesh' runs the mesh, 'inspect' only reads", () => {
  let nats: NatsServer;
  let dir: string;
  const nodes: NodeProcess[] = [];
  const pubs: SyntheticPublisher[] = [];
  const conns: NatsConnection[] = [];

  before(async () => {
    // The server reads the passwords from its environment, as in docker-compose.yml.
    process.env['NATS_MESH_PASSWORD'] = MESH_PASS;
    process.env['NATS_INSPECT_PASSWORD'] = INSPECT_PASS;
    dir = mkdtempSync(join(tmpdir(), 'meshcast-natsperm-'));
    copyFileSync(AUTH_CONF, join(dir, 'auth.conf'));
    writeFileSync(join(dir, 'server.conf'), 'include ./auth.conf\n');
    nats = await startNatsServer({ args: ['-c', join(dir, 'server.conf')] });
  });

  after(async () => {
    for (const p of pubs) p.stop();
    for (const c of conns) await c.close().catch(() => undefined);
    await Promise.all(nodes.map(async (n) => (n.exitCode === undefined ? n.kill() : undefined)));
    for (const n of nodes) n.cleanup();
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("nodes and meshctl with the 'mesh' user: the mesh forms, owns, relays, answers RPCs and logs events", async () => {
    const env = { MESHCAST_NATS_USER: 'mesh', MESHCAST_NATS_PASS: MESH_PASS };
    const start = (id: string, roles: string): Promise<NodeProcess> => NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats.url] } }, args: ['--roles', roles], env });
    const [a, b] = await Promise.all([start('NP-A', 'ingest'), start('NP-B', 'playback')]);
    nodes.push(a, b);
    await waitFor('B sees 2 nodes', async () => (await b.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 2, 15_000, 100);
    pubs.push(await startSyntheticPublisher(`${a.rtmpUrl}/live/perm`));
    let frames = 0;
    const v = await RtmpClient.openPlayer(`${b.rtmpUrl}/live/perm`, { onFrame: () => frames++ });
    try {
      await waitFor('frames relayed to B', () => frames > 30, 10_000);
    } finally {
      v.close();
    }
    const out: string[] = [];
    const err: string[] = [];
    const io = { out: (t: string) => out.push(t), err: (t: string) => err.push(t), readStdin: async () => Buffer.alloc(0), env: { ...env, MESHCAST_MESH_SECRET: SECRET } };
    const code = await runMeshctl(['--nats', nats.url, '--wait', '1200', 'streams', '--json'], io);
    assert.equal(code, 0, err.join('\n'));
    const j = JSON.parse(out.join('\n')) as { streams: Array<{ stream: string; owner: string }>; statsFrom: string[] };
    assert.equal(j.streams.find((s) => s.stream === 'perm')?.owner, 'NP-A');
    assert.deepEqual(j.statsFrom, ['NP-A', 'NP-B'], 'both nodes answered the stats RPC');
    out.length = 0;
    assert.equal(await runMeshctl(['--nats', nats.url, 'events', '--limit', '50', '--json'], io), 0, err.join('\n'));
    assert.ok(out.join('\n').includes('"relayStarted"'), 'the event stream works');
  });

  test("the 'inspect' user sees the mesh but cannot write to it; without a user nothing connects", async () => {
    const inspect = await connect({ servers: nats.url, user: 'inspect', pass: INSPECT_PASS });
    conns.push(inspect);
    const errors: string[] = [];
    void (async () => {
      for await (const s of inspect.status()) if (s.type === 'error') errors.push(String((s as { error?: unknown }).error ?? s.type));
    })();
    let heard = 0;
    inspect.subscribe('meshcast.node.*.hb', { callback: () => void heard++ });
    await waitFor('heartbeats heard', () => heard > 0, 5000);
    // A KV write and an RPC are requests: refused by the server, so no answer comes.
    const put = await inspect.request('$KV.meshcast-streams.live.perm', encodeOwnershipRecord({ owner: 'x', rtmp: 'rtmp://127.0.0.1:9', epoch: 9, startedAt: 1, renewedAt: 1, tracks: {} }), { timeout: 1500 }).then(
      () => 'answered',
      (e: unknown) => String((e as Error).message),
    );
    const drain = await inspect.request('meshcast.node.NP-B.rpc.drain', new Uint8Array([1]), { timeout: 1500 }).then(
      () => 'answered',
      (e: unknown) => String((e as Error).message),
    );
    inspect.publish('meshcast.node.NP-B.bye', new Uint8Array([1]));
    await inspect.flush().catch(() => undefined);
    await sleep(500);
    assert.notEqual(put, 'answered');
    assert.notEqual(drain, 'answered');
    assert.ok(errors.some((e) => /permissions violation/i.test(e)), `the server refused the publishes: ${errors.join('; ')}`);
    assert.equal((await fetch(`${nodes[1]!.httpUrl}/readyz`)).status, 200);
    await assert.rejects(connect({ servers: nats.url, reconnect: false }), /authorization|auth/i);
    await assert.rejects(connect({ servers: nats.url, user: 'mesh', pass: 'wrong', reconnect: false }), /authorization|auth/i);
  });
});
