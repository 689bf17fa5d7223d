/**
 * `meshcast-load --vod URL`: N viewers of one VOD file from one node.
 *
 * - `rtmp://host:port/app/mp4:dir/file.mp4` (or `…/app/file.flv`, `…/app/file`): RTMP VOD
 *   viewers with the project's client. The node paces a file in real time, so each viewer costs
 *   what a live viewer of the same bitrate would; at the end (NetStream.Play.Stop) a viewer
 *   seeks back to 0 and plays on, so the load stays constant over any window.
 * - `http://host:port/app/dir/file.mp4`: progressive HTTP viewers, each downloading the file
 *   again and again over one keep-alive connection, as fast as the node sends it.
 *
 * Per viewer only counters are kept: time to the first media (RTMP: first video frame; HTTP:
 * first body byte), bytes in the window (mark() … end()), plays finished, failures by cause.
 */
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { RtmpClient, type StatusInfo } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';
import { failureCause } from '../load/swarm.ts';
import { checkTargets } from './options.ts';
import { LoadAborted } from './runner.ts';

export interface VodSwarmOptions {
  /** rtmp://host:port/app/<name> or http://host:port/app/<path>.mp4|.flv */
  url: string;
  viewers: number;
  /** New viewers per second (0 = all at once). */
  rampPerSecond?: number;
  /** Connect and first-media timeout per viewer, ms (default 10 000). */
  timeoutMs?: number;
}

export interface VodSwarmReport {
  mode: 'vod';
  protocol: 'rtmp' | 'http';
  url: string;
  requested: number;
  /** Viewers that received media and have not failed. */
  receiving: number;
  failed: number;
  failures: Record<string, number>;
  /** Time from opening to the first media, ms. */
  ttffMs: { p50: number; p95: number; max: number };
  /** Media bytes received in the window (RTMP: FLV tag payloads; HTTP: body bytes). */
  windowBytes: number;
  windowSeconds: number;
  /** Plays (RTMP) or downloads (HTTP) that reached the end of the file, in all. */
  completed: number;
  ok: boolean;
}

type State = 'connecting' | 'receiving' | 'failed' | 'stopped';

interface Viewer {
  state: State;
  t0: number;
  ttff: number;
  client?: RtmpClient;
  req?: http.ClientRequest;
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export class VodSwarm {
  readonly protocol: 'rtmp' | 'http';
  private readonly viewers: Viewer[] = [];
  private readonly failures = new Map<string, number>();
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  private rampTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private counting = false;
  private windowBytes = 0;
  private windowT0 = 0;
  private windowS = 0;
  private completed = 0;

  constructor(readonly opts: VodSwarmOptions) {
    if (/^rtmp:\/\//.test(opts.url)) this.protocol = 'rtmp';
    else if (/^https?:\/\//.test(opts.url)) this.protocol = 'http';
    else throw new Error(`--vod needs an rtmp:// or http:// URL (got ${opts.url})`);
  }

  start(): void {
    const n = this.opts.viewers;
    const rate = this.opts.rampPerSecond ?? 0;
    let opened = 0;
    const openSome = (count: number): void => {
      for (let k = 0; k < count && opened < n && !this.stopping; k++) this.open(opened++);
    };
    if (rate <= 0) {
      openSome(n);
      return;
    }
    const t0 = performance.now();
    this.rampTimer = setInterval(() => {
      openSome(Math.floor(((performance.now() - t0) / 1000) * rate) + 1 - opened);
      if (opened >= n && this.rampTimer) clearInterval(this.rampTimer);
    }, 20);
  }

  progress(): { requested: number; receiving: number; failed: number; settled: number } {
    const receiving = this.viewers.filter((v) => v.state === 'receiving').length;
    const failed = this.viewers.filter((v) => v.state === 'failed').length;
    return { requested: this.opts.viewers, receiving, failed, settled: receiving + failed };
  }

  /** Resolves once every viewer receives media or failed, or after `limitMs`. */
  async whenSettled(limitMs: number, tick?: () => void): Promise<ReturnType<VodSwarm['progress']>> {
    const end = Date.now() + limitMs;
    for (;;) {
      tick?.();
      const p = this.progress();
      if (p.settled >= this.opts.viewers || Date.now() > end) return p;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Starts the measurement window. */
  mark(): void {
    this.windowBytes = 0;
    this.windowT0 = performance.now();
    this.counting = true;
  }

  /** Ends it. */
  end(): void {
    this.counting = false;
    this.windowS = (performance.now() - this.windowT0) / 1000;
  }

  report(): VodSwarmReport {
    const ttffs = this.viewers.filter((v) => v.ttff >= 0).map((v) => v.ttff).sort((x, y) => x - y);
    const p = this.progress();
    return {
      mode: 'vod',
      protocol: this.protocol,
      url: this.opts.url,
      requested: this.opts.viewers,
      receiving: p.receiving,
      failed: p.failed,
      failures: Object.fromEntries(this.failures),
      ttffMs: { p50: Math.round(quantile(ttffs, 0.5)), p95: Math.round(quantile(ttffs, 0.95)), max: Math.round(ttffs.at(-1) ?? NaN) },
      windowBytes: this.windowBytes,
      windowSeconds: this.windowS,
      completed: this.completed,
      ok: p.failed === 0 && p.receiving === this.opts.viewers,
    };
  }

  stop(): void {
    this.stopping = true;
    if (this.rampTimer) clearInterval(this.rampTimer);
    for (const v of this.viewers) {
      if (v.state !== 'failed') v.state = 'stopped';
      v.client?.close();
      v.req?.destroy();
    }
    this.agent.destroy();
  }

  private fail(v: Viewer, cause: string): void {
    if (v.state === 'failed' || v.state === 'stopped' || this.stopping) return;
    v.state = 'failed';
    this.failures.set(cause, (this.failures.get(cause) ?? 0) + 1);
    v.client?.close();
    v.req?.destroy();
  }

  private media(v: Viewer, bytes: number): void {
    if (v.ttff < 0) {
      v.ttff = performance.now() - v.t0;
      if (v.state === 'connecting') v.state = 'receiving';
    }
    if (this.counting) this.windowBytes += bytes;
  }

  private open(i: number): void {
    const v: Viewer = { state: 'connecting', t0: performance.now(), ttff: -1 };
    this.viewers[i] = v;
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    setTimeout(() => {
      if (v.state === 'connecting') this.fail(v, 'play:TIMEOUT');
    }, timeoutMs).unref();
    if (this.protocol === 'rtmp') void this.openRtmp(v, timeoutMs);
    else this.download(v);
  }

  private async openRtmp(v: Viewer, timeoutMs: number): Promise<void> {
    let client: RtmpClient;
    try {
      client = await RtmpClient.connect(this.opts.url, { timeoutMs });
    } catch (err) {
      this.fail(v, failureCause('connect', err));
      return;
    }
    v.client = client;
    if (this.stopping) {
      client.close();
      return;
    }
    client.onFrame = (m: RtmpMessage) => {
      if (m.type === 9 || m.type === 8) this.media(v, m.payload.length);
    };
    client.on('status', (s: StatusInfo) => {
      // The end of the file: play it again from the start (the load stays constant).
      if (s.code === 'NetStream.Play.Stop' && !this.stopping && v.state === 'receiving') {
        this.completed++;
        client.seek(0).catch((err: unknown) => this.fail(v, failureCause('seek', err)));
      }
    });
    client.on('close', (reason: string) => this.fail(v, `closed:${String(reason).split(':')[0]!.slice(0, 40)}`));
    try {
      await client.play(undefined, timeoutMs, 0);
    } catch (err) {
      this.fail(v, failureCause('play', err));
    }
  }

  /** One GET of the file after another on a keep-alive connection. */
  private download(v: Viewer): void {
    if (this.stopping || v.state === 'failed') return;
    const req = http.get(this.opts.url, { agent: this.agent, headers: { 'User-Agent': 'meshcast-load' } });
    v.req = req;
    req.on('error', (err: NodeJS.ErrnoException) => this.fail(v, `${v.state === 'receiving' ? 'closed' : 'connect'}:${err.code ?? err.message.slice(0, 40)}`));
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        this.fail(v, `play:HTTP_${res.statusCode}`);
        return;
      }
      res.on('data', (c: Buffer) => this.media(v, c.length));
      res.on('end', () => {
        if (this.stopping) return;
        this.completed++;
        this.download(v);
      });
    });
  }
}

/** The `--vod` run: ramp, then a window of `durationS`, then the report. */
export async function runVodLoad(
  o: { vod: string; viewers: number; durationS: number; rampPerSecond: number; timeoutMs: number; allowRemote: boolean },
  log: (line: string) => void,
  signal: AbortSignal,
): Promise<VodSwarmReport> {
  await checkTargets([o.vod], o.allowRemote);
  const swarm = new VodSwarm({ url: o.vod, viewers: o.viewers, rampPerSecond: o.rampPerSecond, timeoutMs: o.timeoutMs });
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  try {
    swarm.start();
    const rampLimit = (o.rampPerSecond > 0 ? (o.viewers / o.rampPerSecond) * 1000 : 0) + o.timeoutMs + 1000;
    let lastLog = 0;
    const p = await swarm.whenSettled(rampLimit, () => {
      if (signal.aborted) throw new LoadAborted();
      if (Date.now() - lastLog > 1000) {
        lastLog = Date.now();
        const q = swarm.progress();
        log(`ramp: ${q.receiving}/${o.viewers} receiving, ${q.failed} failed`);
      }
    });
    log(`measuring ${o.durationS} s with ${p.receiving} viewers receiving (${p.failed} failed)`);
    swarm.mark();
    const end = Date.now() + o.durationS * 1000;
    while (Date.now() < end) {
      if (signal.aborted) throw new LoadAborted();
      await sleep(Math.min(250, end - Date.now()));
    }
    swarm.end();
    return swarm.report();
  } finally {
    swarm.stop();
  }
}

export function renderVodReport(r: VodSwarmReport): string {
  const mbps = r.windowSeconds > 0 ? (r.windowBytes * 8) / r.windowSeconds / 1e6 : 0;
  const lines = [
    `VOD ${r.protocol} ${r.url}`,
    `viewers      ${r.receiving}/${r.requested} receiving, ${r.failed} failed${r.failed ? ` (${Object.entries(r.failures).map(([k, n]) => `${k} ×${n}`).join(', ')})` : ''}`,
    `first media  p50 ${r.ttffMs.p50} ms, p95 ${r.ttffMs.p95} ms, max ${r.ttffMs.max} ms`,
    `received     ${(r.windowBytes / 1e6).toFixed(1)} MB in ${r.windowSeconds.toFixed(1)} s (${mbps.toFixed(1)} Mbit/s, ${(mbps / Math.max(1, r.receiving)).toFixed(3)} per viewer)`,
    `completed    ${r.completed} ${r.protocol === 'rtmp' ? 'plays to the end (then looped)' : 'downloads'}`,
  ];
  return lines.join('\n');
}
