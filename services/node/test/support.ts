/** Shared pieces for the node's in-process tests: nodes on one in-process bus, a synthetic publisher, recording viewers. */
import net from 'node:net';
import pino from 'pino';
import type { MemoryBusNetwork } from '@meshcast/mesh';
import type { RtmpMessage } from '@meshcast/proto';
import { RtmpClient } from '../src/client/rtmp-client.ts';
import { startSyntheticPublisher, type SyntheticPublisher } from '../src/client/synthetic-source.ts';
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
      admin: { host, port: 0, ...((inline.admin as Record<string, unknown> | undefined) ?? {}) },
      mesh: { mesh_secret: 'test-secret', heartbeat_ms: 200, suspect_ms: 600, dead_ms: 1000, lease_ms: 2000, renew_ms: 500, relay_linger_ms: 1000, relay_stall_ms: 1000, ...mesh },
    },
  });
  return startNode(config, quietLog.child({ node: id }), { network });
}

export function rtmpUrl(node: MediaNode, path: string): string {
  return `rtmp://${node.config.public_host}:${node.rtmpPort}/${path}`;
}

/** Publishes a synthetic 30 fps stream (keyframe every 15 frames) with the project's client. */
export async function syntheticPublisher(url: string, opts: { startTs?: number } = {}): Promise<SyntheticPublisher> {
  return startSyntheticPublisher(url, opts);
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
