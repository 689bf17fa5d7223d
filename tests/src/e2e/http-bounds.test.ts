/**
 * Bounds on what an HTTP or WebSocket client can make a real node process hold, while ffmpeg
 * publishes and an RTMP viewer of another stream keeps playing:
 * - a WebSocket-FLV client that pings as fast as it can and never reads: the node stops
 *   answering and stops reading it (limits.reply_buffer_bytes), so its memory stays flat;
 * - HTTP-FLV and WS-FLV viewers that hang up while a slow on_play hook is pending: once the
 *   hook has answered, the session table, the connection limiter, the viewer gauge and the
 *   hub's sinks are back where they were, and each allowed play got its on_play_done.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { RtmpClient } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';

interface StreamsReply {
  streams: Array<{ stream: string; live: boolean }>;
}
interface NodeReply {
  rss: number;
  sessions: number;
}

/** The hook server: on_play answers 200 after HOOK_DELAY_MS; every call is counted by path. */
const HOOK_DELAY_MS = 1500;
class SlowHooks {
  readonly calls = new Map<string, number>();
  private server!: http.Server;
  base = '';

  async start(): Promise<void> {
    this.server = http.createServer((rq, res) => {
      rq.resume();
      rq.on('end', () => {
        const path = rq.url ?? '';
        this.calls.set(path, (this.calls.get(path) ?? 0) + 1);
        if (path === '/on_play') return void setTimeout(() => res.writeHead(200).end(), HOOK_DELAY_MS);
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    const a = this.server.address();
    this.base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  }

  count(path: string): number {
    return this.calls.get(path) ?? 0;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

/** Values of a gauge in the node's /metrics, summed over the label sets that match `labels`. */
async function metric(node: NodeProcess, name: string, labels = ''): Promise<number> {
  const text = await (await node.adminFetch('/metrics')).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labels && !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

interface Gauges {
  sessions: number;
  admitted: number;
  viewers: number;
  sinks: number;
}

async function gauges(node: NodeProcess): Promise<Gauges> {
  return {
    sessions: (await node.api<{ sessions: unknown[] }>('/api/v1/sessions')).sessions.length,
    admitted: await metric(node, 'meshcast_connections_admitted'),
    viewers: await metric(node, 'meshcast_viewers'),
    sinks: await metric(node, 'meshcast_stream_sinks'),
  };
}

/** An RTMP viewer of `url` that records when each video frame arrived. */
async function watch(url: string): Promise<{ client: RtmpClient; videoAt: number[]; maxGapSince(t: number): number }> {
  const client = await RtmpClient.connect(url, { localAddress: '127.0.0.2' });
  const videoAt: number[] = [];
  client.onFrame = (m) => {
    if (m.type === 9) videoAt.push(Date.now());
  };
  await client.play();
  await waitFor('viewer frames', () => videoAt.length > 25, 15_000);
  return {
    client,
    videoAt,
    maxGapSince(t: number): number {
      let gap = 0;
      for (let i = 1; i < videoAt.length; i++) if (videoAt[i]! >= t) gap = Math.max(gap, videoAt[i]! - videoAt[i - 1]!);
      return Math.max(gap, Date.now() - videoAt[videoAt.length - 1]!);
    },
  };
}

/** Resolves on the socket's 'drain' or after `ms`, whichever is first. */
function drainOr(sock: net.Socket, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      sock.off('drain', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    sock.once('drain', done);
  });
}

function maskedPing(payload: Buffer): Buffer {
  const mask = randomBytes(4);
  const out = Buffer.alloc(6 + payload.length);
  out[0] = 0x89;
  out[1] = 0x80 | payload.length;
  mask.copy(out, 2);
  for (let i = 0; i < payload.length; i++) out[6 + i] = payload[i]! ^ mask[i & 3]!;
  return out;
}

/** The raw opening handshake of a WebSocket-FLV play. */
function wsUpgradeRequest(host: string, port: number, path: string): string {
  return [`GET ${path} HTTP/1.1`, `Host: ${host}:${port}`, 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`, 'Sec-WebSocket-Version: 13', '', ''].join('\r\n');
}

describe('HTTP and WebSocket clients cannot make the node hold unbounded memory or leak admissions', () => {
  let node: NodeProcess;
  let ffmpeg: FfmpegPublisher;
  const hooks = new SlowHooks();

  before(async () => {
    await hooks.start();
    node = await NodeProcess.start({
      config: {
        webhooks: { on_play: `${hooks.base}/on_play`, on_play_done: `${hooks.base}/on_play_done`, timeout_ms: 5000 },
      },
    });
    ffmpeg = new FfmpegPublisher(`${node.rtmpUrl}/live/cam`, { width: 320, height: 240, fps: 25, gop: 25, bitrate: '300k' });
    await waitFor('cam live', async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.some((s) => s.stream === 'cam' && s.live), 20_000, 100);
  });

  after(async () => {
    await ffmpeg?.stop();
    await node?.stop();
    node?.cleanup();
    await hooks.stop();
  });

  test('a WebSocket-FLV client that pings and never reads: the node stops answering and reading it; RSS stays flat; another viewer plays on', async (t) => {
    const viewer = await watch(`${node.rtmpUrl}/live/cam`);
    const base = await node.api<NodeReply>('/api/v1/node');
    let peakRss = base.rss;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peakRss = Math.max(peakRss, (await node.api<NodeReply>('/api/v1/node')).rss);
        await sleep(200);
      }
    })();

    // A stream nobody publishes: the viewer waits, so no media eviction ever closes it.
    const sock = net.connect({ host: node.host, port: node.httpPort });
    await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
    sock.on('error', () => undefined);
    sock.write(wsUpgradeRequest(node.host, node.httpPort, '/ws/live/nobody.flv'));
    const head = await new Promise<Buffer>((r) => sock.once('data', r));
    assert.match(head.toString('latin1'), /^HTTP\/1\.1 101 /);
    sock.pause(); // never read again: our receive buffer fills, then the node's send buffer
    const one = maskedPing(Buffer.alloc(125, 0x61));
    const block = Buffer.concat(Array.from({ length: 8192 }, () => one)); // ~1 MiB of pings
    const started = Date.now();
    const budgetBytes = 400 * 1024 * 1024;
    const budgetMs = 10_000;
    let sent = 0;
    while (sent < budgetBytes && Date.now() - started < budgetMs && !sock.destroyed) {
      if (!sock.write(block)) {
        // Wait for the node to read, but not for ever: a node that stopped reading is the point.
        await drainOr(sock, 500);
        if (sock.writableLength > 8 * 1024 * 1024) {
          await sleep(200);
          continue;
        }
      }
      sent += block.length;
    }
    const floodMs = Date.now() - started;
    await sleep(1000);
    sampling = false;
    await sampler;
    const gap = viewer.maxGapSince(started);
    const growth = peakRss - base.rss;
    const sentMB = Math.round(sent / 1048576);
    t.diagnostic(JSON.stringify({ sentMB, floodMs, growthMB: Math.round(growth / 1048576), maxGapMs: gap }));
    sock.destroy();
    viewer.client.close();
    // The node stopped reading: the flood stalls in the kernel's buffers, far short of the budget.
    assert.ok(sent < 64 * 1024 * 1024, `the client got ${sentMB} MiB of pings into the node`);
    // Peak RSS includes the pings the node read before it stopped reading (bounded above) and
    // garbage not yet collected; an unbounded pong queue grew by hundreds of MB here.
    assert.ok(growth < 96 * 1024 * 1024, `RSS grew ${Math.round(growth / 1048576)} MB`);
    assert.ok(gap < 1000, `the other stream's viewer saw a gap of ${gap} ms`);
    await waitFor('the flooding session gone', async () => (await node.api<{ sessions: Array<{ protocol: string }> }>('/api/v1/sessions')).sessions.every((s) => s.protocol !== 'ws-flv'), 5000);
  });

  test('100 HTTP-FLV and 100 WS-FLV viewers hang up while on_play is pending: sessions, limiter, viewer gauge and sinks back at baseline; each allowed play is told done', async (t) => {
    const base = await gauges(node);
    const playsBefore = hooks.count('/on_play');
    const doneBefore = hooks.count('/on_play_done');
    const N = 100;
    const aborts: Array<Promise<void>> = [];
    for (let i = 0; i < N; i++) {
      // HTTP-FLV: the request is sent, then the client hangs up before the hook answers.
      aborts.push(
        new Promise<void>((resolve) => {
          const s = net.connect({ host: node.host, port: node.httpPort }, () => {
            s.write(`GET /live/cam.flv?viewer=${i} HTTP/1.1\r\nHost: ${node.host}\r\n\r\n`);
            setTimeout(() => {
              s.destroy();
              resolve();
            }, 200);
          });
          s.on('error', () => resolve());
        }),
      );
      aborts.push(
        new Promise<void>((resolve) => {
          const s = net.connect({ host: node.host, port: node.httpPort }, () => {
            s.write(wsUpgradeRequest(node.host, node.httpPort, `/ws/live/cam.flv?viewer=${i}`));
            setTimeout(() => {
              s.destroy();
              resolve();
            }, 200);
          });
          s.on('error', () => resolve());
        }),
      );
    }
    await Promise.all(aborts);
    await waitFor('every on_play asked', () => hooks.count('/on_play') - playsBefore >= 2 * N, 10_000);
    let now = base;
    try {
      await waitFor(
        'gauges back at baseline',
        async () => {
          now = await gauges(node);
          return now.sessions === base.sessions && now.admitted === base.admitted && now.viewers === base.viewers && now.sinks === base.sinks;
        },
        HOOK_DELAY_MS + 5000,
        200,
      );
    } finally {
      t.diagnostic(JSON.stringify({ base, after: now }));
    }
    await waitFor('on_play_done for each allowed play', () => hooks.count('/on_play_done') - doneBefore >= 2 * N, 5000);
    assert.equal(hooks.count('/on_play_done') - doneBefore, 2 * N, 'one on_play_done per allowed play, no more');
    assert.deepEqual(now, base);
  });
});
