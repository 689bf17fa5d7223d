/**
 * Decode budgets: a message's *expanded* size (every AMF0 object reference, AMF3 object,
 * string and traits reference counted at its target's full size each time it is used) is
 * bounded by AmfLimits.maxExpandedBytes. A small message that references one big value many
 * times is refused with AMF_TOO_LARGE, quickly, instead of decoding into a DAG that
 * JSON.stringify, String() or the AMF0 re-encoder would then walk for seconds.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import fc from 'fast-check';
import { AmfError } from '../src/errors.ts';
import { AmfDate, AmfDictionary, AmfVector, AmfXml, AmfXmlDocument, DEFAULT_AMF_LIMITS, decodeAmf0, encodeAmf0 } from '../src/amf0.ts';
import { decodeAmf3Command, decodeAmf3Value, encodeAmf3Command, encodeAmf3Value } from '../src/amf3.ts';
import type { AmfLimits, AmfValue } from '../src/amf0.ts';

const limitsWith = (maxExpandedBytes: number): AmfLimits => ({ ...DEFAULT_AMF_LIMITS, maxExpandedBytes });

/**
 * Independent oracle: a lower bound of what walking the decoded value costs, in bytes
 * (each value at least 1, strings, keys and byte arrays at their UTF-8/byte length), shared
 * instances walked again at every use. Stops counting past `cap` so a decoder bug cannot
 * hang the test.
 */
function walkedBytes(values: readonly AmfValue[], cap: number): number {
  let n = 0;
  const visit = (v: AmfValue): void => {
    if (n > cap) return;
    n += 1;
    if (typeof v === 'string') n += Buffer.byteLength(v);
    else if (Buffer.isBuffer(v)) n += v.length;
    else if (Array.isArray(v)) for (const x of v) visit(x);
    else if (v instanceof AmfXml || v instanceof AmfXmlDocument) n += Buffer.byteLength(v.xml);
    else if (v instanceof AmfVector) {
      if (Array.isArray(v.items)) for (const x of v.items) visit(x);
      else n += v.items.length;
    } else if (v instanceof AmfDictionary) {
      for (const [k, x] of v.entries) {
        visit(k);
        visit(x);
      }
    } else if (typeof v === 'object' && v !== null && !(v instanceof AmfDate)) {
      for (const [k, x] of Object.entries(v)) {
        n += Buffer.byteLength(k);
        visit(x);
      }
    }
  };
  for (const v of values) visit(v);
  return n;
}

const scalar = fc.oneof(fc.string({ maxLength: 40 }), fc.double({ noNaN: true }), fc.boolean(), fc.constant(null));

/**
 * A DAG: level 0 is a small array of scalars; level i+1 holds `fan` uses of the same level-i
 * instance (plus scalars and, for objects, keys). Encoders write a reference for every
 * repeat, so the wire stays small while the expanded size grows as fan^levels.
 */
const dagArb = fc
  .record({
    leaf: fc.array(scalar, { minLength: 1, maxLength: 6 }),
    bigString: fc.nat({ max: 3000 }),
    levels: fc.integer({ min: 1, max: 5 }),
    fan: fc.integer({ min: 1, max: 6 }),
    asObjects: fc.boolean(),
    extras: fc.array(scalar, { maxLength: 3 }),
  })
  .map(({ leaf, bigString, levels, fan, asObjects, extras }) => {
    let v: AmfValue = [...leaf, 'x'.repeat(bigString)];
    for (let i = 0; i < levels; i++) {
      const uses: AmfValue[] = Array.from({ length: fan }, () => v);
      if (asObjects) {
        const o: Record<string, AmfValue> = {};
        uses.forEach((u, j) => (o[`k${i}_${j}`] = u));
        extras.forEach((e, j) => (o[`e${j}`] = e));
        v = o;
      } else {
        v = [...uses, ...extras];
      }
    }
    return v;
  });

/** The same value with every shared instance copied out: what the references expand to. */
const unshared = (v: AmfValue): AmfValue => JSON.parse(JSON.stringify(v)) as AmfValue;

function isTooLarge(r: unknown): boolean {
  return r instanceof AmfError && r.code === 'AMF_TOO_LARGE';
}

describe('AMF decode budgets (properties)', () => {
  test('AMF0: a message decodes iff its expanded form fits the budget; what decodes walks within it', () => {
    fc.assert(
      fc.property(dagArb, fc.integer({ min: 16, max: 200_000 }), (value, budget) => {
        const wire = encodeAmf0(['cmd', 1, null, value]);
        const inline = unshared(value);
        // The expanded size is exactly the size of the same message with no references at all.
        const expanded = encodeAmf0(['cmd', 1, null, inline]).length;
        const r = decodeAmf0(wire, limitsWith(budget));
        if (expanded <= budget) {
          assert.ok(!(r instanceof Error), `expanded ${expanded} ≤ budget ${budget} but refused: ${String(r)}`);
          assert.ok(walkedBytes(r, budget) <= budget);
        } else {
          assert.ok(isTooLarge(r), `expanded ${expanded} > budget ${budget} but got ${r instanceof Error ? r.code : 'a value'}`);
        }
      }),
      { numRuns: 400 },
    );
  });

  test('AMF3 (objects and strings by reference, inside the avmplus switch): whatever decodes walks within the budget', () => {
    fc.assert(
      fc.property(dagArb, fc.integer({ min: 16, max: 200_000 }), fc.boolean(), (value, budget, asCommand) => {
        const r = asCommand
          ? decodeAmf3Command(encodeAmf3Command(['cmd', 1, null, value]), limitsWith(budget))
          : decodeAmf3Value(encodeAmf3Value(value), 0, limitsWith(budget));
        if (r instanceof Error) {
          assert.ok(isTooLarge(r), `unexpected ${r.code}`);
          // Refused only when the expansion is really over: the inline AMF0 form is within a small factor of AMF3's.
          assert.ok(encodeAmf0([inlineOf(value)]).length * 2 + 64 > budget, 'refused a message that fits');
          return;
        }
        const values = Array.isArray(r) ? r : [r.value];
        assert.ok(walkedBytes(values, budget) <= budget, 'decoded value walks beyond the budget');
      }),
      { numRuns: 400 },
    );
  });

  test('random bytes and mutants of reference-heavy messages never decode past the budget', () => {
    const budget = 4096;
    fc.assert(
      fc.property(dagArb, fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 8 }), fc.boolean(), (value, flips, amf3) => {
        const wire = Buffer.from(amf3 ? encodeAmf3Command(['cmd', value]) : encodeAmf0(['cmd', value]));
        for (const [at, byte] of flips) wire[at % wire.length] = byte;
        const r = amf3 ? decodeAmf3Command(wire, limitsWith(budget)) : decodeAmf0(wire, limitsWith(budget));
        if (!(r instanceof Error)) assert.ok(walkedBytes(r, budget) <= budget);
      }),
      { numRuns: 1000 },
    );
  });
});

function inlineOf(v: AmfValue): AmfValue {
  return unshared(v);
}

/** AMF0 strict array of `n` references to object #0 (a 1-element array holding `inner`). */
function amf0ReferenceBomb(inner: Buffer, n: number): Buffer {
  const head = Buffer.alloc(5);
  head[0] = 0x0a;
  head.writeUInt32BE(n + 1, 1);
  const target = Buffer.concat([Buffer.from([0x0a, 0, 0, 0, 1]), inner]);
  const ref = Buffer.from([0x07, 0x00, 0x01]);
  return Buffer.concat([head, target, ...Array.from({ length: n }, () => ref)]);
}

describe('AMF decode budgets (reference bombs)', () => {
  test('AMF0: 1 MB of references to a 64 KiB string is refused with AMF_TOO_LARGE, fast', () => {
    const big = Buffer.concat([Buffer.from([0x0c, 0, 1, 0, 0]), Buffer.alloc(65536, 0x61)]);
    // 20,000 references to it: 60 KB on the wire, 1.3 GB when walked.
    const msg = Buffer.concat([encodeAmf0(['FCPublish', 0, null]), amf0ReferenceBomb(big, 20_000)]);
    const t0 = performance.now();
    const r = decodeAmf0(msg);
    const ms = performance.now() - t0;
    assert.ok(isTooLarge(r), `got ${r instanceof Error ? r.code : 'a value'}`);
    assert.ok(ms < 200, `refused in ${ms.toFixed(1)} ms`);
    // The same message with few enough references decodes under a budget that fits it.
    assert.ok(!(decodeAmf0(Buffer.concat([encodeAmf0(['FCPublish', 0, null]), amf0ReferenceBomb(big, 3)]), limitsWith(300_000)) instanceof Error));
  });

  test('AMF3: string references and traits references are charged at every use', () => {
    const s = 'y'.repeat(10_000);
    // 2,000 uses of one string: ~4 KB of references, 20 MB expanded.
    const strings = encodeAmf3Value(Array.from({ length: 2000 }, () => s));
    assert.ok(strings.length < 20_000);
    assert.ok(isTooLarge(decodeAmf3Value(strings, 0, limitsWith(1_000_000))));
    assert.ok(!(decodeAmf3Value(strings, 0, limitsWith(30_000_000)) instanceof Error));
    // Sealed traits with long member names, reused by 2,000 objects: the names count every time.
    const traits = { className: 'C', sealed: ['n'.repeat(5000)], dynamic: false };
    const objs: AmfValue[] = Array.from({ length: 2000 }, (_, i) => {
      const o: Record<string, AmfValue> = { ['n'.repeat(5000)]: i };
      Object.defineProperty(o, Symbol.for('meshcast.amf3.traits'), { value: traits, enumerable: false });
      return o;
    });
    const wire = encodeAmf3Value(objs);
    assert.ok(wire.length < 30_000, `${wire.length} bytes on the wire`);
    assert.ok(isTooLarge(decodeAmf3Value(wire, 0, limitsWith(1_000_000))));
  });

  test('a message bigger than the budget with no references at all is refused too', () => {
    const msg = encodeAmf0(['onMetaData', { blob: 'z'.repeat(5000) }]);
    assert.ok(isTooLarge(decodeAmf0(msg, limitsWith(4000))));
    assert.ok(!(decodeAmf0(msg, limitsWith(msg.length)) instanceof Error));
  });
});
