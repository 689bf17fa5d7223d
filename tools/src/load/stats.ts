/**
 * What a viewer swarm reports (one report per process), and how reports from several
 * processes merge into one summary. Pure functions: unit-tested on hand-made numbers.
 */
import * as hdr from 'hdr-histogram-js';

export type Histogram = hdr.Histogram;

export function newHistogram(): Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000, numberOfSignificantValueDigits: 3, autoResize: true });
}

export function encodeHistogram(h: Histogram): string {
  return h.totalCount === 0 ? '' : hdr.encodeIntoCompressedBase64(h);
}

export function decodeHistogram(s: string): Histogram {
  return s === '' ? newHistogram() : hdr.decodeFromCompressedBase64(s);
}

/** One swarm process's report for one measurement window. Plain JSON (crosses process boundaries). */
export interface SwarmPartReport {
  pid: number;
  /** Viewers this part was asked to open. */
  requested: number;
  /** Viewers whose connect was started. */
  started: number;
  /** Viewers that reached NetStream.Play.Start. */
  playing: number;
  /** Viewers that received at least one video frame. */
  receiving: number;
  /** Viewers that failed (connect/play refused, closed while playing, or no video at all), by cause. */
  failures: Record<string, number>;
  /**
   * Connection attempts that failed and were made again with a fresh peer, by cause. A viewer
   * that then played is not a failure; one that ran out of attempts is counted in `failures`.
   */
  retries: Record<string, number>;
  /** Time to first video keyframe (connect start → first keyframe: the first picture a player can show), ms, hdr-histogram compressed base64. */
  ttff: string;
  /** Glass-to-glass latency from onMeshcastClock stamps seen during the window, ms. */
  latency: string;
  /** Frame latency (now − publisher epoch − timestamp) of video frames in the window, ms; '' when no epoch was given. */
  frameLatency: string;
  /** Frames whose frame latency came out negative (timestamps not the publisher's: the measure is invalid). */
  earlyFrames: number;
  /** Length of the measurement window as seen by this process. */
  windowMs: number;
  /** Per viewer (requested ones; never started count 0): audio+video payload bytes received during the window. */
  windowBytes: number[];
  /**
   * Per viewer: the largest lag behind its own best timestamp-vs-wall-clock offset during
   * the window, ms; -1: playing but no video yet; -2: failed or never started.
   */
  maxLagMs: number[];
  /** Audio+video messages received during the window, all viewers. */
  windowFrames: number;
  /** Video timestamps that went backwards / jumped forward by more than the jump threshold, during the window. */
  tsBackwards: number;
  tsJumps: number;
  /** This process's CPU time during the window, microseconds (process.cpuUsage). */
  cpuUserUs: number;
  cpuSystemUs: number;
  rssBytes: number;
}

export interface Percentiles {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export function percentiles(h: Histogram): Percentiles {
  if (h.totalCount === 0) return { count: 0, p50: NaN, p95: NaN, p99: NaN, max: NaN };
  return { count: h.totalCount, p50: h.getValueAtPercentile(50), p95: h.getValueAtPercentile(95), p99: h.getValueAtPercentile(99), max: h.maxValue };
}

export interface SummaryOptions {
  /** A viewer fell behind if it received less than this share of the expected bytes (default 0.8). */
  minDeliveredShare?: number;
  /** …or if its lag grew past this many ms (default 2000). */
  maxLagMs?: number;
}

export interface SwarmSummary {
  parts: number;
  requested: number;
  started: number;
  playing: number;
  receiving: number;
  failed: number;
  failures: Record<string, number>;
  /** Attempts made again with a fresh peer, by cause (see SwarmPartReport.retries). */
  retries: Record<string, number>;
  ttffMs: Percentiles;
  latencyMs: Percentiles;
  frameLatencyMs: Percentiles;
  /** Share of frame-latency samples that came out negative (> 1%: the server rewrote timestamps, ignore frameLatencyMs). */
  earlyFrameShare: number;
  windowMs: number;
  /** Audio+video messages received by all viewers during the window. */
  windowFrames: number;
  /** What one viewer should have received in the window (the publisher's audio+video payload bytes). */
  expectedBytesPerViewer: number;
  expectedBytes: number;
  deliveredBytes: number;
  /** deliveredBytes / expectedBytes, over all requested viewers. */
  deliveredRatio: number;
  medianViewerBytes: number;
  /** Viewers receiving video (not failed) that got less than the delivered share or lagged more than the limit. */
  fellBehind: number;
  maxLagP95Ms: number;
  tsBackwards: number;
  tsJumps: number;
  /** Load generator CPU over the window, % of one core, summed over the parts. */
  loadgenCpuPct: number;
  loadgenCpuPctPerPart: number[];
  loadgenRssBytes: number;
}

function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

/**
 * Merges part reports. `expectedBytesPerViewer` is what the publisher sent during the
 * window; when 0 (unknown) the median viewer's bytes stand in for it.
 */
export function summarizeSwarm(parts: SwarmPartReport[], expectedBytesPerViewer: number, opts: SummaryOptions = {}): SwarmSummary {
  const minShare = opts.minDeliveredShare ?? 0.8;
  const lagLimit = opts.maxLagMs ?? 2000;
  const ttff = newHistogram();
  const lat = newHistogram();
  const flat = newHistogram();
  let early = 0;
  const failures: Record<string, number> = {};
  const retries: Record<string, number> = {};
  const bytes: number[] = [];
  const lags: number[] = [];
  let requested = 0;
  let started = 0;
  let playing = 0;
  let receiving = 0;
  let frames = 0;
  let tsBackwards = 0;
  let tsJumps = 0;
  let windowMs = 0;
  let rss = 0;
  const cpuPerPart: number[] = [];
  for (const p of parts) {
    requested += p.requested;
    started += p.started;
    playing += p.playing;
    receiving += p.receiving;
    frames += p.windowFrames;
    tsBackwards += p.tsBackwards;
    tsJumps += p.tsJumps;
    windowMs = Math.max(windowMs, p.windowMs);
    rss += p.rssBytes;
    for (const [k, v] of Object.entries(p.failures)) failures[k] = (failures[k] ?? 0) + v;
    for (const [k, v] of Object.entries(p.retries)) retries[k] = (retries[k] ?? 0) + v;
    ttff.add(decodeHistogram(p.ttff));
    lat.add(decodeHistogram(p.latency));
    flat.add(decodeHistogram(p.frameLatency));
    early += p.earlyFrames;
    bytes.push(...p.windowBytes);
    lags.push(...p.maxLagMs);
    cpuPerPart.push(p.windowMs > 0 ? ((p.cpuUserUs + p.cpuSystemUs) / 1000 / p.windowMs) * 100 : 0);
  }
  const medianBytes = median(bytes);
  const expected = expectedBytesPerViewer > 0 ? expectedBytesPerViewer : medianBytes;
  let delivered = 0;
  let behind = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    delivered += b;
    const lag = lags[i] ?? -1;
    if (lag >= 0 && (b < minShare * expected || lag > lagLimit)) behind++;
  }
  const failed = Object.values(failures).reduce((a, b) => a + b, 0);
  const expectedBytes = expected * requested;
  return {
    parts: parts.length,
    requested,
    started,
    playing,
    receiving,
    failed,
    failures,
    retries,
    ttffMs: percentiles(ttff),
    latencyMs: percentiles(lat),
    frameLatencyMs: percentiles(flat),
    earlyFrameShare: flat.totalCount > 0 ? early / flat.totalCount : 0,
    windowMs,
    windowFrames: frames,
    expectedBytesPerViewer: expected,
    expectedBytes,
    deliveredBytes: delivered,
    deliveredRatio: expectedBytes > 0 ? delivered / expectedBytes : 0,
    medianViewerBytes: medianBytes,
    fellBehind: behind,
    maxLagP95Ms: pct(
      lags.filter((l) => l >= 0),
      95,
    ),
    tsBackwards,
    tsJumps,
    loadgenCpuPct: cpuPerPart.reduce((a, b) => a + b, 0),
    loadgenCpuPctPerPart: cpuPerPart,
    loadgenRssBytes: rss,
  };
}
