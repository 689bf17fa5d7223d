/**
 * StreamRecorder: records one stream on the node that owns it. It is one more consumer of the
 * stream's hub (a frame listener): frames are cut into segments (RecordingSegmenter) and the
 * store operations go through a queue bounded by `queueBytes`, written one at a time. The hub
 * never waits for the store: when the queue is full, the open segment is closed with what it
 * has, frames are dropped, and recording resumes in a new segment at a keyframe once the queue
 * has drained to half. A store failure (full disk, unreachable object store) is logged once,
 * then at most every 30 s while it lasts (FailureLogLimiter), and the next segment is tried at
 * the next keyframe; viewers see none of it.
 */
import { FailureLogLimiter } from '@meshcast/mesh';
import type { MediaFrame } from '../media/frame.ts';
import type { StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';
import { RecordingSegmenter, type SegmentOp } from './segmenter.ts';
import type { RecordingStore, SegmentFormat, SegmentWriter } from './store.ts';
import { Fmp4SegmentWriter } from './fmp4-segment.ts';

export interface RecorderOptions {
  node: string;
  format: SegmentFormat;
  segmentMs: number;
  queueBytes: number;
  now: () => number;
}

/** What every recorder of a node adds to (metrics). */
export interface RecorderCounters {
  bytesWritten: number;
  bytesDropped: number;
  segmentsWritten: number;
  storeErrors: number;
}

export class StreamRecorder {
  private readonly segmenter: RecordingSegmenter;
  private readonly queue: SegmentOp[] = [];
  private queuedBytes = 0;
  private draining: Promise<void> | undefined;
  private writer: SegmentWriter | undefined;
  /** Frames are being dropped (queue full or store failing) until the next segment can open. */
  private discarding = false;
  private stopped = false;
  private readonly failures = new FailureLogLimiter();
  private readonly dropLog = new FailureLogLimiter();
  private startMs = 0;

  constructor(
    readonly hub: StreamHub,
    private readonly store: RecordingStore,
    private readonly opts: RecorderOptions,
    private readonly counters: RecorderCounters,
    private readonly log: Logger,
  ) {
    this.segmenter = new RecordingSegmenter({ segmentMs: opts.segmentMs, now: opts.now });
  }

  get format(): SegmentFormat {
    return this.opts.format;
  }

  /** The segment being written, if any. */
  get openSegment(): { startMs: number } | undefined {
    return this.writer ? { startMs: this.startMs } : undefined;
  }

  /** Starts from the hub's headers and current GOP (a promoted standby's warm frames included). */
  start(): void {
    this.accept(this.segmenter.push(this.hub.snapshot()));
    this.hub.addFrameListener(this.onFrames);
  }

  /** A new publisher of the same stream: the open segment ends, the next starts at its first keyframe. */
  newPublisher(): void {
    this.accept(this.segmenter.newPublisher());
  }

  private readonly onFrames = (frames: readonly MediaFrame[]): void => {
    if (this.stopped) return;
    this.accept(this.segmenter.push(frames));
  };

  private accept(ops: SegmentOp[]): void {
    for (const op of ops) {
      if (op.op === 'open') {
        this.discarding = this.queuedBytes > this.opts.queueBytes / 2;
        if (this.discarding) continue;
      } else if (op.op === 'write') {
        if (this.discarding) {
          this.counters.bytesDropped += op.data.length;
          continue;
        }
        if (this.queuedBytes + op.data.length > this.opts.queueBytes) {
          this.counters.bytesDropped += op.data.length;
          this.discarding = true;
          this.queue.push({ op: 'close', durationMs: op.durationMs });
          const d = this.dropLog.failure();
          if (d.level === 'warn') this.log.warn({ queuedBytes: this.queuedBytes, limit: this.opts.queueBytes, suppressed: d.suppressed }, 'recording store is slower than the stream; dropping frames to the next keyframe (viewers are not affected)');
          continue;
        }
        this.queuedBytes += op.data.length;
      } else if (this.discarding) {
        continue;
      }
      this.queue.push(op);
    }
    // Dropping: the segmenter's open segment is over; the next opens at a keyframe.
    if (this.discarding && this.segmenter.open) this.segmenter.restart();
    this.kick();
  }

  private kick(): void {
    if (this.draining) return;
    this.draining = this.drain().finally(() => {
      this.draining = undefined;
      if (this.queue.length > 0) this.kick();
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const op = this.queue.shift()!;
      if (op.op === 'write') this.queuedBytes -= op.data.length;
      try {
        await this.apply(op);
        if (op.op !== 'close') {
          const streak = this.failures.success();
          if (streak > 0) this.log.info({ failures: streak }, 'recording store works again');
        }
      } catch (err) {
        this.counters.storeErrors++;
        this.writer = undefined;
        const d = this.failures.failure();
        const line = { err: (err as Error).message, store: this.store.kind, suppressed: d.suppressed, failures: d.streak };
        if (d.level === 'warn') this.log.warn(line, 'recording failed; live streaming goes on, the next segment is tried at the next keyframe');
        else this.log.debug(line, 'recording failed');
        // The rest of this segment has nowhere to go: drop it, try again in a new segment.
        this.dropQueuedSegment();
        if (this.segmenter.open) this.segmenter.restart();
      }
    }
    if (this.dropLog.success() > 0) this.log.info('recording caught up with the stream');
  }

  private dropQueuedSegment(): void {
    while (this.queue.length > 0 && this.queue[0]!.op !== 'open') {
      const op = this.queue.shift()!;
      if (op.op === 'write') {
        this.queuedBytes -= op.data.length;
        this.counters.bytesDropped += op.data.length;
      }
    }
  }

  private async apply(op: SegmentOp): Promise<void> {
    switch (op.op) {
      case 'open': {
        if (this.writer) await this.writer.close(0).catch(() => undefined);
        this.writer = undefined;
        this.startMs = op.startMs;
        const inner = await this.store.open({ app: this.hub.app, stream: this.hub.stream, startMs: op.startMs, node: this.opts.node, format: this.opts.format });
        // fMP4: the segmenter's FLV bytes are remuxed on their way to the store (fmp4-segment.ts).
        this.writer = this.opts.format === 'fmp4' ? new Fmp4SegmentWriter(inner, op.startMs) : inner;
        this.log.debug({ start: new Date(op.startMs).toISOString() }, 'recording segment opened');
        return;
      }
      case 'write':
        if (!this.writer) {
          this.counters.bytesDropped += op.data.length;
          return;
        }
        if (this.writer instanceof Fmp4SegmentWriter) {
          // What reaches the store: the muxer's output, not the FLV bytes it was made from.
          const before = this.writer.bytesOut;
          await this.writer.append(op.data, op.durationMs);
          this.counters.bytesWritten += this.writer.bytesOut - before;
        } else {
          await this.writer.append(op.data, op.durationMs);
          this.counters.bytesWritten += op.data.length;
        }
        return;
      case 'close': {
        const w = this.writer;
        this.writer = undefined;
        if (!w) return;
        const before = w instanceof Fmp4SegmentWriter ? w.bytesOut : 0;
        await w.close(op.durationMs);
        // fMP4: the muxer writes the segment's last fragment at close.
        if (w instanceof Fmp4SegmentWriter) this.counters.bytesWritten += w.bytesOut - before;
        this.counters.segmentsWritten++;
        this.log.info({ start: new Date(this.startMs).toISOString(), durationMs: op.durationMs }, 'recording segment written');
        return;
      }
    }
  }

  /** Stops listening, closes the open segment and waits (at most `timeoutMs`) for the queue to reach the store. */
  async stop(timeoutMs = 5000): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.hub.removeFrameListener(this.onFrames);
    this.accept(this.segmenter.restart());
    const idle = async (): Promise<void> => {
      while (this.draining) await this.draining;
    };
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([idle(), new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }
}
