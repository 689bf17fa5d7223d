import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import fc from 'fast-check';
import { AmfError } from '../src/errors.ts';
import {
  AMF_AVMPLUS,
  AMF_CLASS_NAME,
  AMF_ECMA_ARRAY,
  AMF3_TRAITS,
  AmfDate,
  AmfXmlDocument,
  DEFAULT_AMF_LIMITS,
  asAmfObject,
  decodeAmf0,
  decodeAmf0Value,
  ecmaArray,
  encodeAmf0,
  encodeAmf0Value,
} from '../src/amf0.ts';
import type { AmfLimits, AmfObject, AmfValue } from '../src/amf0.ts';

const FIXTURES = new URL('../../tests/fixtures/amf/', import.meta.url);
const fixture = (name: string): Buffer => readFileSync(new URL(name, FIXTURES));

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const str16 = (s: string): string => {
  const b = Buffer.from(s, 'utf8');
  return b.length.toString(16).padStart(4, '0') + b.toString('hex');
};
const num = (n: number): string => {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(n);
  return b.toString('hex');
};

function ok(r: AmfValue[] | AmfError): AmfValue[] {
  if (r instanceof AmfError) assert.fail(`unexpected ${r.code}: ${r.message}`);
  return r;
}

function okValue(r: { value: AmfValue; offset: number } | AmfError): { value: AmfValue; offset: number } {
  if (r instanceof AmfError) assert.fail(`unexpected ${r.code}: ${r.message}`);
  return r;
}

function fails(r: unknown, code: AmfError['code']): AmfError {
  assert.ok(r instanceof AmfError, `expected AmfError ${code}, got ${String(r)}`);
  assert.equal(r.code, code, r.message);
  return r;
}

function obj(v: AmfValue): AmfObject {
  const o = asAmfObject(v);
  assert.ok(o, `expected an object, got ${String(v)}`);
  return o;
}

/** Structural view including the non-enumerable markers, for deepStrictEqual. */
function norm(v: AmfValue): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return { arr: v.map(norm) };
  if (v instanceof AmfDate) return { date: v.ms, tz: v.timezone };
  if (v instanceof AmfXmlDocument) return { xmldoc: v.xml };
  if (Buffer.isBuffer(v)) return { bytes: v.toString('hex') };
  const o = asAmfObject(v);
  if (o === undefined) return { other: String(v) };
  return {
    cls: o[AMF_CLASS_NAME],
    ecma: o[AMF_ECMA_ARRAY] === true,
    entries: Object.keys(o).map((k) => [k, norm(o[k])]),
  };
}

describe('AMF0 golden fixtures from ffmpeg 5.1', () => {
  test('publish connect', () => {
    const bytes = fixture('publish-connect.bin');
    const values = ok(decodeAmf0(bytes));
    assert.equal(values.length, 3);
    assert.equal(values[0], 'connect');
    assert.equal(values[1], 1);
    const cmd = obj(values[2]);
    assert.deepEqual(Object.keys(cmd), ['app', 'type', 'flashVer', 'tcUrl']);
    assert.equal(cmd.app, 'live');
    assert.equal(cmd.type, 'nonprivate');
    assert.equal(cmd.flashVer, 'FMLE/3.0 (compatible; Lavf59.27.100)');
    assert.equal(cmd.tcUrl, 'rtmp://127.0.0.1:19351/live');
    assert.equal(cmd[AMF_ECMA_ARRAY], undefined);
    assert.deepEqual(encodeAmf0(values), bytes);
  });

  test('publish sequence commands', () => {
    const expected: Record<string, AmfValue[]> = {
      'publish-releasestream.bin': ['releaseStream', 2, null, 'key'],
      'publish-fcpublish.bin': ['FCPublish', 3, null, 'key'],
      'publish-createstream.bin': ['createStream', 4, null],
      'publish-publish.bin': ['publish', 5, null, 'key', 'live'],
      'publish-fcunpublish.bin': ['FCUnpublish', 6, null, 'key'],
      'publish-deletestream.bin': ['deleteStream', 7, null, 1],
      'play-getstreamlength.bin': ['getStreamLength', 3, null, 'stream1'],
      'play-play.bin': ['play', 4, null, 'stream1', -2000],
    };
    for (const [name, want] of Object.entries(expected)) {
      const bytes = fixture(name);
      const values = ok(decodeAmf0(bytes));
      assert.deepEqual(values, want, name);
      assert.deepEqual(encodeAmf0(values), bytes, name);
      assert.deepEqual(encodeAmf0(want), bytes, `${name} from literal values`);
    }
  });

  test('@setDataFrame onMetaData', () => {
    const bytes = fixture('publish-setdataframe.bin');
    const values = ok(decodeAmf0(bytes));
    assert.equal(values.length, 3);
    assert.equal(values[0], '@setDataFrame');
    assert.equal(values[1], 'onMetaData');
    const meta = obj(values[2]);
    assert.equal(meta[AMF_ECMA_ARRAY], true);
    assert.equal(Object.keys(meta).length, 13);
    assert.equal(bytes.readUInt32BE(0x1e), 13, 'declared ECMA count');
    assert.equal(meta.width, 320);
    assert.equal(meta.height, 240);
    assert.equal(meta.framerate, 10);
    assert.equal(meta.videocodecid, 7);
    assert.equal(meta.audiocodecid, 10);
    assert.equal(meta.audiosamplerate, 44100);
    assert.equal(meta.audiosamplesize, 16);
    assert.equal(meta.stereo, false);
    assert.equal(meta.duration, 1);
    assert.equal(meta.encoder, 'Lavf59.27.100');
    assert.equal(typeof meta.audiodatarate, 'number');
    assert.deepEqual(encodeAmf0(values), bytes);
    // The same message from hand-written values: ecmaArray() must choose marker 0x08 and the right count.
    const rebuilt = encodeAmf0(['@setDataFrame', 'onMetaData', ecmaArray({ ...meta })]);
    assert.deepEqual(rebuilt, bytes);
  });

  test('play connect (numbers and booleans in the command object)', () => {
    const bytes = fixture('play-connect.bin');
    const values = ok(decodeAmf0(bytes));
    const cmd = obj(values[2]);
    assert.deepEqual(cmd, {
      app: 'vod',
      flashVer: 'LNX 9,0,124,2',
      tcUrl: 'rtmp://127.0.0.1:19352/vod',
      fpad: false,
      capabilities: 15,
      audioCodecs: 4071,
      videoCodecs: 252,
      videoFunction: 1,
    });
    assert.deepEqual(encodeAmf0(values), bytes);
  });

  test('decodeAmf0Value walks a fixture value by value', () => {
    const bytes = fixture('publish-connect.bin');
    let offset = 0;
    const seen: AmfValue[] = [];
    while (offset < bytes.length) {
      const r = okValue(decodeAmf0Value(bytes, offset));
      assert.ok(r.offset > offset);
      seen.push(r.value);
      offset = r.offset;
    }
    assert.equal(offset, bytes.length);
    assert.deepEqual(seen, ok(decodeAmf0(bytes)));
  });
});

describe('AMF0 markers', () => {
  test('number, boolean, string, null, undefined', () => {
    const bytes = hex(`00 ${num(-1.5)} 01 01 01 00 02 ${str16('hé')} 05 06`);
    assert.deepEqual(ok(decodeAmf0(bytes)), [-1.5, true, false, 'hé', null, undefined]);
    assert.deepEqual(encodeAmf0([-1.5, true, false, 'hé', null, undefined]), bytes);
  });

  test('special doubles keep their bits', () => {
    for (const n of [0, -0, Infinity, -Infinity, NaN, Number.MIN_VALUE, Number.MAX_SAFE_INTEGER + 2]) {
      const bytes = encodeAmf0Value(n);
      assert.equal(bytes.length, 9);
      assert.equal(bytes[0], 0x00);
      const v = okValue(decodeAmf0Value(bytes, 0)).value;
      assert.ok(Object.is(v, n), `${n}`);
    }
  });

  test('string switches to long string above 65535 UTF-8 bytes', () => {
    const short = 'a'.repeat(65535);
    const long = 'a'.repeat(65536);
    const multibyte = 'é'.repeat(32768); // 65536 bytes, 32768 UTF-16 units
    assert.equal(encodeAmf0Value(short)[0], 0x02);
    assert.equal(encodeAmf0Value(short).readUInt16BE(1), 65535);
    const l = encodeAmf0Value(long);
    assert.equal(l[0], 0x0c);
    assert.equal(l.readUInt32BE(1), 65536);
    const m = encodeAmf0Value(multibyte);
    assert.equal(m[0], 0x0c);
    assert.equal(m.readUInt32BE(1), 65536);
    for (const s of [short, long, multibyte]) {
      assert.equal(okValue(decodeAmf0Value(encodeAmf0Value(s), 0)).value, s);
    }
  });

  test('short long-string (non-canonical) decodes and re-encodes as 0x02', () => {
    const bytes = hex('0c 00000002 6869');
    assert.deepEqual(ok(decodeAmf0(bytes)), ['hi']);
    assert.deepEqual(encodeAmf0(['hi']), hex('02 0002 6869'));
  });

  test('object with empty-string key and __proto__ key', () => {
    const bytes = hex(`03 0000 00${num(1)} ${str16('__proto__')} 02${str16('x')} 000009`);
    const [v] = ok(decodeAmf0(bytes));
    const o = obj(v);
    assert.equal(Object.getPrototypeOf(o), Object.prototype, 'prototype must not be replaced');
    assert.deepEqual(Object.keys(o), ['', '__proto__']);
    assert.equal(o[''], 1);
    assert.equal(Object.getOwnPropertyDescriptor(o, '__proto__')?.value, 'x');
    assert.deepEqual(encodeAmf0([v]), bytes);
  });

  test('ECMA array: count is a hint, a wrong one is preserved until keys change', () => {
    // Declares 5 entries, holds 1.
    const bytes = hex(`08 00000005 ${str16('a')} 00${num(2)} 000009`);
    const [v] = ok(decodeAmf0(bytes));
    const o = obj(v);
    assert.equal(o[AMF_ECMA_ARRAY], true);
    assert.deepEqual({ ...o }, { a: 2 });
    assert.deepEqual(encodeAmf0([v]), bytes);
    o.b = 3;
    const changed = encodeAmf0([v]);
    assert.equal(changed.readUInt32BE(1), 2);
    // Declares 0 entries (another common lie) and holds 2.
    const zero = hex(`08 00000000 ${str16('a')} 0101 ${str16('b')} 05 000009`);
    assert.deepEqual(encodeAmf0(ok(decodeAmf0(zero))), zero);
    assert.equal(Object.keys(ecmaArray({ x: 1 })).length, 1);
    assert.equal(Object.getOwnPropertyDescriptor(ecmaArray({}), AMF_ECMA_ARRAY)?.enumerable, false);
  });

  test('strict array, date, XML document, unsupported', () => {
    const bytes = hex(`0a 00000002 00${num(1)} 02${str16('b')} 0b ${num(1700000000000)} fff0 0f 00000003 3c612f 0d`);
    const values = ok(decodeAmf0(bytes));
    assert.deepEqual(values[0], [1, 'b']);
    assert.ok(values[1] instanceof AmfDate);
    assert.equal(values[1].ms, 1700000000000);
    assert.equal(values[1].timezone, -16);
    assert.ok(values[2] instanceof AmfXmlDocument);
    assert.equal(values[2].xml, '<a/');
    assert.equal(values[3], undefined);
    assert.equal(values.length, 4);
    // 0x0D re-encodes as undefined (0x06): documented non-canonical form.
    assert.deepEqual(encodeAmf0(values), Buffer.concat([bytes.subarray(0, bytes.length - 1), hex('06')]));
  });

  test('typed object keeps its class name', () => {
    const bytes = hex(`10 ${str16('com.example.Point')} ${str16('x')} 00${num(1)} ${str16('y')} 00${num(2)} 000009`);
    const [v] = ok(decodeAmf0(bytes));
    const o = obj(v);
    assert.equal(o[AMF_CLASS_NAME], 'com.example.Point');
    assert.deepEqual(o, { x: 1, y: 2 });
    assert.equal(Object.getOwnPropertyDescriptor(o, AMF_CLASS_NAME)?.enumerable, false);
    assert.deepEqual(encodeAmf0([v]), bytes);
  });

  test('references resolve to the same instance and re-encode as references', () => {
    // [ {a:1}, ref 1 ] : index 0 is the strict array itself, 1 the object.
    const bytes = hex(`0a 00000002 03 ${str16('a')} 00${num(1)} 000009 07 0001`);
    const [arr] = ok(decodeAmf0(bytes));
    assert.ok(Array.isArray(arr));
    assert.equal(arr[0], arr[1]);
    assert.deepEqual(encodeAmf0([arr]), bytes);
    // References span the values of one message.
    const shared = { k: 'v' };
    const msg = encodeAmf0(['x', shared, shared]);
    assert.deepEqual(msg.subarray(msg.length - 3), hex('07 0000'));
    const back = ok(decodeAmf0(msg));
    assert.equal(back[1], back[2]);
  });

  test('misplaced and reserved markers', () => {
    for (const m of ['04', '09', '0e', '12', 'ff']) {
      fails(decodeAmf0(hex(m)), 'AMF_UNKNOWN_MARKER');
    }
    // An object whose value slot holds 0x09 without the empty key.
    fails(decodeAmf0(hex(`03 ${str16('a')} 09`)), 'AMF_UNKNOWN_MARKER');
  });

  test('asAmfObject', () => {
    assert.equal(asAmfObject([1]), undefined);
    assert.equal(asAmfObject('x'), undefined);
    assert.equal(asAmfObject(null), undefined);
    assert.equal(asAmfObject(new AmfDate(0)), undefined);
    assert.equal(asAmfObject(Buffer.alloc(1)), undefined);
    const e = ecmaArray({ a: 1 });
    assert.equal(asAmfObject(e), e);
    const t = ok(decodeAmf0(hex(`10 ${str16('C')} 000009`)))[0];
    assert.equal(asAmfObject(t), t);
  });

  test('avmplus switch carries one AMF3 value and is remembered for re-encoding', () => {
    // 0x11, AMF3 anonymous dynamic object {a: 1 (int)}
    const bytes = hex(`02 ${str16('x')} 11 0a0b01 0361 0401 01 11 0401`);
    const values = ok(decodeAmf0(bytes));
    const o = obj(values[1]);
    assert.deepEqual({ ...o }, { a: 1 });
    assert.equal(o[AMF_AVMPLUS], true);
    assert.deepEqual(o[AMF3_TRAITS], { className: '', sealed: [], dynamic: true });
    assert.equal(values[2], 1);
    // The switched integer primitive re-encodes as an AMF0 number (documented).
    assert.deepEqual(encodeAmf0(values), Buffer.concat([bytes.subarray(0, bytes.length - 3), hex(`00${num(1)}`)]));
  });
});

describe('AMF0 encoder errors', () => {
  test('cyclic structures are rejected, not recursed forever', () => {
    const a: AmfObject = { name: 'a' };
    a.self = a;
    fails(catchError(() => encodeAmf0([a])), 'AMF_REFERENCE');
    const arr: AmfValue[] = [];
    arr.push({ inner: arr });
    fails(catchError(() => encodeAmf0Value(arr)), 'AMF_REFERENCE');
  });

  test('values AMF has no marker for', () => {
    fails(catchError(() => encodeAmf0Value((() => 1) as unknown as AmfValue)), 'AMF_UNKNOWN_MARKER');
    fails(catchError(() => encodeAmf0Value(Symbol('x') as unknown as AmfValue)), 'AMF_UNKNOWN_MARKER');
    fails(catchError(() => encodeAmf0Value(new Map() as unknown as AmfValue)), 'AMF_UNKNOWN_MARKER');
    fails(catchError(() => encodeAmf0Value({ k: new Date() } as unknown as AmfValue)), 'AMF_UNKNOWN_MARKER');
  });

  test('over-long names and bad timezones', () => {
    fails(catchError(() => encodeAmf0Value({ ['k'.repeat(70000)]: 1 })), 'AMF_TOO_LONG');
    fails(catchError(() => encodeAmf0Value(new AmfDate(0, 40000))), 'AMF_TOO_LONG');
  });

  test('very deep acyclic values fail with AMF_TOO_DEEP instead of a RangeError', () => {
    let v: AmfValue = 1;
    for (let i = 0; i < 200_000; i++) v = [v];
    fails(catchError(() => encodeAmf0Value(v)), 'AMF_TOO_DEEP');
    // The scratch buffer is still usable afterwards.
    assert.deepEqual(encodeAmf0Value(null), hex('05'));
  });
});

function catchError(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('AMF0 hostile input', () => {
  const wide: AmfLimits = {
    maxDepth: 1_000_000,
    maxStringLength: 2 ** 32,
    maxArrayLength: 2 ** 32,
    maxTotalValues: 2 ** 40,
    maxExpandedBytes: 2 ** 40,
  };

  test('length claims far beyond the buffer fail fast without allocating', () => {
    const claims = [
      hex('0a ffffffff 05 05 05 05 05 05 05 05 05 05 05 05 05 05 05'), // strict array
      hex('0c ffffffff 41414141'), // long string
      hex('0f ffffffff 41414141'), // XML document
      hex('02 ffff 4141'), // string
      hex(`03 ffff 4141`), // property name
      hex('08 ffffffff'), // ECMA array cut after its count
    ];
    const before = process.memoryUsage();
    const t0 = performance.now();
    for (const b of claims) {
      const limited = decodeAmf0(b);
      assert.ok(limited instanceof AmfError);
      assert.ok(['AMF_TOO_LONG', 'AMF_TRUNCATED'].includes(limited.code), limited.code);
      // Even with limits out of the way the byte count check must stop it.
      fails(decodeAmf0(b, wide), 'AMF_TRUNCATED');
    }
    const after = process.memoryUsage();
    assert.ok(performance.now() - t0 < 200);
    assert.ok(after.arrayBuffers - before.arrayBuffers < 16 * 1024 * 1024);
    assert.ok(after.heapUsed - before.heapUsed < 64 * 1024 * 1024);
    fails(decodeAmf0(hex('0a 00010001')), 'AMF_TOO_LONG');
  });

  test('depth bomb: 100k nested objects', () => {
    const parts: Buffer[] = [];
    for (let i = 0; i < 100_000; i++) parts.push(hex(`03 ${str16('a')}`));
    parts.push(hex('05'));
    const bomb = Buffer.concat(parts);
    const t0 = performance.now();
    fails(decodeAmf0(bomb), 'AMF_TOO_DEEP');
    // With the depth limit disabled the decoder must still not overflow the stack.
    fails(decodeAmf0(bomb, wide), 'AMF_TOO_DEEP');
    assert.ok(performance.now() - t0 < 2000);
  });

  test('depth limit is exact', () => {
    const nested = (n: number): Buffer => {
      const parts: Buffer[] = [];
      for (let i = 0; i < n; i++) parts.push(hex('0a 00000001'));
      parts.push(hex('05'));
      return Buffer.concat(parts);
    };
    const limits = { ...DEFAULT_AMF_LIMITS, maxDepth: 5 };
    assert.equal(ok(decodeAmf0(nested(5), limits)).length, 1);
    fails(decodeAmf0(nested(6), limits), 'AMF_TOO_DEEP');
  });

  test('reference bombs are charged their expanded size and height', () => {
    // Each level is a strict array holding two references to the previous one:
    // 40 levels would expand to 2^40 values for a consumer walking the tree.
    const parts: Buffer[] = [hex('0a 00000001 05')];
    for (let i = 1; i < 40; i++) parts.push(hex(`0a 00000002 07 ${(i - 1).toString(16).padStart(4, '0')} 07 ${(i - 1).toString(16).padStart(4, '0')}`));
    const bomb = Buffer.concat(parts);
    fails(decodeAmf0(bomb), 'AMF_TOO_LONG');
    // A handful of levels stays well inside the limit and decodes to shared instances.
    const small = ok(decodeAmf0(Buffer.concat(parts.slice(0, 4))));
    const last = small[3];
    assert.ok(Array.isArray(last) && last[0] === small[2]);
    assert.deepEqual(encodeAmf0(small), Buffer.concat(parts.slice(0, 4)));
    // Height: a reference to a deep object placed deeper must respect maxDepth.
    const deep = hex('0a00000001 0a00000001 0a00000001 05 0a00000001 0a00000001 07 0000');
    fails(decodeAmf0(deep, { ...DEFAULT_AMF_LIMITS, maxDepth: 4 }), 'AMF_TOO_DEEP');
    assert.equal(ok(decodeAmf0(deep, { ...DEFAULT_AMF_LIMITS, maxDepth: 5 })).length, 2);
  });

  test('bad and cyclic references', () => {
    fails(decodeAmf0(hex('07 0000')), 'AMF_REFERENCE');
    fails(decodeAmf0(hex(`03 ${str16('a')} 07 0001 000009`)), 'AMF_REFERENCE');
    // An object referring to itself while being decoded.
    fails(decodeAmf0(hex(`03 ${str16('me')} 07 0000 000009`)), 'AMF_REFERENCE');
    fails(decodeAmf0(hex('07 00')), 'AMF_TRUNCATED');
  });

  test('per-value limits', () => {
    const limits: AmfLimits = { maxDepth: 8, maxStringLength: 4, maxArrayLength: 2, maxTotalValues: 6, maxExpandedBytes: 1024 };
    fails(decodeAmf0(hex(`02 ${str16('hello')}`), limits), 'AMF_TOO_LONG');
    assert.deepEqual(ok(decodeAmf0(hex(`02 ${str16('hell')}`), limits)), ['hell']);
    fails(decodeAmf0(hex('0a 00000003 05 05 05'), limits), 'AMF_TOO_LONG');
    fails(decodeAmf0(hex(`03 ${str16('a')} 05 ${str16('b')} 05 ${str16('c')} 05 000009`), limits), 'AMF_TOO_LONG');
    fails(decodeAmf0(hex('05 05 05 05 05 05 05'), limits), 'AMF_TOO_LONG');
    assert.equal(ok(decodeAmf0(hex('05 05 05 05 05 05'), limits)).length, 6);
  });

  test('bad offsets', () => {
    fails(decodeAmf0Value(hex('05'), 1), 'AMF_TRUNCATED');
    fails(decodeAmf0Value(hex('05'), 2), 'AMF_TRUNCATED');
    fails(decodeAmf0Value(hex('05'), -1), 'AMF_TRUNCATED');
    fails(decodeAmf0Value(hex('05'), 0.5), 'AMF_TRUNCATED');
    assert.deepEqual(okValue(decodeAmf0Value(hex('06 05'), 1)), { value: null, offset: 2 });
    assert.deepEqual(ok(decodeAmf0(Buffer.alloc(0))), []);
  });
});

// ---------------------------------------------------------------------------
// Properties

const keyArb = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 6 }),
  fc.constantFrom('__proto__', '', '0', '10', 'constructor', 'toString'),
);
const stringArb = fc.oneof(fc.string({ maxLength: 20 }), fc.string({ unit: 'binary', maxLength: 20 }));

function buildObject(entries: [string, AmfValue][]): AmfObject {
  const o: AmfObject = {};
  for (const [k, v] of entries) {
    if (k === '__proto__') Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
    else o[k] = v;
  }
  return o;
}

/** Values AMF0 carries natively (no avmplus switch), so decode gives back the same tree. */
const { amf0: amf0ValueArb } = fc.letrec<{ amf0: AmfValue; leaf: AmfValue; node: AmfValue }>((tie) => ({
  amf0: fc.oneof({ depthSize: 'small', maxDepth: 5 }, tie('leaf'), tie('leaf'), tie('node')),
  leaf: fc.oneof(
    fc.double(),
    fc.integer(),
    fc.boolean(),
    stringArb,
    fc.constant(null),
    fc.constant(undefined),
    fc.record({ ms: fc.double(), tz: fc.integer({ min: -32768, max: 32767 }) }).map(({ ms, tz }) => new AmfDate(ms, tz)),
    stringArb.map((s) => new AmfXmlDocument(s)),
  ),
  node: fc.oneof(
    fc.array(tie('amf0'), { maxLength: 5 }),
    fc.array(fc.tuple(keyArb, tie('amf0')), { maxLength: 5 }).map(buildObject),
    fc.array(fc.tuple(keyArb, tie('amf0')), { maxLength: 5 }).map((e) => ecmaArray(buildObject(e))),
    fc.tuple(fc.string({ maxLength: 10 }), fc.array(fc.tuple(keyArb, tie('amf0')), { maxLength: 4 })).map(([cls, e]) => {
      const o = buildObject(e);
      Object.defineProperty(o, AMF_CLASS_NAME, { value: cls, enumerable: false });
      return o;
    }),
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

describe('AMF0 properties', () => {
  test('encode → decode gives the same tree, and re-encoding the same bytes', () => {
    fc.assert(
      fc.property(fc.array(amf0ValueArb, { maxLength: 4 }), (values) => {
        const bytes = encodeAmf0(values);
        const back = ok(decodeAmf0(bytes));
        assert.deepStrictEqual(back.map(norm), values.map(norm));
        assert.deepStrictEqual(encodeAmf0(back), bytes);
      }),
      { numRuns: 500 },
    );
  });

  test('every truncation of a valid value is AMF_TRUNCATED', () => {
    fc.assert(
      fc.property(amf0ValueArb, fc.nat(), (value, cut) => {
        const bytes = encodeAmf0Value(value);
        const end = cut % bytes.length;
        fails(decodeAmf0Value(bytes.subarray(0, end), 0), 'AMF_TRUNCATED');
      }),
      { numRuns: 500 },
    );
  });

  test('garbage never throws, and whatever decodes re-encodes to a fixpoint', () => {
    const markerHeavy = fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a.map((b) => (b & 0x80 ? b & 0x13 : b))));
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)), markerHeavy), (garbage) => {
        const t0 = performance.now();
        const r = decodeAmf0(garbage);
        assert.ok(performance.now() - t0 < 100);
        if (r instanceof AmfError) return;
        assert.ok(Array.isArray(r));
        const once = encodeAmf0(r);
        const again = ok(decodeAmf0(once));
        assert.deepStrictEqual(again.map(norm), r.map(norm));
        assert.deepStrictEqual(encodeAmf0(again), once);
      }),
      { numRuns: 3000 },
    );
  });

  test('mutated valid encodings never throw, and whatever decodes re-encodes to a fixpoint', () => {
    let decoded = 0;
    fc.assert(
      fc.property(fc.array(amf0ValueArb, { minLength: 1, maxLength: 3 }), mutationsArb, (values, mutations) => {
        const bytes = mutate(encodeAmf0(values), mutations);
        const r = decodeAmf0(bytes);
        if (r instanceof AmfError) return;
        decoded++;
        const once = encodeAmf0(r);
        const again = ok(decodeAmf0(once));
        assert.deepStrictEqual(again.map(norm), r.map(norm));
        assert.deepStrictEqual(encodeAmf0(again), once);
      }),
      { numRuns: 3000 },
    );
    assert.ok(decoded > 100, `only ${decoded} mutants decoded`);
  });

  test('decoding garbage at any offset never throws', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.integer({ min: -2, max: 70 }), (bytes, offset) => {
        const r = decodeAmf0Value(Buffer.from(bytes), offset);
        if (!(r instanceof AmfError)) assert.ok(r.offset > offset && r.offset <= bytes.length);
      }),
      { numRuns: 2000 },
    );
  });
});
