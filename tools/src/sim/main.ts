/**
 * `npm run sim`: the placement simulation (docs/design.md) — bounded-load weighted HRW
 * (the real BoundedLoadRing / rankPlaybackNodes / hrwScore / chooseRelayParent, no
 * sockets) against plain HRW, round robin and least-loaded, from 10 to 1,000 nodes and
 * up to 1,000,000 viewers. Writes docs/sim/results.{md,json} and PNG charts, and the
 * headline tables into docs/placement.md. See docs/placement.md.
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { fullPlan, parseStrategy, quickPlan, type Plan } from './config.ts';
import type { MovesResult, RunResult } from './engine.ts';
import { planJobs } from './jobs.ts';
import { runJobs } from './pool.ts';
import { headlineMarkdown, writeReport, type SimResults } from './report.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../../..');

const USAGE = `usage: npm run sim -- [options]

  --quick            CI-sized run (20 nodes, 20k viewers; seconds) written to tmp/sim-quick
  --out DIR          output directory (default docs/sim, or tmp/sim-quick with --quick)
  --seed N           PRNG seed (default 1)
  --workers K        worker processes (default: min(2, cores); 0 = in this process)
  --only LIST        only these scenarios (headline, hetero, sweep-<n>, stale-k<k>-r<ramp>)
  --real LIST        strategies of the headline whose EVERY decision is taken by the real
                     BoundedLoadRing of every router (slow: ~100 µs per viewer at 100 nodes)
  --no-png           keep SVG charts, no PNG conversion
  --no-docs          do not rewrite the headline block of docs/placement.md
`;

function parse(): { plan: Plan; mode: 'full' | 'quick'; out: string; seed: number; workers: number; png: boolean; docs: boolean } {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      out: { type: 'string' },
      seed: { type: 'string', default: '1' },
      workers: { type: 'string' },
      only: { type: 'string' },
      real: { type: 'string' },
      'no-png': { type: 'boolean', default: false },
      'no-docs': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const seed = Number(values.seed);
  if (!Number.isInteger(seed)) throw new Error('--seed must be an integer');
  const mode = values.quick ? 'quick' : 'full';
  const plan = mode === 'quick' ? quickPlan(seed) : fullPlan(seed);
  if (values.only) {
    const keep = new Set(values.only.split(','));
    plan.scenarios = plan.scenarios.filter((s) => keep.has(s.name));
    if (plan.scenarios.length === 0) throw new Error(`--only: no such scenario (${values.only})`);
  }
  if (values.real) {
    const list = values.real.split(',');
    for (const s of list) parseStrategy(s);
    for (const s of plan.scenarios) if (s.name === 'headline') s.realDecisions = list;
  }
  const workers = values.workers !== undefined ? Number(values.workers) : Math.min(2, os.availableParallelism());
  const out = resolve(REPO_ROOT, values.out ?? (mode === 'quick' ? 'tmp/sim-quick' : 'docs/sim'));
  return { plan, mode, out, seed, workers, png: !values['no-png'], docs: !values['no-docs'] && mode === 'full' && !values.out && !values.only };
}

async function main(): Promise<void> {
  const opts = parse();
  const t0 = performance.now();
  const jobs = planJobs(opts.plan);
  const totalCost = jobs.reduce((a, j) => a + j.cost, 0);
  const frac = new Map<string, number>();
  const tty = Boolean(process.stderr.isTTY);
  const bar = tty
    ? new cliProgress.SingleBar({ format: 'sim {bar} {percentage}% | {done}/{jobs} jobs | {elapsed}s | {last}', hideCursor: true, barsize: 30, fps: 5 }, cliProgress.Presets.shades_classic)
    : undefined;
  let done = 0;
  let lastLine = 0;
  const elapsed = (): number => Math.round((performance.now() - t0) / 1000);
  const progress = (): number => jobs.reduce((a, j) => a + j.cost * (frac.get(j.id) ?? 0), 0) / totalCost;
  process.stderr.write(
    `${tty ? '' : `[sim] `}${jobs.length} jobs over ${opts.plan.scenarios.length} scenarios, ${opts.workers} worker(s), writing to ${opts.out}\n`,
  );
  bar?.start(1000, 0, { done: 0, jobs: jobs.length, elapsed: 0, last: 'starting' });
  const results = await runJobs(jobs, opts.workers, {
    progress: (id, f) => {
      frac.set(id, f);
      bar?.update(Math.round(progress() * 1000), { done, jobs: jobs.length, elapsed: elapsed(), last: id });
    },
    done: (job, ms) => {
      frac.set(job.id, 1);
      done++;
      if (bar) bar.update(Math.round(progress() * 1000), { done, jobs: jobs.length, elapsed: elapsed(), last: `${job.id} ${(ms / 1000).toFixed(1)}s` });
      else if (performance.now() - lastLine > 5000 || done === jobs.length) {
        lastLine = performance.now();
        process.stderr.write(`[sim] ${done}/${jobs.length} jobs, ${(progress() * 100).toFixed(0)} %, ${elapsed()} s (last: ${job.id} ${(ms / 1000).toFixed(1)} s)\n`);
      }
    },
  });
  bar?.stop();

  const order = new Map(jobs.map((j, i) => [j.id, i]));
  results.sort((a, b) => (order.get(a.job.id) ?? 0) - (order.get(b.job.id) ?? 0));
  const runs: RunResult[] = [];
  const moves: MovesResult[] = [];
  for (const r of results) {
    if (r.output.kind === 'run') runs.push(r.output.run);
    else moves.push(r.output.moves);
  }
  const cpus = os.cpus();
  const argv = process.argv.slice(2);
  const res: SimResults = {
    generatedAt: new Date().toISOString(),
    mode: opts.mode,
    seed: opts.seed,
    command: `npm run sim${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    machine: { cpus: cpus.length, model: cpus[0]?.model.trim() ?? 'unknown', node: process.version },
    wallSeconds: (performance.now() - t0) / 1000,
    workers: opts.workers,
    sweep: opts.plan.sweep.filter((n) => opts.plan.scenarios.some((s) => s.name === `sweep-${n}` || (s.name === 'headline' && s.nodes === n))),
    scenarios: opts.plan.scenarios,
    runs,
    moves,
    charts: [],
  };
  mkdirSync(opts.out, { recursive: true });
  writeReport(res, opts.out, opts.png);
  if (opts.docs) updatePlacementDoc(res);

  // summary on stdout
  const head = opts.plan.scenarios.find((s) => s.name === 'headline');
  if (head) {
    process.stdout.write(`\n${headlineMarkdown(res)}\n\n`);
  }
  const bad = runs.filter((r) => r.verify.mismatches || r.verify.pendingMismatches);
  process.stdout.write(
    `${runs.reduce((a, r) => a + r.verify.checks, 0)} decisions checked against the real BoundedLoadRing, ${bad.length} run(s) with mismatches. ${res.wallSeconds.toFixed(0)} s. Wrote ${join(opts.out, 'results.md')}${res.chartNote ? `\n${res.chartNote}` : ''}\n`,
  );
  if (bad.length) process.exitCode = 1;
}

/** Replace the block between the sim markers in docs/placement.md with the fresh headline tables. */
function updatePlacementDoc(res: SimResults): void {
  const path = join(REPO_ROOT, 'docs/placement.md');
  if (!existsSync(path)) return;
  const text = readFileSync(path, 'utf8');
  const start = '<!-- sim:headline:start -->';
  const end = '<!-- sim:headline:end -->';
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  if (a < 0 || b < a) return;
  writeFileSync(path, `${text.slice(0, a + start.length)}\n${headlineMarkdown(res)}\n${text.slice(b)}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`sim failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
