/**
 * Like the project's synthetic source (30 fps, keyframe every 15 frames, frame number at byte 5
 * of each video payload, its publisher identity stamped after it, matching audio), with bigger
 * video frames, so that a viewer that does not read fills socket buffers in seconds rather than
 * minutes.
 */
import { RtmpClient, newPublisherId, stampPublisher } from '@meshcast/node/client';

const AVC_SEQ = Buffer.from([0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xc0, 0x1e, 1, 0, 4, 0x68, 0xce, 0x3c, 0x80]);
const AAC_SEQ = Buffer.from([0xaf, 0, 0x12, 0x10]);

export interface HeavyPublisher {
  client: RtmpClient;
  /** Identity stamped into every video frame. */
  publisherId: number;
  sent(): number;
  /** Bytes per second of video and audio payload. */
  readonly bytesPerSecond: number;
  stop(): void;
}

export async function startHeavyPublisher(url: string, frameBytes: number): Promise<HeavyPublisher> {
  if (frameBytes < 15) throw new RangeError(`frameBytes ${frameBytes}: a frame needs 15 bytes for its number and publisher stamp`);
  const client = await RtmpClient.openPublisher(url, { timeoutMs: 5000, chunkSize: 65536 });
  client.sendMetadata({ width: 1280, height: 720, framerate: 30, videocodecid: 7, audiocodecid: 10 });
  client.sendMedia(9, 0, AVC_SEQ);
  client.sendMedia(8, 0, AAC_SEQ);
  const publisherId = newPublisherId();
  let n = 0;
  const timer = setInterval(() => {
    const ts = Math.round(n * 33.333);
    const key = n % 15 === 0;
    const frame = Buffer.alloc(key ? frameBytes * 3 : frameBytes, n & 0xff);
    frame[0] = key ? 0x17 : 0x27;
    frame[1] = 1;
    frame[2] = frame[3] = frame[4] = 0;
    frame.writeUInt32BE(n, 5);
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
    bytesPerSecond: Math.round(30 * ((14 * frameBytes + 3 * frameBytes) / 15) + 30 * 4),
    stop: () => {
      clearInterval(timer);
      client.close();
    },
  };
}
