/**
 * Minimal MPEG-2 Transport Stream muxer for HLS segments.
 *
 * Input: FLV-style tag payloads as carried in RTMP video/audio messages
 * (legacy AVC / HEVC(codec id 12) / AAC, and Enhanced RTMP 'avc1' / 'hvc1' /
 * 'mp4a'). Sequence headers are remembered; coded frames become PES packets:
 *
 * - video: AVCC/HVCC length-prefixed NAL units → Annex B with an access unit
 *   delimiter first and the parameter sets before every keyframe (unless the
 *   frame carries its own); PTS/DTS = (timestamp [+ compositionTime]) × 90;
 *   PCR on the PCR PID at every PES start, random_access_indicator on keyframes.
 * - audio: raw AAC frames → ADTS; PTS = timestamp × 90.
 *
 * PIDs: PAT 0, PMT 0x1000, video 0x100, audio 0x101. Every returned buffer is
 * a whole number of 188-byte packets; continuity counters run per PID across
 * segments.
 *
 * Malformed or unusable input never throws: the frame is dropped (an empty
 * buffer is returned), `droppedFrames` is incremented and `lastError` set.
 */
import {
  classifyAudioTag,
  classifyVideoTag,
  parseAacAudioSpecificConfig,
  parseAvcDecoderConfig,
  parseHevcDecoderConfig,
  type AacConfig,
} from './codec.ts';
import { CodecConfigError, ProtocolError } from './errors.ts';

export interface TsMuxerOptions {
  /** Video codec of the video PID; omit for an audio-only stream. */
  videoCodec?: 'avc' | 'hevc';
  /** Whether the stream has an AAC audio PID (default false). */
  audio?: boolean;
}

export const TS_PACKET_SIZE = 188;
export const TS_PID_PAT = 0;
export const TS_PID_PMT = 0x1000;
export const TS_PID_VIDEO = 0x100;
export const TS_PID_AUDIO = 0x101;

const STREAM_TYPE_AVC = 0x1b;
const STREAM_TYPE_HEVC = 0x24;
const STREAM_TYPE_AAC_ADTS = 0x0f;
const PTS_MOD = 2 ** 33;

const EMPTY = Buffer.alloc(0);
const START_CODE = Buffer.from([0, 0, 0, 1]);
const AVC_AUD = Buffer.from([0, 0, 0, 1, 0x09, 0xf0]);
const HEVC_AUD = Buffer.from([0, 0, 0, 1, 0x46, 0x01, 0x50]);

// MPEG-2 CRC32 (poly 0x04C11DB7, MSB first, init 0xFFFFFFFF, no final xor).
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 24;
    for (let k = 0; k < 8; k++) c = c & 0x80000000 ? (c << 1) ^ 0x04c11db7 : c << 1;
    t[i] = c >>> 0;
  }
  return t;
})();

export function crc32Mpeg2(buf: Buffer, start = 0, end = buf.length): number {
  let crc = 0xffffffff;
  for (let i = start; i < end; i++) crc = ((crc << 8) ^ (CRC_TABLE[((crc >>> 24) ^ (buf[i] ?? 0)) & 0xff] ?? 0)) >>> 0;
  return crc >>> 0;
}

function writeTimestamp(buf: Buffer, off: number, prefix: number, ts: number): void {
  // 33-bit value: '4-bit prefix' ts[32..30] '1' ts[29..15] '1' ts[14..0] '1'
  const hi = Math.floor(ts / 2 ** 30) & 0x07;
  const lo = ts % 2 ** 30;
  buf[off] = (prefix << 4) | (hi << 1) | 1;
  const mid = (lo >>> 15) & 0x7fff;
  buf[off + 1] = mid >>> 7;
  buf[off + 2] = ((mid & 0x7f) << 1) | 1;
  const low = lo & 0x7fff;
  buf[off + 3] = low >>> 7;
  buf[off + 4] = ((low & 0x7f) << 1) | 1;
}

interface PsiParts {
  pid: number;
  section: Buffer; // without pointer field
}

export class TsMuxer {
  private readonly videoCodec: 'avc' | 'hevc' | undefined;
  private readonly audio: boolean;
  private readonly cc = new Map<number, number>();
  private readonly pcrPid: number;
  /** Annex B parameter sets (VPS/SPS/PPS) from the last video sequence header. */
  private paramSets: Buffer | undefined;
  private nalLengthSize = 4;
  private aac: AacConfig | undefined;
  droppedFrames = 0;
  lastError: ProtocolError | undefined;

  constructor(opts: TsMuxerOptions) {
    this.videoCodec = opts.videoCodec;
    this.audio = opts.audio ?? false;
    if (this.videoCodec === undefined && !this.audio) throw new RangeError('TsMuxer needs a video codec and/or audio');
    this.pcrPid = this.videoCodec !== undefined ? TS_PID_VIDEO : TS_PID_AUDIO;
  }

  /** Whether a video sequence header has been seen (frames before it are dropped). */
  get hasVideoConfig(): boolean {
    return this.paramSets !== undefined;
  }

  /** Whether an AAC sequence header has been seen. */
  get hasAudioConfig(): boolean {
    return this.aac !== undefined;
  }

  /** PAT + PMT, to be written at the start of every segment (2 packets). */
  startSegment(): Buffer {
    const out = Buffer.alloc(2 * TS_PACKET_SIZE, 0xff);
    this.writePsi(out, 0, { pid: TS_PID_PAT, section: this.patSection() });
    this.writePsi(out, TS_PACKET_SIZE, { pid: TS_PID_PMT, section: this.pmtSection() });
    return out;
  }

  pushVideo(timestamp: number, payload: Buffer): Buffer {
    if (this.videoCodec === undefined) return this.drop('MPEGTS', 'video pushed to an audio-only muxer');
    const info = classifyVideoTag(payload);
    if (info instanceof CodecConfigError) return this.drop(info);
    if (info.codec !== this.videoCodec) return this.drop('MPEGTS', `video codec ${info.codec} does not match ${this.videoCodec}`);
    const data = payload.subarray(info.dataOffset, info.dataOffset + info.dataLength);
    if (info.isSequenceHeader) {
      const cfg = this.videoCodec === 'avc' ? parseAvcDecoderConfig(data) : parseHevcDecoderConfig(data);
      if (cfg instanceof CodecConfigError) return this.drop(cfg);
      const sets = cfg.codec === 'hevc' ? [...cfg.vps, ...cfg.sps, ...cfg.pps] : [...cfg.sps, ...cfg.pps];
      this.paramSets = Buffer.concat(sets.flatMap((s) => [START_CODE, s]));
      this.nalLengthSize = cfg.nalLengthSize;
      return EMPTY;
    }
    const coded = info.enhanced ? info.packetType === 1 || info.packetType === 3 : info.packetType === 1;
    if (!coded || info.frameType === 5) return EMPTY; // end of sequence, metadata, commands
    if (this.paramSets === undefined) return this.drop('MPEGTS', 'video frame before sequence header');
    const es = this.annexB(data, info.isKeyframe);
    if (es instanceof ProtocolError) return this.drop(es);
    const dts = ((timestamp >>> 0) * 90) % PTS_MOD;
    const pts = (((timestamp >>> 0) + info.compositionTime) * 90 + PTS_MOD) % PTS_MOD;
    return this.packetizePes(TS_PID_VIDEO, 0xe0, es, pts, dts, info.isKeyframe);
  }

  pushAudio(timestamp: number, payload: Buffer): Buffer {
    if (!this.audio) return this.drop('MPEGTS', 'audio pushed to a muxer without audio');
    const info = classifyAudioTag(payload);
    if (info instanceof CodecConfigError) return this.drop(info);
    if (info.codec !== 'aac') return this.drop('MPEGTS', `unsupported audio codec ${info.codec}`);
    const data = payload.subarray(info.dataOffset, info.dataOffset + info.dataLength);
    if (info.isSequenceHeader) {
      const asc = parseAacAudioSpecificConfig(data);
      if (asc instanceof CodecConfigError) return this.drop(asc);
      if (asc.objectType < 1 || asc.objectType > 4) return this.drop('MPEGTS', `AAC object type ${asc.objectType} cannot be carried in ADTS`);
      if (asc.samplingFrequencyIndex > 12) return this.drop('MPEGTS', 'explicit AAC sampling rate cannot be carried in ADTS');
      if (asc.channelConfiguration > 7) return this.drop('MPEGTS', `AAC channel configuration ${asc.channelConfiguration} cannot be carried in ADTS`);
      this.aac = asc;
      return EMPTY;
    }
    if (info.packetType !== 1) return EMPTY; // sequence end, multichannel config
    const aac = this.aac;
    if (aac === undefined) return this.drop('MPEGTS', 'audio frame before AAC sequence header');
    const frameLength = 7 + data.length;
    if (frameLength > 0x1fff) return this.drop('MPEGTS', `AAC frame too large for ADTS (${data.length} bytes)`);
    const es = Buffer.allocUnsafe(frameLength);
    es[0] = 0xff;
    es[1] = 0xf1; // MPEG-4, layer 0, no CRC
    es[2] = ((aac.objectType - 1) << 6) | (aac.samplingFrequencyIndex << 2) | (aac.channelConfiguration >>> 2);
    es[3] = ((aac.channelConfiguration & 3) << 6) | (frameLength >>> 11);
    es[4] = (frameLength >>> 3) & 0xff;
    es[5] = ((frameLength & 7) << 5) | 0x1f; // buffer fullness 0x7FF (VBR)
    es[6] = 0xfc;
    data.copy(es, 7);
    const pts = ((timestamp >>> 0) * 90) % PTS_MOD;
    return this.packetizePes(TS_PID_AUDIO, 0xc0, es, pts, pts, false);
  }

  private drop(err: ProtocolError): Buffer;
  private drop(code: 'MPEGTS', message: string): Buffer;
  private drop(a: ProtocolError | 'MPEGTS', message?: string): Buffer {
    this.lastError = a instanceof ProtocolError ? a : new ProtocolError(a, message ?? '');
    this.droppedFrames++;
    return EMPTY;
  }

  /** Length-prefixed NAL units → Annex B access unit (AUD first, parameter sets before keyframes). */
  private annexB(data: Buffer, keyframe: boolean): Buffer | ProtocolError {
    const n = this.nalLengthSize;
    const hevc = this.videoCodec === 'hevc';
    // Pass 1: validate and size.
    let size = hevc ? HEVC_AUD.length : AVC_AUD.length;
    let hasParamSets = false;
    let nals = 0;
    let off = 0;
    while (off < data.length) {
      if (off + n > data.length) return new ProtocolError('MPEGTS', 'truncated NAL unit length');
      const len = data.readUIntBE(off, n);
      off += n;
      if (len === 0) continue;
      if (off + len > data.length) return new ProtocolError('MPEGTS', `NAL unit length ${len} exceeds frame`);
      const type = hevc ? ((data[off] ?? 0) >>> 1) & 0x3f : (data[off] ?? 0) & 0x1f;
      off += len;
      if (hevc ? type === 35 : type === 9) continue; // existing AUD
      if (hevc ? type === 33 : type === 7) hasParamSets = true;
      size += 4 + len;
      nals++;
    }
    if (nals === 0) return new ProtocolError('MPEGTS', 'video frame without NAL units');
    const params = keyframe && !hasParamSets ? this.paramSets : undefined;
    if (params) size += params.length;
    // Pass 2: write.
    const out = Buffer.allocUnsafe(size);
    let o = (hevc ? HEVC_AUD : AVC_AUD).copy(out, 0);
    if (params) o += params.copy(out, o);
    off = 0;
    while (off < data.length) {
      const len = data.readUIntBE(off, n);
      off += n;
      if (len === 0) continue;
      const type = hevc ? ((data[off] ?? 0) >>> 1) & 0x3f : (data[off] ?? 0) & 0x1f;
      if (!(hevc ? type === 35 : type === 9)) {
        out.writeUInt32BE(1, o);
        o += 4;
        o += data.copy(out, o, off, off + len);
      }
      off += len;
    }
    return out;
  }

  private nextCc(pid: number): number {
    const c = this.cc.get(pid) ?? 0;
    this.cc.set(pid, (c + 1) & 0x0f);
    return c;
  }

  private patSection(): Buffer {
    const s = Buffer.alloc(16);
    s[0] = 0x00; // table_id
    s.writeUInt16BE(0xb000 | 13, 1); // section_syntax_indicator, '0', reserved, section_length
    s.writeUInt16BE(1, 3); // transport_stream_id
    s[5] = 0xc1; // reserved, version 0, current_next 1
    s[6] = 0; // section_number
    s[7] = 0; // last_section_number
    s.writeUInt16BE(1, 8); // program_number
    s.writeUInt16BE(0xe000 | TS_PID_PMT, 10);
    s.writeUInt32BE(crc32Mpeg2(s, 0, 12), 12);
    return s;
  }

  private pmtSection(): Buffer {
    const streams: Array<[number, number]> = [];
    if (this.videoCodec !== undefined) streams.push([this.videoCodec === 'hevc' ? STREAM_TYPE_HEVC : STREAM_TYPE_AVC, TS_PID_VIDEO]);
    if (this.audio) streams.push([STREAM_TYPE_AAC_ADTS, TS_PID_AUDIO]);
    const sectionLength = 9 + 5 * streams.length + 4;
    const s = Buffer.alloc(3 + sectionLength);
    s[0] = 0x02; // table_id
    s.writeUInt16BE(0xb000 | sectionLength, 1);
    s.writeUInt16BE(1, 3); // program_number
    s[5] = 0xc1;
    s[6] = 0;
    s[7] = 0;
    s.writeUInt16BE(0xe000 | this.pcrPid, 8);
    s.writeUInt16BE(0xf000, 10); // program_info_length 0
    let o = 12;
    for (const [type, pid] of streams) {
      s[o] = type;
      s.writeUInt16BE(0xe000 | pid, o + 1);
      s.writeUInt16BE(0xf000, o + 3); // ES_info_length 0
      o += 5;
    }
    s.writeUInt32BE(crc32Mpeg2(s, 0, o), o);
    return s;
  }

  private writePsi(out: Buffer, at: number, psi: PsiParts): void {
    out[at] = 0x47;
    out[at + 1] = 0x40 | (psi.pid >>> 8); // payload_unit_start
    out[at + 2] = psi.pid & 0xff;
    out[at + 3] = 0x10 | this.nextCc(psi.pid); // payload only
    out[at + 4] = 0; // pointer_field
    psi.section.copy(out, at + 5);
  }

  /** Wraps an elementary-stream frame in a PES packet and splits it into TS packets. */
  private packetizePes(pid: number, streamId: number, es: Buffer, pts: number, dts: number, keyframe: boolean): Buffer {
    const withDts = pts !== dts;
    const headerDataLength = withDts ? 10 : 5;
    const pesHeaderLength = 9 + headerDataLength;
    const pesLength = 3 + headerDataLength + es.length;
    const pes = Buffer.allocUnsafe(pesHeaderLength);
    pes[0] = 0;
    pes[1] = 0;
    pes[2] = 1;
    pes[3] = streamId;
    pes.writeUInt16BE(pesLength > 0xffff ? 0 : pesLength, 4);
    pes[6] = 0x80; // '10', not scrambled, no priority/alignment/copyright/original
    pes[7] = withDts ? 0xc0 : 0x80;
    pes[8] = headerDataLength;
    writeTimestamp(pes, 9, withDts ? 3 : 2, pts);
    if (withDts) writeTimestamp(pes, 14, 1, dts);

    const withPcr = pid === this.pcrPid;
    // Adaptation field of the first packet: length byte + flags byte (+ 6 PCR bytes).
    const firstAf = withPcr ? 8 : keyframe ? 2 : 0;
    const total = pesHeaderLength + es.length;
    const firstCap = 184 - firstAf;
    const packets = total <= firstCap ? 1 : 1 + Math.ceil((total - firstCap) / 184);
    const out = Buffer.allocUnsafe(packets * TS_PACKET_SIZE);
    let consumed = 0; // bytes of (pes header + es) written
    const copyPayload = (dst: number, n: number): void => {
      let o = dst;
      let left = n;
      if (consumed < pesHeaderLength) {
        const k = Math.min(left, pesHeaderLength - consumed);
        pes.copy(out, o, consumed, consumed + k);
        o += k;
        left -= k;
        consumed += k;
      }
      if (left > 0) {
        const esOff = consumed - pesHeaderLength;
        es.copy(out, o, esOff, esOff + left);
        consumed += left;
      }
    };
    for (let p = 0; p < packets; p++) {
      const at = p * TS_PACKET_SIZE;
      const first = p === 0;
      const remaining = total - consumed;
      const afBase = first ? firstAf : 0;
      const cap = 184 - afBase;
      const n = Math.min(cap, remaining);
      // Stuffing needed when the payload does not fill the packet.
      const afLen = afBase + (cap - n); // total adaptation field bytes incl. its length byte
      out[at] = 0x47;
      out[at + 1] = (first ? 0x40 : 0) | (pid >>> 8);
      out[at + 2] = pid & 0xff;
      out[at + 3] = (afLen > 0 ? 0x30 : 0x10) | this.nextCc(pid);
      let o = at + 4;
      if (afLen > 0) {
        out[o] = afLen - 1; // adaptation_field_length
        if (afLen > 1) {
          let flags = 0;
          if (first && keyframe) flags |= 0x40; // random_access_indicator
          if (first && withPcr) flags |= 0x10; // PCR_flag
          out[o + 1] = flags;
          let f = o + 2;
          if (first && withPcr) {
            // PCR base = DTS (90 kHz), extension 0.
            const base = dts;
            out[f] = Math.floor(base / 2 ** 25) & 0xff;
            out[f + 1] = Math.floor(base / 2 ** 17) & 0xff;
            out[f + 2] = Math.floor(base / 2 ** 9) & 0xff;
            out[f + 3] = Math.floor(base / 2 ** 1) & 0xff;
            out[f + 4] = ((base % 2) << 7) | 0x7e;
            out[f + 5] = 0;
            f += 6;
          }
          out.fill(0xff, f, o + afLen);
        }
        o += afLen;
      }
      copyPayload(o, n);
    }
    return out;
  }
}
