/**
 * Measured figures of the chaos suite. Each scenario (a test file, run in its own process)
 * writes its rows as JSON into the results directory (`CHAOS_RESULTS_DIR`, default
 * `$TMPDIR/meshcast-chaos-results/`); `report.ts` merges them into `tests/chaos-results.json`
 * and renders `tests/chaos-results.md`.
 *
 * A row is either a judged figure (a target and whether the measured value meets it) or an
 * informational one (neither). `report.ts` fails the run when a judged row of this run misses its
 * target; the tests themselves assert with up to twice the target as the hard guard, so a loaded
 * machine shows up as a missed target in the report before it shows up as a failing test.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export interface ResultRow {
  /** What was measured, e.g. "viewer plays again after the new publish". */
  metric: string;
  /** The measured value (exact, not rounded to the target). */
  value: number | string | boolean | null;
  unit?: string;
  /** The design's target, in words (e.g. "≤ 2000"); present exactly when `meets` is not null. */
  target?: string;
  /** Whether the value meets the design target (null: informational, no target). */
  meets: boolean | null;
  note?: string;
}

export interface ScenarioResult {
  id: string;
  title: string;
  /** Mesh timings and limits the scenario ran with. */
  timings: string;
  /** Whether every assertion of the test passed (assertions use up to twice the target). */
  passed: boolean;
  error?: string;
  rows: ResultRow[];
  startedAt: string;
  durationMs: number;
}

/** Options of `ScenarioRecorder.row`: a judged row names its target and its verdict together. */
export type RowOptions = { unit?: string | undefined; note?: string } & ({ target: string; meets: boolean } | { target?: never; meets?: never });

/** Judged rows of these scenarios that missed their target, as "scenario: metric = value (target …)". */
export function missedTargets(scenarios: readonly ScenarioResult[]): string[] {
  return scenarios.flatMap((s) => s.rows.filter((r) => r.meets === false).map((r) => `${s.id}: ${r.metric} = ${String(r.value)}${r.unit ? ` ${r.unit}` : ''} (target ${r.target ?? '?'})`));
}

export const RESULTS_DIR = resolve(process.env['CHAOS_RESULTS_DIR'] ?? join(tmpdir(), 'meshcast-chaos-results'));

/** Collects rows for one scenario; `write()` persists them (call it in a finally block so failures are recorded too). */
export class ScenarioRecorder {
  readonly rows: ResultRow[] = [];
  private readonly t0 = Date.now();
  private error: string | undefined;

  constructor(
    readonly id: string,
    readonly title: string,
    readonly timings: string,
  ) {}

  /** Record a figure and print it (`# ` lines show up in the node:test output). */
  row(metric: string, value: ResultRow['value'], opts: RowOptions = {}): ResultRow {
    const r: ResultRow = { metric, value, meets: opts.meets ?? null };
    if (opts.unit !== undefined) r.unit = opts.unit;
    if (opts.target !== undefined) r.target = opts.target;
    if (opts.note !== undefined) r.note = opts.note;
    this.rows.push(r);
    const v = typeof value === 'number' ? `${Math.round(value * 10) / 10}${opts.unit ? ` ${opts.unit}` : ''}` : String(value);
    const mark = r.meets === null ? '' : r.meets ? ' [meets target]' : ' [MISSES target]';
    console.log(`# [${this.id}] ${metric}: ${v}${opts.target ? ` (target ${opts.target})` : ''}${mark}${opts.note ? ` — ${opts.note}` : ''}`);
    return r;
  }

  fail(err: unknown): void {
    this.error = err instanceof Error ? `${err.message}` : String(err);
  }

  write(): ScenarioResult {
    const res: ScenarioResult = {
      id: this.id,
      title: this.title,
      timings: this.timings,
      passed: this.error === undefined,
      rows: this.rows,
      startedAt: new Date(this.t0).toISOString(),
      durationMs: Date.now() - this.t0,
    };
    if (this.error !== undefined) res.error = this.error.slice(0, 2000);
    mkdirSync(RESULTS_DIR, { recursive: true });
    writeFileSync(join(RESULTS_DIR, `${this.id}.json`), `${JSON.stringify(res, null, 2)}\n`);
    return res;
  }

  /** Runs the scenario body, records a failure, always writes the rows, and rethrows. */
  async run(body: (rec: this) => Promise<void>): Promise<void> {
    try {
      await body(this);
    } catch (err) {
      this.fail(err);
      throw err;
    } finally {
      this.write();
    }
  }
}

export function fmtTimings(t: Record<string, number | string>): string {
  return Object.entries(t)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}
