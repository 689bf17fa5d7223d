import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import fc from 'fast-check';
import { AmfError } from '../src/errors.ts';
import {
  AMF3_ASSOCIATIVE,
  AMF3_TRAITS,
  AMF_AVMPLUS,
  AMF_CLASS_NAME,
  AMF_ECMA_ARRAY,
  AmfDate,
  AmfDictionary,
  AmfVector,
  AmfXml,
  AmfXmlDocument,
  DEFAULT_AMF_LIMITS,
  asAmfObject,
  decodeAmf0,
  ecmaArray,
  encodeAmf0,
} from '../src/amf0.ts';
import type { Amf3Traits, AmfLimits, AmfObject, AmfValue } from '../src/amf0.ts';
import {
  Amf3Reader,
  decodeAmf3Command,
  decodeAmf3Value,
  encodeAmf3Command,
  encodeAmf3Value,
} from '../src/amf3.ts';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function okValue(r: { value: AmfValue; offset: number } | AmfError, length?: number): AmfValue {
  if (r instanceof AmfError) assert.fail(`unexpected ${r.code}: ${r.message}`);
  if (length !== undefined) assert.equal(r.offset, length, 'decoder must consume exactly the value');
  return r.value;
}

function ok(r: AmfValue[] | AmfError): AmfValue[] {
  if (r instanceof AmfError) assert.fail(`unexpected ${r.code}: ${r.message}`);
  return r;
}

function fails(r: unknown, code: AmfError['code']): void {
  assert.ok(r instanceof AmfError, `expected AmfError ${code}, got ${String(r)}`);
  assert.equal(r.code, code, r.message);
}

function catchError(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

/** Decodes `bytes` as one AMF3 value, checks it against `expected` and that it encodes back to `bytes`. */
function vector(bytes: Buffer, check: (v: AmfValue) => void, roundTrip = true): AmfValue {
  const v = okValue(decodeAmf3Value(bytes, 0), bytes.length);
  check(v);
  if (roundTrip) assert.deepEqual(encodeAmf3Value(v), bytes);
  return v;
}

function obj(v: AmfValue): AmfObject {
  const o = asAmfObject(v);
  assert.ok(o, `expected an object, got ${String(v)}`);
  return o;
}

const ANON: Amf3Traits = { className: '', sealed: [], dynamic: true };

/**
 * Structural view including markers; "no traits" and anonymous dynamic traits
 * are the same thing. `traits` false ignores traits: AMF0 objects carry none.
 */
function norm(v: AmfValue, traits = true): unknown {
  const n = (x: AmfValue): unknown => norm(x, traits);
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) {
    const assoc = (v as { [AMF3_ASSOCIATIVE]?: AmfObject })[AMF3_ASSOCIATIVE];
    return { arr: v.map(n), assoc: assoc === undefined ? undefined : n(assoc) };
  }
  if (v instanceof AmfDate) return { date: v.ms, tz: v.timezone };
  if (v instanceof AmfXmlDocument) return { xmldoc: v.xml };
  if (v instanceof AmfXml) return { xml: v.xml };
  if (Buffer.isBuffer(v)) return { bytes: v.toString('hex') };
  if (v instanceof AmfVector) {
    const items = Array.isArray(v.items) ? v.items.map(n) : v.items;
    return { vector: items, fixed: v.fixed, typeName: v.typeName };
  }
  if (v instanceof AmfDictionary) return { dict: [...v.entries].map(([k, x]) => [n(k), n(x)]), weak: v.weakKeys };
  const o = asAmfObject(v);
  if (o === undefined) return { other: String(v) };
  const cls = o[AMF_CLASS_NAME];
  const t = o[AMF3_TRAITS] ?? (cls !== undefined && cls !== '' ? { className: cls, sealed: Object.keys(o), dynamic: false } : ANON);
  return {
    traits: traits ? { className: t.className, sealed: [...t.sealed], dynamic: t.dynamic } : undefined,
    cls,
    ecma: o[AMF_ECMA_ARRAY] === true,
    entries: Object.keys(o).map((k) => [k, n(o[k])]),
  };
}

describe('AMF3 U29 integers (spec table edges)', () => {
  const cases: [number, string][] = [
    [0, '04 00'],
    [1, '04 01'],
    [0x7f, '04 7f'],
    [0x80, '04 81 00'],
    [0x3fff, '04 ff 7f'],
    [0x4000, '04 81 80 00'],
    [0x1fffff, '04 ff ff 7f'],
    [0x200000, '04 80 c0 80 00'],
    [0x0fffffff, '04 bf ff ff ff'],
    [-1, '04 ff ff ff ff'],
    [-128, '04 ff ff ff 80'],
    [-0x10000000, '04 c0 80 80 00'],
  ];
  for (const [n, bytes] of cases) {
    test(`${n} ⇄ ${bytes}`, () => {
      vector(hex(bytes), (v) => assert.equal(v, n));
    });
  }

  test('values outside the 29-bit range, fractions and -0 are doubles', () => {
    vector(hex('05 41b0000000000000'), (v) => assert.equal(v, 0x10000000));
    vector(hex('05 c1b0000001000000'), (v) => assert.equal(v, -0x10000001));
    vector(hex('05 3ff8000000000000'), (v) => assert.equal(v, 1.5));
    vector(hex('05 8000000000000000'), (v) => assert.ok(Object.is(v, -0)));
    vector(hex('05 7ff8000000000000'), (v) => assert.ok(Number.isNaN(v)));
  });

  test('non-canonical forms decode and re-encode canonically', () => {
    vector(hex('04 80 00'), (v) => assert.equal(v, 0), false); // over-long U29
    vector(hex('04 80 80 80 01'), (v) => assert.equal(v, 1), false);
    vector(hex('05 4000000000000000'), (v) => assert.equal(v, 2), false); // integral double
    assert.deepEqual(encodeAmf3Value(0), hex('04 00'));
    assert.deepEqual(encodeAmf3Value(2), hex('04 02'));
  });

  test('simple markers', () => {
    vector(hex('00'), (v) => assert.equal(v, undefined));
    vector(hex('01'), (v) => assert.equal(v, null));
    vector(hex('02'), (v) => assert.equal(v, false));
    vector(hex('03'), (v) => assert.equal(v, true));
  });

  test('truncated U29', () => {
    for (const b of ['04', '04 80', '04 ff ff', '04 ff ff ff']) fails(decodeAmf3Value(hex(b), 0), 'AMF_TRUNCATED');
  });
});

describe('AMF3 strings and the string table', () => {
  test('inline string', () => {
    vector(hex('06 0b 68656c6c6f'), (v) => assert.equal(v, 'hello'));
    vector(hex('06 05 c3a9'), (v) => assert.equal(v, 'é'));
  });

  test('repeated strings become references; the empty string never does', () => {
    vector(hex('09 09 01  06 0b 68656c6c6f  06 00  06 01  06 01'), (v) => assert.deepEqual(v, ['hello', 'hello', '', '']));
  });

  test('keys and class names share the string table with values', () => {
    // {a: 'a'}: the value refers to the key.
    vector(hex('0a 0b 01 0361 06 00 01'), (v) => assert.deepEqual(v, { a: 'a' }));
    // Sealed class Foo {x}: x = "Foo" refers to the class name (index 0).
    vector(hex('0a 13 07 466f6f 0378 06 00'), (v) => {
      assert.deepEqual(v, { x: 'Foo' });
      assert.equal(obj(v)[AMF_CLASS_NAME], 'Foo');
    });
  });

  test('string of more than 21 characters uses a multi-byte header', () => {
    const s = 'x'.repeat(100);
    vector(Buffer.concat([hex('06 81 49'), Buffer.from(s)]), (v) => assert.equal(v, s));
  });

  test('bad string reference', () => {
    fails(decodeAmf3Value(hex('06 02'), 0), 'AMF_REFERENCE');
    fails(decodeAmf3Value(hex('06 00'), 0), 'AMF_REFERENCE');
  });
});

describe('AMF3 objects and traits', () => {
  test('anonymous dynamic object', () => {
    vector(hex('0a 0b 01 0361 0401 01'), (v) => {
      const o = obj(v);
      assert.deepEqual({ ...o }, { a: 1 });
      assert.deepEqual(o[AMF3_TRAITS], ANON);
      assert.equal(o[AMF_CLASS_NAME], undefined);
    });
    // A plain literal encodes the same way.
    assert.deepEqual(encodeAmf3Value({ a: 1 }), hex('0a 0b 01 0361 0401 01'));
  });

  test('second object of the same class uses a traits reference', () => {
    vector(hex('09 05 01  0a 0b 01 0361 0401 01  0a 01 0362 0402 01'), (v) => {
      assert.deepEqual(v, [{ a: 1 }, { b: 2 }]);
    });
    assert.deepEqual(encodeAmf3Value([{ a: 1 }, { b: 2 }]), hex('09 05 01  0a 0b 01 0361 0401 01  0a 01 0362 0402 01'));
  });

  test('sealed typed objects and traits references', () => {
    const bytes = hex('09 05 01  0a 23 07 466f6f 0378 0379 0401 0402  0a 01 0403 0404');
    vector(bytes, (v) => {
      assert.ok(Array.isArray(v));
      assert.deepEqual(v, [{ x: 1, y: 2 }, { x: 3, y: 4 }]);
      const [a, b] = v.map(obj);
      assert.deepEqual(a![AMF3_TRAITS], { className: 'Foo', sealed: ['x', 'y'], dynamic: false });
      assert.equal(a![AMF3_TRAITS], b![AMF3_TRAITS], 'one traits object per traits-table entry');
      assert.equal(b![AMF_CLASS_NAME], 'Foo');
    });
  });

  test('typed objects without traits (e.g. from AMF0) become sealed classes', () => {
    const point = (x: number, y: number): AmfObject => {
      const o: AmfObject = { x, y };
      Object.defineProperty(o, AMF_CLASS_NAME, { value: 'Foo' });
      return o;
    };
    assert.deepEqual(
      encodeAmf3Value([point(1, 2), point(3, 4)]),
      hex('09 05 01  0a 23 07 466f6f 0378 0379 0401 0402  0a 01 0403 0404'),
    );
  });

  test('dynamic class with sealed members', () => {
    vector(hex('0a 1b 07 426172 0378 0401 0379 0402 01'), (v) => {
      const o = obj(v);
      assert.deepEqual({ ...o }, { x: 1, y: 2 });
      assert.deepEqual(o[AMF3_TRAITS], { className: 'Bar', sealed: ['x'], dynamic: true });
    });
  });

  test('keys added to a decoded sealed object are written dynamically', () => {
    const v = okValue(decodeAmf3Value(hex('0a 13 07 466f6f 0378 0401'), 0));
    obj(v).extra = true;
    const back = okValue(decodeAmf3Value(encodeAmf3Value(v), 0));
    assert.deepEqual(back, { x: 1, extra: true });
    assert.deepEqual(obj(back)[AMF3_TRAITS], { className: 'Foo', sealed: ['x'], dynamic: true });
  });

  test('object references resolve to the same instance', () => {
    vector(hex('09 05 01  0a 0b 01 0361 0401 01  0a 02'), (v) => {
      assert.ok(Array.isArray(v));
      assert.equal(v[0], v[1]);
    });
  });

  test('externalizable, bad traits references, bad object references, cycles', () => {
    fails(decodeAmf3Value(hex('0a 07 07 466f6f'), 0), 'AMF_UNKNOWN_MARKER');
    fails(decodeAmf3Value(hex('0a 05'), 0), 'AMF_REFERENCE');
    fails(decodeAmf3Value(hex('0a 02'), 0), 'AMF_REFERENCE');
    fails(decodeAmf3Value(hex('09 03 01 09 00'), 0), 'AMF_REFERENCE');
    fails(decodeAmf3Value(hex('0a 0b 01 0361 0a 00 01'), 0), 'AMF_REFERENCE');
  });

  test('__proto__ members cannot replace the prototype', () => {
    vector(hex('0a 0b 01 13 5f5f70726f746f5f5f 0401 01'), (v) => {
      const o = obj(v);
      assert.equal(Object.getPrototypeOf(o), Object.prototype);
      assert.deepEqual(Object.keys(o), ['__proto__']);
    });
  });
});

describe('AMF3 other complex types', () => {
  test('date, XML document, XML, byte array', () => {
    vector(hex('08 01 4278bcfe56800000'), (v) => {
      assert.ok(v instanceof AmfDate);
      assert.equal(v.ms, 1700000000000);
      assert.equal(v.timezone, 0);
    });
    vector(hex('07 07 3c612f'), (v) => assert.deepEqual(v, new AmfXmlDocument('<a/')));
    vector(hex('0b 07 3c622f'), (v) => assert.deepEqual(v, new AmfXml('<b/')));
    const input = hex('0c 07 010203');
    const bytes = vector(input, (v) => assert.deepEqual(v, Buffer.from([1, 2, 3])));
    input[2] = 0xff;
    assert.deepEqual(bytes, Buffer.from([1, 2, 3]), 'byte arrays are copied out of the input');
  });

  test('references to dates, XML and byte arrays', () => {
    vector(hex('09 09 01  08 01 0000000000000000  0c 03 ff  08 02  0c 04'), (v) => {
      assert.ok(Array.isArray(v));
      assert.equal(v[0], v[2]);
      assert.equal(v[1], v[3]);
    });
  });

  test('array with an associative part', () => {
    vector(hex('09 03 0361 0401 01 0402'), (v) => {
      assert.ok(Array.isArray(v));
      assert.deepEqual([...v], [2]);
      assert.deepEqual((v as { [AMF3_ASSOCIATIVE]?: AmfObject })[AMF3_ASSOCIATIVE], { a: 1 });
      assert.equal(Object.keys(v).length, 1, 'associative part is not mixed into the array');
    });
    // Index-like associative keys (sparse ActionScript arrays) must not grow the JS array.
    vector(hex('09 01 0337 0401 01'), (v) => {
      assert.ok(Array.isArray(v));
      assert.equal(v.length, 0);
      assert.deepEqual((v as { [AMF3_ASSOCIATIVE]?: AmfObject })[AMF3_ASSOCIATIVE], { 7: 1 });
    });
  });

  test('ECMA arrays encode as associative-only AMF3 arrays', () => {
    assert.deepEqual(encodeAmf3Value(ecmaArray({ a: 1 })), hex('09 01 0361 0401 01'));
  });

  test('vectors', () => {
    vector(hex('0d 05 00 ffffffff 00000001'), (v) => {
      assert.ok(v instanceof AmfVector);
      assert.deepEqual(v.items, Int32Array.of(-1, 1));
      assert.equal(v.fixed, false);
    });
    vector(hex('0e 03 01 ffffffff'), (v) => {
      assert.ok(v instanceof AmfVector);
      assert.deepEqual(v.items, Uint32Array.of(0xffffffff));
      assert.equal(v.fixed, true);
    });
    vector(hex('0f 03 00 3ff8000000000000'), (v) => {
      assert.ok(v instanceof AmfVector);
      assert.deepEqual(v.items, Float64Array.of(1.5));
    });
    vector(hex('10 05 00 0f 666f6f2e426172 0401 01'), (v) => {
      assert.ok(v instanceof AmfVector);
      assert.deepEqual(v.items, [1, null]);
      assert.equal(v.typeName, 'foo.Bar');
    });
  });

  test('dictionary', () => {
    vector(hex('11 05 01  06 036b 0401  0a 0b 01 01 03'), (v) => {
      assert.ok(v instanceof AmfDictionary);
      assert.equal(v.weakKeys, true);
      const entries = [...v.entries];
      assert.deepEqual(entries[0], ['k', 1]);
      assert.deepEqual(entries[1], [{}, true]);
    });
  });

  test('unknown markers', () => {
    for (const m of ['12', '13', '80', 'ff']) fails(decodeAmf3Value(hex(m), 0), 'AMF_UNKNOWN_MARKER');
  });
});

describe('AMF3 encoder errors', () => {
  test('cycles are rejected', () => {
    const a: AmfObject = {};
    a.self = a;
    fails(catchError(() => encodeAmf3Value(a)), 'AMF_REFERENCE');
    const arr: AmfValue[] = [];
    arr.push(new AmfVector([arr]));
    fails(catchError(() => encodeAmf3Value(arr)), 'AMF_REFERENCE');
    const d = new AmfDictionary(new Map());
    d.entries.set('me', d);
    fails(catchError(() => encodeAmf3Value(d)), 'AMF_REFERENCE');
  });

  test('empty dynamic keys and unencodable values', () => {
    fails(catchError(() => encodeAmf3Value({ '': 1 })), 'AMF_UNKNOWN_MARKER');
    fails(catchError(() => encodeAmf3Value(10n as unknown as AmfValue)), 'AMF_UNKNOWN_MARKER');
    fails(catchError(() => encodeAmf3Value(new Set() as unknown as AmfValue)), 'AMF_UNKNOWN_MARKER');
  });
});

describe('RTMP AMF3 command messages (type 17)', () => {
  const connect = hex(`
    00
    02 0007 636f6e6e656374
    00 3ff0000000000000
    11 0a 0b 01 07 617070 06 09 6c697665 03 6e 04 05 01
    05`);

  test('decodes the format byte, AMF0 values and one switched AMF3 value', () => {
    const values = ok(decodeAmf3Command(connect));
    assert.equal(values.length, 4);
    assert.equal(values[0], 'connect');
    assert.equal(values[1], 1);
    const cmd = obj(values[2]);
    assert.deepEqual({ ...cmd }, { app: 'live', n: 5 });
    assert.equal(cmd[AMF_AVMPLUS], true);
    assert.equal(values[3], null);
    assert.deepEqual(encodeAmf3Command(values), connect);
  });

  test('AMF3 reference tables persist across switched values of one message', () => {
    const payload = Buffer.concat([connect.subarray(0, connect.length - 1), hex('11 06 02  11 0a 00')]);
    const values = ok(decodeAmf3Command(payload));
    assert.equal(values[3], 'live');
    assert.equal(values[4], values[2]);
  });

  test('tolerates a missing format byte, rejects an empty body', () => {
    assert.deepEqual(ok(decodeAmf3Command(connect.subarray(1))), ok(decodeAmf3Command(connect)));
    fails(decodeAmf3Command(Buffer.alloc(0)), 'AMF_TRUNCATED');
    fails(decodeAmf3Command(connect.subarray(0, connect.length - 4)), 'AMF_TRUNCATED');
  });

  test('preserveAvmplus: false re-encodes switched values as plain AMF0 for AMF0-only peers', () => {
    const values = ok(decodeAmf3Command(connect));
    const amf0 = encodeAmf0(values, { preserveAvmplus: false });
    assert.deepEqual(
      amf0,
      hex(`02 0007 636f6e6e656374  00 3ff0000000000000
           03 0003 617070 02 0004 6c697665  0001 6e 00 4014000000000000 000009  05`),
    );
    // An AMF3 array with an associative part becomes an ECMA array: dense indices first.
    const mixed = okValue(decodeAmf3Value(hex('09 05 0361 0401 01 0402 0403'), 0));
    const flat = ok(decodeAmf0(encodeAmf0([mixed], { preserveAvmplus: false })))[0];
    const o = obj(flat);
    assert.equal(o[AMF_ECMA_ARRAY], true);
    assert.deepEqual(o, { 0: 2, 1: 3, a: 1 });
    // By default the same array keeps its AMF3 form.
    assert.equal(encodeAmf0([mixed])[0], 0x11);
  });

  test('AMF3-only values switch inside AMF0 and come back intact', () => {
    const values: AmfValue[] = ['onData', Buffer.from([9, 8]), { v: new AmfVector(Int32Array.of(3)), x: new AmfXml('<x/>') }];
    const body = encodeAmf3Command(values);
    assert.deepEqual(body.subarray(0, 12), hex('00 02 0006 6f6e44617461 11 0c'));
    const back = ok(decodeAmf3Command(body));
    assert.deepStrictEqual(back.map((v) => norm(v)), values.map((v) => norm(v)));
    assert.deepEqual(encodeAmf3Command(back), body);
  });
});

describe('AMF3 hostile input', () => {
  const wide: AmfLimits = { maxDepth: 1_000_000, maxStringLength: 2 ** 32, maxArrayLength: 2 ** 32, maxTotalValues: 2 ** 40, maxExpandedBytes: 2 ** 40 };

  test('huge counts fail fast without allocating', () => {
    const claims = [
      '0d bfffffff 00', // Vector.<int> of 2^28-1
      '0f bfffffff 00', // Vector.<Number>
      '10 bfffffff 00 01', // Vector.<Object>
      '0c bfffffff', // ByteArray
      '06 bfffffff', // string
      '07 bfffffff', // XMLDocument
      '09 bfffffff 01', // dense array
      '11 bfffffff 00', // dictionary
      ' 0a fffffff3 01', // class with 2^25-1 sealed members
    ].map(hex);
    const before = process.memoryUsage();
    const t0 = performance.now();
    for (const b of claims) {
      const r = decodeAmf3Value(b, 0);
      assert.ok(r instanceof AmfError);
      assert.ok(['AMF_TOO_LONG', 'AMF_TRUNCATED'].includes(r.code), r.code);
      fails(decodeAmf3Value(b, 0, wide), 'AMF_TRUNCATED');
    }
    const after = process.memoryUsage();
    assert.ok(performance.now() - t0 < 200);
    assert.ok(after.arrayBuffers - before.arrayBuffers < 16 * 1024 * 1024);
    assert.ok(after.heapUsed - before.heapUsed < 64 * 1024 * 1024);
  });

  test('depth bomb: 100k nested arrays', () => {
    const bomb = Buffer.concat([Buffer.alloc(100_000 * 3, hex('090301')), hex('01')]);
    fails(decodeAmf3Value(bomb, 0), 'AMF_TOO_DEEP');
    fails(decodeAmf3Value(bomb, 0, wide), 'AMF_TOO_DEEP');
    const wrapped = Buffer.concat([hex('11'), bomb]);
    fails(decodeAmf0(wrapped), 'AMF_TOO_DEEP');
  });

  test('depth limit counts AMF0 and AMF3 nesting together', () => {
    // AMF0 strict array [ 0x11 AMF3 [ [ null ] ] ] is 3 levels.
    const b = hex('0a 00000001 11 09 03 01 09 03 01 01');
    assert.equal(ok(decodeAmf0(b, { ...DEFAULT_AMF_LIMITS, maxDepth: 3 })).length, 1);
    fails(decodeAmf0(b, { ...DEFAULT_AMF_LIMITS, maxDepth: 2 }), 'AMF_TOO_DEEP');
  });

  test('reference bomb is charged its expanded size', () => {
    // Outer array of 40 levels; level i holds two references to level i-1.
    const parts: Buffer[] = [hex('09 51 01'), hex('09 03 01 01')];
    for (let i = 1; i < 40; i++) parts.push(hex(`09 05 01 09 ${(i << 1).toString(16).padStart(2, '0')} 09 ${(i << 1).toString(16).padStart(2, '0')}`));
    fails(decodeAmf3Value(Buffer.concat(parts), 0), 'AMF_TOO_LONG');
    const small = Buffer.concat([hex('09 09 01'), ...parts.slice(1, 5)]);
    const v = okValue(decodeAmf3Value(small, 0), small.length);
    assert.ok(Array.isArray(v));
    assert.deepEqual(encodeAmf3Value(v), small);
  });

  test('string table is bounded', () => {
    const limits = { ...DEFAULT_AMF_LIMITS, maxTotalValues: 3 };
    // Array of 1 with associative keys a, b, c, d: 4 inline strings.
    fails(decodeAmf3Value(hex('09 01 0361 01 0362 01 0363 01 01'), 0, limits), 'AMF_TOO_LONG');
  });

  test('Amf3Reader keeps its tables across values', () => {
    const r = new Amf3Reader(hex('06 07 616263 06 00'));
    assert.equal(r.readValue(0), 'abc');
    assert.equal(r.readValue(0), 'abc');
    assert.equal(r.pos, 7);
  });
});

// ---------------------------------------------------------------------------
// Properties

const keyArb = fc.oneof(
  fc.string({ minLength: 1, maxLength: 10 }),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 5 }),
  fc.constantFrom('__proto__', '0', '7', 'a', 'b', 'code'),
);
const stringArb = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.string({ unit: 'binary', maxLength: 10 }),
  fc.constantFrom('', 'live', 'status', 'x'.repeat(40)),
);

function buildObject(entries: [string, AmfValue][]): AmfObject {
  const o: AmfObject = {};
  for (const [k, v] of entries) {
    if (k === '__proto__') Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
    else o[k] = v;
  }
  return o;
}

const traitsCache = new Map<string, Amf3Traits>();
function withTraits(o: AmfObject, className: string, sealedCount: number, dynamic: boolean): AmfObject {
  const keys = Object.keys(o);
  const sealed = dynamic ? keys.slice(0, sealedCount) : keys;
  const key = JSON.stringify([className, sealed, dynamic]);
  let traits = traitsCache.get(key);
  if (traits === undefined) {
    traits = Object.freeze({ className, sealed: Object.freeze(sealed), dynamic });
    traitsCache.set(key, traits);
  }
  Object.defineProperty(o, AMF3_TRAITS, { value: traits });
  if (className !== '') Object.defineProperty(o, AMF_CLASS_NAME, { value: className });
  return o;
}

const entriesArb = (value: fc.Arbitrary<AmfValue>) => fc.array(fc.tuple(keyArb, value), { maxLength: 4 });

/** Values AMF3 represents exactly (dates without timezone, no AMF0 ECMA arrays). */
const { amf3: amf3ValueArb } = fc.letrec<{ amf3: AmfValue; leaf: AmfValue; node: AmfValue }>((tie) => ({
  amf3: fc.oneof({ depthSize: 'small', maxDepth: 5 }, tie('leaf'), tie('leaf'), tie('node')),
  leaf: fc.oneof(
    fc.double(),
    fc.integer({ min: -0x10000000, max: 0x0fffffff }),
    fc.integer(),
    fc.boolean(),
    stringArb,
    fc.constant(null),
    fc.constant(undefined),
    fc.double().map((ms) => new AmfDate(ms)),
    stringArb.map((s) => new AmfXmlDocument(s)),
    stringArb.map((s) => new AmfXml(s)),
    fc.uint8Array({ maxLength: 20 }).map((a) => Buffer.from(a)),
    fc.tuple(fc.int32Array({ maxLength: 5 }), fc.boolean()).map(([a, f]) => new AmfVector(a, f)),
    fc.tuple(fc.uint32Array({ maxLength: 5 }), fc.boolean()).map(([a, f]) => new AmfVector(a, f)),
    fc.tuple(fc.float64Array({ maxLength: 5 }), fc.boolean()).map(([a, f]) => new AmfVector(a, f)),
  ),
  node: fc.oneof(
    fc.array(tie('amf3'), { maxLength: 5 }),
    fc.tuple(fc.array(tie('amf3'), { maxLength: 3 }), entriesArb(tie('amf3')).filter((e) => e.length > 0)).map(([dense, e]) => {
      Object.defineProperty(dense, AMF3_ASSOCIATIVE, { value: buildObject(e) });
      return dense;
    }),
    entriesArb(tie('amf3')).map(buildObject),
    fc
      .tuple(entriesArb(tie('amf3')), fc.constantFrom('', 'Foo', 'a.b.C'), fc.nat(4), fc.boolean())
      .map(([e, cls, n, dyn]) => withTraits(buildObject(e), cls, n, dyn)),
    fc.tuple(fc.constantFrom('Foo', 'a.b.C'), entriesArb(tie('amf3'))).map(([cls, e]) => {
      const o = buildObject(e);
      Object.defineProperty(o, AMF_CLASS_NAME, { value: cls });
      return o;
    }),
    fc
      .tuple(fc.array(tie('amf3'), { maxLength: 4 }), fc.boolean(), fc.constantFrom('', '*', 'com.x.Y'))
      .map(([items, f, t]) => new AmfVector(items, f, t)),
    fc
      .tuple(fc.array(fc.tuple(fc.oneof(stringArb, fc.integer(), tie('amf3')), tie('amf3')), { maxLength: 4 }), fc.boolean())
      .map(([e, weak]) => new AmfDictionary(new Map(e), weak)),
    // The same instance twice: exercises object references.
    tie('amf3').map((v) => [v, v]),
  ),
}));

type Mutation = { at: number; kind: 'set' | 'insert' | 'delete'; byte: number };
const mutationsArb = fc.array(
  fc.record({ at: fc.nat(), kind: fc.constantFrom<Mutation['kind']>('set', 'insert', 'delete'), byte: fc.integer({ min: 0, max: 255 }) }),
  { minLength: 1, maxLength: 3 },
);

function mutate(src: Buffer, mutations: readonly Mutation[]): Buffer {
  const bytes = [...src];
  for (const m of mutations) {
    const at = m.at % (bytes.length + 1);
    if (m.kind === 'insert') bytes.splice(at, 0, m.byte);
    else if (at < bytes.length) {
      if (m.kind === 'set') bytes[at] = m.byte;
      else bytes.splice(at, 1);
    }
  }
  return Buffer.from(bytes);
}

describe('AMF3 properties', () => {
  test('encodeAmf3Value → decodeAmf3Value gives the same tree and the same bytes again', () => {
    fc.assert(
      fc.property(amf3ValueArb, (value) => {
        const bytes = encodeAmf3Value(value);
        const back = okValue(decodeAmf3Value(bytes, 0), bytes.length);
        assert.deepStrictEqual(norm(back), norm(value));
        assert.deepStrictEqual(encodeAmf3Value(back), bytes);
      }),
      { numRuns: 500 },
    );
  });

  test('AMF0 messages carrying AMF3 values through the avmplus switch round-trip', () => {
    fc.assert(
      fc.property(fc.array(amf3ValueArb, { maxLength: 4 }), (values) => {
        const body = encodeAmf3Command(['cmd', ...values]);
        const back = ok(decodeAmf3Command(body));
        // Objects outside the switched values travel as AMF0 objects, which have no traits.
        assert.deepStrictEqual(
          back.map((v) => norm(v, false)),
          ['cmd', ...values].map((v) => norm(v, false)),
        );
        assert.deepStrictEqual(encodeAmf3Command(back), body);
        assert.deepStrictEqual(encodeAmf0(back), body.subarray(1));
      }),
      { numRuns: 500 },
    );
  });

  test('every truncation of a valid value is AMF_TRUNCATED', () => {
    fc.assert(
      fc.property(amf3ValueArb, fc.nat(), (value, cut) => {
        const bytes = encodeAmf3Value(value);
        fails(decodeAmf3Value(bytes.subarray(0, cut % bytes.length), 0), 'AMF_TRUNCATED');
      }),
      { numRuns: 500 },
    );
  });

  test('garbage and mutants never throw; whatever decodes re-encodes to a fixpoint', () => {
    let decoded = 0;
    const input = fc.oneof(
      fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
      fc.tuple(amf3ValueArb, mutationsArb).map(([v, m]) => mutate(encodeAmf3Value(v), m)),
    );
    fc.assert(
      fc.property(input, (bytes) => {
        const t0 = performance.now();
        const r = decodeAmf3Value(bytes, 0);
        const c = decodeAmf3Command(bytes);
        assert.ok(performance.now() - t0 < 100);
        if (!(c instanceof AmfError)) {
          const body = encodeAmf3Command(c);
          assert.deepStrictEqual(ok(decodeAmf3Command(body)).map((v) => norm(v, false)), c.map((v) => norm(v, false)));
        }
        if (r instanceof AmfError) return;
        decoded++;
        const once = encodeAmf3Value(r.value);
        const again = okValue(decodeAmf3Value(once, 0), once.length);
        assert.deepStrictEqual(norm(again), norm(r.value));
        assert.deepStrictEqual(encodeAmf3Value(again), once);
      }),
      { numRuns: 3000 },
    );
    assert.ok(decoded > 300, `only ${decoded} inputs decoded`);
  });
});
