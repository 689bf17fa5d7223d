import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { CodecConfigError } from '../src/errors.ts';
import { FlvDecoder, FlvTagType, type FlvTag } from '../src/flv.ts';
import {
  BitReader,
  classifyAudioTag,
  classifyVideoTag,
  isAudioSequenceHeader,
  isVideoKeyframe,
  isVideoSequenceHeader,
  parseAacAudioSpecificConfig,
  parseAvcDecoderConfig,
  parseAvcSps,
  parseHevcDecoderConfig,
  parseHevcSps,
  unescapeRbsp,
  videoSequenceConfig,
  audioSequenceConfig,
  type AudioTagInfo,
  type VideoTagInfo,
} from '../src/codec.ts';

const FIXTURES = fileURLToPath(new URL('../../tests/fixtures/flv/', import.meta.url));

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/** MSB-first bit writer with exp-golomb, the reference for BitReader. */
class BitWriter {
  private bits: number[] = [];
  u(n: number, v: number): this {
    for (let i = n - 1; i >= 0; i--) this.bits.push(Math.floor(v / 2 ** i) % 2);
    return this;
  }
  ue(v: number): this {
    const x = v + 1;
    const len = Math.floor(Math.log2(x)) + 1;
    // Guard against floating-point log2 error near powers of two.
    const n = 2 ** (len - 1) > x ? len - 1 : 2 ** len <= x ? len + 1 : len;
    this.u(n - 1, 0);
    return this.u(n, x);
  }
  se(v: number): this {
    return this.ue(v > 0 ? 2 * v - 1 : -2 * v);
  }
  get length(): number {
    return this.bits.length;
  }
  /** Pads with zero bits (optionally after an RBSP stop bit) to a whole byte. */
  toBuffer(stopBit = false): Buffer {
    const bits = [...this.bits];
    if (stopBit) bits.push(1);
    while (bits.length % 8) bits.push(0);
    const out = Buffer.alloc(bits.length / 8);
    for (let i = 0; i < bits.length; i++) if (bits[i]) out[i >>> 3]! |= 0x80 >>> (i & 7);
    return out;
  }
}

/** Inserts emulation-prevention bytes (00 00 0x → 00 00 03 0x for x ≤ 3, and a trailing 00 00 → 00 00 03). */
function escapeRbsp(rbsp: Buffer): Buffer {
  const out: number[] = [];
  let zeros = 0;
  for (const b of rbsp) {
    if (zeros >= 2 && b <= 3) {
      out.push(3);
      zeros = 0;
    }
    out.push(b);
    zeros = b === 0 ? zeros + 1 : 0;
  }
  if (zeros >= 2) out.push(3);
  return Buffer.from(out);
}

function flvTags(name: string): FlvTag[] {
  const r = new FlvDecoder().push(readFileSync(FIXTURES + name));
  assert.ok(Array.isArray(r), 'fixture decodes');
  return r;
}

function probeStreams(name: string): Array<Record<string, string | number>> {
  const out = execFileSync(
    'ffprobe',
    ['-v', 'error', '-show_entries', 'stream=codec_type,codec_name,profile,level,width,height,sample_rate,channels', '-of', 'json', FIXTURES + name],
    { encoding: 'utf8' },
  );
  return (JSON.parse(out) as { streams: Array<Record<string, string | number>> }).streams;
}

/** The hvcC box payload (HEVCDecoderConfigurationRecord) of a single-track mp4. */
function hvcCFromMp4(name: string): Buffer {
  const mp4 = readFileSync(FIXTURES + name);
  const at = mp4.indexOf('hvcC', 0, 'latin1');
  assert.ok(at > 4, 'hvcC box present');
  const size = mp4.readUInt32BE(at - 4);
  return mp4.subarray(at + 4, at - 4 + size);
}

function ok<T>(v: T | CodecConfigError): T {
  if (v instanceof CodecConfigError) assert.fail(`unexpected CodecConfigError: ${v.message}`);
  return v;
}

function isErr(v: unknown): v is CodecConfigError {
  return v instanceof CodecConfigError && v.code === 'CODEC_CONFIG';
}

const seqHeader = (tags: FlvTag[], type: number): Buffer => {
  const t = tags.find((x) => x.type === type && (type === FlvTagType.VIDEO ? isVideoSequenceHeader(x.payload) : isAudioSequenceHeader(x.payload)));
  assert.ok(t, 'sequence header present');
  return t.payload;
};

const FOURCC = (s: string): Buffer => Buffer.from(s, 'latin1');
const u24 = (v: number): Buffer => Buffer.from([(v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff]);
const si24 = (v: number): Buffer => u24(v < 0 ? v + 0x1000000 : v);
const exVideo = (frameType: number, packetType: number, ...rest: Buffer[]): Buffer =>
  Buffer.concat([Buffer.from([0x80 | (frameType << 4) | packetType]), ...rest]);
const exAudio = (packetType: number, ...rest: Buffer[]): Buffer => Buffer.concat([Buffer.from([0x90 | packetType]), ...rest]);

const AVC_FIXTURES = [
  { file: 'h264_aac_320x240.flv', width: 320, height: 240, rate: 44100, channels: 2 },
  { file: 'h264_aac_1280x720_mono48k.flv', width: 1280, height: 720, rate: 48000, channels: 1 },
  { file: 'h264_1920x1080_noaudio.flv', width: 1920, height: 1080 },
];
const HEVC_FIXTURES = [
  { file: 'hevc_426x240.mp4', width: 426, height: 240, profile: 1, profileName: 'Main', bitDepth: 8 },
  { file: 'hevc_main10_320x240.mp4', width: 320, height: 240, profile: 2, profileName: 'Main 10', bitDepth: 10 },
];

// ---------------------------------------------------------------------------
// fixtures: AVC / AAC / HEVC configs vs ffprobe
// ---------------------------------------------------------------------------

for (const f of AVC_FIXTURES) {
  test(`parseAvcDecoderConfig: ${f.file} is High profile ${f.width}x${f.height} like ffprobe says`, () => {
    const tags = flvTags(f.file);
    const payload = seqHeader(tags, FlvTagType.VIDEO);
    const cfg = ok(parseAvcDecoderConfig(payload.subarray(5)));
    const video = probeStreams(f.file).find((s) => s['codec_type'] === 'video')!;
    assert.equal(cfg.codec, 'avc');
    assert.equal(cfg.profile, 100);
    assert.equal(cfg.profileName, 'High');
    assert.equal(cfg.profileName, video['profile']);
    assert.equal(cfg.level, video['level']);
    assert.equal(cfg.width, f.width);
    assert.equal(cfg.height, f.height);
    assert.equal(cfg.width, video['width']);
    assert.equal(cfg.height, video['height']);
    assert.equal(cfg.nalLengthSize, 4);
    assert.equal(cfg.chromaFormat, 1);
    assert.equal(cfg.bitDepth, 8);
    assert.equal(cfg.sps.length, 1);
    assert.equal(cfg.pps.length, 1);
    assert.equal(cfg.sps[0]![0]! & 0x1f, 7);
    assert.equal(cfg.pps[0]![0]! & 0x1f, 8);
    // Same result through the tag-level convenience.
    const viaTag = videoSequenceConfig(payload);
    assert.ok(viaTag && !(viaTag instanceof CodecConfigError) && viaTag.codec === 'avc');
    assert.equal(viaTag.width, f.width);
  });

  if (f.rate !== undefined) {
    test(`parseAacAudioSpecificConfig: ${f.file} is ${f.rate} Hz / ${f.channels} ch`, () => {
      const tags = flvTags(f.file);
      const payload = seqHeader(tags, FlvTagType.AUDIO);
      const asc = ok(parseAacAudioSpecificConfig(payload.subarray(2)));
      const audio = probeStreams(f.file).find((s) => s['codec_type'] === 'audio')!;
      assert.equal(asc.objectType, 2);
      assert.equal(asc.sampleRate, f.rate);
      assert.equal(asc.channels, f.channels);
      assert.equal(String(asc.sampleRate), audio['sample_rate']);
      assert.equal(asc.channels, audio['channels']);
      const info = ok(classifyAudioTag(payload));
      assert.equal(info.codec, 'aac');
      assert.equal(info.isSequenceHeader, true);
      assert.equal(info.soundRate, f.rate);
      assert.equal(info.channels, f.channels);
      const conv = ok(audioSequenceConfig(payload));
      assert.equal(conv?.sampleRate, f.rate);
    });
  }

  test(`classifyVideoTag / classifyAudioTag: every tag of ${f.file} agrees with ffprobe and the hot-path predicates`, () => {
    const tags = flvTags(f.file);
    const packets = (
      JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-show_packets', '-of', 'json', FIXTURES + f.file], { encoding: 'utf8' })) as {
        packets: Array<{ codec_type: string; pts: number; dts: number; flags: string }>;
      }
    ).packets;
    const videoPackets = packets.filter((p) => p.codec_type === 'video');
    const videoTags: VideoTagInfo[] = [];
    let ends = 0;
    let seq = 0;
    for (const t of tags) {
      if (t.type === FlvTagType.VIDEO) {
        const info = ok(classifyVideoTag(t.payload));
        assert.equal(info.codec, 'avc');
        assert.equal(info.enhanced, false);
        assert.equal(isVideoKeyframe(t.payload), info.isKeyframe);
        assert.equal(isVideoSequenceHeader(t.payload), info.isSequenceHeader);
        if (info.isSequenceHeader) seq++;
        else if (info.isEndOfSequence) ends++;
        else videoTags.push(info);
      } else if (t.type === FlvTagType.AUDIO) {
        const info = ok(classifyAudioTag(t.payload));
        assert.equal(info.codec, 'aac');
        assert.equal(isAudioSequenceHeader(t.payload), info.isSequenceHeader);
      }
    }
    assert.equal(seq, 1);
    assert.equal(ends, 1);
    assert.equal(videoTags.length, videoPackets.length);
    videoTags.forEach((info, i) => {
      const p = videoPackets[i]!;
      assert.equal(info.isKeyframe, p.flags.startsWith('K'), `frame ${i} keyframe`);
      assert.equal(info.compositionTime, p.pts - p.dts, `frame ${i} composition time`);
    });
    if (f.file === 'h264_aac_320x240.flv') assert.ok(videoTags.some((v) => v.compositionTime > 0), 'fixture has B-frames');
  });
}

for (const f of HEVC_FIXTURES) {
  test(`parseHevcDecoderConfig: hvcC of ${f.file} gives ${f.profileName} ${f.width}x${f.height} like ffprobe says`, () => {
    const record = hvcCFromMp4(f.file);
    const cfg = ok(parseHevcDecoderConfig(record));
    const video = probeStreams(f.file)[0]!;
    assert.equal(cfg.codec, 'hevc');
    assert.equal(cfg.profile, f.profile);
    assert.equal(video['profile'], f.profileName);
    assert.equal(cfg.tier, 0);
    assert.equal(cfg.level, video['level']);
    assert.equal(cfg.width, f.width);
    assert.equal(cfg.height, f.height);
    assert.equal(cfg.width, video['width']);
    assert.equal(cfg.height, video['height']);
    assert.equal(cfg.bitDepth, f.bitDepth);
    assert.equal(cfg.chromaFormat, 1);
    assert.equal(cfg.nalLengthSize, 4);
    assert.equal(cfg.vps.length, 1);
    assert.equal(cfg.sps.length, 1);
    assert.equal(cfg.pps.length, 1);
    assert.equal((cfg.vps[0]![0]! >>> 1) & 0x3f, 32);
    assert.equal((cfg.sps[0]![0]! >>> 1) & 0x3f, 33);
    assert.equal((cfg.pps[0]![0]! >>> 1) & 0x3f, 34);
  });
}

/** Header fields as ffmpeg's trace_headers bitstream filter prints them (an independent SPS parser). */
function traceHeaders(name: string): Map<string, number> {
  const r = spawnSync('ffmpeg', ['-hide_banner', '-nostdin', '-i', FIXTURES + name, '-map', '0:v', '-c', 'copy', '-bsf:v', 'trace_headers', '-f', 'null', '-'], {
    encoding: 'utf8',
  });
  const fields = new Map<string, number>();
  for (const m of r.stderr.matchAll(/\]\s+\d+\s+(\w+)\s+[01]+ = (-?\d+)/g)) if (!fields.has(m[1]!)) fields.set(m[1]!, Number(m[2]));
  return fields;
}

test('the 1920x1080 AVC fixture really is cropped from 1088 (checked with ffmpeg trace_headers)', () => {
  const t = traceHeaders('h264_1920x1080_noaudio.flv');
  assert.equal(t.get('frame_cropping_flag'), 1);
  assert.equal(t.get('frame_crop_bottom_offset'), 4);
  assert.equal(((t.get('pic_height_in_map_units_minus1') ?? 0) + 1) * 16, 1088);
  const payload = seqHeader(flvTags('h264_1920x1080_noaudio.flv'), FlvTagType.VIDEO);
  const cfg = ok(parseAvcDecoderConfig(payload.subarray(5)));
  assert.deepEqual([cfg.width, cfg.height], [1920, 1080]);
});

test('the 426x240 HEVC fixture really has a conformance window on 432 (checked with ffmpeg trace_headers)', () => {
  const t = traceHeaders('hevc_426x240.mp4');
  assert.equal(t.get('pic_width_in_luma_samples'), 432);
  assert.equal(t.get('conf_win_right_offset'), 3);
  const sps = ok(parseHevcDecoderConfig(hvcCFromMp4('hevc_426x240.mp4'))).sps[0]!;
  // Our BitReader agrees with the trace on the coded width.
  const r = new BitReader(unescapeRbsp(sps), 2);
  r.readBits(8); // vps id, max sub layers (0), nesting
  r.skipBits(96); // general profile_tier_level
  r.readUe();
  r.readUe();
  assert.equal(r.readUe(), 432);
  assert.equal(ok(parseHevcSps(sps)).width, 426);
});

// ---------------------------------------------------------------------------
// Enhanced RTMP video
// ---------------------------------------------------------------------------

test('Enhanced RTMP hvc1: SequenceStart / CodedFrames / CodedFramesX / SequenceEnd', () => {
  const hvcC = hvcCFromMp4('hevc_426x240.mp4');
  const seq = exVideo(1, 0, FOURCC('hvc1'), hvcC);
  const s = ok(classifyVideoTag(seq));
  assert.deepEqual(
    { codec: s.codec, enhanced: s.enhanced, fourcc: s.fourcc, frameType: s.frameType, key: s.isKeyframe, seq: s.isSequenceHeader, off: s.dataOffset, len: s.dataLength },
    { codec: 'hevc', enhanced: true, fourcc: 'hvc1', frameType: 1, key: false, seq: true, off: 5, len: hvcC.length },
  );
  assert.equal(isVideoSequenceHeader(seq), true);
  assert.equal(isVideoKeyframe(seq), false);
  const cfg = videoSequenceConfig(seq);
  assert.ok(cfg && !(cfg instanceof CodecConfigError) && cfg.codec === 'hevc');
  assert.equal(cfg.width, 426);

  const nal = Buffer.from([0, 0, 0, 3, 0x26, 0x01, 0xaf]);
  const key = exVideo(1, 1, FOURCC('hvc1'), si24(40), nal);
  const k = ok(classifyVideoTag(key));
  assert.equal(k.isKeyframe, true);
  assert.equal(k.isSequenceHeader, false);
  assert.equal(k.compositionTime, 40);
  assert.equal(k.dataOffset, 8);
  assert.ok(key.subarray(k.dataOffset).equals(nal));
  assert.equal(isVideoKeyframe(key), true);
  assert.equal(isVideoSequenceHeader(key), false);

  const neg = ok(classifyVideoTag(exVideo(2, 1, FOURCC('hvc1'), si24(-2), nal)));
  assert.equal(neg.compositionTime, -2);
  assert.equal(neg.isKeyframe, false);

  const keyX = exVideo(1, 3, FOURCC('hvc1'), nal);
  const kx = ok(classifyVideoTag(keyX));
  assert.equal(kx.isKeyframe, true);
  assert.equal(kx.compositionTime, 0);
  assert.equal(kx.dataOffset, 5);
  assert.equal(isVideoKeyframe(keyX), true);

  const interX = exVideo(2, 3, FOURCC('hvc1'), nal);
  assert.equal(ok(classifyVideoTag(interX)).isKeyframe, false);
  assert.equal(isVideoKeyframe(interX), false);

  const end = ok(classifyVideoTag(exVideo(1, 2, FOURCC('hvc1'))));
  assert.equal(end.isEndOfSequence, true);
  assert.equal(end.isKeyframe, false);
  assert.equal(end.isSequenceHeader, false);
});

test('Enhanced RTMP av01 and vp09 (no composition time), MPEG2TSSequenceStart', () => {
  const av1C = Buffer.from([0x81, 0x00, 0x0c, 0x00, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x24]);
  const seq = ok(classifyVideoTag(exVideo(1, 0, FOURCC('av01'), av1C)));
  assert.equal(seq.codec, 'av1');
  assert.equal(seq.fourcc, 'av01');
  assert.equal(seq.isSequenceHeader, true);
  assert.equal(videoSequenceConfig(exVideo(1, 0, FOURCC('av01'), av1C)), undefined);

  const obu = Buffer.from([0x12, 0x00, 0x0a, 0x0b]);
  const key = exVideo(1, 1, FOURCC('av01'), obu);
  const k = ok(classifyVideoTag(key));
  assert.equal(k.codec, 'av1');
  assert.equal(k.isKeyframe, true);
  assert.equal(k.compositionTime, 0);
  assert.equal(k.dataOffset, 5, 'AV1 CodedFrames carry no composition time');
  assert.equal(isVideoKeyframe(key), true);

  const ts = exVideo(1, 5, FOURCC('av01'), Buffer.from([0x80, 4, 0x81, 0, 0x0c, 0]));
  assert.equal(ok(classifyVideoTag(ts)).isSequenceHeader, true);
  assert.equal(isVideoSequenceHeader(ts), true);
  assert.equal(videoSequenceConfig(ts), undefined);

  const vpcC = Buffer.from([1, 0, 0, 0, 0, 0x1f, 0x80, 0x02, 0x02, 0x02, 0, 0]);
  const vseq = ok(classifyVideoTag(exVideo(1, 0, FOURCC('vp09'), vpcC)));
  assert.equal(vseq.codec, 'vp9');
  assert.equal(vseq.isSequenceHeader, true);
  const vinter = exVideo(2, 1, FOURCC('vp09'), Buffer.from([0x86, 0x00]));
  const vi = ok(classifyVideoTag(vinter));
  assert.equal(vi.codec, 'vp9');
  assert.equal(vi.isKeyframe, false);
  assert.equal(vi.frameType, 2);
  assert.equal(vi.dataOffset, 5);
  assert.equal(isVideoKeyframe(vinter), false);

  assert.equal(ok(classifyVideoTag(exVideo(3, 1, FOURCC('vp08'), Buffer.from([0])))).codec, 'vp8');
  assert.equal(ok(classifyVideoTag(exVideo(1, 1, FOURCC('xyzw'), Buffer.from([0])))).codec, 'unknown');
});

test('Enhanced RTMP avc1, Metadata, command frames', () => {
  const legacySeq = seqHeader(flvTags('h264_aac_320x240.flv'), FlvTagType.VIDEO);
  const avcC = legacySeq.subarray(5);
  const seq = exVideo(1, 0, FOURCC('avc1'), avcC);
  const cfg = videoSequenceConfig(seq);
  assert.ok(cfg && !(cfg instanceof CodecConfigError) && cfg.codec === 'avc');
  assert.equal(cfg.width, 320);
  const coded = ok(classifyVideoTag(exVideo(2, 1, FOURCC('avc1'), si24(80), Buffer.from([0, 0, 0, 1, 0x41]))));
  assert.equal(coded.codec, 'avc');
  assert.equal(coded.compositionTime, 80);
  assert.equal(coded.dataOffset, 8);

  const meta = exVideo(1, 4, FOURCC('hvc1'), Buffer.from([2, 0, 9, ...Buffer.from('colorInfo')]));
  const m = ok(classifyVideoTag(meta));
  assert.equal(m.codec, 'hevc');
  assert.equal(m.isKeyframe || m.isSequenceHeader || m.isEndOfSequence, false);
  assert.equal(isVideoKeyframe(meta), false);

  const cmd = exVideo(5, 0, Buffer.from([1]));
  const c = ok(classifyVideoTag(cmd));
  assert.equal(c.frameType, 5);
  assert.equal(c.fourcc, undefined);
  assert.equal(c.isSequenceHeader, false);
  assert.equal(isVideoSequenceHeader(cmd), false);
  assert.ok(isErr(classifyVideoTag(exVideo(5, 0))), 'command byte missing');
});

test('Enhanced RTMP v2 multitrack and ModEx video', () => {
  const nal = Buffer.from([0, 0, 0, 2, 0x26, 0x01]);
  // OneTrack, CodedFrames
  const one = exVideo(1, 6, Buffer.from([(0 << 4) | 1]), FOURCC('hvc1'), Buffer.from([7]), si24(33), nal);
  const o = ok(classifyVideoTag(one));
  assert.equal(o.codec, 'hevc');
  assert.equal(o.trackId, 7);
  assert.equal(o.compositionTime, 33);
  assert.equal(o.isKeyframe, true);
  assert.ok(one.subarray(o.dataOffset, o.dataOffset + o.dataLength).equals(nal));
  assert.equal(isVideoKeyframe(one), true);

  // ManyTracks, SequenceStart, two avc1 tracks with sizes
  const avcC = seqHeader(flvTags('h264_aac_320x240.flv'), FlvTagType.VIDEO).subarray(5);
  const many = exVideo(1, 6, Buffer.from([(1 << 4) | 0]), FOURCC('avc1'), Buffer.from([0]), u24(avcC.length), avcC, Buffer.from([1]), u24(avcC.length), avcC);
  const mt = ok(classifyVideoTag(many));
  assert.equal(mt.isSequenceHeader, true);
  assert.equal(mt.trackId, 0);
  assert.equal(mt.dataLength, avcC.length);
  assert.equal(isVideoSequenceHeader(many), true);
  const mcfg = videoSequenceConfig(many);
  assert.ok(mcfg && !(mcfg instanceof CodecConfigError));
  assert.equal(mcfg.height, 240);
  assert.ok(isErr(classifyVideoTag(exVideo(1, 6, Buffer.from([0x10]), FOURCC('avc1'), Buffer.from([0]), u24(999), avcC))), 'track size beyond payload');

  // ManyTracksManyCodecs, CodedFramesX: FourCC per track
  const mtmc = exVideo(2, 6, Buffer.from([(2 << 4) | 3]), FOURCC('av01'), Buffer.from([0]), u24(2), Buffer.from([0x32, 0]), FOURCC('vp09'), Buffer.from([1]), u24(1), Buffer.from([0]));
  const mc = ok(classifyVideoTag(mtmc));
  assert.equal(mc.codec, 'av1');
  assert.equal(mc.fourcc, 'av01');
  assert.equal(mc.dataLength, 2);

  // ModEx (TimestampOffsetNano, 3 bytes) wrapping CodedFrames
  const modex = exVideo(1, 7, Buffer.from([2, 0, 0x10, 0x00, (0 << 4) | 1]), FOURCC('hvc1'), si24(5), nal);
  const me = ok(classifyVideoTag(modex));
  assert.equal(me.isKeyframe, true);
  assert.equal(me.compositionTime, 5);
  assert.equal(me.codec, 'hevc');
  assert.equal(isVideoKeyframe(modex), true);
  // ModEx with a 256+ byte payload (UI8 255 → UI16 follows) wrapping SequenceStart
  const big = Buffer.alloc(300, 0xaa);
  const modexBig = exVideo(1, 7, Buffer.from([255]), Buffer.from([(300 - 1) >>> 8, (300 - 1) & 0xff]), big, Buffer.from([0x00]), FOURCC('hvc1'), hvcCFromMp4('hevc_426x240.mp4'));
  assert.equal(ok(classifyVideoTag(modexBig)).isSequenceHeader, true);
  assert.equal(isVideoSequenceHeader(modexBig), true);
  assert.ok(isErr(classifyVideoTag(exVideo(1, 7, Buffer.from([200, 0])))), 'truncated ModEx');
  assert.equal(isVideoKeyframe(exVideo(1, 7, Buffer.from([200, 0]))), false);
});

test('legacy video tags: AVC, HEVC (codec id 12), VP6, Sorenson, screen; errors', () => {
  const c = (bytes: number[]): VideoTagInfo => ok(classifyVideoTag(Buffer.from(bytes)));
  assert.equal(c([0x17, 0, 0, 0, 0, 1]).isSequenceHeader, true);
  const key = c([0x17, 1, 0, 0, 0x50, 0, 0, 0, 1, 0x65]);
  assert.equal(key.isKeyframe, true);
  assert.equal(key.compositionTime, 0x50);
  assert.equal(c([0x27, 1, 0xff, 0xff, 0xfe, 0]).compositionTime, -2);
  assert.equal(c([0x17, 2, 0, 0, 0]).isEndOfSequence, true);
  const h = c([0x1c, 1, 0, 0, 0, 0]);
  assert.equal(h.codec, 'hevc');
  assert.equal(h.isKeyframe, true);
  assert.equal(isVideoSequenceHeader(Buffer.from([0x1c, 0, 0, 0, 0])), true);
  assert.equal(c([0x14, 0]).codec, 'vp6');
  assert.equal(c([0x14, 0]).isKeyframe, true);
  assert.equal(c([0x25, 0]).codec, 'vp6');
  assert.equal(c([0x22, 0]).codec, 'h263');
  assert.equal(c([0x22, 0]).isKeyframe, false);
  assert.equal(c([0x33, 0]).codec, 'screen');
  assert.equal(c([0x33, 0]).frameType, 3);
  assert.equal(c([0x1d, 0]).codec, 'unknown');
  assert.equal(isVideoKeyframe(Buffer.from([0x14, 0])), true);
  assert.equal(c([0x57, 0]).frameType, 5);
  assert.ok(isErr(classifyVideoTag(Buffer.alloc(0))));
  assert.ok(isErr(classifyVideoTag(Buffer.from([0x07, 1, 0, 0, 0]))), 'frame type 0');
  assert.ok(isErr(classifyVideoTag(Buffer.from([0x17, 1, 0]))), 'truncated AVC header');
  assert.ok(isErr(classifyVideoTag(Buffer.from([0x17, 3, 0, 0, 0]))), 'bad AVC packet type');
  assert.ok(isErr(classifyVideoTag(Buffer.from([0x80 | 0x10 | 1, 0x68]))), 'truncated FourCC');
  assert.ok(isErr(classifyVideoTag(Buffer.from([0x80 | 0x60 | 1, 0, 0, 0, 0]))), 'enhanced frame type 6');
  assert.ok(isErr(classifyVideoTag(exVideo(1, 9, FOURCC('hvc1')))), 'packet type 9');
  assert.ok(isErr(classifyVideoTag(exVideo(1, 1, FOURCC('hvc1'), Buffer.from([0])))), 'truncated composition time');
  assert.equal(isVideoKeyframe(Buffer.alloc(0)), false);
  assert.equal(isVideoSequenceHeader(Buffer.alloc(0)), false);
});

// ---------------------------------------------------------------------------
// audio tags
// ---------------------------------------------------------------------------

test('legacy audio tags: flags and codecs', () => {
  const c = (bytes: number[]): AudioTagInfo => ok(classifyAudioTag(Buffer.from(bytes)));
  const mp3 = c([0x2f, 0xff, 0xfb]);
  assert.deepEqual([mp3.codec, mp3.soundRate, mp3.soundSize, mp3.channels, mp3.isSequenceHeader], ['mp3', 44100, 16, 2, false]);
  const low = c([0x22, 0]);
  assert.deepEqual([low.codec, low.soundRate, low.soundSize, low.channels], ['mp3', 5512, 16, 1]);
  assert.deepEqual([c([0x24, 0]).soundRate, c([0x29, 0]).soundRate, c([0x28, 0]).soundSize], [11025, 22050, 8]);
  assert.equal(c([0x52, 0]).codec, 'nellymoser');
  assert.equal(c([0x52, 0]).soundRate, 8000);
  assert.equal(c([0x42, 0]).soundRate, 16000);
  assert.equal(c([0x72, 0]).codec, 'g711a');
  assert.equal(c([0x82, 0]).codec, 'g711u');
  assert.equal(c([0xb6, 0]).codec, 'speex');
  assert.equal(c([0x3e, 0]).codec, 'pcm');
  assert.equal(c([0x0e, 0]).codec, 'pcm');
  assert.equal(c([0xe2, 0]).codec, 'mp3');
  assert.equal(c([0xe2, 0]).soundRate, 8000);
  assert.equal(c([0x12, 0]).codec, 'unknown');
  const raw = c([0xaf, 1, 0x21, 0x00]);
  assert.deepEqual([raw.codec, raw.isSequenceHeader, raw.packetType, raw.dataOffset, raw.soundRate], ['aac', false, 1, 2, undefined]);
  assert.ok(isErr(classifyAudioTag(Buffer.from([0xaf]))));
  assert.ok(isErr(classifyAudioTag(Buffer.from([0xaf, 2, 0]))));
  assert.ok(isErr(classifyAudioTag(Buffer.from([0xaf, 0, 0x12]))), 'truncated ASC in sequence header');
  assert.ok(isErr(classifyAudioTag(Buffer.alloc(0))));
  assert.equal(isAudioSequenceHeader(Buffer.from([0xaf, 0, 0x12, 0x10])), true);
  assert.equal(isAudioSequenceHeader(Buffer.from([0xaf, 1, 0x12, 0x10])), false);
  assert.equal(isAudioSequenceHeader(Buffer.from([0x2f, 0])), false);
  assert.equal(isAudioSequenceHeader(Buffer.alloc(0)), false);
});

test('Enhanced RTMP audio: Opus, fLaC, ac-3, ec-3, mp4a, .mp3, multitrack, ModEx', () => {
  const opusHead = Buffer.from('OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00', 'latin1');
  const seq = exAudio(0, FOURCC('Opus'), opusHead);
  const s = ok(classifyAudioTag(seq));
  assert.deepEqual([s.codec, s.enhanced, s.fourcc, s.isSequenceHeader, s.dataOffset], ['opus', true, 'Opus', true, 5]);
  assert.equal(isAudioSequenceHeader(seq), true);
  const frame = exAudio(1, FOURCC('Opus'), Buffer.from([0xfc, 0xff]));
  assert.equal(ok(classifyAudioTag(frame)).isSequenceHeader, false);
  assert.equal(isAudioSequenceHeader(frame), false);
  assert.equal(ok(classifyAudioTag(exAudio(0, FOURCC('fLaC'), Buffer.from('fLaC')))).codec, 'flac');
  assert.equal(ok(classifyAudioTag(exAudio(1, FOURCC('ac-3'), Buffer.from([0x0b, 0x77])))).codec, 'ac3');
  assert.equal(ok(classifyAudioTag(exAudio(1, FOURCC('ec-3'), Buffer.from([0x0b, 0x77])))).codec, 'eac3');
  assert.equal(ok(classifyAudioTag(exAudio(1, FOURCC('.mp3'), Buffer.from([0xff, 0xfb])))).codec, 'mp3');
  assert.equal(ok(classifyAudioTag(exAudio(2, FOURCC('Opus')))).isSequenceHeader, false);

  const mp4a = exAudio(0, FOURCC('mp4a'), Buffer.from([0x11, 0x88]));
  const m = ok(classifyAudioTag(mp4a));
  assert.deepEqual([m.codec, m.soundRate, m.channels], ['aac', 48000, 1]);
  assert.equal(ok(audioSequenceConfig(mp4a))?.sampleRate, 48000);

  const multi = exAudio(5, Buffer.from([(0 << 4) | 0]), FOURCC('Opus'), Buffer.from([3]), opusHead);
  const mt = ok(classifyAudioTag(multi));
  assert.deepEqual([mt.codec, mt.trackId, mt.isSequenceHeader, mt.dataLength], ['opus', 3, true, opusHead.length]);
  assert.equal(isAudioSequenceHeader(multi), true);
  const many = exAudio(5, Buffer.from([(2 << 4) | 1]), FOURCC('ac-3'), Buffer.from([0]), u24(2), Buffer.from([0x0b, 0x77]), FOURCC('Opus'), Buffer.from([1]), u24(1), Buffer.from([0]));
  const mm = ok(classifyAudioTag(many));
  assert.deepEqual([mm.codec, mm.trackId, mm.dataLength], ['ac3', 0, 2]);

  const modex = exAudio(7, Buffer.from([0, 0x42, (0 << 4) | 0]), FOURCC('Opus'), opusHead);
  assert.equal(ok(classifyAudioTag(modex)).isSequenceHeader, true);
  assert.equal(isAudioSequenceHeader(modex), true);

  assert.ok(isErr(classifyAudioTag(exAudio(0, Buffer.from('Op')))), 'truncated FourCC');
  assert.ok(isErr(classifyAudioTag(exAudio(3, FOURCC('Opus')))), 'reserved packet type 3');
  assert.ok(isErr(classifyAudioTag(exAudio(0, FOURCC('mp4a'), Buffer.from([0x11])))), 'truncated mp4a ASC');
  assert.ok(isErr(classifyAudioTag(exAudio(5, Buffer.from([0x05]), FOURCC('Opus')))), 'nested multitrack');
});

// ---------------------------------------------------------------------------
// AAC AudioSpecificConfig
// ---------------------------------------------------------------------------

test('parseAacAudioSpecificConfig: escape object type, explicit frequency, HE-AAC, errors', () => {
  assert.deepEqual(ok(parseAacAudioSpecificConfig(Buffer.from([0x12, 0x10]))), {
    objectType: 2,
    sampleRate: 44100,
    samplingFrequencyIndex: 4,
    channels: 2,
    channelConfiguration: 2,
  });
  const usac = new BitWriter().u(5, 31).u(6, 42 - 32).u(4, 3).u(4, 1).toBuffer();
  const u = ok(parseAacAudioSpecificConfig(usac));
  assert.deepEqual([u.objectType, u.sampleRate, u.channels], [42, 48000, 1]);
  const explicit = new BitWriter().u(5, 2).u(4, 15).u(24, 37800).u(4, 2).toBuffer();
  const e = ok(parseAacAudioSpecificConfig(explicit));
  assert.deepEqual([e.objectType, e.sampleRate, e.samplingFrequencyIndex, e.channels], [2, 37800, 15, 2]);
  const he = new BitWriter().u(5, 5).u(4, 6).u(4, 2).u(4, 3).u(5, 2).u(3, 0).toBuffer();
  const h = ok(parseAacAudioSpecificConfig(he));
  assert.deepEqual([h.objectType, h.sampleRate, h.sbr, h.ps, h.extensionSampleRate, h.channels], [2, 24000, true, false, 48000, 2]);
  const hev2 = new BitWriter().u(5, 29).u(4, 6).u(4, 1).u(4, 3).u(5, 2).u(3, 0).toBuffer();
  assert.equal(ok(parseAacAudioSpecificConfig(hev2)).ps, true);
  // Backward-compatible signalling: AAC-LC 24 kHz core + sync extension 0x2B7 (SBR, 48 kHz) + 0x548 (PS).
  const implicit = new BitWriter().u(5, 2).u(4, 6).u(4, 1).u(3, 0).u(11, 0x2b7).u(5, 5).u(1, 1).u(4, 3).u(11, 0x548).u(1, 1).toBuffer();
  const im = ok(parseAacAudioSpecificConfig(implicit));
  assert.deepEqual([im.objectType, im.sampleRate, im.sbr, im.ps, im.extensionSampleRate, im.channels], [2, 24000, true, true, 48000, 1]);
  // ffmpeg's encoder writes the sync extension with sbrPresentFlag = 0.
  const noSbr = ok(parseAacAudioSpecificConfig(Buffer.from([0x12, 0x10, 0x56, 0xe5, 0x00])));
  assert.equal(noSbr.sbr, undefined);
  assert.ok(isErr(parseAacAudioSpecificConfig(Buffer.from([0x12, 0x10, 0x56, 0xe5]))), 'sync extension without its flag');
  assert.ok(isErr(parseAacAudioSpecificConfig(new BitWriter().u(5, 2).u(4, 4).u(4, 2).u(1, 0).u(1, 1).u(1, 0).toBuffer())), 'truncated coreCoderDelay');
  assert.equal(ok(parseAacAudioSpecificConfig(new BitWriter().u(5, 2).u(4, 3).u(4, 7).toBuffer())).channels, 8);

  assert.ok(isErr(parseAacAudioSpecificConfig(Buffer.from([0x12]))));
  assert.ok(isErr(parseAacAudioSpecificConfig(new BitWriter().u(5, 2).u(4, 13).u(4, 2).toBuffer())), 'reserved index');
  assert.ok(isErr(parseAacAudioSpecificConfig(new BitWriter().u(5, 0).u(4, 4).u(4, 2).toBuffer())), 'object type 0');
  assert.ok(isErr(parseAacAudioSpecificConfig(new BitWriter().u(5, 2).u(4, 4).u(4, 9).toBuffer())), 'reserved channels');
  assert.ok(isErr(parseAacAudioSpecificConfig(new BitWriter().u(5, 2).u(4, 15).u(8, 1).toBuffer())), 'truncated explicit rate');
  assert.ok(isErr(parseAacAudioSpecificConfig(new BitWriter().u(5, 31).u(4, 3).toBuffer())), 'truncated escape');
});

// ---------------------------------------------------------------------------
// synthetic SPS
// ---------------------------------------------------------------------------

interface AvcSpsSpec {
  profile: number;
  chromaFormat: number;
  separateColourPlane: number;
  bitDepthLuma: number;
  scaling: Array<number[] | null> | null;
  pocType: number;
  pocCycle: number[];
  widthMbs: number;
  heightMapUnits: number;
  frameMbsOnly: number;
  crop: [number, number, number, number] | null;
}

const HIGH = new Set([100, 110, 122, 244, 44, 83, 86, 118, 128]);

function writeAvcSps(s: AvcSpsSpec): Buffer {
  const w = new BitWriter();
  w.u(8, 0x67).u(8, s.profile).u(8, 0).u(8, 40).ue(0);
  if (HIGH.has(s.profile)) {
    w.ue(s.chromaFormat);
    if (s.chromaFormat === 3) w.u(1, s.separateColourPlane);
    w.ue(s.bitDepthLuma - 8).ue(s.bitDepthLuma - 8).u(1, 0);
    w.u(1, s.scaling ? 1 : 0);
    if (s.scaling) {
      const lists = s.chromaFormat !== 3 ? 8 : 12;
      for (let i = 0; i < lists; i++) {
        const deltas = s.scaling[i] ?? null;
        w.u(1, deltas ? 1 : 0);
        if (!deltas) continue;
        const size = i < 6 ? 16 : 64;
        let last = 8;
        let next = 8;
        for (let j = 0; j < size; j++) {
          if (next !== 0) {
            const d = deltas[j % deltas.length]!;
            w.se(d);
            next = (last + d + 256) % 256;
          }
          last = next === 0 ? last : next;
        }
      }
    }
  }
  w.ue(4).ue(s.pocType);
  if (s.pocType === 0) w.ue(2);
  else if (s.pocType === 1) {
    w.u(1, 0).se(-3).se(7).ue(s.pocCycle.length);
    for (const v of s.pocCycle) w.se(v);
  }
  w.ue(4).u(1, 0).ue(s.widthMbs - 1).ue(s.heightMapUnits - 1).u(1, s.frameMbsOnly);
  if (!s.frameMbsOnly) w.u(1, 1);
  w.u(1, 1);
  w.u(1, s.crop ? 1 : 0);
  if (s.crop) for (const c of s.crop) w.ue(c);
  w.u(1, 0); // no VUI
  return escapeRbsp(w.toBuffer(true));
}

/** Expected display size straight from H.264 Table 6-1 / equations 7-19..7-22. */
function expectedAvcSize(s: AvcSpsSpec): [number, number] {
  const high = HIGH.has(s.profile);
  const chroma = high ? s.chromaFormat : 1;
  const cat = high && chroma === 3 && s.separateColourPlane ? 0 : chroma;
  const subW = [1, 2, 2, 1][cat]!;
  const subH = [1, 2, 1, 1][cat]!;
  const unitX = cat === 0 ? 1 : subW;
  const unitY = cat === 0 ? 2 - s.frameMbsOnly : subH * (2 - s.frameMbsOnly);
  const [l, r, t, b] = s.crop ?? [0, 0, 0, 0];
  return [s.widthMbs * 16 - unitX * (l + r), (2 - s.frameMbsOnly) * s.heightMapUnits * 16 - unitY * (t + b)];
}

const avcSpsArb: fc.Arbitrary<AvcSpsSpec> = fc.record({
  profile: fc.constantFrom(66, 77, 88, 100, 110, 122, 244, 44, 118),
  chromaFormat: fc.integer({ min: 0, max: 3 }),
  separateColourPlane: fc.integer({ min: 0, max: 1 }),
  bitDepthLuma: fc.integer({ min: 8, max: 14 }),
  scaling: fc.option(fc.array(fc.option(fc.array(fc.integer({ min: -128, max: 127 }), { minLength: 1, maxLength: 8 })), { minLength: 12, maxLength: 12 })),
  pocType: fc.integer({ min: 0, max: 2 }),
  pocCycle: fc.array(fc.integer({ min: -1000, max: 1000 }), { maxLength: 5 }),
  widthMbs: fc.integer({ min: 1, max: 300 }),
  heightMapUnits: fc.integer({ min: 1, max: 200 }),
  frameMbsOnly: fc.integer({ min: 0, max: 1 }),
  crop: fc.option(fc.tuple(fc.nat({ max: 3 }), fc.nat({ max: 3 }), fc.nat({ max: 3 }), fc.nat({ max: 3 }))),
});

test('parseAvcSps: synthetic SPS (profiles, chroma formats, scaling lists, POC types, interlace, cropping) (property)', () => {
  fc.assert(
    fc.property(avcSpsArb, (spec) => {
      const sps = writeAvcSps(spec);
      const [w, h] = expectedAvcSize(spec);
      const r = parseAvcSps(sps);
      if (w <= 0 || h <= 0) {
        assert.ok(isErr(r));
        return;
      }
      const info = ok(r);
      assert.equal(info.width, w);
      assert.equal(info.height, h);
      assert.equal(info.profile, spec.profile);
      assert.equal(info.frameMbsOnly, spec.frameMbsOnly === 1);
      if (HIGH.has(spec.profile)) {
        assert.equal(info.chromaFormat, spec.chromaFormat);
        assert.equal(info.bitDepth, spec.bitDepthLuma);
      }
    }),
    { numRuns: 500 },
  );
});

test('parseAvcSps: well-known sizes, including emulation prevention and 1080i', () => {
  const base: AvcSpsSpec = {
    profile: 100, chromaFormat: 1, separateColourPlane: 0, bitDepthLuma: 8, scaling: null, pocType: 0, pocCycle: [],
    widthMbs: 120, heightMapUnits: 68, frameMbsOnly: 1, crop: [0, 0, 0, 4],
  };
  assert.deepEqual(pick(ok(parseAvcSps(writeAvcSps(base)))), [1920, 1080]);
  assert.deepEqual(pick(ok(parseAvcSps(writeAvcSps({ ...base, heightMapUnits: 34, frameMbsOnly: 0, crop: [0, 0, 0, 2] })))), [1920, 1080]);
  assert.deepEqual(pick(ok(parseAvcSps(writeAvcSps({ ...base, widthMbs: 27, heightMapUnits: 15, crop: [0, 3, 0, 0] })))), [426, 240]);
  assert.deepEqual(pick(ok(parseAvcSps(writeAvcSps({ ...base, profile: 244, chromaFormat: 3, widthMbs: 80, heightMapUnits: 45, crop: [1, 1, 0, 0] })))), [1278, 720]);
  // Large POC offsets are long runs of zero bits → emulation prevention bytes.
  const zeros = writeAvcSps({ ...base, pocType: 1, pocCycle: [65536, 65536, -65536], widthMbs: 1, heightMapUnits: 1, crop: null });
  assert.ok(zeros.includes(Buffer.from([0, 0, 3])), 'SPS contains emulation prevention');
  assert.deepEqual(pick(ok(parseAvcSps(zeros))), [16, 16]);
  // Without unescaping the parse would be wrong; show that the escape matters.
  assert.notDeepEqual(unescapeRbsp(zeros), zeros);

  assert.ok(isErr(parseAvcSps(Buffer.from([0x68, 0xee, 0x3c, 0x80]))), 'PPS is not an SPS');
  assert.ok(isErr(parseAvcSps(writeAvcSps({ ...base, pocType: 1, pocCycle: [] }).subarray(0, 6))), 'truncated');
  function pick(i: { width: number; height: number }): [number, number] {
    return [i.width, i.height];
  }
});

interface HevcSpsSpec {
  maxSubLayersMinus1: number;
  subLayers: Array<[number, number]>;
  tier: number;
  profile: number;
  level: number;
  chromaFormat: number;
  separateColourPlane: number;
  width: number;
  height: number;
  conf: [number, number, number, number] | null;
  bitDepth: number;
}

function writeHevcSps(s: HevcSpsSpec): Buffer {
  const w = new BitWriter();
  w.u(8, 0x42).u(8, 0x01);
  w.u(4, 0).u(3, s.maxSubLayersMinus1).u(1, 1);
  w.u(2, 0).u(1, s.tier).u(5, s.profile).u(32, 0x60000000).u(48, 0x900000000000).u(8, s.level);
  for (let i = 0; i < s.maxSubLayersMinus1; i++) w.u(1, s.subLayers[i]![0]).u(1, s.subLayers[i]![1]);
  if (s.maxSubLayersMinus1 > 0) for (let i = s.maxSubLayersMinus1; i < 8; i++) w.u(2, 0);
  for (let i = 0; i < s.maxSubLayersMinus1; i++) {
    if (s.subLayers[i]![0]) w.u(32, 0x12345678).u(32, 0).u(24, 0xabcdef);
    if (s.subLayers[i]![1]) w.u(8, 90);
  }
  w.ue(0).ue(s.chromaFormat);
  if (s.chromaFormat === 3) w.u(1, s.separateColourPlane);
  w.ue(s.width).ue(s.height).u(1, s.conf ? 1 : 0);
  if (s.conf) for (const c of s.conf) w.ue(c);
  w.ue(s.bitDepth - 8).ue(s.bitDepth - 8).ue(4);
  return escapeRbsp(w.toBuffer(true));
}

test('parseHevcSps: synthetic SPS with sub-layers, chroma formats and conformance window (property)', () => {
  const arb = fc.record({
    maxSubLayersMinus1: fc.integer({ min: 0, max: 6 }),
    subLayers: fc.array(fc.tuple(fc.integer({ min: 0, max: 1 }), fc.integer({ min: 0, max: 1 })), { minLength: 6, maxLength: 6 }),
    tier: fc.integer({ min: 0, max: 1 }),
    profile: fc.integer({ min: 1, max: 4 }),
    level: fc.constantFrom(30, 60, 93, 120, 153),
    chromaFormat: fc.integer({ min: 0, max: 3 }),
    separateColourPlane: fc.integer({ min: 0, max: 1 }),
    width: fc.integer({ min: 8, max: 8192 }),
    height: fc.integer({ min: 8, max: 4320 }),
    conf: fc.option(fc.tuple(fc.nat({ max: 4 }), fc.nat({ max: 4 }), fc.nat({ max: 4 }), fc.nat({ max: 4 }))),
    bitDepth: fc.integer({ min: 8, max: 12 }),
  });
  fc.assert(
    fc.property(arb, (s) => {
      const cat = s.chromaFormat === 3 && s.separateColourPlane ? 0 : s.chromaFormat;
      const subW = [1, 2, 2, 1][cat]!;
      const subH = [1, 2, 1, 1][cat]!;
      const [l, r, t, b] = s.conf ?? [0, 0, 0, 0];
      const width = s.width - subW * (l + r);
      const height = s.height - subH * (t + b);
      const parsed = parseHevcSps(writeHevcSps(s));
      if (width <= 0 || height <= 0) {
        assert.ok(isErr(parsed));
        return;
      }
      const info = ok(parsed);
      assert.equal(info.width, width);
      assert.equal(info.height, height);
      assert.equal(info.profile, s.profile);
      assert.equal(info.tier, s.tier);
      assert.equal(info.level, s.level);
      assert.equal(info.bitDepth, s.bitDepth);
      assert.equal(info.chromaFormat, s.chromaFormat);
    }),
    { numRuns: 300 },
  );
});

// ---------------------------------------------------------------------------
// exp-golomb / RBSP
// ---------------------------------------------------------------------------

type Op = { k: 'u'; n: number; v: number } | { k: 'ue'; v: number } | { k: 'se'; v: number };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.integer({ min: 0, max: 32 }).chain((n) => fc.record({ k: fc.constant('u' as const), n: fc.constant(n), v: fc.nat({ max: 2 ** n - 1 }) })),
  fc.record({ k: fc.constant('ue' as const), v: fc.oneof(fc.nat({ max: 300 }), fc.nat({ max: 2 ** 32 - 2 })) }),
  fc.record({ k: fc.constant('se' as const), v: fc.oneof(fc.integer({ min: -300, max: 300 }), fc.integer({ min: -(2 ** 31 - 1), max: 2 ** 31 - 1 })) }),
);

test('BitReader: exp-golomb and fixed-width reads round-trip against BitWriter (property)', () => {
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
      const w = new BitWriter();
      for (const op of ops) {
        if (op.k === 'u') w.u(op.n, op.v);
        else if (op.k === 'ue') w.ue(op.v);
        else w.se(op.v);
      }
      const bits = w.length;
      const r = new BitReader(w.toBuffer());
      for (const op of ops) {
        const got = op.k === 'u' ? r.readBits(op.n) : op.k === 'ue' ? r.readUe() : r.readSe();
        assert.equal(got, op.v, `${op.k}`);
      }
      assert.equal(r.ok, true);
      assert.equal(r.bitPosition, bits);
      assert.ok(r.bitsLeft < 8);
    }),
    { numRuns: 500 },
  );
});

test('BitReader: overrun and over-long codes are flagged, never thrown', () => {
  const r = new BitReader(Buffer.from([0x00, 0x00]));
  assert.equal(r.readUe(), 0);
  assert.equal(r.overrun, true);
  const long = new BitReader(Buffer.alloc(8));
  assert.equal(long.readUe(), 0);
  assert.equal(long.invalid, true);
  assert.equal(long.overrun, false);
  const past = new BitReader(Buffer.from([0xff]));
  assert.equal(past.readBits(8), 255);
  assert.equal(past.ok, true);
  assert.equal(past.readBits(4), 0);
  assert.equal(past.overrun, true);
  const skip = new BitReader(Buffer.from([0xff]), 1);
  skip.skipBits(1);
  assert.equal(skip.overrun, true);
  // Largest ue: 31 leading zeros.
  const max = new BitWriter().ue(2 ** 32 - 2).toBuffer();
  assert.equal(new BitReader(max).readUe(), 2 ** 32 - 2);
});

test('unescapeRbsp inverts emulation prevention (property)', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }).map((u) => Buffer.from(u.map((b) => (b < 128 ? b & 3 : b)))), (rbsp) => {
      const escaped = escapeRbsp(rbsp);
      for (let i = 2; i < escaped.length; i++) {
        if (escaped[i - 2] === 0 && escaped[i - 1] === 0) assert.ok(escaped[i]! >= 3, 'no start-code emulation');
      }
      const back = unescapeRbsp(escaped);
      // A trailing 03 (cabac_zero_word case) is kept by design of the escape; compare the prefix.
      assert.ok(back.subarray(0, rbsp.length).equals(rbsp));
      assert.ok(back.length - rbsp.length <= 1);
    }),
    { numRuns: 500 },
  );
  const plain = Buffer.from([1, 2, 3]);
  assert.equal(unescapeRbsp(plain), plain, 'no copy without emulation bytes');
});

// ---------------------------------------------------------------------------
// robustness
// ---------------------------------------------------------------------------

interface RecordCase {
  name: string;
  parse: (b: Buffer) => unknown;
  record: Buffer;
  /** Shorter lengths that are themselves complete records (an optional trailer removed). */
  alsoValid?: number[];
}

/** Length of an avcC without its optional High-profile extension. */
function avcCoreLength(record: Buffer): number {
  let off = 6;
  for (let i = 0; i < (record[5]! & 0x1f); i++) off += 2 + record.readUInt16BE(off);
  const pps = record[off]!;
  off += 1;
  for (let i = 0; i < pps; i++) off += 2 + record.readUInt16BE(off);
  return off;
}

function allRecords(): RecordCase[] {
  const out: RecordCase[] = [];
  for (const f of AVC_FIXTURES) {
    const tags = flvTags(f.file);
    const record = seqHeader(tags, FlvTagType.VIDEO).subarray(5);
    out.push({ name: `avcC ${f.file}`, parse: parseAvcDecoderConfig, record, alsoValid: [avcCoreLength(record)] });
    if (f.rate) {
      // ffmpeg writes 2 bytes of ASC + GASpecificConfig, then the optional 0x2B7 sync extension
      // (3 more bytes); cut at 2 or 3 bytes the extension is simply absent (< 16 bits left).
      const asc = seqHeader(tags, FlvTagType.AUDIO).subarray(2);
      assert.equal(asc.length, 5);
      out.push({ name: `ASC ${f.file}`, parse: parseAacAudioSpecificConfig, record: asc, alsoValid: [2, 3] });
    }
  }
  for (const f of HEVC_FIXTURES) out.push({ name: `hvcC ${f.file}`, parse: parseHevcDecoderConfig, record: hvcCFromMp4(f.file) });
  out.push({ name: 'explicit-rate ASC', parse: parseAacAudioSpecificConfig, record: new BitWriter().u(5, 2).u(4, 15).u(24, 37800).u(4, 2).toBuffer() });
  out.push({ name: 'HE-AAC ASC', parse: parseAacAudioSpecificConfig, record: new BitWriter().u(5, 5).u(4, 6).u(4, 2).u(4, 3).u(5, 2).u(3, 0).toBuffer() });
  return out;
}

test('every truncation of a real config record is a CodecConfigError (exhaustive)', () => {
  let optionalTrailers = 0;
  for (const { name, parse, record, alsoValid } of allRecords()) {
    const whole = parse(record);
    assert.ok(!(whole instanceof CodecConfigError), `${name} parses whole`);
    for (let len = 0; len < record.length; len++) {
      const r = parse(Buffer.from(record.subarray(0, len)));
      if (alsoValid?.includes(len)) {
        // Optional trailers (avcC High-profile extension, ASC sync extension): without them the record is complete.
        assert.ok(!(r instanceof CodecConfigError), `${name} without its optional trailer`);
        const pick = (x: unknown): unknown => {
          const o = x as Record<string, unknown>;
          return [o['width'], o['height'], o['profile'], o['sampleRate'], o['channels'], o['objectType']];
        };
        assert.deepEqual(pick(r), pick(whole));
        optionalTrailers++;
        continue;
      }
      assert.ok(isErr(r), `${name} truncated to ${len} of ${record.length} bytes`);
    }
  }
  assert.equal(optionalTrailers, AVC_FIXTURES.length + 2 * 2, 'fixtures carry the optional trailers');
});

test('truncated or mutated config records and tags never throw (property)', () => {
  const records = allRecords();
  fc.assert(
    fc.property(
      fc.nat({ max: records.length - 1 }),
      fc.nat(),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
      (which, cut, flips) => {
        const { parse, record, alsoValid } = records[which]!;
        const len = cut % record.length;
        const truncated = Buffer.from(record.subarray(0, len));
        if (!alsoValid?.includes(len)) assert.ok(isErr(parse(truncated)));
        const mutated = Buffer.from(record);
        for (const [i, v] of flips) mutated[i % mutated.length] = v;
        const r = parse(mutated);
        assert.ok(r instanceof CodecConfigError || (typeof r === 'object' && r !== null));
        // The tag-level entry points cope with the same bytes.
        for (const prefix of [[0x17, 0, 0, 0, 0], [0x1c, 0, 0, 0, 0], [0x90 | 0x10, 0x68, 0x76, 0x63, 0x31], [0xaf, 0]]) {
          const payload = Buffer.concat([Buffer.from(prefix), mutated]);
          videoSequenceConfig(payload);
          audioSequenceConfig(payload);
          classifyVideoTag(payload);
          classifyAudioTag(payload);
        }
      },
    ),
    { numRuns: 500 },
  );
});

test('hot-path predicates agree with full classification on arbitrary payloads (property)', () => {
  const interesting = fc.oneof(
    fc.uint8Array({ maxLength: 24 }).map((u) => Buffer.from(u)),
    fc
      .tuple(
        fc.constantFrom(0x17, 0x27, 0x1c, 0x2c, 0x57, 0x14, 0x90, 0x91, 0x95, 0x97, 0xaf, 0x2f, 0x96, 0x80, 0x90, 0x93, 0x97, 0x96, 0xd0, 0x9f),
        fc.uint8Array({ maxLength: 24 }),
      )
      .map(([b0, rest]) => Buffer.concat([Buffer.from([b0]), Buffer.from(rest)])),
    fc
      .tuple(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 15 }), fc.constantFrom('hvc1', 'av01', 'vp09', 'avc1', 'Opus', 'mp4a'), fc.uint8Array({ maxLength: 16 }))
      .map(([ft, pt, cc, rest]) => Buffer.concat([Buffer.from([0x80 | (ft << 4) | pt]), Buffer.from(cc), Buffer.from(rest)])),
  );
  fc.assert(
    fc.property(interesting, (p) => {
      const v = classifyVideoTag(p);
      const key = isVideoKeyframe(p);
      const seq = isVideoSequenceHeader(p);
      if (!(v instanceof CodecConfigError)) {
        assert.equal(key, v.isKeyframe, 'keyframe');
        assert.equal(seq, v.isSequenceHeader, 'sequence header');
        assert.ok(v.dataOffset + v.dataLength <= p.length);
      }
      const a = classifyAudioTag(p);
      const aseq = isAudioSequenceHeader(p);
      if (!(a instanceof CodecConfigError)) {
        assert.equal(aseq, a.isSequenceHeader, 'audio sequence header');
        assert.ok(a.dataOffset + a.dataLength <= p.length);
      }
    }),
    { numRuns: 3000 },
  );
});
