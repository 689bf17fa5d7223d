/**
 * The chaos suite's own checks, on made-up data: the interleave check flags an old publisher's
 * frame after a new one's, and the report fails the run when a figure misses its target.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { interleaving, interleavingAll, type FrameRecord } from '../chaos/lib/viewer.ts';
import type { ScenarioResult } from '../chaos/lib/results.ts';

function frames(seq: Array<[pub: number | undefined, n: number]>): { frames: FrameRecord[]; label: string } {
  return { label: 'v', frames: seq.map(([pub, n], i) => ({ type: 9, timestamp: i * 33, n, pub, at: i, key: false, seqHeader: false })) };
}

test('interleave check: publishers one after another are fine', () => {
  const c = interleaving(frames([[1, 0], [1, 1], [2, 100], [2, 101], [3, 200]]));
  assert.deepEqual(c, { violations: 0, publishers: 3, unstamped: 0, unknown: 0 });
});

test('epoch invariant: with the publishers in the order they took the stream, an older epoch after a newer one is a violation even when first seen late', () => {
  // The viewer got epoch 2 first, then (never seen before) epoch 1: by arrival order that looks fine, by epoch order it is not.
  const late = frames([[2, 100], [2, 101], [1, 5]]);
  assert.equal(interleaving(late).violations, 0);
  const c = interleaving(late, [1, 2]);
  assert.equal(c.violations, 1);
  assert.match(c.first ?? '', /frame 5 of epoch #1 after epoch #2/);
  // In order, nothing to flag; a publisher outside the order is counted apart, not judged.
  assert.deepEqual(interleaving(frames([[1, 0], [1, 1], [2, 100], [9, 3]]), [1, 2]), { violations: 0, publishers: 2, unstamped: 0, unknown: 1 });
  assert.equal(interleavingAll([late, frames([[1, 0]])], [1, 2]).violations, 1);
});

test('interleave check: a frame of an earlier publisher after a later one started is a violation', () => {
  const c = interleaving(frames([[1, 0], [2, 100], [1, 1], [2, 101], [1, 2]]));
  assert.equal(c.violations, 2);
  assert.match(c.first ?? '', /frame 1 of publisher #1 after publisher #2/);
  // Going back two publishers counts too.
  assert.equal(interleaving(frames([[1, 0], [2, 100], [3, 200], [1, 1]])).violations, 1);
});

test('interleave check: unstamped frames are counted, not judged; the sum over viewers names the first offender', () => {
  const ok = frames([[1, 0], [undefined, 1]]);
  const bad = { ...frames([[5, 0], [6, 100], [5, 1]]), label: 'bad' };
  const all = interleavingAll([ok, bad]);
  assert.equal(all.violations, 1);
  assert.equal(all.unstamped, 1);
  assert.deepEqual(all.perViewer, [0, 1]);
  assert.match(all.first ?? '', /^bad: /);
});

function scenario(id: string, rows: ScenarioResult['rows'], passed = true): ScenarioResult {
  return { id, title: id, timings: 't', passed, rows, startedAt: new Date(0).toISOString(), durationMs: 1 };
}

function runReport(results: ScenarioResult[]): { status: number | null; out: string; md: string } {
  const dir = mkdtempSync(join(tmpdir(), 'chaos-gate-'));
  try {
    const resultsDir = join(dir, 'results');
    const outDir = join(dir, 'out');
    for (const d of [resultsDir, outDir]) mkdirSync(d);
    for (const r of results) writeFileSync(join(resultsDir, `${r.id}.json`), JSON.stringify(r));
    const p = spawnSync(process.execPath, ['--import', 'tsx', resolve(import.meta.dirname, '../chaos/report.ts')], {
      env: { ...process.env, CHAOS_RESULTS_DIR: resultsDir, CHAOS_REPORT_DIR: outDir },
      encoding: 'utf8',
    });
    return { status: p.status, out: p.stdout + p.stderr, md: readFileSync(join(outDir, 'chaos-results.md'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('report: every judged figure met its target → exit 0', () => {
  const r = runReport([scenario('owner-kill', [{ metric: 'plays again', value: 70, unit: 'ms', target: '≤ 2000', meets: true }, { metric: 'info', value: 3, meets: null }])]);
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, /0 figure\(s\) missed their target/);
});

test('report: a figure that missed its target (test passed at 2× target) → exit 1, naming it', () => {
  const r = runReport([
    scenario('owner-kill', [{ metric: 'plays again', value: 2500, unit: 'ms', target: '≤ 2000', meets: false }]),
    scenario('drain', [{ metric: 'exit code', value: 0, target: '0', meets: true }]),
  ]);
  assert.equal(r.status, 1, r.out);
  assert.match(r.out, /missed target: owner-kill: plays again = 2500 ms \(target ≤ 2000\)/);
  assert.doesNotMatch(r.out, /missed target: drain/);
  assert.match(r.md, /\| plays again \| 2500 ms \| ≤ 2000 \| \*\*no\*\* \|/);
});

test('report: a failed scenario → exit 1', () => {
  const r = runReport([scenario('relay-kill', [], false)]);
  assert.equal(r.status, 1, r.out);
  assert.match(r.out, /FAILED: relay-kill/);
});
