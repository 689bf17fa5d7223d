/**
 * NATS credentials passed through the node's config to the mesh bus, against real
 * nats-servers that require them: the right ones join, wrong ones fail the start clearly.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { NodeProcess } from '../harness/node-process.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { run } from '../harness/ffmpeg.ts';
import { freePort } from '../harness/ports.ts';

const CLI = resolve(import.meta.dirname, '../../../services/node/src/cli.ts');

interface NodeReply {
  bus?: { kind: string; status: string };
}

/** Runs a node that is expected not to start; returns its exit code and output. */
async function startFails(config: Record<string, unknown>): Promise<{ code: number | null; output: string; ms: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'meshcast-natsauth-'));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, stringify(config));
  const host = '127.0.0.1';
  const args = ['--import', 'tsx', CLI, 'node', '--config', file, '--node-id', 'natsauth', '--host', host, '--rtmp-port', String(await freePort(host)), '--http-port', String(await freePort(host)), '--admin-host', host, '--admin-port', String(await freePort(host))];
  const t0 = Date.now();
  try {
    const r = await run(process.execPath, args, 20_000);
    return { code: r.code, output: r.stdout + r.stderr, ms: Date.now() - t0 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('NATS credentials', () => {
  let userServer: NatsServer;
  let tokenServer: NatsServer;
  const nodes: NodeProcess[] = [];

  before(async () => {
    [userServer, tokenServer] = await Promise.all([
      startNatsServer({ args: ['--user', 'meshuser', '--pass', 'meshpass'] }),
      startNatsServer({ args: ['--auth', 'meshtoken'] }),
    ]);
  });

  after(async () => {
    for (const n of nodes) {
      await n.stop();
      n.cleanup();
    }
    await Promise.all([userServer?.stop(), tokenServer?.stop()]);
  });

  const mesh = (server: NatsServer, nats_auth: Record<string, string>): Record<string, unknown> => ({
    mesh: { nats: [server.url], mesh_secret: 'm', nats_auth },
  });

  test('user/password from the config file: the node joins and reports the bus connected', async () => {
    const n = await NodeProcess.start({ config: mesh(userServer, { user: 'meshuser', pass: 'meshpass' }) });
    nodes.push(n);
    const info = await n.api<NodeReply>('/api/v1/node');
    assert.deepEqual(info.bus, { kind: 'nats', status: 'connected' });
  });

  test('the password from MESHCAST_NATS_PASS works too', async () => {
    const n = await NodeProcess.start({ config: mesh(userServer, { user: 'meshuser' }), env: { MESHCAST_NATS_PASS: 'meshpass' } });
    nodes.push(n);
    assert.equal((await n.api<NodeReply>('/api/v1/node')).bus?.status, 'connected');
  });

  test('a wrong password or no credentials: the node fails to start and says why', async () => {
    const wrong = await startFails(mesh(userServer, { user: 'meshuser', pass: 'nope' }));
    assert.equal(wrong.code, 1, wrong.output);
    assert.match(wrong.output, /"msg":"node failed to start"/);
    assert.match(wrong.output, /cannot connect to NATS .*Authorization Violation/i);
    assert.ok(wrong.ms < 10_000, `failed within ${wrong.ms} ms`);
    const none = await startFails({ mesh: { nats: [userServer.url], mesh_secret: 'm' } });
    assert.equal(none.code, 1);
    assert.match(none.output, /Authorization Violation/i);
  });

  test('token auth: the right token joins, a wrong one fails', async () => {
    const n = await NodeProcess.start({ config: mesh(tokenServer, { token: 'meshtoken' }) });
    nodes.push(n);
    assert.equal((await n.api<NodeReply>('/api/v1/node')).bus?.status, 'connected');
    const wrong = await startFails(mesh(tokenServer, { token: 'wrong' }));
    assert.equal(wrong.code, 1);
    assert.match(wrong.output, /Authorization Violation/i);
  });

  test('half-given credentials are a config error before anything connects', async () => {
    const r = await startFails(mesh(userServer, { user: 'meshuser' }));
    assert.equal(r.code, 2);
    assert.match(r.output, /"mesh\.nats_auth\.user" and "mesh\.nats_auth\.pass": give both or neither/);
  });
});
