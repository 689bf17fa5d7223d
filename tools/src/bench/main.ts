/**
 * `npm run bench`: the same RTMP fan-out workload (one looping publisher → N viewers)
 * against meshcast, nginx-rtmp and node-media-server, on this machine, in one run.
 * Writes results.json, results.md (absolute numbers and ratios vs nginx-rtmp) and a PNG
 * chart. See docs/benchmark.md.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_MEDIA, DEFAULT_CACHE_DIR, ensureTestMedia, loadFlvSource, sourceBitrate, type FlvSource, type TestMediaSpec } from '../load/flv-source.ts';
import { FlvLoopPublisher } from '../load/publisher.ts';
import { summarizeSwarm } from '../load/stats.ts';
import { SwarmWorkers } from '../load/workers.ts';
import { TreeMeter } from './proc.ts';
import { runWhepRow } from './whep-row.ts';
import { runVodRow } from './vod-row.ts';
import { Progress } from './progress.ts';
import { renderMarkdown, renderSvgChart, type BenchResults, type RunResult } from './results.ts';
import { SERVER_KINDS, SERVER_LABELS, killAllServers, startServer, type ServerHandle, type ServerKind } from './servers.ts';

const USAGE = `usage: npm run bench -- [options]

  --viewers LIST       viewer counts (default 100,500,1000,2000)
  --seconds S          measurement window per run (default 20)
  --servers LIST       meshcast,nginx,nms (default all three)
  --out DIR            output directory (default bench-results)
  --workers K          load generator worker processes (default 2)
  --ramp-seconds S     ramp the N viewers over about S seconds (default 5)
  --warmup-seconds S   publisher runs this long before the first viewer (default 3)
  --settle-seconds S   wait after the ramp before measuring (default 2)
  --cooldown-seconds S pause between runs (default 2)
  --media NAME         720p (default: 1280x720p30 ~2 Mbit/s, GOP 2 s) or 360p (~700 kbit/s)
  --clock-ms MS        publisher wall-clock stamp interval (default 1000, 0 = off)
  --host ADDR          loopback address the servers listen on (default 127.0.0.1)
  --log quiet|info     server log level (default quiet = warnings only, for all servers)
  --max-minutes M      abort (keeping partial results) after M minutes (default 60)
  --keep-logs          keep each server's temp dir (config + log)
  --no-chart           skip the PNG chart
  --rows LIST          rtmp (the fan-out rows above), whep (the WHEP row), vod (the VOD row)
                       (default rtmp,whep,vod)
  --whep-viewers N     viewers in the WHEP row, RTMP then WHEP on one node (default 100)
  --vod-viewers N      viewers in the VOD row: live then VOD RTMP viewers on an edge node that
                       copies the file from an origin node (default 100)
`;

const MEDIA: Record<string, TestMediaSpec> = {
  '720p': BENCH_MEDIA,
  '360p': { width: 640, height: 360, fps: 30, videoKbps: 600, audioKbps: 96, gopSeconds: 2, seconds: 10, profile: 'high' },
};

interface Opts {
  viewers: number[];
  seconds: number;
  servers: ServerKind[];
  out: string;
  workers: number;
  rampSeconds: number;
  warmupSeconds: number;
  settleSeconds: number;
  cooldownSeconds: number;
  media: string;
  clockMs: number;
  host: string;
  log: 'quiet' | 'info';
  maxMinutes: number;
  keepLogs: boolean;
  chart: boolean;
  rows: Array<'rtmp' | 'whep' | 'vod'>;
  whepViewers: number;
  vodViewers: number;
}

function parseOpts(argv: string[]): Opts {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      viewers: { type: 'string', default: '100,500,1000,2000' },
      seconds: { type: 'string', default: '20' },
      servers: { type: 'string', default: SERVER_KINDS.join(',') },
      out: { type: 'string', default: 'bench-results' },
      workers: { type: 'string', default: '2' },
      'ramp-seconds': { type: 'string', default: '5' },
      'warmup-seconds': { type: 'string', default: '3' },
      'settle-seconds': { type: 'string', default: '2' },
      'cooldown-seconds': { type: 'string', default: '2' },
      media: { type: 'string', default: '720p' },
      'clock-ms': { type: 'string', default: '1000' },
      host: { type: 'string', default: '127.0.0.1' },
      log: { type: 'string', default: 'quiet' },
      'max-minutes': { type: 'string', default: '60' },
      'keep-logs': { type: 'boolean', default: false },
      'no-chart': { type: 'boolean', default: false },
      rows: { type: 'string', default: 'rtmp,whep,vod' },
      'whep-viewers': { type: 'string', default: '100' },
      'vod-viewers': { type: 'string', default: '100' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const num = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name}: expected a number ≥ ${min}, got "${v}"`);
    return n;
  };
  const viewers = values.viewers.split(',').map((v) => Math.round(num('viewers', v.trim(), 1)));
  const servers = values.servers.split(',').map((s) => s.trim()) as ServerKind[];
  for (const s of servers) if (!SERVER_KINDS.includes(s)) throw new Error(`--servers: unknown server "${s}" (meshcast, nginx, nms)`);
  if (!MEDIA[values.media]) throw new Error(`--media: one of ${Object.keys(MEDIA).join(', ')}`);
  if (values.log !== 'quiet' && values.log !== 'info') throw new Error('--log: quiet or info');
  if (!values.host.startsWith('127.')) throw new Error('--host: the benchmark stays on loopback (127.0.0.0/8)');
  const rows = values.rows.split(',').map((r) => r.trim());
  for (const r of rows) if (r !== 'rtmp' && r !== 'whep' && r !== 'vod') throw new Error(`--rows: unknown row "${r}" (rtmp, whep, vod)`);
  return {
    viewers,
    seconds: num('seconds', values.seconds, 1),
    servers,
    out: resolve(values.out),
    workers: Math.round(num('workers', values.workers, 1)),
    rampSeconds: num('ramp-seconds', values['ramp-seconds'], 0),
    warmupSeconds: num('warmup-seconds', values['warmup-seconds'], 0),
    settleSeconds: num('settle-seconds', values['settle-seconds'], 0),
    cooldownSeconds: num('cooldown-seconds', values['cooldown-seconds'], 0),
    media: values.media,
    clockMs: num('clock-ms', values['clock-ms'], 0),
    host: values.host,
    log: values.log,
    maxMinutes: num('max-minutes', values['max-minutes'], 1),
    keepLogs: values['keep-logs'],
    chart: !values['no-chart'],
    rows: rows as Opts['rows'],
    whepViewers: Math.round(num('whep-viewers', values['whep-viewers'], 1)),
    vodViewers: Math.round(num('vod-viewers', values['vod-viewers'], 1)),
  };
}

class Aborted extends Error {}

/** After the window, how long viewers get to receive the frames up to its end before we count. */
const DRAIN_MS = 1500;

/** Shared state so signal/exit handlers can clean up whatever is running. */
const live: { workers?: SwarmWorkers; publisher?: FlvLoopPublisher; abort?: string } = {};

function checkAbort(): void {
  if (live.abort) throw new Aborted(live.abort);
}

async function sleep(ms: number, tick?: (elapsedMs: number) => void): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    checkAbort();
    await new Promise((r) => setTimeout(r, Math.min(250, ms - (Date.now() - t0))));
    tick?.(Date.now() - t0);
  }
  checkAbort();
}

async function runOne(o: Opts, kind: ServerKind, n: number, source: FlvSource, workers: SwarmWorkers, progress: Progress, runNo: number, versions: Partial<Record<ServerKind, string>>): Promise<RunResult> {
  const label = `${SERVER_LABELS[kind]} × ${n}`;
  const total = o.warmupSeconds + o.rampSeconds + o.settleSeconds + o.seconds + 3;
  const at = (s: number): number => Math.min(0.99, s / total);
  const result: RunResult = {
    server: kind,
    viewers: n,
    ok: false,
    windowSeconds: 0,
    rampSeconds: 0,
    serverCpuPct: NaN,
    serverCpuSeconds: NaN,
    serverMaxRssBytes: 0,
    serverProcesses: 0,
    publishedBytes: 0,
    publishedKbps: 0,
    publisherStalls: 0,
    loadgenCpuPct: NaN,
    loadgenWorkersCpuPct: [],
    loadgenParentCpuPct: NaN,
  };
  let server: ServerHandle | undefined;
  try {
    progress.update(runNo, 0, `${label}: starting server`);
    server = await startServer(kind, { host: o.host, log: o.log, keepDir: o.keepLogs });
    versions[kind] = server.version;
    checkAbort();
    const url = `${server.appUrl}/bench`;
    progress.update(runNo, at(0), `${label}: publishing`);
    const publisher = await FlvLoopPublisher.start({ url, source, clockIntervalMs: o.clockMs, timeoutMs: 10_000 });
    live.publisher = publisher;
    let publisherClosed: string | undefined;
    publisher.on('close', (reason: string) => (publisherClosed = reason));
    await sleep(o.warmupSeconds * 1000, (e) => progress.update(runNo, at(e / 1000), `${label}: warm-up`));
    if (publisherClosed) throw new Error(`publisher closed during warm-up: ${publisherClosed}`);

    const rampT0 = Date.now();
    await workers.start({ url, viewers: n, rampPerSecond: o.rampSeconds > 0 ? n / o.rampSeconds : 0, timeoutMs: 15_000, epochMs: publisher.epochMs });
    const settleLimitMs = o.rampSeconds * 1000 + 25_000;
    const ramp = await workers.whenSettled(settleLimitMs, (p) => {
      checkAbort();
      progress.update(runNo, at(o.warmupSeconds + Math.min(o.rampSeconds, (Date.now() - rampT0) / 1000)), `${label}: ramp`, `${p.receiving}/${n} receiving, ${p.failed} failed`);
    });
    result.rampSeconds = (Date.now() - rampT0) / 1000;
    if (ramp.settled < n) progress.log(`${label}: after ${result.rampSeconds.toFixed(0)} s only ${ramp.receiving} of ${n} viewers receive (${ramp.failed} failed); measuring anyway`);
    await sleep(o.settleSeconds * 1000, () => progress.update(runNo, at(o.warmupSeconds + o.rampSeconds), `${label}: settle`));
    if (publisherClosed) throw new Error(`publisher closed: ${publisherClosed}`);

    // Measurement window, defined in media time so every server is judged on the same frames:
    // viewers count the frames with timestamps in (fromTs, toTs]; CPU is measured on the wall clock meanwhile.
    const fromTs = Math.ceil(publisher.mediaTime()) + 300;
    const toTs = fromTs + Math.round(o.seconds * 1000);
    await workers.mark({ fromTs, toTs });
    await sleep(Math.max(0, fromTs - publisher.mediaTime()));
    const meter = new TreeMeter(server.pid);
    const stalls0 = publisher.stalls;
    meter.start();
    const parentCpu0 = process.cpuUsage();
    const w0 = performance.now();
    const base = o.warmupSeconds + o.rampSeconds + o.settleSeconds;
    await sleep(Math.max(0, toTs - publisher.mediaTime()), (e) => progress.update(runNo, at(base + e / 1000), `${label}: measuring`, `${(e / 1000).toFixed(0)}/${o.seconds} s`));
    const cpu = meter.stop();
    const windowMs = performance.now() - w0;
    const parentCpu = process.cpuUsage(parentCpu0);
    await workers.end();
    // Let the frames up to toTs reach the viewers before counting.
    await sleep(DRAIN_MS, () => progress.update(runNo, 0.98, `${label}: drain`));
    const parts = await workers.report();
    const published = publisher.payloadBytesInRange(fromTs, toTs);
    if (publisherClosed) throw new Error(`publisher closed during the window: ${publisherClosed}`);

    const swarm = summarizeSwarm(parts, published);
    result.ok = true;
    result.windowSeconds = windowMs / 1000;
    result.serverCpuPct = cpu.cpuPct;
    result.serverCpuSeconds = cpu.cpuSeconds;
    result.serverMaxRssBytes = cpu.maxRssBytes;
    result.serverProcesses = cpu.pids.length;
    result.publishedBytes = published;
    result.publishedKbps = (published * 8) / (toTs - fromTs);
    result.publisherStalls = publisher.stalls - stalls0;
    result.swarm = swarm;
    result.loadgenWorkersCpuPct = swarm.loadgenCpuPctPerPart;
    result.loadgenParentCpuPct = ((parentCpu.user + parentCpu.system) / 1000 / windowMs) * 100;
    result.loadgenCpuPct = swarm.loadgenCpuPct + result.loadgenParentCpuPct;
    progress.update(runNo, 0.99, `${label}: stopping`);
    if (server.exitCode !== undefined) throw new Error(`${kind} exited during the run (${server.exitCode})`);
  } catch (err) {
    if (err instanceof Aborted) throw err;
    result.ok = false;
    result.error = err instanceof Error ? err.message : String(err);
    progress.log(`${label}: FAILED: ${result.error}`);
  } finally {
    await workers.stop();
    live.publisher?.stop();
    live.publisher = undefined;
    if (server) await server.stop();
  }
  return result;
}

function machine(): BenchResults['machine'] {
  const cpus = os.cpus();
  return { cpus: cpus.length, cpuModel: cpus[0]?.model.trim() ?? 'unknown', memGiB: os.totalmem() / 1024 ** 3, kernel: os.release(), node: process.version };
}

/** SVG → PNG with rsvg-convert; returns the PNG name, or writes the SVG and returns its name when the converter is missing. */
function writeChart(res: BenchResults, outDir: string, progress: Progress): string | undefined {
  const svg = renderSvgChart(res);
  const png = join(outDir, 'chart.png');
  const tmpSvg = join(outDir, 'chart.svg.tmp');
  writeFileSync(tmpSvg, svg);
  const r = spawnSync('rsvg-convert', ['-f', 'png', '-o', png, tmpSvg], { encoding: 'utf8', timeout: 30_000 });
  if (r.status === 0) {
    rmSync(tmpSvg, { force: true });
    rmSync(join(outDir, 'chart.svg'), { force: true });
    return 'chart.png';
  }
  const svgFile = join(outDir, 'chart.svg');
  writeFileSync(svgFile, svg);
  rmSync(tmpSvg, { force: true });
  progress.log(`rsvg-convert is not available (${r.error?.message ?? r.stderr?.trim() ?? 'failed'}): wrote ${svgFile} instead of a PNG (apt-get install librsvg2-bin)`);
  return 'chart.svg';
}

async function main(): Promise<number> {
  let o: Opts;
  try {
    o = parseOpts(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const progress = new Progress();
  const startedAt = new Date();
  mkdirSync(o.out, { recursive: true });

  let firstSignalAt = 0;
  const onSignal = (sig: string): void => {
    // Ctrl-C may arrive twice at once (from the terminal and relayed by tsx): only a later one forces.
    if (live.abort && firstSignalAt > 0 && Date.now() - firstSignalAt > 1000) {
      killAllServers();
      live.workers?.kill();
      process.exit(130);
    }
    if (firstSignalAt === 0) firstSignalAt = Date.now();
    live.abort ??= `interrupted by ${sig}`;
    live.publisher?.stop();
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('exit', () => {
    killAllServers();
    live.workers?.kill();
  });
  const deadline = setTimeout(() => {
    live.abort = `time limit of ${o.maxMinutes} min reached`;
  }, o.maxMinutes * 60_000);
  deadline.unref();

  progress.log(`preparing media (${o.media}; first use encodes it with ffmpeg into ${DEFAULT_CACHE_DIR})`);
  const file = await ensureTestMedia(MEDIA[o.media]!);
  const source = loadFlvSource(file);
  const spec = MEDIA[o.media]!;
  const results: BenchResults = {
    tool: 'meshcast-bench',
    startedAt: startedAt.toISOString(),
    finishedAt: '',
    machine: machine(),
    options: { ...o, out: undefined },
    media: { file: file.replace(`${resolve('.')}/`, ''), width: spec.width, height: spec.height, fps: spec.fps, gopSeconds: spec.gopSeconds, loopSeconds: source.loopDurationMs / 1000, kbps: sourceBitrate(source) / 1000 },
    servers: {},
    runs: [],
  };
  const writeJson = (): void => {
    results.finishedAt = new Date().toISOString();
    writeFileSync(join(o.out, 'results.json'), `${JSON.stringify(results, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`);
  };

  const plan: Array<{ kind: ServerKind; n: number }> = [];
  if (o.rows.includes('rtmp')) for (const n of o.viewers) for (const kind of o.servers) plan.push({ kind, n });
  progress.start(plan.length + (o.rows.includes('whep') ? 1 : 0) + (o.rows.includes('vod') ? 1 : 0));
  let code = 0;
  try {
    if (plan.length > 0) live.workers = await SwarmWorkers.spawn(o.workers);
    for (let i = 0; i < plan.length; i++) {
      const { kind, n } = plan[i]!;
      checkAbort();
      const r = await runOne(o, kind, n, source, live.workers!, progress, i + 1, results.servers);
      results.runs.push(r);
      writeJson();
      if (r.ok && r.swarm) {
        const s = r.swarm;
        progress.log(
          `${SERVER_LABELS[kind]} × ${n}: server CPU ${r.serverCpuPct.toFixed(1)} %, RSS ${(r.serverMaxRssBytes / 2 ** 20).toFixed(0)} MB, delivered ${(s.deliveredRatio * 100).toFixed(1)} %, behind ${s.fellBehind}, failed ${s.failed}, TTFF p50 ${s.ttffMs.p50} ms, load gen CPU ${r.loadgenCpuPct.toFixed(0)} %`,
        );
      }
      if (i < plan.length - 1) await sleep(o.cooldownSeconds * 1000, () => progress.update(i + 1, 1, 'cool-down'));
    }
    if (o.rows.includes('whep')) {
      const runNo = plan.length + 1;
      // WebRTC cannot play B-frames in order: the row's media is the same clip encoded without them.
      const whepSource = loadFlvSource(await ensureTestMedia({ ...spec, bFrames: false }));
      const row = await runWhepRow(
        {
          host: o.host,
          viewers: o.whepViewers,
          seconds: o.seconds,
          rampSeconds: o.rampSeconds,
          warmupSeconds: o.warmupSeconds,
          settleSeconds: o.settleSeconds,
          clockMs: o.clockMs,
          log: o.log,
          keepLogs: o.keepLogs,
          checkAbort,
          progress: (p) => progress.update(runNo, 0.5, p),
        },
        whepSource,
      );
      results.whep = row;
      writeJson();
      if (row.rtmp && row.whep) {
        progress.log(
          `WHEP row × ${row.viewers}: CPU per viewer WHEP ${row.whep.cpuPctPerViewer.toFixed(3)} % vs RTMP ${row.rtmp.cpuPctPerViewer.toFixed(3)} % (${(row.cpuPerViewerVsRtmp ?? NaN).toFixed(2)}×); ${row.whep.gbpsPerCore.toFixed(2)} Gbit/s per core over WHEP, ${row.rtmp.gbpsPerCore.toFixed(2)} over RTMP`,
        );
      }
      if (!row.ok) progress.log(`WHEP row: FAILED: ${row.error ?? ''}`);
    }
    if (o.rows.includes('vod')) {
      const runNo = plan.length + (o.rows.includes('whep') ? 1 : 0) + 1;
      const row = await runVodRow(
        {
          host: o.host,
          viewers: o.vodViewers,
          seconds: o.seconds,
          rampSeconds: o.rampSeconds,
          warmupSeconds: o.warmupSeconds,
          settleSeconds: o.settleSeconds,
          clockMs: o.clockMs,
          log: o.log,
          keepLogs: o.keepLogs,
          checkAbort,
          progress: (p) => progress.update(runNo, 0.5, p),
        },
        source,
        file,
      );
      results.vod = row;
      writeJson();
      if (row.live && row.vod) {
        progress.log(
          `VOD row × ${row.viewers}: CPU per viewer VOD ${row.vod.cpuPctPerViewer.toFixed(3)} % vs live ${row.live.cpuPctPerViewer.toFixed(3)} % (${(row.cpuPerViewerVsLive ?? NaN).toFixed(2)}×); edge cache ${row.cacheFetches} fetch(es), ${row.cacheHits} hits, hit rate ${((row.cacheHitRate ?? NaN) * 100).toFixed(1)} %`,
        );
      }
      if (!row.ok) progress.log(`VOD row: FAILED: ${row.error ?? ''}`);
    }
  } catch (err) {
    if (err instanceof Aborted) {
      results.aborted = err.message;
      progress.log(`aborted: ${err.message}; writing partial results`);
      code = 130;
    } else {
      results.aborted = err instanceof Error ? err.message : String(err);
      progress.log(`bench failed: ${results.aborted}`);
      code = 1;
    }
  } finally {
    progress.stop();
    await live.workers?.close().catch(() => live.workers?.kill());
    live.workers = undefined;
    killAllServers();
  }
  writeJson();
  let chart: string | undefined;
  if (o.chart && results.runs.some((r) => r.ok)) chart = writeChart(results, o.out, progress);
  writeFileSync(join(o.out, 'results.md'), renderMarkdown(results, chart));
  process.stderr.write(`wrote ${join(o.out, 'results.json')}, ${join(o.out, 'results.md')}${chart ? `, ${join(o.out, chart)}` : ''}\n`);
  return code;
}

process.exit(await main());
