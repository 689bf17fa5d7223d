/**
 * Connection limits on a real node process: 5,000 half-open TCP connections from one
 * address (connect, never send a handshake) while ffmpeg publishes and a viewer on another
 * loopback address plays. The per-address cap refuses the excess at once, the handshake
 * timeout closes the rest, the viewer never stalls and the node's memory stays bounded.
 * Then the per-address connection rate, changed by SIGHUP.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { RtmpClient } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';

const HANDSHAKE_TIMEOUT_MS = 2000;
const PER_IP = 1000;
const FLOOD = 5000;
const BATCH = 250;
/** Scheduling slack allowed on top of the handshake timeout. */
const SLACK_MS = 400;

interface NodeReply {
  rss: number;
  sessions: number;
}
interface StreamsReply {
  streams: Array<{ stream: string; live: boolean }>;
}

interface FloodSocket {
  openedAt: number;
  closedAt?: number;
  connected: boolean;
}

/** Opens one TCP connection from `localAddress` and sends nothing. */
function halfOpen(host: string, port: number, localAddress: string, rec: FloodSocket[]): Promise<void> {
  return new Promise((resolve) => {
    const s: FloodSocket = { openedAt: Date.now(), connected: false };
    rec.push(s);
    const sock = net.connect({ host, port, localAddress });
    sock.on('connect', () => {
      s.connected = true;
      s.openedAt = Date.now();
      resolve();
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      s.closedAt = Date.now();
      sock.destroy();
      resolve();
    });
  });
}

const limitsConfig = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  limits: { handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS, max_connections_per_ip: PER_IP, max_connections: 20_000, ...extra },
});

describe('connection limits under a half-open flood', () => {
  let node: NodeProcess;
  let ffmpeg: FfmpegPublisher;

  before(async () => {
    node = await NodeProcess.start({ config: limitsConfig() });
    ffmpeg = new FfmpegPublisher(`${node.rtmpUrl}/live/cam`, { width: 320, height: 240, fps: 25, gop: 25, bitrate: '300k' });
    await waitFor('cam live', async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.some((s) => s.stream === 'cam' && s.live), 20_000, 100);
  });

  after(async () => {
    await ffmpeg?.stop();
    await node?.stop();
    node?.cleanup();
  });

  test('5,000 half-open connections: excess refused, the rest closed by the handshake timeout, the viewer keeps playing, RSS bounded', async (t) => {
    const v = await RtmpClient.connect(`${node.rtmpUrl}/live/cam`, { localAddress: '127.0.0.2' });
    const videoAt: number[] = [];
    v.onFrame = (m) => {
      if (m.type === 9) videoAt.push(Date.now());
    };
    await v.play();
    await waitFor('viewer frames', () => videoAt.length > 25, 10_000);
    const base = await node.api<NodeReply>('/api/v1/node');

    const rec: FloodSocket[] = [];
    let peakRss = base.rss;
    let peakSessions = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const n = await node.api<NodeReply>('/api/v1/node');
        peakRss = Math.max(peakRss, n.rss);
        peakSessions = Math.max(peakSessions, n.sessions);
        await sleep(200);
      }
    })();
    const floodStart = Date.now();
    for (let sent = 0; sent < FLOOD; sent += BATCH) {
      await Promise.all(Array.from({ length: BATCH }, () => halfOpen(node.host, node.rtmpPort, '127.0.0.1', rec)));
    }
    const floodEnd = Date.now();
    await waitFor('every flood socket closed by the node', () => rec.every((s) => s.closedAt !== undefined), HANDSHAKE_TIMEOUT_MS + 3000, 100);
    // Keep watching the viewer a little after the flood.
    const afterFlood = videoAt.length;
    await sleep(1500);
    sampling = false;
    await sampler;
    v.close();

    assert.equal(rec.length, FLOOD);
    assert.ok(rec.every((s) => s.connected), 'every flood connection was accepted by TCP');
    const lifetimes = rec.map((s) => s.closedAt! - s.openedAt);
    const refused = lifetimes.filter((t) => t < 1000).length;
    const timedOut = lifetimes.filter((t) => t >= HANDSHAKE_TIMEOUT_MS - 100).length;
    const longest = Math.max(...lifetimes);
    // Each handshake timeout frees the cap for another PER_IP: a slower flood gets more admitted.
    const admittable = PER_IP * (Math.ceil((floodEnd - floodStart) / HANDSHAKE_TIMEOUT_MS) + 1);
    assert.ok(refused >= FLOOD - admittable, `${refused} refused at once by the per-address cap`);
    assert.ok(timedOut >= PER_IP - 50 && timedOut <= admittable, `${timedOut} closed by the handshake timeout`);
    assert.equal(refused + timedOut, FLOOD, 'every connection was either refused or timed out');
    assert.ok(longest <= HANDSHAKE_TIMEOUT_MS + SLACK_MS, `longest-lived flood socket ${longest} ms (handshake timeout ${HANDSHAKE_TIMEOUT_MS} ms)`);
    assert.ok(peakSessions <= PER_IP + 5, `at most the cap held at once (peak ${peakSessions} sessions)`);

    // The viewer: frames all along, no stall during or after the flood.
    const during = videoAt.filter((t) => t >= floodStart && t <= floodEnd + HANDSHAKE_TIMEOUT_MS);
    let maxGap = 0;
    for (let i = 1; i < videoAt.length; i++) if (videoAt[i]! >= floodStart) maxGap = Math.max(maxGap, videoAt[i]! - videoAt[i - 1]!);
    assert.ok(during.length >= ((floodEnd + HANDSHAKE_TIMEOUT_MS - floodStart) / 1000) * 25 * 0.8, `${during.length} video frames during the flood`);
    assert.ok(videoAt.length - afterFlood >= 30, 'frames keep coming after the flood');
    assert.ok(maxGap < 1000, `largest gap between video frames ${maxGap} ms`);
    const growth = peakRss - base.rss;
    t.diagnostic(JSON.stringify({ refused, timedOut, longest, peakSessions, maxGap, during: during.length, floodMs: floodEnd - floodStart, growthMB: growth / 1048576 }));
    assert.ok(growth < 150 * 1024 * 1024, `RSS grew ${Math.round(growth / 1048576)} MB`);

    const sessions = await node.api<{ sessions: Array<{ role: string }> }>('/api/v1/sessions');
    assert.equal(sessions.sessions.filter((s) => s.role === 'idle').length, 0, 'no half-open session left');
    assert.match(node.logs(), /"msg":"RTMP connection refused"/);
    assert.ok(node.logs().split('"msg":"RTMP connection refused"').length - 1 <= 10, 'refusals are logged in summary, not once per connection');
  });

  test('per-address connection rate (enabled by SIGHUP): a burst beyond the bucket is refused, other addresses unaffected', async () => {
    writeFileSync(join(node.dir, 'config.yaml'), stringify(limitsConfig({ connection_rate_per_ip: 5, connection_burst_per_ip: 20 })));
    node.signal('SIGHUP');
    await waitFor('reload', () => node.logs().includes('"msg":"config reloaded"'), 10_000);
    assert.match(node.logs(), /"changed":\["limits\.connection_rate_per_ip"\]/);
    const rec: FloodSocket[] = [];
    await Promise.all(Array.from({ length: 100 }, () => halfOpen(node.host, node.rtmpPort, '127.0.0.3', rec)));
    await sleep(300);
    const closedAtOnce = rec.filter((s) => s.closedAt !== undefined).length;
    assert.ok(closedAtOnce >= 75 && closedAtOnce <= 82, `${closedAtOnce} of 100 refused by the rate limit (burst 20)`);
    // Another address still gets in (and plays).
    const v = await RtmpClient.connect(`${node.rtmpUrl}/live/cam`, { localAddress: '127.0.0.4' });
    let frames = 0;
    v.onFrame = () => frames++;
    await v.play();
    await waitFor('frames', () => frames > 10, 5000);
    v.close();
    await waitFor('rate-limited flood closed', () => rec.every((s) => s.closedAt !== undefined), HANDSHAKE_TIMEOUT_MS + 2000, 100);
  });
});
