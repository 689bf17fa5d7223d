/** meshcast-load output: the live progress display and the final text report. */
import cliProgress from 'cli-progress';
import type { Percentiles } from '../load/index.ts';
import type { PartProgress } from './part.ts';
import type { LoadReport, LoadUi } from './runner.ts';

const clock = (): string => new Date().toISOString().slice(11, 19);

/** cli-progress bar on a TTY; a plain line every 2 s otherwise; nothing with `quiet`. */
export class ProgressUi implements LoadUi {
  private bar: cliProgress.SingleBar | undefined;
  private lastLine = 0;

  constructor(
    private readonly mode: 'tty' | 'lines' | 'quiet',
    private readonly write: (s: string) => void = (s) => void process.stderr.write(s),
  ) {}

  start(total: number): void {
    if (this.mode !== 'tty' || this.bar) return;
    this.bar = new cliProgress.SingleBar(
      {
        format: '{bar} {value}/{total} settled | connected {started} | playing {playing} | video {receiving} | failed {failed} | {mbps} Mbps | {phase}',
        hideCursor: true,
        barsize: 24,
        fps: 5,
        stream: process.stderr,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(total, 0, { started: 0, playing: 0, receiving: 0, failed: 0, mbps: '0.0', phase: 'ramp' });
  }

  update(phase: string, p: PartProgress, mbps: number): void {
    if (this.mode === 'quiet') return;
    const payload = { started: p.started, playing: p.playing, receiving: p.receiving, failed: p.failed, mbps: mbps.toFixed(1), phase };
    if (this.bar) {
      this.bar.update(p.settled, payload);
      return;
    }
    if (this.mode !== 'lines') return;
    const now = Date.now();
    if (now - this.lastLine < 2000) return;
    this.lastLine = now;
    this.write(`[${clock()}] ${phase}: ${p.settled}/${p.requested} settled, connected ${p.started}, playing ${p.playing}, video ${p.receiving}, failed ${p.failed}, ${mbps.toFixed(1)} Mbps\n`);
  }

  log(line: string): void {
    if (this.mode === 'quiet') return;
    if (this.bar) {
      // cli-progress redraws on the next update; print the line on its own above it.
      this.write(`\r\x1b[K${line}\n`);
      return;
    }
    this.write(`[${clock()}] ${line}\n`);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

function ms(p: Percentiles): string {
  if (p.count === 0) return 'no samples';
  const f = (x: number): string => `${Math.round(x)} ms`;
  return `p50 ${f(p.p50)}  p95 ${f(p.p95)}  p99 ${f(p.p99)}  max ${f(p.max)}  (${p.count} samples)`;
}

function bytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

/** The final report as a person reads it. */
export function renderReport(r: LoadReport): string {
  const s = r.summary;
  const o = r.options;
  const streams = r.streams.length === 1 ? `${r.streams[0]!.app}/${r.streams[0]!.stream}` : `${r.streams.length} streams (Zipf s = ${o.zipf})`;
  const media = r.media ? `${r.media.width ?? '?'}x${r.media.height ?? '?'} ${r.media.kbps} kbit/s` : 'external source';
  const lines = [
    `meshcast-load: ${s.requested} ${o.protocol} viewers of ${streams}${o.route ? `, routed by ${o.route}` : ''}; ${r.publishers.length} publisher(s), ${media}; window ${(s.windowMs / 1000).toFixed(1)} s`,
    `  viewers      ${s.requested} requested, ${s.started} connected, ${s.playing} playing, ${s.receiving} receiving video, ${s.failed} failed`,
    `  TTFF         ${ms(s.ttffMs)}`,
    `  latency      ${ms(s.latencyMs)}  glass-to-glass, from clock stamps`,
    `  frame delay  ${ms(s.frameLatencyMs)}  frame timestamps vs the publisher's clock`,
    r.window === 'media-time'
      ? `  delivered    ${bytes(s.deliveredBytes)} of ${bytes(s.expectedBytes)} expected (${(s.deliveredRatio * 100).toFixed(1)} %); ${s.fellBehind} viewer(s) fell behind`
      : `  delivered    ${bytes(s.deliveredBytes)} (no own publisher: compared with the median viewer, ${(s.deliveredRatio * 100).toFixed(1)} %); ${s.fellBehind} viewer(s) fell behind`,
    r.window === 'media-time'
      ? `  frames       ${r.framesReceived} received of ${r.framesExpected} expected, ${r.framesMissing} missing; timestamps backwards ${s.tsBackwards}, jumps ${s.tsJumps}`
      : `  frames       ${r.framesReceived} received; timestamps backwards ${s.tsBackwards}, jumps ${s.tsJumps}`,
    `  failures     ${Object.keys(s.failures).length ? Object.entries(s.failures).map(([k, v]) => `${k} ×${v}`).join(', ') : 'none'}`,
  ];
  if (Object.keys(s.retries).length > 0) lines.push(`  retried      ${Object.entries(s.retries).map(([k, v]) => `${k} ×${v}`).join(', ')}  (attempts made again with a fresh peer)`);
  if (r.route) {
    const placed = Object.entries(r.route.perNode)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([n, c]) => `${n} ${c}`)
      .join(', ');
    lines.push(`  placement    ${placed || 'none'}; ${r.route.lookups} route lookups, ${r.route.failures} failed, answer ${r.route.latencyMs.count ? `p50 ${Math.round(r.route.latencyMs.p50)} ms p99 ${Math.round(r.route.latencyMs.p99)} ms` : '-'}`);
  }
  if (r.streams.length > 1) {
    const top = r.streams.slice(0, 5).map((x) => `${x.stream} ${x.viewers}`);
    lines.push(`  per stream   ${top.join(', ')}${r.streams.length > 5 ? `, … (${r.streams.length - 5} more)` : ''}`);
  }
  const early = r.publishers.filter((p) => p.closedEarly).length;
  if (early) lines.push(`  publishers   ${early} closed before the end`);
  lines.push(`  load gen     ${s.loadgenCpuPct.toFixed(0)} % of a core, ${bytes(s.loadgenRssBytes)} RSS over ${s.parts} process(es)`);
  lines.push(r.ok ? 'result: OK, every viewer played' : 'result: NOT OK (see failures)');
  return lines.join('\n');
}
