import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { RtmpProtocolError } from '../src/errors.ts';
import {
  ChunkStreamDecoder,
  ChunkStreamEncoder,
  DEFAULT_CHUNK_DECODER_LIMITS,
  encodeMessageFmt0,
  type RtmpMessage,
} from '../src/rtmp/chunk.ts';
import { MessageType, abortMessage, decodeControl, setChunkSizeMessage } from '../src/rtmp/messages.ts';

const FIXTURES = fileURLToPath(new URL('../../tests/fixtures/rtmp/', import.meta.url));

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

function payloadOf(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

function msgs(r: RtmpMessage[] | RtmpProtocolError): RtmpMessage[] {
  if (r instanceof RtmpProtocolError) assert.fail(`unexpected ${r.code}: ${r.message}`);
  return r;
}

function err(r: RtmpMessage[] | RtmpProtocolError, code: string): RtmpProtocolError {
  assert.ok(r instanceof RtmpProtocolError, `expected ${code}, got ${Array.isArray(r) ? `${r.length} messages` : String(r)}`);
  assert.equal(r.code, code, r.message);
  return r;
}

function assertSameMessages(actual: RtmpMessage[], expected: RtmpMessage[]): void {
  assert.equal(actual.length, expected.length, 'message count');
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    assert.deepEqual(
      { csid: a.csid, type: a.type, streamId: a.streamId, timestamp: a.timestamp, length: a.payload.length },
      { csid: e.csid, type: e.type, streamId: e.streamId, timestamp: e.timestamp, length: e.payload.length },
      `message ${i}`,
    );
    assert.ok(a.payload.equals(e.payload), `payload of message ${i}`);
  }
}

/** Splits `buf` at the given cut points (taken modulo length+1). */
function splitAt(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(buf.subarray(prev, p));
    prev = p;
  }
  out.push(buf.subarray(prev));
  return out;
}

function decodeAll(pieces: Buffer[], dec = new ChunkStreamDecoder()): RtmpMessage[] {
  const out: RtmpMessage[] = [];
  for (const p of pieces) out.push(...msgs(dec.push(p)));
  return out;
}

/** A chunk header, by hand. */
function basic(fmt: number, csid: number): number[] {
  if (csid < 64) return [(fmt << 6) | csid];
  if (csid < 320) return [fmt << 6, csid - 64];
  return [(fmt << 6) | 1, (csid - 64) & 0xff, (csid - 64) >> 8];
}
function u24(n: number): number[] {
  return [(n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}
function u32be(n: number): number[] {
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}
function u32le(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}
function fmt0(csid: number, ts: number, len: number, type: number, sid: number): number[] {
  return [...basic(0, csid), ...u24(ts >= 0xffffff ? 0xffffff : ts), ...u24(len), type, ...u32le(sid), ...(ts >= 0xffffff ? u32be(ts) : [])];
}

// ---------------------------------------------------------------------------
// arbitraries
// ---------------------------------------------------------------------------
const csidArb = fc.oneof(
  fc.integer({ min: 2, max: 63 }),
  fc.integer({ min: 64, max: 319 }),
  fc.integer({ min: 320, max: 65599 }),
  fc.constantFrom(2, 3, 63, 64, 319, 320, 65599),
);
const typeArb = fc.oneof(fc.constantFrom(8, 9, 18, 20), fc.integer({ min: 3, max: 255 })); // never 1/2: the decoder acts on those
const streamIdArb = fc.oneof(fc.constantFrom(0, 1, 0xffffffff), fc.nat({ max: 0xffffffff }));
const tsArb = fc.oneof(
  fc.integer({ min: 0, max: 0x1000010 }),
  fc.integer({ min: 0xfffff0, max: 0xffffffff }),
  fc.constantFrom(0, 0xfffffe, 0xffffff, 0x1000000, 0xffffffff),
);
const lenArb = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 300 }) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 9000 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 200_000 }) },
);
const chunkSizeArb = fc.oneof(
  fc.integer({ min: 1, max: 64 }),
  fc.integer({ min: 65, max: 65536 }),
  fc.constantFrom(1, 2, 127, 128, 129, 4096, 60000, 65536),
);
const specArb = fc.record({
  csidIdx: fc.nat(3),
  keepType: fc.boolean(),
  type: typeArb,
  keepLen: fc.boolean(),
  len: lenArb,
  keepStream: fc.boolean(),
  streamId: streamIdArb,
  ts: fc.oneof(
    fc.record({ delta: fc.constantFrom(0, 20, 23, 33, 40, 1000) }),
    fc.record({ delta: fc.integer({ min: 0, max: 0x1ffffff }) }),
    fc.record({ abs: tsArb }),
  ),
  seed: fc.integer(),
});

/**
 * A sequence of messages over a few csids, with repeated types/lengths/streams
 * and small deltas so that fmt 1/2/3 compression gets exercised. Payloads are
 * capped at 2000 chunks each to keep runs fast at tiny chunk sizes.
 */
const scenarioArb = fc
  .record({
    csids: fc.uniqueArray(csidArb, { minLength: 1, maxLength: 4 }),
    specs: fc.array(specArb, { minLength: 1, maxLength: 10 }),
    chunkSize: chunkSizeArb,
    cuts: fc.array(fc.nat(), { maxLength: 20 }),
  })
  .map(({ csids, specs, chunkSize, cuts }) => {
    const last = new Map<number, RtmpMessage>();
    const messages: RtmpMessage[] = [];
    for (const s of specs) {
      const csid = csids[s.csidIdx % csids.length]!;
      const prev = last.get(csid);
      const type = prev && s.keepType ? prev.type : s.type;
      const len = Math.min(prev && s.keepLen ? prev.payload.length : s.len, chunkSize * 2000);
      const streamId = prev && s.keepStream ? prev.streamId : s.streamId;
      const timestamp = 'abs' in s.ts ? s.ts.abs : ((prev?.timestamp ?? 0) + s.ts.delta) >>> 0;
      const m: RtmpMessage = { csid, type, streamId, timestamp, payload: payloadOf(len, s.seed) };
      last.set(csid, m);
      messages.push(m);
    }
    return { messages, chunkSize, cuts };
  });

// ---------------------------------------------------------------------------
// round trips
// ---------------------------------------------------------------------------
describe('chunk round trips', () => {
  test('ChunkStreamEncoder → ChunkStreamDecoder round-trips, whole and in any split', () => {
    fc.assert(
      fc.property(scenarioArb, ({ messages, chunkSize, cuts }) => {
        const enc = new ChunkStreamEncoder(chunkSize);
        const wire = Buffer.concat(messages.map((m) => enc.encode(m)));
        // peer learns the chunk size out of band here (Set Chunk Size is tested separately)
        const dec = new ChunkStreamDecoder();
        const setCs = msgs(dec.push(encodeMessageFmt0(setChunkSizeMessage(chunkSize), 128)));
        assert.equal(setCs.length, 1);
        assert.equal(dec.chunkSize, chunkSize);
        assertSameMessages(msgs(dec.push(wire)), messages);

        const dec2 = new ChunkStreamDecoder();
        dec2.push(encodeMessageFmt0(setChunkSizeMessage(chunkSize), 128));
        assertSameMessages(decodeAll(splitAt(wire, cuts), dec2), messages);
        assert.equal(dec2.bytesReceived, 16 + wire.length);
      }),
      { numRuns: 150 },
    );
  });

  test('encodeMessageFmt0 → ChunkStreamDecoder round-trips, whole and in any split; size is exact', () => {
    fc.assert(
      fc.property(scenarioArb, ({ messages, chunkSize, cuts }) => {
        const parts = messages.map((m) => {
          const b = encodeMessageFmt0(m, chunkSize);
          const basicLen = m.csid < 64 ? 1 : m.csid < 320 ? 2 : 3;
          const ext = m.timestamp >= 0xffffff ? 4 : 0;
          const chunks = Math.max(1, Math.ceil(m.payload.length / chunkSize));
          assert.equal(b.length, basicLen + 11 + ext + (chunks - 1) * (basicLen + ext) + m.payload.length);
          assert.equal(b[0]! >> 6, 0, 'fmt 0 first');
          return b;
        });
        const wire = Buffer.concat(parts);
        const dec = new ChunkStreamDecoder({ maxChunkSize: 65536 });
        dec.push(encodeMessageFmt0(setChunkSizeMessage(chunkSize), 128));
        assertSameMessages(decodeAll(splitAt(wire, cuts), dec), messages);
        // self-contained: every message decodes alone on a fresh connection
        for (let i = 0; i < parts.length; i++) {
          const d = new ChunkStreamDecoder();
          d.push(encodeMessageFmt0(setChunkSizeMessage(chunkSize), 128));
          assertSameMessages(msgs(d.push(parts[i]!)), [messages[i]!]);
        }
      }),
      { numRuns: 100 },
    );
  });

  test('a mid-stream Set Chunk Size changes the chunking and is honoured', () => {
    fc.assert(
      fc.property(scenarioArb, chunkSizeArb, fc.nat(10), ({ messages, chunkSize, cuts }, newSize, at) => {
        const k = Math.min(at, messages.length);
        const enc = new ChunkStreamEncoder(chunkSize);
        const before = messages.slice(0, k).map((m) => enc.encode(m));
        const setMsg = setChunkSizeMessage(newSize);
        const setWire = enc.encode(setMsg); // sent at the old size…
        enc.setChunkSize(newSize); // …then switch
        assert.equal(enc.chunkSize, newSize);
        const after = messages.slice(k).map((m) => enc.encode(m));
        // the bytes after the switch are exactly what an encoder running at newSize all along produces
        const mirror = new ChunkStreamEncoder(newSize);
        for (const m of [...messages.slice(0, k), setMsg]) mirror.encode(m);
        for (let i = 0; i < after.length; i++) assert.ok(mirror.encode(messages[k + i]!).equals(after[i]!));
        const wire = Buffer.concat([...before, setWire, ...after]);
        const dec = new ChunkStreamDecoder();
        dec.push(encodeMessageFmt0(setChunkSizeMessage(chunkSize), 128));
        const out = decodeAll(splitAt(wire, cuts), dec);
        assert.equal(dec.chunkSize, newSize);
        assertSameMessages(out, [...messages.slice(0, k), setMsg, ...messages.slice(k)]);
      }),
      { numRuns: 100 },
    );
  });

  test('a decoder left at the old chunk size cannot read the new chunking (the Set Chunk Size matters)', () => {
    const m: RtmpMessage = { csid: 6, type: 9, streamId: 1, timestamp: 5, payload: payloadOf(1000, 1) };
    const wire = encodeMessageFmt0(m, 4096);
    const r = new ChunkStreamDecoder().push(wire);
    // at 128 the decoder reads payload byte 128 as a chunk header: garbage, error or a wrong message
    assert.ok(r instanceof RtmpProtocolError || r.length === 0 || !r[0]!.payload.equals(m.payload));
  });
});

// ---------------------------------------------------------------------------
// header forms and compression
// ---------------------------------------------------------------------------
describe('chunk headers', () => {
  test('basic header forms: 1, 2 and 3 bytes at the csid boundaries', () => {
    const p = Buffer.from([0xaa]);
    const cases: [number, number[]][] = [
      [2, [0x02]],
      [63, [0x3f]],
      [64, [0x00, 0x00]],
      [319, [0x00, 0xff]],
      [320, [0x01, 0x00, 0x01]],
      [65599, [0x01, 0xff, 0xff]],
    ];
    for (const [csid, hdr] of cases) {
      const b = encodeMessageFmt0({ csid, type: 9, streamId: 1, timestamp: 0x10, payload: p }, 128);
      assert.deepEqual([...b], [...hdr, 0, 0, 0x10, 0, 0, 1, 9, 1, 0, 0, 0, 0xaa], `csid ${csid}`);
      assertSameMessages(msgs(new ChunkStreamDecoder().push(b)), [{ csid, type: 9, streamId: 1, timestamp: 0x10, payload: p }]);
    }
  });

  test('encoder compresses: fmt 0, then 2, then 3 for a steady stream; fmt 1 on a length change (its delta is reused by fmt 3); fmt 0 on stream change', () => {
    const enc = new ChunkStreamEncoder(128);
    const m = (ts: number, len: number, streamId = 1): RtmpMessage => ({ csid: 4, type: 8, streamId, timestamp: ts, payload: payloadOf(len, ts) });
    const seq = [m(1000, 10), m(1020, 10), m(1040, 10), m(1060, 10), m(1080, 12), m(1100, 12), m(1120, 12, 2)];
    const encoded = seq.map((x) => enc.encode(x));
    assert.deepEqual(encoded.map((b) => b[0]! >> 6), [0, 2, 3, 3, 1, 3, 0]);
    assert.deepEqual(encoded.map((b) => b.length), [1 + 11 + 10, 1 + 3 + 10, 1 + 10, 1 + 10, 1 + 7 + 12, 1 + 12, 1 + 11 + 12]);
    assertSameMessages(msgs(new ChunkStreamDecoder().push(Buffer.concat(encoded))), seq);
  });

  test('a timestamp going backwards or a delta ≥ 0xFFFFFF uses fmt 0', () => {
    const enc = new ChunkStreamEncoder();
    const m = (ts: number): RtmpMessage => ({ csid: 5, type: 18, streamId: 1, timestamp: ts, payload: Buffer.from('x') });
    const seq = [m(500), m(100), m(100 + 0xffffff), m(0xffffffff)];
    assert.deepEqual(seq.map((x) => enc.encode(x)[0]! >> 6), [0, 0, 0, 0]);
  });

  test('fmt 3 starting a new message right after fmt 0 reuses the fmt 0 timestamp as its delta (spec §5.3.1.2.4)', () => {
    const wire = Buffer.from([...fmt0(3, 1000, 2, 8, 1), 0xaa, 0xbb, 0xc3, 0xcc, 0xdd, 0xc3, 0xee, 0xff]);
    const out = msgs(new ChunkStreamDecoder().push(wire));
    assert.deepEqual(out.map((x) => x.timestamp), [1000, 2000, 3000]);
    assert.deepEqual(out.map((x) => x.payload.toString('hex')), ['aabb', 'ccdd', 'eeff']);
  });

  test('fmt 1/2 deltas and fmt 3 continuations of a steady stream, timestamps wrapping past 2^32', () => {
    const wire = Buffer.from([
      ...fmt0(4, 0xfffffff0 >>> 0, 1, 9, 7), 0x01,
      ...basic(2, 4), ...u24(0x20), 0x02, // fmt2 delta 32 → wraps to 0x10
      ...basic(3, 4), 0x03, // fmt3 new message, same delta → 0x30
      ...basic(1, 4), ...u24(1), ...u24(2), 8, 0x04, 0x05, // fmt1 delta 1, new length/type
    ]);
    const out = msgs(new ChunkStreamDecoder().push(wire));
    assert.deepEqual(
      out.map((x) => [x.timestamp, x.type, x.streamId, x.payload.toString('hex')]),
      [
        [0xfffffff0, 9, 7, '01'],
        [0x10, 9, 7, '02'],
        [0x30, 9, 7, '03'],
        [0x31, 8, 7, '0405'],
      ],
    );
  });
});

// ---------------------------------------------------------------------------
// extended timestamps
// ---------------------------------------------------------------------------
describe('extended timestamps', () => {
  test('fmt 3 continuation chunks carry the extended timestamp (hand-built bytes, as ffmpeg writes them)', () => {
    const payload = payloadOf(300, 3);
    const ts = 0x12345678;
    const wire = Buffer.from([
      ...fmt0(3, ts, 300, 9, 1),
      ...payload.subarray(0, 128),
      0xc3, ...u32be(ts),
      ...payload.subarray(128, 256),
      0xc3, ...u32be(ts),
      ...payload.subarray(256),
    ]);
    assert.equal(wire.length, 12 + 4 + 300 + 2 * 5);
    const out = msgs(new ChunkStreamDecoder().push(wire));
    assertSameMessages(out, [{ csid: 3, type: 9, streamId: 1, timestamp: ts, payload }]);
    // and the encoders produce exactly these bytes
    const m: RtmpMessage = { csid: 3, type: 9, streamId: 1, timestamp: ts, payload };
    assert.ok(encodeMessageFmt0(m, 128).equals(wire));
    assert.ok(new ChunkStreamEncoder(128).encode(m).equals(wire));
    // byte-by-byte feeding gives the same
    assertSameMessages(decodeAll([...wire].map((b) => Buffer.from([b]))), out);
  });

  test('exactly 0xFFFFFF is extended; 0xFFFFFE is not', () => {
    const p = payloadOf(5, 9);
    const a = encodeMessageFmt0({ csid: 3, type: 8, streamId: 0, timestamp: 0xffffff, payload: p }, 2);
    const b = encodeMessageFmt0({ csid: 3, type: 8, streamId: 0, timestamp: 0xfffffe, payload: p }, 2);
    assert.equal(a.length, 12 + 4 + 2 * 5 + 5);
    assert.equal(b.length, 12 + 2 * 1 + 5);
    assert.equal(msgs(new ChunkStreamDecoder().push(Buffer.concat([encodeMessageFmt0(setChunkSizeMessage(2), 128), a])))[1]!.timestamp, 0xffffff);
  });

  test('fmt 3 new message after an extended fmt 0 reads the extended field and applies the delta', () => {
    const ts = 0x01000000;
    const wire = Buffer.from([...fmt0(3, ts, 1, 9, 1), 0x01, 0xc3, ...u32be(ts), 0x02]);
    const out = msgs(new ChunkStreamDecoder().push(wire));
    assert.deepEqual(out.map((m) => [m.timestamp, m.payload[0]]), [[ts, 1], [2 * ts, 2]]);
  });
});

// ---------------------------------------------------------------------------
// control messages handled by the decoder
// ---------------------------------------------------------------------------
describe('decoder control handling', () => {
  for (const size of [0, 70000, 65537, 0x80000000]) {
    test(`Set Chunk Size ${size} → CHUNK_SIZE`, () => {
      const m = { csid: 2, type: 1, streamId: 0, timestamp: 0, payload: Buffer.from(u32be(size)) };
      const dec = new ChunkStreamDecoder();
      const e = err(dec.push(encodeMessageFmt0(m, 128)), 'CHUNK_SIZE');
      assert.equal(dec.push(Buffer.from([1, 2, 3])), e, 'dead after an error');
    });
  }

  test('Set Chunk Size 65536 and 1 are accepted; maxChunkSize is configurable', () => {
    const dec = new ChunkStreamDecoder();
    msgs(dec.push(encodeMessageFmt0(setChunkSizeMessage(65536), 128)));
    assert.equal(dec.chunkSize, 65536);
    msgs(dec.push(encodeMessageFmt0(setChunkSizeMessage(1), 65536)));
    assert.equal(dec.chunkSize, 1);
    err(new ChunkStreamDecoder({ maxChunkSize: 4096 }).push(encodeMessageFmt0(setChunkSizeMessage(4097), 128)), 'CHUNK_SIZE');
  });

  test('short Set Chunk Size / Abort payloads → MESSAGE_MALFORMED', () => {
    for (const type of [1, 2]) {
      const m = { csid: 2, type, streamId: 0, timestamp: 0, payload: Buffer.from([0, 0, 1]) };
      err(new ChunkStreamDecoder().push(encodeMessageFmt0(m, 128)), 'MESSAGE_MALFORMED');
    }
  });

  test('Abort drops the partial message of that csid; other streams are untouched', () => {
    const enc = new ChunkStreamEncoder(128);
    const big: RtmpMessage = { csid: 6, type: 9, streamId: 1, timestamp: 40, payload: payloadOf(1000, 1) };
    const audio: RtmpMessage = { csid: 4, type: 8, streamId: 1, timestamp: 41, payload: payloadOf(300, 2) };
    const bigWire = enc.encode(big);
    const audioWire = enc.encode(audio);
    const next: RtmpMessage = { csid: 6, type: 9, streamId: 1, timestamp: 80, payload: payloadOf(20, 3) };
    const wire = Buffer.concat([
      bigWire.subarray(0, 12 + 128 + 1 + 128), // two chunks of the big message
      audioWire.subarray(0, 12 + 128), // first chunk of audio (interleaved)
      encodeMessageFmt0(abortMessage(6), 128),
      audioWire.subarray(12 + 128), // rest of the audio
      encodeMessageFmt0(next, 128), // a fresh message on csid 6 is fine after the abort
    ]);
    const out = msgs(new ChunkStreamDecoder().push(wire));
    assert.deepEqual(out.map((m) => [m.csid, m.type]), [[2, 2], [4, 8], [6, 9]]);
    assert.deepEqual(decodeControl(out[0]!), { kind: 'abort', csid: 6 });
    assertSameMessages(out.slice(1), [audio, next]);
  });

  test('without the Abort, a new fmt 0 header on a csid with an incomplete message is CHUNK_HEADER', () => {
    const big = encodeMessageFmt0({ csid: 6, type: 9, streamId: 1, timestamp: 0, payload: payloadOf(1000, 1) }, 128);
    const fresh = encodeMessageFmt0({ csid: 6, type: 9, streamId: 1, timestamp: 0, payload: payloadOf(10, 1) }, 128);
    err(new ChunkStreamDecoder().push(Buffer.concat([big.subarray(0, 12 + 128), fresh])), 'CHUNK_HEADER');
  });
});

// ---------------------------------------------------------------------------
// limits and hostile input
// ---------------------------------------------------------------------------
describe('decoder limits', () => {
  test('defaults', () => {
    assert.deepEqual(DEFAULT_CHUNK_DECODER_LIMITS, { maxMessageLength: 8 * 1024 * 1024, maxChunkSize: 65536, maxChunkStreams: 64, maxPartialBytes: 32 * 1024 * 1024 });
  });

  test('a header claiming 10 MB with the limit at 8 MiB → MESSAGE_TOO_LONG right away, nothing allocated', (t) => {
    const sizes: number[] = [];
    const orig = Buffer.allocUnsafe;
    t.mock.method(Buffer, 'allocUnsafe', (n: number) => {
      sizes.push(n);
      return orig.call(Buffer, n);
    });
    const dec = new ChunkStreamDecoder();
    // the 12-byte header alone: the error must not wait for any of the body
    err(dec.push(Buffer.from(fmt0(6, 0, 10_000_000, 9, 1))), 'MESSAGE_TOO_LONG');
    assert.ok(sizes.every((n) => n < 1024), `allocations: ${sizes.join(',')}`);
    // just at the limit is fine
    const ok = new ChunkStreamDecoder({ maxMessageLength: 100 });
    assert.deepEqual(msgs(ok.push(Buffer.from(fmt0(6, 0, 100, 9, 1)))), []);
    err(new ChunkStreamDecoder({ maxMessageLength: 100 }).push(Buffer.from(fmt0(6, 0, 101, 9, 1))), 'MESSAGE_TOO_LONG');
    // fmt 1 headers are checked too
    const d2 = new ChunkStreamDecoder({ maxMessageLength: 100 });
    msgs(d2.push(Buffer.from([...fmt0(6, 0, 1, 9, 1), 0])));
    err(d2.push(Buffer.from([...basic(1, 6), ...u24(0), ...u24(5000), 9])), 'MESSAGE_TOO_LONG');
  });

  test('random garbage never throws, and never allocates more than maxMessageLength', (t) => {
    const sizes: number[] = [];
    const orig = Buffer.allocUnsafe;
    t.mock.method(Buffer, 'allocUnsafe', (n: number) => {
      sizes.push(n);
      return orig.call(Buffer, n);
    });
    const limit = 5000;
    const garbage = fc.oneof(
      fc.uint8Array({ maxLength: 4000 }),
      // plausible prefix (fmt 0 header), then garbage: gets further into the state machine
      fc.tuple(csidArb, fc.oneof(fc.nat(6000), fc.nat({ max: 0xffffff })), fc.uint8Array({ maxLength: 4000 })).map(([csid, len, rest]) =>
        Uint8Array.from([...fmt0(csid, 0, len, 9, 1), ...rest]),
      ),
    );
    fc.assert(
      fc.property(fc.array(garbage, { minLength: 1, maxLength: 4 }), fc.array(fc.nat(), { maxLength: 10 }), (blobs, cuts) => {
        const dec = new ChunkStreamDecoder({ maxMessageLength: limit, maxChunkStreams: 8 });
        let dead: RtmpProtocolError | undefined;
        for (const piece of splitAt(Buffer.concat(blobs), cuts)) {
          const r = dec.push(piece);
          if (r instanceof RtmpProtocolError) {
            if (dead) assert.equal(r, dead, 'the same error forever');
            dead = r;
          } else {
            assert.equal(dead, undefined);
            for (const m of r) assert.ok(m.payload.length <= limit);
          }
        }
      }),
      { numRuns: 500 },
    );
    assert.ok(sizes.length > 0, 'the property did allocate messages');
    assert.ok(Math.max(...sizes) <= limit, `largest allocation ${Math.max(...sizes)}`);
  });

  test(`more than maxChunkStreams distinct csids → TOO_MANY_CHUNK_STREAMS`, () => {
    const dec = new ChunkStreamDecoder();
    const one = (csid: number) => encodeMessageFmt0({ csid, type: 8, streamId: 1, timestamp: 0, payload: Buffer.alloc(0) }, 128);
    for (let i = 0; i < 64; i++) assert.equal(msgs(dec.push(one(100 + i))).length, 1);
    assert.equal(msgs(dec.push(one(100))).length, 1, 'reusing a known csid is fine');
    err(dec.push(one(5000)), 'TOO_MANY_CHUNK_STREAMS');
    err(new ChunkStreamDecoder({ maxChunkStreams: 2 }).push(Buffer.concat([one(3), one(4), one(5)])), 'TOO_MANY_CHUNK_STREAMS');
  });

  for (const fmt of [1, 2, 3]) {
    test(`fmt ${fmt} on a never-seen csid → CHUNK_HEADER`, () => {
      const dec = new ChunkStreamDecoder();
      msgs(dec.push(encodeMessageFmt0({ csid: 3, type: 8, streamId: 1, timestamp: 0, payload: Buffer.from([1]) }, 128)));
      const hdr = [...basic(fmt, 4), ...Buffer.alloc([0, 7, 3, 0][fmt]!)];
      err(dec.push(Buffer.from(hdr)), 'CHUNK_HEADER');
    });
  }
});

// ---------------------------------------------------------------------------
// allocation behaviour
// ---------------------------------------------------------------------------
describe('decoder allocation', () => {
  test('a large single-chunk payload is a view of the input; a tiny one is copied', () => {
    const big: RtmpMessage = { csid: 6, type: 9, streamId: 1, timestamp: 0, payload: payloadOf(3000, 5) };
    const small: RtmpMessage = { csid: 4, type: 8, streamId: 1, timestamp: 0, payload: payloadOf(10, 6) };
    // The input owns its memory, as a socket read does (Buffer.concat of 3 KB would be a slice of
    // Node 24's 64 KiB pool, which the decoder rightly never aliases).
    const input = Buffer.from(new Uint8Array(Buffer.concat([encodeMessageFmt0(setChunkSizeMessage(4096), 128), encodeMessageFmt0(big, 4096), encodeMessageFmt0(small, 4096)])).buffer);
    const out = msgs(new ChunkStreamDecoder().push(input));
    assertSameMessages(out.slice(1), [big, small]);
    input.fill(0); // the caller never does this; here it reveals which payloads alias the input
    assert.ok(out[1]!.payload.every((b) => b === 0), '3000 bytes of a 3 KB input: zero-copy view');
    assert.ok(out[2]!.payload.equals(small.payload), '10 bytes of a 3 KB input: copied');
  });

  test('multi-chunk messages are assembled in one buffer of the exact size', () => {
    const m: RtmpMessage = { csid: 6, type: 9, streamId: 1, timestamp: 0, payload: payloadOf(1000, 5) };
    const out = msgs(new ChunkStreamDecoder().push(encodeMessageFmt0(m, 128)));
    assert.equal(out[0]!.payload.length, 1000);
    assert.ok(out[0]!.payload.equals(m.payload));
  });
});

// ---------------------------------------------------------------------------
// encoder argument checks
// ---------------------------------------------------------------------------
test('encoders reject out-of-range fields', () => {
  const ok: RtmpMessage = { csid: 3, type: 8, streamId: 0, timestamp: 0, payload: Buffer.alloc(1) };
  const enc = new ChunkStreamEncoder();
  for (const bad of [{ csid: 1 }, { csid: 65600 }, { type: 256 }, { timestamp: -1 }, { timestamp: 2 ** 32 }, { streamId: 2 ** 32 }]) {
    assert.throws(() => enc.encode({ ...ok, ...bad }), RangeError, JSON.stringify(bad));
    assert.throws(() => encodeMessageFmt0({ ...ok, ...bad }, 128), RangeError, JSON.stringify(bad));
  }
  assert.throws(() => encodeMessageFmt0(ok, 0), RangeError);
  assert.throws(() => enc.setChunkSize(0), RangeError);
  assert.throws(() => new ChunkStreamEncoder(1.5), RangeError);
  assert.throws(() => new ChunkStreamDecoder({ maxChunkStreams: 0 }), RangeError);
  assert.throws(() => new ChunkStreamDecoder({ maxMessageLength: -1 }), RangeError);
  // limits beyond what the wire can carry are clamped, not refused
  const roomy = new ChunkStreamDecoder({ maxMessageLength: 64 * 1024 * 1024, maxChunkSize: 2 ** 40 });
  assert.equal(msgs(roomy.push(Buffer.from([...fmt0(3, 0, 0xffffff, 9, 1)]))).length, 0, 'a 16 MiB - 1 header is accepted');
});

test('markSent keeps ChunkStreamEncoder in sync with fmt 0 messages written by encodeMessageFmt0', () => {
  const enc = new ChunkStreamEncoder(128);
  const m = (ts: number): RtmpMessage => ({ csid: 5, type: 18, streamId: 1, timestamp: ts, payload: Buffer.from('ab') });
  const a = enc.encode(m(0));
  const b = encodeMessageFmt0(m(100), 128); // fan-out path on the same csid
  enc.markSent(m(100));
  const c = enc.encode(m(130));
  assert.equal(c[0]! >> 6, 2, 'delta against the fmt 0 message');
  assertSameMessages(msgs(new ChunkStreamDecoder().push(Buffer.concat([a, b, c]))), [m(0), m(100), m(130)]);
});

// ---------------------------------------------------------------------------
// real ffmpeg capture
// ---------------------------------------------------------------------------
describe('ffmpeg 5.1 publish capture', () => {
  const wire = readFileSync(FIXTURES + 'ffmpeg-publish-chunks.bin');
  const name = (m: RtmpMessage) => (m.payload[0] === 2 ? m.payload.toString('utf8', 3, 3 + m.payload.readUInt16BE(1)) : '');

  test('decodes into connect, Set Chunk Size, commands, metadata, then audio/video', () => {
    const dec = new ChunkStreamDecoder();
    const out = msgs(dec.push(wire));
    assert.equal(dec.bytesReceived, wire.length);
    assert.equal(out.length, 67);

    const [connect, setCs] = out;
    assert.deepEqual([connect!.csid, connect!.type, connect!.streamId], [3, MessageType.COMMAND_AMF0, 0]);
    assert.equal(name(connect!), 'connect');
    assert.ok(connect!.payload.length > 128, 'connect spans a fmt 3 continuation at chunk size 128');
    assert.ok(connect!.payload.includes('live'));

    // ffmpeg echoes the server's Set Chunk Size (4096) back as its own
    assert.deepEqual([setCs!.csid, setCs!.type], [2, MessageType.SET_CHUNK_SIZE]);
    assert.deepEqual(decodeControl(setCs!), { kind: 'setChunkSize', size: 4096 });
    assert.equal(dec.chunkSize, 4096);

    assert.deepEqual(out.slice(2, 6).map(name), ['releaseStream', 'FCPublish', 'createStream', 'publish']);
    const publish = out[5]!;
    assert.equal(publish.streamId, 1);
    const meta = out[6]!;
    assert.equal(meta.type, MessageType.DATA_AMF0);
    assert.equal(name(meta), '@setDataFrame');
    assert.ok(meta.payload.includes('onMetaData'));

    // ffmpeg ends the publication with FCUnpublish + deleteStream
    assert.deepEqual(out.slice(-2).map(name), ['FCUnpublish', 'deleteStream']);

    const video = out.filter((m) => m.type === MessageType.VIDEO);
    const audio = out.filter((m) => m.type === MessageType.AUDIO);
    assert.equal(video.length + audio.length, out.length - 9);
    assert.deepEqual([...video[0]!.payload.subarray(0, 2)], [0x17, 0x00], 'AVC sequence header first');
    assert.deepEqual([...audio[0]!.payload.subarray(0, 2)], [0xaf, 0x00], 'AAC sequence header first');
    assert.equal(video.length, 12, 'sequence header + 1 s at 10 fps + end of sequence');
    assert.deepEqual([...video.at(-1)!.payload.subarray(0, 2)], [0x17, 0x02], 'AVC end of sequence last');
    assert.equal(audio.length, 46);
    assert.ok(video.filter((m) => m.payload[0] === 0x17 && m.payload[1] === 1).length >= 1, 'a keyframe');
    for (const list of [video, audio]) {
      for (let i = 1; i < list.length; i++) assert.ok(list[i]!.timestamp >= list[i - 1]!.timestamp, 'monotonic timestamps');
      assert.ok(list.every((m) => m.streamId === 1 && m.csid === list[0]!.csid));
    }
    assert.ok(video.at(-1)!.timestamp >= 800 && video.at(-1)!.timestamp <= 1000);
  });

  test('any split of the capture decodes the same', () => {
    const ref = msgs(new ChunkStreamDecoder().push(wire));
    fc.assert(
      fc.property(fc.array(fc.nat(), { maxLength: 40 }), (cuts) => {
        assertSameMessages(decodeAll(splitAt(wire, cuts)), ref);
      }),
      { numRuns: 100 },
    );
  });

  test('re-encoding the decoded capture round-trips', () => {
    const ref = msgs(new ChunkStreamDecoder().push(wire));
    const enc = new ChunkStreamEncoder(128);
    const parts: Buffer[] = [];
    for (const m of ref) {
      parts.push(enc.encode(m));
      if (m.type === MessageType.SET_CHUNK_SIZE) enc.setChunkSize(m.payload.readUInt32BE(0));
    }
    const re = Buffer.concat(parts);
    assertSameMessages(msgs(new ChunkStreamDecoder().push(re)), ref);
    assert.ok(re.length <= wire.length + 64, `re-encoding is about as compact as ffmpeg (${re.length} vs ${wire.length})`);
  });
});
