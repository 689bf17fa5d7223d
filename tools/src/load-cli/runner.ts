/**
 * One meshcast-load run: publishers (FlvLoopPublisher with clock stamps), viewer parts (in this
 * process or in workers), ramp → settle → measurement window → report.
 */
import { performance } from 'node:perf_hooks';
import {
  BENCH_MEDIA,
  FlvLoopPublisher,
  TEST_MEDIA,
  decodeHistogram,
  ensureTestMedia,
  loadFlvSource,
  newHistogram,
  percentiles,
  sourceBitrate,
  splitEven,
  summarizeSwarm,
  type FlvSource,
  type Percentiles,
  type SwarmSummary,
} from '../load/index.ts';
import { checkTargets, type LoadOptions } from './options.ts';
import type { PartPlan, PartProgress, PartReport, StreamTarget } from './part.ts';
import { LocalPart, WorkerPart, type PartHandle } from './worker.ts';
import { apportion, zipfWeights } from './zipf.ts';

export interface LoadReport {
  tool: 'meshcast-load';
  startedAt: string;
  finishedAt: string;
  options: Omit<LoadOptions, 'json' | 'quiet'>;
  media: { file: string; width: number | null; height: number | null; kbps: number; loopSeconds: number } | null;
  publishers: Array<{ url: string; payloadBytes: number; frames: number; clockStamps: number; stalls: number; closedEarly: boolean }>;
  streams: Array<{ app: string; stream: string; viewers: number; playUrl: string }>;
  /** How the window counted bytes: by media timestamps of our own publishers, or by arrival time. */
  window: 'media-time' | 'arrival';
  summary: SwarmSummary;
  /** Audio+video frames every requested viewer should have received in the window, summed. */
  framesExpected: number;
  framesReceived: number;
  /** framesExpected − framesReceived (frames dropped, or never received by viewers that failed). */
  framesMissing: number;
  route: { lookups: number; failures: number; latencyMs: Percentiles; perNode: Record<string, number> } | null;
  ok: boolean;
}

export interface LoadUi {
  start(total: number): void;
  update(phase: string, p: PartProgress, mbps: number): void;
  log(line: string): void;
  stop(): void;
}

export class LoadAborted extends Error {
  constructor() {
    super('interrupted');
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Stream names: the URL's name, or NAME-1 … NAME-K. */
export function streamNames(stream: string, k: number): string[] {
  return k === 1 ? [stream] : Array.from({ length: k }, (_, i) => `${stream}-${i + 1}`);
}

/** `base` with its path replaced by /app/stream (HTTP-FLV: /app/stream.flv; WHEP: /app/stream/whep); host, port and query kept. */
export function withStream(base: string, app: string, stream: string, kind: boolean | 'whep'): string {
  const u = new URL(base);
  const path = `/${app.split('/').map(encodeURIComponent).join('/')}/${encodeURIComponent(stream)}${kind === 'whep' ? '/whep' : kind ? '.flv' : ''}`;
  return `${u.protocol}//${u.host}${path}${u.search}`;
}

/** Audio+video frames a looping publisher of `s` sends for media timestamps in (fromTs, toTs]. */
export function framesInRange(s: FlvSource, fromTs: number, toTs: number): number {
  if (!(toTs > fromTs)) return 0;
  const L = s.loopDurationMs;
  let n = 0;
  for (let loop = Math.max(0, Math.floor(fromTs / L)); loop <= Math.floor(toTs / L); loop++) {
    const base = loop * L;
    if (base > fromTs && base + L <= toTs) {
      n += s.tags.length;
      continue;
    }
    for (const t of s.tags) {
      const ts = base + t.timestamp;
      if (ts > fromTs && ts <= toTs) n++;
    }
  }
  return n;
}

async function loadMedia(media: string, protocol: LoadOptions['protocol']): Promise<FlvSource> {
  // WebRTC plays frames in decode order, so a node refuses WHEP for a B-frame source (WHEP.BFrames).
  const forWebRtc = protocol === 'whep' ? { bFrames: false as const } : {};
  if (media === 'small') return loadFlvSource(await ensureTestMedia({ ...TEST_MEDIA, ...forWebRtc }));
  if (media === '720p') return loadFlvSource(await ensureTestMedia({ ...BENCH_MEDIA, ...forWebRtc }));
  return loadFlvSource(media);
}

function sum(ps: PartProgress[]): PartProgress {
  const out: PartProgress = { requested: 0, started: 0, playing: 0, receiving: 0, failed: 0, settled: 0, bytes: 0 };
  for (const p of ps) for (const k of Object.keys(out) as Array<keyof PartProgress>) out[k] += p[k];
  return out;
}

export async function runLoad(o: LoadOptions, ui: LoadUi, signal?: AbortSignal): Promise<LoadReport> {
  const startedAt = new Date().toISOString();
  await checkTargets([o.url, o.playUrl, o.route], o.allowRemote);
  const checkAbort = (): void => {
    if (signal?.aborted) throw new LoadAborted();
  };
  const names = streamNames(o.stream, o.streams);
  const counts = apportion(o.viewers, zipfWeights(o.streams, o.zipf));
  const playBase = o.playUrl ?? o.url!;
  const kind = o.protocol === 'whep' ? 'whep' : o.protocol === 'http-flv';
  const targets: StreamTarget[] = names.map((stream) => ({ app: o.app, stream, playUrl: o.route ? '' : withStream(playBase, o.app, stream, kind) }));

  const publishers: FlvLoopPublisher[] = [];
  const closedEarly = new Set<FlvLoopPublisher>();
  const parts: PartHandle[] = [];
  let finishing = false;
  let source: FlvSource | undefined;
  try {
    if (o.publishers > 0) {
      ui.log(`preparing test media (${o.media})…`);
      source = await loadMedia(o.media, o.protocol);
      checkAbort();
      for (let i = 0; i < o.publishers; i++) {
        const url = withStream(o.url!, o.app, names[i]!, false);
        let p: FlvLoopPublisher;
        try {
          p = await FlvLoopPublisher.start({ url, source, clockIntervalMs: 250, timeoutMs: o.timeoutMs });
        } catch (err) {
          throw new Error(`cannot publish to ${url}: ${(err as Error).message}`);
        }
        p.once('close', () => {
          if (!finishing) {
            closedEarly.add(p);
            ui.log(`publisher ${url} closed early`);
          }
        });
        publishers.push(p);
      }
      ui.log(`${publishers.length} publisher(s) live at ${Math.round(sourceBitrate(source) / 1000)} kbit/s; waiting for a first keyframe in the GOP cache`);
      await sleep(1200);
      checkAbort();
    }

    const nParts = Math.max(1, o.workers);
    const shares = counts.map((n) => splitEven(n, nParts));
    const epochs = names.map((_, i) => publishers[i]?.epochMs ?? null);
    for (let p = 0; p < nParts; p++) {
      const plan: PartPlan = {
        protocol: o.protocol,
        streams: targets,
        viewers: shares.map((s) => s[p] ?? 0),
        allowRemote: o.allowRemote,
        rampPerSecond: o.rampPerSecond / nParts,
        timeoutMs: o.timeoutMs,
        epochs,
        seed: p + 1,
        ...(o.route ? { route: o.route } : {}),
      };
      if (o.workers > 0) {
        const w = new WorkerPart(p);
        parts.push(w);
        await w.ready;
      } else parts.push(new LocalPart());
      await parts[p]!.start(plan);
    }

    // Ramp until every viewer plays video or failed (or gave up).
    ui.start(o.viewers);
    // Received Mbps over the last second or so (polls come every 250 ms).
    const samples: Array<{ at: number; bytes: number }> = [];
    const poll = async (phase: string): Promise<PartProgress> => {
      const p = sum(await Promise.all(parts.map((x) => x.progress())));
      const now = performance.now();
      samples.push({ at: now, bytes: p.bytes });
      while (samples.length > 2 && now - samples[1]!.at >= 1000) samples.shift();
      const first = samples[0]!;
      const mbps = now - first.at > 100 ? ((p.bytes - first.bytes) * 8) / ((now - first.at) / 1000) / 1e6 : 0;
      ui.update(phase, p, mbps);
      return p;
    };
    const rampMs = o.rampPerSecond > 0 ? (o.viewers / o.rampPerSecond) * 1000 : 0;
    const settleBy = performance.now() + rampMs + o.timeoutMs + 5000;
    for (;;) {
      checkAbort();
      const p = await poll('ramp');
      if ((p.started >= p.requested && p.settled >= p.requested) || performance.now() > settleBy) break;
      await sleep(250);
    }

    // Measurement window.
    // WHEP viewers see RTP time, which starts at their own first frame: they count by arrival.
    const byMediaTime = publishers.length === o.streams && publishers.length > 0 && o.protocol !== 'whep';
    const ranges: Record<number, { fromTs: number; toTs: number }> = {};
    let expectedBytes = 0;
    let framesExpected = 0;
    const windowMs = o.durationS * 1000;
    if (byMediaTime) {
      publishers.forEach((pub, i) => {
        const fromTs = Math.ceil(pub.mediaTime()) + 300;
        ranges[i] = { fromTs, toTs: fromTs + windowMs };
      });
      await Promise.all(parts.map((x) => x.mark(ranges)));
      const t0 = performance.now();
      for (;;) {
        checkAbort();
        const done = publishers.every((pub, i) => pub.closed || pub.mediaTime() >= ranges[i]!.toTs);
        const s = Math.min(o.durationS, (performance.now() - t0) / 1000);
        await poll(`measure ${s.toFixed(0)}/${o.durationS} s`);
        if (done) break;
        await sleep(250);
      }
      publishers.forEach((pub, i) => {
        const r = ranges[i]!;
        expectedBytes += counts[i]! * pub.payloadBytesInRange(r.fromTs, r.toTs);
        framesExpected += counts[i]! * framesInRange(source!, r.fromTs, r.toTs);
      });
    } else {
      await Promise.all(parts.map((x) => x.mark()));
      const t0 = performance.now();
      while (performance.now() - t0 < windowMs) {
        checkAbort();
        await poll(`measure ${((performance.now() - t0) / 1000).toFixed(0)}/${o.durationS} s`);
        await sleep(250);
      }
    }
    await Promise.all(parts.map((x) => x.end()));
    await sleep(700); // frames up to toTs are still on their way
    const reports: PartReport[] = await Promise.all(parts.map((x) => x.report()));
    ui.stop();

    const summary = summarizeSwarm(
      reports.map((r) => r.part),
      byMediaTime ? expectedBytes / o.viewers : 0,
    );
    if (!byMediaTime) framesExpected = 0;
    let route: LoadReport['route'] = null;
    if (o.route) {
      const h = newHistogram();
      const perNode: Record<string, number> = {};
      let lookups = 0;
      let failures = 0;
      for (const r of reports) {
        if (!r.route) continue;
        lookups += r.route.lookups;
        failures += r.route.failures;
        h.add(decodeHistogram(r.route.latency));
        for (const [n, c] of Object.entries(r.route.perNode)) perNode[n] = (perNode[n] ?? 0) + c;
      }
      route = { lookups, failures, latencyMs: percentiles(h), perNode };
    }
    const { json: _j, quiet: _q, ...options } = o;
    return {
      tool: 'meshcast-load',
      startedAt,
      finishedAt: new Date().toISOString(),
      options,
      media: source
        ? {
            file: source.file,
            width: typeof source.metadata?.['width'] === 'number' ? source.metadata['width'] : null,
            height: typeof source.metadata?.['height'] === 'number' ? source.metadata['height'] : null,
            kbps: Math.round(sourceBitrate(source) / 1000),
            loopSeconds: source.loopDurationMs / 1000,
          }
        : null,
      publishers: publishers.map((p, i) => ({
        url: withStream(o.url!, o.app, names[i]!, false),
        payloadBytes: p.payloadBytes,
        frames: p.frames,
        clockStamps: p.clockStamps,
        stalls: p.stalls,
        closedEarly: closedEarly.has(p),
      })),
      streams: targets.map((t, i) => ({ app: t.app, stream: t.stream, viewers: counts[i]!, playUrl: t.playUrl || `(routed by ${o.route})` })),
      window: byMediaTime ? 'media-time' : 'arrival',
      summary,
      framesExpected,
      framesReceived: summary.windowFrames,
      framesMissing: byMediaTime ? Math.max(0, framesExpected - summary.windowFrames) : 0,
      route,
      ok: summary.failed === 0 && summary.receiving === summary.requested && closedEarly.size === 0,
    };
  } finally {
    finishing = true;
    ui.stop();
    await Promise.all(parts.map((x) => x.close().catch(() => x.kill())));
    for (const p of publishers) p.stop();
  }
}
