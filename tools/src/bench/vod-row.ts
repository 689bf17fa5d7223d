/**
 * The benchmark's VOD row: what a VOD viewer costs next to a live one, and how the edge's cache
 * does, on a two-node mesh (a nats-server, an origin node and an edge node as processes).
 *
 * The origin's VOD root holds the bench clip remuxed to MP4; the edge has the VOD app with no
 * root (every file comes from the mesh). First N RTMP viewers of a live stream published to the
 * edge, then N RTMP VOD viewers of the MP4 on the edge (`meshcast-load --vod`'s swarm): the first
 * makes the edge copy the file from the origin, the rest are served from its cache. The edge's
 * CPU is measured over the same window length in both phases; the cache's fetches and hits come
 * from its admin API (`GET /api/v1/vod`).
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { run } from '../../../tests/src/harness/ffmpeg.ts';
import { startNatsServer, type NatsServer } from '../../../tests/src/harness/nats.ts';
import { FlvLoopPublisher } from '../load/publisher.ts';
import { summarizeSwarm } from '../load/stats.ts';
import { ViewerSwarm } from '../load/swarm.ts';
import { sourceBitrate, type FlvSource } from '../load/flv-source.ts';
import { VodSwarm } from '../load-cli/vod-swarm.ts';
import { TreeMeter } from './proc.ts';
import type { VodRowResult } from './results.ts';
import { freePort, startServer, type ServerHandle } from './servers.ts';

export interface VodRowOptions {
  host: string;
  viewers: number;
  seconds: number;
  rampSeconds: number;
  warmupSeconds: number;
  settleSeconds: number;
  clockMs: number;
  log: 'quiet' | 'info';
  keepLogs: boolean;
  /** Throws when the run must stop (signal, time limit). */
  checkAbort: () => void;
  progress: (phase: string) => void;
}

interface CacheFigures {
  fetches: number;
  hits: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The edge's cache figures from its admin API. */
async function cacheFigures(adminUrl: string): Promise<CacheFigures> {
  const r = await fetch(`${adminUrl}/api/v1/vod`, { signal: AbortSignal.timeout(5000) });
  const body = (await r.json()) as { cache?: CacheFigures };
  return { fetches: body.cache?.fetches ?? 0, hits: body.cache?.hits ?? 0 };
}

/** Waits out the measurement window with the edge's CPU metered. */
async function window(o: VodRowOptions, edge: ServerHandle): Promise<{ cpuPct: number; maxRssBytes: number; seconds: number }> {
  const meter = new TreeMeter(edge.pid);
  meter.start();
  const w0 = performance.now();
  for (let left = o.seconds * 1000; left > 0; left -= 250) {
    o.checkAbort();
    await sleep(Math.min(250, left));
  }
  const cpu = meter.stop();
  return { cpuPct: cpu.cpuPct, maxRssBytes: cpu.maxRssBytes, seconds: (performance.now() - w0) / 1000 };
}

/** Runs the row; a failure is reported in the result, not thrown (an abort is thrown). */
export async function runVodRow(o: VodRowOptions, source: FlvSource, sourceFile: string): Promise<VodRowResult> {
  const result: VodRowResult = { viewers: o.viewers, ok: false, kbps: Math.round(sourceBitrate(source) / 1000) };
  const dir = mkdtempSync(join(tmpdir(), 'meshcast-bench-vod-'));
  let nats: NatsServer | undefined;
  const servers: ServerHandle[] = [];
  let publisher: FlvLoopPublisher | undefined;
  let live: ViewerSwarm | undefined;
  let vod: VodSwarm | undefined;
  try {
    o.progress('VOD row: remuxing the clip to MP4, starting nats-server and two nodes');
    const mp4 = join(dir, 'media', 'bench.mp4');
    mkdirSync(join(dir, 'media'));
    const made = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', sourceFile, '-c', 'copy', '-movflags', '+faststart', '-y', mp4], 60_000);
    if (made.code !== 0) throw new Error(`ffmpeg could not remux the clip to MP4: ${made.stderr.slice(0, 300)}`);
    nats = await startNatsServer();
    const node = async (id: string, vodSettings: string, adminPort: number): Promise<ServerHandle> => {
      const config = [
        `mesh:\n  nats: ["${nats!.url}"]\n  mesh_secret: bench-vod-secret`,
        `admin:\n  host: ${o.host}\n  port: ${adminPort}`,
        `apps:\n  vod:\n    vod: ${vodSettings}`,
        `vod:\n  cache_dir: "${join(dir, `cache-${id}`)}"`,
      ].join('\n');
      const s = await startServer('meshcast', { host: o.host, log: o.log, keepDir: o.keepLogs, meshcastConfig: `${config}\n`, nodeId: id });
      servers.push(s);
      return s;
    };
    const edgeAdmin = await freePort(o.host);
    const [, edge] = await Promise.all([
      node('vod-origin', `{root: "${join(dir, 'media')}"}`, await freePort(o.host)),
      node('vod-edge', '{root: ""}', edgeAdmin),
    ]);
    const edgeAdminUrl = `http://${o.host}:${edgeAdmin}`;
    o.checkAbort();
    const ramp = o.rampSeconds > 0 ? { rampPerSecond: o.viewers / o.rampSeconds } : {};

    // Live: a looping publisher on the edge and N RTMP viewers of it.
    publisher = await FlvLoopPublisher.start({ url: `${edge.appUrl}/vodbench`, source, clockIntervalMs: o.clockMs, timeoutMs: 10_000 });
    await sleep(o.warmupSeconds * 1000);
    o.checkAbort();
    o.progress(`VOD row: ${o.viewers} live RTMP viewers`);
    live = new ViewerSwarm({ url: `${edge.appUrl}/vodbench`, viewers: o.viewers, timeoutMs: 15_000, ...ramp });
    let t0 = Date.now();
    live.start();
    await live.whenSettled(o.rampSeconds * 1000 + 20_000, () => o.checkAbort());
    const liveRamp = (Date.now() - t0) / 1000;
    await sleep(o.settleSeconds * 1000);
    live.mark();
    const liveCpu = await window(o, edge);
    live.end();
    const ls = summarizeSwarm([live.report()], 0);
    result.live = {
      receiving: ls.receiving,
      failed: ls.failed,
      failures: ls.failures,
      rampSeconds: liveRamp,
      windowSeconds: liveCpu.seconds,
      serverCpuPct: liveCpu.cpuPct,
      serverMaxRssBytes: liveCpu.maxRssBytes,
      cpuPctPerViewer: liveCpu.cpuPct / Math.max(1, ls.receiving),
      mbps: (ls.deliveredBytes * 8) / liveCpu.seconds / 1e6,
      ttffP50Ms: ls.ttffMs.p50,
    };
    live.stop();
    live = undefined;
    publisher.stop();
    publisher = undefined;
    await sleep(2000);

    // VOD: N RTMP VOD viewers of the MP4 the edge does not hold.
    o.progress(`VOD row: ${o.viewers} RTMP VOD viewers`);
    const before = await cacheFigures(edgeAdminUrl);
    vod = new VodSwarm({ url: `rtmp://${o.host}:${edge.rtmpPort}/vod/mp4:bench.mp4`, viewers: o.viewers, timeoutMs: 15_000, ...ramp });
    t0 = Date.now();
    vod.start();
    await vod.whenSettled(o.rampSeconds * 1000 + 20_000, () => o.checkAbort());
    const vodRamp = (Date.now() - t0) / 1000;
    await sleep(o.settleSeconds * 1000);
    vod.mark();
    const vodCpu = await window(o, edge);
    vod.end();
    const vs = vod.report();
    const after = await cacheFigures(edgeAdminUrl);
    result.vod = {
      receiving: vs.receiving,
      failed: vs.failed,
      failures: vs.failures,
      rampSeconds: vodRamp,
      windowSeconds: vodCpu.seconds,
      serverCpuPct: vodCpu.cpuPct,
      serverMaxRssBytes: vodCpu.maxRssBytes,
      cpuPctPerViewer: vodCpu.cpuPct / Math.max(1, vs.receiving),
      mbps: (vs.windowBytes * 8) / vodCpu.seconds / 1e6,
      ttffP50Ms: vs.ttffMs.p50,
    };
    result.cacheFetches = after.fetches - before.fetches;
    result.cacheHits = after.hits - before.hits;
    result.cacheHitRate = result.cacheHits / Math.max(1, result.cacheHits + result.cacheFetches);
    result.cpuPerViewerVsLive = result.vod.cpuPctPerViewer / result.live.cpuPctPerViewer;
    for (const s of servers) if (s.exitCode !== undefined) throw new Error(`meshcast ${s.kind} exited during the row (${s.exitCode})`);
    result.ok = result.live.failed === 0 && result.vod.failed === 0 && result.cacheFetches === 1;
    if (!result.ok) result.error = `failures: live ${JSON.stringify(result.live.failures)}, VOD ${JSON.stringify(result.vod.failures)}, edge fetches ${result.cacheFetches}`;
  } catch (err) {
    result.ok = false;
    result.error = err instanceof Error ? err.message : String(err);
    if (/interrupted|time limit/.test(result.error)) throw err;
  } finally {
    live?.stop();
    vod?.stop();
    publisher?.stop();
    await Promise.all(servers.map((s) => s.stop()));
    await nats?.stop();
    if (!o.keepLogs) rmSync(dir, { recursive: true, force: true });
  }
  return result;
}
