/**
 * Viewers waiting for streams nobody publishes (play_not_found: wait), on a real node process over a real
 * nats-server: the node learns of a publisher from its ownership watch, so the waiting costs no NATS traffic
 * and no log lines after each wait was logged once. Measured over a window with 300 waiting viewers (each on
 * its own stream), against the same node's idle traffic before they came; the node logs at debug level.
 * Before: 300 waiters caused 260 NATS messages and 160 log lines a second in the soak (an owner lookup and a
 * log line per waiter every 2 s); this test measured 150.6 messages/s into NATS and 149.6 debug lines/s.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { RtmpClient, startSyntheticPublisher } from '@meshcast/node/client';
import { startNatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { sleep, waitFor } from '../harness/ports.ts';

const WAITERS = 300;
const WINDOW_MS = 10_000;

const closers: Array<() => unknown> = [];
after(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

interface Varz {
  in_msgs: number;
  out_msgs: number;
}

test(`${WAITERS} viewers waiting for unpublished streams: bounded NATS traffic and log lines; a publisher still wakes them`, async () => {
  const nats = await startNatsServer();
  closers.push(() => nats.stop());
  // At debug level: a per-wait poll logged a debug line each time.
  const n = await NodeProcess.start({ nodeId: 'wait-N', env: { MESHCAST_LOG_LEVEL: 'debug' }, config: { mesh: { mesh_secret: 'e2e-secret', nats: [nats.url] } } });
  closers.push(async () => {
    await n.kill();
    n.cleanup();
  });
  const varz = async (): Promise<Varz> => (await (await fetch(`${nats.monitorUrl}/varz`)).json()) as Varz;
  const lines = (): number => n.logs().split('\n').filter(Boolean).length;

  // The node's own traffic with nobody waiting (heartbeats, watches).
  await sleep(2000);
  const idle0 = await varz();
  await sleep(WINDOW_MS / 2);
  const idle1 = await varz();
  const idleRate = ((idle1.in_msgs - idle0.in_msgs) * 1000) / (WINDOW_MS / 2);

  const clients: RtmpClient[] = [];
  for (let i = 0; i < WAITERS; i++) {
    const c = await RtmpClient.openPlayer(`${n.rtmpUrl}/live/nobody-${i}`, { timeoutMs: 5000 });
    clients.push(c);
    closers.push(() => c.close());
  }
  await sleep(3000); // let every wait start (one owner lookup and one log line each)
  const v0 = await varz();
  const l0 = lines();
  await sleep(WINDOW_MS);
  const v1 = await varz();
  const l1 = lines();
  const msgRate = ((v1.in_msgs - v0.in_msgs) * 1000) / WINDOW_MS;
  const lineRate = ((l1 - l0) * 1000) / WINDOW_MS;
  console.log(`${WAITERS} waiting viewers: NATS messages in ${msgRate.toFixed(1)}/s (idle node ${idleRate.toFixed(1)}/s), log lines ${lineRate.toFixed(1)}/s; open ${clients.filter((c) => !c.closed).length}/${WAITERS}`);
  assert.equal(clients.filter((c) => !c.closed).length, WAITERS, 'waiting viewers stay connected');
  assert.ok(msgRate <= idleRate + 2, `waiting costs no NATS traffic: ${msgRate.toFixed(1)}/s vs idle ${idleRate.toFixed(1)}/s`);
  assert.ok(lineRate <= 0.5, `no log lines while waiting: ${lineRate.toFixed(1)}/s`);

  // A publisher of one of the streams still reaches its waiting viewer (woken by the ownership watch).
  let frames = 0;
  clients[7]!.onFrame = () => frames++;
  const pub = await startSyntheticPublisher(`${n.rtmpUrl}/live/nobody-7`, { timeoutMs: 5000 });
  closers.push(() => pub.stop());
  await waitFor('the waiting viewer plays', () => frames > 10, 5000);
});
