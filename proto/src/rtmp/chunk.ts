/**
 * RTMP chunk stream (RTMP spec 1.0 §5.3): decoder and encoders.
 *
 * Wire format of one chunk:
 *   basic header (1–3 bytes: fmt(2 bits) + chunk stream id)
 *   message header (fmt 0: 11 bytes, fmt 1: 7, fmt 2: 3, fmt 3: 0)
 *   extended timestamp (4 bytes, when the 3-byte timestamp field is 0xFFFFFF)
 *   chunk data (min(chunk size, bytes left in the message))
 *
 * Extended timestamps on fmt 3 chunks: per the spec (§5.3.1.3: present in
 * type 3 chunks when the most recent type 0/1/2 chunk of the same chunk stream
 * had one), and as ffmpeg's rtmppkt.c both writes and reads them, a fmt 3 chunk
 * carries the 4-byte extended timestamp whenever the last fmt 0/1/2 header of
 * that chunk stream had its timestamp field at 0xFFFFFF — on continuation
 * chunks and on a fmt 3 chunk starting a new message alike. The decoder always
 * consumes those 4 bytes (no SRS-style peeking to tolerate senders that omit
 * them); the encoders always write them.
 *
 * Timestamp deltas: fmt 1/2 carry a delta added to the chunk stream's previous
 * timestamp (mod 2^32). A fmt 3 chunk starting a new message reuses the
 * previous delta; after a fmt 0 header that "delta" is the fmt 0 absolute
 * timestamp (spec §5.3.1.2.4, ffmpeg does the same). The encoder never relies
 * on that corner: it only emits a message-starting fmt 3 after a fmt 1/2 header
 * established the delta.
 */
import { Buffer } from 'node:buffer';
import { RtmpProtocolError } from '../errors.ts';

export interface RtmpMessage {
  /** Chunk stream id, 2..65599. */
  csid: number;
  /** Message type id (see MessageType). */
  type: number;
  /** Message stream id (uint32, little-endian on the wire). */
  streamId: number;
  /** Absolute timestamp in ms, uint32 (wraps). */
  timestamp: number;
  payload: Buffer;
}

export interface ChunkDecoderLimits {
  /** Largest message length accepted from a header (checked before any allocation). */
  maxMessageLength: number;
  /** Largest Set Chunk Size accepted. */
  maxChunkSize: number;
  /** Largest number of distinct chunk stream ids a connection may use. */
  maxChunkStreams: number;
  /**
   * Largest total of bytes held for unfinished messages, over all chunk streams: each
   * partial message counts its announced length from its first chunk on (that is what its
   * assembly buffer reserves). Without it one connection may hold maxChunkStreams ×
   * maxMessageLength. The owner may change it while decoding (see setMaxPartialBytes).
   */
  maxPartialBytes: number;
}

export const DEFAULT_CHUNK_DECODER_LIMITS: ChunkDecoderLimits = Object.freeze({
  maxMessageLength: 8 * 1024 * 1024,
  maxChunkSize: 65536,
  maxChunkStreams: 64,
  maxPartialBytes: 32 * 1024 * 1024,
});

/** Chunk size both directions start with. */
export const DEFAULT_CHUNK_SIZE = 128;
/** Largest value the Set Chunk Size message can carry (31 bits). */
export const MAX_CHUNK_SIZE_WIRE = 0x7fffffff;
/** Smallest / largest chunk stream id expressible in a basic header. */
export const MIN_CSID = 2;
export const MAX_CSID = 65599;
/** Largest message length the 3-byte length field can carry. */
export const MAX_MESSAGE_LENGTH_WIRE = 0xffffff;

const TYPE_SET_CHUNK_SIZE = 1;
const TYPE_ABORT = 2;
const EXTENDED = 0xffffff;
/** Longest chunk header: 3 (basic) + 11 (fmt 0) + 4 (extended timestamp). */
const MAX_HEADER = 18;
const MESSAGE_HEADER_SIZE = [11, 7, 3, 0] as const;

/**
 * A single-chunk payload that is entirely inside one pushed Buffer is returned
 * as a zero-copy view of it only if it is at least 1/ALIAS_RATIO of the
 * underlying ArrayBuffer (so a retained message pins at most 8× its own size);
 * smaller payloads are copied into their own (pooled) allocation. Payloads
 * spread over several chunks are always assembled into one pre-sized Buffer.
 */
const ALIAS_RATIO = 8;

interface InStream {
  readonly csid: number;
  timestamp: number;
  /** Delta reused by a message-starting fmt 3 chunk. */
  delta: number;
  length: number;
  type: number;
  streamId: number;
  /** The last fmt 0/1/2 header had its timestamp field at 0xFFFFFF. */
  extended: boolean;
  /** Assembly buffer of the partial message (only for multi-chunk messages). */
  buf: Buffer | undefined;
  /** Payload bytes of the current message received so far. */
  received: number;
}

function checkLimit(name: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name} must be an integer in ${min}..${max}, got ${v}`);
  }
}

/**
 * Incremental chunk stream decoder. Feed it every byte after the handshake,
 * split however the socket delivers them.
 *
 * Strictness (each → RtmpProtocolError, after which the decoder is dead):
 * - fmt 1/2/3 on a chunk stream id never introduced by fmt 0 → CHUNK_HEADER;
 * - fmt 0/1/2 on a chunk stream whose previous message is incomplete
 *   (interleaving *within* one chunk stream is not allowed; use Abort) → CHUNK_HEADER;
 * - a header announcing more than `maxMessageLength` → MESSAGE_TOO_LONG,
 *   reported as soon as the header is parsed, before any allocation;
 * - more than `maxChunkStreams` distinct chunk stream ids → TOO_MANY_CHUNK_STREAMS
 *   (their header state must be kept for the whole connection, so this counts
 *   every id seen, not just ids with a message in flight);
 * - Set Chunk Size of 0 or above `maxChunkSize` → CHUNK_SIZE; shorter than 4
 *   bytes → MESSAGE_MALFORMED (same for Abort).
 *
 * - a message whose first chunk would take the bytes reserved for unfinished
 *   messages over `maxPartialBytes` → PARTIAL_TOO_LARGE.
 *
 * Memory: partial messages are held in one Buffer.allocUnsafe of the announced
 * length (≤ maxMessageLength), allocated when their first chunk arrives; their
 * total is bounded by maxPartialBytes. Payload aliasing: see ALIAS_RATIO.
 */
export class ChunkStreamDecoder {
  readonly #limits: ChunkDecoderLimits;
  readonly #streams = new Map<number, InStream>();
  #chunkSize = DEFAULT_CHUNK_SIZE;
  #bytesReceived = 0;
  #error: RtmpProtocolError | undefined;
  /** Chunk stream whose chunk data is being read (valid while #bodyLeft > 0). */
  #cur: InStream | undefined;
  /** Chunk data bytes left in the current chunk. */
  #bodyLeft = 0;
  /** Partial chunk header carried over between pushes. */
  readonly #carry = Buffer.alloc(MAX_HEADER);
  #carryLen = 0;
  /** Output of the header parser (avoids allocating a result object per chunk). */
  #hdrStream: InStream | undefined;
  /** Bytes reserved by the assembly buffers of unfinished messages. */
  #partialBytes = 0;
  #maxPartialBytes: number;

  /**
   * Limits default to DEFAULT_CHUNK_DECODER_LIMITS. Values above what the wire
   * can express (16 MiB - 1 message length, 2^31 - 1 chunk size, 65598 chunk
   * streams) are clamped; non-integers and values below 0 (1 for chunk size and
   * chunk streams) throw RangeError.
   */
  constructor(limits: Partial<ChunkDecoderLimits> = {}) {
    const l = { ...DEFAULT_CHUNK_DECODER_LIMITS, ...limits };
    checkLimit('maxMessageLength', l.maxMessageLength, 0, Number.MAX_SAFE_INTEGER);
    checkLimit('maxChunkSize', l.maxChunkSize, 1, Number.MAX_SAFE_INTEGER);
    checkLimit('maxChunkStreams', l.maxChunkStreams, 1, Number.MAX_SAFE_INTEGER);
    checkLimit('maxPartialBytes', l.maxPartialBytes, 0, Number.MAX_SAFE_INTEGER);
    this.#limits = {
      maxMessageLength: Math.min(l.maxMessageLength, MAX_MESSAGE_LENGTH_WIRE),
      maxChunkSize: Math.min(l.maxChunkSize, MAX_CHUNK_SIZE_WIRE),
      maxChunkStreams: Math.min(l.maxChunkStreams, MAX_CSID - MIN_CSID + 1),
      maxPartialBytes: l.maxPartialBytes,
    };
    this.#maxPartialBytes = l.maxPartialBytes;
  }

  /** Bytes currently reserved for unfinished messages (see maxPartialBytes). */
  get partialBytes(): number {
    return this.#partialBytes;
  }

  /**
   * Changes the partial-bytes bound from the next chunk on, e.g. raised once a publish is
   * authorised. Bytes already held above a lowered bound fail the next message that starts.
   */
  setMaxPartialBytes(n: number): void {
    checkLimit('maxPartialBytes', n, 0, Number.MAX_SAFE_INTEGER);
    this.#maxPartialBytes = n;
  }

  /** Current incoming chunk size (128 until the peer sends Set Chunk Size). */
  get chunkSize(): number {
    return this.#chunkSize;
  }

  /** Total bytes pushed so far (for Acknowledgement sequence numbers). */
  get bytesReceived(): number {
    return this.#bytesReceived;
  }

  /**
   * Feeds bytes; returns the complete messages in order, or the first error
   * (after which the decoder is dead and returns that error forever). Applies
   * Set Chunk Size (type 1) and Abort (type 2) itself as soon as they are
   * decoded — they are still returned. Never throws.
   *
   * The caller must not modify a pushed Buffer afterwards: returned payloads
   * may be views of it.
   */
  push(data: Buffer): RtmpMessage[] | RtmpProtocolError {
    if (this.#error !== undefined) return this.#error;
    this.#bytesReceived += data.length;
    const out: RtmpMessage[] = [];
    const len = data.length;
    let pos = 0;
    for (;;) {
      if (this.#bodyLeft === 0) {
        // ---- chunk header ----
        let used: number;
        if (this.#carryLen === 0) {
          used = this.#parseHeader(data, pos, len - pos);
          if (used === 0) {
            data.copy(this.#carry, 0, pos, len);
            this.#carryLen = len - pos;
            return out;
          }
          if (used < 0) return this.#error!;
          pos += used;
        } else {
          const old = this.#carryLen;
          const take = Math.min(MAX_HEADER - old, len - pos);
          data.copy(this.#carry, old, pos, pos + take);
          used = this.#parseHeader(this.#carry, 0, old + take);
          if (used === 0) {
            this.#carryLen = old + take;
            return out;
          }
          if (used < 0) return this.#error!;
          this.#carryLen = 0;
          pos += used - old;
        }
        const st = this.#hdrStream!;
        const left = st.length - st.received;
        if (left === 0) {
          // zero-length message: complete with its header
          const err = this.#emit(out, st, Buffer.alloc(0));
          if (err !== undefined) return err;
          continue;
        }
        this.#cur = st;
        this.#bodyLeft = left < this.#chunkSize ? left : this.#chunkSize;
      }
      // ---- chunk data ----
      if (pos >= len) return out;
      const st = this.#cur!;
      const avail = len - pos;
      const n = this.#bodyLeft < avail ? this.#bodyLeft : avail;
      if (st.received === 0 && n === st.length) {
        // whole message in one chunk, all of it in this Buffer
        let payload: Buffer;
        if (n * ALIAS_RATIO >= data.buffer.byteLength) {
          payload = data.subarray(pos, pos + n);
        } else {
          payload = Buffer.allocUnsafe(n);
          data.copy(payload, 0, pos, pos + n);
        }
        pos += n;
        this.#bodyLeft = 0;
        const err = this.#emit(out, st, payload);
        if (err !== undefined) return err;
        continue;
      }
      let buf = st.buf;
      if (buf === undefined) {
        if (this.#partialBytes + st.length > this.#maxPartialBytes) {
          return this.#fail(
            'PARTIAL_TOO_LARGE',
            `a ${st.length}-byte message on chunk stream ${st.csid} would raise the bytes held for unfinished messages to ${this.#partialBytes + st.length}, over the ${this.#maxPartialBytes}-byte limit`,
          );
        }
        buf = Buffer.allocUnsafe(st.length);
        st.buf = buf;
        this.#partialBytes += buf.length;
      }
      data.copy(buf, st.received, pos, pos + n);
      st.received += n;
      pos += n;
      this.#bodyLeft -= n;
      if (st.received === st.length) {
        st.buf = undefined;
        this.#partialBytes -= buf.length;
        const err = this.#emit(out, st, buf);
        if (err !== undefined) return err;
      }
    }
  }

  /** Completes the current message of `st`; applies control messages. */
  #emit(out: RtmpMessage[], st: InStream, payload: Buffer): RtmpProtocolError | undefined {
    st.received = 0;
    const type = st.type;
    out.push({ csid: st.csid, type, streamId: st.streamId, timestamp: st.timestamp, payload });
    if (type === TYPE_SET_CHUNK_SIZE) {
      if (payload.length < 4) {
        return this.#fail('MESSAGE_MALFORMED', `Set Chunk Size payload is ${payload.length} bytes, expected 4`);
      }
      const size = payload.readUInt32BE(0);
      if (size === 0 || size > this.#limits.maxChunkSize) {
        return this.#fail('CHUNK_SIZE', `Set Chunk Size ${size} outside 1..${this.#limits.maxChunkSize}`);
      }
      this.#chunkSize = size;
    } else if (type === TYPE_ABORT) {
      if (payload.length < 4) {
        return this.#fail('MESSAGE_MALFORMED', `Abort payload is ${payload.length} bytes, expected 4`);
      }
      const target = this.#streams.get(payload.readUInt32BE(0));
      if (target !== undefined) {
        if (target.buf !== undefined) this.#partialBytes -= target.buf.length;
        target.buf = undefined;
        target.received = 0;
      }
    }
    return undefined;
  }

  #fail(code: 'CHUNK_SIZE' | 'CHUNK_HEADER' | 'MESSAGE_TOO_LONG' | 'MESSAGE_MALFORMED' | 'TOO_MANY_CHUNK_STREAMS' | 'PARTIAL_TOO_LARGE', msg: string): RtmpProtocolError {
    const err = new RtmpProtocolError(code, msg);
    this.#error = err;
    this.#streams.clear();
    this.#partialBytes = 0;
    this.#cur = undefined;
    this.#hdrStream = undefined;
    return err;
  }

  /**
   * Parses one chunk header at b[p..p+avail). Returns its size (> 0) and sets
   * #hdrStream, 0 if more bytes are needed (no state changed), or -1 on error.
   */
  #parseHeader(b: Buffer, p: number, avail: number): number {
    if (avail < 1) return 0;
    const b0 = b[p]!;
    const fmt = b0 >>> 6;
    let csid = b0 & 0x3f;
    let h = 1;
    if (csid === 0) {
      if (avail < 2) return 0;
      csid = b[p + 1]! + 64;
      h = 2;
    } else if (csid === 1) {
      if (avail < 3) return 0;
      csid = b[p + 1]! + (b[p + 2]! << 8) + 64;
      h = 3;
    }
    let st = this.#streams.get(csid);
    if (st === undefined && fmt !== 0) {
      this.#fail('CHUNK_HEADER', `fmt ${fmt} chunk on chunk stream ${csid} that has no previous header`);
      return -1;
    }
    const mh = p + h;
    const need = h + MESSAGE_HEADER_SIZE[fmt as 0 | 1 | 2 | 3];
    if (avail < need) return 0;

    if (fmt === 3) {
      const s = st!;
      const size = s.extended ? need + 4 : need;
      if (avail < size) return 0;
      // The 4 extended-timestamp bytes (if any) repeat the last value: skip them.
      if (s.received === 0) s.timestamp = (s.timestamp + s.delta) >>> 0;
      this.#hdrStream = s;
      return size;
    }

    if (st !== undefined && st.received !== 0) {
      this.#fail('CHUNK_HEADER', `fmt ${fmt} header on chunk stream ${csid} while a ${st.length}-byte message is incomplete`);
      return -1;
    }
    const tsField = (b[mh]! << 16) | (b[mh + 1]! << 8) | b[mh + 2]!;
    const extended = tsField === EXTENDED;
    const size = extended ? need + 4 : need;
    let length = 0;
    if (fmt !== 2) {
      length = (b[mh + 3]! << 16) | (b[mh + 4]! << 8) | b[mh + 5]!;
      if (length > this.#limits.maxMessageLength) {
        this.#fail('MESSAGE_TOO_LONG', `message of ${length} bytes on chunk stream ${csid} exceeds the ${this.#limits.maxMessageLength}-byte limit`);
        return -1;
      }
    }
    if (avail < size) return 0;
    const ts = extended ? b.readUInt32BE(p + need) : tsField;
    if (st === undefined) {
      if (this.#streams.size >= this.#limits.maxChunkStreams) {
        this.#fail('TOO_MANY_CHUNK_STREAMS', `more than ${this.#limits.maxChunkStreams} chunk streams`);
        return -1;
      }
      st = { csid, timestamp: 0, delta: 0, length: 0, type: 0, streamId: 0, extended: false, buf: undefined, received: 0 };
      this.#streams.set(csid, st);
    }
    st.extended = extended;
    if (fmt === 0) {
      st.timestamp = ts;
      st.delta = ts;
      st.length = length;
      st.type = b[mh + 6]!;
      st.streamId = b.readUInt32LE(mh + 7);
    } else {
      st.timestamp = (st.timestamp + ts) >>> 0;
      st.delta = ts;
      if (fmt === 1) {
        st.length = length;
        st.type = b[mh + 6]!;
      }
    }
    this.#hdrStream = st;
    return size;
  }
}

interface OutStream {
  timestamp: number;
  /** Value of the last timestamp field (absolute for fmt 0, delta for fmt 1/2). */
  tsField: number;
  /** A fmt 1/2 header established `tsField` as the delta. */
  deltaValid: boolean;
  length: number;
  type: number;
  streamId: number;
}

function basicHeaderSize(csid: number): number {
  return csid < 64 ? 1 : csid < 320 ? 2 : 3;
}

function checkMessage(msg: RtmpMessage): void {
  const { csid, type, streamId, timestamp, payload } = msg;
  if (!Number.isInteger(csid) || csid < MIN_CSID || csid > MAX_CSID) {
    throw new RangeError(`chunk stream id must be in ${MIN_CSID}..${MAX_CSID}, got ${csid}`);
  }
  if (!Number.isInteger(type) || type < 0 || type > 255) throw new RangeError(`message type must be a byte, got ${type}`);
  if (!Number.isInteger(streamId) || streamId < 0 || streamId > 0xffffffff) {
    throw new RangeError(`message stream id must be a uint32, got ${streamId}`);
  }
  if (!Number.isInteger(timestamp) || timestamp < 0 || timestamp > 0xffffffff) {
    throw new RangeError(`timestamp must be a uint32, got ${timestamp}`);
  }
  if (payload.length > MAX_MESSAGE_LENGTH_WIRE) {
    throw new RangeError(`payload of ${payload.length} bytes exceeds the 16 MiB - 1 RTMP limit`);
  }
}

function writeBasicHeader(out: Buffer, p: number, fmt: number, csid: number): number {
  if (csid < 64) {
    out[p] = (fmt << 6) | csid;
    return p + 1;
  }
  const id = csid - 64;
  if (csid < 320) {
    out[p] = fmt << 6;
    out[p + 1] = id;
    return p + 2;
  }
  out[p] = (fmt << 6) | 1;
  out[p + 1] = id & 0xff;
  out[p + 2] = id >>> 8;
  return p + 3;
}

/**
 * Writes a whole message: one header of format `fmt` (fields it does not carry
 * are ignored) then fmt 3 continuation chunks. `tsField` is the timestamp or
 * delta to announce; if ≥ 0xFFFFFF it goes into extended timestamps, repeated
 * on every continuation chunk. Allocates exactly once.
 */
function writeMessage(msg: RtmpMessage, fmt: number, tsField: number, chunkSize: number): Buffer {
  const { csid, payload } = msg;
  const len = payload.length;
  const basic = basicHeaderSize(csid);
  const ext = tsField >= EXTENDED;
  const extSize = ext ? 4 : 0;
  const chunks = len === 0 ? 1 : Math.ceil(len / chunkSize);
  const total = basic + MESSAGE_HEADER_SIZE[fmt as 0 | 1 | 2 | 3] + extSize + (chunks - 1) * (basic + extSize) + len;
  const out = Buffer.allocUnsafe(total);
  let p = writeBasicHeader(out, 0, fmt, csid);
  if (fmt !== 3) {
    const field = ext ? EXTENDED : tsField;
    out[p] = field >>> 16;
    out[p + 1] = (field >>> 8) & 0xff;
    out[p + 2] = field & 0xff;
    p += 3;
    if (fmt !== 2) {
      out[p] = len >>> 16;
      out[p + 1] = (len >>> 8) & 0xff;
      out[p + 2] = len & 0xff;
      out[p + 3] = msg.type;
      p += 4;
      if (fmt === 0) {
        out.writeUInt32LE(msg.streamId, p);
        p += 4;
      }
    }
  }
  if (ext) p = out.writeUInt32BE(tsField, p);
  let off = 0;
  for (;;) {
    const n = len - off < chunkSize ? len - off : chunkSize;
    payload.copy(out, p, off, off + n);
    p += n;
    off += n;
    if (off >= len) break;
    p = writeBasicHeader(out, p, 3, csid);
    if (ext) p = out.writeUInt32BE(tsField, p);
  }
  return out;
}

/**
 * Per-connection encoder with header compression per chunk stream id:
 * - fmt 0 for the first message on a csid, a message stream change, a
 *   timestamp going backwards, or a delta that would need an extended field;
 * - fmt 1 (delta, length, type) when the length or type changed;
 * - fmt 2 (delta) when only the timestamp moved;
 * - fmt 3 when the delta also equals the one announced by the previous fmt 1/2.
 * Continuations are fmt 3. Each call returns one exactly-sized Buffer.
 *
 * If the same connection also carries messages from `encodeMessageFmt0` on a
 * csid this encoder uses, call `markSent()` for them so the compression state
 * stays in sync with the peer.
 */
export class ChunkStreamEncoder {
  #chunkSize = DEFAULT_CHUNK_SIZE;
  readonly #streams = new Map<number, OutStream>();

  constructor(chunkSize: number = DEFAULT_CHUNK_SIZE) {
    this.chunkSize = chunkSize;
  }

  /** Outgoing chunk size (1..0x7FFFFFFF). */
  get chunkSize(): number {
    return this.#chunkSize;
  }

  set chunkSize(n: number) {
    checkLimit('chunk size', n, 1, MAX_CHUNK_SIZE_WIRE);
    this.#chunkSize = n;
  }

  /** Switches the outgoing chunk size. Send the Set Chunk Size message (encoded at the old size) first. */
  setChunkSize(n: number): void {
    this.chunkSize = n;
  }

  /** Encodes one message. Throws RangeError on out-of-range fields (a programming error). */
  encode(msg: RtmpMessage): Buffer {
    checkMessage(msg);
    const { csid, timestamp, payload } = msg;
    const st = this.#streams.get(csid);
    let fmt: number;
    let tsField: number;
    if (st === undefined || st.streamId !== msg.streamId || timestamp < st.timestamp || timestamp - st.timestamp >= EXTENDED) {
      fmt = 0;
      tsField = timestamp;
    } else {
      tsField = timestamp - st.timestamp;
      if (payload.length !== st.length || msg.type !== st.type) fmt = 1;
      else if (st.deltaValid && tsField === st.tsField) fmt = 3;
      else fmt = 2;
    }
    const out = writeMessage(msg, fmt, tsField, this.#chunkSize);
    this.#remember(msg, fmt !== 0, tsField, st);
    return out;
  }

  /** Records that `msg` was sent on this connection by other means (e.g. `encodeMessageFmt0`). */
  markSent(msg: RtmpMessage): void {
    checkMessage(msg);
    this.#remember(msg, false, msg.timestamp, this.#streams.get(msg.csid));
  }

  /** Forgets all compression state (next message per csid is fmt 0). */
  reset(): void {
    this.#streams.clear();
  }

  #remember(msg: RtmpMessage, deltaValid: boolean, tsField: number, st: OutStream | undefined): void {
    if (st === undefined) {
      this.#streams.set(msg.csid, {
        timestamp: msg.timestamp,
        tsField,
        deltaValid,
        length: msg.payload.length,
        type: msg.type,
        streamId: msg.streamId,
      });
      return;
    }
    st.timestamp = msg.timestamp;
    st.tsField = tsField;
    st.deltaValid = deltaValid;
    st.length = msg.payload.length;
    st.type = msg.type;
    st.streamId = msg.streamId;
  }
}

/**
 * Self-contained encoding (fmt 0 + fmt 3 continuations) depending on no
 * per-connection state: the same bytes can be written to every socket that
 * uses `chunkSize`. Used for serialise-once fan-out. One exactly-sized
 * allocUnsafe Buffer. Throws RangeError on out-of-range fields.
 */
export function encodeMessageFmt0(msg: RtmpMessage, chunkSize: number): Buffer {
  checkMessage(msg);
  checkLimit('chunk size', chunkSize, 1, MAX_CHUNK_SIZE_WIRE);
  return writeMessage(msg, 0, msg.timestamp, chunkSize);
}
