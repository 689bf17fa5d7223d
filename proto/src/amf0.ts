/**
 * AMF0 codec ("Action Message Format -- AMF 0", Adobe 2007) and the value
 * model shared with the AMF3 codec in ./amf3.ts.
 *
 * Decoders never throw across the public API: malformed, hostile or
 * over-limit input comes back as an AmfError. Encoders throw AmfError for
 * values AMF cannot carry (cycles, functions, strings too long for their
 * length field); their input is trusted application data.
 *
 * Round trip: encode(decode(bytes)) reproduces `bytes` exactly, except for
 * these non-canonical input forms, which are re-encoded canonically:
 *  - a long string (0x0C) shorter than 65536 UTF-8 bytes becomes 0x02;
 *  - a boolean byte other than 0x00/0x01 becomes 0x01;
 *  - a NaN with a non-canonical bit pattern becomes 0x7FF8000000000000;
 *  - invalid UTF-8 is decoded to U+FFFD and re-encoded as such;
 *  - "unsupported" (0x0D) decodes to `undefined` and re-encodes as 0x06;
 *  - a key repeated within one object keeps its first position and last value;
 *  - keys that are canonical array indices ("0", "42") are enumerated by JS
 *    before all other keys, in ascending order, and re-encoded that way;
 *  - an avmplus switch (0x11) to an AMF3 primitive (undefined, null, boolean,
 *    number, string) re-encodes as the native AMF0 value (objects, arrays,
 *    dates and XML documents remember the switch, see AMF_AVMPLUS);
 *  - AMF3 forms listed in ./amf3.ts.
 * The ECMA array count, which real encoders get wrong, is remembered and
 * re-emitted as long as the object still has the same number of keys.
 * Encoders write lone UTF-16 surrogates in JS strings as U+FFFD.
 *
 * References (0x07): decoding resolves them to the same JS instance; the
 * encoder writes one whenever an object, ECMA array, typed object or strict
 * array instance repeats within one message. A reference to an object that
 * is still being decoded (a cycle) is rejected, so decoded values are trees
 * or DAGs, never cyclic; encoding a cyclic value throws AMF_REFERENCE.
 */
import { Buffer } from 'node:buffer';
import { AmfError } from './errors.ts';
import { Amf3Reader, Amf3Writer } from './amf3.ts';

// Symbol.for so that two copies of this module (e.g. a duplicated workspace
// install) still agree on the markers.
/** Non-enumerable marker (`true`) on objects decoded from, or encoded as, an AMF0 ECMA array. */
export const AMF_ECMA_ARRAY: unique symbol = Symbol.for('meshcast.amf.ecmaArray');
/** Non-enumerable marker holding the class name of a typed object (AMF0 0x10, AMF3 named traits). */
export const AMF_CLASS_NAME: unique symbol = Symbol.for('meshcast.amf.className');
/** Non-enumerable marker holding the AMF3 traits an object was decoded with (see Amf3Traits). */
export const AMF3_TRAITS: unique symbol = Symbol.for('meshcast.amf3.traits');
/**
 * Non-enumerable marker on arrays decoded from an AMF3 array whose
 * associative part was non-empty; holds that part as an AmfObject. The array
 * itself is the dense part. An array carrying it is AMF0-encoded through the
 * avmplus switch, since AMF0 strict arrays cannot carry it.
 */
export const AMF3_ASSOCIATIVE: unique symbol = Symbol.for('meshcast.amf3.associative');
/**
 * Non-enumerable marker (`true`) on objects, arrays, AmfDate and
 * AmfXmlDocument values that an AMF0 stream carried through the avmplus
 * switch (0x11); the AMF0 encoder switches to AMF3 again for them.
 */
export const AMF_AVMPLUS: unique symbol = Symbol.for('meshcast.amf.avmplus');

/** AMF3 class description; sealed members are written in order before dynamic ones. */
export interface Amf3Traits {
  readonly className: string;
  readonly sealed: readonly string[];
  readonly dynamic: boolean;
}

export type AmfValue =
  | number
  | boolean
  | string
  | null
  | undefined
  | AmfObject
  | AmfValue[]
  | AmfDate
  | AmfXmlDocument
  | AmfXml
  | AmfVector
  | AmfDictionary
  | Buffer;

export interface AmfObject {
  [key: string]: AmfValue;
  [AMF_ECMA_ARRAY]?: true;
  [AMF_CLASS_NAME]?: string;
  [AMF3_TRAITS]?: Amf3Traits;
  [AMF_AVMPLUS]?: true;
}

/** AMF0 date (0x0B) / AMF3 date (0x08). `timezone` is AMF0's reserved minutes field (AMF3 has none). */
export class AmfDate {
  constructor(
    readonly ms: number,
    readonly timezone: number = 0,
  ) {}
}

/** flash.xml.XMLDocument: AMF0 0x0F, AMF3 0x07. */
export class AmfXmlDocument {
  constructor(readonly xml: string) {}
}

/** E4X XML: AMF3 0x0B only. */
export class AmfXml {
  constructor(readonly xml: string) {}
}

/**
 * AMF3 Vector. The item container picks the wire type: Int32Array → Vector.<int>,
 * Uint32Array → Vector.<uint>, Float64Array → Vector.<Number>, array →
 * Vector.<typeName> (typeName "" or "*" for untyped).
 */
export class AmfVector {
  constructor(
    readonly items: Int32Array | Uint32Array | Float64Array | AmfValue[],
    readonly fixed: boolean = false,
    readonly typeName: string = '',
  ) {}
}

/** AMF3 flash.utils.Dictionary (0x11). Keys compare like Map keys (identity for objects). */
export class AmfDictionary {
  constructor(
    readonly entries: Map<AmfValue, AmfValue>,
    readonly weakKeys: boolean = false,
  ) {}
}

export interface AmfLimits {
  /** Maximum container nesting (objects, arrays, vectors, dictionaries), counting references' contents. */
  maxDepth: number;
  /** Maximum bytes of one string, XML text or AMF3 byte array. */
  maxStringLength: number;
  /** Maximum elements of one array/vector, entries of one object/dictionary, sealed members of one class. */
  maxArrayLength: number;
  /** Maximum values in one decode call, counting a reference as the size of what it points to. */
  maxTotalValues: number;
  /**
   * Maximum expanded bytes of one decode call: the wire bytes with every reference (AMF0
   * object, AMF3 object, string and traits) counted at its target's full size each time it
   * is used. This is what anything walking the value (JSON, String(), a logger, the AMF0
   * re-encoder for AMF3 strings) pays, so it is bounded here and not by the wire size.
   */
  maxExpandedBytes: number;
}

/**
 * Limits sized for the RTMP command path: real commands and metadata are a
 * few dozen values a few levels deep. Counting references by the size of
 * their target keeps a small message from expanding into a huge DAG that
 * consumers (loggers, JSON) would walk exponentially.
 */
export const DEFAULT_AMF_LIMITS: Readonly<AmfLimits> = Object.freeze({
  maxDepth: 32,
  maxStringLength: 1024 * 1024,
  maxArrayLength: 65536,
  maxTotalValues: 1_000_000,
  maxExpandedBytes: 16 * 1024 * 1024,
});

const M_NUMBER = 0x00;
const M_BOOLEAN = 0x01;
const M_STRING = 0x02;
const M_OBJECT = 0x03;
const M_NULL = 0x05;
const M_UNDEFINED = 0x06;
const M_REFERENCE = 0x07;
const M_ECMA_ARRAY = 0x08;
const M_OBJECT_END = 0x09;
const M_STRICT_ARRAY = 0x0a;
const M_DATE = 0x0b;
const M_LONG_STRING = 0x0c;
const M_UNSUPPORTED = 0x0d;
const M_XML_DOCUMENT = 0x0f;
const M_TYPED_OBJECT = 0x10;
const M_AVMPLUS = 0x11;

/** Assigns without letting a "__proto__" key replace the prototype. */
function setAmfProperty(obj: AmfObject, key: string, value: AmfValue): void {
  if (key === '__proto__') {
    Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

/** Markers are non-enumerable so that JSON, Object.keys and deep equality see only the data. */
function markAmf(target: object, marker: symbol, value: unknown): void {
  Object.defineProperty(target, marker, { value, enumerable: false, writable: false, configurable: true });
}

/** Plain record: what object literals, decoded objects and ecmaArray() produce. */
function isPlainAmfObject(v: object): v is AmfObject {
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

export function ecmaArray(entries: Record<string, AmfValue>): AmfObject {
  const obj: AmfObject = {};
  for (const key of Object.keys(entries)) setAmfProperty(obj, key, entries[key]);
  markAmf(obj, AMF_ECMA_ARRAY, true);
  return obj;
}

/** The record behind an object, ECMA array or typed object; undefined for anything else. */
export function asAmfObject(v: AmfValue): AmfObject | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && isPlainAmfObject(v) ? v : undefined;
}

/** Declared ECMA array counts that disagreed with the entries actually present. */
const ecmaCountHints = new WeakMap<object, { count: number; keys: number }>();

function amfTruncated(what: string): AmfError {
  return new AmfError('AMF_TRUNCATED', `AMF data truncated in ${what}`);
}

/** Maps anything thrown inside a decoder to the AmfError the public API returns. */
function toAmfError(e: unknown): AmfError {
  if (e instanceof AmfError) return e;
  if (e instanceof RangeError) {
    if (/call stack/i.test(e.message)) return new AmfError('AMF_TOO_DEEP', 'AMF nesting exhausted the call stack');
    const code = (e as { code?: unknown }).code;
    if (code === 'ERR_OUT_OF_RANGE' || code === 'ERR_BUFFER_OUT_OF_BOUNDS') return amfTruncated('a fixed-size field');
    return new AmfError('AMF_TOO_LONG', `AMF value too large: ${e.message}`);
  }
  return new AmfError('AMF_UNKNOWN_MARKER', `malformed AMF: ${e instanceof Error ? e.message : String(e)}`);
}

/** Encoders throw: only genuine stack exhaustion is translated. */
function encodeError(e: unknown): unknown {
  if (e instanceof RangeError && /call stack/i.test(e.message)) {
    return new AmfError('AMF_TOO_DEEP', 'value nesting exhausted the call stack while encoding');
  }
  return e;
}

function checkOffset(buf: Buffer, offset: number): void {
  if (!Number.isInteger(offset) || offset < 0 || offset > buf.length) {
    throw new AmfError('AMF_TRUNCATED', `offset ${offset} outside buffer of ${buf.length} bytes`);
  }
}

class Amf0Reader {
  pos: number;
  /** Values counted against maxTotalValues. */
  total = 0;
  /** Deepest container level reached so far, to measure a container's height. */
  deepest = 0;
  private readonly refs: object[] = [];
  /** Per reference entry: expanded value count, or -1 while still being decoded. */
  private readonly refSize: number[] = [];
  private readonly refHeight: number[] = [];
  /** Per reference entry: expanded bytes (see AmfLimits.maxExpandedBytes); the start offset while being decoded. */
  private readonly refBytes: number[] = [];
  /** Bytes added by references beyond their wire size: the expanded size so far is pos + extra - start. */
  extra = 0;
  readonly start: number;
  private amf3: Amf3Reader | undefined;

  constructor(
    readonly buf: Buffer,
    pos: number,
    readonly limits: AmfLimits,
  ) {
    this.pos = pos;
    this.start = pos;
  }

  /** Refuses the message once its expanded size passes the budget. */
  checkExpanded(): void {
    const expanded = this.pos + this.extra - this.start;
    if (expanded > this.limits.maxExpandedBytes) throw tooLarge(this.limits);
  }

  readValue(depth: number): AmfValue {
    const buf = this.buf;
    if (this.pos >= buf.length) throw amfTruncated('value marker');
    if (++this.total > this.limits.maxTotalValues) throw tooManyValues(this.limits);
    // Where this value starts in expanded bytes: a container's size is measured from its marker.
    const at = this.pos + this.extra;
    const marker = buf[this.pos++]!;
    switch (marker) {
      case M_NUMBER:
        this.need(8, 'number');
        this.pos += 8;
        return buf.readDoubleBE(this.pos - 8);
      case M_BOOLEAN:
        this.need(1, 'boolean');
        return buf[this.pos++] !== 0;
      case M_STRING:
        this.need(2, 'string length');
        this.pos += 2;
        return this.utf8((buf[this.pos - 2]! << 8) | buf[this.pos - 1]!, 'string');
      case M_OBJECT:
        return this.readObject(depth, {}, at);
      case M_NULL:
        return null;
      case M_UNDEFINED:
      case M_UNSUPPORTED:
        return undefined;
      case M_REFERENCE:
        return this.readReference(depth);
      case M_ECMA_ARRAY:
        return this.readEcmaArray(depth, at);
      case M_STRICT_ARRAY:
        return this.readStrictArray(depth, at);
      case M_DATE: {
        this.need(10, 'date');
        const date = new AmfDate(buf.readDoubleBE(this.pos), buf.readInt16BE(this.pos + 8));
        this.pos += 10;
        return date;
      }
      case M_LONG_STRING:
        return this.utf8(this.u32('long string length'), 'long string');
      case M_XML_DOCUMENT:
        return new AmfXmlDocument(this.utf8(this.u32('XML document length'), 'XML document'));
      case M_TYPED_OBJECT: {
        this.need(2, 'class name length');
        this.pos += 2;
        const className = this.utf8((buf[this.pos - 2]! << 8) | buf[this.pos - 1]!, 'class name');
        const obj: AmfObject = {};
        markAmf(obj, AMF_CLASS_NAME, className);
        return this.readObject(depth, obj, at);
      }
      case M_AVMPLUS:
        return this.readAvmplus(depth);
      default:
        this.pos--;
        throw new AmfError(
          'AMF_UNKNOWN_MARKER',
          `unknown or misplaced AMF0 marker 0x${marker.toString(16).padStart(2, '0')} at offset ${this.pos}`,
        );
    }
  }

  private need(n: number, what: string): void {
    if (this.pos + n > this.buf.length) throw amfTruncated(what);
  }

  private u32(what: string): number {
    this.need(4, what);
    this.pos += 4;
    return this.buf.readUInt32BE(this.pos - 4);
  }

  private utf8(len: number, what: string): string {
    if (len > this.limits.maxStringLength) {
      throw new AmfError('AMF_TOO_LONG', `${what} of ${len} bytes exceeds limit ${this.limits.maxStringLength}`);
    }
    this.need(len, what);
    const start = this.pos;
    this.pos += len;
    return len === 0 ? '' : this.buf.toString('utf8', start, this.pos);
  }

  /** Registers a container in the reference table and checks its nesting level. */
  private open(depth: number, container: object, at: number): number {
    const level = depth + 1;
    if (level > this.limits.maxDepth) throw tooDeep(this.limits);
    const index = this.refs.length;
    this.refs.push(container);
    this.refSize.push(-1);
    this.refHeight.push(0);
    this.refBytes.push(at);
    return index;
  }

  /** Records the finished container's expanded size and height for later references. */
  private close(index: number, depth: number, totalBefore: number, deepestBefore: number): void {
    this.refSize[index] = this.total - totalBefore;
    this.refHeight[index] = this.deepest - depth;
    this.refBytes[index] = this.pos + this.extra - this.refBytes[index]!;
    if (deepestBefore > this.deepest) this.deepest = deepestBefore;
  }

  private readObject(depth: number, obj: AmfObject, at: number): AmfObject {
    const totalBefore = this.total - 1;
    const deepestBefore = this.deepest;
    const index = this.open(depth, obj, at);
    this.deepest = depth + 1;
    this.readProperties(depth, obj);
    this.close(index, depth, totalBefore, deepestBefore);
    return obj;
  }

  private readEcmaArray(depth: number, at: number): AmfObject {
    const totalBefore = this.total - 1;
    const deepestBefore = this.deepest;
    const declared = this.u32('ECMA array count');
    const obj: AmfObject = {};
    markAmf(obj, AMF_ECMA_ARRAY, true);
    const index = this.open(depth, obj, at);
    this.deepest = depth + 1;
    const read = this.readProperties(depth, obj);
    // The declared count is only a hint (encoders lie); keep a wrong one so re-encoding reproduces it.
    if (read !== declared) ecmaCountHints.set(obj, { count: declared, keys: Object.keys(obj).length });
    this.close(index, depth, totalBefore, deepestBefore);
    return obj;
  }

  /** Reads key/value pairs up to the empty-key + 0x09 terminator; returns how many. */
  private readProperties(depth: number, obj: AmfObject): number {
    const buf = this.buf;
    const maxEntries = this.limits.maxArrayLength;
    for (let n = 0; ; n++) {
      this.need(2, 'property name length');
      const len = (buf[this.pos]! << 8) | buf[this.pos + 1]!;
      this.pos += 2;
      if (len === 0) {
        this.need(1, 'object end marker');
        // An empty key followed by anything but 0x09 is a real "" property.
        if (buf[this.pos] === M_OBJECT_END) {
          this.pos++;
          return n;
        }
      }
      if (n >= maxEntries) throw new AmfError('AMF_TOO_LONG', `object has more than ${maxEntries} entries`);
      const key = this.utf8(len, 'property name');
      setAmfProperty(obj, key, this.readValue(depth + 1));
    }
  }

  private readStrictArray(depth: number, at: number): AmfValue[] {
    const totalBefore = this.total - 1;
    const deepestBefore = this.deepest;
    const count = this.u32('strict array count');
    if (count > this.limits.maxArrayLength) {
      throw new AmfError('AMF_TOO_LONG', `strict array of ${count} elements exceeds limit ${this.limits.maxArrayLength}`);
    }
    // Every element takes at least one byte: reject impossible counts before looping.
    this.need(count, 'strict array elements');
    const arr: AmfValue[] = [];
    const index = this.open(depth, arr, at);
    this.deepest = depth + 1;
    for (let i = 0; i < count; i++) arr.push(this.readValue(depth + 1));
    this.close(index, depth, totalBefore, deepestBefore);
    return arr;
  }

  private readReference(depth: number): AmfValue {
    this.need(2, 'reference index');
    const index = (this.buf[this.pos]! << 8) | this.buf[this.pos + 1]!;
    this.pos += 2;
    const target = this.refs[index];
    if (target === undefined) {
      throw new AmfError('AMF_REFERENCE', `AMF0 reference ${index} but only ${this.refs.length} objects decoded`);
    }
    const size = this.refSize[index]!;
    if (size < 0) throw new AmfError('AMF_REFERENCE', `AMF0 reference ${index} to an enclosing object (cycle)`);
    this.chargeReference(size, this.refHeight[index]!, depth);
    // The 3 reference bytes stand for the whole target, counted again at every use.
    this.extra += this.refBytes[index]! - 3;
    this.checkExpanded();
    return target as AmfValue;
  }

  private chargeReference(size: number, height: number, depth: number): void {
    this.total += size - 1;
    if (this.total > this.limits.maxTotalValues) throw tooManyValues(this.limits);
    if (depth + height > this.limits.maxDepth) throw tooDeep(this.limits);
    if (depth + height > this.deepest) this.deepest = depth + height;
  }

  private readAvmplus(depth: number): AmfValue {
    // One AMF3 context per AMF0 message, as BlazeDS does: references may span switched values.
    const r3 = (this.amf3 ??= new Amf3Reader(this.buf, this.limits));
    r3.pos = this.pos;
    r3.total = this.total - 1;
    r3.deepest = this.deepest;
    r3.extra = this.extra;
    r3.start = this.start;
    const value = r3.readValue(depth);
    this.pos = r3.pos;
    this.total = r3.total;
    this.deepest = r3.deepest;
    this.extra = r3.extra;
    if (
      typeof value === 'object' &&
      value !== null &&
      (Array.isArray(value) || value instanceof AmfDate || value instanceof AmfXmlDocument || isPlainAmfObject(value))
    ) {
      markAmf(value, AMF_AVMPLUS, true);
    }
    return value;
  }
}

function tooDeep(limits: AmfLimits): AmfError {
  return new AmfError('AMF_TOO_DEEP', `AMF nesting deeper than ${limits.maxDepth}`);
}

function tooLarge(limits: AmfLimits): AmfError {
  return new AmfError('AMF_TOO_LARGE', `AMF data expands to more than ${limits.maxExpandedBytes} bytes (references counted at every use)`);
}

function tooManyValues(limits: AmfLimits): AmfError {
  return new AmfError('AMF_TOO_LONG', `AMF data holds more than ${limits.maxTotalValues} values`);
}

/** Decodes every AMF0 value in `buf`, in order, sharing one reference table (one RTMP message). */
export function decodeAmf0(buf: Buffer, limits: AmfLimits = DEFAULT_AMF_LIMITS): AmfValue[] | AmfError {
  try {
    const reader = new Amf0Reader(buf, 0, limits);
    const values: AmfValue[] = [];
    while (reader.pos < buf.length) values.push(reader.readValue(0));
    reader.checkExpanded();
    return values;
  } catch (e) {
    return toAmfError(e);
  }
}

/** Decodes one AMF0 value at `offset`; references can only point inside this value. */
export function decodeAmf0Value(
  buf: Buffer,
  offset: number,
  limits: AmfLimits = DEFAULT_AMF_LIMITS,
): { value: AmfValue; offset: number } | AmfError {
  try {
    checkOffset(buf, offset);
    const reader = new Amf0Reader(buf, offset, limits);
    const value = reader.readValue(0);
    reader.checkExpanded();
    return { value, offset: reader.pos };
  } catch (e) {
    return toAmfError(e);
  }
}

// ---------------------------------------------------------------------------
// Encoding

/** One reusable scratch buffer: encoders copy the result out, so steady-state encoding allocates once. */
let scratch: Buffer | undefined = Buffer.allocUnsafe(4096);
const SCRATCH_KEEP_MAX = 64 * 1024;

/** Growable big-endian byte sink shared by the AMF0 and AMF3 encoders. */
export class AmfByteWriter {
  buf: Buffer;
  pos = 0;
  private ownsScratch: boolean;

  constructor() {
    // A getter on a value being encoded could re-enter an encoder; it then gets its own buffer.
    if (scratch !== undefined) {
      this.buf = scratch;
      scratch = undefined;
      this.ownsScratch = true;
    } else {
      this.buf = Buffer.allocUnsafe(256);
      this.ownsScratch = false;
    }
  }

  ensure(n: number): void {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(v: number): void {
    if (this.pos >= this.buf.length) this.ensure(1);
    this.buf[this.pos++] = v;
  }

  u16(v: number): void {
    this.ensure(2);
    this.buf[this.pos] = v >>> 8;
    this.buf[this.pos + 1] = v & 0xff;
    this.pos += 2;
  }

  u32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
  }

  f64(v: number): void {
    this.ensure(8);
    this.buf.writeDoubleBE(v, this.pos);
    this.pos += 8;
  }

  bytes(src: Uint8Array): void {
    this.ensure(src.length);
    this.buf.set(src, this.pos);
    this.pos += src.length;
  }

  /** Writes UTF-8 at `at` (capacity already ensured by the caller) and returns the byte count. */
  utf8At(s: string, at: number): number {
    const buf = this.buf;
    const n = s.length;
    // Short ASCII (keys, command names) is the common case; a JS loop beats the native call there.
    if (n <= 32) {
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[at + i] = c;
      }
      if (i === n) return n;
    }
    return buf.write(s, at, 'utf8');
  }

  /** Returns a right-sized copy of what was written and hands the scratch buffer back. */
  finish(): Buffer {
    const out = Buffer.allocUnsafe(this.pos);
    this.buf.copy(out, 0, 0, this.pos);
    this.release();
    return out;
  }

  /** Idempotent; only the writer that borrowed the scratch buffer returns one. */
  release(): void {
    if (!this.ownsScratch) return;
    this.ownsScratch = false;
    scratch = this.buf.length <= SCRATCH_KEEP_MAX ? this.buf : Buffer.allocUnsafe(4096);
  }
}

class Amf0Writer {
  private readonly refs = new Map<object, number>();
  private readonly active = new Set<object>();
  private amf3: Amf3Writer | undefined;

  constructor(
    readonly out: AmfByteWriter,
    private readonly preserveAvmplus: boolean,
  ) {}

  write(v: AmfValue): void {
    const out = this.out;
    switch (typeof v) {
      case 'number':
        out.ensure(9);
        out.buf[out.pos++] = M_NUMBER;
        out.buf.writeDoubleBE(v, out.pos);
        out.pos += 8;
        return;
      case 'boolean':
        out.u8(M_BOOLEAN);
        out.u8(v ? 1 : 0);
        return;
      case 'string':
        this.writeString(v);
        return;
      case 'undefined':
        out.u8(M_UNDEFINED);
        return;
      case 'object':
        if (v === null) out.u8(M_NULL);
        else this.writeComplex(v);
        return;
      default:
        throw new AmfError('AMF_UNKNOWN_MARKER', `AMF cannot encode a value of type ${typeof v}`);
    }
  }

  private writeString(s: string): void {
    const out = this.out;
    if (s.length <= 0xffff / 3) {
      out.ensure(3 + s.length * 3);
      out.buf[out.pos] = M_STRING;
      const n = out.utf8At(s, out.pos + 3);
      out.buf[out.pos + 1] = n >>> 8;
      out.buf[out.pos + 2] = n & 0xff;
      out.pos += 3 + n;
      return;
    }
    const n = Buffer.byteLength(s, 'utf8');
    if (n > 0xffff) {
      out.u8(M_LONG_STRING);
      out.u32(n);
    } else {
      out.u8(M_STRING);
      out.u16(n);
    }
    out.ensure(n);
    out.pos += out.utf8At(s, out.pos);
  }

  /** u16-length string without marker (property names, class names). */
  private writeName(s: string): void {
    const out = this.out;
    out.ensure(2 + s.length * 3);
    const n = out.utf8At(s, out.pos + 2);
    if (n > 0xffff) throw new AmfError('AMF_TOO_LONG', `AMF0 property/class name of ${n} bytes exceeds 65535`);
    out.buf[out.pos] = n >>> 8;
    out.buf[out.pos + 1] = n & 0xff;
    out.pos += 2 + n;
  }

  private writeComplex(v: Exclude<AmfValue, null | undefined | number | boolean | string>): void {
    const out = this.out;
    if (Array.isArray(v)) {
      const assoc = (v as { [AMF3_ASSOCIATIVE]?: AmfObject })[AMF3_ASSOCIATIVE];
      if (this.preserveAvmplus && (assoc !== undefined || AMF_AVMPLUS in v)) return this.writeAvmplus(v);
      if (this.writeReference(v)) return;
      if (assoc !== undefined) return this.writeMixedArray(v, assoc);
      out.u8(M_STRICT_ARRAY);
      out.u32(v.length);
      this.active.add(v);
      for (let i = 0; i < v.length; i++) this.write(v[i]);
      this.active.delete(v);
      return;
    }
    if (v instanceof AmfDate) {
      if (this.preserveAvmplus && AMF_AVMPLUS in v) return this.writeAvmplus(v);
      const tz = v.timezone;
      if (!Number.isInteger(tz) || tz < -0x8000 || tz > 0x7fff) {
        throw new AmfError('AMF_TOO_LONG', `AMF0 date timezone ${tz} is not a 16-bit integer`);
      }
      out.ensure(11);
      out.buf[out.pos++] = M_DATE;
      out.buf.writeDoubleBE(v.ms, out.pos);
      out.buf.writeInt16BE(tz, out.pos + 8);
      out.pos += 10;
      return;
    }
    if (v instanceof AmfXmlDocument) {
      if (this.preserveAvmplus && AMF_AVMPLUS in v) return this.writeAvmplus(v);
      const n = Buffer.byteLength(v.xml, 'utf8');
      out.u8(M_XML_DOCUMENT);
      out.u32(n);
      out.ensure(n);
      out.pos += out.utf8At(v.xml, out.pos);
      return;
    }
    if (v instanceof Uint8Array || v instanceof AmfXml || v instanceof AmfVector || v instanceof AmfDictionary) {
      return this.writeAvmplus(v);
    }
    if (!isPlainAmfObject(v)) {
      const name = (v as object).constructor?.name ?? 'unknown class';
      throw new AmfError('AMF_UNKNOWN_MARKER', `AMF cannot encode an instance of ${name}`);
    }
    if (this.preserveAvmplus && v[AMF_AVMPLUS] === true) return this.writeAvmplus(v);
    if (this.writeReference(v)) return;
    const keys = Object.keys(v);
    const className = v[AMF_CLASS_NAME];
    if (typeof className === 'string') {
      out.u8(M_TYPED_OBJECT);
      this.writeName(className);
    } else if (v[AMF_ECMA_ARRAY] === true) {
      out.u8(M_ECMA_ARRAY);
      const hint = ecmaCountHints.get(v);
      out.u32(hint !== undefined && hint.keys === keys.length ? hint.count : keys.length);
    } else {
      out.u8(M_OBJECT);
    }
    this.active.add(v);
    for (const key of keys) {
      this.writeName(key);
      this.write(v[key]);
    }
    this.active.delete(v);
    this.writeObjectEnd();
  }

  /** An AMF3 array with an associative part, flattened into one AMF0 ECMA array. */
  private writeMixedArray(v: AmfValue[], assoc: AmfObject): void {
    const keys = Object.keys(assoc);
    this.out.u8(M_ECMA_ARRAY);
    this.out.u32(v.length + keys.length);
    this.active.add(v);
    for (let i = 0; i < v.length; i++) {
      this.writeName(String(i));
      this.write(v[i]);
    }
    for (const key of keys) {
      this.writeName(key);
      this.write(assoc[key]);
    }
    this.active.delete(v);
    this.writeObjectEnd();
  }

  private writeObjectEnd(): void {
    const out = this.out;
    out.ensure(3);
    out.buf[out.pos] = 0;
    out.buf[out.pos + 1] = 0;
    out.buf[out.pos + 2] = M_OBJECT_END;
    out.pos += 3;
  }

  /** Emits 0x07 for an object already written in this message; true if it did. */
  private writeReference(v: object): boolean {
    const index = this.refs.get(v);
    if (index === undefined) {
      this.refs.set(v, this.refs.size);
      return false;
    }
    if (this.active.has(v)) throw new AmfError('AMF_REFERENCE', 'cannot encode a cyclic structure as AMF');
    // Indices past the u16 range cannot be referenced; the copy gets a fresh index, as in the decoder.
    if (index > 0xffff) {
      this.refs.set(v, this.refs.size);
      return false;
    }
    this.out.u8(M_REFERENCE);
    this.out.u16(index);
    return true;
  }

  private writeAvmplus(v: AmfValue): void {
    this.out.u8(M_AVMPLUS);
    (this.amf3 ??= new Amf3Writer(this.out)).write(v);
  }
}

export interface Amf0EncodeOptions {
  /**
   * true (default): values that arrived through the avmplus switch (marked
   * AMF_AVMPLUS) and AMF3 arrays with an associative part are written through
   * 0x11 again, so re-encoding reproduces the input. false: they are written
   * as plain AMF0 (associative arrays as ECMA arrays), which is what to send
   * to peers that only speak AMF0 (e.g. when relaying type-15 metadata as
   * type 18). Values with no AMF0 form (byte arrays, E4X XML, vectors,
   * dictionaries) use 0x11 either way.
   */
  preserveAvmplus?: boolean;
}

/** Encodes values as one AMF0 message body (shared reference table). */
export function encodeAmf0(values: readonly AmfValue[], options?: Amf0EncodeOptions): Buffer {
  const out = new AmfByteWriter();
  try {
    const writer = new Amf0Writer(out, options?.preserveAvmplus ?? true);
    for (const v of values) writer.write(v);
    return out.finish();
  } catch (e) {
    out.release();
    throw encodeError(e);
  }
}

export function encodeAmf0Value(value: AmfValue, options?: Amf0EncodeOptions): Buffer {
  return encodeAmf0([value], options);
}

/**
 * Plumbing shared with ./amf3.ts. Not a stable API: exported only because the
 * two codecs live in separate modules.
 */
export const amfInternals = Object.freeze({
  setProperty: setAmfProperty,
  mark: markAmf,
  isPlainObject: isPlainAmfObject,
  truncated: amfTruncated,
  toError: toAmfError,
  encodeError,
  tooDeep,
  tooManyValues,
  tooLarge,
  checkOffset,
});
