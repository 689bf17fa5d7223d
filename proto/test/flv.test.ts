import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { FlvError } from '../src/errors.ts';
import {
  FlvDecoder,
  FlvTagType,
  encodeFlvHeader,
  encodeFlvTag,
  type FlvTag,
} from '../src/flv.ts';
import { isAudioSequenceHeader, isVideoSequenceHeader, classifyVideoTag } from '../src/codec.ts';

const FIXTURES = fileURLToPath(new URL('../../tests/fixtures/flv/', import.meta.url));
const FLV_FIXTURES = ['h264_aac_320x240.flv', 'h264_aac_1280x720_mono48k.flv', 'h264_1920x1080_noaudio.flv'];

function fixture(name: string): Buffer {
  return readFileSync(FIXTURES + name);
}

interface ProbePacket {
  codec_type: 'video' | 'audio';
  dts: number;
  pts: number;
  size: number;
  pos: number;
  flags: string;
}

function probePackets(name: string): ProbePacket[] {
  const out = execFileSync('ffprobe', ['-v', 'error', '-show_packets', '-of', 'json', FIXTURES + name], { encoding: 'utf8' });
  const json = JSON.parse(out) as { packets: Array<Record<string, string | number>> };
  return json.packets.map((p) => ({
    codec_type: p['codec_type'] as 'video' | 'audio',
    dts: Number(p['dts']),
    pts: Number(p['pts']),
    size: Number(p['size']),
    pos: Number(p['pos']),
    flags: String(p['flags']),
  }));
}

function decodeAll(data: Buffer, splits: number[] = []): { tags: FlvTag[]; error?: FlvError; dec: FlvDecoder } {
  const dec = new FlvDecoder();
  const tags: FlvTag[] = [];
  let prev = 0;
  for (const cut of [...splits, data.length]) {
    const r = dec.push(data.subarray(prev, cut));
    prev = cut;
    if (r instanceof FlvError) return { tags, error: r, dec };
    tags.push(...r);
  }
  return { tags, dec };
}

function decodeOk(data: Buffer): FlvTag[] {
  const r = decodeAll(data);
  assert.equal(r.error, undefined, r.error?.message);
  return r.tags;
}

function sameTags(a: FlvTag[], b: FlvTag[]): void {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    assert.equal(x.type, y.type, `tag ${i} type`);
    assert.equal(x.timestamp, y.timestamp, `tag ${i} timestamp`);
    assert.equal(x.streamId, y.streamId, `tag ${i} streamId`);
    assert.ok(x.payload.equals(y.payload), `tag ${i} payload`);
  }
}

for (const name of FLV_FIXTURES) {
  test(`FlvDecoder: ${name} matches ffprobe packets`, () => {
    const data = fixture(name);
    const { tags, dec } = decodeAll(data);
    const packets = probePackets(name);
    const hasAudio = packets.some((p) => p.codec_type === 'audio');
    assert.deepEqual(dec.header, { audio: hasAudio, video: true });
    assert.equal(dec.bufferedBytes, 0);

    // Walk the tags with their file offsets.
    let pos = 13;
    const media: Array<{ tag: FlvTag; pos: number }> = [];
    let script = 0;
    let seqHeaders = 0;
    let ends = 0;
    for (const tag of tags) {
      assert.equal(tag.streamId, 0);
      if (tag.type === FlvTagType.SCRIPT) script++;
      else if (tag.type === FlvTagType.VIDEO && isVideoSequenceHeader(tag.payload)) seqHeaders++;
      else if (tag.type === FlvTagType.AUDIO && isAudioSequenceHeader(tag.payload)) seqHeaders++;
      else if (tag.type === FlvTagType.VIDEO && (tag.payload[1] ?? 0) === 2) ends++;
      else media.push({ tag, pos });
      pos += 11 + tag.payload.length + 4;
    }
    assert.equal(pos, data.length, 'tags cover the whole file');
    assert.equal(script, 1, 'onMetaData');
    assert.equal(seqHeaders, hasAudio ? 2 : 1);
    assert.equal(ends, 1, 'AVC end of sequence');
    assert.equal(media.length, packets.length, 'one tag per ffprobe packet');

    for (let i = 0; i < packets.length; i++) {
      const p = packets[i]!;
      const { tag, pos: tagPos } = media[i]!;
      assert.equal(tag.type, p.codec_type === 'video' ? FlvTagType.VIDEO : FlvTagType.AUDIO, `packet ${i} type`);
      assert.equal(tag.timestamp, p.dts, `packet ${i} timestamp`);
      assert.equal(tagPos, p.pos, `packet ${i} position`);
      // ffprobe counts the codec data only: 5 header bytes for AVC, 2 for AAC.
      assert.equal(tag.payload.length - (tag.type === FlvTagType.VIDEO ? 5 : 2), p.size, `packet ${i} size`);
      if (tag.type === FlvTagType.VIDEO) {
        const info = classifyVideoTag(tag.payload);
        assert.ok(!(info instanceof Error));
        assert.equal(tag.timestamp + info.compositionTime, p.pts, `packet ${i} pts`);
      }
    }
  });

  test(`FlvDecoder: ${name} re-encodes byte for byte`, () => {
    const data = fixture(name);
    const { tags, dec } = decodeAll(data);
    const header = dec.header;
    assert.ok(header);
    const parts = [encodeFlvHeader(header), ...tags.map((t) => encodeFlvTag(t.type, t.timestamp, t.payload))];
    const again = Buffer.concat(parts);
    assert.equal(again.length, data.length);
    assert.ok(again.equals(data));
  });
}

test('FlvDecoder: any split of a fixture gives the same tags', () => {
  const data = fixture('h264_aac_320x240.flv');
  const whole = decodeOk(data);
  fc.assert(
    fc.property(fc.uniqueArray(fc.integer({ min: 0, max: data.length }), { maxLength: 40 }), (cuts) => {
      cuts.sort((a, b) => a - b);
      const r = decodeAll(data, cuts);
      assert.equal(r.error, undefined);
      sameTags(r.tags, whole);
      assert.equal(r.dec.bufferedBytes, 0);
    }),
    { numRuns: 200 },
  );
});

test('FlvDecoder: byte-by-byte feeding gives the same tags', () => {
  const data = fixture('h264_aac_1280x720_mono48k.flv');
  const whole = decodeOk(data);
  const splits = Array.from({ length: data.length - 1 }, (_, i) => i + 1);
  const r = decodeAll(data, splits);
  assert.equal(r.error, undefined);
  sameTags(r.tags, whole);
});

test('FlvDecoder: payloads of tags inside one chunk are views, tags across chunks are copies', () => {
  const data = fixture('h264_aac_320x240.flv');
  const tags = decodeOk(data);
  const first = tags[0]!;
  assert.ok(first.payload.buffer === data.buffer);
  const dec = new FlvDecoder();
  // Cut inside the first tag's payload (which starts at byte 24).
  const a = dec.push(data.subarray(0, 30));
  assert.ok(Array.isArray(a) && a.length === 0);
  assert.equal(dec.bufferedBytes, 6);
  const b = dec.push(data.subarray(30));
  assert.ok(Array.isArray(b));
  assert.ok(b[0]!.payload.equals(first.payload));
  // Which payloads alias the input shows when the input is overwritten. (Comparing
  // ArrayBuffers would not: Node 24 serves small buffers, copies included, from a 64 KiB pool.)
  const firstCopy = Buffer.from(first.payload);
  const secondLength = b[1]!.payload.length;
  data.fill(0);
  assert.ok(b[0]!.payload.equals(firstCopy), 'the tag cut across two pushes is a copy');
  assert.ok(secondLength > 0 && b[1]!.payload.every((x) => x === 0), 'a tag inside one push is a view');
});

/** Arbitrary but well-formed FLV streams. */
const tagArb = fc.record({
  type: fc.constantFrom(8, 9, 18),
  timestamp: fc.nat({ max: 0xffffffff }),
  payload: fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)),
});

test('encodeFlvTag/FlvDecoder round-trip arbitrary tags, any split (property)', () => {
  fc.assert(
    fc.property(
      fc.array(tagArb, { maxLength: 12 }),
      fc.boolean(),
      fc.boolean(),
      fc.array(fc.nat(), { maxLength: 10 }),
      (tags, audio, video, rawCuts) => {
        const data = Buffer.concat([encodeFlvHeader({ audio, video }), ...tags.map((t) => encodeFlvTag(t.type, t.timestamp, t.payload))]);
        const cuts = [...new Set(rawCuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
        const r = decodeAll(data, cuts);
        assert.equal(r.error, undefined);
        assert.deepEqual(r.dec.header, { audio, video });
        sameTags(
          r.tags,
          tags.map((t) => ({ ...t, streamId: 0 })),
        );
      },
    ),
    { numRuns: 300 },
  );
});

test('encodeFlvTag: layout, extended timestamp, one exact allocation', () => {
  const payload = Buffer.from([1, 2, 3, 4, 5]);
  const t = encodeFlvTag(FlvTagType.VIDEO, 0x12345678, payload);
  assert.equal(t.length, 11 + 5 + 4);
  assert.deepEqual([...t.subarray(0, 11)], [9, 0, 0, 5, 0x34, 0x56, 0x78, 0x12, 0, 0, 0]);
  assert.deepEqual([...t.subarray(11, 16)], [1, 2, 3, 4, 5]);
  assert.equal(t.readUInt32BE(16), 16);
  // Timestamps wrap modulo 2^32 like the wire format.
  const w = encodeFlvTag(FlvTagType.AUDIO, 2 ** 32 + 7, Buffer.alloc(0));
  assert.deepEqual([...w], [8, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 11]);
  assert.throws(() => encodeFlvTag(9, 0, Buffer.alloc(0x1000000)), RangeError);
});

test('encodeFlvHeader: flags and PreviousTagSize0', () => {
  assert.deepEqual([...encodeFlvHeader({ audio: true, video: true })], [0x46, 0x4c, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0]);
  assert.equal(encodeFlvHeader({ audio: true, video: false })[4], 4);
  assert.equal(encodeFlvHeader({ audio: false, video: true })[4], 1);
  assert.equal(encodeFlvHeader({ audio: false, video: false })[4], 0);
});

test('FlvDecoder: header with extra bytes before PreviousTagSize0 is skipped', () => {
  const hdr = Buffer.from([0x46, 0x4c, 0x56, 1, 1, 0, 0, 0, 12, 0xaa, 0xbb, 0xcc, 0, 0, 0, 0]);
  const tag = encodeFlvTag(9, 40, Buffer.from([0x17, 1, 0, 0, 0]));
  const r = decodeAll(Buffer.concat([hdr, tag]), [10]);
  assert.equal(r.error, undefined);
  assert.equal(r.tags.length, 1);
  assert.equal(r.tags[0]!.timestamp, 40);
});

test('FlvDecoder: malformed input returns typed errors and stays failed', () => {
  const bad = new FlvDecoder().push(Buffer.from('FLX\x01\x05\x00\x00\x00\x09', 'latin1'));
  assert.ok(bad instanceof FlvError);
  assert.equal(bad.code, 'FLV_HEADER');

  const ver = new FlvDecoder().push(Buffer.from([0x46, 0x4c, 0x56, 2, 5, 0, 0, 0, 9]));
  assert.ok(ver instanceof FlvError && ver.code === 'FLV_HEADER');

  const off = new FlvDecoder().push(Buffer.from([0x46, 0x4c, 0x56, 1, 5, 0, 0, 0, 8]));
  assert.ok(off instanceof FlvError && off.code === 'FLV_HEADER');

  const hdr = encodeFlvHeader({ audio: true, video: true });
  const dec = new FlvDecoder();
  const unknown = dec.push(Buffer.concat([hdr, Buffer.from([7, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff])]));
  assert.ok(unknown instanceof FlvError);
  assert.equal(unknown.code, 'FLV_TAG');
  // Poisoned: the same error again, even for valid data.
  assert.equal(dec.push(encodeFlvTag(9, 0, Buffer.from([0x17]))), unknown);
  assert.equal(dec.failure, unknown);

  const enc = new FlvDecoder().push(Buffer.concat([hdr, Buffer.from([0x29, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff])]));
  assert.ok(enc instanceof FlvError && enc.code === 'FLV_TAG');

  const limited = new FlvDecoder({ maxTagSize: 100 });
  const long = limited.push(Buffer.concat([hdr, encodeFlvTag(9, 0, Buffer.alloc(101))]));
  assert.ok(long instanceof FlvError && long.code === 'FLV_TOO_LONG');
  const okLimited = new FlvDecoder({ maxTagSize: 100 }).push(Buffer.concat([hdr, encodeFlvTag(9, 0, Buffer.alloc(100))]));
  assert.ok(Array.isArray(okLimited) && okLimited.length === 1);
});

test('FlvDecoder: a lying 16 MB DataSize does not allocate or emit until the bytes exist', () => {
  const dec = new FlvDecoder();
  const hdr = encodeFlvHeader({ audio: false, video: true });
  const r = dec.push(Buffer.concat([hdr, Buffer.from([9, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(10)]));
  assert.ok(Array.isArray(r) && r.length === 0);
  assert.equal(dec.bufferedBytes, 10);
});

test('FlvDecoder: garbage never throws; any split agrees with byte-by-byte decoding (property)', () => {
  const hdr = encodeFlvHeader({ audio: true, video: true });
  const input = fc.oneof(
    fc.uint8Array({ maxLength: 400 }).map((u) => Buffer.from(u)),
    // Valid header followed by garbage: exercises the tag parser.
    fc.uint8Array({ maxLength: 400 }).map((u) => Buffer.concat([hdr, Buffer.from(u)])),
    // Valid tags with random bytes flipped.
    fc
      .tuple(fc.array(tagArb, { maxLength: 5 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }))
      .map(([tags, flips]) => {
        const b = Buffer.concat([hdr, ...tags.map((t) => encodeFlvTag(t.type, t.timestamp, t.payload))]);
        for (const [i, v] of flips) if (b.length > 0) b[i % b.length] = v;
        return b;
      }),
  );
  fc.assert(
    fc.property(input, fc.array(fc.nat(), { maxLength: 8 }), fc.nat({ max: 200 }), (data, rawCuts, limit) => {
      const cuts = [...new Set(rawCuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
      const limits = { maxTagSize: limit };
      const run = (splits: number[]): { tags: FlvTag[]; error?: FlvError } => {
        const dec = new FlvDecoder(limits);
        const tags: FlvTag[] = [];
        let prev = 0;
        for (const cut of [...splits, data.length]) {
          const r = dec.push(data.subarray(prev, cut));
          prev = cut;
          if (r instanceof FlvError) return { tags, error: r };
          assert.ok(Array.isArray(r));
          tags.push(...r);
        }
        return { tags };
      };
      const split = run(cuts);
      const bytewise = run(Array.from({ length: Math.max(0, data.length - 1) }, (_, i) => i + 1));
      assert.equal(split.error?.code, bytewise.error?.code);
      // Tags completed before an error in the same push are dropped, so the
      // split result is a prefix of the byte-by-byte one (equal without error).
      if (!split.error) assert.equal(split.tags.length, bytewise.tags.length);
      assert.ok(split.tags.length <= bytewise.tags.length);
      sameTags(split.tags, bytewise.tags.slice(0, split.tags.length));
      for (const t of bytewise.tags) assert.ok(t.payload.length <= limit);
    }),
    { numRuns: 500 },
  );
});
