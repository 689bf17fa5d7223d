/**
 * VP9 over RTP (RFC 9628), sending side: one VP9 frame (a frame or a superframe as the encoder
 * wrote it, e.g. an Enhanced RTMP `vp09` CodedFrames body) as RTP payloads, and those payloads as
 * RTP packets (RFC 3550 §5.1). libdatachannel has no VP9 packetiser, so WHEP viewers of a VP9
 * stream get these.
 *
 * Non-flexible mode, one spatial and one temporal layer: every payload descriptor carries a
 * 15-bit picture ID (I, M), the P bit on inter frames and B/E on a frame's first/last packet; no
 * layer indices (L=0), as libwebrtc sends a single-layer stream, so the receiver chains frames by
 * picture ID alone. A keyframe's first packet carries the scalability structure (V) with the
 * picture's size when it is known, so the receiver learns the resolution before decoding.
 */
import { BitReader } from '../codec.ts';

/** Picture IDs are 15 bits (RFC 9628 §4.2, M=1): they wrap to 0 after 0x7fff. */
export const VP9_PICTURE_ID_MASK = 0x7fff;

export interface Vp9FrameSize {
  width: number;
  height: number;
}

export interface Vp9PacketizeOptions {
  /** The frame's picture ID (only its low 15 bits are sent). */
  pictureId: number;
  /** An intra frame: sent without the P (inter-picture predicted) bit. */
  keyframe: boolean;
  /** A keyframe's size, sent in its scalability structure (ignored for inter frames). */
  size?: Vp9FrameSize;
  /** Largest payload (descriptor + VP9 bytes) per packet. */
  maxPayload: number;
}

// Payload descriptor flags (RFC 9628 §4.2, first octet).
const I_BIT = 0x80;
const P_BIT = 0x40;
const B_BIT = 0x08;
const E_BIT = 0x04;
const V_BIT = 0x02;
/** Scalability structure: N_S = 0 (one spatial layer), Y = 1 (sizes follow), G = 0 (no picture group description). */
const SS_ONE_LAYER_WITH_SIZE = 0x10;

/** The payload descriptor of one packet of a frame. */
export function vp9PayloadDescriptor(opts: { pictureId: number; keyframe: boolean; start: boolean; end: boolean; size?: Vp9FrameSize }): Buffer {
  const ss = opts.keyframe && opts.start && opts.size !== undefined;
  const d = Buffer.alloc(ss ? 8 : 3);
  d[0] = I_BIT | (opts.keyframe ? 0 : P_BIT) | (opts.start ? B_BIT : 0) | (opts.end ? E_BIT : 0) | (ss ? V_BIT : 0);
  const pid = opts.pictureId & VP9_PICTURE_ID_MASK;
  d[1] = 0x80 | (pid >> 8); // M=1: the 15-bit form
  d[2] = pid & 0xff;
  if (ss) {
    d[3] = SS_ONE_LAYER_WITH_SIZE;
    d.writeUInt16BE(opts.size!.width & 0xffff, 4);
    d.writeUInt16BE(opts.size!.height & 0xffff, 6);
  }
  return d;
}

/**
 * One VP9 frame as RTP payloads: each a payload descriptor and the next piece of the frame, at
 * most `maxPayload` bytes. B is set on the first, E on the last (both on a frame that fits one
 * packet). An empty frame gives no payloads.
 */
export function packetizeVp9Frame(frame: Buffer, opts: Vp9PacketizeOptions): Buffer[] {
  if (frame.length === 0) return [];
  const out: Buffer[] = [];
  let off = 0;
  while (off < frame.length) {
    const start = off === 0;
    // The descriptor's size does not depend on E: try the rest of the frame, then cut to fit.
    const head = vp9PayloadDescriptor({ ...opts, start, end: false });
    const room = opts.maxPayload - head.length;
    if (room <= 0) throw new RangeError(`maxPayload ${opts.maxPayload} leaves no room after a ${head.length}-byte VP9 payload descriptor`);
    const n = Math.min(room, frame.length - off);
    const end = off + n === frame.length;
    const desc = end ? vp9PayloadDescriptor({ ...opts, start, end }) : head;
    out.push(Buffer.concat([desc, frame.subarray(off, off + n)]));
    off += n;
  }
  return out;
}

export interface RtpHeaderFields {
  payloadType: number;
  ssrc: number;
  timestamp: number;
  /** The first packet's sequence number; the next ones follow (mod 2^16). */
  sequence: number;
}

/** Payloads of one frame as RTP packets (version 2, no CSRCs or extensions), the marker bit on the last (RFC 3550 §5.1; RFC 9628 §4.1). */
export function rtpPackets(payloads: readonly Buffer[], h: RtpHeaderFields): Buffer[] {
  return payloads.map((p, i) => {
    const pkt = Buffer.allocUnsafe(12 + p.length);
    pkt[0] = 0x80;
    pkt[1] = (i === payloads.length - 1 ? 0x80 : 0) | (h.payloadType & 0x7f);
    pkt.writeUInt16BE((h.sequence + i) & 0xffff, 2);
    pkt.writeUInt32BE(h.timestamp >>> 0, 4);
    pkt.writeUInt32BE(h.ssrc >>> 0, 8);
    p.copy(pkt, 12);
    return pkt;
  });
}

const VP9_FRAME_MARKER = 2;
const VP9_SYNC_CODE = 0x498342;
const CS_RGB = 7;

/**
 * The size of a VP9 keyframe, from its uncompressed header (VP9 bitstream spec §6.2: frame
 * marker, profile, show_existing_frame, frame_type, then on a keyframe the sync code, color
 * config and frame_width_minus_1 / frame_height_minus_1). Reads the first frame of a superframe.
 * Undefined when the frame is not a keyframe or the header is truncated or malformed.
 */
export function vp9KeyframeSize(frame: Buffer): Vp9FrameSize | undefined {
  // Past the end the reader gives zero bits and sets `overrun`: checked before the size is used.
  const r = new BitReader(frame);
  if (r.readBits(2) !== VP9_FRAME_MARKER) return undefined;
  const low = r.readBit();
  const profile = (r.readBit() << 1) | low;
  if (profile === 3 && r.readBit() !== 0) return undefined; // reserved_zero
  if (r.readBit() !== 0) return undefined; // show_existing_frame: no header of its own
  if (r.readBit() !== 0) return undefined; // frame_type 0 = KEY_FRAME
  r.skipBits(2); // show_frame, error_resilient_mode
  if (r.readBits(24) !== VP9_SYNC_CODE) return undefined;
  if (profile >= 2) r.skipBits(1); // ten_or_twelve_bit
  const colorSpace = r.readBits(3);
  // color_range, then subsampling_x/y and reserved_zero in profiles 1 and 3 (RGB: no range, no subsampling bits).
  r.skipBits((colorSpace !== CS_RGB ? 1 : 0) + (profile === 1 || profile === 3 ? (colorSpace !== CS_RGB ? 3 : 1) : 0));
  const w = r.readBits(16);
  const h = r.readBits(16);
  if (!r.ok) return undefined;
  return { width: w + 1, height: h + 1 };
}

/**
 * The VP9 profile in an Enhanced RTMP `vp09` sequence header: a vpcC box body
 * (VPCodecConfigurationRecord with its version and flags; VP-Codec-ISOBMFF §2.2), profile in the
 * fifth byte. Undefined when the record is too short.
 */
export function vp9ConfigProfile(record: Buffer): number | undefined {
  return record.length >= 5 ? record[4] : undefined;
}
