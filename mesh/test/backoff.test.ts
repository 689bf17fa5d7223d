import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, FailureLogLimiter } from '../src/index.ts';

/** A scripted random source: returns the given values in turn. */
function scripted(...xs: number[]): () => number {
  let i = 0;
  return () => {
    const x = xs[i++ % xs.length];
    if (x === undefined) throw new Error('no scripted value');
    return x;
  };
}

test('backoff: the top of each jitter range grows ×3 from the base up to the cap', () => {
  const b = new Backoff({ baseMs: 250, capMs: 5000, random: () => 0.999999 });
  const ds = Array.from({ length: 6 }, () => b.next());
  assert.deepEqual(ds, [750, 2250, 5000, 5000, 5000, 5000]);
  assert.equal(b.failures, 6);
});

test('backoff: the bottom of each range is the base (never a zero delay, never lockstep at a constant)', () => {
  const b = new Backoff({ baseMs: 250, capMs: 5000, random: () => 0 });
  assert.deepEqual([b.next(), b.next(), b.next()], [250, 250, 250]);
});

test('backoff: a delay is drawn from [base, 3 × the previous delay]', () => {
  const b = new Backoff({ baseMs: 100, capMs: 10_000, random: scripted(0.5, 0.5, 0.25) });
  const d1 = b.next(); // [100, 300] → 200
  const d2 = b.next(); // [100, 600] → 350
  const d3 = b.next(); // [100, 1050] → 337.5 → 338
  assert.deepEqual([d1, d2, d3], [200, 350, 338]);
});

test('backoff: two actors with different random draws retry at different times', () => {
  const a = new Backoff({ random: scripted(0.1, 0.9, 0.3) });
  const b = new Backoff({ random: scripted(0.7, 0.2, 0.8) });
  const da = [a.next(), a.next(), a.next()];
  const db = [b.next(), b.next(), b.next()];
  for (let i = 0; i < 3; i++) assert.notEqual(da[i], db[i]);
});

test('backoff: reset after a success starts again from the base range', () => {
  const b = new Backoff({ baseMs: 250, capMs: 5000, random: () => 0.999999 });
  b.next();
  b.next();
  b.next();
  b.reset();
  assert.equal(b.failures, 0);
  assert.equal(b.next(), 750);
});

test('backoff: rejects a cap below the base or a non-positive base', () => {
  assert.throws(() => new Backoff({ baseMs: 500, capMs: 100 }), RangeError);
  assert.throws(() => new Backoff({ baseMs: 0 }), RangeError);
});

test('failure log: the first failure of a streak warns, the next ones are debug until the interval has passed', () => {
  let now = 1_000_000;
  const l = new FailureLogLimiter({ intervalMs: 30_000, now: () => now });
  assert.deepEqual(l.failure(), { level: 'warn', suppressed: 0, streak: 1 });
  const between: string[] = [];
  for (let i = 0; i < 10; i++) {
    now += 2000;
    between.push(l.failure().level);
  }
  assert.deepEqual(between, Array(10).fill('debug'));
  now += 10_000; // 30 s after the first warn
  assert.deepEqual(l.failure(), { level: 'warn', suppressed: 10, streak: 12 });
  now += 1000;
  assert.equal(l.failure().level, 'debug');
});

test('failure log: a success ends the streak and reports its length; the next failure warns at once', () => {
  let now = 0;
  const l = new FailureLogLimiter({ intervalMs: 30_000, now: () => now });
  l.failure();
  now += 100;
  l.failure();
  now += 100;
  l.failure();
  assert.equal(l.success(), 3);
  assert.equal(l.success(), 0);
  now += 100;
  assert.deepEqual(l.failure(), { level: 'warn', suppressed: 0, streak: 1 });
});

test('failure log: over an hour of failures every 500 ms, at most one warn line per 30 s', () => {
  let now = 0;
  const l = new FailureLogLimiter({ intervalMs: 30_000, now: () => now });
  let warns = 0;
  let suppressed = 0;
  const n = 7200;
  for (let i = 0; i < n; i++) {
    const d = l.failure();
    if (d.level === 'warn') {
      warns++;
      suppressed += d.suppressed;
    }
    now += 500;
  }
  assert.equal(warns, 120);
  // Every failure is either a warn line or counted in the next one (the last interval's are still pending).
  assert.ok(n - warns - suppressed < 60, `${n} failures, ${warns} warn lines, ${suppressed} counted`);
});
