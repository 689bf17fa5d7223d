/**
 * HttpFlvSwarm: N HTTP-FLV viewers (plain node:http GETs, no keep-alive, redirects followed)
 * read with proto's FlvDecoder, measured exactly like the load library's RTMP ViewerSwarm:
 * same progress, same window semantics (mark / end / report), same SwarmPartReport.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import { FlvDecoder, FlvError, isVideoKeyframe, isVideoSequenceHeader } from '@meshcast/proto';
import { encodeHistogram, newHistogram, readClockStamp, type Histogram, type SwarmOptions, type SwarmPartReport, type SwarmProgress } from '../load/index.ts';

type State = 'connecting' | 'playing' | 'failed' | 'stopped';
const MAX_REDIRECTS = 3;

class FlvViewer {
  state: State = 'connecting';
  req: ClientRequest | undefined;
  res: IncomingMessage | undefined;
  t0 = 0;
  ttff = -1;
  bytes = 0;
  winBytes = 0;
  winFrames = 0;
  lastVideoTs = -1;
  bestOffset = -Infinity;
  maxLag = 0;
  tsBackwards = 0;
  tsJumps = 0;
  readonly decoder = new FlvDecoder();

  constructor(private readonly swarm: HttpFlvSwarm) {}

  onTag(type: number, ts: number, payload: Buffer): void {
    const sw = this.swarm;
    if (type === 9 || type === 8) {
      this.bytes += payload.length;
      if (ts > sw.winTs0 && ts <= sw.winTs1) {
        this.winBytes += payload.length;
        this.winFrames++;
      }
      if (type !== 9 || isVideoSequenceHeader(payload)) return;
      const now = performance.now();
      if (this.ttff < 0) {
        if (!isVideoKeyframe(payload)) return;
        this.ttff = now - this.t0;
        sw.onFirstFrame(this.ttff);
      }
      const last = this.lastVideoTs;
      if (last >= 0 && sw.inWindow) {
        if (ts < last) this.tsBackwards++;
        else if (ts - last > sw.tsJumpMs) this.tsJumps++;
      }
      this.lastVideoTs = ts;
      const offset = ts - now;
      if (offset > this.bestOffset) this.bestOffset = offset;
      else if (sw.inWindow) this.maxLag = Math.max(this.maxLag, this.bestOffset - offset);
      if (sw.inWindow && sw.perfEpoch !== undefined) sw.onFrameLatency(now - sw.perfEpoch - ts);
    } else if (type === 18 && sw.inWindow) {
      const stamp = readClockStamp(payload);
      if (stamp >= 0) sw.onClock(Date.now() - stamp);
    }
  }

  lagAt(now: number): number {
    if (this.lastVideoTs < 0) return -1;
    return Math.max(this.maxLag, this.bestOffset - (this.lastVideoTs - now));
  }
}

export class HttpFlvSwarm {
  readonly tsJumpMs: number;
  readonly perfEpoch: number | undefined;
  inWindow = false;
  winTs0 = Infinity;
  winTs1 = -Infinity;
  private readonly viewers: FlvViewer[] = [];
  private readonly failures: Record<string, number> = {};
  private ttff: Histogram = newHistogram();
  private latency: Histogram = newHistogram();
  private frameLatency: Histogram = newHistogram();
  private earlyFrames = 0;
  private rampTimer: NodeJS.Timeout | undefined;
  private started = 0;
  private playing = 0;
  private receiving = 0;
  private failed = 0;
  private winStart = 0;
  private winEnd = 0;
  private byArrival = false;
  private cpu0: NodeJS.CpuUsage = process.cpuUsage();
  private cpuWindow: NodeJS.CpuUsage | undefined;
  private stopping = false;

  constructor(readonly opts: SwarmOptions) {
    this.tsJumpMs = opts.tsJumpMs ?? 1000;
    this.perfEpoch = opts.epochMs !== undefined ? opts.epochMs - performance.timeOrigin : undefined;
  }

  start(): void {
    const total = this.opts.viewers;
    const rate = this.opts.rampPerSecond && this.opts.rampPerSecond > 0 ? this.opts.rampPerSecond : Infinity;
    const t0 = performance.now();
    const step = (): void => {
      this.rampTimer = undefined;
      if (this.stopping) return;
      const due = rate === Infinity ? total : Math.min(total, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
      for (let n = 0; this.started < due && n < 50; n++) this.open(this.started++);
      if (this.started < total) this.rampTimer = setTimeout(step, 10);
    };
    step();
  }

  private open(i: number): void {
    const v = new FlvViewer(this);
    this.viewers.push(v);
    v.t0 = performance.now();
    const addrs = this.opts.localAddresses;
    const localAddress = addrs && addrs.length > 0 ? addrs[i % addrs.length] : undefined;
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    const timer = setTimeout(() => {
      if (v.state !== 'connecting') return;
      this.fail(v, v.res ? 'play:TIMEOUT' : 'connect:TIMEOUT');
      v.req?.destroy();
    }, timeoutMs);
    const get = (url: string, hops: number): void => {
      let req: ClientRequest;
      try {
        req = http.get(url, { agent: false, headers: { 'User-Agent': 'meshcast-load', Connection: 'close' }, ...(localAddress ? { localAddress } : {}) });
      } catch (err) {
        clearTimeout(timer);
        this.fail(v, `connect:${(err as Error).message.slice(0, 40)}`);
        return;
      }
      v.req = req;
      req.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (this.stopping) return;
        if (v.state === 'playing') this.fail(v, `closed:${err.code ?? 'ERROR'}`);
        else this.fail(v, `connect:${err.code ?? err.message.slice(0, 40)}`);
      });
      req.on('response', (res) => {
        const loc = res.headers.location;
        if (res.statusCode && res.statusCode >= 300 && res.statusCode < 400 && loc) {
          res.resume();
          if (hops >= MAX_REDIRECTS) {
            clearTimeout(timer);
            this.fail(v, 'play:TOO_MANY_REDIRECTS');
            return;
          }
          get(new URL(loc, url).toString(), hops + 1);
          return;
        }
        if (res.statusCode !== 200) {
          clearTimeout(timer);
          res.resume();
          this.fail(v, `play:HTTP${res.statusCode ?? 0}`);
          req.destroy();
          return;
        }
        clearTimeout(timer);
        v.res = res;
        if (this.stopping) {
          req.destroy();
          return;
        }
        if (v.state === 'connecting') {
          v.state = 'playing';
          this.playing++;
        }
        res.on('data', (chunk: Buffer) => {
          const tags = v.decoder.push(chunk);
          if (tags instanceof FlvError) {
            this.fail(v, `play:${tags.code}`);
            req.destroy();
            return;
          }
          for (const t of tags) v.onTag(t.type, t.timestamp, t.payload);
        });
        const closed = (): void => {
          if (v.state === 'playing' && !this.stopping) this.fail(v, 'closed:connection closed by server');
        };
        res.on('end', closed);
        res.on('close', closed);
      });
    };
    get(this.opts.url, 0);
  }

  private fail(v: FlvViewer, cause: string): void {
    if (v.state === 'failed' || v.state === 'stopped') return;
    v.state = 'failed';
    this.failed++;
    this.failures[cause] = (this.failures[cause] ?? 0) + 1;
  }

  /** @internal */
  onFirstFrame(ms: number): void {
    this.receiving++;
    this.ttff.recordValue(Math.max(1, Math.round(ms)));
  }

  /** @internal */
  onClock(ms: number): void {
    this.latency.recordValue(Math.max(1, Math.round(ms)));
  }

  /** @internal */
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

  end(): void {
    if (!this.inWindow) return;
    const now = performance.now();
    this.cpuWindow = process.cpuUsage(this.cpu0);
    this.inWindow = false;
    this.winEnd = now;
    if (this.byArrival) this.winTs1 = -Infinity;
    for (const v of this.viewers) v.maxLag = v.lagAt(now);
  }

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

  stop(): void {
    this.stopping = true;
    if (this.rampTimer) clearTimeout(this.rampTimer);
    for (const v of this.viewers) {
      if (v.state !== 'failed') v.state = 'stopped';
      v.req?.destroy();
    }
  }
}
