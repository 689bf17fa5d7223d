import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  decodeNameToken,
  decodeStreamToken,
  encodeNameToken,
  encodeStreamToken,
  MAX_STREAM_TOKEN_BYTES,
  StreamNameError,
  StreamTokenError,
} from '../src/index.ts';
import { isValidKvKey, isValidPublishSubject } from '../src/bus.ts';


function expectedLength(s: string): number | 'lone-surrogate' {
  if (/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s)) return 'lone-surrogate';
  if (s === '') return 1;
  let n = 0;
  for (const ch of s) n += /^[A-Za-z0-9_-]$/.test(ch) ? 1 : 3 * new TextEncoder().encode(ch).length;
  return n;
}

/** Unicode names that fit the token limit. */
const fitting = fc.string({ unit: 'grapheme', maxLength: 30 }).filter((s) => {
  const n = expectedLength(s);
  return n !== 'lone-surrogate' && n <= MAX_STREAM_TOKEN_BYTES;
});

test('round trip for any Unicode names, or a StreamNameError exactly when over the limit (property)', () => {
  fc.assert(
    fc.property(fitting, fitting, (app, stream) => {
      const t = encodeStreamToken(app, stream);
      assert.deepStrictEqual(decodeStreamToken(t), { app, stream });
    }),
    { numRuns: 1000 },
  );
  const wide = fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 120 }),
    fc.string({ unit: 'binary', maxLength: 120 }),
    fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 40 }),
    fc.string({ maxLength: 300 }),
  );
  fc.assert(
    fc.property(wide, (s) => {
      const want = expectedLength(s);
      if (want === 'lone-surrogate' || want > MAX_STREAM_TOKEN_BYTES) {
        assert.throws(() => encodeNameToken(s), StreamNameError);
      } else {
        const t = encodeNameToken(s);
        assert.equal(t.length, want);
        assert.equal(decodeNameToken(t), s);
      }
    }),
    { numRuns: 3000 },
  );
});

test('tokens never contain forbidden characters and are valid subjects and KV keys (property)', () => {
  fc.assert(
    fc.property(fitting, fitting, (app, stream) => {
      const a = encodeNameToken(app);
      assert.match(a, /^[A-Za-z0-9_=-]+$/);
      assert.ok(!/[.*>\s]/.test(a));
      const key = encodeStreamToken(app, stream);
      assert.equal(key.split('.').length, 2);
      assert.ok(isValidKvKey(key), key);
      assert.ok(isValidPublishSubject(`meshcast.x.${key}`), key);
      assert.ok(isValidKvKey(`${key}.node-1`));
    }),
    { numRuns: 2000 },
  );
});

test('distinct names give distinct tokens (property)', () => {
  fc.assert(
    fc.property(fitting, fitting, (a, b) => {
      fc.pre(a !== b);
      assert.notEqual(encodeNameToken(a), encodeNameToken(b));
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fitting, fitting, fitting, fitting, (a1, s1, a2, s2) => {
      fc.pre(a1 !== a2 || s1 !== s2);
      assert.notEqual(encodeStreamToken(a1, s1), encodeStreamToken(a2, s2));
    }),
    { numRuns: 1000 },
  );
});

test('weird stream keys are encoded readably and safely', () => {
  const cases: [string, string][] = [
    ['a.b', 'a=2Eb'],
    ['*', '=2A'],
    ['>', '=3E'],
    ['with space', 'with=20space'],
    ['直播', '=E7=9B=B4=E6=92=AD'],
    ['=', '=3D'],
    ['', '='],
    ['live_cam-1', 'live_cam-1'],
    ['a/b', 'a=2Fb'],
  ];
  for (const [name, token] of cases) {
    assert.equal(encodeNameToken(name), token, name);
    assert.equal(decodeNameToken(token), name);
  }
  assert.equal(encodeStreamToken('live', 'a.b'), 'live.a=2Eb');
  assert.deepStrictEqual(decodeStreamToken('live.=E7=9B=B4=E6=92=AD'), { app: 'live', stream: '直播' });
});

test('too long names throw a typed StreamNameError with a clear message', () => {
  const oneKb = 'k'.repeat(1024);
  assert.throws(
    () => encodeStreamToken('live', oneKb),
    (e: unknown) => e instanceof StreamNameError && e.code === 'STREAM_NAME' && /stream name is too long/.test(e.message) && /240/.test(e.message),
  );
  assert.throws(() => encodeStreamToken('直'.repeat(27), 'x'), (e: unknown) => e instanceof StreamNameError && /app name/.test(e.message));
  // exactly at the limit is fine
  assert.equal(encodeNameToken('k'.repeat(MAX_STREAM_TOKEN_BYTES)).length, MAX_STREAM_TOKEN_BYTES);
  assert.throws(() => encodeNameToken('k'.repeat(MAX_STREAM_TOKEN_BYTES + 1)), StreamNameError);
  // huge input fails fast
  const t0 = Date.now();
  assert.throws(() => encodeNameToken('直'.repeat(1_000_000)), StreamNameError);
  assert.ok(Date.now() - t0 < 200);
  // lone surrogates are not well-formed Unicode
  assert.throws(() => encodeNameToken('a\uD800b'), (e: unknown) => e instanceof StreamNameError && /surrogate/.test(e.message));
});

test('decoding rejects non-canonical or malformed tokens', () => {
  for (const bad of ['=41', '=e7=9b=b4', '=G1', '=4', 'a.b', 'a b', '=FF', '=C3', '*', '>', '', '==']) {
    assert.throws(() => decodeNameToken(bad), StreamTokenError, bad);
  }
  assert.throws(() => decodeStreamToken('onlyone'), StreamTokenError);
  assert.throws(() => decodeStreamToken('a.b.c'), StreamTokenError);
});
