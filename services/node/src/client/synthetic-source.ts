/**
 * A synthetic live source for tests and load tools: 30 fps video (keyframe every 15 frames)
 * whose payload carries its frame number, and matching audio, published with the project's
 * client. Cheap enough to run dozens at once, and a viewer can check order and gaps exactly.
 */
import { randomInt } from 'node:crypto';
import { RtmpClient, type RtmpClientOptions } from './rtmp-client.ts';

const AVC_SEQ = Buffer.from([0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xc0, 0x1e, 1, 0, 4, 0x68, 0xce, 0x3c, 0x80]);
const AAC_SEQ = Buffer.from([0xaf, 0, 0x12, 0x10]);
export const SYNTHETIC_FRAME_BYTES = 600;

/** Bytes 9-10 of a stamped frame: two distinct bytes, which the uniform fill of a frame can never produce. */
const PUBLISHER_MAGIC = 0x5049;

/**
 * Stamps a synthetic video frame (≥ 15 bytes) with the identity of its publisher, after the frame
 * number (bytes 5-8): magic at 9-10, the id at 11-14. A viewer that reads it can tell the frames
 * of two publishers apart, e.g. to prove it never got an old publisher's frames after a new one's.
 */
export function stampPublisher(frame: Buffer, publisherId: number): void {
  frame.writeUInt16BE(PUBLISHER_MAGIC, 9);
  frame.writeUInt32BE(publisherId >>> 0, 11);
}

/** The publisher identity stamped by `stampPublisher`, or undefined for an unstamped payload. */
export function syntheticPublisherId(type: number, payload: Buffer): number | undefined {
  if (type !== 9 || payload.length < 15 || payload[1] !== 1 || payload.readUInt16BE(9) !== PUBLISHER_MAGIC) return undefined;
  return payload.readUInt32BE(11);
}

/** A fresh publisher identity (random, so two publishers of one test never share one). */
export function newPublisherId(): number {
  return randomInt(1, 2 ** 32 - 1);
}

export interface SyntheticPublisher {
  client: RtmpClient;
  /** Identity stamped into every video frame (see `stampPublisher`). */
  publisherId: number;
  /** Frames sent so far. */
  sent(): number;
  stop(): void;
}

/** Frame number carried by a synthetic video frame, or undefined for anything else. */
export function syntheticFrameNumber(type: number, payload: Buffer): number | undefined {
  if (type !== 9 || payload.length !== SYNTHETIC_FRAME_BYTES || payload[1] !== 1) return undefined;
  return payload.readUInt32BE(5);
}

export async function startSyntheticPublisher(url: string, opts: RtmpClientOptions & { startTs?: number; firstFrame?: number; publisherId?: number } = {}): Promise<SyntheticPublisher> {
  const client = await RtmpClient.openPublisher(url, opts);
  const t0 = opts.startTs ?? 0;
  client.sendMetadata({ width: 320, height: 240, framerate: 30, videocodecid: 7, audiocodecid: 10 });
  client.sendMedia(9, t0, AVC_SEQ);
  client.sendMedia(8, t0, AAC_SEQ);
  let n = 0;
  const first = opts.firstFrame ?? 0;
  const publisherId = opts.publisherId ?? newPublisherId();
  const timer = setInterval(() => {
    const ts = t0 + Math.round(n * 33.333);
    const frame = Buffer.alloc(SYNTHETIC_FRAME_BYTES, n & 0xff);
    frame[0] = n % 15 === 0 ? 0x17 : 0x27;
    frame[1] = 1;
    frame.writeUInt32BE(first + n, 5);
    stampPublisher(frame, publisherId);
    client.sendMedia(9, ts, frame);
    client.sendMedia(8, ts, Buffer.from([0xaf, 1, n & 0xff, 0x11]));
    n++;
  }, 33);
  client.once('close', () => clearInterval(timer));
  return {
    client,
    publisherId,
    sent: () => n,
    stop: () => {
      clearInterval(timer);
      client.close();
    },
  };
}
