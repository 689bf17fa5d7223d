/**
 * FlvLoopPublisher: publishes a pre-made FLV in real time through the project's RTMP
 * client, looping it with continuous timestamps (metadata and sequence headers first),
 * optionally with wall-clock stamps (see ./clock.ts) every N ms.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { RtmpClient } from '@meshcast/node/client';
import type { AmfObject } from '@meshcast/proto';
import { encodeClockStamp } from './clock.ts';
import { payloadBytesInRange, type FlvSource } from './flv-source.ts';

export interface FlvLoopPublisherOptions {
  /** rtmp://host:port/app/stream */
  url: string;
  source: FlvSource;
  /** Send an `onMeshcastClock` stamp every this many ms (0 or unset: never). */
  clockIntervalMs?: number;
  timeoutMs?: number;
  localAddress?: string;
  /** Pause sending while more than this many bytes wait in the socket (default 4 MiB). */
  maxBufferedBytes?: number;
  /** Stop after this many loops (default: run until stop()). */
  maxLoops?: number;
}

export class FlvLoopPublisher extends EventEmitter {
  /** Audio+video payload bytes sent (excludes sequence headers, metadata and clock stamps). */
  payloadBytes = 0;
  frames = 0;
  videoFrames = 0;
  clockStamps = 0;
  /** Completed loops of the file. */
  loops = 0;
  /** Largest timestamp sent so far. */
  lastTimestamp = 0;
  /** Times the socket backlog made us wait, and for how long in total. */
  stalls = 0;
  stalledMs = 0;
  /** Wall-clock time (Date.now()) that corresponds to media timestamp 0. */
  epochMs = 0;
  private t0 = 0;
  private idx = 0;
  private timer: NodeJS.Timeout | undefined;
  private lastClock = -Infinity;
  private stallSince = -1;
  private stopped = false;
  private readonly maxBuffered: number;

  private constructor(
    readonly client: RtmpClient,
    private readonly opts: FlvLoopPublisherOptions,
  ) {
    super();
    this.maxBuffered = opts.maxBufferedBytes ?? 4 * 1024 * 1024;
    client.on('close', (reason: string) => {
      this.halt();
      this.emit('close', reason);
    });
  }

  /** Connects, publishes, sends metadata + sequence headers and starts the real-time loop. */
  static async start(opts: FlvLoopPublisherOptions): Promise<FlvLoopPublisher> {
    const client = await RtmpClient.connect(opts.url, { timeoutMs: opts.timeoutMs ?? 10_000, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
    try {
      await client.publish();
    } catch (err) {
      client.close();
      throw err;
    }
    const p = new FlvLoopPublisher(client, opts);
    p.begin();
    return p;
  }

  /** Current media time (ms since timestamp 0 was due): frames with larger timestamps have not been sent yet. */
  mediaTime(): number {
    return performance.now() - this.t0;
  }

  /** Payload bytes this publisher sends (or sent) for media timestamps in (fromTs, toTs]. */
  payloadBytesInRange(fromTs: number, toTs: number): number {
    return payloadBytesInRange(this.opts.source, fromTs, toTs);
  }

  get closed(): boolean {
    return this.stopped || this.client.closed;
  }

  private begin(): void {
    const s = this.opts.source;
    if (s.metadata) {
      const meta: AmfObject = { ...s.metadata };
      delete meta.duration;
      delete meta.filesize;
      this.client.sendMetadata(meta);
    }
    if (s.videoSequenceHeader) this.client.sendMedia(9, 0, s.videoSequenceHeader);
    if (s.audioSequenceHeader) this.client.sendMedia(8, 0, s.audioSequenceHeader);
    this.t0 = performance.now();
    this.epochMs = Date.now();
    this.tick();
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    if (this.closed) return;
    const now = performance.now();
    if (this.client.bufferedBytes > this.maxBuffered) {
      if (this.stallSince < 0) {
        this.stallSince = now;
        this.stalls++;
      }
      this.timer = setTimeout(this.tick, 5);
      return;
    }
    if (this.stallSince >= 0) {
      this.stalledMs += now - this.stallSince;
      this.stallSince = -1;
    }
    const s = this.opts.source;
    const mediaNow = now - this.t0;
    const tags = s.tags;
    let next = 0;
    for (;;) {
      const tag = tags[this.idx]!;
      const ts = this.loops * s.loopDurationMs + tag.timestamp;
      if (ts > mediaNow) {
        next = ts;
        break;
      }
      this.client.sendMedia(tag.type as 8 | 9, ts, tag.payload);
      this.payloadBytes += tag.payload.length;
      this.frames++;
      if (tag.type === 9) this.videoFrames++;
      if (ts > this.lastTimestamp) this.lastTimestamp = ts;
      if (++this.idx >= tags.length) {
        this.idx = 0;
        this.loops++;
        if (this.opts.maxLoops !== undefined && this.loops >= this.opts.maxLoops) {
          this.emit('done');
          this.stop();
          return;
        }
      }
      if (this.client.bufferedBytes > this.maxBuffered) {
        next = ts;
        break;
      }
    }
    const every = this.opts.clockIntervalMs ?? 0;
    if (every > 0 && mediaNow - this.lastClock >= every) {
      this.lastClock = mediaNow;
      this.client.sendMedia(18, this.lastTimestamp, encodeClockStamp());
      this.clockStamps++;
    }
    let wait = next - (performance.now() - this.t0);
    if (every > 0) wait = Math.min(wait, this.lastClock + every - mediaNow);
    this.timer = setTimeout(this.tick, Math.max(1, Math.ceil(wait)));
  };

  private halt(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Stops sending and closes the connection. */
  stop(): void {
    this.halt();
    this.client.close('publisher stopped');
  }
}
