/**
 * Benchmark results: the JSON shape, ratios against the baseline server (nginx-rtmp), the
 * markdown report and the SVG chart. Pure functions (unit-tested on hand-made numbers).
 */
import type { SwarmSummary } from '../load/stats.ts';
import { SERVER_LABELS, type ServerKind } from './servers.ts';

export interface RunResult {
  server: ServerKind;
  viewers: number;
  ok: boolean;
  error?: string;
  /** Length of the measurement window, seconds. */
  windowSeconds: number;
  /** Seconds from the first viewer's connect to every viewer receiving or failed. */
  rampSeconds: number;
  serverCpuPct: number;
  serverCpuSeconds: number;
  serverMaxRssBytes: number;
  serverProcesses: number;
  /** Publisher audio+video payload bytes for the window's media-time range, and as a bit rate. */
  publishedBytes: number;
  publishedKbps: number;
  publisherStalls: number;
  swarm?: SwarmSummary;
  /** Load generator CPU over the window, % of one core: worker processes + the parent (publisher, sampling). */
  loadgenCpuPct: number;
  loadgenWorkersCpuPct: number[];
  loadgenParentCpuPct: number;
}

/** One protocol's half of the WHEP row: N viewers of one stream on one node. */
export interface WhepPhase {
  receiving: number;
  failed: number;
  failures: Record<string, number>;
  rampSeconds: number;
  windowSeconds: number;
  /** The node's process tree (with its ffmpeg AAC→Opus child), % of one core. */
  serverCpuPct: number;
  serverMaxRssBytes: number;
  cpuPctPerViewer: number;
  /** Media payload served over the window (RTMP: FLV audio+video payload; WHEP: RTP payload), Gbit/s. */
  gbps: number;
  /** gbps ÷ the node's cores in use. */
  gbpsPerCore: number;
  ttffP50Ms: number;
  loadgenCpuPct: number;
}

/** The WHEP row: the same node, stream and viewer count, RTMP then WHEP, in one run. */
export interface WhepRowResult {
  viewers: number;
  ok: boolean;
  error?: string;
  /** Node on core 0, load generator on core 1 (taskset). */
  pinned: boolean;
  kbps: number;
  rtmp?: WhepPhase;
  whep?: WhepPhase;
  /** WHEP CPU per viewer ÷ RTMP CPU per viewer. */
  cpuPerViewerVsRtmp?: number;
}

/** The WHEP row as markdown (empty when the run had none). */
export function renderWhepMarkdown(row: WhepRowResult | undefined): string[] {
  if (!row) return [];
  const L: string[] = [];
  L.push(`## WHEP row: ${row.viewers} WebRTC viewers on one node vs ${row.viewers} RTMP viewers of the same node, same run`);
  L.push('');
  L.push(
    `One meshcast node, one ${row.kbps} kbit/s publisher without B-frames. ${row.pinned ? 'The node (and its ffmpeg AAC→Opus child) ran on core 0 and the load generator (publisher and viewers) on core 1.' : 'Not pinned to cores (taskset missing or fewer than two cores).'} WHEP viewers are the load tester's libdatachannel peers (\`meshcast-load --protocol whep\`).` +
      (row.ok ? '' : ` **Failed: ${(row.error ?? '').replace(/\|/g, '/')}**`),
  );
  L.push('');
  if (row.rtmp && row.whep) {
    L.push('| protocol | receiving | failed | server CPU % | CPU % per viewer | Gbit/s served | Gbit/s per core | server RSS MB | TTFF p50 ms | load gen CPU % |');
    L.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const [name, p] of [['RTMP', row.rtmp], ['WHEP', row.whep]] as const) {
      L.push(`| ${name} | ${p.receiving} | ${p.failed} | ${fn(p.serverCpuPct, 1)} | ${fn(p.cpuPctPerViewer, 3)} | ${fn(p.gbps, 3)} | ${fn(p.gbpsPerCore, 2)} | ${mb(p.serverMaxRssBytes)} | ${fn(p.ttffP50Ms)} | ${fn(p.loadgenCpuPct, 1)} |`);
    }
    L.push('');
    L.push(`WHEP CPU per viewer = ${fx(row.cpuPerViewerVsRtmp ?? NaN)} the RTMP CPU per viewer. Bytes are media payload counted on arrival (WHEP: RTP payload, without RTP/SRTP/UDP headers). The WHEP CPU includes the stream's one AAC→Opus transcode.`);
    L.push('');
  }
  return L;
}

/** One half of the VOD row: N RTMP viewers of the edge node, live or VOD. */
export interface VodPhase {
  receiving: number;
  failed: number;
  failures: Record<string, number>;
  rampSeconds: number;
  windowSeconds: number;
  /** The edge node's process, % of one core. */
  serverCpuPct: number;
  serverMaxRssBytes: number;
  cpuPctPerViewer: number;
  /** Media payload received by the viewers over the window, Mbit/s. */
  mbps: number;
  ttffP50Ms: number;
}

/**
 * The VOD row: a two-node mesh (origin holding an MP4, edge without it); N RTMP viewers of a
 * live stream on the edge, then N RTMP VOD viewers of the file on the edge, which copies it
 * from the origin once and serves everyone from its cache.
 */
export interface VodRowResult {
  viewers: number;
  ok: boolean;
  error?: string;
  kbps: number;
  live?: VodPhase;
  vod?: VodPhase;
  /** The edge's VOD cache over the VOD phase (meshcast_vod_fetches_total, …_cache_hits_total). */
  cacheFetches?: number;
  cacheHits?: number;
  /** hits ÷ (hits + fetches): the share of VOD plays served without a copy of their own. */
  cacheHitRate?: number;
  /** VOD CPU per viewer ÷ live CPU per viewer. */
  cpuPerViewerVsLive?: number;
}

/** The VOD row as markdown (empty when the run had none). */
export function renderVodMarkdown(row: VodRowResult | undefined): string[] {
  if (!row) return [];
  const L: string[] = [];
  L.push(`## VOD row: ${row.viewers} RTMP VOD viewers of one MP4 vs ${row.viewers} live RTMP viewers, on an edge node that does not hold the file`);
  L.push('');
  L.push(
    `A two-node mesh (nats-server): the origin holds the MP4 (the bench clip remuxed, ${row.kbps} kbit/s); the edge has the VOD app with no root, so its first VOD viewer makes it copy the file from the origin into its cache. Live: a looping publisher on the edge and N RTMP viewers. VOD: N RTMP VOD viewers (\`meshcast-load --vod\`, paced in real time by the node, looping at the end). CPU is the edge node's.` +
      (row.ok ? '' : ` **Failed: ${(row.error ?? '').replace(/\|/g, '/')}**`),
  );
  L.push('');
  if (row.live && row.vod) {
    L.push('| viewers of | receiving | failed | server CPU % | CPU % per viewer | Mbit/s received | server RSS MB | first media p50 ms |');
    L.push('|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const [name, p] of [['live stream', row.live], ['VOD file', row.vod]] as const) {
      L.push(`| ${name} | ${p.receiving} | ${p.failed} | ${fn(p.serverCpuPct, 1)} | ${fn(p.cpuPctPerViewer, 3)} | ${fn(p.mbps, 1)} | ${mb(p.serverMaxRssBytes)} | ${fn(p.ttffP50Ms)} |`);
    }
    L.push('');
    L.push(`VOD CPU per viewer = ${fx(row.cpuPerViewerVsLive ?? NaN)} the live CPU per viewer. Edge cache: ${fn(row.cacheFetches)} fetch(es) from the origin, ${fn(row.cacheHits)} hits, hit rate ${fn((row.cacheHitRate ?? NaN) * 100, 1)} %.`);
    L.push('');
  }
  return L;
}

export interface BenchResults {
  tool: 'meshcast-bench';
  startedAt: string;
  finishedAt: string;
  aborted?: string;
  machine: { cpus: number; cpuModel: string; memGiB: number; kernel: string; node: string };
  options: Record<string, unknown>;
  media: { file: string; width: number; height: number; fps: number; gopSeconds: number; loopSeconds: number; kbps: number };
  servers: Partial<Record<ServerKind, string>>;
  runs: RunResult[];
  whep?: WhepRowResult;
  vod?: VodRowResult;
}

export interface Ratios {
  /** server CPU / baseline CPU at the same viewer count (= CPU per viewer ratio). */
  cpu: number;
  rss: number;
  delivered: number;
  ttffP50: number;
  frameLatencyP50: number;
}

function ratio(a: number | undefined, b: number | undefined): number {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return NaN;
  return a / b;
}

/** Ratios of `run` against the baseline server's run at the same viewer count (NaN when missing). */
export function ratiosVs(run: RunResult, runs: RunResult[], baseline: ServerKind = 'nginx'): Ratios {
  const base = runs.find((r) => r.server === baseline && r.viewers === run.viewers && r.ok);
  if (!base || !run.ok) return { cpu: NaN, rss: NaN, delivered: NaN, ttffP50: NaN, frameLatencyP50: NaN };
  return {
    cpu: ratio(run.serverCpuPct, base.serverCpuPct),
    rss: ratio(run.serverMaxRssBytes, base.serverMaxRssBytes),
    delivered: ratio(run.swarm?.deliveredRatio, base.swarm?.deliveredRatio),
    ttffP50: ratio(run.swarm?.ttffMs.p50, base.swarm?.ttffMs.p50),
    frameLatencyP50: ratio(run.swarm?.frameLatencyMs.p50, base.swarm?.frameLatencyMs.p50),
  };
}

/** Machine CPU in use during the window (server + load generator), % of all cores. */
export function machineLoadPct(run: RunResult, cpus: number): number {
  return (run.serverCpuPct + run.loadgenCpuPct) / Math.max(1, cpus);
}

/** Largest viewer count at which a server delivered ≥ 99 % with nobody behind or failed. */
export function maxCleanViewers(runs: RunResult[], server: ServerKind): number {
  let best = 0;
  for (const r of runs) {
    if (r.server !== server || !r.ok || !r.swarm) continue;
    if (r.swarm.deliveredRatio >= 0.99 && r.swarm.fellBehind === 0 && r.swarm.failed === 0) best = Math.max(best, r.viewers);
  }
  return best;
}

/** A ratio with two significant digits below 1 (0.0032×), two decimals above. */
export function formatRatio(x: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  if (x === 0) return '0×';
  if (Math.abs(x) >= 100) return `${x.toFixed(0)}×`;
  if (Math.abs(x) >= 0.1) return `${x.toFixed(2)}×`;
  return `${Number(x.toPrecision(2))}×`;
}
const fx = formatRatio;
const fn = (x: number | undefined, d = 0): string => (x !== undefined && Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const mb = (b: number): string => (b / (1024 * 1024)).toFixed(0);

function serversIn(res: BenchResults): ServerKind[] {
  const seen: ServerKind[] = [];
  for (const r of res.runs) if (!seen.includes(r.server)) seen.push(r.server);
  return seen;
}

function viewerCounts(res: BenchResults): number[] {
  return [...new Set(res.runs.map((r) => r.viewers))].sort((a, b) => a - b);
}

export function renderMarkdown(res: BenchResults, chartFile?: string): string {
  const servers = serversIn(res);
  const counts = viewerCounts(res);
  const hasBaseline = servers.includes('nginx');
  const L: string[] = [];
  const m = res.media;
  L.push('# meshcast benchmark: RTMP fan-out (1 publisher → N viewers)');
  L.push('');
  L.push(
    `Run ${res.startedAt} → ${res.finishedAt} on ${res.machine.cpuModel} (${res.machine.cpus} cores, ${res.machine.memGiB.toFixed(0)} GiB, Linux ${res.machine.kernel}, Node ${res.machine.node}), everything on loopback.` +
      (res.aborted ? ` **Aborted: ${res.aborted}** (partial results).` : ''),
  );
  L.push('');
  L.push(`Media: ${m.width}x${m.height}p${m.fps} H.264 High + AAC, keyframe every ${m.gopSeconds} s, ${m.loopSeconds.toFixed(1)} s loop, ${m.kbps.toFixed(0)} kbit/s of audio+video payload, published in real time by the project's RTMP client.`);
  const named = servers.length > 0 ? servers : (Object.keys(res.servers) as ServerKind[]);
  L.push(`Servers: ${named.map((s) => `${SERVER_LABELS[s]} (${res.servers[s] ?? '?'})`).join(', ') || 'none started'}.`);
  const o = res.options;
  L.push(`Per run: fresh server, publisher, ${String(o.warmupSeconds)} s warm-up, ramp N viewers over ~${String(o.rampSeconds)} s, ${String(o.settleSeconds)} s settle, then a ${String(o.seconds)} s measurement window. Load generator: ${String(o.workers)} worker process(es) + the parent (publisher).`);
  L.push('');
  if (hasBaseline) {
    L.push('## Ratios vs nginx-rtmp (same viewer count; < 1 is better for CPU, RSS, TTFF, latency; > 1 is better for delivered)');
    L.push('');
    L.push('| viewers | server | CPU (= CPU per viewer) | RSS | delivered | TTFF p50 | frame latency p50 |');
    L.push('|---:|---|---:|---:|---:|---:|---:|');
    for (const n of counts) {
      for (const s of servers) {
        const r = res.runs.find((x) => x.server === s && x.viewers === n);
        if (!r) continue;
        const q = ratiosVs(r, res.runs);
        L.push(`| ${n} | ${SERVER_LABELS[s]} | ${fx(q.cpu)} | ${fx(q.rss)} | ${fx(q.delivered)} | ${fx(q.ttffP50)} | ${fx(q.frameLatencyP50)} |`);
      }
    }
    L.push('');
  }
  L.push('## Absolute numbers');
  L.push('');
  L.push('| server | viewers | server CPU % | CPU %/100 viewers | server RSS MB | delivered | fell behind | failed | TTFF p50 / p95 ms | frame latency p50 / p95 ms | clock-stamp latency p50 ms | load gen CPU % | machine busy |');
  L.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const notes: string[] = [];
  for (const n of counts) {
    for (const s of servers) {
      const r = res.runs.find((x) => x.server === s && x.viewers === n);
      if (!r) continue;
      if (!r.ok || !r.swarm) {
        L.push(`| ${SERVER_LABELS[s]} | ${n} | failed: ${(r.error ?? '').replace(/\|/g, '/').slice(0, 120)} |||||||||||`);
        continue;
      }
      const w = r.swarm;
      const busy = machineLoadPct(r, res.machine.cpus);
      L.push(
        `| ${SERVER_LABELS[s]} | ${n} | ${fn(r.serverCpuPct, 1)} | ${fn((r.serverCpuPct / n) * 100, 2)} | ${mb(r.serverMaxRssBytes)} | ${fn(w.deliveredRatio * 100, 1)} % | ${w.fellBehind} | ${w.failed} | ${fn(w.ttffMs.p50)} / ${fn(w.ttffMs.p95)} | ${w.earlyFrameShare > 0.01 ? 'n/a' : `${fn(w.frameLatencyMs.p50)} / ${fn(w.frameLatencyMs.p95)}`} | ${w.latencyMs.count > 0 ? fn(w.latencyMs.p50) : 'n/a'} | ${fn(r.loadgenCpuPct, 1)} | ${fn(busy, 0)} % |`,
      );
      if (w.failed > 0) notes.push(`${SERVER_LABELS[s]} @ ${n}: failures ${Object.entries(w.failures).map(([k, v]) => `${k}×${v}`).join(', ')}.`);
      if (busy >= 90) notes.push(`${SERVER_LABELS[s]} @ ${n}: the machine was ${busy.toFixed(0)} % busy (server + load generator): this point measures the machine, not only the server.`);
      if (r.publisherStalls > 0) notes.push(`${SERVER_LABELS[s]} @ ${n}: the publisher's socket backed up ${r.publisherStalls} time(s) (the server read its ingest late).`);
    }
  }
  L.push('');
  if (hasBaseline || servers.length > 0) {
    L.push('Largest viewer count served cleanly (≥ 99 % delivered, nobody behind or failed): ' + servers.map((s) => `${SERVER_LABELS[s]} ${maxCleanViewers(res.runs, s) || 'none'}`).join(', ') + '.');
    L.push('');
  }
  L.push(...renderWhepMarkdown(res.whep));
  L.push(...renderVodMarkdown(res.vod));
  if (notes.length > 0) {
    L.push('Notes:');
    L.push('');
    for (const x of notes) L.push(`- ${x}`);
    L.push('');
  }
  if (chartFile) {
    L.push(`![server CPU and RSS vs viewers](${chartFile})`);
    L.push('');
  }
  L.push('Definitions: CPU % is user+system time of the server process tree over the window (100 % = one core; nginx = master + worker). RSS is the peak of the tree\'s summed VmRSS. Delivered = audio+video payload bytes all viewers received for the frames timestamped inside the window ÷ (bytes the publisher sent for those frames × N). A viewer fell behind if it received < 80 % of that or its timestamps lagged the wall clock by > 2 s. TTFF = connect start → first video keyframe (first picture a player can show). Frame latency = receive time − (publisher start + frame timestamp). Clock-stamp latency uses `onMeshcastClock` data messages (nginx-rtmp does not forward them). See docs/benchmark.md.');
  L.push('');
  return L.join('\n');
}

const COLORS: Record<ServerKind, string> = { meshcast: '#d62728', nginx: '#1f77b4', nms: '#2ca02c' };

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const k of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (k * p >= v) return k * p;
  return 10 * p;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Two panels, server CPU % and server RSS MB against viewers, one line per server. */
export function renderSvgChart(res: BenchResults): string {
  const servers = serversIn(res);
  const counts = viewerCounts(res);
  const W = 1000;
  const H = 460;
  const panels: Array<{ title: string; unit: string; value: (r: RunResult) => number }> = [
    { title: 'Server CPU (% of one core)', unit: '%', value: (r) => r.serverCpuPct },
    { title: 'Server peak RSS (MB)', unit: 'MB', value: (r) => r.serverMaxRssBytes / (1024 * 1024) },
  ];
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Arial, sans-serif">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="24" font-size="17" text-anchor="middle" font-weight="bold">RTMP fan-out: 1 publisher (${res.media.kbps.toFixed(0)} kbit/s) → N viewers, same machine, same run</text>`);
  const maxX = Math.max(1, ...counts);
  panels.forEach((p, pi) => {
    const x0 = 70 + pi * (W / 2);
    const y0 = 60;
    const pw = W / 2 - 110;
    const ph = H - 150;
    const ok = res.runs.filter((r) => r.ok);
    const maxY = niceMax(Math.max(0, ...ok.map(p.value)));
    const sx = (v: number): number => x0 + (v / maxX) * pw;
    const sy = (v: number): number => y0 + ph - (v / maxY) * ph;
    out.push(`<text x="${x0 + pw / 2}" y="${y0 - 10}" font-size="14" text-anchor="middle">${esc(p.title)}</text>`);
    for (let i = 0; i <= 5; i++) {
      const v = (maxY * i) / 5;
      const y = sy(v);
      out.push(`<line x1="${x0}" y1="${y}" x2="${x0 + pw}" y2="${y}" stroke="#ddd"/>`);
      out.push(`<text x="${x0 - 6}" y="${y + 4}" font-size="11" text-anchor="end">${Number.isInteger(v) ? v : v.toFixed(1)}</text>`);
    }
    for (const c of counts) {
      out.push(`<line x1="${sx(c)}" y1="${y0 + ph}" x2="${sx(c)}" y2="${y0 + ph + 5}" stroke="#333"/>`);
      out.push(`<text x="${sx(c)}" y="${y0 + ph + 18}" font-size="11" text-anchor="middle">${c}</text>`);
    }
    out.push(`<line x1="${x0}" y1="${y0 + ph}" x2="${x0 + pw}" y2="${y0 + ph}" stroke="#333"/>`);
    out.push(`<line x1="${x0}" y1="${y0}" x2="${x0}" y2="${y0 + ph}" stroke="#333"/>`);
    out.push(`<text x="${x0 + pw / 2}" y="${y0 + ph + 36}" font-size="12" text-anchor="middle">viewers</text>`);
    for (const s of servers) {
      const pts = ok
        .filter((r) => r.server === s)
        .sort((a, b) => a.viewers - b.viewers)
        .map((r) => [sx(r.viewers), sy(p.value(r))] as const);
      if (pts.length === 0) continue;
      out.push(`<polyline fill="none" stroke="${COLORS[s]}" stroke-width="2.5" points="${pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}"/>`);
      for (const [x, y] of pts) out.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="4" fill="${COLORS[s]}"/>`);
    }
  });
  servers.forEach((s, i) => {
    const x = 120 + i * 260;
    const y = H - 30;
    out.push(`<rect x="${x}" y="${y - 10}" width="22" height="4" fill="${COLORS[s]}"/>`);
    out.push(`<text x="${x + 30}" y="${y - 4}" font-size="13">${esc(SERVER_LABELS[s])}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}
