/**
 * Codec-level inspection of FLV / RTMP audio and video payloads.
 *
 * - Tag classification for legacy FLV (SoundFormat / CodecID nibbles, incl.
 *   CodecID 12 = HEVC as used by several Chinese CDNs) and Enhanced RTMP
 *   (v1 + v2: ExHeader bit, FourCC, Multitrack, ModEx).
 * - Decoder configuration parsing: AVCDecoderConfigurationRecord (+ SPS for
 *   the display size), HEVCDecoderConfigurationRecord (+ SPS), AAC
 *   AudioSpecificConfig.
 *
 * Every public parse/classify function returns a {@link CodecConfigError}
 * instead of throwing, never loops more than the input allows and never
 * allocates according to a length field before checking that the bytes are
 * there. The `is*` predicates are hot-path helpers: a few byte reads, no
 * allocation.
 */
import { CodecConfigError } from './errors.ts';

// ---------------------------------------------------------------------------
// Bit reader (exp-golomb)
// ---------------------------------------------------------------------------

/**
 * MSB-first bit reader over a buffer, with H.264/H.265 exp-golomb helpers.
 *
 * It never throws: reading past the end yields zero bits and sets
 * {@link BitReader.overrun}; an exp-golomb code with more than 31 leading
 * zeros sets {@link BitReader.invalid} and yields 0. Parsers check the flags
 * at their checkpoints.
 */
export class BitReader {
  private readonly buf: Buffer;
  private pos = 0; // bit position
  private readonly end: number; // bit length
  overrun = false;
  invalid = false;

  constructor(buf: Buffer, byteOffset = 0) {
    this.buf = buf;
    this.pos = byteOffset * 8;
    this.end = buf.length * 8;
  }

  /** Bits consumed so far (including bits "read" past the end). */
  get bitPosition(): number {
    return this.pos;
  }

  get bitsLeft(): number {
    return Math.max(0, this.end - this.pos);
  }

  /** True when no error flag is set. */
  get ok(): boolean {
    return !this.overrun && !this.invalid;
  }

  readBit(): number {
    if (this.pos >= this.end) {
      this.overrun = true;
      this.pos++;
      return 0;
    }
    const byte = this.buf[this.pos >>> 3] ?? 0;
    const bit = (byte >>> (7 - (this.pos & 7))) & 1;
    this.pos++;
    return bit;
  }

  /** Reads `n` bits (0..32) as an unsigned number. */
  readBits(n: number): number {
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 2 + this.readBit();
    return v;
  }

  /** Reads `n` bits without consuming them (0 bits past the end, flags untouched). */
  peekBits(n: number): number {
    const pos = this.pos;
    const overrun = this.overrun;
    const v = this.readBits(n);
    this.pos = pos;
    this.overrun = overrun;
    return v;
  }

  skipBits(n: number): void {
    if (this.pos + n > this.end) {
      this.overrun = true;
      this.pos = this.end + 1;
      return;
    }
    this.pos += n;
  }

  /** ue(v): unsigned exp-golomb, up to 2^32 - 2. */
  readUe(): number {
    let zeros = 0;
    while (this.readBit() === 0) {
      if (this.overrun) return 0;
      zeros++;
      if (zeros > 31) {
        this.invalid = true;
        return 0;
      }
    }
    if (zeros === 0) return 0;
    return 2 ** zeros - 1 + this.readBits(zeros);
  }

  /** se(v): signed exp-golomb. */
  readSe(): number {
    const k = this.readUe();
    if (k === 0) return 0;
    return k % 2 === 1 ? (k + 1) / 2 : -(k / 2);
  }
}

/** Removes H.264/H.265 emulation-prevention bytes (00 00 03 → 00 00). Returns the input when there are none. */
export function unescapeRbsp(nal: Buffer): Buffer {
  let first = -1;
  for (let i = 2; i < nal.length; i++) {
    if (nal[i] === 3 && nal[i - 1] === 0 && nal[i - 2] === 0) {
      first = i;
      break;
    }
  }
  if (first < 0) return nal;
  const out = Buffer.allocUnsafe(nal.length);
  nal.copy(out, 0, 0, first);
  let o = first;
  let zeros = 0;
  for (let i = first + 1; i < nal.length; i++) {
    const b = nal[i] ?? 0;
    if (zeros >= 2 && b === 3) {
      zeros = 0;
      continue;
    }
    out[o++] = b;
    zeros = b === 0 ? zeros + 1 : 0;
  }
  return out.subarray(0, o);
}

function cfgErr(message: string): CodecConfigError {
  return new CodecConfigError('CODEC_CONFIG', message);
}

// ---------------------------------------------------------------------------
// Video tag classification
// ---------------------------------------------------------------------------

export type VideoCodec = 'avc' | 'hevc' | 'av1' | 'vp9' | 'vp8' | 'h263' | 'screen' | 'vp6' | 'unknown';

export interface VideoTagInfo {
  codec: VideoCodec;
  /** Enhanced RTMP (ExHeader) tag. */
  enhanced: boolean;
  /** FourCC of an enhanced tag ('hvc1', 'av01', 'vp09', 'avc1', 'vp08'). */
  fourcc?: string;
  /** 1 key, 2 inter, 3 disposable, 4 generated key, 5 command. */
  frameType: number;
  /** frameType 1 on a coded-frames packet (never on sequence headers/ends, metadata or commands). */
  isKeyframe: boolean;
  /** Decoder configuration (legacy AVC/HEVC packet type 0, enhanced SequenceStart or MPEG2TSSequenceStart). */
  isSequenceHeader: boolean;
  isEndOfSequence: boolean;
  /** Composition time offset in ms (PTS − DTS); 0 when the packet carries none. */
  compositionTime: number;
  /** Offset of the codec data (config record / NAL units / OBUs) inside the payload. */
  dataOffset: number;
  /** Length of the codec data (for multitrack tags: the first track's). */
  dataLength: number;
  /** Track id of the first track of an Enhanced RTMP v2 multitrack tag. */
  trackId?: number;
  /**
   * Legacy AVC/HEVC: AVCPacketType (0 sequence header, 1 NALUs, 2 end of sequence).
   * Enhanced: the (inner) VideoPacketType. Absent for other legacy codecs and command frames.
   */
  packetType?: number;
}

/** Enhanced RTMP VideoPacketType. */
export const VideoPacketType = {
  SequenceStart: 0,
  CodedFrames: 1,
  SequenceEnd: 2,
  CodedFramesX: 3,
  Metadata: 4,
  MPEG2TSSequenceStart: 5,
  Multitrack: 6,
  ModEx: 7,
} as const;

/** Enhanced RTMP AudioPacketType. */
export const AudioPacketType = {
  SequenceStart: 0,
  CodedFrames: 1,
  SequenceEnd: 2,
  MultichannelConfig: 4,
  Multitrack: 5,
  ModEx: 7,
} as const;

/** Enhanced RTMP AvMultitrackType. */
const MULTITRACK_ONE_TRACK = 0;
const MULTITRACK_MANY_TRACKS_MANY_CODECS = 2;

const LEGACY_VIDEO_CODECS: Record<number, VideoCodec> = {
  2: 'h263',
  3: 'screen',
  4: 'vp6',
  5: 'vp6',
  6: 'screen',
  7: 'avc',
  12: 'hevc',
};

function fourccAt(buf: Buffer, off: number): string {
  return buf.toString('latin1', off, off + 4);
}

function videoCodecFromFourcc(fourcc: string): VideoCodec {
  switch (fourcc) {
    case 'avc1':
      return 'avc';
    case 'hvc1':
      return 'hevc';
    case 'av01':
      return 'av1';
    case 'vp09':
      return 'vp9';
    case 'vp08':
      return 'vp8';
    default:
      return 'unknown';
  }
}

function readSi24(buf: Buffer, off: number): number {
  const v = ((buf[off] ?? 0) << 16) | ((buf[off + 1] ?? 0) << 8) | (buf[off + 2] ?? 0);
  return v & 0x800000 ? v - 0x1000000 : v;
}

/**
 * Skips an Enhanced RTMP v2 ModEx chain starting at `off` (just after the
 * first byte). Returns the offset after the chain and the final packet type
 * packed as `offset * 16 + packetType`, or -1 when truncated. No allocation.
 */
function skipModEx(buf: Buffer, off: number): number {
  let pt = 7;
  // Each iteration consumes at least 2 bytes, so this terminates.
  while (pt === 7) {
    if (off >= buf.length) return -1;
    let size = (buf[off] ?? 0) + 1;
    off += 1;
    if (size === 256) {
      if (off + 2 > buf.length) return -1;
      size = buf.readUInt16BE(off) + 1;
      off += 2;
    }
    off += size;
    if (off >= buf.length) return -1;
    pt = (buf[off] ?? 0) & 0x0f;
    off += 1;
  }
  return off * 16 + pt;
}

/** Enhanced tags only: the effective VideoPacketType (after ModEx / Multitrack); -1 for legacy or truncated tags. */
function videoPacketTypeFast(payload: Buffer): number {
  const b0 = payload[0];
  if (b0 === undefined) return -1;
  if (b0 & 0x80) {
    let pt = b0 & 0x0f;
    let off = 1;
    if (pt === 7) {
      const r = skipModEx(payload, off);
      if (r < 0) return -1;
      pt = r & 0x0f;
      off = (r - pt) / 16;
    }
    if (pt === VideoPacketType.Multitrack) {
      const b = payload[off];
      if (b === undefined) return -1;
      pt = b & 0x0f;
    }
    return pt;
  }
  return -1;
}

/**
 * Hot path: is this video payload a keyframe carrying coded data
 * (frame type 1, not a sequence header / end / metadata / command)?
 * A couple of byte reads, no allocation.
 */
export function isVideoKeyframe(payload: Buffer): boolean {
  const b0 = payload[0];
  if (b0 === undefined) return false;
  if (b0 & 0x80) {
    if (((b0 >>> 4) & 0x07) !== 1) return false;
    const pt = videoPacketTypeFast(payload);
    return pt === VideoPacketType.CodedFrames || pt === VideoPacketType.CodedFramesX;
  }
  if (b0 >>> 4 !== 1) return false;
  const codecId = b0 & 0x0f;
  if (codecId === 7 || codecId === 12) return payload[1] === 1;
  return true;
}

/**
 * Hot path: is this video payload a decoder configuration (legacy AVC/HEVC
 * sequence header, enhanced SequenceStart / MPEG2TSSequenceStart)?
 */
export function isVideoSequenceHeader(payload: Buffer): boolean {
  const b0 = payload[0];
  if (b0 === undefined) return false;
  if (b0 & 0x80) {
    // A command frame (frame type 5) carries no sequence start.
    const pt = videoPacketTypeFast(payload);
    if (((b0 >>> 4) & 0x07) === 5 && pt !== VideoPacketType.Metadata) return false;
    return pt === VideoPacketType.SequenceStart || pt === VideoPacketType.MPEG2TSSequenceStart;
  }
  const codecId = b0 & 0x0f;
  return (codecId === 7 || codecId === 12) && payload[1] === 0 && b0 >>> 4 !== 5;
}

/** Full classification of a video tag payload. */
export function classifyVideoTag(payload: Buffer): VideoTagInfo | CodecConfigError {
  const b0 = payload[0];
  if (b0 === undefined) return cfgErr('empty video payload');
  if (!(b0 & 0x80)) {
    const frameType = b0 >>> 4;
    const codecId = b0 & 0x0f;
    if (frameType < 1 || frameType > 5) return cfgErr(`invalid video frame type ${frameType}`);
    const codec = LEGACY_VIDEO_CODECS[codecId] ?? 'unknown';
    const info: VideoTagInfo = {
      codec,
      enhanced: false,
      frameType,
      isKeyframe: false,
      isSequenceHeader: false,
      isEndOfSequence: false,
      compositionTime: 0,
      dataOffset: 1,
      dataLength: payload.length - 1,
    };
    if (codec === 'avc' || codec === 'hevc') {
      if (payload.length < 5) {
        // A command frame may omit the packet type / composition time.
        if (frameType === 5) return info;
        return cfgErr(`truncated ${codec} video tag (${payload.length} bytes)`);
      }
      const pt = payload[1] ?? 0;
      if (pt > 2) return cfgErr(`invalid ${codec} packet type ${pt}`);
      info.packetType = pt;
      info.compositionTime = readSi24(payload, 2);
      info.dataOffset = 5;
      info.dataLength = payload.length - 5;
      if (frameType !== 5) {
        info.isSequenceHeader = pt === 0;
        info.isEndOfSequence = pt === 2;
        info.isKeyframe = pt === 1 && frameType === 1;
      }
      return info;
    }
    info.isKeyframe = frameType === 1;
    return info;
  }

  // Enhanced RTMP.
  const frameType = (b0 >>> 4) & 0x07;
  if (frameType < 1 || frameType > 5) return cfgErr(`invalid enhanced video frame type ${frameType}`);
  let pt = b0 & 0x0f;
  let off = 1;
  if (pt === VideoPacketType.ModEx) {
    const r = skipModEx(payload, off);
    if (r < 0) return cfgErr('truncated video ModEx');
    pt = r & 0x0f;
    off = (r - pt) / 16;
  }
  const info: VideoTagInfo = {
    codec: 'unknown',
    enhanced: true,
    frameType,
    isKeyframe: false,
    isSequenceHeader: false,
    isEndOfSequence: false,
    compositionTime: 0,
    dataOffset: off,
    dataLength: payload.length - off,
  };
  if (pt !== VideoPacketType.Metadata && frameType === 5) {
    // Command frame: a single VideoCommand byte, no FourCC.
    if (off >= payload.length) return cfgErr('truncated video command');
    return info;
  }
  let multitrackType = -1;
  if (pt === VideoPacketType.Multitrack) {
    const b = payload[off];
    if (b === undefined) return cfgErr('truncated video multitrack header');
    multitrackType = b >>> 4;
    pt = b & 0x0f;
    off += 1;
    if (multitrackType > 2) return cfgErr(`invalid video multitrack type ${multitrackType}`);
    if (pt === VideoPacketType.Multitrack || pt === VideoPacketType.ModEx) {
      return cfgErr(`invalid nested video packet type ${pt}`);
    }
  }
  if (pt > 7) return cfgErr(`invalid video packet type ${pt}`);
  info.packetType = pt;
  if (multitrackType !== MULTITRACK_MANY_TRACKS_MANY_CODECS) {
    if (off + 4 > payload.length) return cfgErr('truncated video FourCC');
    info.fourcc = fourccAt(payload, off);
    off += 4;
  }
  let end = payload.length;
  if (multitrackType >= 0) {
    if (multitrackType === MULTITRACK_MANY_TRACKS_MANY_CODECS) {
      if (off + 4 > payload.length) return cfgErr('truncated video FourCC');
      info.fourcc = fourccAt(payload, off);
      off += 4;
    }
    if (off >= payload.length) return cfgErr('truncated video track id');
    info.trackId = payload[off] ?? 0;
    off += 1;
    if (multitrackType !== MULTITRACK_ONE_TRACK) {
      if (off + 3 > payload.length) return cfgErr('truncated video track size');
      const size = payload.readUIntBE(off, 3);
      off += 3;
      if (off + size > payload.length) return cfgErr('video track size exceeds payload');
      end = off + size;
    }
  }
  const fourcc = info.fourcc ?? '';
  info.codec = videoCodecFromFourcc(fourcc);
  if (pt === VideoPacketType.CodedFrames && (info.codec === 'avc' || info.codec === 'hevc')) {
    if (off + 3 > end) return cfgErr('truncated composition time');
    info.compositionTime = readSi24(payload, off);
    off += 3;
  }
  info.dataOffset = off;
  info.dataLength = end - off;
  info.isSequenceHeader = pt === VideoPacketType.SequenceStart || pt === VideoPacketType.MPEG2TSSequenceStart;
  info.isEndOfSequence = pt === VideoPacketType.SequenceEnd;
  info.isKeyframe = frameType === 1 && (pt === VideoPacketType.CodedFrames || pt === VideoPacketType.CodedFramesX);
  return info;
}

// ---------------------------------------------------------------------------
// Audio tag classification
// ---------------------------------------------------------------------------

export type AudioCodec =
  | 'aac'
  | 'mp3'
  | 'pcm'
  | 'speex'
  | 'nellymoser'
  | 'g711a'
  | 'g711u'
  | 'opus'
  | 'ac3'
  | 'eac3'
  | 'flac'
  | 'unknown';

export interface AudioTagInfo {
  codec: AudioCodec;
  isSequenceHeader: boolean;
  /** Hz. Legacy non-AAC: from the tag flags. AAC: from the AudioSpecificConfig on sequence headers, else absent. */
  soundRate?: number;
  /** Bits per sample (legacy non-AAC tags only). */
  soundSize?: number;
  /** Legacy non-AAC: from the tag flags. AAC: from the AudioSpecificConfig on sequence headers. */
  channels?: number;
  /** Enhanced RTMP (SoundFormat 9 ExHeader) tag. */
  enhanced: boolean;
  /** FourCC of an enhanced tag ('Opus', 'fLaC', 'ac-3', 'ec-3', 'mp4a', '.mp3'). */
  fourcc?: string;
  /** Legacy AAC packet type 0/1, or the enhanced AudioPacketType. Absent for other legacy codecs. */
  packetType?: number;
  /** Offset of the codec data (ASC / raw frame / ...) inside the payload. */
  dataOffset: number;
  /** Length of the codec data (for multitrack tags: the first track's). */
  dataLength: number;
  trackId?: number;
}

const LEGACY_AUDIO_CODECS: readonly AudioCodec[] = [
  'pcm', // 0 linear PCM, platform endian
  'unknown', // 1 ADPCM
  'mp3', // 2
  'pcm', // 3 linear PCM, little endian
  'nellymoser', // 4 16 kHz mono
  'nellymoser', // 5 8 kHz mono
  'nellymoser', // 6
  'g711a', // 7
  'g711u', // 8
  'unknown', // 9 reserved → ExHeader in Enhanced RTMP
  'aac', // 10
  'speex', // 11
  'unknown', // 12
  'unknown', // 13
  'mp3', // 14 MP3 8 kHz
  'unknown', // 15 device specific
];

const LEGACY_SOUND_RATES = [5512, 11025, 22050, 44100] as const;

function audioCodecFromFourcc(fourcc: string): AudioCodec {
  switch (fourcc) {
    case 'Opus':
      return 'opus';
    case 'fLaC':
      return 'flac';
    case 'ac-3':
      return 'ac3';
    case 'ec-3':
      return 'eac3';
    case 'mp4a':
      return 'aac';
    case '.mp3':
      return 'mp3';
    default:
      return 'unknown';
  }
}

/** Hot path: is this audio payload a decoder configuration (legacy AAC type 0, enhanced SequenceStart)? */
export function isAudioSequenceHeader(payload: Buffer): boolean {
  const b0 = payload[0];
  if (b0 === undefined) return false;
  const format = b0 >>> 4;
  if (format === 10) return payload[1] === 0;
  if (format !== 9) return false;
  let pt = b0 & 0x0f;
  let off = 1;
  if (pt === AudioPacketType.ModEx) {
    const r = skipModEx(payload, off);
    if (r < 0) return false;
    pt = r & 0x0f;
    off = (r - pt) / 16;
  }
  if (pt === AudioPacketType.Multitrack) {
    const b = payload[off];
    if (b === undefined) return false;
    pt = b & 0x0f;
  }
  return pt === AudioPacketType.SequenceStart;
}

/** Full classification of an audio tag payload. */
export function classifyAudioTag(payload: Buffer): AudioTagInfo | CodecConfigError {
  const b0 = payload[0];
  if (b0 === undefined) return cfgErr('empty audio payload');
  const format = b0 >>> 4;
  if (format !== 9) {
    const codec = LEGACY_AUDIO_CODECS[format] ?? 'unknown';
    const info: AudioTagInfo = {
      codec,
      isSequenceHeader: false,
      enhanced: false,
      dataOffset: 1,
      dataLength: payload.length - 1,
    };
    if (codec === 'aac') {
      if (payload.length < 2) return cfgErr('truncated AAC audio tag');
      const pt = payload[1] ?? 0;
      if (pt > 1) return cfgErr(`invalid AAC packet type ${pt}`);
      info.packetType = pt;
      info.dataOffset = 2;
      info.dataLength = payload.length - 2;
      if (pt === 0) {
        info.isSequenceHeader = true;
        const asc = parseAacAudioSpecificConfig(payload.subarray(2));
        if (asc instanceof CodecConfigError) return asc;
        info.soundRate = asc.sampleRate;
        info.channels = asc.channels;
      }
      return info;
    }
    info.soundRate = format === 5 || format === 14 ? 8000 : format === 4 ? 16000 : LEGACY_SOUND_RATES[(b0 >>> 2) & 3];
    info.soundSize = b0 & 0x02 ? 16 : 8;
    info.channels = b0 & 0x01 ? 2 : 1;
    return info;
  }

  // Enhanced RTMP audio.
  let pt = b0 & 0x0f;
  let off = 1;
  if (pt === AudioPacketType.ModEx) {
    const r = skipModEx(payload, off);
    if (r < 0) return cfgErr('truncated audio ModEx');
    pt = r & 0x0f;
    off = (r - pt) / 16;
  }
  const info: AudioTagInfo = {
    codec: 'unknown',
    isSequenceHeader: false,
    enhanced: true,
    dataOffset: off,
    dataLength: payload.length - off,
  };
  let multitrackType = -1;
  if (pt === AudioPacketType.Multitrack) {
    const b = payload[off];
    if (b === undefined) return cfgErr('truncated audio multitrack header');
    multitrackType = b >>> 4;
    pt = b & 0x0f;
    off += 1;
    if (multitrackType > 2) return cfgErr(`invalid audio multitrack type ${multitrackType}`);
    if (pt === AudioPacketType.Multitrack || pt === AudioPacketType.ModEx) {
      return cfgErr(`invalid nested audio packet type ${pt}`);
    }
  }
  if (pt === 3 || pt === 6 || pt > 7) return cfgErr(`invalid audio packet type ${pt}`);
  info.packetType = pt;
  if (multitrackType !== MULTITRACK_MANY_TRACKS_MANY_CODECS) {
    if (off + 4 > payload.length) return cfgErr('truncated audio FourCC');
    info.fourcc = fourccAt(payload, off);
    off += 4;
  }
  let end = payload.length;
  if (multitrackType >= 0) {
    if (multitrackType === MULTITRACK_MANY_TRACKS_MANY_CODECS) {
      if (off + 4 > payload.length) return cfgErr('truncated audio FourCC');
      info.fourcc = fourccAt(payload, off);
      off += 4;
    }
    if (off >= payload.length) return cfgErr('truncated audio track id');
    info.trackId = payload[off] ?? 0;
    off += 1;
    if (multitrackType !== MULTITRACK_ONE_TRACK) {
      if (off + 3 > payload.length) return cfgErr('truncated audio track size');
      const size = payload.readUIntBE(off, 3);
      off += 3;
      if (off + size > payload.length) return cfgErr('audio track size exceeds payload');
      end = off + size;
    }
  }
  info.codec = audioCodecFromFourcc(info.fourcc ?? '');
  info.dataOffset = off;
  info.dataLength = end - off;
  info.isSequenceHeader = pt === AudioPacketType.SequenceStart;
  if (info.isSequenceHeader && info.codec === 'aac') {
    const asc = parseAacAudioSpecificConfig(payload.subarray(off, end));
    if (asc instanceof CodecConfigError) return asc;
    info.soundRate = asc.sampleRate;
    info.channels = asc.channels;
  }
  return info;
}

// ---------------------------------------------------------------------------
// AVC
// ---------------------------------------------------------------------------

export interface AvcConfig {
  codec: 'avc';
  /** AVCProfileIndication (66 Baseline, 77 Main, 100 High, ...). */
  profile: number;
  profileName: string;
  /** AVCLevelIndication (e.g. 31 for level 3.1). */
  level: number;
  /** profile_compatibility (constraint_set flags). */
  compat: number;
  /** Display width/height from the first SPS, frame cropping applied. */
  width: number;
  height: number;
  /** 1, 2 or 4 (3 is tolerated). */
  nalLengthSize: number;
  chromaFormat: number;
  bitDepth: number;
  /** SPS/PPS NAL units (views into the record). */
  sps: Buffer[];
  pps: Buffer[];
}

export function avcProfileName(profile: number, compat = 0): string {
  switch (profile) {
    case 66:
      return compat & 0x40 ? 'Constrained Baseline' : 'Baseline';
    case 77:
      return 'Main';
    case 88:
      return 'Extended';
    case 100:
      return 'High';
    case 110:
      return compat & 0x10 ? 'High 10 Intra' : 'High 10';
    case 122:
      return compat & 0x10 ? 'High 4:2:2 Intra' : 'High 4:2:2';
    case 244:
      return compat & 0x10 ? 'High 4:4:4 Intra' : 'High 4:4:4 Predictive';
    case 44:
      return 'CAVLC 4:4:4 Intra';
    case 83:
      return 'Scalable Baseline';
    case 86:
      return 'Scalable High';
    case 118:
      return 'Multiview High';
    case 128:
      return 'Stereo High';
    case 144:
      return 'High 4:4:4';
    default:
      return `Unknown (${profile})`;
  }
}

const AVC_HIGH_PROFILES = new Set([100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135, 144]);

export interface AvcSpsInfo {
  profile: number;
  compat: number;
  level: number;
  chromaFormat: number;
  bitDepth: number;
  width: number;
  height: number;
  frameMbsOnly: boolean;
}

/** Parses an H.264 SPS NAL unit (with its 1-byte NAL header) for the fields needed to size the picture. */
export function parseAvcSps(nal: Buffer): AvcSpsInfo | CodecConfigError {
  if (nal.length < 4) return cfgErr('truncated AVC SPS');
  if (((nal[0] ?? 0) & 0x1f) !== 7) return cfgErr(`not an AVC SPS (NAL type ${(nal[0] ?? 0) & 0x1f})`);
  const r = new BitReader(unescapeRbsp(nal), 1);
  const profile = r.readBits(8);
  const compat = r.readBits(8);
  const level = r.readBits(8);
  const spsId = r.readUe();
  if (spsId > 31) return cfgErr(`invalid AVC seq_parameter_set_id ${spsId}`);
  let chromaFormat = 1;
  let separateColourPlane = 0;
  let bitDepth = 8;
  if (AVC_HIGH_PROFILES.has(profile)) {
    chromaFormat = r.readUe();
    if (chromaFormat > 3) return cfgErr(`invalid AVC chroma_format_idc ${chromaFormat}`);
    if (chromaFormat === 3) separateColourPlane = r.readBit();
    const bitDepthLuma = r.readUe() + 8;
    const bitDepthChroma = r.readUe() + 8;
    if (bitDepthLuma > 14 || bitDepthChroma > 14) return cfgErr('invalid AVC bit depth');
    bitDepth = bitDepthLuma;
    r.readBit(); // qpprime_y_zero_transform_bypass_flag
    if (r.readBit()) {
      // seq_scaling_matrix_present_flag
      const lists = chromaFormat !== 3 ? 8 : 12;
      for (let i = 0; i < lists; i++) {
        if (!r.readBit()) continue;
        const size = i < 6 ? 16 : 64;
        let last = 8;
        let next = 8;
        for (let j = 0; j < size; j++) {
          if (next !== 0) {
            const delta = r.readSe();
            if (delta < -128 || delta > 127) return cfgErr('invalid AVC scaling list delta');
            next = (last + delta + 256) % 256;
          }
          last = next === 0 ? last : next;
          if (!r.ok) return cfgErr('truncated AVC SPS (scaling list)');
        }
      }
    }
  }
  const log2MaxFrameNumMinus4 = r.readUe();
  if (log2MaxFrameNumMinus4 > 12) return cfgErr('invalid AVC log2_max_frame_num');
  const pocType = r.readUe();
  if (pocType === 0) {
    if (r.readUe() > 12) return cfgErr('invalid AVC log2_max_pic_order_cnt_lsb');
  } else if (pocType === 1) {
    r.readBit(); // delta_pic_order_always_zero_flag
    r.readSe(); // offset_for_non_ref_pic
    r.readSe(); // offset_for_top_to_bottom_field
    const cycle = r.readUe();
    if (cycle > 255) return cfgErr('invalid AVC num_ref_frames_in_pic_order_cnt_cycle');
    for (let i = 0; i < cycle; i++) {
      r.readSe();
      if (!r.ok) return cfgErr('truncated AVC SPS (poc cycle)');
    }
  } else if (pocType !== 2) {
    return cfgErr(`invalid AVC pic_order_cnt_type ${pocType}`);
  }
  r.readUe(); // max_num_ref_frames
  r.readBit(); // gaps_in_frame_num_value_allowed_flag
  const widthMbs = r.readUe() + 1;
  const heightMapUnits = r.readUe() + 1;
  const frameMbsOnly = r.readBit();
  if (!frameMbsOnly) r.readBit(); // mb_adaptive_frame_field_flag
  r.readBit(); // direct_8x8_inference_flag
  let cropLeft = 0;
  let cropRight = 0;
  let cropTop = 0;
  let cropBottom = 0;
  if (r.readBit()) {
    cropLeft = r.readUe();
    cropRight = r.readUe();
    cropTop = r.readUe();
    cropBottom = r.readUe();
  }
  if (!r.ok) return cfgErr('truncated or invalid AVC SPS');
  const chromaArrayType = separateColourPlane ? 0 : chromaFormat;
  let cropUnitX = 1;
  let cropUnitY = 2 - frameMbsOnly;
  if (chromaArrayType !== 0) {
    const subWidthC = chromaFormat === 3 ? 1 : 2;
    const subHeightC = chromaFormat === 1 ? 2 : 1;
    cropUnitX = subWidthC;
    cropUnitY = subHeightC * (2 - frameMbsOnly);
  }
  const width = widthMbs * 16 - cropUnitX * (cropLeft + cropRight);
  const height = (2 - frameMbsOnly) * heightMapUnits * 16 - cropUnitY * (cropTop + cropBottom);
  if (widthMbs > 65536 || heightMapUnits > 65536) return cfgErr('AVC picture size too large');
  if (width <= 0 || height <= 0) return cfgErr(`invalid AVC picture size ${width}x${height}`);
  return { profile, compat, level, chromaFormat, bitDepth, width, height, frameMbsOnly: frameMbsOnly === 1 };
}

/** Parses an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1). */
export function parseAvcDecoderConfig(record: Buffer): AvcConfig | CodecConfigError {
  if (record.length < 7) return cfgErr(`truncated AVCDecoderConfigurationRecord (${record.length} bytes)`);
  const version = record[0] ?? 0;
  if (version !== 1) return cfgErr(`unsupported AVCDecoderConfigurationRecord version ${version}`);
  const profile = record[1] ?? 0;
  const compat = record[2] ?? 0;
  const level = record[3] ?? 0;
  const nalLengthSize = ((record[4] ?? 0) & 0x03) + 1;
  const numSps = (record[5] ?? 0) & 0x1f;
  let off = 6;
  const sps: Buffer[] = [];
  for (let i = 0; i < numSps; i++) {
    if (off + 2 > record.length) return cfgErr('truncated AVC SPS length');
    const len = record.readUInt16BE(off);
    off += 2;
    if (len === 0 || off + len > record.length) return cfgErr('truncated AVC SPS');
    sps.push(record.subarray(off, off + len));
    off += len;
  }
  if (off >= record.length) return cfgErr('truncated AVC PPS count');
  const numPps = record[off] ?? 0;
  off += 1;
  const pps: Buffer[] = [];
  for (let i = 0; i < numPps; i++) {
    if (off + 2 > record.length) return cfgErr('truncated AVC PPS length');
    const len = record.readUInt16BE(off);
    off += 2;
    if (len === 0 || off + len > record.length) return cfgErr('truncated AVC PPS');
    pps.push(record.subarray(off, off + len));
    off += len;
  }
  // High-profile records may carry chroma_format / bit depth / SPS-ext (the
  // first three bytes have their reserved bits set). Many encoders omit it, and
  // some append unrelated bytes: only a trailer that looks like the extension
  // (reserved bits set) is checked for completeness; anything else is ignored.
  if (off < record.length && AVC_HIGH_PROFILES.has(profile) && ((record[off] ?? 0) & 0xfc) === 0xfc) {
    if (off + 4 > record.length) return cfgErr('truncated AVC record extension');
    if (((record[off + 1] ?? 0) & 0xf8) !== 0xf8 || ((record[off + 2] ?? 0) & 0xf8) !== 0xf8) {
      return cfgErr('invalid AVC record extension');
    }
    const numSpsExt = record[off + 3] ?? 0;
    off += 4;
    for (let i = 0; i < numSpsExt; i++) {
      if (off + 2 > record.length) return cfgErr('truncated AVC SPS extension length');
      const len = record.readUInt16BE(off);
      off += 2;
      if (off + len > record.length) return cfgErr('truncated AVC SPS extension');
      off += len;
    }
  }
  const first = sps[0];
  if (first === undefined) return cfgErr('AVCDecoderConfigurationRecord has no SPS');
  if (pps.length === 0) return cfgErr('AVCDecoderConfigurationRecord has no PPS');
  const info = parseAvcSps(first);
  if (info instanceof CodecConfigError) return info;
  return {
    codec: 'avc',
    profile,
    profileName: avcProfileName(profile, compat),
    level,
    compat,
    width: info.width,
    height: info.height,
    nalLengthSize,
    chromaFormat: info.chromaFormat,
    bitDepth: info.bitDepth,
    sps,
    pps,
  };
}

// ---------------------------------------------------------------------------
// HEVC
// ---------------------------------------------------------------------------

export interface HevcConfig {
  codec: 'hevc';
  /** general_profile_idc (1 Main, 2 Main 10, 3 Main Still Picture, 4 RExt, ...). */
  profile: number;
  /** general_tier_flag (0 Main, 1 High). */
  tier: number;
  /** general_level_idc (30 × level, e.g. 93 for 3.1). */
  level: number;
  /** Display size from the first SPS, conformance window applied. */
  width: number;
  height: number;
  nalLengthSize: number;
  chromaFormat: number;
  bitDepth: number;
  vps: Buffer[];
  sps: Buffer[];
  pps: Buffer[];
}

export interface HevcSpsInfo {
  profile: number;
  tier: number;
  level: number;
  chromaFormat: number;
  bitDepth: number;
  width: number;
  height: number;
}

/** Parses an H.265 SPS NAL unit (with its 2-byte NAL header) up to the picture size and bit depth. */
export function parseHevcSps(nal: Buffer): HevcSpsInfo | CodecConfigError {
  if (nal.length < 4) return cfgErr('truncated HEVC SPS');
  const nalType = ((nal[0] ?? 0) >>> 1) & 0x3f;
  if (nalType !== 33) return cfgErr(`not an HEVC SPS (NAL type ${nalType})`);
  const r = new BitReader(unescapeRbsp(nal), 2);
  r.readBits(4); // sps_video_parameter_set_id
  const maxSubLayersMinus1 = r.readBits(3);
  if (maxSubLayersMinus1 > 6) return cfgErr('invalid HEVC sps_max_sub_layers_minus1');
  r.readBit(); // sps_temporal_id_nesting_flag
  // profile_tier_level(1, maxSubLayersMinus1)
  r.readBits(2); // general_profile_space
  const tier = r.readBit();
  const profile = r.readBits(5);
  r.skipBits(32); // general_profile_compatibility_flags
  r.skipBits(48); // progressive/interlaced/non-packed/frame-only + 43 + 1 bits
  const level = r.readBits(8);
  const subProfilePresent: number[] = [];
  const subLevelPresent: number[] = [];
  for (let i = 0; i < maxSubLayersMinus1; i++) {
    subProfilePresent.push(r.readBit());
    subLevelPresent.push(r.readBit());
  }
  if (maxSubLayersMinus1 > 0) for (let i = maxSubLayersMinus1; i < 8; i++) r.skipBits(2);
  for (let i = 0; i < maxSubLayersMinus1; i++) {
    if (subProfilePresent[i]) r.skipBits(88);
    if (subLevelPresent[i]) r.skipBits(8);
  }
  const spsId = r.readUe();
  if (spsId > 15) return cfgErr(`invalid HEVC sps_seq_parameter_set_id ${spsId}`);
  const chromaFormat = r.readUe();
  if (chromaFormat > 3) return cfgErr(`invalid HEVC chroma_format_idc ${chromaFormat}`);
  let separateColourPlane = 0;
  if (chromaFormat === 3) separateColourPlane = r.readBit();
  const picWidth = r.readUe();
  const picHeight = r.readUe();
  let confLeft = 0;
  let confRight = 0;
  let confTop = 0;
  let confBottom = 0;
  if (r.readBit()) {
    confLeft = r.readUe();
    confRight = r.readUe();
    confTop = r.readUe();
    confBottom = r.readUe();
  }
  const bitDepth = r.readUe() + 8;
  r.readUe(); // bit_depth_chroma_minus8
  if (!r.ok) return cfgErr('truncated or invalid HEVC SPS');
  if (bitDepth > 16) return cfgErr('invalid HEVC bit depth');
  const chromaArrayType = separateColourPlane ? 0 : chromaFormat;
  const subWidthC = chromaArrayType === 1 || chromaArrayType === 2 ? 2 : 1;
  const subHeightC = chromaArrayType === 1 ? 2 : 1;
  const width = picWidth - subWidthC * (confLeft + confRight);
  const height = picHeight - subHeightC * (confTop + confBottom);
  if (picWidth > 65536 || picHeight > 65536) return cfgErr('HEVC picture size too large');
  if (width <= 0 || height <= 0) return cfgErr(`invalid HEVC picture size ${width}x${height}`);
  return { profile, tier, level, chromaFormat, bitDepth, width, height };
}

/** Parses an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1). */
export function parseHevcDecoderConfig(record: Buffer): HevcConfig | CodecConfigError {
  if (record.length < 23) return cfgErr(`truncated HEVCDecoderConfigurationRecord (${record.length} bytes)`);
  const version = record[0] ?? 0;
  if (version !== 1) return cfgErr(`unsupported HEVCDecoderConfigurationRecord version ${version}`);
  const b1 = record[1] ?? 0;
  const tier = (b1 >>> 5) & 1;
  const profile = b1 & 0x1f;
  const level = record[12] ?? 0;
  const nalLengthSize = ((record[21] ?? 0) & 0x03) + 1;
  const numArrays = record[22] ?? 0;
  let off = 23;
  const vps: Buffer[] = [];
  const sps: Buffer[] = [];
  const pps: Buffer[] = [];
  for (let a = 0; a < numArrays; a++) {
    if (off + 3 > record.length) return cfgErr('truncated HEVC NAL array header');
    const nalType = (record[off] ?? 0) & 0x3f;
    const count = record.readUInt16BE(off + 1);
    off += 3;
    for (let i = 0; i < count; i++) {
      if (off + 2 > record.length) return cfgErr('truncated HEVC NAL unit length');
      const len = record.readUInt16BE(off);
      off += 2;
      if (len === 0 || off + len > record.length) return cfgErr('truncated HEVC NAL unit');
      const nal = record.subarray(off, off + len);
      off += len;
      if (nalType === 32) vps.push(nal);
      else if (nalType === 33) sps.push(nal);
      else if (nalType === 34) pps.push(nal);
    }
  }
  const first = sps[0];
  if (first === undefined) return cfgErr('HEVCDecoderConfigurationRecord has no SPS');
  if (vps.length === 0) return cfgErr('HEVCDecoderConfigurationRecord has no VPS');
  if (pps.length === 0) return cfgErr('HEVCDecoderConfigurationRecord has no PPS');
  const info = parseHevcSps(first);
  if (info instanceof CodecConfigError) return info;
  return {
    codec: 'hevc',
    profile,
    tier,
    level,
    width: info.width,
    height: info.height,
    nalLengthSize,
    chromaFormat: info.chromaFormat,
    bitDepth: info.bitDepth,
    vps,
    sps,
    pps,
  };
}

// ---------------------------------------------------------------------------
// AAC
// ---------------------------------------------------------------------------

export interface AacConfig {
  /**
   * Audio object type (2 = AAC LC). For explicitly signalled HE-AAC
   * (ASC starting with object type 5 or 29) this is the underlying core
   * type (normally 2) and `sbr` / `ps` are set; they are also set for
   * backward-compatible signalling (sync extension with sbrPresentFlag).
   */
  objectType: number;
  /** Core sampling rate in Hz. */
  sampleRate: number;
  /** 0..12, or 15 when the rate is explicit. */
  samplingFrequencyIndex: number;
  /** Number of channels (channelConfiguration mapped; 0 = defined by a PCE). */
  channels: number;
  channelConfiguration: number;
  sbr?: boolean;
  ps?: boolean;
  /** Output (SBR) sampling rate for explicit HE-AAC. */
  extensionSampleRate?: number;
}

export const AAC_SAMPLE_RATES: readonly number[] = [
  96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

const AAC_CHANNELS = [0, 1, 2, 3, 4, 5, 6, 8, -1, -1, -1, 7, 8, -1, 8, -1] as const;

function readAot(r: BitReader): number {
  const aot = r.readBits(5);
  return aot === 31 ? 32 + r.readBits(6) : aot;
}

function readAacRate(r: BitReader): { index: number; rate: number } {
  const index = r.readBits(4);
  if (index === 0x0f) return { index, rate: r.readBits(24) };
  return { index, rate: AAC_SAMPLE_RATES[index] ?? 0 };
}

/** Audio object types that use GASpecificConfig. */
const AAC_GA_TYPES = new Set([1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23]);

/**
 * Parses an MPEG-4 AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1): object type
 * (incl. the 31 escape), sampling frequency (incl. explicit 0xF), channel
 * configuration, explicit SBR/PS signalling, GASpecificConfig and the
 * backward-compatible SBR/PS sync extension (0x2B7 / 0x548). Program config
 * elements (channelConfiguration 0) are not parsed.
 */
export function parseAacAudioSpecificConfig(asc: Buffer): AacConfig | CodecConfigError {
  if (asc.length < 2) return cfgErr(`truncated AudioSpecificConfig (${asc.length} bytes)`);
  const r = new BitReader(asc);
  let objectType = readAot(r);
  const { index, rate } = readAacRate(r);
  const channelConfiguration = r.readBits(4);
  let sbr = false;
  let ps = false;
  let extensionSampleRate: number | undefined;
  const explicitSbr = objectType === 5 || objectType === 29;
  if (explicitSbr) {
    sbr = true;
    ps = objectType === 29;
    const ext = readAacRate(r);
    if (ext.rate === 0) return cfgErr(`invalid AAC extension sampling frequency index ${ext.index}`);
    extensionSampleRate = ext.rate;
    objectType = readAot(r);
    if (objectType === 22) r.skipBits(4); // extensionChannelConfiguration
  }
  if (!r.ok) return cfgErr('truncated AudioSpecificConfig');
  if (objectType === 0) return cfgErr('invalid AAC audio object type 0');
  if (rate === 0) return cfgErr(`invalid AAC sampling frequency (index ${index})`);
  const channels = AAC_CHANNELS[channelConfiguration] ?? -1;
  if (channels < 0) return cfgErr(`reserved AAC channel configuration ${channelConfiguration}`);
  if (AAC_GA_TYPES.has(objectType) && channelConfiguration !== 0) {
    // GASpecificConfig
    r.readBit(); // frameLengthFlag
    if (r.readBit()) r.skipBits(14); // dependsOnCoreCoder → coreCoderDelay
    const extensionFlag = r.readBit();
    if (objectType === 6 || objectType === 20) r.skipBits(3); // layerNr
    if (extensionFlag) {
      if (objectType === 22) r.skipBits(16); // numOfSubFrame, layer_length
      if (objectType === 17 || objectType === 19 || objectType === 20 || objectType === 23) r.skipBits(3);
      r.readBit(); // extensionFlag3
    }
    if (!r.ok) return cfgErr('truncated AudioSpecificConfig (GASpecificConfig)');
    // Backward-compatible (implicit in-band) SBR / PS signalling.
    if (!explicitSbr && r.bitsLeft >= 16 && r.peekBits(11) === 0x2b7) {
      r.skipBits(11);
      const extType = readAot(r);
      if (extType === 5) {
        if (r.readBit()) {
          sbr = true;
          const ext = readAacRate(r);
          if (!r.ok) return cfgErr('truncated AudioSpecificConfig (SBR extension)');
          if (ext.rate === 0) return cfgErr(`invalid AAC extension sampling frequency index ${ext.index}`);
          extensionSampleRate = ext.rate;
          if (r.bitsLeft >= 12 && r.peekBits(11) === 0x548) {
            r.skipBits(11);
            ps = r.readBit() === 1;
          }
        }
      }
      if (!r.ok) return cfgErr('truncated AudioSpecificConfig (sync extension)');
    }
  }
  const cfg: AacConfig = { objectType, sampleRate: rate, samplingFrequencyIndex: index, channels, channelConfiguration };
  if (sbr) {
    cfg.sbr = true;
    cfg.ps = ps;
    if (extensionSampleRate !== undefined) cfg.extensionSampleRate = extensionSampleRate;
  }
  return cfg;
}

// ---------------------------------------------------------------------------
// Convenience
// ---------------------------------------------------------------------------

/**
 * Given a video sequence-header payload (legacy AVC/HEVC or Enhanced RTMP
 * 'avc1' / 'hvc1' SequenceStart) returns the parsed decoder configuration.
 * Returns `undefined` when the payload is not an AVC/HEVC sequence header
 * (including AV1/VP9 sequence starts, which are not parsed), and a
 * CodecConfigError when it is one but malformed. Discriminate with `.codec`.
 */
export function videoSequenceConfig(payload: Buffer): AvcConfig | HevcConfig | CodecConfigError | undefined {
  const info = classifyVideoTag(payload);
  if (info instanceof CodecConfigError) return info;
  if (!info.isSequenceHeader) return undefined;
  if (info.enhanced && videoPacketTypeFast(payload) === VideoPacketType.MPEG2TSSequenceStart) return undefined;
  const body = payload.subarray(info.dataOffset, info.dataOffset + info.dataLength);
  if (info.codec === 'avc') return parseAvcDecoderConfig(body);
  if (info.codec === 'hevc') return parseHevcDecoderConfig(body);
  return undefined;
}

/**
 * Given an audio sequence-header payload (legacy AAC or Enhanced RTMP
 * 'mp4a' SequenceStart) returns the parsed AudioSpecificConfig; `undefined`
 * for anything else.
 */
export function audioSequenceConfig(payload: Buffer): AacConfig | CodecConfigError | undefined {
  const info = classifyAudioTag(payload);
  if (info instanceof CodecConfigError) return info;
  if (!info.isSequenceHeader || info.codec !== 'aac') return undefined;
  return parseAacAudioSpecificConfig(payload.subarray(info.dataOffset, info.dataOffset + info.dataLength));
}
