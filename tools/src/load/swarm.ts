/**
 * ViewerSwarm: N RTMP viewers in this process, opened at R per second with the project's
 * RTMP client. Per viewer it keeps a handful of counters (never payloads): time to first
 * video keyframe, bytes and frames, how far its timestamps lag the wall clock, and why it
 * failed.
 *
 * Measurement window: `mark({ fromTs, toTs })` … `end()` … `report()`. Bytes and frames are
 * counted by media timestamp (frames with fromTs < timestamp ≤ toTs), so they compare exactly
 * with what the publisher sent for that range whatever each server's latency; CPU, lag and
 * latency samples are taken on the wall clock between mark() and end(). Call report() a
 * moment after end() so frames up to toTs have arrived. Without a range, bytes are counted
 * by arrival time between mark() and end().
 */
import { performance } from 'node:perf_hooks';
import { RtmpClient, RtmpClientError } from '@meshcast/node/client';
import { isVideoKeyframe, isVideoSequenceHeader, type RtmpMessage } from '@meshcast/proto';
import { readClockStamp } from './clock.ts';
import { encodeHistogram, newHistogram, type Histogram, type SwarmPartReport } from './stats.ts';

export interface SwarmOptions {
  /** rtmp://host:port/app/stream */
  url: string;
  viewers: number;
  /** New viewers per second (default: all at once, in batches of 50 per 10 ms). */
  rampPerSecond?: number;
  /** Connect and play timeout per viewer, ms (default 10 000). */
  timeoutMs?: number;
  /** Source addresses to spread viewers over (e.g. 127.0.1.1, 127.0.1.2), round-robin. */
  localAddresses?: string[];
  /** A video timestamp step larger than this counts as a jump (default 1000 ms). */
  tsJumpMs?: number;
  /**
   * Wall-clock time (Date.now()) of the publisher's media timestamp 0. When set, each video
   * frame in the window records a frame latency `now - (epochMs + timestamp)` (valid when the
   * server passes the publisher's timestamps through, which all servers benchmarked here do).
   */
  epochMs?: number;
}

export interface SwarmProgress {
  requested: number;
  started: number;
  playing: number;
  receiving: number;
  failed: number;
  /** Viewers that have reached a final state for the ramp: receiving video, or failed. */
  settled: number;
}

type ViewerState = 'connecting' | 'playing' | 'failed' | 'stopped';

/** Normalises an error or close reason into a short failure cause (no ports, no addresses). */
export function failureCause(stage: string, err: unknown): string {
  if (err instanceof RtmpClientError) {
    if (err.code === 'SOCKET' || err.code === 'CLOSED') {
      const errno = /\b(E[A-Z]{3,})\b/.exec(err.message);
      return `${stage}:${err.code}${errno ? `:${errno[1]}` : ''}`;
    }
    return `${stage}:${err.code}`;
  }
  const msg = err instanceof Error ? err.message : String(err);
  const errno = /\b(E[A-Z]{3,})\b/.exec(msg);
  if (errno) return `${stage}:${errno[1]}`;
  return `${stage}:${msg.split(':')[0]!.slice(0, 60)}`;
}

/**
 * One viewer's counters (never payloads), fed every audio, video and data message whatever
 * the transport: time to first keyframe, bytes and frames in the window, timestamp
 * regressions and jumps, lag behind the wall clock, clock-stamp and frame latency.
 */
export class ViewerTally {
  state: ViewerState = 'connecting';
  t0 = 0;
  ttff = -1;
  bytes = 0;
  frames = 0;
  winBytes = 0;
  winFrames = 0;
  lastVideoTs = -1;
  lastVideoAt = 0;
  bestOffset = -Infinity;
  maxLag = 0;
  tsBackwards = 0;
  tsJumps = 0;

  constructor(private readonly swarm: SwarmCore<ViewerTally>) {}

  onMedia(type: number, ts: number, payload: Buffer): void {
    if (type === 9 || type === 8) {
      this.countFrame(type, ts, payload.length, type === 9 && !isVideoSequenceHeader(payload), type === 9 && isVideoKeyframe(payload));
    } else if (type === 18 && this.swarm.inWindow) {
      const stamp = readClockStamp(payload);
      if (stamp >= 0) this.swarm.onClock(Date.now() - stamp);
    }
  }

  /**
   * One received audio (8) or video (9) frame of `len` payload bytes at media time `ts` (ms),
   * whatever the transport. `picture`: a video frame that is not a decoder configuration;
   * `keyframe`: a picture a player can start on.
   */
  countFrame(type: 8 | 9, ts: number, len: number, picture: boolean, keyframe: boolean): void {
    const sw = this.swarm;
    this.bytes += len;
    this.frames++;
    if (ts > sw.winTs0 && ts <= sw.winTs1) {
      this.winBytes += len;
      this.winFrames++;
    }
    if (type !== 9 || !picture) return;
    const now = performance.now();
    if (this.ttff < 0) {
      // The first picture a player can show: a keyframe (servers without a GOP cache make us wait for one).
      if (!keyframe) return;
      this.ttff = now - this.t0;
      sw.onFirstFrame(this.ttff);
    }
    const last = this.lastVideoTs;
    if (last >= 0 && sw.inWindow) {
      if (ts < last) this.tsBackwards++;
      else if (ts - last > sw.tsJumpMs) this.tsJumps++;
    }
    this.lastVideoTs = ts;
    this.lastVideoAt = now;
    const offset = ts - now;
    if (offset > this.bestOffset) this.bestOffset = offset;
    else if (sw.inWindow) {
      const lag = this.bestOffset - offset;
      if (lag > this.maxLag) this.maxLag = lag;
    }
    if (sw.inWindow && sw.perfEpoch !== undefined) sw.onFrameLatency(now - sw.perfEpoch - ts);
  }

  /** Largest lag in the window, counting the time since the last video frame (a stalled viewer keeps falling behind). */
  lagAt(now: number): number {
    if (this.lastVideoTs < 0) return -1;
    return Math.max(this.maxLag, this.bestOffset - (this.lastVideoTs - now));
  }
}

/**
 * What every swarm shares whatever its transport: the ramp, failure accounting, histograms
 * and the measurement window. A transport opens a viewer (`open`) and closes one (`close`).
 */
export abstract class SwarmCore<V extends ViewerTally> {
  readonly tsJumpMs: number;
  /** The publisher's epoch on this process's performance.now() clock. */
  readonly perfEpoch: number | undefined;
  inWindow = false;
  /** Media-time window for bytes/frames (exclusive, inclusive); empty until mark(). */
  winTs0 = Infinity;
  winTs1 = -Infinity;
  protected readonly viewers: V[] = [];
  private readonly failures: Record<string, number> = {};
  private readonly retries: Record<string, number> = {};
  private ttff: Histogram = newHistogram();
  private latency: Histogram = newHistogram();
  private frameLatency: Histogram = newHistogram();
  private earlyFrames = 0;
  private rampTimer: NodeJS.Timeout | undefined;
  private started = 0;
  protected playing = 0;
  private receiving = 0;
  private failed = 0;
  private winStart = 0;
  private winEnd = 0;
  private cpuWindow: NodeJS.CpuUsage | undefined;
  private byArrival = false;
  private cpu0: NodeJS.CpuUsage = process.cpuUsage();
  protected stopping = false;

  constructor(readonly opts: SwarmOptions) {
    this.tsJumpMs = opts.tsJumpMs ?? 1000;
    this.perfEpoch = opts.epochMs !== undefined ? opts.epochMs - performance.timeOrigin : undefined;
  }

  /** Opens viewer number `i` (already pushed to `viewers`, with `t0` set). */
  protected abstract open(v: V, i: number): void;
  protected abstract newViewer(): V;
  protected abstract close(v: V): void;

  /** Starts ramping; returns immediately. */
  start(): void {
    const total = this.opts.viewers;
    const rate = this.opts.rampPerSecond && this.opts.rampPerSecond > 0 ? this.opts.rampPerSecond : Infinity;
    const t0 = performance.now();
    const step = (): void => {
      this.rampTimer = undefined;
      if (this.stopping) return;
      const due = rate === Infinity ? total : Math.min(total, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
      for (let n = 0; this.started < due && n < 50; n++) {
        const i = this.started++;
        const v = this.newViewer();
        this.viewers.push(v);
        v.t0 = performance.now();
        this.open(v, i);
      }
      if (this.started < total) this.rampTimer = setTimeout(step, 10);
    };
    step();
  }

  /** The source address for viewer `i`, round-robin over `localAddresses`. */
  protected localAddress(i: number): string | undefined {
    const addrs = this.opts.localAddresses;
    return addrs && addrs.length > 0 ? addrs[i % addrs.length] : undefined;
  }

  protected fail(v: V, cause: string): void {
    if (v.state === 'failed' || v.state === 'stopped') return;
    v.state = 'failed';
    this.failed++;
    this.failures[cause] = (this.failures[cause] ?? 0) + 1;
  }

  /** Counts an attempt that failed with `cause` and is being made again (the viewer has not failed). */
  protected noteRetry(cause: string): void {
    this.retries[cause] = (this.retries[cause] ?? 0) + 1;
  }

  /** @internal called by viewers */
  onFirstFrame(ms: number): void {
    this.receiving++;
    this.ttff.recordValue(Math.max(1, Math.round(ms)));
  }

  /** @internal called by viewers */
  onClock(ms: number): void {
    this.latency.recordValue(Math.max(1, Math.round(ms)));
  }

  /** @internal called by viewers */
  onFrameLatency(ms: number): void {
    if (ms < 0) this.earlyFrames++;
    this.frameLatency.recordValue(Math.max(1, Math.round(ms)));
  }

  /** Audio+video payload bytes received so far by all viewers. */
  bytes(): number {
    let b = 0;
    for (const v of this.viewers) b += v.bytes;
    return b;
  }

  progress(): SwarmProgress {
    let settled = 0;
    for (const v of this.viewers) if (v.ttff >= 0 || v.state === 'failed') settled++;
    return { requested: this.opts.viewers, started: this.started, playing: this.playing, receiving: this.receiving, failed: this.failed, settled };
  }

  /** Resolves when every viewer is receiving or failed, or after `timeoutMs`. */
  async whenSettled(timeoutMs: number, onProgress?: (p: SwarmProgress) => void): Promise<SwarmProgress> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const p = this.progress();
      onProgress?.(p);
      if ((p.started >= p.requested && p.settled >= p.requested) || performance.now() >= deadline) return p;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Starts the measurement window. With a range, bytes/frames count for frames whose
   * timestamps fall in (fromTs, toTs]; pick fromTs a little ahead of the publisher so this
   * message arrives before those frames do.
   */
  mark(range?: { fromTs: number; toTs: number }): void {
    this.inWindow = true;
    this.winStart = performance.now();
    this.winEnd = 0;
    this.cpu0 = process.cpuUsage();
    this.cpuWindow = undefined;
    this.latency = newHistogram();
    this.frameLatency = newHistogram();
    this.earlyFrames = 0;
    this.byArrival = !range;
    this.winTs0 = range ? range.fromTs : -Infinity;
    this.winTs1 = range ? range.toTs : Infinity;
    for (const v of this.viewers) {
      v.winBytes = 0;
      v.winFrames = 0;
      v.maxLag = 0;
      v.tsBackwards = 0;
      v.tsJumps = 0;
    }
  }

  /** Ends the wall-clock part of the window (CPU, lag, latency); media-time byte counting goes on until report(). */
  end(): void {
    if (!this.inWindow) return;
    const now = performance.now();
    this.cpuWindow = process.cpuUsage(this.cpu0);
    this.inWindow = false;
    this.winEnd = now;
    if (this.byArrival) this.winTs1 = -Infinity;
    for (const v of this.viewers) v.maxLag = v.lagAt(now);
  }

  /** Ends the window (calling end() first if needed) and reports it; the viewers stay connected. */
  report(): SwarmPartReport {
    this.end();
    this.winTs0 = Infinity;
    this.winTs1 = -Infinity;
    const cpu = this.cpuWindow ?? { user: 0, system: 0 };
    const failures = { ...this.failures };
    const windowBytes: number[] = [];
    const maxLagMs: number[] = [];
    let frames = 0;
    let tsBackwards = 0;
    let tsJumps = 0;
    for (const v of this.viewers) {
      if (v.state === 'playing' && v.ttff < 0) failures['no-video'] = (failures['no-video'] ?? 0) + 1;
      windowBytes.push(v.winBytes);
      maxLagMs.push(v.state === 'failed' ? -2 : Math.round(v.maxLag));
      frames += v.winFrames;
      tsBackwards += v.tsBackwards;
      tsJumps += v.tsJumps;
    }
    // Viewers never started (ramp cut short) count as delivering nothing.
    for (let i = this.viewers.length; i < this.opts.viewers; i++) {
      windowBytes.push(0);
      maxLagMs.push(-2);
    }
    return {
      pid: process.pid,
      requested: this.opts.viewers,
      started: this.started,
      playing: this.playing,
      receiving: this.receiving,
      failures,
      retries: { ...this.retries },
      ttff: encodeHistogram(this.ttff),
      latency: encodeHistogram(this.latency),
      frameLatency: encodeHistogram(this.frameLatency),
      earlyFrames: this.earlyFrames,
      windowMs: this.winStart > 0 ? this.winEnd - this.winStart : 0,
      windowBytes,
      maxLagMs,
      windowFrames: frames,
      tsBackwards,
      tsJumps,
      cpuUserUs: cpu.user,
      cpuSystemUs: cpu.system,
      rssBytes: process.memoryUsage.rss(),
    };
  }

  /** Closes every viewer. */
  stop(): void {
    this.stopping = true;
    if (this.rampTimer) clearTimeout(this.rampTimer);
    for (const v of this.viewers) {
      if (v.state !== 'failed') v.state = 'stopped';
      this.close(v);
    }
  }
}

class RtmpViewer extends ViewerTally {
  client: RtmpClient | undefined;
  readonly onFrame = (m: RtmpMessage): void => this.onMedia(m.type, m.timestamp, m.payload);
}

/** RTMP viewers with the project's client. */
export class ViewerSwarm extends SwarmCore<RtmpViewer> {
  protected newViewer(): RtmpViewer {
    return new RtmpViewer(this);
  }

  protected open(v: RtmpViewer, i: number): void {
    const localAddress = this.localAddress(i);
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    let stage = 'connect';
    RtmpClient.connect(this.opts.url, { timeoutMs, ...(localAddress ? { localAddress } : {}) })
      .then(async (c) => {
        v.client = c;
        if (this.stopping) {
          c.close();
          return;
        }
        c.onFrame = v.onFrame;
        c.on('close', (reason: string) => {
          if (v.state === 'playing' && !this.stopping) this.fail(v, failureCause('closed', new Error(reason)));
        });
        stage = 'play';
        await c.play(undefined, timeoutMs);
        if (v.state !== 'connecting') return;
        v.state = 'playing';
        this.playing++;
      })
      .catch((err: unknown) => {
        if (this.stopping) return;
        this.fail(v, failureCause(stage, err));
        v.client?.close();
      });
  }

  protected close(v: RtmpViewer): void {
    v.client?.close('swarm stopped');
  }
}
