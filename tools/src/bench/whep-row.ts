/**
 * The benchmark's WHEP row: one meshcast node, one looping publisher (no B-frames, as WebRTC
 * needs), then N RTMP viewers and afterwards N WHEP viewers (the load tester's libdatachannel
 * peers), each measured over the same window length on the same node in the same run. The node
 * (with its ffmpeg AAC→Opus child) is pinned to one core and this process (publisher and
 * viewers) to another, so neither measures the other's work.
 *
 * Bytes are counted by arrival over the window: for WHEP they are RTP payload bytes (H.264 +
 * Opus), for RTMP FLV audio+video payload bytes, so "Gbit/s per core" compares media served,
 * not headers.
 */
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import { freeUdpPort } from '../../../tests/src/harness/ports.ts';
import { FlvLoopPublisher } from '../load/publisher.ts';
import { summarizeSwarm } from '../load/stats.ts';
import { ViewerSwarm, type SwarmCore, type ViewerTally } from '../load/swarm.ts';
import { sourceBitrate, type FlvSource } from '../load/flv-source.ts';
import { WhepSwarm } from '../load-cli/whep-swarm.ts';
import { TreeMeter } from './proc.ts';
import type { WhepPhase, WhepRowResult } from './results.ts';
import { startServer, type ServerHandle } from './servers.ts';

export interface WhepRowOptions {
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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Pins every thread of `pid` (and the threads and children it starts later) to `cores` (a taskset list); false when taskset is missing or refuses. */
function pin(pid: number, cores: string): boolean {
  try {
    execFileSync('taskset', ['-a', '-cp', cores, String(pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function phase(o: WhepRowOptions, server: ServerHandle, swarm: SwarmCore<ViewerTally>, label: string): Promise<WhepPhase> {
  const t0 = Date.now();
  swarm.start();
  const ramp = await swarm.whenSettled(o.rampSeconds * 1000 + 20_000, () => o.checkAbort());
  const rampSeconds = (Date.now() - t0) / 1000;
  o.progress(`${label}: ${ramp.receiving}/${o.viewers} receiving after ${rampSeconds.toFixed(1)} s; settling`);
  await sleep(o.settleSeconds * 1000);
  o.checkAbort();
  swarm.mark();
  const meter = new TreeMeter(server.pid);
  meter.start();
  const w0 = performance.now();
  await sleep(o.seconds * 1000);
  const cpu = meter.stop();
  const windowS = (performance.now() - w0) / 1000;
  swarm.end();
  const s = summarizeSwarm([swarm.report()], 0);
  const gbps = (s.deliveredBytes * 8) / windowS / 1e9;
  return {
    receiving: s.receiving,
    failed: s.failed,
    failures: s.failures,
    rampSeconds,
    windowSeconds: windowS,
    serverCpuPct: cpu.cpuPct,
    serverMaxRssBytes: cpu.maxRssBytes,
    cpuPctPerViewer: cpu.cpuPct / Math.max(1, s.receiving),
    gbps,
    gbpsPerCore: cpu.cpuPct > 0 ? gbps / (cpu.cpuPct / 100) : NaN,
    ttffP50Ms: s.ttffMs.p50,
    loadgenCpuPct: s.loadgenCpuPct,
  };
}

/** Runs the row; a failure is reported in the result, not thrown (an abort is thrown). */
export async function runWhepRow(o: WhepRowOptions, source: FlvSource): Promise<WhepRowResult> {
  const result: WhepRowResult = { viewers: o.viewers, ok: false, pinned: false, kbps: 0 };
  let server: ServerHandle | undefined;
  let publisher: FlvLoopPublisher | undefined;
  let swarm: SwarmCore<ViewerTally> | undefined;
  try {
    const udp = await freeUdpPort(o.host);
    server = await startServer('meshcast', { host: o.host, log: o.log, keepDir: o.keepLogs, meshcastConfig: `webrtc:\n  udp_port: ${udp}\n` });
    // Server on core 0, load generator on core 1 (both only when the machine has two).
    result.pinned = cpus().length >= 2 && pin(server.pid, '0') && pin(process.pid, '1');
    const url = `${server.appUrl}/whepbench`;
    publisher = await FlvLoopPublisher.start({ url, source, clockIntervalMs: o.clockMs, timeoutMs: 10_000 });
    result.kbps = Math.round(sourceBitrate(source) / 1000);
    await sleep(o.warmupSeconds * 1000);
    o.checkAbort();
    const ramp = o.rampSeconds > 0 ? { rampPerSecond: o.viewers / o.rampSeconds } : {};

    o.progress(`WHEP row: ${o.viewers} RTMP viewers`);
    swarm = new ViewerSwarm({ url, viewers: o.viewers, timeoutMs: 15_000, ...ramp });
    result.rtmp = await phase(o, server, swarm, 'RTMP');
    swarm.stop();
    swarm = undefined;
    await sleep(2000);

    o.progress(`WHEP row: ${o.viewers} WHEP viewers`);
    const whep = new WhepSwarm({ url: `http://${o.host}:${server.httpPort}/live/whepbench/whep`, viewers: o.viewers, timeoutMs: 15_000, ...ramp });
    swarm = whep;
    result.whep = await phase(o, server, whep, 'WHEP');
    whep.stop();
    await whep.closed();
    swarm = undefined;
    result.cpuPerViewerVsRtmp = result.whep.cpuPctPerViewer / result.rtmp.cpuPctPerViewer;
    if (server.exitCode !== undefined) throw new Error(`meshcast exited during the row (${server.exitCode})`);
    result.ok = result.rtmp.failed === 0 && result.whep.failed === 0;
    if (!result.ok) result.error = `failures: RTMP ${JSON.stringify(result.rtmp.failures)}, WHEP ${JSON.stringify(result.whep.failures)}`;
  } catch (err) {
    result.ok = false;
    result.error = err instanceof Error ? err.message : String(err);
    if (/interrupted|time limit/.test(result.error)) throw err;
  } finally {
    swarm?.stop();
    if (swarm instanceof WhepSwarm) await swarm.closed();
    publisher?.stop();
    if (server) await server.stop();
    // The load generator's later rows run on every core again.
    if (result.pinned) pin(process.pid, `0-${cpus().length - 1}`);
  }
  return result;
}
