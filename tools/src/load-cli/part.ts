/**
 * LoadPart: the viewers one process runs (the whole run, or one worker's share). Viewers
 * of a stream share one swarm (the load library's RTMP ViewerSwarm, or HttpFlvSwarm); in
 * route-aware mode the part asks a node's /api/v1/route for each viewer as it arrives and
 * starts small swarms per (stream, answer) batch, so placement sees the arrivals as they happen.
 */
import { performance } from 'node:perf_hooks';
import { ViewerSwarm, decodeHistogram, encodeHistogram, newHistogram, type Histogram, type SwarmPartReport, type SwarmProgress } from '../load/index.ts';
import { HttpFlvSwarm } from './http-flv-swarm.ts';
import { WhepSwarm } from './whep-swarm.ts';
import { isLoopbackHost, type Protocol } from './options.ts';
import { arrivalOrder } from './zipf.ts';

export interface StreamTarget {
  app: string;
  stream: string;
  /** Play URL when not routed. */
  playUrl: string;
}

/** Everything a part needs (plain JSON: it crosses to worker processes). */
export interface PartPlan {
  protocol: Protocol;
  streams: StreamTarget[];
  /** This part's viewers per stream index. */
  viewers: number[];
  /** Base URL of the node whose route API places each viewer. */
  route?: string;
  allowRemote: boolean;
  /** This part's new viewers per second (0: all at once). */
  rampPerSecond: number;
  timeoutMs: number;
  /** The publisher's epoch (Date.now() of media timestamp 0) per stream, when we publish it. */
  epochs: Array<number | null>;
  seed: number;
}

export interface RouteStats {
  lookups: number;
  failures: number;
  /** Route answer time, ms (hdr-histogram, compressed base64). */
  latency: string;
  /** Viewers placed per node. */
  perNode: Record<string, number>;
}

export interface PartProgress extends SwarmProgress {
  /** Audio+video payload bytes received so far by this part's viewers. */
  bytes: number;
}

export interface PartReport {
  part: SwarmPartReport;
  route: RouteStats | undefined;
}

type AnySwarm = ViewerSwarm | HttpFlvSwarm | WhepSwarm;
interface Group {
  stream: number;
  swarm: AnySwarm;
}

interface RouteAnswer {
  node: string;
  rtmp: string;
  flv: string;
  whep?: string;
}

/** The URL a viewer of `protocol` plays from a route answer. */
function routedUrl(a: RouteAnswer, protocol: Protocol): string | undefined {
  return protocol === 'rtmp' ? a.rtmp : protocol === 'whep' ? a.whep : a.flv;
}

export class LoadPart {
  private readonly groups: Group[] = [];
  private readonly total: number;
  private routeFailed = 0;
  private readonly routeFailures: Record<string, number> = {};
  private readonly routeLatency: Histogram = newHistogram();
  private readonly perNode: Record<string, number> = {};
  private routeLookups = 0;
  private stopping = false;
  private routing: Promise<void> | undefined;
  private range: Record<number, { fromTs: number; toTs: number } | undefined> | undefined;
  private marked = false;
  private cpu0: NodeJS.CpuUsage = process.cpuUsage();
  private cpuWindow: NodeJS.CpuUsage | undefined;

  constructor(readonly plan: PartPlan) {
    this.total = plan.viewers.reduce((a, b) => a + b, 0);
  }

  private makeSwarm(stream: number, url: string, viewers: number, rampPerSecond: number): AnySwarm {
    // A WHEP viewer's media time starts at its first RTP frame, not at the publisher's timestamp 0.
    const epoch = this.plan.protocol === 'whep' ? null : this.plan.epochs[stream];
    const opts = { url, viewers, timeoutMs: this.plan.timeoutMs, ...(rampPerSecond > 0 ? { rampPerSecond } : {}), ...(epoch != null ? { epochMs: epoch } : {}) };
    const s = this.plan.protocol === 'rtmp' ? new ViewerSwarm(opts) : this.plan.protocol === 'whep' ? new WhepSwarm(opts) : new HttpFlvSwarm(opts);
    this.groups.push({ stream, swarm: s });
    // A swarm started inside the measurement window joins it.
    if (this.marked) s.mark(this.range?.[stream]);
    s.start();
    return s;
  }

  start(): void {
    if (this.plan.route) {
      this.routing = this.runRouted();
      return;
    }
    const rate = this.plan.rampPerSecond;
    this.plan.viewers.forEach((n, i) => {
      if (n > 0) this.makeSwarm(i, this.plan.streams[i]!.playUrl, n, rate > 0 ? (rate * n) / this.total : 0);
    });
  }

  private async lookup(target: StreamTarget): Promise<RouteAnswer> {
    const url = `${this.plan.route}/api/v1/route/${encodeURIComponent(target.app)}/${encodeURIComponent(target.stream)}`;
    const t0 = performance.now();
    this.routeLookups++;
    const r = await fetch(url, { signal: AbortSignal.timeout(this.plan.timeoutMs) });
    if (!r.ok) throw new Error(`HTTP${r.status}`);
    const a = (await r.json()) as RouteAnswer;
    this.routeLatency.recordValue(Math.max(1, Math.round(performance.now() - t0)));
    const play = routedUrl(a, this.plan.protocol);
    if (typeof play !== 'string') throw new Error('bad-answer');
    if (!this.plan.allowRemote && !(await isLoopbackHost(new URL(play).hostname))) throw new Error('remote-target-refused');
    return a;
  }

  /** Arrivals in batches of ≤ 250 ms: look up each viewer's route, then start one swarm per (stream, target). */
  private async runRouted(): Promise<void> {
    const order = arrivalOrder(this.plan.viewers, this.plan.seed);
    const rate = this.plan.rampPerSecond > 0 ? this.plan.rampPerSecond : Infinity;
    const batch = rate === Infinity ? 200 : Math.max(1, Math.ceil(rate / 4));
    const tickMs = rate === Infinity ? 0 : Math.round((batch / rate) * 1000);
    const t0 = performance.now();
    for (let at = 0, k = 0; at < order.length && !this.stopping; at += batch, k++) {
      const due = t0 + k * tickMs;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const slice = order.slice(at, at + batch);
      const answers = await Promise.all(
        slice.map(async (stream) => {
          try {
            return { stream, a: await this.lookup(this.plan.streams[stream]!) };
          } catch (err) {
            const e = err as Error & { name?: string };
            const cause = `route:${e.name === 'TimeoutError' ? 'TIMEOUT' : (/\b(E[A-Z]{3,})\b/.exec(String(e.cause ?? e.message))?.[1] ?? e.message.slice(0, 40))}`;
            this.routeFailed++;
            this.routeFailures[cause] = (this.routeFailures[cause] ?? 0) + 1;
            return undefined;
          }
        }),
      );
      if (this.stopping) return;
      const byTarget = new Map<string, { stream: number; url: string; n: number }>();
      for (const x of answers) {
        if (!x) continue;
        const url = routedUrl(x.a, this.plan.protocol)!;
        this.perNode[x.a.node] = (this.perNode[x.a.node] ?? 0) + 1;
        const key = `${x.stream} ${url}`;
        const g = byTarget.get(key) ?? { stream: x.stream, url, n: 0 };
        g.n++;
        byTarget.set(key, g);
      }
      for (const g of byTarget.values()) this.makeSwarm(g.stream, g.url, g.n, rate === Infinity ? 0 : rate);
    }
  }

  progress(): PartProgress {
    const p: PartProgress = { requested: this.total, started: 0, playing: 0, receiving: 0, failed: this.routeFailed, settled: this.routeFailed, bytes: 0 };
    for (const g of this.groups) {
      const s = g.swarm.progress();
      p.started += s.started;
      p.playing += s.playing;
      p.receiving += s.receiving;
      p.failed += s.failed;
      p.settled += s.settled;
      p.bytes += g.swarm.bytes();
    }
    p.started += this.routeFailed;
    return p;
  }

  /** Starts the window; `ranges` per stream index (media-time byte window), or arrival-time counting. */
  mark(ranges?: Record<number, { fromTs: number; toTs: number } | undefined>): void {
    this.marked = true;
    this.range = ranges;
    this.cpu0 = process.cpuUsage();
    this.cpuWindow = undefined;
    for (const g of this.groups) g.swarm.mark(ranges?.[g.stream]);
  }

  end(): void {
    this.cpuWindow ??= process.cpuUsage(this.cpu0);
    for (const g of this.groups) g.swarm.end();
  }

  /** One report for the whole part (its swarms merged; CPU and memory counted once for the process). */
  report(): PartReport {
    this.end();
    const reports = this.groups.map((g) => g.swarm.report());
    const ttff = newHistogram();
    const lat = newHistogram();
    const flat = newHistogram();
    const failures: Record<string, number> = { ...this.routeFailures };
    const retries: Record<string, number> = {};
    const out: SwarmPartReport = {
      pid: process.pid,
      requested: this.total,
      started: this.routeFailed,
      playing: 0,
      receiving: 0,
      failures,
      retries,
      ttff: '',
      latency: '',
      frameLatency: '',
      earlyFrames: 0,
      windowMs: 0,
      windowBytes: [],
      maxLagMs: [],
      windowFrames: 0,
      tsBackwards: 0,
      tsJumps: 0,
      cpuUserUs: this.cpuWindow?.user ?? 0,
      cpuSystemUs: this.cpuWindow?.system ?? 0,
      rssBytes: process.memoryUsage.rss(),
    };
    for (const r of reports) {
      out.started += r.started;
      out.playing += r.playing;
      out.receiving += r.receiving;
      for (const [k, v] of Object.entries(r.failures)) failures[k] = (failures[k] ?? 0) + v;
      for (const [k, v] of Object.entries(r.retries)) retries[k] = (retries[k] ?? 0) + v;
      ttff.add(decodeHistogram(r.ttff));
      lat.add(decodeHistogram(r.latency));
      flat.add(decodeHistogram(r.frameLatency));
      out.earlyFrames += r.earlyFrames;
      out.windowMs = Math.max(out.windowMs, r.windowMs);
      out.windowBytes.push(...r.windowBytes);
      out.maxLagMs.push(...r.maxLagMs);
      out.windowFrames += r.windowFrames;
      out.tsBackwards += r.tsBackwards;
      out.tsJumps += r.tsJumps;
    }
    // Viewers whose route failed, or who never got to start, delivered nothing.
    while (out.windowBytes.length < this.total) {
      out.windowBytes.push(0);
      out.maxLagMs.push(-2);
    }
    out.ttff = encodeHistogram(ttff);
    out.latency = encodeHistogram(lat);
    out.frameLatency = encodeHistogram(flat);
    const route = this.plan.route
      ? { lookups: this.routeLookups, failures: this.routeFailed, latency: encodeHistogram(this.routeLatency), perNode: { ...this.perNode } }
      : undefined;
    return { part: out, route };
  }

  stop(): void {
    this.stopping = true;
    for (const g of this.groups) g.swarm.stop();
  }

  /** Resolves once stopped viewers have said goodbye (WHEP: the DELETE of each session). */
  async closed(): Promise<void> {
    await Promise.all(this.groups.map((g) => (g.swarm instanceof WhepSwarm ? g.swarm.closed() : undefined)));
  }

  /** Resolves when route lookups (if any) are done. */
  async settledRouting(): Promise<void> {
    await this.routing;
  }
}
