import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { packetizeVp9Frame, rtpPackets, vp9ConfigProfile, vp9KeyframeSize, vp9PayloadDescriptor, VP9_PICTURE_ID_MASK } from '../src/rtp/vp9-packetizer.ts';
import { parseRtp } from '../src/rtp/h264-depacketizer.ts';

/** A receiver's reading of an RFC 9628 payload descriptor (written from the RFC's figures, not from the packetiser). */
function readDescriptor(p: Buffer): { i: boolean; p: boolean; b: boolean; e: boolean; v: boolean; pictureId?: number; size?: { width: number; height: number }; length: number } {
  const f = p[0]!;
  let off = 1;
  let pictureId: number | undefined;
  if (f & 0x80) {
    if (p[off]! & 0x80) {
      pictureId = ((p[off]! & 0x7f) << 8) | p[off + 1]!;
      off += 2;
    } else {
      pictureId = p[off]! & 0x7f;
      off += 1;
    }
  }
  if (f & 0x20) off += f & 0x10 ? 1 : 2; // L: layer indices (+ TL0PICIDX in non-flexible mode)
  let size: { width: number; height: number } | undefined;
  if (f & 0x02) {
    const ss = p[off++]!;
    const layers = (ss >> 5) + 1;
    if (ss & 0x10) {
      size = { width: p.readUInt16BE(off), height: p.readUInt16BE(off + 2) };
      off += 4 * layers;
    }
    if (ss & 0x08) {
      const groups = p[off++]!;
      for (let g = 0; g < groups; g++) off += 1 + ((p[off]! >> 2) & 0x03);
    }
  }
  return { i: (f & 0x80) !== 0, p: (f & 0x40) !== 0, b: (f & 0x08) !== 0, e: (f & 0x04) !== 0, v: (f & 0x02) !== 0, pictureId, size, length: off };
}

/** A VP9 keyframe's uncompressed header, profile 0, BT.601, 320x240 (VP9 spec §6.2), then some bytes. */
const KEYFRAME_320x240 = Buffer.from([0x82, 0x49, 0x83, 0x42, 0x40, 0x13, 0xf0, 0x0e, 0xf0, 0x00, 0x11, 0x22]);

test('golden descriptor: a keyframe in one packet carries I, B, E, V and the scalability structure with its size', () => {
  const [p] = packetizeVp9Frame(Buffer.from([0xaa, 0xbb]), { pictureId: 0x1234, keyframe: true, size: { width: 320, height: 240 }, maxPayload: 1200 });
  assert.deepEqual([...p!], [0x8e, 0x92, 0x34, 0x10, 0x01, 0x40, 0x00, 0xf0, 0xaa, 0xbb]);
});

test('golden descriptor: an inter frame over three packets: P on all, B on the first, E on the last, no V', () => {
  const ps = packetizeVp9Frame(Buffer.alloc(10, 7), { pictureId: 0x8005, keyframe: false, maxPayload: 7 });
  assert.equal(ps.length, 3);
  assert.deepEqual([...ps[0]!.subarray(0, 3)], [0xc8, 0x80, 0x05], 'I|P|B, picture ID 5 (0x8005 masked to 15 bits)');
  assert.deepEqual([...ps[1]!.subarray(0, 3)], [0xc0, 0x80, 0x05]);
  assert.deepEqual([...ps[2]!.subarray(0, 3)], [0xc4, 0x80, 0x05]);
  assert.deepEqual(ps.map((p) => p.length), [7, 7, 5]);
});

test('a keyframe over several packets: the scalability structure only in the first', () => {
  const ps = packetizeVp9Frame(Buffer.alloc(30, 1), { pictureId: 1, keyframe: true, size: { width: 1920, height: 1080 }, maxPayload: 12 });
  const d = ps.map(readDescriptor);
  assert.deepEqual(d[0]!.size, { width: 1920, height: 1080 });
  assert.ok(d.slice(1).every((x) => !x.v && !x.p));
  assert.deepEqual([...ps[0]!.subarray(0, 4)], [0x8a, 0x80, 0x01, 0x10]);
});

test('a keyframe of unknown size: no scalability structure', () => {
  const [p] = packetizeVp9Frame(Buffer.from([1]), { pictureId: 0, keyframe: true, maxPayload: 1200 });
  assert.deepEqual([...p!], [0x8c, 0x80, 0x00, 0x01]);
});

test('an empty frame gives no packets; a maxPayload with no room for data is refused', () => {
  assert.deepEqual(packetizeVp9Frame(Buffer.alloc(0), { pictureId: 0, keyframe: false, maxPayload: 1200 }), []);
  assert.throws(() => packetizeVp9Frame(Buffer.from([1]), { pictureId: 0, keyframe: true, size: { width: 1, height: 1 }, maxPayload: 8 }), RangeError);
});

test('property: payloads reassemble to the frame; B on the first only, E on the last only; sizes within maxPayload; picture ID is the 15-bit one', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 1, maxLength: 5000 }),
      fc.integer({ min: 0, max: 0xffffff }),
      fc.boolean(),
      fc.integer({ min: 9, max: 1500 }),
      fc.option(fc.record({ width: fc.integer({ min: 1, max: 65535 }), height: fc.integer({ min: 1, max: 65535 }) }), { nil: undefined }),
      (bytes, pictureId, keyframe, maxPayload, size) => {
        const frame = Buffer.from(bytes);
        const ps = packetizeVp9Frame(frame, { pictureId, keyframe, size, maxPayload });
        assert.ok(ps.length >= 1);
        const parts: Buffer[] = [];
        ps.forEach((p, i) => {
          assert.ok(p.length <= maxPayload, `packet ${i}: ${p.length} > ${maxPayload}`);
          const d = readDescriptor(p);
          assert.equal(d.i, true);
          assert.equal(d.p, !keyframe);
          assert.equal(d.b, i === 0);
          assert.equal(d.e, i === ps.length - 1);
          assert.equal(d.pictureId, pictureId & 0x7fff);
          assert.equal(d.v, keyframe && i === 0 && size !== undefined);
          if (d.v) assert.deepEqual(d.size, { width: size!.width, height: size!.height });
          assert.ok(p.length > d.length, 'every packet carries frame bytes');
          parts.push(p.subarray(d.length));
        });
        assert.deepEqual(Buffer.concat(parts), frame);
      },
    ),
  );
});

test('property: picture IDs wrap at 15 bits', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 }), (n) => {
      const a = readDescriptor(vp9PayloadDescriptor({ pictureId: n, keyframe: false, start: true, end: true }));
      const b = readDescriptor(vp9PayloadDescriptor({ pictureId: n + 1, keyframe: false, start: true, end: true }));
      assert.equal(b.pictureId, (a.pictureId! + 1) & VP9_PICTURE_ID_MASK);
    }),
  );
  assert.equal(readDescriptor(vp9PayloadDescriptor({ pictureId: 0x7fff, keyframe: false, start: true, end: true })).pictureId, 0x7fff);
  assert.equal(readDescriptor(vp9PayloadDescriptor({ pictureId: 0x8000, keyframe: false, start: true, end: true })).pictureId, 0);
});

test('rtpPackets: consecutive sequence numbers (wrapping), one timestamp, the marker on the last only', () => {
  const pkts = rtpPackets([Buffer.from([1]), Buffer.from([2, 3]), Buffer.from([4])], { payloadType: 98, ssrc: 0xdeadbeef, timestamp: 0xfffffff0, sequence: 0xfffe });
  const parsed = pkts.map((p) => parseRtp(p)!);
  assert.deepEqual(parsed.map((p) => p.sequence), [0xfffe, 0xffff, 0]);
  assert.deepEqual(parsed.map((p) => p.marker), [false, false, true]);
  assert.ok(parsed.every((p) => p.timestamp === 0xfffffff0 && p.ssrc === 0xdeadbeef && p.payloadType === 98));
  assert.deepEqual(parsed.map((p) => [...p.payload]), [[1], [2, 3], [4]]);
});

test('vp9KeyframeSize: the size of a keyframe; nothing for an inter frame, a shown existing frame or a truncated header', () => {
  assert.deepEqual(vp9KeyframeSize(KEYFRAME_320x240), { width: 320, height: 240 });
  const inter = Buffer.from(KEYFRAME_320x240);
  inter[0] = 0x86; // frame_type 1
  assert.equal(vp9KeyframeSize(inter), undefined);
  assert.equal(vp9KeyframeSize(Buffer.from([0x88])), undefined, 'show_existing_frame');
  assert.equal(vp9KeyframeSize(Buffer.from([0x82, 0x49, 0x83, 0x42, 0x00])), undefined, 'truncated');
  assert.equal(vp9KeyframeSize(Buffer.from([0x42, 0x49, 0x83, 0x42, 0x40, 0x13, 0xf0, 0x0e, 0xf0])), undefined, 'no frame marker');
  // Profile 1 (4:4:4): color_range and subsampling_x/y + reserved_zero before the size.
  // bits: 10 1 0 0 0 1 0 | sync code | 010 0 0 0 0 | 319 in 16 bits | 239 in 16 bits
  const profile1 = Buffer.from([0xa2, 0x49, 0x83, 0x42, 0x40, 0x02, 0x7e, 0x01, 0xde]);
  assert.deepEqual(vp9KeyframeSize(profile1), { width: 320, height: 240 });
});

test('property: vp9KeyframeSize never throws on any bytes', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 40 }), (b) => {
      const s = vp9KeyframeSize(Buffer.from(b));
      if (s) assert.ok(s.width >= 1 && s.height >= 1);
    }),
  );
});

test('vp9ConfigProfile: the profile byte after the vpcC version and flags', () => {
  assert.equal(vp9ConfigProfile(Buffer.from([0x01, 0, 0, 0, 0x02, 0x0a, 0xa0])), 2);
  assert.equal(vp9ConfigProfile(Buffer.from([0x01, 0, 0, 0])), undefined);
});
