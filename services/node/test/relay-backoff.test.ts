/**
 * A relay whose parent keeps refusing its pull ("mesh pull refused": here, a wrong mesh secret)
 * backs off with the shared jittered backoff instead of retrying every 500 ms, and logs the
 * failure at warn once, then at debug. A real node on the in-process bus is the parent; the
 * relay's random source is injected so the delays are exact.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import pino from 'pino';
import { MemoryBusNetwork } from '@meshcast/mesh';
import { StreamHub } from '../src/media/stream-hub.ts';
import type { MediaNode } from '../src/media-node.ts';
import type { NodeMesh } from '../src/mesh/node-mesh.ts';
import { RelayActor } from '../src/mesh/relay-actor.ts';
import { inProcessNode, rtmpUrl, syntheticPublisher, until } from './support.ts';

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface LogLine {
  level: number;
  msg: string;
  reason?: string;
  retryInMs?: number;
  suppressed?: number;
  failedAttempts?: number;
  time: number;
}

test('a relay refused by its parent backs off (jittered, growing delays) and warns once', async () => {
  const net = new MemoryBusNetwork();
  const a: MediaNode = await inProcessNode(net, 'n1');
  cleanups.push(() => a.stop());
  const pub = await syntheticPublisher(rtmpUrl(a, 'live/refused'));
  cleanups.push(pub.stop);
  const mesh = (a as unknown as { mesh: NodeMesh }).mesh;
  await until('owner announced', async () => (await mesh.ownership.lookup('live', 'refused'))?.record.owner === 'n1');

  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as LogLine);
      cb();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  const hub = new StreamHub('live', 'refused', { gopCache: true, gopCacheMaxBytes: 1 << 20, flushMs: 0, sinkQueueBytes: 1 << 20, maxLagMs: 1000 }, log);
  const relay = new RelayActor(
    hub,
    {
      nodeId: 'rx',
      selfRtmp: 'rtmp://127.0.0.1:1',
      fanout: 4,
      lingerMs: 60_000,
      stallMs: 2000,
      graceMs: 10_000,
      busConnected: () => mesh.bus.status === 'connected',
      secret: 'not-the-mesh-secret',
      ownership: mesh.ownership,
      relays: mesh.relayClaims,
      membership: mesh.membership,
      events: mesh.events,
      log,
      // The top of every jitter range: delays 750, 2250, then the 5 s cap.
      backoff: { baseMs: 250, capMs: 5000, random: () => 0.999999 },
    },
    () => {},
  );
  cleanups.push(() => relay.handle({ type: 'stop', reason: 'test over' }));
  relay.handle({ type: 'start' });

  const failures = (): LogLine[] => lines.filter((l) => l.msg === 'relay upstream connect failed; retrying');
  await until('three refused pulls', () => failures().length >= 3, 8000);
  const f = failures().slice(0, 3);
  for (const l of f) assert.match(l.reason ?? '', /mesh pull refused/);
  assert.deepEqual(f.map((l) => l.retryInMs), [750, 2250, 5000], 'delays grow from the base range to the cap');
  assert.deepEqual(f.map((l) => pino.levels.labels[l.level]), ['warn', 'debug', 'debug'], 'warn once, then debug');
  // The attempts really waited (the relay ticks every 250 ms, so up to one tick later).
  assert.ok(f[1]!.time - f[0]!.time >= 750, `second attempt ${f[1]!.time - f[0]!.time} ms after the first`);
  assert.ok(f[2]!.time - f[1]!.time >= 2250, `third attempt ${f[2]!.time - f[1]!.time} ms after the second`);
  assert.equal(relay.status().state, 'backoff');
  assert.equal(lines.filter((l) => l.msg === 'relay pulling').length, 0);
});
