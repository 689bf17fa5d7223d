import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { FlvDecoder, FlvTagType, type FlvTag } from '../src/flv.ts';
import { classifyVideoTag } from '../src/codec.ts';
import { CodecConfigError } from '../src/errors.ts';
import { TsMuxer, TS_PACKET_SIZE, TS_PID_AUDIO, TS_PID_PAT, TS_PID_PMT, TS_PID_VIDEO, crc32Mpeg2 } from '../src/mpegts.ts';

const FIXTURES = fileURLToPath(new URL('../../tests/fixtures/flv/', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'meshcast-mpegts-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function flvTags(name: string): FlvTag[] {
  const r = new FlvDecoder().push(readFileSync(FIXTURES + name));
  assert.ok(Array.isArray(r));
  return r;
}

function mux(muxer: TsMuxer, tags: FlvTag[]): Buffer {
  const parts = [muxer.startSegment()];
  for (const t of tags) {
    if (t.type === FlvTagType.VIDEO) parts.push(muxer.pushVideo(t.timestamp, t.payload));
    else if (t.type === FlvTagType.AUDIO) parts.push(muxer.pushAudio(t.timestamp, t.payload));
  }
  return Buffer.concat(parts);
}

interface Probe {
  streams: Array<Record<string, string | number>>;
  format: Record<string, string | number>;
  packets: Array<{ codec_type: string; pts_time: string; dts_time: string; flags: string; size: string }>;
}

function probe(file: string): Probe {
  const out = execFileSync(
    'ffprobe',
    ['-v', 'error', '-show_streams', '-show_format', '-show_packets', '-of', 'json', file],
    { encoding: 'utf8' },
  );
  return JSON.parse(out) as Probe;
}

function decodeErrors(file: string): string {
  const r = spawnSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', file, '-f', 'null', '-'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stderr;
}

interface TsPacket {
  pid: number;
  pusi: boolean;
  cc: number;
  hasPayload: boolean;
  af?: Buffer;
  payload: Buffer;
}

function parsePackets(ts: Buffer): TsPacket[] {
  assert.equal(ts.length % TS_PACKET_SIZE, 0, '188-byte aligned');
  const out: TsPacket[] = [];
  for (let at = 0; at < ts.length; at += TS_PACKET_SIZE) {
    const p = ts.subarray(at, at + TS_PACKET_SIZE);
    assert.equal(p[0], 0x47, `sync byte at ${at}`);
    const pid = ((p[1]! & 0x1f) << 8) | p[2]!;
    const afc = (p[3]! >>> 4) & 3;
    let off = 4;
    let af: Buffer | undefined;
    if (afc & 2) {
      const len = p[4]!;
      af = p.subarray(5, 5 + len);
      off = 5 + len;
      assert.ok(off <= TS_PACKET_SIZE);
    }
    out.push({ pid, pusi: (p[1]! & 0x40) !== 0, cc: p[3]! & 0x0f, hasPayload: (afc & 1) !== 0, af, payload: p.subarray(off) });
  }
  return out;
}

function checkContinuity(packets: TsPacket[]): Map<number, number> {
  const last = new Map<number, number>();
  const counts = new Map<number, number>();
  for (const p of packets) {
    counts.set(p.pid, (counts.get(p.pid) ?? 0) + 1);
    if (!p.hasPayload) continue;
    const prev = last.get(p.pid);
    if (prev !== undefined) assert.equal(p.cc, (prev + 1) & 0x0f, `continuity on PID ${p.pid}`);
    last.set(p.pid, p.cc);
  }
  return counts;
}

/** Reads a PES timestamp (PTS or DTS) at `off`. */
function readTs(b: Buffer, off: number): number {
  return (
    ((b[off]! >>> 1) & 0x07) * 2 ** 30 +
    (b[off + 1]! << 22) +
    ((b[off + 2]! >>> 1) << 15) +
    (b[off + 3]! << 7) +
    (b[off + 4]! >>> 1)
  );
}

test('TsMuxer: the 320x240 H.264/AAC fixture muxes into a TS ffprobe and ffmpeg accept', () => {
  const tags = flvTags('h264_aac_320x240.flv');
  const muxer = new TsMuxer({ videoCodec: 'avc', audio: true });
  const ts = mux(muxer, tags);
  assert.equal(muxer.droppedFrames, 0, muxer.lastError?.message);
  const file = join(tmp, 'h264_aac_320x240.ts');
  writeFileSync(file, ts);

  const p = probe(file);
  const video = p.streams.find((s) => s['codec_type'] === 'video')!;
  const audio = p.streams.find((s) => s['codec_type'] === 'audio')!;
  assert.equal(p.streams.length, 2);
  assert.equal(video['codec_name'], 'h264');
  assert.equal(video['width'], 320);
  assert.equal(video['height'], 240);
  assert.equal(video['profile'], 'High');
  assert.equal(audio['codec_name'], 'aac');
  assert.equal(audio['sample_rate'], '44100');
  assert.equal(audio['channels'], 2);
  const duration = Number(p.format['duration']);
  assert.ok(duration > 0.9 && duration < 1.15, `duration ${duration}`);
  assert.equal(decodeErrors(file), '', 'ffmpeg decodes without errors');

  // Every video/audio frame arrives with the FLV timing (ms → 90 kHz, relative to the first).
  const flvVideo = tags.filter((t) => t.type === FlvTagType.VIDEO).map((t) => ({ t, info: classifyVideoTag(t.payload) }));
  const frames = flvVideo.filter(({ info }) => !(info instanceof CodecConfigError) && !info.isSequenceHeader && !info.isEndOfSequence);
  const tsVideo = p.packets.filter((x) => x.codec_type === 'video');
  assert.equal(tsVideo.length, frames.length);
  const first = frames[0]!.t.timestamp;
  frames.forEach(({ t, info }, i) => {
    assert.ok(!(info instanceof CodecConfigError));
    const pk = tsVideo[i]!;
    assert.ok(Math.abs(Number(pk.dts_time) - (t.timestamp - first) / 1000) < 0.0005, `video ${i} dts`);
    assert.ok(Math.abs(Number(pk.pts_time) - (t.timestamp + info.compositionTime - first) / 1000) < 0.0005, `video ${i} pts`);
    assert.equal(pk.flags.startsWith('K'), info.isKeyframe, `video ${i} keyframe`);
  });
  const audioFrames = tags.filter((t) => t.type === FlvTagType.AUDIO && t.payload[1] === 1);
  assert.equal(p.packets.filter((x) => x.codec_type === 'audio').length, audioFrames.length);
});

test('TsMuxer: packet structure — sync bytes, continuity, PSI CRCs, PCR, random access, PES timestamps', () => {
  const tags = flvTags('h264_aac_320x240.flv');
  const muxer = new TsMuxer({ videoCodec: 'avc', audio: true });
  // Two segments: continuity must carry across startSegment().
  const half = Math.floor(tags.length / 2);
  const ts = Buffer.concat([mux(muxer, tags.slice(0, half)), mux(muxer, tags.slice(half))]);
  const packets = parsePackets(ts);
  const counts = checkContinuity(packets);
  assert.deepEqual([...counts.keys()].sort((a, b) => a - b), [TS_PID_PAT, TS_PID_VIDEO, TS_PID_AUDIO, TS_PID_PMT]);
  assert.equal(counts.get(TS_PID_PAT), 2);
  assert.equal(counts.get(TS_PID_PMT), 2);
  assert.ok(packets.filter((p) => p.pid === TS_PID_VIDEO).length > 16, 'video CC wraps around');

  // PAT / PMT sections: CRC over the whole section (incl. CRC) is 0 for MPEG-2 CRC32.
  for (const p of packets.filter((x) => x.pid === TS_PID_PAT || x.pid === TS_PID_PMT)) {
    assert.equal(p.pusi, true);
    const sectionStart = 1 + p.payload[0]!;
    const sectionLength = p.payload.readUInt16BE(sectionStart + 1) & 0x0fff;
    const section = p.payload.subarray(sectionStart, sectionStart + 3 + sectionLength);
    assert.equal(crc32Mpeg2(section), 0, 'section CRC');
    if (p.pid === TS_PID_PMT) {
      assert.equal(section[0], 2);
      assert.equal(section.readUInt16BE(8) & 0x1fff, TS_PID_VIDEO, 'PCR PID');
      assert.deepEqual([section[12], section.readUInt16BE(13) & 0x1fff, section[17], section.readUInt16BE(18) & 0x1fff], [0x1b, TS_PID_VIDEO, 0x0f, TS_PID_AUDIO]);
    }
  }

  // Each video PES start carries a PCR equal to its DTS; keyframes set random_access_indicator.
  const keyframeTimes = new Set(tags.filter((t) => t.type === FlvTagType.VIDEO && t.payload[0] === 0x17 && t.payload[1] === 1).map((t) => t.timestamp));
  let starts = 0;
  let rai = 0;
  for (const p of packets.filter((x) => x.pid === TS_PID_VIDEO && x.pusi)) {
    starts++;
    assert.ok(p.af && p.af.length >= 7 && (p.af[0]! & 0x10), 'PCR flag');
    const pcrBase = p.af.readUInt32BE(1) * 2 + (p.af[5]! >>> 7);
    const pes = p.payload;
    assert.deepEqual([...pes.subarray(0, 4)], [0, 0, 1, 0xe0]);
    const flags = pes[7]! >>> 6;
    const pts = readTs(pes, 9);
    const dts = flags === 3 ? readTs(pes, 14) : pts;
    assert.equal(pcrBase, dts, 'PCR = DTS');
    assert.equal(dts % 90, 0);
    const isKey = (p.af[0]! & 0x40) !== 0;
    assert.equal(isKey, keyframeTimes.has(dts / 90), 'random_access_indicator on keyframes');
    if (isKey) {
      rai++;
      // Annex B: AUD, then SPS + PPS before the IDR.
      const es = pes.subarray(9 + pes[8]!);
      assert.deepEqual([...es.subarray(0, 6)], [0, 0, 0, 1, 0x09, 0xf0]);
      assert.deepEqual([...es.subarray(6, 11)], [0, 0, 0, 1, 0x67]);
    }
  }
  assert.equal(starts, 10);
  assert.equal(rai, keyframeTimes.size);
  assert.ok(rai >= 1);
  // Audio PES: ADTS sync word right after the PES header.
  for (const p of packets.filter((x) => x.pid === TS_PID_AUDIO && x.pusi)) {
    const pes = p.payload;
    assert.equal(pes[3], 0xc0);
    const es = pes.subarray(9 + pes[8]!);
    assert.equal(es[0], 0xff);
    assert.equal(es[1]! & 0xf0, 0xf0);
    const pesLength = pes.readUInt16BE(4);
    const frameLength = ((es[3]! & 3) << 11) | (es[4]! << 3) | (es[5]! >>> 5);
    assert.equal(pesLength, 3 + pes[8]! + frameLength, 'PES length covers the ADTS frame');
  }
});

test('TsMuxer: 1280x720 mono 48 kHz fixture, and an audio-only muxer (PCR on audio)', () => {
  const tags = flvTags('h264_aac_1280x720_mono48k.flv');
  const file = join(tmp, 'h264_aac_1280x720.ts');
  const muxer = new TsMuxer({ videoCodec: 'avc', audio: true });
  writeFileSync(file, mux(muxer, tags));
  assert.equal(muxer.droppedFrames, 0);
  const p = probe(file);
  const video = p.streams.find((s) => s['codec_type'] === 'video')!;
  const audio = p.streams.find((s) => s['codec_type'] === 'audio')!;
  assert.deepEqual([video['width'], video['height']], [1280, 720]);
  assert.deepEqual([audio['sample_rate'], audio['channels']], ['48000', 1]);
  assert.equal(decodeErrors(file), '');

  const audioOnly = new TsMuxer({ audio: true });
  const ts = mux(audioOnly, tags);
  assert.equal(audioOnly.droppedFrames, tags.filter((t) => t.type === FlvTagType.VIDEO).length, 'video is refused');
  const afile = join(tmp, 'audio_only.ts');
  writeFileSync(afile, ts);
  const ap = probe(afile);
  assert.equal(ap.streams.length, 1);
  assert.equal(ap.streams[0]!['codec_name'], 'aac');
  assert.equal(decodeErrors(afile), '');
  const packets = parsePackets(ts);
  checkContinuity(packets);
  for (const pk of packets.filter((x) => x.pid === TS_PID_AUDIO && x.pusi)) assert.ok(pk.af && pk.af[0]! & 0x10, 'PCR on audio PID');
  assert.throws(() => new TsMuxer({}), RangeError);
});

// ---------------------------------------------------------------------------
// HEVC: samples from the mp4 fixture, sent as Enhanced RTMP 'hvc1' tags
// ---------------------------------------------------------------------------

interface Mp4Track {
  hvcC: Buffer;
  samples: Array<{ data: Buffer; time: number; key: boolean }>;
}

/** Just enough ISO-BMFF to get a single video track's samples (stsz/stco/stsc/stts/stss). */
function readMp4(name: string): Mp4Track {
  const file = readFileSync(FIXTURES + name);
  const boxes = new Map<string, Buffer>();
  const walk = (buf: Buffer): void => {
    let off = 0;
    while (off + 8 <= buf.length) {
      const size = buf.readUInt32BE(off);
      const type = buf.toString('latin1', off + 4, off + 8);
      assert.ok(size >= 8 && off + size <= buf.length, `box ${type}`);
      const body = buf.subarray(off + 8, off + size);
      boxes.set(type, body);
      if (['moov', 'trak', 'mdia', 'minf', 'stbl'].includes(type)) walk(body);
      off += size;
    }
  };
  walk(file);
  const need = (t: string): Buffer => {
    const b = boxes.get(t);
    assert.ok(b, `${t} box`);
    return b;
  };
  const stsd = need('stsd');
  const at = stsd.indexOf('hvcC', 0, 'latin1');
  const hvcC = stsd.subarray(at + 4, at - 4 + stsd.readUInt32BE(at - 4));
  const timescale = need('mdhd').readUInt32BE(12);
  const stsz = need('stsz');
  const count = stsz.readUInt32BE(8);
  const sizes = Array.from({ length: count }, (_, i) => stsz.readUInt32BE(8) && stsz.readUInt32BE(4) === 0 ? stsz.readUInt32BE(12 + 4 * i) : stsz.readUInt32BE(4));
  const stco = need('stco');
  const chunks = Array.from({ length: stco.readUInt32BE(4) }, (_, i) => stco.readUInt32BE(8 + 4 * i));
  const stsc = need('stsc');
  const stscEntries = Array.from({ length: stsc.readUInt32BE(4) }, (_, i) => ({ first: stsc.readUInt32BE(8 + 12 * i), per: stsc.readUInt32BE(12 + 12 * i) }));
  const stts = need('stts');
  const deltas: number[] = [];
  for (let i = 0; i < stts.readUInt32BE(4); i++) for (let k = 0; k < stts.readUInt32BE(8 + 8 * i); k++) deltas.push(stts.readUInt32BE(12 + 8 * i));
  const stss = boxes.get('stss');
  const keys = stss ? new Set(Array.from({ length: stss.readUInt32BE(4) }, (_, i) => stss.readUInt32BE(8 + 4 * i) - 1)) : undefined;
  const samples: Mp4Track['samples'] = [];
  let sample = 0;
  let time = 0;
  for (let c = 0; c < chunks.length; c++) {
    const entry = [...stscEntries].reverse().find((e) => e.first <= c + 1)!;
    let off = chunks[c]!;
    for (let k = 0; k < entry.per && sample < count; k++, sample++) {
      const size = sizes[sample]!;
      samples.push({ data: file.subarray(off, off + size), time: Math.round((time * 1000) / timescale), key: keys ? keys.has(sample) : true });
      off += size;
      time += deltas[sample] ?? 0;
    }
  }
  assert.equal(samples.length, count);
  return { hvcC, samples };
}

const exVideo = (frameType: number, packetType: number, ...rest: Buffer[]): Buffer =>
  Buffer.concat([Buffer.from([0x80 | (frameType << 4) | packetType]), ...rest]);

for (const name of ['hevc_426x240.mp4', 'hevc_main10_320x240.mp4']) {
  test(`TsMuxer: HEVC (${name}) from Enhanced RTMP hvc1 tags`, () => {
    const track = readMp4(name);
    const muxer = new TsMuxer({ videoCodec: 'hevc' });
    const parts = [muxer.startSegment(), muxer.pushVideo(0, exVideo(1, 0, Buffer.from('hvc1'), track.hvcC))];
    assert.equal(parts[1]!.length, 0, 'sequence start produces no packets');
    track.samples.forEach((s, i) => {
      // Alternate CodedFrames (with a zero composition time) and CodedFramesX.
      const payload = i % 2 === 0 ? exVideo(s.key ? 1 : 2, 1, Buffer.from('hvc1'), Buffer.from([0, 0, 0]), s.data) : exVideo(s.key ? 1 : 2, 3, Buffer.from('hvc1'), s.data);
      parts.push(muxer.pushVideo(s.time, payload));
    });
    parts.push(muxer.pushVideo(track.samples.at(-1)!.time, exVideo(1, 2, Buffer.from('hvc1'))));
    assert.equal(muxer.droppedFrames, 0, muxer.lastError?.message);
    const ts = Buffer.concat(parts);
    checkContinuity(parsePackets(ts));
    const file = join(tmp, name.replace('.mp4', '.ts'));
    writeFileSync(file, ts);
    const p = probe(file);
    assert.equal(p.streams.length, 1);
    const ref = probe(FIXTURES + name).streams[0]!;
    assert.equal(p.streams[0]!['codec_name'], 'hevc');
    assert.equal(p.streams[0]!['width'], ref['width']);
    assert.equal(p.streams[0]!['height'], ref['height']);
    assert.equal(p.streams[0]!['profile'], ref['profile']);
    assert.equal(p.packets.length, track.samples.length);
    assert.equal(decodeErrors(file), '');
    // The decoded frames are identical to decoding the mp4.
    const md5 = (f: string): string =>
      execFileSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', f, '-map', '0:v', '-f', 'md5', '-'], { encoding: 'utf8' }).trim();
    assert.equal(md5(file), md5(FIXTURES + name));
  });
}

test('TsMuxer: decoded H.264 frames are identical to decoding the FLV', () => {
  const name = 'h264_1920x1080_noaudio.flv';
  const file = join(tmp, 'h264_1080.ts');
  const muxer = new TsMuxer({ videoCodec: 'avc' });
  writeFileSync(file, mux(muxer, flvTags(name)));
  const md5 = (f: string): string =>
    execFileSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', f, '-map', '0:v', '-f', 'md5', '-'], { encoding: 'utf8' }).trim();
  assert.equal(md5(file), md5(FIXTURES + name));
  const p = probe(file);
  assert.deepEqual([p.streams[0]!['width'], p.streams[0]!['height']], [1920, 1080]);
});

// ---------------------------------------------------------------------------
// robustness
// ---------------------------------------------------------------------------

test('TsMuxer: frames before sequence headers, wrong codecs and lying NAL lengths are dropped, not thrown', () => {
  const tags = flvTags('h264_aac_320x240.flv');
  const key = tags.find((t) => t.type === FlvTagType.VIDEO && t.payload[0] === 0x17 && t.payload[1] === 1)!;
  const seq = tags.find((t) => t.type === FlvTagType.VIDEO && t.payload[1] === 0)!;
  const aac = tags.find((t) => t.type === FlvTagType.AUDIO && t.payload[1] === 1)!;
  const m = new TsMuxer({ videoCodec: 'avc', audio: true });
  assert.equal(m.pushVideo(0, key.payload).length, 0);
  assert.equal(m.droppedFrames, 1);
  assert.equal(m.lastError?.code, 'MPEGTS');
  assert.equal(m.pushAudio(0, aac.payload).length, 0);
  assert.equal(m.droppedFrames, 2);
  assert.equal(m.pushAudio(0, Buffer.from([0x2f, 0xff, 0xfb])).length, 0, 'MP3 refused');
  assert.equal(m.pushVideo(0, seq.payload).length, 0);
  assert.equal(m.hasVideoConfig, true);
  const lying = Buffer.from(key.payload);
  lying.writeUInt32BE(0x7fffffff, 5);
  assert.equal(m.pushVideo(0, lying).length, 0);
  assert.match(m.lastError?.message ?? '', /exceeds/);
  assert.equal(m.pushVideo(0, Buffer.from([0x1c, 1, 0, 0, 0, 0, 0, 0, 1, 0x26])).length, 0, 'HEVC into an AVC muxer');
  const before = m.droppedFrames;
  assert.equal(m.pushVideo(0, key.payload).length % TS_PACKET_SIZE, 0);
  assert.ok(m.pushVideo(0, key.payload).length > 0);
  assert.equal(m.droppedFrames, before);
});

test('TsMuxer: arbitrary payloads never throw and always give whole packets (property)', () => {
  const tags = flvTags('h264_aac_320x240.flv');
  const seqV = tags.find((t) => t.type === FlvTagType.VIDEO && t.payload[1] === 0)!.payload;
  const seqA = tags.find((t) => t.type === FlvTagType.AUDIO && t.payload[1] === 0)!.payload;
  const payload = fc.oneof(
    fc.uint8Array({ maxLength: 400 }).map((u) => Buffer.from(u)),
    fc.tuple(fc.constantFrom(0x17, 0x27, 0xaf, 0x9c, 0x1c), fc.integer({ min: 0, max: 2 }), fc.uint8Array({ maxLength: 400 })).map(([a, b, u]) => Buffer.concat([Buffer.from([a, b, 0, 0, 0]), Buffer.from(u)])),
    fc.tuple(fc.nat({ max: 300 }), fc.uint8Array({ maxLength: 300 })).map(([n, u]) => {
      const b = Buffer.concat([Buffer.from([0x17, 1, 0, 0, 0]), Buffer.alloc(4), Buffer.from(u)]);
      b.writeUInt32BE(n, 5);
      return b;
    }),
  );
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.boolean(), fc.nat({ max: 2 ** 32 - 1 }), payload), { maxLength: 20 }), (ops) => {
      const m = new TsMuxer({ videoCodec: 'avc', audio: true });
      m.pushVideo(0, seqV);
      m.pushAudio(0, seqA);
      const out = [m.startSegment()];
      for (const [video, ts, p] of ops) {
        const b = video ? m.pushVideo(ts, p) : m.pushAudio(ts, p);
        assert.equal(b.length % TS_PACKET_SIZE, 0);
        out.push(b);
      }
      checkContinuity(parsePackets(Buffer.concat(out)));
    }),
    { numRuns: 300 },
  );
});
