/**
 * FLV container: header/tag encoding (HTTP-FLV playback) and a streaming
 * decoder (HTTP-FLV pull, file ingest).
 *
 * Layout (FLV v10.1 spec, Annex E):
 *   header (9 bytes: 'FLV', version 1, flags, u32 data offset)
 *   PreviousTagSize0 (u32 = 0)
 *   { tag header (11 bytes) | payload | PreviousTagSize (u32 = 11 + payload length) } *
 */
import { FlvError } from './errors.ts';

export const FlvTagType = { AUDIO: 8, VIDEO: 9, SCRIPT: 18 } as const;

export interface FlvTag {
  /** 8 audio, 9 video, 18 script data. */
  type: number;
  /** Milliseconds, including the extended (upper 8 bits) byte. */
  timestamp: number;
  /** Always 0 in conforming files; passed through. */
  streamId: number;
  /**
   * Tag body. When the tag arrived inside one pushed chunk this is a view
   * into that chunk (no copy): do not mutate the pushed buffers afterwards.
   */
  payload: Buffer;
}

export const FLV_HEADER_SIZE = 9;
export const FLV_TAG_HEADER_SIZE = 11;
/** Largest payload an FLV tag can describe (24-bit DataSize). */
export const FLV_MAX_TAG_SIZE = 0xffffff;

/** 9-byte FLV header followed by PreviousTagSize0 (13 bytes in total). */
export function encodeFlvHeader(opts: { audio: boolean; video: boolean }): Buffer {
  const b = Buffer.alloc(13);
  b.write('FLV', 0, 'latin1');
  b[3] = 1;
  b[4] = (opts.audio ? 0x04 : 0) | (opts.video ? 0x01 : 0);
  b.writeUInt32BE(FLV_HEADER_SIZE, 5);
  // bytes 9..12: PreviousTagSize0 = 0 (already zero)
  return b;
}

/**
 * Serialises one tag: 11-byte header + payload + 4-byte PreviousTagSize, in
 * exactly one allocation. The timestamp is taken modulo 2^32 (the extended
 * byte carries bits 24..31). Throws RangeError when the payload exceeds the
 * 24-bit DataSize field (a programming error, not an input error).
 */
export function encodeFlvTag(type: number, timestamp: number, payload: Buffer): Buffer {
  const len = payload.length;
  if (len > FLV_MAX_TAG_SIZE) throw new RangeError(`FLV tag payload too large: ${len} bytes`);
  const out = Buffer.allocUnsafe(FLV_TAG_HEADER_SIZE + len + 4);
  const ts = timestamp >>> 0;
  out[0] = type & 0x1f;
  out[1] = (len >>> 16) & 0xff;
  out[2] = (len >>> 8) & 0xff;
  out[3] = len & 0xff;
  out[4] = (ts >>> 16) & 0xff;
  out[5] = (ts >>> 8) & 0xff;
  out[6] = ts & 0xff;
  out[7] = (ts >>> 24) & 0xff;
  out[8] = 0;
  out[9] = 0;
  out[10] = 0;
  payload.copy(out, FLV_TAG_HEADER_SIZE);
  out.writeUInt32BE(FLV_TAG_HEADER_SIZE + len, FLV_TAG_HEADER_SIZE + len);
  return out;
}

export interface FlvDecoderLimits {
  /** Largest accepted tag payload in bytes (default 16 MiB, the format maximum). */
  maxTagSize: number;
}

const DEFAULT_LIMITS: FlvDecoderLimits = { maxTagSize: 16 * 1024 * 1024 };

const enum State {
  Header,
  SkipHeaderExtra,
  PrevTagSize,
  TagHeader,
  Payload,
  Failed,
}

/**
 * Streaming FLV decoder: feed it arbitrary splits of an FLV byte stream
 * (starting with the file header) and it returns the complete tags.
 *
 * - The result does not depend on how the input is split.
 * - Memory is bounded by one tag (`maxTagSize`) plus the pending chunks; a
 *   tag is only assembled once all its bytes have arrived, so a lying
 *   DataSize cannot make it allocate.
 * - On malformed input `push` returns an {@link FlvError} (tags completed
 *   earlier in the same chunk are dropped) and the decoder stays failed:
 *   every later `push` returns the same error.
 * - PreviousTagSize values are skipped, not verified (many encoders write
 *   wrong ones).
 */
export class FlvDecoder {
  private readonly limits: FlvDecoderLimits;
  private state: State = State.Header;
  private chunks: Buffer[] = [];
  private chunkOffset = 0; // consumed bytes of chunks[0]
  private buffered = 0; // unconsumed bytes across chunks
  private skip = 0;
  private tagType = 0;
  private tagSize = 0;
  private tagTimestamp = 0;
  private tagStreamId = 0;
  private error: FlvError | undefined;
  private hdr: { audio: boolean; video: boolean } | undefined;
  private readonly scratch = Buffer.allocUnsafe(16);

  constructor(limits?: Partial<FlvDecoderLimits>) {
    this.limits = { ...DEFAULT_LIMITS, ...limits };
  }

  /** Flags from the file header, once it has been decoded. */
  get header(): { audio: boolean; video: boolean } | undefined {
    return this.hdr;
  }

  /** The error that failed the decoder, if any. */
  get failure(): FlvError | undefined {
    return this.error;
  }

  /** Bytes received but not yet part of a returned tag. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  push(data: Buffer): FlvTag[] | FlvError {
    if (this.error) return this.error;
    if (data.length > 0) {
      this.chunks.push(data);
      this.buffered += data.length;
    }
    const tags: FlvTag[] = [];
    for (;;) {
      switch (this.state) {
        case State.Header: {
          if (this.buffered < FLV_HEADER_SIZE) return tags;
          const h = this.take(FLV_HEADER_SIZE, true);
          if (h[0] !== 0x46 || h[1] !== 0x4c || h[2] !== 0x56) return this.fail('FLV_HEADER', 'bad FLV signature');
          if (h[3] !== 1) return this.fail('FLV_HEADER', `unsupported FLV version ${h[3] ?? 0}`);
          const flags = h[4] ?? 0;
          const dataOffset = h.readUInt32BE(5);
          if (dataOffset < FLV_HEADER_SIZE || dataOffset > FLV_HEADER_SIZE + this.limits.maxTagSize) {
            return this.fail('FLV_HEADER', `invalid FLV header data offset ${dataOffset}`);
          }
          this.hdr = { audio: (flags & 0x04) !== 0, video: (flags & 0x01) !== 0 };
          this.skip = dataOffset - FLV_HEADER_SIZE;
          this.state = State.SkipHeaderExtra;
          break;
        }
        case State.SkipHeaderExtra: {
          const n = Math.min(this.skip, this.buffered);
          this.discard(n);
          this.skip -= n;
          if (this.skip > 0) return tags;
          this.state = State.PrevTagSize;
          break;
        }
        case State.PrevTagSize: {
          if (this.buffered < 4) return tags;
          this.discard(4);
          this.state = State.TagHeader;
          break;
        }
        case State.TagHeader: {
          if (this.buffered < FLV_TAG_HEADER_SIZE) return tags;
          const h = this.take(FLV_TAG_HEADER_SIZE, true);
          const b0 = h[0] ?? 0;
          if (b0 & 0xc0) return this.fail('FLV_TAG', `reserved bits set in FLV tag header (0x${b0.toString(16)})`);
          if (b0 & 0x20) return this.fail('FLV_TAG', 'encrypted (filtered) FLV tags are not supported');
          const type = b0 & 0x1f;
          if (type !== FlvTagType.AUDIO && type !== FlvTagType.VIDEO && type !== FlvTagType.SCRIPT) {
            return this.fail('FLV_TAG', `unknown FLV tag type ${type}`);
          }
          const size = h.readUIntBE(1, 3);
          if (size > this.limits.maxTagSize) {
            return this.fail('FLV_TOO_LONG', `FLV tag of ${size} bytes exceeds limit ${this.limits.maxTagSize}`);
          }
          this.tagType = type;
          this.tagSize = size;
          this.tagTimestamp = (h.readUIntBE(4, 3) | ((h[7] ?? 0) << 24)) >>> 0;
          this.tagStreamId = h.readUIntBE(8, 3);
          this.state = State.Payload;
          break;
        }
        case State.Payload: {
          if (this.buffered < this.tagSize) return tags;
          const payload = this.take(this.tagSize, false);
          tags.push({ type: this.tagType, timestamp: this.tagTimestamp, streamId: this.tagStreamId, payload });
          this.state = State.PrevTagSize;
          break;
        }
        case State.Failed:
          return this.error ?? this.fail('FLV_TAG', 'decoder failed');
      }
    }
  }

  private fail(code: 'FLV_HEADER' | 'FLV_TAG' | 'FLV_TOO_LONG', message: string): FlvError {
    this.error = new FlvError(code, message);
    this.state = State.Failed;
    this.chunks = [];
    this.buffered = 0;
    this.chunkOffset = 0;
    return this.error;
  }

  private discard(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const c = this.chunks[0];
      if (c === undefined) return;
      const avail = c.length - this.chunkOffset;
      if (avail > n) {
        this.chunkOffset += n;
        return;
      }
      n -= avail;
      this.chunks.shift();
      this.chunkOffset = 0;
    }
  }

  /**
   * Consumes `n` buffered bytes (caller checked availability). Returns a view
   * when they lie in one chunk, else a copy (into the scratch buffer when
   * `small`, valid until the next take).
   */
  private take(n: number, small: boolean): Buffer {
    const c = this.chunks[0];
    if (c !== undefined && c.length - this.chunkOffset >= n) {
      const v = c.subarray(this.chunkOffset, this.chunkOffset + n);
      this.discard(n);
      return v;
    }
    const out = small && n <= this.scratch.length ? this.scratch.subarray(0, n) : Buffer.allocUnsafe(n);
    let o = 0;
    while (o < n) {
      const chunk = this.chunks[0];
      if (chunk === undefined) break;
      const avail = chunk.length - this.chunkOffset;
      const k = Math.min(avail, n - o);
      chunk.copy(out, o, this.chunkOffset, this.chunkOffset + k);
      o += k;
      this.discard(k);
    }
    return out;
  }
}
