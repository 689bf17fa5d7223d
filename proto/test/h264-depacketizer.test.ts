import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { H264Depacketizer, RtpClock, avcDecoderConfig, flvAvcFrame, flvAvcSequenceHeader, parseRtp, type RtpPacket } from '../src/rtp/h264-depacketizer.ts';
import { OggOpusReader } from '../src/rtp/ogg.ts';
import { OggOpusWriter, oggCrc, opusPacketSamples } from '../src/rtp/ogg-writer.ts';
import { AdtsReader, adtsAudioSpecificConfig, flvAacSequenceHeader } from '../src/rtp/adts.ts';
import { classifyVideoTag, parseAvcDecoderConfig, parseAacAudioSpecificConfig } from '../src/codec.ts';
import { CodecConfigError } from '../src/errors.ts';

/** How one NAL unit is carried: alone, aggregated with the next ones (STAP-A), or cut into FU-A pieces of a size. */
type Carry = { kind: 'single' } | { kind: 'stap'; count: number } | { kind: 'fu'; piece: number };

/** A reference packetiser (RFC 6184 mode 1), written from the RFC independently of the depacketiser. */
function packetize(nals: Buffer[], carries: Carry[], ts: number, seq0: number): RtpPacket[] {
  const payloads: Buffer[] = [];
  for (let i = 0, c = 0; i < nals.length; c++) {
    const carry = carries[c % carries.length]!;
    const nal = nals[i]!;
    if (carry.kind === 'stap' && carry.count > 1) {
      const group = nals.slice(i, i + carry.count);
      const parts: Buffer[] = [Buffer.from([(group[0]![0]! & 0xe0) | 24])];
      for (const n of group) parts.push(Buffer.from([n.length >> 8, n.length & 0xff]), n);
      payloads.push(Buffer.concat(parts));
      i += group.length;
    } else if (carry.kind === 'fu' && nal.length > 2) {
      const body = nal.subarray(1);
      const piece = Math.max(1, Math.min(carry.piece, body.length));
      for (let off = 0; off < body.length; off += piece) {
        const start = off === 0;
        const end = off + piece >= body.length;
        payloads.push(Buffer.concat([Buffer.from([(nal[0]! & 0xe0) | 28, (start ? 0x80 : 0) | (end ? 0x40 : 0) | (nal[0]! & 0x1f)]), body.subarray(off, off + piece)]));
      }
      i++;
    } else {
      payloads.push(nal);
      i++;
    }
  }
  return payloads.map((payload, k) => ({ payloadType: 102, sequence: (seq0 + k) & 0xffff, timestamp: ts, ssrc: 1, marker: k === payloads.length - 1, payload }));
}

const nalArb = fc.tuple(fc.constantFrom(1, 5, 6, 7, 8), fc.uint8Array({ minLength: 1, maxLength: 3000 })).map(([type, body]) => Buffer.concat([Buffer.from([0x60 | type]), Buffer.from(body)]));
const carryArb: fc.Arbitrary<Carry> = fc.oneof(
  fc.constant<Carry>({ kind: 'single' }),
  fc.integer({ min: 2, max: 4 }).map((count): Carry => ({ kind: 'stap', count })),
  fc.integer({ min: 1, max: 1400 }).map((piece): Carry => ({ kind: 'fu', piece })),
);

test('any access unit, cut any way into single NAL, STAP-A and FU-A packets, comes back whole and in order', () => {
  fc.assert(
    fc.property(fc.array(fc.array(nalArb, { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 4 }), fc.array(carryArb, { minLength: 1, maxLength: 5 }), fc.integer({ min: 0, max: 0xffff }), (aus, carries, seq0) => {
      const d = new H264Depacketizer();
      const got: Array<{ ts: number; nals: Buffer[]; keyframe: boolean; damaged: boolean }> = [];
      let seq = seq0;
      aus.forEach((nals, i) => {
        // STAP-A carries only NAL units that fit its 16-bit sizes.
        const packets = packetize(nals, carries.map((c) => (c.kind === 'stap' && nals.some((n) => n.length > 0xffff) ? { kind: 'single' } : c)), 1000 + i * 3000, seq);
        seq += packets.length;
        for (const p of packets) for (const au of d.push(p)) got.push({ ts: au.timestamp, nals: au.nals, keyframe: au.keyframe, damaged: au.damaged });
      });
      assert.equal(got.length, aus.length);
      got.forEach((au, i) => {
        assert.equal(au.damaged, false);
        assert.equal(au.ts, 1000 + i * 3000);
        assert.deepEqual(au.nals.map((n) => n.toString('hex')), aus[i]!.map((n) => n.toString('hex')));
        assert.equal(au.keyframe, aus[i]!.some((n) => (n[0]! & 0x1f) === 5));
      });
    }),
    { numRuns: 200 },
  );
});

test('an access unit without a marker ends when the timestamp changes', () => {
  const d = new H264Depacketizer();
  const nal = Buffer.from([0x41, 1, 2, 3]);
  assert.deepEqual(d.push({ payloadType: 96, sequence: 1, timestamp: 10, ssrc: 1, marker: false, payload: nal }), []);
  const out = d.push({ payloadType: 96, sequence: 2, timestamp: 20, ssrc: 1, marker: true, payload: nal });
  assert.deepEqual(out.map((a) => a.timestamp), [10, 20]);
});

test('a lost packet marks its access unit damaged; the next one is whole again', () => {
  const d = new H264Depacketizer();
  const nal = Buffer.concat([Buffer.from([0x65]), Buffer.alloc(3000, 7)]);
  const packets = packetize([nal], [{ kind: 'fu', piece: 1000 }], 90, 100);
  assert.equal(packets.length, 3);
  const out = [...d.push(packets[0]!), ...d.push(packets[2]!)];
  assert.equal(out.length, 1);
  assert.equal(out[0]!.damaged, true);
  const next = packetize([Buffer.from([0x41, 9])], [{ kind: 'single' }], 180, 103);
  const whole = d.push(next[0]!);
  assert.equal(whole[0]!.damaged, false);
});

test('an FU-A middle without its start, STAP-B and a truncated STAP-A are damage, not crashes', () => {
  const d = new H264Depacketizer();
  const mk = (seq: number, payload: number[]): RtpPacket => ({ payloadType: 96, sequence: seq, timestamp: 1, ssrc: 1, marker: true, payload: Buffer.from(payload) });
  assert.equal(d.push(mk(1, [0x7c, 0x05, 1, 2]))[0]!.damaged, true);
  assert.equal(d.push(mk(2, [0x79, 0, 1]))[0]!.damaged, true);
  assert.equal(d.push(mk(3, [0x78, 0, 9, 0x41]))[0]!.damaged, true);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const out = new H264Depacketizer().push(mk(1, [...bytes]));
      assert.ok(out.length <= 1);
    }),
  );
});

test('an access unit larger than the bound is dropped as damaged and memory is not kept', () => {
  const d = new H264Depacketizer(10_000);
  const big = Buffer.concat([Buffer.from([0x65]), Buffer.alloc(50_000, 1)]);
  const packets = packetize([big], [{ kind: 'fu', piece: 1000 }], 5, 0);
  const out = packets.flatMap((p) => d.push(p));
  assert.equal(out.length, 1);
  assert.equal(out[0]!.damaged, true);
  assert.equal(out[0]!.nals.length, 0);
});

test('parseRtp reads header, CSRCs, extension and padding; RTCP is not RTP', () => {
  const ext = Buffer.from([0x90 | 0x20 | 1, 0x80 | 102, 0, 7, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 2, 0xbe, 0xde, 0, 1, 1, 2, 3, 4, 0x41, 0x55, 0, 0, 3]);
  const p = parseRtp(ext)!;
  assert.equal(p.sequence, 7);
  assert.equal(p.timestamp, 9);
  assert.equal(p.marker, true);
  assert.equal(p.payloadType, 102);
  assert.deepEqual([...p.payload], [0x41, 0x55]);
  assert.equal(parseRtp(Buffer.from([0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0])), undefined);
});

test('the FLV sequence header and frames read back as AVC with the same parameter sets and NAL units', () => {
  const sps = Buffer.from([0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8]);
  const pps = Buffer.from([0x68, 0xce, 0x3c, 0x80]);
  const header = flvAvcSequenceHeader(sps, pps);
  const tag = classifyVideoTag(header);
  assert.ok(!(tag instanceof CodecConfigError));
  assert.equal(tag.isSequenceHeader, true);
  const cfg = parseAvcDecoderConfig(avcDecoderConfig(sps, pps));
  assert.ok(!(cfg instanceof CodecConfigError));
  assert.deepEqual(cfg.sps[0], sps);
  assert.deepEqual(cfg.pps[0], pps);
  assert.equal(cfg.nalLengthSize, 4);
  const frame = flvAvcFrame([Buffer.from([0x09, 0xf0]), sps, pps, Buffer.from([0x65, 1, 2])], true);
  assert.deepEqual([...frame], [0x17, 1, 0, 0, 0, 0, 0, 0, 3, 0x65, 1, 2]);
  assert.equal(flvAvcFrame([Buffer.from([0x41, 1])], false)[0], 0x27);
});

test('RtpClock: 90 kHz to ms from a base, unwrapping 32-bit wraps, never stepping back', () => {
  const c = new RtpClock(90_000, 500);
  assert.equal(c.toMs(0xffff_ff00), 500);
  assert.equal(c.toMs((0xffff_ff00 + 90_000) >>> 0), 1500);
  assert.equal(c.toMs((0xffff_ff00 + 45_000) >>> 0), 1500, 'a step back holds');
  assert.equal(c.toMs((0xffff_ff00 + 180_000) >>> 0), 2500);
});

test('Ogg Opus written page by page reads back through the Ogg reader, in any split; the CRC is the one ffmpeg writes', () => {
  // ffmpeg's own OpusHead page (its CRC field zeroed) and the CRC ffmpeg wrote into it.
  assert.equal(oggCrc(Buffer.from('4f676753000200000000000000009f93fc92000000000000000001134f707573486561640101380180bb0000000000', 'hex')), 0x0fa083a4);
  const packets = [Buffer.from([0xfc, 1, 2, 3]), Buffer.alloc(600, 0x78), Buffer.from([0x48])];
  const w = new OggOpusWriter();
  const stream = Buffer.concat([w.headers(), ...packets.map((p, i) => w.packet(p, BigInt((i + 1) * 960)))]);
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 6 }), (cuts) => {
      const r = new OggOpusReader();
      const out: Buffer[] = [];
      let prev = 0;
      for (const c of [...cuts.sort((a, b) => a - b), stream.length]) {
        out.push(...r.push(stream.subarray(prev, c)));
        prev = c;
      }
      assert.deepEqual(out, packets);
    }),
  );
  assert.equal(opusPacketSamples(Buffer.from([0xfc])), 960, 'CELT FB 20 ms');
  assert.equal(opusPacketSamples(Buffer.from([0x52])), 1920 * 2, 'SILK 40 ms, two frames (code 2)');
  assert.equal(opusPacketSamples(Buffer.from([0xf3, 0x03])), 480 * 3, 'CELT 10 ms, code 3 with three frames');
});

test('ADTS frames come out whole in any split; the AudioSpecificConfig reads back as the header says', () => {
  const frame = (len: number, fill: number): Buffer => {
    const total = len + 7;
    const h = Buffer.from([0xff, 0xf1, (1 << 6) | (3 << 2) | 0, (2 << 6) | (total >> 11), (total >> 3) & 0xff, ((total & 7) << 5) | 0x1f, 0xfc]);
    return Buffer.concat([h, Buffer.alloc(len, fill)]);
  };
  const stream = Buffer.concat([Buffer.from([1, 2, 3]), frame(100, 1), frame(5, 2), frame(300, 3)]);
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 6 }), (cuts) => {
      const r = new AdtsReader();
      const out = [];
      let prev = 0;
      for (const c of [...cuts.sort((a, b) => a - b), stream.length]) {
        out.push(...r.push(stream.subarray(prev, c)));
        prev = c;
      }
      assert.deepEqual(out.map((f) => [f.data.length, f.data[0], f.sampleRate, f.channels, f.objectType]), [
        [100, 1, 48000, 2, 2],
        [5, 2, 48000, 2, 2],
        [300, 3, 48000, 2, 2],
      ]);
    }),
  );
  const asc = adtsAudioSpecificConfig({ objectType: 2, frequencyIndex: 3, channels: 2 });
  const cfg = parseAacAudioSpecificConfig(asc);
  assert.ok(!(cfg instanceof CodecConfigError));
  assert.equal(cfg.sampleRate, 48000);
  assert.equal(cfg.channels, 2);
  assert.deepEqual([...flvAacSequenceHeader(asc).subarray(0, 2)], [0xaf, 0]);
});
