/**
 * Pure pieces of WebRTC playback (WHEP, RFC 9725): reading a browser's SDP offer, choosing the
 * H.264 payload type to answer with (RFC 6184 packetization-mode 1), turning FLV's AVCC access
 * units into what an RTP packetiser takes, advertising the node's own ICE candidates, and reading
 * picture-loss feedback out of RTCP. No I/O; the node's WebRTC session wires these to a peer.
 */

/** One payload type of an offered m-section. */
export interface OfferedFormat {
  pt: number;
  /** Encoding name as written (`H264`, `opus`, `VP8`, …). */
  codec: string;
  clockRate: number;
  /** The `a=fmtp` parameters, as written. */
  fmtp: string;
}

export interface OfferedMedia {
  kind: string;
  mid: string;
  direction: 'sendrecv' | 'sendonly' | 'recvonly' | 'inactive';
  formats: OfferedFormat[];
}

/** The m-sections of an SDP offer with their payload types (RFC 8866 §5.14, RFC 4566 rtpmap/fmtp). */
export function parseSdpOffer(sdp: string): OfferedMedia[] {
  const out: OfferedMedia[] = [];
  let cur: OfferedMedia | undefined;
  let order: number[] = [];
  const finish = (): void => {
    if (!cur) return;
    const byPt = new Map(cur.formats.map((f) => [f.pt, f]));
    cur.formats = order.map((pt) => byPt.get(pt)).filter((f): f is OfferedFormat => f !== undefined);
    out.push(cur);
  };
  for (const raw of sdp.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('m=')) {
      finish();
      const parts = line.slice(2).split(/\s+/);
      order = parts.slice(3).map(Number).filter((n) => Number.isInteger(n));
      cur = { kind: parts[0] ?? '', mid: '', direction: 'sendrecv', formats: [] };
      continue;
    }
    if (!cur) continue;
    if (line.startsWith('a=mid:')) cur.mid = line.slice(6);
    else if (line === 'a=sendrecv' || line === 'a=sendonly' || line === 'a=recvonly' || line === 'a=inactive') cur.direction = line.slice(2) as OfferedMedia['direction'];
    else if (line.startsWith('a=rtpmap:')) {
      const m = /^a=rtpmap:(\d+)\s+([^/\s]+)\/(\d+)/.exec(line);
      if (m) cur.formats.push({ pt: Number(m[1]), codec: m[2]!, clockRate: Number(m[3]), fmtp: '' });
    } else if (line.startsWith('a=fmtp:')) {
      const m = /^a=fmtp:(\d+)\s+(.*)$/.exec(line);
      const f = m ? cur.formats.find((x) => x.pt === Number(m[1])) : undefined;
      if (f && m) f.fmtp = m[2]!;
    }
  }
  finish();
  return out;
}

export function fmtpParams(fmtp: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const kv of fmtp.split(';')) {
    const i = kv.indexOf('=');
    if (i > 0) out.set(kv.slice(0, i).trim().toLowerCase(), kv.slice(i + 1).trim());
  }
  return out;
}

/** `profile-level-id` (RFC 6184 §8.1): the SPS's profile_idc, constraint flags and level_idc as 6 hex digits. */
export function profileLevelId(sps: Buffer): string {
  if (sps.length < 4) throw new RangeError(`SPS too short (${sps.length} bytes) for a profile-level-id`);
  return sps.subarray(1, 4).toString('hex');
}

/**
 * The offered H.264 format to answer with: packetization-mode 1 only (single NAL mode cannot carry
 * a 1080p IDR in one packet), preferring the stream's own profile_idc, then Constrained Baseline's
 * 42e0 (which every browser decodes); undefined when the browser offered no usable H.264.
 */
export function chooseH264(media: OfferedMedia, streamProfileLevelId: string): OfferedFormat | undefined {
  const candidates = media.formats.filter((f) => f.codec.toUpperCase() === 'H264' && fmtpParams(f.fmtp).get('packetization-mode') === '1');
  const profileOf = (f: OfferedFormat): string => (fmtpParams(f.fmtp).get('profile-level-id') ?? '42001f').toLowerCase();
  const want = streamProfileLevelId.slice(0, 2).toLowerCase();
  return candidates.find((f) => profileOf(f).startsWith(want)) ?? candidates.find((f) => profileOf(f).startsWith('42e0')) ?? candidates[0];
}

/** Whether the offer carries an encoding (e.g. `H265`, `AV1`, `VP9`) in a given m-section. */
export function offersCodec(media: OfferedMedia, codec: string): boolean {
  return media.formats.some((f) => f.codec.toUpperCase() === codec.toUpperCase());
}

/** AV1 OBU types (AV1 spec §6.2.2) this module acts on. */
const OBU_SEQUENCE_HEADER = 1;
const OBU_TEMPORAL_DELIMITER = 2;

/**
 * An FLV AV1 frame (Enhanced RTMP `av01` CodedFrames: OBUs in the low-overhead format, each with
 * its size field) as the temporal unit an RTP AV1 packetiser takes. Temporal delimiters are
 * dropped (the RTP AV1 payload format leaves them out), and on a keyframe `sequenceHeader` (the
 * av1C record's configOBUs) is put in front unless the frame carries its own. A malformed OBU
 * ends the unit there. Returns an empty buffer when nothing is left.
 */
export function av1TemporalUnit(data: Buffer, sequenceHeader?: Buffer): Buffer {
  const kept: Buffer[] = [];
  let hasSequenceHeader = false;
  let off = 0;
  while (off < data.length) {
    const start = off;
    const header = data[off]!;
    const type = (header >> 3) & 0x0f;
    const hasExtension = (header & 0x04) !== 0;
    const hasSize = (header & 0x02) !== 0;
    off += hasExtension ? 2 : 1;
    let size = data.length - off;
    if (hasSize) {
      // leb128 (AV1 spec §4.10.5): at most 8 bytes.
      size = 0;
      let i = 0;
      for (; i < 8 && off < data.length; i++) {
        const b = data[off++]!;
        size += (b & 0x7f) * 2 ** (7 * i);
        if (!(b & 0x80)) break;
      }
      if (i === 8) break;
    }
    if (off + size > data.length) break;
    off += size;
    if (type === OBU_TEMPORAL_DELIMITER) continue;
    if (type === OBU_SEQUENCE_HEADER) hasSequenceHeader = true;
    kept.push(data.subarray(start, off));
  }
  if (sequenceHeader && sequenceHeader.length > 0 && !hasSequenceHeader && kept.length > 0) kept.unshift(sequenceHeader);
  return Buffer.concat(kept);
}

/** H.264 SPS/PPS (types 7, 8; RFC 6184 §1.3) or HEVC VPS/SPS/PPS (types 32-34 in bits 1-6; RFC 7798 §1.1.4). */
function isParameterSet(nal: Buffer, codec: 'avc' | 'hevc'): boolean {
  if (codec === 'hevc') {
    const type = (nal[0]! >> 1) & 0x3f;
    return type >= 32 && type <= 34;
  }
  const type = nal[0]! & 0x1f;
  return type === 7 || type === 8;
}

/**
 * An FLV AVC (or HEVC) access unit (NAL units with `nalLengthSize`-byte lengths) as 4-byte
 * length-prefixed NAL units, with the stream's parameter sets (H.264 SPS and PPS; HEVC VPS, SPS
 * and PPS) in front when `parameterSets` is given (every IDR: a viewer that joins or lost a
 * picture decodes from there on).
 */
export function avccAccessUnit(data: Buffer, nalLengthSize: number, parameterSets?: readonly Buffer[], codec: 'avc' | 'hevc' = 'avc'): Buffer {
  const nals: Buffer[] = [];
  for (const ps of parameterSets ?? []) nals.push(ps);
  let off = 0;
  while (off + nalLengthSize <= data.length) {
    let len = 0;
    for (let i = 0; i < nalLengthSize; i++) len = len * 256 + data[off + i]!;
    off += nalLengthSize;
    if (len === 0) continue;
    if (off + len > data.length) break; // a truncated tail is not a NAL unit
    const nal = data.subarray(off, off + len);
    off += len;
    // Parameter sets inside the access unit are replaced by the configured ones, not sent twice.
    if (parameterSets && isParameterSet(nal, codec)) continue;
    nals.push(nal);
  }
  let total = 0;
  for (const n of nals) total += 4 + n.length;
  const out = Buffer.allocUnsafe(total);
  let w = 0;
  for (const n of nals) {
    out.writeUInt32BE(n.length, w);
    w += 4;
    w += n.copy(out, w);
  }
  return out;
}

/** Whether an FLV video tag carries a non-zero composition time offset (legacy AVC/HEVC coded frames): the source uses B-frames. */
export function hasCompositionOffset(payload: Buffer): boolean {
  if (payload.length < 5) return false;
  const b0 = payload[0]!;
  if (b0 & 0x80) {
    // Enhanced RTMP: only CodedFrames (packet type 1) of AVC and HEVC carries a composition time (AV1 and VP9 have none).
    const fourcc = payload.toString('latin1', 1, 5);
    return (b0 & 0x0f) === 1 && (fourcc === 'avc1' || fourcc === 'hvc1') && payload.length >= 8 && (payload[5]! | payload[6]! | payload[7]!) !== 0;
  }
  const codecId = b0 & 0x0f;
  if (codecId !== 7 && codecId !== 12) return false;
  return payload[1] === 1 && (payload[2]! | payload[3]! | payload[4]!) !== 0;
}

/** What a viewer's RTCP asks of the sender. */
export type RtcpFeedback = 'pli' | 'fir';

/** Picture-loss (PLI, RFC 4585 §6.3.1) and full-intra (FIR, RFC 5104 §4.3.1) requests in a compound RTCP packet. */
export function rtcpKeyframeRequests(buf: Buffer): RtcpFeedback[] {
  const out: RtcpFeedback[] = [];
  let off = 0;
  while (off + 4 <= buf.length) {
    if (buf[off]! >> 6 !== 2) break; // not RTCP version 2
    const fmt = buf[off]! & 0x1f;
    const pt = buf[off + 1]!;
    const len = (buf.readUInt16BE(off + 2) + 1) * 4;
    if (off + len > buf.length) break;
    if (pt === 206 && fmt === 1) out.push('pli');
    else if (pt === 206 && fmt === 4) out.push('fir');
    off += len;
  }
  return out;
}

/**
 * The answer with its ICE candidates replaced by the node's advertised addresses (public_host and the
 * extra list) on its one UDP port: peers reach the node where operators said, never at an interface
 * address the library found (a container's, a private one).
 */
export function advertiseCandidates(sdp: string, addresses: readonly string[], port: number): string {
  const lines = sdp.split(/\r?\n/).filter((l) => l !== '' && !l.startsWith('a=candidate:') && l !== 'a=end-of-candidates');
  const out: string[] = [];
  for (const line of lines) {
    out.push(line);
    // Every m-section gets them (BUNDLE uses the first one's; a browser without BUNDLE, each its own).
    if (line.startsWith('a=mid:')) {
      addresses.forEach((addr, i) => out.push(`a=candidate:${i + 1} 1 UDP ${2130706431 - i} ${addr} ${port} typ host`));
      out.push('a=end-of-candidates');
    }
  }
  return out.join('\r\n') + '\r\n';
}
