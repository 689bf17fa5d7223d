import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { OggOpusReader } from '../src/rtp/ogg.ts';
import { advertiseCandidates, av1TemporalUnit, avccAccessUnit, chooseH264, hasCompositionOffset, parseSdpOffer, profileLevelId, rtcpKeyframeRequests } from '../src/rtp/webrtc.ts';

/** The video m-section of a Chromium recvonly offer (payload types as Chromium 1xx numbers them), trimmed. */
const CHROMIUM_OFFER = [
  'v=0',
  'o=- 1 2 IN IP4 127.0.0.1',
  's=-',
  't=0 0',
  'a=group:BUNDLE 0 1',
  'm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40',
  'c=IN IP4 0.0.0.0',
  'a=mid:0',
  'a=recvonly',
  'a=rtpmap:96 VP8/90000',
  'a=rtpmap:97 rtx/90000',
  'a=fmtp:97 apt=96',
  'a=rtpmap:102 H264/90000',
  'a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f',
  'a=rtpmap:104 H264/90000',
  'a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f',
  'a=rtpmap:106 H264/90000',
  'a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f',
  'a=rtpmap:108 H264/90000',
  'a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f',
  'a=rtpmap:127 H264/90000',
  'a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f',
  'a=rtpmap:39 H264/90000',
  'a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111',
  'a=mid:1',
  'a=recvonly',
  'a=rtpmap:111 opus/48000/2',
  'a=fmtp:111 minptime=10;useinbandfec=1',
  '',
].join('\r\n');

test('an offer is read into m-sections with their payload types in offer order', () => {
  const media = parseSdpOffer(CHROMIUM_OFFER);
  assert.deepEqual(media.map((m) => [m.kind, m.mid, m.direction]), [['video', '0', 'recvonly'], ['audio', '1', 'recvonly']]);
  assert.deepEqual(media[0]!.formats.map((f) => f.pt), [96, 97, 102, 104, 106, 108, 127, 39]);
  assert.equal(media[1]!.formats[0]!.codec, 'opus');
  assert.equal(media[1]!.formats[0]!.clockRate, 48000);
});

test('H.264 is answered with packetization-mode 1, the stream\'s profile first, else constrained baseline', () => {
  const video = parseSdpOffer(CHROMIUM_OFFER)[0]!;
  assert.equal(chooseH264(video, '64001f')?.pt, 39, 'High stream → the offered High format');
  assert.equal(chooseH264(video, '4d0029')?.pt, 127, 'Main stream → Main');
  assert.equal(chooseH264(video, '42c01e')?.pt, 102, 'baseline: the first 42 with mode 1');
  assert.equal(chooseH264(video, 'f40032')?.pt, 106, 'an unoffered profile → constrained baseline 42e0');
  const modeZeroOnly = { ...video, formats: video.formats.filter((f) => !f.fmtp.includes('packetization-mode=1')) };
  assert.equal(chooseH264(modeZeroOnly, '42e01f'), undefined, 'single-NAL mode alone is not usable');
});

test('profile-level-id is the SPS\'s profile, constraints and level', () => {
  assert.equal(profileLevelId(Buffer.from([0x67, 0x64, 0x00, 0x1f, 0xac])), '64001f');
  assert.throws(() => profileLevelId(Buffer.from([0x67, 0x42])), RangeError);
});

/** NAL units as an AVCC access unit with `size`-byte lengths. */
function avcc(nals: Buffer[], size: number): Buffer {
  return Buffer.concat(nals.flatMap((n) => {
    const len = Buffer.alloc(size);
    len.writeUIntBE(n.length, 0, size);
    return [len, n];
  }));
}

/** 4-byte length-prefixed NAL units back into a list. */
function split4(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < buf.length; ) {
    const len = buf.readUInt32BE(off);
    out.push(buf.subarray(off + 4, off + 4 + len));
    off += 4 + len;
  }
  return out;
}

test('an access unit keeps its NAL units, 4-byte lengths whatever the source used, SPS/PPS in front of an IDR (fast-check)', () => {
  const nal = fc.uint8Array({ minLength: 1, maxLength: 300 }).map((a) => {
    const b = Buffer.from(a);
    b[0] = (b[0]! & 0xe0) | 1 + (b[0]! % 6); // slice types 1..6, never a parameter set
    return b;
  });
  fc.assert(
    fc.property(fc.array(nal, { minLength: 1, maxLength: 8 }), fc.constantFrom(2, 4), fc.boolean(), (nals, size, idr) => {
      const sps = Buffer.from([0x67, 0x42, 0xe0, 0x1f]);
      const pps = Buffer.from([0x68, 0xce, 0x3c, 0x80]);
      const out = avccAccessUnit(avcc(nals, size), size, idr ? [sps, pps] : undefined);
      assert.deepEqual(split4(out), idr ? [sps, pps, ...nals] : nals);
    }),
  );
});

test('parameter sets inside an IDR are replaced by the configured ones, not sent twice', () => {
  const sps = Buffer.from([0x67, 1]);
  const pps = Buffer.from([0x68, 2]);
  const idr = Buffer.from([0x65, 3, 4]);
  const out = avccAccessUnit(avcc([Buffer.from([0x67, 9]), Buffer.from([0x68, 9]), idr], 4), 4, [sps, pps]);
  assert.deepEqual(split4(out), [sps, pps, idr]);
});

test('B-frames are seen in the composition time of AVC and enhanced coded frames only', () => {
  assert.equal(hasCompositionOffset(Buffer.from([0x17, 1, 0, 0, 0x50, 0, 0, 0, 1])), true);
  assert.equal(hasCompositionOffset(Buffer.from([0x27, 1, 0, 0, 0, 0, 0, 0, 1])), false);
  assert.equal(hasCompositionOffset(Buffer.from([0x17, 0, 0, 0, 0x50])), false, 'a sequence header is not a frame');
  assert.equal(hasCompositionOffset(Buffer.from([0x91, 0x68, 0x76, 0x63, 0x31, 0, 0, 0x21])), true, 'enhanced hvc1 CodedFrames');
  assert.equal(hasCompositionOffset(Buffer.from([0x93, 0x68, 0x76, 0x63, 0x31, 0, 0, 0x21])), false, 'enhanced CodedFramesX has none');
  assert.equal(hasCompositionOffset(Buffer.from([0x91, 0x61, 0x76, 0x30, 0x31, 0x12, 0x00, 0x32, 0x02])), false, 'AV1 CodedFrames: OBUs follow the FourCC, no composition time');
  assert.equal(hasCompositionOffset(Buffer.from([0x91, 0x76, 0x70, 0x30, 0x39, 0x82, 0x49, 0x83])), false, 'VP9 CodedFrames: no composition time');
});

test('AV1 temporal units lose their temporal delimiters and get the sequence header on a keyframe', () => {
  const td = Buffer.from([0x12, 0x00]);
  const seq = Buffer.from([0x0a, 0x03, 1, 2, 3]);
  const frame = Buffer.from([0x32, 0x02, 7, 8]); // OBU_FRAME with a 2-byte body
  const frameExt = Buffer.from([0x36, 0x00, 0x01, 9]); // with an extension byte
  assert.deepEqual(av1TemporalUnit(Buffer.concat([td, frame])), frame);
  assert.deepEqual(av1TemporalUnit(Buffer.concat([td, frame]), seq), Buffer.concat([seq, frame]), 'a keyframe without its own sequence header gets the configured one');
  assert.deepEqual(av1TemporalUnit(Buffer.concat([td, seq, frame]), Buffer.from([0x0a, 0x00])), Buffer.concat([seq, frame]), 'one it carries is not doubled');
  assert.deepEqual(av1TemporalUnit(Buffer.concat([frame, frameExt])), Buffer.concat([frame, frameExt]));
  assert.deepEqual(av1TemporalUnit(Buffer.concat([frame, Buffer.from([0x32, 0x09, 1])])), frame, 'a truncated OBU ends the unit');
  assert.equal(av1TemporalUnit(td, seq).length, 0, 'nothing but a delimiter: nothing to send');
});

test('HEVC parameter sets inside an IDR are replaced by the configured ones; an IDR_N_LP is kept', () => {
  const vps = Buffer.from([0x40, 1, 1]);
  const sps = Buffer.from([0x42, 1, 2]);
  const pps = Buffer.from([0x44, 1, 3]);
  const idrNLp = Buffer.from([0x28, 1, 4]); // type 20: an H.264 reading of its first byte (& 0x1f = 8) would call it a PPS
  const out = avccAccessUnit(avcc([Buffer.from([0x42, 1, 9]), idrNLp], 4), 4, [vps, sps, pps], 'hevc');
  assert.deepEqual(split4(out), [vps, sps, pps, idrNLp]);
});

test('PLI and FIR are found in a compound RTCP packet; other feedback is not', () => {
  const rr = Buffer.from([0x80, 201, 0, 1, 0, 0, 0, 1]);
  const pli = Buffer.from([0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
  const fir = Buffer.from([0x84, 206, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0]);
  const nack = Buffer.from([0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 5, 0, 0]);
  assert.deepEqual(rtcpKeyframeRequests(Buffer.concat([rr, pli])), ['pli']);
  assert.deepEqual(rtcpKeyframeRequests(Buffer.concat([rr, nack, fir])), ['fir']);
  assert.deepEqual(rtcpKeyframeRequests(Buffer.concat([rr, nack])), []);
  assert.deepEqual(rtcpKeyframeRequests(pli.subarray(0, 6)), [], 'a truncated packet is not read past its end');
});

test('the answer advertises only the node\'s own addresses on its one UDP port, in every m-section', () => {
  const answer = ['v=0', 'm=video 9 UDP/TLS/RTP/SAVPF 102', 'a=mid:0', 'a=candidate:1 1 UDP 2122317823 172.17.0.5 40000 typ host', 'a=end-of-candidates', 'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:1', ''].join('\r\n');
  const out = advertiseCandidates(answer, ['203.0.113.7', '10.0.0.2'], 8189);
  assert.ok(!out.includes('172.17.0.5'), 'the container address is gone');
  const cands = out.split('\r\n').filter((l) => l.startsWith('a=candidate:'));
  assert.equal(cands.length, 4);
  assert.ok(cands.every((c) => / (203\.0\.113\.7|10\.0\.0\.2) 8189 typ host$/.test(c)));
});

/** Ogg pages (RFC 3533) holding `packets`, at most `perPage` lacing values a page, a packet continued across pages where it falls. */
function oggPages(packets: Buffer[], perPage: number): Buffer {
  const lacing: number[] = [];
  const bodies: Buffer[] = [];
  for (const p of packets) {
    let n = p.length;
    while (n >= 255) {
      lacing.push(255);
      n -= 255;
    }
    lacing.push(n);
    bodies.push(p);
  }
  const body = Buffer.concat(bodies);
  const pages: Buffer[] = [];
  let off = 0;
  let continued = false;
  for (let i = 0; i < lacing.length; i += perPage) {
    const seg = lacing.slice(i, i + perPage);
    const len = seg.reduce((a, b) => a + b, 0);
    const head = Buffer.alloc(27);
    head.write('OggS', 0, 'latin1');
    head[5] = continued ? 1 : 0;
    head[26] = seg.length;
    pages.push(head, Buffer.from(seg), body.subarray(off, off + len));
    off += len;
    continued = seg[seg.length - 1] === 255;
  }
  return Buffer.concat(pages);
}

test('Ogg Opus: packets come out whole and in order however the pipe splits the bytes; the headers are left out (fast-check)', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 700 }).map((a) => Buffer.from(a)), { minLength: 1, maxLength: 6 }),
      fc.integer({ min: 1, max: 4 }),
      fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 20 }),
      (packets, perPage, cuts) => {
        const head = Buffer.concat([Buffer.from('OpusHead', 'latin1'), Buffer.alloc(11)]);
        const tags = Buffer.concat([Buffer.from('OpusTags', 'latin1'), Buffer.alloc(8)]);
        const stream = oggPages([head, tags, ...packets], perPage);
        const reader = new OggOpusReader();
        const got: Buffer[] = [];
        let off = 0;
        for (let i = 0; off < stream.length; i++) {
          const n = cuts[i % cuts.length]!;
          got.push(...reader.push(stream.subarray(off, off + n)));
          off += n;
        }
        assert.deepEqual(got, packets);
      },
    ),
  );
});
