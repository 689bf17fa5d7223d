/**
 * NATS credentials passed through the node's config to the mesh bus, against real
 * nats-servers that require them: the right ones join, wrong ones fail the start clearly.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { NodeProcess } from '../harness/node-process.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';

interface NodeReply {
  bus?: { kind: string; status: string };
}

async function startFails(config: Record<string, unknown>, env: Record<string, string> = {}): Promise<string> {
  try {
    const n = await NodeProcess.start({ config, env });
    await n.kill();
    n.cleanup();
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail('the node started with wrong NATS credentials');
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
    assert.match(wrong, /node exited with 1/);
    assert.match(wrong, /cannot connect to NATS .*Authorization Violation/i);
    const none = await startFails({ mesh: { nats: [userServer.url], mesh_secret: 'm' } });
    assert.match(none, /Authorization Violation/i);
  });

  test('token auth: the right token joins, a wrong one fails', async () => {
    const n = await NodeProcess.start({ config: mesh(tokenServer, { token: 'meshtoken' }) });
    nodes.push(n);
    assert.equal((await n.api<NodeReply>('/api/v1/node')).bus?.status, 'connected');
    assert.match(await startFails(mesh(tokenServer, { token: 'wrong' })), /Authorization Violation/i);
  });

  test('half-given credentials are a config error before anything connects', async () => {
    const msg = await startFails(mesh(userServer, { user: 'meshuser' }));
    assert.match(msg, /node exited with 2/);
    assert.match(msg, /"mesh\.nats_auth\.user" and "mesh\.nats_auth\.pass": give both or neither/);
  });
});
