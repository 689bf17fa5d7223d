/**
 * Report of a simulation run: results.json (everything), results.md (tables) and SVG
 * charts converted to PNG with rsvg-convert (or headless Chromium).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseStrategy, strategyLabel, type ScenarioConfig } from './config.ts';
import type { MovesResult, RunResult } from './engine.ts';

export interface SimResults {
  generatedAt: string;
  mode: 'full' | 'quick';
  seed: number;
  command: string;
  machine: { cpus: number; model: string; node: string };
  /** wall-clock seconds of the whole run */
  wallSeconds: number;
  workers: number;
  sweep: number[];
  scenarios: ScenarioConfig[];
  runs: RunResult[];
  moves: MovesResult[];
  charts: string[];
  chartNote?: string;
}

const f2 = (x: number): string => x.toFixed(2);
const f3 = (x: number): string => x.toFixed(3);
const int = (x: number): string => Math.round(x).toLocaleString('en-US');
const pct = (x: number): string => `${(x * 100).toFixed(1)} %`;

export function findRun(res: SimResults, scenario: string, strategy: string): RunResult | undefined {
  return res.runs.find((r) => r.scenario === scenario && r.strategy === strategy);
}

function findMoves(res: SimResults, scenario: string, strategy: string): MovesResult | undefined {
  return res.moves.find((r) => r.scenario === scenario && r.strategy === strategy);
}

/** The point of the sweep for n nodes: the sweep scenario, or the headline when it has n nodes. */
export function sweepRun(res: SimResults, n: number, strategy: string): RunResult | undefined {
  return findRun(res, `sweep-${n}`, strategy) ?? (res.scenarios.find((s) => s.name === 'headline')?.nodes === n ? findRun(res, 'headline', strategy) : undefined);
}

function label(strategy: string): string {
  return strategyLabel(parseStrategy(strategy));
}

/** Table 1 of a scenario: load and relays at the end of the ramp. */
export function loadTable(res: SimResults, scenario: ScenarioConfig): string {
  const rows: string[] = [];
  rows.push(
    '| strategy | max/avg load | p99/avg | nodes per stream, mean (ideal) | top stream: viewers → nodes (ideal) | nodes serving a viewer\'s stream (viewer-weighted) | cross-node traffic | origin egress, relay tree F=' +
      scenario.fanout +
      ' (all pull from origin) | tree depth max (mean per viewer) |',
  );
  rows.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const st of scenario.strategies) {
    const r = findRun(res, scenario.name, st);
    if (!r) continue;
    const s = r.ramp;
    rows.push(
      `| ${label(st)} | **${f3(s.maxOverAvg)}** | ${f3(s.p99OverAvg)} | **${f2(s.relaysPerStream)}** (${f2(s.idealPerStream)}) | ${int(s.top.viewers)} → ${s.top.relays} (${s.top.ideal}) | ${f2(s.relaysViewerWeighted)} | ${int(s.crossNodeGbps)} Gbit/s | ${int(s.tree.originEgressGbps)} Gbit/s (${int(s.tree.noTreeOriginGbps)}) | ${s.tree.maxDepth} (${f2(s.tree.meanViewerDepth)}) |`,
    );
  }
  return rows.join('\n');
}

/** Table 2 of a scenario: node changes (moves replay) and live churn. */
export function churnTable(res: SimResults, scenario: ScenarioConfig): string {
  const rows: string[] = [];
  const cols = ['strategy'];
  if (scenario.moves) cols.push('remove 1 node: viewers on it → viewers moved (extra)', 'add 1 node: moved to it (fair share) · moved between old nodes');
  if (scenario.churnTicks > 0)
    cols.push(
      `kill 1 node live: forced reconnects · peak max/avg after`,
      `node joins live: its load ${scenario.churnTicks - scenario.joinAt} s later / fair share`,
      'end of churn: max/avg · nodes per stream',
    );
  rows.push(`| ${cols.join(' | ')} |`);
  rows.push(`|---|${cols.slice(1).map(() => '---:').join('|')}|`);
  for (const st of scenario.strategies) {
    const r = findRun(res, scenario.name, st);
    const m = findMoves(res, scenario.name, st);
    const cells = [label(st)];
    if (scenario.moves) {
      cells.push(m ? `${int(m.remove.onRemoved)} → **${int(m.remove.moved)}** (+${int(m.remove.extra)})` : '–');
      cells.push(m ? `**${int(m.add.movedToNew)}** (${int(m.add.fairShare)}) · ${int(m.add.movedBetweenOld)}` : '–');
    }
    if (scenario.churnTicks > 0) {
      const c = r?.churn;
      const e = r?.end;
      cells.push(c ? `${int(c.forcedMoves)} · **${f3(c.peakMaxOverAvgAfterFail)}**` : '–');
      cells.push(c ? `${int(c.joinedLoad)} / ${int(c.joinedFairShare)}` : '–');
      cells.push(e ? `${f3(e.maxOverAvg)} · ${f2(e.relaysPerStream)}` : '–');
    }
    rows.push(`| ${cells.join(' | ')} |`);
  }
  return rows.join('\n');
}

function sweepTable(res: SimResults): string {
  const strategies = res.scenarios.find((s) => s.name.startsWith('sweep-'))?.strategies ?? [];
  const rows = [`| nodes | ${strategies.map((s) => `${label(s)}: max/avg · nodes/stream`).join(' | ')} | ideal nodes/stream |`];
  rows.push(`|---:|${strategies.map(() => '---:').join('|')}|---:|`);
  for (const n of res.sweep) {
    const cells = [String(n)];
    let ideal = '';
    for (const st of strategies) {
      const r = sweepRun(res, n, st);
      cells.push(r ? `${f3(r.ramp.maxOverAvg)} · ${f2(r.ramp.relaysPerStream)}` : '–');
      if (r) ideal = f2(r.ramp.idealPerStream);
    }
    cells.push(ideal);
    rows.push(`| ${cells.join(' | ')} |`);
  }
  return rows.join('\n');
}

function staleTable(res: SimResults): string {
  const stale = res.scenarios.filter((s) => s.name.startsWith('stale-'));
  if (stale.length === 0) return '';
  const strategies = stale[0]?.strategies ?? [];
  const headline = res.scenarios.find((s) => s.name === 'headline');
  const pts: { ramp: number; k: number; scenario: string }[] = stale.map((s) => ({ ramp: s.rampTicks, k: s.staleK, scenario: s.name }));
  if (headline && !pts.some((p) => p.ramp === headline.rampTicks && p.k === headline.staleK)) pts.push({ ramp: headline.rampTicks, k: headline.staleK, scenario: 'headline' });
  pts.sort((a, b) => b.ramp - a.ramp || a.k - b.k);
  const rows = [`| arrivals per tick | K (heartbeats late) | ${strategies.map((s) => `${label(s)}: max/avg`).join(' | ')} |`];
  rows.push(`|---:|---:|${strategies.map(() => '---:').join('|')}|`);
  for (const p of pts) {
    const cfg = res.scenarios.find((s) => s.name === p.scenario) as ScenarioConfig;
    const cells = [int(cfg.viewers / cfg.rampTicks), String(p.k)];
    for (const st of strategies) {
      const r = findRun(res, p.scenario, st);
      cells.push(r ? f3(r.ramp.maxOverAvg) : '–');
    }
    rows.push(`| ${cells.join(' | ')} |`);
  }
  return rows.join('\n');
}

function verifySection(res: SimResults): string {
  let checks = 0;
  let mism = 0;
  let pend = 0;
  const real: string[] = [];
  const bad: string[] = [];
  for (const r of res.runs) {
    checks += r.verify.checks;
    mism += r.verify.mismatches;
    pend += r.verify.pendingMismatches;
    if (r.verify.realDecisions) real.push(`${r.scenario}/${r.strategy} (${int(r.verify.checks)} decisions)`);
    if (r.verify.mismatches || r.verify.pendingMismatches) bad.push(`${r.scenario}/${r.strategy}: ${r.verify.mismatches} decisions, ${r.verify.pendingMismatches} pending counts; first: ${r.verify.firstMismatch}`);
  }
  const lines = [
    `Bounded-load and plain-HRW decisions are taken by an exact replica of \`rankPlaybackNodes\` over per-stream orders computed with the real \`hrwScore\`; real \`BoundedLoadRing\`s (one per shadowed router, fed the same table and the same simulated clock) re-take a sample of the decisions and their pending counts are compared node by node. **${int(checks)} decisions checked, ${mism} differed; ${pend} pending counts differed.**`,
  ];
  if (real.length) lines.push(`Runs whose every decision came from the real rings: ${real.join(', ')}.`);
  if (bad.length) lines.push('', '**Mismatches:**', ...bad.map((b) => `- ${b}`));
  return lines.join('\n');
}

function scenarioBlock(res: SimResults, name: string, heading: string): string {
  const cfg = res.scenarios.find((s) => s.name === name);
  if (!cfg) return '';
  const parts = [`## ${heading}`, '', `${cfg.title}.`, '', loadTable(res, cfg), ''];
  if (cfg.moves || cfg.churnTicks > 0) parts.push(churnTable(res, cfg), '');
  const adm = findRun(res, name, 'bl-1.25+adm');
  if (adm) {
    parts.push(
      `What-if row (not in the code): the node refuses above its own bound computed with its exact load, and such a refusal does not use up the router's 4 asks; ${f2(adm.boundRefusals / Math.max(1, adm.placements))} extra admission round trips per placement, ${int(adm.forcedOverBound)} placements (${pct(adm.forcedOverBound / Math.max(1, adm.placements))}) still went over a bound because every node refused.`,
      '',
    );
  }
  return parts.join('\n');
}

export function renderMarkdown(res: SimResults): string {
  const head = res.scenarios.find((s) => s.name === 'headline');
  const out: string[] = [
    '# Placement simulation results',
    '',
    `Generated by \`${res.command}\` on ${res.generatedAt.slice(0, 10)} (${res.mode} run, seed ${res.seed}); ${res.machine.cpus} × ${res.machine.model}, Node ${res.machine.node}; ${res.workers} worker process(es); **${res.wallSeconds.toFixed(0)} s wall clock**. Method and discussion: [docs/placement.md](../placement.md).`,
    '',
    'Load is viewers ÷ capacity, shown relative to the average (max/avg 1.25 = the busiest node carries 25 % more than its fair share). "Nodes per stream" is the number of distinct nodes serving a stream, i.e. the relays (inter-node copies) it costs; the ideal is ceil(viewers of the stream ÷ (1.25 × average viewers per node)). Cross-node traffic = Σ relays × ' +
      `${head?.bitrateMbps ?? 3} Mbit/s. Origin egress = Σ over streams of the owner's direct relay children × bitrate, with the relay trees built by the real \`chooseRelayParent\` (in brackets: if every relay pulled from the origin).`,
    '',
    scenarioBlock(res, 'headline', 'Headline: 100 nodes, 1,000,000 viewers'),
    scenarioBlock(res, 'hetero', 'Heterogeneous capacities'),
  ];
  if (res.sweep.length) {
    out.push('## Scaling: 10 to 1,000 nodes', '', `${int(head?.viewers ?? 0)} viewers over ${head?.rampTicks ?? 0} s, K=${head?.staleK ?? 1}; end of the ramp.`, '', sweepTable(res), '');
  }
  const st = staleTable(res);
  if (st) out.push('## Stale gossip and flash crowds', '', 'max/avg at the end of the ramp, 100 nodes, 1M viewers. K = how many heartbeats late the load table is (K=0: the previous tick\'s heartbeat).', '', st, '');
  out.push('## Verification against the real code', '', verifySection(res), '');
  if (res.charts.length) out.push('## Charts', '', ...res.charts.map((c) => `![${c}](${c})`), '');
  if (res.chartNote) out.push(res.chartNote, '');
  out.push('## Run times', '', '| job | ms |', '|---|---:|', ...res.runs.map((r) => `| ${r.scenario}/${r.strategy} | ${int(r.ms)} |`), ...res.moves.map((m) => `| ${m.scenario}/${m.strategy}/moves | ${int(m.ms)} |`), '');
  return out.join('\n');
}

/** The headline tables for docs/placement.md. */
export function headlineMarkdown(res: SimResults): string {
  const cfg = res.scenarios.find((s) => s.name === 'headline');
  if (!cfg) return '';
  return [
    `${cfg.title} (\`${res.command}\`, ${res.wallSeconds.toFixed(0)} s on ${res.machine.cpus} cores; full tables in [sim/results.md](sim/results.md)).`,
    '',
    loadTable(res, cfg),
    '',
    churnTable(res, cfg),
  ].join('\n');
}

// ---------------------------------------------------------------- charts

const COLORS: Record<string, string> = {
  'bl-1.1': '#9ecae1',
  'bl-1.25': '#08519c',
  'bl-1.5': '#4292c6',
  'bl-2': '#c6dbef',
  hrw: '#2ca02c',
  rr: '#ff7f0e',
  ll: '#d62728',
  'bl-1.25+adm': '#9467bd',
};

interface Series {
  name: string;
  color: string;
  points: [number, number][];
  dash?: boolean;
}

interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  xLog?: boolean;
  yLog?: boolean;
  xMin: number;
  xMax: number;
  yMin: number;
  yMax: number;
  xTicks: number[];
  yTicks: number[];
  series: Series[];
  markers?: { x: number; label: string }[];
  hlines?: { y: number; label: string }[];
  dots?: boolean;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function fmtTick(v: number): string {
  if (Math.abs(v) >= 1000) return `${v / 1000}k`;
  return String(Math.round(v * 100) / 100);
}

function panelSvg(p: Panel, x0: number, y0: number, w: number, h: number): string {
  const L = 60;
  const R = 10;
  const T = 28;
  const B = 42;
  const pw = w - L - R;
  const ph = h - T - B;
  const tx = (v: number): number => {
    const a = p.xLog ? Math.log10(p.xMin) : p.xMin;
    const b = p.xLog ? Math.log10(p.xMax) : p.xMax;
    const x = p.xLog ? Math.log10(v) : v;
    return x0 + L + ((x - a) / (b - a)) * pw;
  };
  const ty = (v: number): number => {
    const a = p.yLog ? Math.log10(p.yMin) : p.yMin;
    const b = p.yLog ? Math.log10(p.yMax) : p.yMax;
    const c = Math.min(Math.max(v, p.yMin), p.yMax);
    const y = p.yLog ? Math.log10(c) : c;
    return y0 + T + ph - ((y - a) / (b - a)) * ph;
  };
  const o: string[] = [];
  o.push(`<text x="${x0 + L + pw / 2}" y="${y0 + 18}" text-anchor="middle" font-size="14" font-weight="bold">${esc(p.title)}</text>`);
  o.push(`<rect x="${x0 + L}" y="${y0 + T}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
  for (const t of p.yTicks) {
    const y = ty(t);
    o.push(`<line x1="${x0 + L}" x2="${x0 + L + pw}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`);
    o.push(`<text x="${x0 + L - 6}" y="${y + 4}" text-anchor="end" font-size="11">${fmtTick(t)}</text>`);
  }
  for (const t of p.xTicks) {
    const x = tx(t);
    o.push(`<line x1="${x}" x2="${x}" y1="${y0 + T}" y2="${y0 + T + ph}" stroke="#f0f0f0"/>`);
    o.push(`<text x="${x}" y="${y0 + T + ph + 16}" text-anchor="middle" font-size="11">${fmtTick(t)}</text>`);
  }
  o.push(`<text x="${x0 + L + pw / 2}" y="${y0 + h - 6}" text-anchor="middle" font-size="12">${esc(p.xLabel)}</text>`);
  o.push(`<text transform="translate(${x0 + 14},${y0 + T + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(p.yLabel)}</text>`);
  for (const hl of p.hlines ?? []) {
    const y = ty(hl.y);
    o.push(`<line x1="${x0 + L}" x2="${x0 + L + pw}" y1="${y}" y2="${y}" stroke="#555" stroke-dasharray="5,4"/>`);
    o.push(`<text x="${x0 + L + pw - 4}" y="${y - 4}" text-anchor="end" font-size="10" fill="#555">${esc(hl.label)}</text>`);
  }
  (p.markers ?? []).forEach((m, k) => {
    const x = tx(m.x);
    o.push(`<line x1="${x}" x2="${x}" y1="${y0 + T}" y2="${y0 + T + ph}" stroke="#999" stroke-dasharray="3,3"/>`);
    o.push(`<text x="${x - 3}" y="${y0 + T + 12 + 13 * k}" text-anchor="end" font-size="10" fill="#555">${esc(m.label)}</text>`);
  });
  o.push(`<clipPath id="c${x0}_${y0}"><rect x="${x0 + L}" y="${y0 + T}" width="${pw}" height="${ph}"/></clipPath>`);
  o.push(`<g clip-path="url(#c${x0}_${y0})">`);
  for (const s of p.series) {
    if (s.points.length === 0) continue;
    const d = s.points.map(([x, y], i) => `${i === 0 ? 'M' : 'L'}${tx(x).toFixed(1)},${ty(y).toFixed(1)}`).join('');
    o.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ' stroke-dasharray="6,3"' : ''}/>`);
    if (p.dots) for (const [x, y] of s.points) o.push(`<circle cx="${tx(x).toFixed(1)}" cy="${ty(y).toFixed(1)}" r="3" fill="${s.color}"/>`);
  }
  o.push('</g>');
  return o.join('\n');
}

function legendSvg(series: readonly Series[], x: number, y: number, width: number): string {
  const o: string[] = [];
  let cx = x;
  let cy = y;
  for (const s of series) {
    const text = label(s.name);
    const w = 44 + text.length * 6.6;
    if (cx + w > x + width) {
      cx = x;
      cy += 18;
    }
    o.push(`<line x1="${cx}" x2="${cx + 24}" y1="${cy - 4}" y2="${cy - 4}" stroke="${s.color}" stroke-width="3"${s.dash ? ' stroke-dasharray="6,3"' : ''}/>`);
    o.push(`<text x="${cx + 30}" y="${cy}" font-size="11">${esc(text)}</text>`);
    cx += w;
  }
  return o.join('\n');
}

function svgDoc(width: number, height: number, body: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${body}\n</svg>\n`;
}

function niceMax(v: number, steps: number[]): number {
  for (const s of steps) if (v <= s) return s;
  return steps[steps.length - 1] as number;
}

/** max/avg and nodes per stream against the number of nodes. */
export function scalingSvg(res: SimResults): string | undefined {
  const strategies = res.scenarios.find((s) => s.name.startsWith('sweep-'))?.strategies;
  if (!strategies || res.sweep.length < 2) return undefined;
  const series = (metric: (r: RunResult) => number): Series[] =>
    strategies.map((st) => ({
      name: st,
      color: COLORS[st] ?? '#333',
      dash: st.endsWith('+adm'),
      points: res.sweep.flatMap((n): [number, number][] => {
        const r = sweepRun(res, n, st);
        return r ? [[n, metric(r)]] : [];
      }),
    }));
  const la = series((r) => r.ramp.maxOverAvg);
  const rb = series((r) => r.ramp.relaysPerStream);
  const ideal: Series = {
    name: 'ideal',
    color: '#000',
    dash: true,
    points: res.sweep.flatMap((n): [number, number][] => {
      const r = sweepRun(res, n, strategies[0] as string);
      return r ? [[n, r.ramp.idealPerStream]] : [];
    }),
  };
  const xMin = Math.min(...res.sweep);
  const xMax = Math.max(...res.sweep);
  const yMaxA = niceMax(Math.max(...la.flatMap((s) => s.points.map((p) => p[1]))) * 1.05, [1.5, 2, 2.6, 3, 4, 6]);
  const yMaxB = niceMax(Math.max(...rb.flatMap((s) => s.points.map((p) => p[1]))) * 1.2, [10, 30, 100, 300, 1000]);
  const xTicks = [...res.sweep];
  const W = 1100;
  const H = 460;
  const body = [
    panelSvg(
      {
        title: 'max/avg node load at the end of the ramp',
        xLabel: 'playback nodes (log)',
        yLabel: 'busiest node ÷ average',
        xLog: true,
        xMin,
        xMax,
        yMin: 0.8,
        yMax: yMaxA,
        xTicks,
        yTicks: [1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6].filter((t) => t <= yMaxA),
        series: la,
        hlines: [{ y: 1.25, label: 'c = 1.25' }],
        dots: true,
      },
      0,
      0,
      W / 2,
      H - 50,
    ),
    panelSvg(
      {
        title: 'nodes serving a stream (relays), mean over streams',
        xLabel: 'playback nodes (log)',
        yLabel: 'nodes per stream (log)',
        xLog: true,
        yLog: true,
        xMin,
        xMax,
        yMin: 0.9,
        yMax: yMaxB,
        xTicks,
        yTicks: [1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 1000].filter((t) => t <= yMaxB),
        series: [...rb, ideal],
        dots: true,
      },
      W / 2,
      0,
      W / 2,
      H - 50,
    ),
    legendSvg(
      la.map((s) => s),
      70,
      H - 26,
      W - 80,
    ),
    `<text x="${W - 10}" y="${H - 6}" text-anchor="end" font-size="10" fill="#666">dashed black: ideal ceil(viewers / (1.25 × avg per node))</text>`,
  ].join('\n');
  return svgDoc(W, H, body);
}

/** Sorted node loads at 1M viewers in the headline scenario. */
export function distributionSvg(res: SimResults): string | undefined {
  const cfg = res.scenarios.find((s) => s.name === 'headline');
  if (!cfg) return undefined;
  const series: Series[] = [];
  for (const st of cfg.strategies) {
    const loads = findRun(res, 'headline', st)?.ramp.loads;
    if (!loads) continue;
    series.push({ name: st, color: COLORS[st] ?? '#333', dash: st.endsWith('+adm'), points: loads.map((v, i): [number, number] => [i + 1, v]) });
  }
  if (series.length === 0) return undefined;
  const n = cfg.nodes;
  const yMax = niceMax(Math.max(...series.flatMap((s) => s.points.map((p) => p[1]))) * 1.05, [1.5, 2, 2.6, 3, 4]);
  const W = 900;
  const H = 520;
  const body = [
    panelSvg(
      {
        title: `node loads at ${int(cfg.viewers)} viewers, ${n} nodes (sorted, busiest first)`,
        xLabel: 'node rank',
        yLabel: 'load ÷ average',
        xMin: 1,
        xMax: n,
        yMin: 0,
        yMax,
        xTicks: [1, ...Array.from({ length: 5 }, (_, i) => Math.round(((i + 1) * n) / 5))],
        yTicks: [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4].filter((t) => t <= yMax),
        series,
        hlines: [{ y: 1.25, label: 'c = 1.25' }],
      },
      0,
      0,
      W,
      H - 70,
    ),
    legendSvg(series, 70, H - 46, W - 80),
  ].join('\n');
  return svgDoc(W, H, body);
}

/** max/avg per tick in the headline scenario (ramp, then churn with a kill and a join). */
export function timelineSvg(res: SimResults): string | undefined {
  const cfg = res.scenarios.find((s) => s.name === 'headline');
  if (!cfg || !cfg.series) return undefined;
  const show = ['bl-1.25', 'hrw', 'rr', 'll', 'bl-1.25+adm'];
  const series: Series[] = [];
  const from = Math.floor(cfg.rampTicks / 10);
  for (const st of show) {
    const s = findRun(res, 'headline', st)?.series;
    if (!s) continue;
    series.push({ name: st, color: COLORS[st] ?? '#333', dash: st.endsWith('+adm'), points: s.slice(from).map((v, i): [number, number] => [i + from, v]) });
  }
  if (series.length === 0) return undefined;
  const total = cfg.rampTicks + cfg.churnTicks;
  const W = 1000;
  const H = 480;
  const markers = [{ x: cfg.rampTicks, label: 'ramp ends' }];
  if (cfg.failAt >= 0) markers.push({ x: cfg.rampTicks + cfg.failAt, label: 'node killed' });
  if (cfg.joinAt >= 0) markers.push({ x: cfg.rampTicks + cfg.joinAt, label: 'node joins' });
  const step = total > 400 ? 100 : total > 100 ? 20 : 10;
  const body = [
    panelSvg(
      {
        title: `busiest node ÷ average, every tick (${cfg.nodes} nodes, ${int(cfg.viewers)} viewers, K=${cfg.staleK})`,
        xLabel: 'tick (s)',
        yLabel: 'max/avg',
        xMin: from,
        xMax: total,
        yMin: 0.9,
        yMax: 2.6,
        xTicks: Array.from({ length: Math.floor(total / step) + 1 }, (_, i) => i * step).filter((t) => t >= from),
        yTicks: [1, 1.25, 1.5, 2, 2.5],
        series,
        markers,
        hlines: [{ y: 1.25, label: 'c = 1.25' }],
      },
      0,
      0,
      W,
      H - 50,
    ),
    legendSvg(series, 70, H - 26, W - 80),
  ].join('\n');
  return svgDoc(W, H, body);
}

/** SVG → PNG: rsvg-convert, else headless Chromium; returns an error text when neither works. */
export function svgToPng(svgPath: string, pngPath: string, width: number, height: number): string | undefined {
  const r = spawnSync('rsvg-convert', ['-o', pngPath, svgPath], { encoding: 'utf8' });
  if (r.status === 0 && existsSync(pngPath)) return undefined;
  const rsvgErr = r.error ? r.error.message : r.stderr;
  for (const bin of ['chromium', 'chromium-browser', 'google-chrome']) {
    const c = spawnSync(bin, ['--headless', '--no-sandbox', '--disable-gpu', `--screenshot=${pngPath}`, `--window-size=${width},${height}`, `file://${svgPath}`], { encoding: 'utf8', timeout: 60_000 });
    if (c.status === 0 && existsSync(pngPath)) return undefined;
  }
  return `could not convert ${svgPath} to PNG: rsvg-convert: ${String(rsvgErr).trim() || 'failed'}; no working headless chromium`;
}

/** Write results.json, results.md and the charts into dir. */
export function writeReport(res: SimResults, dir: string, png = true): void {
  const charts: [string, string | undefined, number, number][] = [
    ['scaling', scalingSvg(res), 1100, 460],
    ['load-distribution', distributionSvg(res), 900, 520],
    ['timeline', timelineSvg(res), 1000, 480],
  ];
  res.charts = [];
  const notes: string[] = [];
  for (const [name, svg, w, h] of charts) {
    if (!svg) continue;
    const svgPath = join(dir, `${name}.svg`);
    writeFileSync(svgPath, svg);
    if (!png) {
      res.charts.push(`${name}.svg`);
      continue;
    }
    const err = svgToPng(svgPath, join(dir, `${name}.png`), w, h);
    if (err) {
      notes.push(err);
      res.charts.push(`${name}.svg`);
    } else {
      rmSync(svgPath);
      res.charts.push(`${name}.png`);
    }
  }
  if (notes.length) res.chartNote = notes.join('\n');
  writeFileSync(join(dir, 'results.json'), `${JSON.stringify(res, null, 1)}\n`);
  writeFileSync(join(dir, 'results.md'), renderMarkdown(res));
}
