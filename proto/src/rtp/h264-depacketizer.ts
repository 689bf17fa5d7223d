/**
 * H.264 access units out of RTP (RFC 6184, packetization-mode 1: single NAL units, STAP-A,
 * FU-A), for WHIP ingest, and the FLV AVC payloads they become. An access unit ends at the
 * marker bit or when the RTP timestamp changes. A lost or malformed packet drops its NAL unit
 * and marks the access unit damaged, so the caller waits for the next keyframe instead of feeding
 * a decoder garbage.
 *
 * Everything a peer can make us hold is bounded: the NAL units of one access unit (FU-A pieces
 * included) by `maxAccessUnitBytes`. Past it, the access unit is dropped as damaged.
 */

export interface AccessUnit {
  /** RTP timestamp (90 kHz). */
  timestamp: number;
  nals: Buffer[];
  /** Holds an IDR slice (NAL type 5). */
  keyframe: boolean;
  /** A packet of it was lost, malformed, or it was too large: do not decode it. */
  damaged: boolean;
}

export interface RtpPacket {
  payloadType: number;
  sequence: number;
  timestamp: number;
  ssrc: number;
  marker: boolean;
  payload: Buffer;
}

export const NAL_IDR = 5;
export const NAL_SEI = 6;
export const NAL_SPS = 7;
export const NAL_PPS = 8;
export const NAL_AUD = 9;
const STAP_A = 24;
const FU_A = 28;

/** The fixed header, CSRCs, extension and padding of an RTP packet (RFC 3550 §5.1); undefined for RTCP or garbage. */
export function parseRtp(buf: Buffer): RtpPacket | undefined {
  if (buf.length < 12 || buf[0]! >> 6 !== 2) return undefined;
  const pt = buf[1]! & 0x7f;
  if (pt >= 72 && pt <= 79) return undefined; // RTCP (RFC 5761 §4)
  const cc = buf[0]! & 0x0f;
  let off = 12 + cc * 4;
  if (buf[0]! & 0x10) {
    if (off + 4 > buf.length) return undefined;
    off += 4 + buf.readUInt16BE(off + 2) * 4;
  }
  let end = buf.length;
  if (buf[0]! & 0x20) end -= buf[buf.length - 1]!;
  if (off > end) return undefined;
  return { payloadType: pt, sequence: buf.readUInt16BE(2), timestamp: buf.readUInt32BE(4), ssrc: buf.readUInt32BE(8), marker: (buf[1]! & 0x80) !== 0, payload: buf.subarray(off, end) };
}

export class H264Depacketizer {
  private nals: Buffer[] = [];
  private bytes = 0;
  private ts: number | undefined;
  private damaged = false;
  private lastSeq: number | undefined;
  private fu: Buffer[] | undefined;

  constructor(private readonly maxAccessUnitBytes = 4 * 1024 * 1024) {}

  /** Feeds one RTP packet of the H.264 stream, in arrival order; returns the access units it completes (0, 1 or 2). */
  push(p: RtpPacket): AccessUnit[] {
    const out: AccessUnit[] = [];
    if (this.ts !== undefined && p.timestamp !== this.ts) {
      const au = this.finish();
      if (au) out.push(au);
    }
    if (this.lastSeq !== undefined && ((this.lastSeq + 1) & 0xffff) !== p.sequence) {
      // A gap (or reordering, which we do not undo): what was being assembled is incomplete.
      this.damaged = true;
      this.fu = undefined;
    }
    this.lastSeq = p.sequence;
    this.ts = p.timestamp;
    this.payload(p.payload);
    if (p.marker) {
      const au = this.finish();
      if (au) out.push(au);
    }
    return out;
  }

  private keep(nal: Buffer): void {
    this.bytes += nal.length;
    if (this.bytes > this.maxAccessUnitBytes) {
      this.damaged = true;
      this.nals = [];
      this.fu = undefined;
      return;
    }
    this.nals.push(nal);
  }

  private payload(b: Buffer): void {
    if (b.length < 1) {
      this.damaged = true;
      return;
    }
    const type = b[0]! & 0x1f;
    if (type >= 1 && type <= 23) {
      this.keep(b);
    } else if (type === STAP_A) {
      // STAP-A: 16-bit sizes, each followed by its NAL unit.
      let off = 1;
      while (off < b.length) {
        if (off + 2 > b.length) {
          this.damaged = true;
          return;
        }
        const len = b.readUInt16BE(off);
        off += 2;
        if (len === 0 || off + len > b.length) {
          this.damaged = true;
          return;
        }
        this.keep(b.subarray(off, off + len));
        off += len;
      }
    } else if (type === FU_A) {
      if (b.length < 3) {
        this.damaged = true;
        return;
      }
      const start = (b[1]! & 0x80) !== 0;
      const end = (b[1]! & 0x40) !== 0;
      if (start) {
        if (this.fu) this.damaged = true; // a start before the previous one ended
        this.fu = [Buffer.from([(b[0]! & 0xe0) | (b[1]! & 0x1f)])];
        this.bytes += 1;
      }
      if (!this.fu) {
        this.damaged = true; // a middle or end without its start
        return;
      }
      const piece = b.subarray(2);
      this.bytes += piece.length;
      if (this.bytes > this.maxAccessUnitBytes) {
        this.damaged = true;
        this.nals = [];
        this.fu = undefined;
        return;
      }
      this.fu.push(piece);
      if (end) {
        const nal = Buffer.concat(this.fu);
        this.fu = undefined;
        this.bytes -= nal.length; // counted piece by piece already
        this.keep(nal);
      }
    } else {
      this.damaged = true; // STAP-B, MTAP, FU-B: not in packetization-mode 1
    }
  }

  private finish(): AccessUnit | undefined {
    const nals = this.nals;
    const ts = this.ts;
    const damaged = this.damaged || this.fu !== undefined;
    this.nals = [];
    this.bytes = 0;
    this.fu = undefined;
    this.damaged = false;
    this.ts = undefined;
    if (ts === undefined || (nals.length === 0 && !damaged)) return undefined;
    return { timestamp: ts, nals, keyframe: nals.some((n) => (n[0]! & 0x1f) === NAL_IDR), damaged };
  }
}

/** An AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) for one SPS and PPS, 4-byte NAL lengths. */
export function avcDecoderConfig(sps: Buffer, pps: Buffer): Buffer {
  if (sps.length < 4) throw new RangeError(`SPS too short (${sps.length} bytes)`);
  return Buffer.concat([
    Buffer.from([1, sps[1]!, sps[2]!, sps[3]!, 0xff, 0xe1]),
    Buffer.from([sps.length >> 8, sps.length & 0xff]),
    sps,
    Buffer.from([1, pps.length >> 8, pps.length & 0xff]),
    pps,
  ]);
}

/** The FLV video payload of an AVC sequence header (keyframe, AVC, packet type 0, composition time 0). */
export function flvAvcSequenceHeader(sps: Buffer, pps: Buffer): Buffer {
  return Buffer.concat([Buffer.from([0x17, 0, 0, 0, 0]), avcDecoderConfig(sps, pps)]);
}

/**
 * The FLV video payload of an access unit: NAL units 4-byte length-prefixed (composition time 0:
 * WebRTC sources send no B-frames). Parameter sets and access unit delimiters are left out: the
 * sequence header carries the former, FLV needs no delimiters.
 */
export function flvAvcFrame(nals: readonly Buffer[], keyframe: boolean): Buffer {
  const kept = nals.filter((n) => {
    const t = n[0]! & 0x1f;
    return t !== NAL_SPS && t !== NAL_PPS && t !== NAL_AUD;
  });
  let total = 5;
  for (const n of kept) total += 4 + n.length;
  const out = Buffer.allocUnsafe(total);
  out[0] = keyframe ? 0x17 : 0x27;
  out[1] = 1;
  out[2] = 0;
  out[3] = 0;
  out[4] = 0;
  let w = 5;
  for (const n of kept) {
    out.writeUInt32BE(n.length, w);
    w += 4;
    w += n.copy(out, w);
  }
  return out;
}

/**
 * RTP timestamps (32-bit, wrapping) as a monotonic millisecond timeline starting at `baseMs` for
 * the first packet: wraps are unwrapped, a step back is held at the last value.
 */
export class RtpClock {
  private first: number | undefined;
  private last = 0;
  private ext = 0;
  private lastMs = 0;

  constructor(
    private readonly rate: number,
    private readonly baseMs: number,
  ) {}

  toMs(rtp: number): number {
    if (this.first === undefined) {
      this.first = rtp;
      this.last = rtp;
      this.lastMs = this.baseMs;
      return this.baseMs;
    }
    // The signed 32-bit difference from the last timestamp: forward wraps are unwrapped, small steps back are allowed.
    const delta = (rtp - this.last) | 0;
    this.ext += delta;
    this.last = rtp;
    const ms = this.baseMs + Math.round((this.ext * 1000) / this.rate);
    if (ms > this.lastMs) this.lastMs = ms;
    return this.lastMs;
  }
}
