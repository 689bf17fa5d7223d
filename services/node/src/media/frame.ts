/**
 * An immutable media frame on a stream's timeline. Its wire forms (RTMP chunks for a
 * given chunk size and message stream id, an FLV tag) are built on first use and then
 * shared by every viewer: one serialisation, many sockets.
 */
import { encodeFlvTag, encodeMessageFmt0 } from '@meshcast/proto';

export const FRAME_AUDIO = 8;
export const FRAME_VIDEO = 9;
export const FRAME_DATA = 18;
export type FrameType = typeof FRAME_AUDIO | typeof FRAME_VIDEO | typeof FRAME_DATA;

/**
 * Chunk stream ids used for shared media: fixed so the bytes do not depend on any connection's
 * state, and never used by a session's own encoder (control 2, commands 3, status 5), whose
 * header compression would otherwise disagree with what the viewer last saw on that id.
 */
const CSID_FOR_TYPE: Record<FrameType, number> = { 8: 4, 9: 6, 18: 7 };

export type WireFormat =
  | { kind: 'rtmp'; chunkSize: number; streamId: number }
  | { kind: 'flv' }
  | { kind: 'flv-chunked' }
  /** FLV tags inside one unmasked binary WebSocket frame (server → client frames are the same bytes for every viewer). */
  | { kind: 'ws-flv' };

export function wireKey(f: WireFormat): string {
  switch (f.kind) {
    case 'rtmp':
      return `rtmp:${f.chunkSize}:${f.streamId}`;
    case 'flv':
      return 'flv';
    case 'flv-chunked':
      return 'flvc';
    case 'ws-flv':
      return 'wsflv';
  }
}

export class MediaFrame {
  private rtmpCacheKey = -1;
  private rtmpCache: Buffer | undefined;
  private flvCache: Buffer | undefined;

  constructor(
    readonly type: FrameType,
    readonly timestamp: number,
    readonly payload: Buffer,
    readonly isKeyframe: boolean,
    readonly isSequenceHeader: boolean,
  ) {}

  /** A copy of this frame at another timestamp (sequence headers re-sent at the start of a GOP). */
  restamped(timestamp: number): MediaFrame {
    return new MediaFrame(this.type, timestamp, this.payload, this.isKeyframe, this.isSequenceHeader);
  }

  rtmp(chunkSize: number, streamId: number): Buffer {
    // Nearly every viewer shares one (chunk size, stream id): cache that one, encode the rare others.
    const key = chunkSize * 65536 + streamId;
    if (this.rtmpCacheKey === key && this.rtmpCache) return this.rtmpCache;
    const buf = encodeMessageFmt0(
      { csid: CSID_FOR_TYPE[this.type], type: this.type, streamId, timestamp: this.timestamp, payload: this.payload },
      chunkSize,
    );
    if (this.rtmpCacheKey === -1) {
      this.rtmpCacheKey = key;
      this.rtmpCache = buf;
    }
    return buf;
  }

  flv(): Buffer {
    return (this.flvCache ??= encodeFlvTag(this.type, this.timestamp, this.payload));
  }

  wire(format: WireFormat): Buffer {
    switch (format.kind) {
      case 'rtmp':
        return this.rtmp(format.chunkSize, format.streamId);
      case 'flv':
        return this.flv();
      case 'flv-chunked':
        return httpChunk([this.flv()]);
      case 'ws-flv':
        return wsBinaryFrame([this.flv()]);
    }
  }

  get byteLength(): number {
    return this.payload.length;
  }
}

const CRLF = Buffer.from('\r\n');

/** One HTTP/1.1 chunked-encoding chunk around the given parts, built once and shared by all HTTP-FLV viewers. */
export function httpChunk(parts: readonly Buffer[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  const head = Buffer.from(`${len.toString(16)}\r\n`, 'latin1');
  const out = Buffer.allocUnsafe(head.length + len + 2);
  let off = head.copy(out, 0);
  for (const p of parts) off += p.copy(out, off);
  CRLF.copy(out, off);
  return out;
}

/**
 * One final, unmasked binary WebSocket frame (RFC 6455 §5.2) around the given parts. Frames a
 * server sends are not masked, so the bytes are the same for every WebSocket-FLV viewer.
 */
export function wsBinaryFrame(parts: readonly Buffer[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  const headLen = len < 126 ? 2 : len <= 0xffff ? 4 : 10;
  const out = Buffer.allocUnsafe(headLen + len);
  out[0] = 0x82; // FIN + opcode 2 (binary)
  if (len < 126) {
    out[1] = len;
  } else if (len <= 0xffff) {
    out[1] = 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 127;
    out.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    out.writeUInt32BE(len >>> 0, 6);
  }
  let off = headLen;
  for (const p of parts) off += p.copy(out, off);
  return out;
}

/** Concatenates the wire forms of frames for one format. */
export function serialise(frames: readonly MediaFrame[], format: WireFormat, from = 0): Buffer {
  if (format.kind === 'flv-chunked' || format.kind === 'ws-flv') {
    const parts: Buffer[] = [];
    for (let i = from; i < frames.length; i++) parts.push(frames[i]!.flv());
    return format.kind === 'ws-flv' ? wsBinaryFrame(parts) : httpChunk(parts);
  }
  if (frames.length - from === 1) return frames[from]!.wire(format);
  const parts: Buffer[] = [];
  let len = 0;
  for (let i = from; i < frames.length; i++) {
    const b = frames[i]!.wire(format);
    parts.push(b);
    len += b.length;
  }
  return Buffer.concat(parts, len);
}
