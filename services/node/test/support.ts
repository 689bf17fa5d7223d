/** Shared pieces for the node's in-process tests: nodes on one in-process bus, a synthetic publisher, recording viewers. */
import net from 'node:net';
import pino from 'pino';
import type { MemoryBusNetwork } from '@meshcast/mesh';
import type { RtmpMessage } from '@meshcast/proto';
import { RtmpClient } from '../src/client/rtmp-client.ts';
import { loadConfig } from '../src/config.ts';
import type { MediaNode } from '../src/media-node.ts';
import { startNode } from '../src/start-node.ts';

export const quietLog = pino({ level: process.env.MESHCAST_TEST_LOG ?? 'silent' });

let hostN = 100;

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

export async function inProcessNode(network: MemoryBusNetwork, id: string, inline: Record<string, unknown> = {}): Promise<MediaNode> {
  const host = `127.0.1.${hostN++}`;
  const mesh = (inline.mesh as Record<string, unknown> | undefined) ?? {};
  const config = loadConfig({
    inline: {
      ...inline,
      node_id: id,
      host,
      rtmp_port: 0,
      http_port: await freePort(host),
      mesh: { mesh_secret: 'test-secret', heartbeat_ms: 200, suspect_ms: 600, dead_ms: 1000, lease_ms: 2000, renew_ms: 500, relay_linger_ms: 1000, relay_stall_ms: 1000, ...mesh },
    },
  });
  return startNode(config, quietLog.child({ node: id }), { network });
}

export function rtmpUrl(node: MediaNode, path: string): string {
  return `rtmp://${node.config.public_host}:${node.rtmpPort}/${path}`;
}

const AVC_SEQ = Buffer.from([0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xc0, 0x1e, 1, 0, 4, 0x68, 0xce, 0x3c, 0x80]);
const AAC_SEQ = Buffer.from([0xaf, 0, 0x12, 0x10]);

/** Publishes a synthetic 30 fps stream (keyframe every 15 frames) with the project's client. */
export async function syntheticPublisher(url: string, opts: { startTs?: number } = {}): Promise<{ client: RtmpClient; stop: () => void; sent: () => number }> {
  const client = await RtmpClient.connect(url);
  await client.publish();
  client.sendMetadata({ width: 320, height: 240, framerate: 30, videocodecid: 7, audiocodecid: 10 });
  client.sendMedia(9, opts.startTs ?? 0, AVC_SEQ);
  client.sendMedia(8, opts.startTs ?? 0, AAC_SEQ);
  let n = 0;
  const timer = setInterval(() => {
    const ts = (opts.startTs ?? 0) + Math.round(n * 33.333);
    const key = n % 15 === 0;
    const frame = Buffer.alloc(600, n & 0xff);
    frame[0] = key ? 0x17 : 0x27;
    frame[1] = 1;
    frame.writeUInt32BE(n, 5); // frame number, so viewers can check order
    client.sendMedia(9, ts, frame);
    client.sendMedia(8, ts, Buffer.from([0xaf, 1, n & 0xff, 0x11]));
    n++;
  }, 33);
  return {
    client,
    sent: () => n,
    stop: () => {
      clearInterval(timer);
      client.close();
    },
  };
}

export interface RecordingViewer {
  client: RtmpClient;
  frames: Array<RtmpMessage & { at: number }>;
  video(): Array<RtmpMessage & { at: number }>;
}

export async function recordingViewer(url: string): Promise<RecordingViewer> {
  const client = await RtmpClient.connect(url);
  const frames: Array<RtmpMessage & { at: number }> = [];
  client.onFrame = (m) => frames.push({ ...m, at: Date.now() });
  await client.play();
  return { client, frames, video: () => frames.filter((f) => f.type === 9 && f.payload[1] === 1) };
}

export async function until<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 8000): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
