/**
 * AMF3 codec ("AMF 3 Specification", Adobe 2013) as RTMP carries it: inside
 * AMF0 behind the avmplus switch (0x11), in command (type 17) and data
 * (type 15) messages whose body is a 0x00 format byte then AMF0 values.
 *
 * Representation (types live in ./amf0.ts):
 *  - integer and double → number; the encoder writes integers in
 *    [-2^28, 2^28) (except -0) as U29 integers, everything else as doubles;
 *  - string → string; XMLDocument → AmfXmlDocument; XML → AmfXml;
 *    date → AmfDate (timezone 0); ByteArray → Buffer (a copy);
 *  - array → JS array of the dense part; a non-empty associative part is
 *    attached as AMF3_ASSOCIATIVE (never as array properties, since a key
 *    such as "7" would otherwise change the array's length);
 *  - object → plain object carrying its traits in AMF3_TRAITS (and the class
 *    name in AMF_CLASS_NAME); externalizable objects are rejected with
 *    AMF_UNKNOWN_MARKER, because their body has a class-private format
 *    and cannot be skipped or bounded;
 *  - vectors → AmfVector over Int32Array / Uint32Array / Float64Array / array;
 *  - dictionary → AmfDictionary (a Map).
 *
 * References: all three tables (strings, objects, traits) are honoured; a
 * reference to an object still being decoded (a cycle) is rejected with
 * AMF_REFERENCE so that decoded values are always trees or DAGs, and a
 * reference is charged the full size and height of its target against
 * maxTotalValues / maxDepth; every reference (string, object or traits) is
 * charged its target's bytes against maxExpandedBytes at each use. The
 * encoder writes references for repeated strings, repeated object
 * identities and repeated traits objects.
 *
 * Non-canonical input forms that re-encode differently: doubles holding an
 * integer in U29 range, over-long U29 encodings, non-empty strings repeated
 * inline instead of by reference, date headers other than 0x01, vector
 * "fixed" and dictionary "weak keys" bytes other than 0/1, duplicate
 * dictionary keys (SameValueZero), duplicate object keys, and the JS key
 * ordering rule described in ./amf0.ts.
 */
import { Buffer } from 'node:buffer';
import { AmfError } from './errors.ts';
import {
  AMF3_ASSOCIATIVE,
  AMF3_TRAITS,
  AMF_CLASS_NAME,
  AMF_ECMA_ARRAY,
  AmfByteWriter,
  AmfDate,
  AmfDictionary,
  AmfVector,
  AmfXml,
  AmfXmlDocument,
  DEFAULT_AMF_LIMITS,
  amfInternals,
  decodeAmf0,
  encodeAmf0,
} from './amf0.ts';
import type { Amf3Traits, AmfLimits, AmfObject, AmfValue } from './amf0.ts';

const UNDEFINED = 0x00;
const NULL = 0x01;
const FALSE = 0x02;
const TRUE = 0x03;
const INTEGER = 0x04;
const DOUBLE = 0x05;
const STRING = 0x06;
const XML_DOCUMENT = 0x07;
const DATE = 0x08;
const ARRAY = 0x09;
const OBJECT = 0x0a;
const XML = 0x0b;
const BYTE_ARRAY = 0x0c;
const VECTOR_INT = 0x0d;
const VECTOR_UINT = 0x0e;
const VECTOR_DOUBLE = 0x0f;
const VECTOR_OBJECT = 0x10;
const DICTIONARY = 0x11;

const U29_MAX = 0x1fffffff;
/** Largest count/length/index that fits a U29 after the low flag bit. */
const U28_MAX = 0x0fffffff;
const INT29_MIN = -0x10000000;
const INT29_MAX = 0x0fffffff;

function tooLong(what: string, n: number, limit: number): AmfError {
  return new AmfError('AMF_TOO_LONG', `AMF3 ${what} of ${n} exceeds limit ${limit}`);
}

/**
 * Stateful AMF3 decoder whose reference tables persist across readValue
 * calls (one AMF0 message may switch to AMF3 several times). Low-level:
 * readValue throws AmfError; the exported decode functions wrap it.
 */
export class Amf3Reader {
  pos: number;
  /** Values counted against maxTotalValues. */
  total = 0;
  /** Deepest container level reached, to measure a container's height. */
  deepest = 0;
  private readonly strings: string[] = [];
  private readonly objects: object[] = [];
  /** Expanded value count per object-table entry; -1 while it is being decoded. */
  private readonly objectSize: number[] = [];
  private readonly objectHeight: number[] = [];
  /** Expanded bytes per object-table entry; its start offset while it is being decoded. */
  private readonly objectBytes: number[] = [];
  /** UTF-8 bytes per string-table entry, charged again at every reference. */
  private readonly stringBytes: number[] = [];
  private readonly traits: Amf3Traits[] = [];
  /** Bytes of the class and member names per traits entry: a traits reference repeats them all. */
  private readonly traitBytes: number[] = [];
  /** Bytes added by references beyond their wire size; the expanded size so far is pos + extra - start. */
  extra = 0;
  start: number;

  constructor(
    readonly buf: Buffer,
    readonly limits: AmfLimits = DEFAULT_AMF_LIMITS,
    pos = 0,
  ) {
    this.pos = pos;
    this.start = pos;
  }

  /** Refuses the message once its expanded size passes the budget (see AmfLimits.maxExpandedBytes). */
  checkExpanded(): void {
    if (this.pos + this.extra - this.start > this.limits.maxExpandedBytes) throw amfInternals.tooLarge(this.limits);
  }

  private charge(bytes: number): void {
    this.extra += bytes;
    this.checkExpanded();
  }

  /** Reads one value at `pos`; `depth` is the number of enclosing containers. */
  readValue(depth: number): AmfValue {
    const buf = this.buf;
    if (this.pos >= buf.length) throw amfInternals.truncated('AMF3 value marker');
    if (++this.total > this.limits.maxTotalValues) throw amfInternals.tooManyValues(this.limits);
    // Where this value starts in expanded bytes: a complex value's size is measured from its marker.
    const at = this.pos + this.extra;
    const marker = buf[this.pos++]!;
    switch (marker) {
      case UNDEFINED:
        return undefined;
      case NULL:
        return null;
      case FALSE:
        return false;
      case TRUE:
        return true;
      case INTEGER:
        // Sign-extend the 29-bit value.
        return (this.u29() << 3) >> 3;
      case DOUBLE:
        this.need(8, 'AMF3 double');
        this.pos += 8;
        return buf.readDoubleBE(this.pos - 8);
      case STRING:
        return this.string();
      case XML_DOCUMENT:
      case DATE:
      case ARRAY:
      case OBJECT:
      case XML:
      case BYTE_ARRAY:
      case VECTOR_INT:
      case VECTOR_UINT:
      case VECTOR_DOUBLE:
      case VECTOR_OBJECT:
      case DICTIONARY:
        return this.readComplex(marker, depth, at);
      default:
        this.pos--;
        throw new AmfError(
          'AMF_UNKNOWN_MARKER',
          `unknown AMF3 marker 0x${marker.toString(16).padStart(2, '0')} at offset ${this.pos}`,
        );
    }
  }

  private need(n: number, what: string): void {
    if (this.pos + n > this.buf.length) throw amfInternals.truncated(what);
  }

  private u29(): number {
    const buf = this.buf;
    const end = buf.length;
    let p = this.pos;
    let value = 0;
    for (let i = 0; i < 3; i++) {
      if (p >= end) throw amfInternals.truncated('AMF3 U29');
      const b = buf[p++]!;
      if (b < 0x80) {
        this.pos = p;
        return (value << 7) | b;
      }
      value = (value << 7) | (b & 0x7f);
    }
    if (p >= end) throw amfInternals.truncated('AMF3 U29');
    this.pos = p + 1;
    // The fourth byte contributes all 8 bits.
    return (value << 8) | buf[p]!;
  }

  private utf8(len: number, what: string): string {
    if (len > this.limits.maxStringLength) throw tooLong(`${what} length`, len, this.limits.maxStringLength);
    this.need(len, what);
    const start = this.pos;
    this.pos += len;
    return this.buf.toString('utf8', start, this.pos);
  }

  /** UTF-8-vr: inline (added to the string table unless empty) or a string-table reference. */
  private string(): string {
    const header = this.u29();
    if ((header & 1) === 0) {
      const s = this.strings[header >>> 1];
      if (s === undefined) {
        throw new AmfError('AMF_REFERENCE', `AMF3 string reference ${header >>> 1} of ${this.strings.length}`);
      }
      this.charge(this.stringBytes[header >>> 1]!);
      return s;
    }
    const len = header >>> 1;
    if (len === 0) return '';
    const s = this.utf8(len, 'string');
    if (this.strings.length >= this.limits.maxTotalValues) throw amfInternals.tooManyValues(this.limits);
    this.strings.push(s);
    this.stringBytes.push(len);
    return s;
  }

  private readComplex(marker: number, depth: number, at: number): AmfValue {
    const header = this.u29();
    if ((header & 1) === 0) return this.reference(header >>> 1, depth);
    const n = header >>> 1;
    switch (marker) {
      case XML_DOCUMENT:
        return this.leaf(new AmfXmlDocument(this.utf8(n, 'XML document')), at);
      case XML:
        return this.leaf(new AmfXml(this.utf8(n, 'XML')), at);
      case DATE: {
        this.need(8, 'AMF3 date');
        this.pos += 8;
        return this.leaf(new AmfDate(this.buf.readDoubleBE(this.pos - 8)), at);
      }
      case BYTE_ARRAY: {
        if (n > this.limits.maxStringLength) throw tooLong('byte array length', n, this.limits.maxStringLength);
        this.need(n, 'AMF3 byte array');
        // Copy: the input is typically a reused chunk-reassembly buffer.
        const bytes = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
        this.pos += n;
        return this.leaf(bytes, at);
      }
      case ARRAY:
        return this.readArray(n, depth, at);
      case OBJECT:
        return this.readObject(header, depth, at);
      case VECTOR_OBJECT:
        return this.readObjectVector(n, depth, at);
      case DICTIONARY:
        return this.readDictionary(n, depth, at);
      default:
        return this.readNumberVector(marker, n, at);
    }
  }

  private reference(index: number, depth: number): AmfValue {
    const target = this.objects[index];
    if (target === undefined) {
      throw new AmfError('AMF_REFERENCE', `AMF3 object reference ${index} of ${this.objects.length}`);
    }
    const size = this.objectSize[index]!;
    if (size < 0) throw new AmfError('AMF_REFERENCE', `AMF3 reference ${index} to an enclosing object (cycle)`);
    const height = this.objectHeight[index]!;
    this.total += size - 1;
    if (this.total > this.limits.maxTotalValues) throw amfInternals.tooManyValues(this.limits);
    if (depth + height > this.limits.maxDepth) throw amfInternals.tooDeep(this.limits);
    if (depth + height > this.deepest) this.deepest = depth + height;
    this.charge(this.objectBytes[index]!);
    return target as AmfValue;
  }

  private leaf<T extends object>(value: T, at: number): T {
    this.objects.push(value);
    this.objectSize.push(1);
    this.objectHeight.push(0);
    this.objectBytes.push(this.pos + this.extra - at);
    return value;
  }

  private open(depth: number, container: object, at: number): number {
    if (depth + 1 > this.limits.maxDepth) throw amfInternals.tooDeep(this.limits);
    const index = this.objects.length;
    this.objects.push(container);
    this.objectSize.push(-1);
    this.objectHeight.push(0);
    this.objectBytes.push(at);
    this.deepest = depth + 1;
    return index;
  }

  private close(index: number, depth: number, totalBefore: number, deepestBefore: number): void {
    this.objectSize[index] = this.total - totalBefore;
    this.objectHeight[index] = this.deepest - depth;
    this.objectBytes[index] = this.pos + this.extra - this.objectBytes[index]!;
    if (deepestBefore > this.deepest) this.deepest = deepestBefore;
  }

  private checkCount(what: string, n: number): void {
    if (n > this.limits.maxArrayLength) throw tooLong(what, n, this.limits.maxArrayLength);
  }

  private readArray(dense: number, depth: number, at: number): AmfValue[] {
    const totalBefore = this.total - 1;
    const deepestBefore = this.deepest;
    this.checkCount('array length', dense);
    const arr: AmfValue[] = [];
    const index = this.open(depth, arr, at);
    let assoc: AmfObject | undefined;
    for (let n = 0; ; n++) {
      const key = this.string();
      if (key === '') break;
      if (n >= this.limits.maxArrayLength) throw tooLong('associative entry count', n + 1, this.limits.maxArrayLength);
      assoc ??= {};
      amfInternals.setProperty(assoc, key, this.readValue(depth + 1));
    }
    // Each element takes at least one byte: reject impossible counts before looping.
    this.need(dense, 'AMF3 array elements');
    for (let i = 0; i < dense; i++) arr.push(this.readValue(depth + 1));
    if (assoc !== undefined) amfInternals.mark(arr, AMF3_ASSOCIATIVE, assoc);
    this.close(index, depth, totalBefore, deepestBefore);
    return arr;
  }

  private readObject(header: number, depth: number, at: number): AmfObject {
    const totalBefore = this.total - 1;
    const deepestBefore = this.deepest;
    let traits: Amf3Traits;
    if ((header & 2) === 0) {
      const ref = this.traits[header >>> 2];
      if (ref === undefined) {
        throw new AmfError('AMF_REFERENCE', `AMF3 traits reference ${header >>> 2} of ${this.traits.length}`);
      }
      traits = ref;
      this.charge(this.traitBytes[header >>> 2]!);
    } else if ((header & 4) !== 0) {
      const className = this.string();
      throw new AmfError('AMF_UNKNOWN_MARKER', `externalizable AMF3 class "${className}" is not supported`);
    } else {
      const count = header >>> 4;
      this.checkCount('sealed member count', count);
      const namesAt = this.pos + this.extra;
      const className = this.string();
      this.need(count, 'AMF3 sealed member names');
      const sealed: string[] = [];
      for (let i = 0; i < count; i++) sealed.push(this.string());
      traits = Object.freeze({ className, sealed: Object.freeze(sealed), dynamic: (header & 8) !== 0 });
      this.traits.push(traits);
      this.traitBytes.push(this.pos + this.extra - namesAt);
    }
    const obj: AmfObject = {};
    amfInternals.mark(obj, AMF3_TRAITS, traits);
    if (traits.className !== '') amfInternals.mark(obj, AMF_CLASS_NAME, traits.className);
    const index = this.open(depth, obj, at);
    const sealed = traits.sealed;
    this.need(sealed.length, 'AMF3 sealed member values');
    for (let i = 0; i < sealed.length; i++) amfInternals.setProperty(obj, sealed[i]!, this.readValue(depth + 1));
    if (traits.dynamic) {
      for (let n = 0; ; n++) {
        const key = this.string();
        if (key === '') break;
        if (n >= this.limits.maxArrayLength) throw tooLong('dynamic member count', n + 1, this.limits.maxArrayLength);
        amfInternals.setProperty(obj, key, this.readValue(depth + 1));
      }
    }
    this.close(index, depth, totalBefore, deepestBefore);
    return obj;
  }

  private readNumberVector(marker: number, count: number, at: number): AmfVector {
    this.checkCount('vector length', count);
    this.need(1, 'AMF3 vector');
    const fixed = this.buf[this.pos++] !== 0;
    const buf = this.buf;
    let p = this.pos;
    let items: Int32Array | Uint32Array | Float64Array;
    if (marker === VECTOR_DOUBLE) {
      this.need(count * 8, 'AMF3 vector elements');
      items = new Float64Array(count);
      for (let i = 0; i < count; i++, p += 8) items[i] = buf.readDoubleBE(p);
    } else {
      this.need(count * 4, 'AMF3 vector elements');
      items = marker === VECTOR_INT ? new Int32Array(count) : new Uint32Array(count);
      // Typed-array stores wrap to the element type, so one read suits both signednesses.
      for (let i = 0; i < count; i++, p += 4) items[i] = buf.readUInt32BE(p);
    }
    this.pos = p;
    return this.leaf(new AmfVector(items, fixed), at);
  }

  private readObjectVector(count: number, depth: number, at: number): AmfVector {
    const totalBefore = this.total - 1;
    const deepestBefore = this.deepest;
    this.checkCount('vector length', count);
    this.need(1, 'AMF3 vector');
    const fixed = this.buf[this.pos++] !== 0;
    const typeName = this.string();
    this.need(count, 'AMF3 vector elements');
    const items: AmfValue[] = [];
    const vector = new AmfVector(items, fixed, typeName);
    const index = this.open(depth, vector, at);
    for (let i = 0; i < count; i++) items.push(this.readValue(depth + 1));
    this.close(index, depth, totalBefore, deepestBefore);
    return vector;
  }

  private readDictionary(count: number, depth: number, at: number): AmfDictionary {
    const totalBefore = this.total - 1;
    const deepestBefore = this.deepest;
    this.checkCount('dictionary size', count);
    this.need(1, 'AMF3 dictionary');
    const weakKeys = this.buf[this.pos++] !== 0;
    this.need(count * 2, 'AMF3 dictionary entries');
    const entries = new Map<AmfValue, AmfValue>();
    const dict = new AmfDictionary(entries, weakKeys);
    const index = this.open(depth, dict, at);
    for (let i = 0; i < count; i++) {
      const key = this.readValue(depth + 1);
      entries.set(key, this.readValue(depth + 1));
    }
    this.close(index, depth, totalBefore, deepestBefore);
    return dict;
  }
}

const ANONYMOUS_TRAITS: Amf3Traits = Object.freeze({ className: '', sealed: Object.freeze([]), dynamic: true });
const sealedSets = new WeakMap<Amf3Traits, Set<string>>();

function sealedSet(traits: Amf3Traits): Set<string> {
  let set = sealedSets.get(traits);
  if (set === undefined) {
    set = new Set(traits.sealed);
    sealedSets.set(traits, set);
  }
  return set;
}

/**
 * Stateful AMF3 encoder writing into an AmfByteWriter; its reference tables
 * persist across write calls. Throws AmfError for unencodable values.
 */
export class Amf3Writer {
  private readonly strings = new Map<string, number>();
  private readonly objects = new Map<object, number>();
  private readonly active = new Set<object>();
  private readonly traitsIndex = new Map<Amf3Traits, number>();
  /** Traits made up for objects that carry none, shared so repeats become trait references. */
  private readonly derivedTraits = new Map<string, Amf3Traits>();

  constructor(readonly out: AmfByteWriter) {}

  write(v: AmfValue): void {
    const out = this.out;
    switch (typeof v) {
      case 'number':
        if (Number.isInteger(v) && v >= INT29_MIN && v <= INT29_MAX && !Object.is(v, -0)) {
          out.u8(INTEGER);
          this.u29(v & U29_MAX);
        } else {
          out.ensure(9);
          out.buf[out.pos++] = DOUBLE;
          out.buf.writeDoubleBE(v, out.pos);
          out.pos += 8;
        }
        return;
      case 'boolean':
        out.u8(v ? TRUE : FALSE);
        return;
      case 'string':
        out.u8(STRING);
        this.string(v);
        return;
      case 'undefined':
        out.u8(UNDEFINED);
        return;
      case 'object':
        if (v === null) out.u8(NULL);
        else this.writeComplex(v);
        return;
      default:
        throw new AmfError('AMF_UNKNOWN_MARKER', `AMF3 cannot encode a value of type ${typeof v}`);
    }
  }

  private u29(v: number): void {
    const out = this.out;
    out.ensure(4);
    const b = out.buf;
    let p = out.pos;
    if (v < 0x80) {
      b[p++] = v;
    } else if (v < 0x4000) {
      b[p++] = (v >>> 7) | 0x80;
      b[p++] = v & 0x7f;
    } else if (v < 0x200000) {
      b[p++] = (v >>> 14) | 0x80;
      b[p++] = ((v >>> 7) & 0x7f) | 0x80;
      b[p++] = v & 0x7f;
    } else if (v <= U29_MAX) {
      b[p++] = (v >>> 22) | 0x80;
      b[p++] = ((v >>> 15) & 0x7f) | 0x80;
      b[p++] = ((v >>> 8) & 0x7f) | 0x80;
      b[p++] = v & 0xff;
    } else {
      throw new AmfError('AMF_TOO_LONG', `AMF3 U29 value ${v} out of range`);
    }
    out.pos = p;
  }

  /** Length-prefixed UTF-8 without any table (also XML bodies, which live in the object table). */
  private utf8(s: string): void {
    const out = this.out;
    // 21 chars are at most 63 bytes, so the U29 header is one byte.
    if (s.length <= 21) {
      out.ensure(1 + s.length * 3);
      const n = out.utf8At(s, out.pos + 1);
      out.buf[out.pos] = (n << 1) | 1;
      out.pos += 1 + n;
      return;
    }
    const n = Buffer.byteLength(s, 'utf8');
    if (n > U28_MAX) throw new AmfError('AMF_TOO_LONG', `AMF3 string of ${n} bytes exceeds ${U28_MAX}`);
    this.u29((n << 1) | 1);
    out.ensure(n);
    out.pos += out.utf8At(s, out.pos);
  }

  private string(s: string): void {
    if (s.length === 0) {
      this.out.u8(0x01);
      return;
    }
    const index = this.strings.get(s);
    if (index !== undefined && index <= U28_MAX) {
      this.u29(index << 1);
      return;
    }
    this.strings.set(s, this.strings.size);
    this.utf8(s);
  }

  /** Writes an object-table reference if `v` was written before; otherwise registers it. */
  private reference(v: object): boolean {
    const index = this.objects.get(v);
    if (index === undefined || index > U28_MAX) {
      this.objects.set(v, this.objects.size);
      return false;
    }
    if (this.active.has(v)) throw new AmfError('AMF_REFERENCE', 'cannot encode a cyclic structure as AMF');
    this.u29(index << 1);
    return true;
  }

  private count(n: number): void {
    if (n > U28_MAX) throw new AmfError('AMF_TOO_LONG', `AMF3 count ${n} exceeds ${U28_MAX}`);
    this.u29((n << 1) | 1);
  }

  private writeComplex(v: Exclude<AmfValue, null | undefined | number | boolean | string>): void {
    const out = this.out;
    if (Array.isArray(v)) {
      this.writeArray(v, v, (v as { [AMF3_ASSOCIATIVE]?: AmfObject })[AMF3_ASSOCIATIVE]);
    } else if (v instanceof AmfDate) {
      out.u8(DATE);
      if (this.reference(v)) return;
      out.u8(0x01);
      out.f64(v.ms);
    } else if (v instanceof AmfXmlDocument || v instanceof AmfXml) {
      out.u8(v instanceof AmfXml ? XML : XML_DOCUMENT);
      if (this.reference(v)) return;
      this.utf8(v.xml);
    } else if (v instanceof Uint8Array) {
      out.u8(BYTE_ARRAY);
      if (this.reference(v)) return;
      this.count(v.length);
      out.bytes(v);
    } else if (v instanceof AmfVector) {
      this.writeVector(v);
    } else if (v instanceof AmfDictionary) {
      out.u8(DICTIONARY);
      if (this.reference(v)) return;
      this.count(v.entries.size);
      out.u8(v.weakKeys ? 1 : 0);
      this.active.add(v);
      for (const [key, value] of v.entries) {
        this.write(key);
        this.write(value);
      }
      this.active.delete(v);
    } else if (amfInternals.isPlainObject(v)) {
      // An ECMA array is an ActionScript Array with only named entries.
      if (v[AMF_ECMA_ARRAY] === true && v[AMF3_TRAITS] === undefined) this.writeArray(v, [], v);
      else this.writeObject(v);
    } else {
      const name = (v as object).constructor?.name ?? 'unknown class';
      throw new AmfError('AMF_UNKNOWN_MARKER', `AMF3 cannot encode an instance of ${name}`);
    }
  }

  private writeArray(identity: object, dense: readonly AmfValue[], assoc: AmfObject | undefined): void {
    this.out.u8(ARRAY);
    if (this.reference(identity)) return;
    this.count(dense.length);
    this.active.add(identity);
    if (assoc !== undefined) {
      for (const key of Object.keys(assoc)) {
        this.dynamicKey(key);
        this.write(assoc[key]);
      }
    }
    this.out.u8(0x01);
    for (let i = 0; i < dense.length; i++) this.write(dense[i]);
    this.active.delete(identity);
  }

  private dynamicKey(key: string): void {
    // The empty string terminates the member list, so it cannot be a member name.
    if (key === '') throw new AmfError('AMF_UNKNOWN_MARKER', 'AMF3 cannot encode an empty dynamic/associative key');
    this.string(key);
  }

  private writeObject(v: AmfObject): void {
    this.out.u8(OBJECT);
    if (this.reference(v)) return;
    const keys = Object.keys(v);
    const traits = this.traitsFor(v, keys);
    const known = this.traitsIndex.get(traits);
    if (known !== undefined) {
      this.u29((known << 2) | 1);
    } else {
      if (traits.sealed.length > U29_MAX >>> 4) {
        throw new AmfError('AMF_TOO_LONG', `AMF3 class with ${traits.sealed.length} sealed members`);
      }
      this.traitsIndex.set(traits, this.traitsIndex.size);
      this.u29((traits.sealed.length << 4) | (traits.dynamic ? 0x08 : 0) | 0x03);
      this.string(traits.className);
      for (const name of traits.sealed) this.string(name);
    }
    this.active.add(v);
    const sealed = traits.sealed;
    for (let i = 0; i < sealed.length; i++) this.write(v[sealed[i]!]);
    if (traits.dynamic) {
      const skip = sealed.length === 0 ? undefined : sealedSet(traits);
      for (const key of keys) {
        if (skip?.has(key)) continue;
        this.dynamicKey(key);
        this.write(v[key]);
      }
      this.out.u8(0x01);
    }
    this.active.delete(v);
  }

  private traitsFor(v: AmfObject, keys: readonly string[]): Amf3Traits {
    const own = v[AMF3_TRAITS];
    if (own !== undefined) {
      if (own.dynamic) return own;
      const set = sealedSet(own);
      let allSealed = keys.length <= own.sealed.length;
      for (let i = 0; allSealed && i < keys.length; i++) allSealed = set.has(keys[i]!);
      if (allSealed) return own;
      // Keys added since decoding: keep the class and write the extras dynamically.
      return this.derive(own.className, own.sealed, true);
    }
    const className = v[AMF_CLASS_NAME];
    // A typed AMF0 object maps to a sealed class with its keys as members.
    if (typeof className === 'string' && className !== '') return this.derive(className, keys, false);
    return ANONYMOUS_TRAITS;
  }

  private derive(className: string, sealed: readonly string[], dynamic: boolean): Amf3Traits {
    const key = `${dynamic ? 'd' : 's'}\u0000${className}\u0000${sealed.join('\u0000')}`;
    let traits = this.derivedTraits.get(key);
    if (traits === undefined) {
      traits = Object.freeze({ className, sealed: Object.freeze([...sealed]), dynamic });
      this.derivedTraits.set(key, traits);
    }
    return traits;
  }

  private writeVector(v: AmfVector): void {
    const out = this.out;
    const items = v.items;
    const marker =
      items instanceof Int32Array
        ? VECTOR_INT
        : items instanceof Uint32Array
          ? VECTOR_UINT
          : items instanceof Float64Array
            ? VECTOR_DOUBLE
            : VECTOR_OBJECT;
    out.u8(marker);
    if (this.reference(v)) return;
    this.count(items.length);
    out.u8(v.fixed ? 1 : 0);
    if (Array.isArray(items)) {
      this.string(v.typeName);
      this.active.add(v);
      for (let i = 0; i < items.length; i++) this.write(items[i]);
      this.active.delete(v);
      return;
    }
    const width = marker === VECTOR_DOUBLE ? 8 : 4;
    out.ensure(items.length * width);
    const b = out.buf;
    let p = out.pos;
    if (items instanceof Float64Array) {
      for (let i = 0; i < items.length; i++, p += 8) b.writeDoubleBE(items[i]!, p);
    } else if (items instanceof Int32Array) {
      for (let i = 0; i < items.length; i++, p += 4) b.writeInt32BE(items[i]!, p);
    } else {
      for (let i = 0; i < items.length; i++, p += 4) b.writeUInt32BE(items[i]!, p);
    }
    out.pos = p;
  }
}

/** Decodes one AMF3 value at `offset` with fresh reference tables. */
export function decodeAmf3Value(
  buf: Buffer,
  offset: number,
  limits: AmfLimits = DEFAULT_AMF_LIMITS,
): { value: AmfValue; offset: number } | AmfError {
  try {
    amfInternals.checkOffset(buf, offset);
    const reader = new Amf3Reader(buf, limits, offset);
    const value = reader.readValue(0);
    reader.checkExpanded();
    return { value, offset: reader.pos };
  } catch (e) {
    return amfInternals.toError(e);
  }
}

export function encodeAmf3Value(value: AmfValue): Buffer {
  const out = new AmfByteWriter();
  try {
    new Amf3Writer(out).write(value);
    return out.finish();
  } catch (e) {
    out.release();
    throw amfInternals.encodeError(e);
  }
}

/**
 * Decodes the body of an RTMP AMF3 command (type 17) or data (type 15)
 * message: a 0x00 format byte, then AMF0 values in which 0x11 switches one
 * value to AMF3. A body without the format byte (first byte is then an AMF0
 * marker such as 0x02 for the command name) is accepted too, as some peers
 * omit it; a body starting with an AMF0 number would be misread, but
 * commands and data messages always start with a string.
 */
export function decodeAmf3Command(payload: Buffer, limits: AmfLimits = DEFAULT_AMF_LIMITS): AmfValue[] | AmfError {
  if (payload.length === 0) return amfInternals.truncated('AMF3 message format byte');
  return decodeAmf0(payload[0] === 0x00 ? payload.subarray(1) : payload, limits);
}

const FORMAT_BYTE = Buffer.of(0x00);

/** Encodes the body of an RTMP type 17/15 message (format byte 0x00, then AMF0 values). */
export function encodeAmf3Command(values: readonly AmfValue[]): Buffer {
  return Buffer.concat([FORMAT_BYTE, encodeAmf0(values)]);
}
