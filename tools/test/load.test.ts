/**
 * The load library: pure pieces on hand-made numbers, then the FlvLoopPublisher and the
 * ViewerSwarm (in-process and in worker processes) against a real meshcast node child process.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FlvTag } from '@meshcast/proto';
import {
  FlvLoopPublisher,
  SwarmWorkers,
  TEST_MEDIA,
  ViewerSwarm,
  encodeClockStamp,
  encodeHistogram,
  ensureTestMedia,
  failureCause,
  loadFlvSource,
  newHistogram,
  payloadBytesInRange,
  readClockStamp,
  splitEven,
  summarizeSwarm,
  type FlvSource,
  type SwarmPartReport,
} from '../src/load/index.ts';
import { RtmpClientError } from '@meshcast/node/client';
import { parseStat } from '../src/bench/proc.ts';
import { formatRatio, maxCleanViewers, ratiosVs, renderMarkdown, renderSvgChart, type BenchResults, type RunResult, type WhepPhase } from '../src/bench/results.ts';
import { startMeshcast, type ServerHandle } from '../src/bench/servers.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function hist(values: number[]): string {
  const h = newHistogram();
  for (const v of values) h.recordValue(v);
  return encodeHistogram(h);
}

function part(over: Partial<SwarmPartReport>): SwarmPartReport {
  return {
    pid: 1,
    requested: 0,
    started: 0,
    playing: 0,
    receiving: 0,
    failures: {},
    retries: {},
    ttff: '',
    latency: '',
    frameLatency: '',
    earlyFrames: 0,
    windowMs: 10_000,
    windowBytes: [],
    maxLagMs: [],
    windowFrames: 0,
    tsBackwards: 0,
    tsJumps: 0,
    cpuUserUs: 0,
    cpuSystemUs: 0,
    rssBytes: 0,
    ...over,
  };
}

describe('merging swarm reports', () => {
  it('sums counts, merges histograms and failures, and judges viewers against the expected bytes', () => {
    const a = part({
      requested: 3,
      started: 3,
      playing: 3,
      receiving: 3,
      ttff: hist([100, 200, 300]),
      latency: hist([50]),
      windowBytes: [1000, 1000, 700], // the third got 70 %: behind
      maxLagMs: [10, 20, 30],
      windowFrames: 30,
      cpuUserUs: 1_500_000,
      cpuSystemUs: 500_000, // 2 s CPU over 10 s = 20 %
      rssBytes: 100,
    });
    const b = part({
      pid: 2,
      requested: 3,
      started: 3,
      playing: 2,
      receiving: 2,
      failures: { 'connect:TIMEOUT': 1 },
      retries: { 'connect:ICE_FAILED': 2 },
      ttff: hist([400, 500]),
      latency: hist([70, 90]),
      windowBytes: [1000, 990, 0],
      maxLagMs: [2500, 5, -2], // lagged 2.5 s: behind; the failed one is not "behind"
      windowFrames: 20,
      tsJumps: 1,
      cpuUserUs: 1_000_000,
      cpuSystemUs: 0, // 10 %
      rssBytes: 50,
    });
    const s = summarizeSwarm([a, b], 1000);
    assert.equal(s.parts, 2);
    assert.equal(s.requested, 6);
    assert.equal(s.receiving, 5);
    assert.equal(s.failed, 1);
    assert.deepEqual(s.failures, { 'connect:TIMEOUT': 1 });
    assert.deepEqual(s.retries, { 'connect:ICE_FAILED': 2 }, 'a retry is reported, not counted as a failure');
    assert.equal(s.ttffMs.count, 5);
    assert.equal(s.ttffMs.p50, 300);
    assert.equal(s.ttffMs.max, 500);
    assert.equal(s.latencyMs.count, 3);
    assert.equal(s.deliveredBytes, 4690);
    assert.equal(s.expectedBytes, 6000);
    assert.ok(Math.abs(s.deliveredRatio - 4690 / 6000) < 1e-9);
    assert.equal(s.fellBehind, 2);
    assert.equal(s.tsJumps, 1);
    assert.equal(s.windowFrames, 50);
    assert.ok(Math.abs(s.loadgenCpuPct - 30) < 1e-9);
    assert.deepEqual(s.loadgenCpuPctPerPart.map((x) => Math.round(x)), [20, 10]);
    assert.equal(s.loadgenRssBytes, 150);
  });

  it('falls back to the median viewer when the expected bytes are unknown', () => {
    const s = summarizeSwarm([part({ requested: 3, started: 3, receiving: 3, windowBytes: [100, 100, 50], maxLagMs: [0, 0, 0] })], 0);
    assert.equal(s.expectedBytesPerViewer, 100);
    assert.equal(s.fellBehind, 1);
  });

  it('splits viewers evenly over workers', () => {
    assert.deepEqual(splitEven(7, 2), [4, 3]);
    assert.deepEqual(splitEven(2, 3), [1, 1, 0]);
  });
});

function run(server: RunResult['server'], viewers: number, cpu: number, rss: number, delivered: number, ttffP50: number, over: Partial<RunResult> = {}): RunResult {
  const pc = { count: 1, p50: ttffP50, p95: ttffP50, p99: ttffP50, max: ttffP50 };
  return {
    server,
    viewers,
    ok: true,
    windowSeconds: 20,
    rampSeconds: 5,
    serverCpuPct: cpu,
    serverCpuSeconds: cpu / 5,
    serverMaxRssBytes: rss,
    serverProcesses: 1,
    publishedBytes: 1,
    publishedKbps: 2000,
    publisherStalls: 0,
    swarm: {
      ...summarizeSwarm([], 1),
      requested: viewers,
      deliveredRatio: delivered,
      ttffMs: pc,
      frameLatencyMs: { ...pc, p50: 10 },
    },
    loadgenCpuPct: 20,
    loadgenWorkersCpuPct: [10, 10],
    loadgenParentCpuPct: 0,
    ...over,
  };
}

describe('ratios vs nginx-rtmp', () => {
  const runs = [
    run('nginx', 100, 10, 20 << 20, 1, 1000),
    run('meshcast', 100, 15, 120 << 20, 1, 5),
    run('nms', 100, 40, 100 << 20, 0.5, 50),
    run('meshcast', 500, 50, 150 << 20, 1, 5),
  ];

  it('divides by the baseline at the same viewer count', () => {
    const q = ratiosVs(runs[1]!, runs);
    assert.equal(q.cpu, 1.5);
    assert.equal(q.rss, 6);
    assert.equal(q.delivered, 1);
    assert.equal(q.ttffP50, 0.005);
    assert.equal(q.frameLatencyP50, 1);
    assert.equal(ratiosVs(runs[2]!, runs).delivered, 0.5);
    assert.ok(Number.isNaN(ratiosVs(runs[3]!, runs).cpu), 'no nginx run at 500 viewers');
  });

  it('formats ratios and renders the report and chart', () => {
    assert.equal(formatRatio(1.5), '1.50×');
    assert.equal(formatRatio(0.0047), '0.0047×');
    assert.equal(formatRatio(NaN), 'n/a');
    assert.equal(maxCleanViewers(runs, 'meshcast'), 500);
    const res: BenchResults = {
      tool: 'meshcast-bench',
      startedAt: 'a',
      finishedAt: 'b',
      machine: { cpus: 2, cpuModel: 'cpu', memGiB: 4, kernel: 'k', node: 'v20' },
      options: { warmupSeconds: 3, rampSeconds: 5, settleSeconds: 2, seconds: 20, workers: 2 },
      media: { file: 'f', width: 1280, height: 720, fps: 30, gopSeconds: 2, loopSeconds: 10, kbps: 2100 },
      servers: { nginx: 'nginx/1.22.1', meshcast: 'meshcast 0.1.0', nms: 'nms 4.4.3' },
      runs,
    };
    const md = renderMarkdown(res, 'chart.png');
    assert.match(md, /\| 100 \| meshcast \| 1\.50× \| 6\.00× \| 1\.00× \| 0\.005× \|/);
    assert.match(md, /\| node-media-server \| 100 \| 40\.0 \| 40\.00 \| 100 \| 50\.0 % \|/);
    assert.match(md, /!\[.*\]\(chart\.png\)/);
    const svg = renderSvgChart(res);
    assert.match(svg, /^<svg /);
    assert.equal((svg.match(/<polyline /g) ?? []).length, 6);
    const phase = (cpu: number, gbps: number): WhepPhase => ({ receiving: 100, failed: 0, failures: {}, rampSeconds: 5, windowSeconds: 10, serverCpuPct: cpu, serverMaxRssBytes: 200 * 2 ** 20, cpuPctPerViewer: cpu / 100, gbps, gbpsPerCore: gbps / (cpu / 100), ttffP50Ms: 300, loadgenCpuPct: 50 });
    const whep = renderMarkdown({ ...res, whep: { viewers: 100, ok: true, pinned: true, kbps: 2100, rtmp: phase(10, 0.2), whep: phase(40, 0.2), cpuPerViewerVsRtmp: 4 } });
    assert.match(whep, /## WHEP row: 100 WebRTC viewers/);
    assert.match(whep, /\| WHEP \| 100 \| 0 \| 40\.0 \| 0\.400 \| 0\.200 \| 0\.50 \|/);
    assert.match(whep, /WHEP CPU per viewer = 4\.00× the RTMP CPU per viewer/);
    assert.doesNotMatch(md, /WHEP row/, 'a run without the row says nothing of it');
  });
});

describe('small pieces', () => {
  it('clock stamps round-trip and other data messages are not stamps', () => {
    assert.equal(readClockStamp(encodeClockStamp(1_700_000_000_123)), 1_700_000_000_123);
    assert.equal(readClockStamp(Buffer.from([2, 0, 10, 0x6f, 0x6e, 0x4d, 0x65, 0x74, 0x61, 0x44, 0x61, 0x74, 0x61])), -1);
    assert.equal(readClockStamp(Buffer.alloc(0)), -1);
  });

  it('counts payload bytes over looped media-time ranges', () => {
    const tag = (ts: number, n: number): FlvTag => ({ type: 9, timestamp: ts, streamId: 0, payload: Buffer.alloc(n) });
    const src = { tags: [tag(0, 10), tag(40, 20), tag(80, 30)], loopDurationMs: 120, loopPayloadBytes: 60 } as FlvSource;
    assert.equal(payloadBytesInRange(src, -1, 0), 10);
    assert.equal(payloadBytesInRange(src, 0, 80), 50);
    assert.equal(payloadBytesInRange(src, 0, 120), 60); // 40, 80, then loop 1 at 120
    assert.equal(payloadBytesInRange(src, -1, 359), 180);
    assert.equal(payloadBytesInRange(src, 100, 100 + 120 * 10), 600);
    assert.equal(payloadBytesInRange(src, 50, 50), 0);
  });

  it('parses /proc stat lines with odd command names', () => {
    const line = '1234 (we ird) cmd)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 1000 50';
    assert.deepEqual(parseStat(line), { ppid: 1, utime: 250, stime: 75 });
  });

  it('names failure causes without addresses', () => {
    assert.equal(failureCause('connect', new RtmpClientError('SOCKET', '127.0.0.1:1935: connect ECONNREFUSED 127.0.0.1:1935')), 'connect:SOCKET:ECONNREFUSED');
    assert.equal(failureCause('play', new RtmpClientError('NetStream.Play.StreamNotFound', 'x')), 'play:NetStream.Play.StreamNotFound');
    assert.equal(failureCause('closed', new Error('read ECONNRESET')), 'closed:ECONNRESET');
    assert.equal(failureCause('closed', new Error('connection closed by server')), 'closed:connection closed by server');
  });
});

describe('publisher and swarm against a meshcast node', { timeout: 90_000 }, () => {
  let server: ServerHandle;
  let source: FlvSource;
  let publisher: FlvLoopPublisher;
  let url: string;

  before(async () => {
    const [file, srv] = await Promise.all([ensureTestMedia(TEST_MEDIA, join(tmpdir(), 'meshcast-load-test-media')), startMeshcast({ host: '127.0.0.1' })]);
    server = srv;
    source = loadFlvSource(file);
    url = `${server.appUrl}/loadtest`;
    publisher = await FlvLoopPublisher.start({ url, source, clockIntervalMs: 250 });
    await sleep(1200);
  });

  after(async () => {
    publisher?.stop();
    await server?.stop();
  });

  it('loads the test media: sequence headers, metadata, a keyframe per GOP', () => {
    assert.ok(source.videoSequenceHeader && source.audioSequenceHeader);
    assert.equal(source.metadata?.width, TEST_MEDIA.width);
    assert.equal(source.keyframes, TEST_MEDIA.seconds / TEST_MEDIA.gopSeconds);
    assert.ok(Math.abs(source.loopDurationMs - TEST_MEDIA.seconds * 1000) < 150, `loop ${source.loopDurationMs} ms`);
  });

  it('20 viewers all receive frames, with TTFF, delivered ≈ expected and continuous timestamps across the loop', async () => {
    const swarm = new ViewerSwarm({ url, viewers: 20, rampPerSecond: 40, epochMs: publisher.epochMs });
    try {
      swarm.start();
      const p = await swarm.whenSettled(10_000);
      assert.equal(p.receiving, 20, JSON.stringify(p));
      // The window is longer than one loop, so it contains a loop boundary.
      const fromTs = Math.ceil(publisher.mediaTime()) + 100;
      const toTs = fromTs + source.loopDurationMs + 200;
      swarm.mark({ fromTs, toTs });
      while (publisher.mediaTime() < toTs) await sleep(50);
      swarm.end();
      await sleep(500);
      const s = summarizeSwarm([swarm.report()], publisher.payloadBytesInRange(fromTs, toTs));
      assert.ok(publisher.loops >= 1);
      assert.equal(s.failed, 0, JSON.stringify(s.failures));
      assert.equal(s.ttffMs.count, 20);
      assert.ok(s.ttffMs.p95 > 0 && s.ttffMs.p95 < 5000, `TTFF p95 ${s.ttffMs.p95}`);
      assert.ok(s.deliveredRatio > 0.98 && s.deliveredRatio <= 1.0001, `delivered ${s.deliveredRatio}`);
      assert.equal(s.fellBehind, 0);
      assert.equal(s.tsBackwards, 0);
      assert.equal(s.tsJumps, 0);
      assert.ok(s.latencyMs.count >= 20 * 10, `clock stamps seen: ${s.latencyMs.count}`);
      assert.ok(s.latencyMs.p50 < 1000 && s.frameLatencyMs.p50 < 1000, `latency ${s.latencyMs.p50} / ${s.frameLatencyMs.p50} ms`);
      assert.equal(s.earlyFrameShare, 0);
      assert.ok(s.loadgenCpuPct > 0);
    } finally {
      swarm.stop();
    }
  });

  it('runs the swarm in 2 worker processes and merges their reports', async () => {
    const workers = await SwarmWorkers.spawn(2);
    try {
      await workers.start({ url, viewers: 10, rampPerSecond: 50, epochMs: publisher.epochMs });
      const p = await workers.whenSettled(15_000);
      assert.equal(p.receiving, 10, JSON.stringify(p));
      const fromTs = Math.ceil(publisher.mediaTime()) + 200;
      const toTs = fromTs + 1500;
      await workers.mark({ fromTs, toTs });
      while (publisher.mediaTime() < toTs) await sleep(50);
      await workers.end();
      await sleep(500);
      const parts = await workers.report();
      assert.equal(parts.length, 2);
      assert.deepEqual(parts.map((x) => x.requested), [5, 5]);
      assert.notEqual(parts[0]!.pid, parts[1]!.pid);
      assert.ok(parts.every((x) => x.cpuUserUs + x.cpuSystemUs > 0));
      const s = summarizeSwarm(parts, publisher.payloadBytesInRange(fromTs, toTs));
      assert.equal(s.receiving, 10);
      assert.ok(s.deliveredRatio > 0.98 && s.deliveredRatio <= 1.0001, `delivered ${s.deliveredRatio}`);
      assert.equal(s.loadgenCpuPctPerPart.length, 2);
    } finally {
      await workers.close();
    }
  });
});
