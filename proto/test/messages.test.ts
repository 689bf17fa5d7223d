import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import fc from 'fast-check';
import { RtmpProtocolError } from '../src/errors.ts';
import { ChunkStreamDecoder, encodeMessageFmt0, type RtmpMessage } from '../src/rtmp/chunk.ts';
import {
  MessageType,
  UserControlEvent,
  abortMessage,
  ackMessage,
  decodeControl,
  setChunkSizeMessage,
  setPeerBandwidthMessage,
  splitAggregate,
  userControlMessage,
  windowAckSizeMessage,
  type ControlMessage,
} from '../src/rtmp/messages.ts';

function ok(r: ControlMessage | RtmpProtocolError): ControlMessage {
  if (r instanceof RtmpProtocolError) assert.fail(`unexpected ${r.code}: ${r.message}`);
  return r;
}

function malformed(r: unknown): void {
  assert.ok(r instanceof RtmpProtocolError, 'expected an error');
  assert.equal(r.code, 'MESSAGE_MALFORMED');
}

describe('constants', () => {
  test('message type ids match the spec', () => {
    assert.deepEqual(MessageType, {
      SET_CHUNK_SIZE: 1, ABORT: 2, ACK: 3, USER_CONTROL: 4, WINDOW_ACK_SIZE: 5, SET_PEER_BANDWIDTH: 6,
      AUDIO: 8, VIDEO: 9, DATA_AMF3: 15, SHARED_OBJECT_AMF3: 16, COMMAND_AMF3: 17, DATA_AMF0: 18,
      SHARED_OBJECT_AMF0: 19, COMMAND_AMF0: 20, AGGREGATE: 22,
    });
    assert.deepEqual(UserControlEvent, {
      STREAM_BEGIN: 0, STREAM_EOF: 1, STREAM_DRY: 2, SET_BUFFER_LENGTH: 3, STREAM_IS_RECORDED: 4, PING_REQUEST: 6, PING_RESPONSE: 7,
    });
  });
});

describe('control message encoders', () => {
  test('wire bytes of each control message (csid 2, stream 0, timestamp 0)', () => {
    const cases: [RtmpMessage, number, string][] = [
      [setChunkSizeMessage(4096), 1, '00001000'],
      [abortMessage(6), 2, '00000006'],
      [ackMessage(0x1_0000_0005), 3, '00000005'], // sequence numbers wrap at 2^32
      [windowAckSizeMessage(2_500_000), 5, '002625a0'],
      [setPeerBandwidthMessage(2_500_000, 2), 6, '002625a002'],
      [userControlMessage(UserControlEvent.STREAM_BEGIN, 1), 4, '000000000001'],
      [userControlMessage(UserControlEvent.SET_BUFFER_LENGTH, 1, 3000), 4, '00030000000100000bb8'],
      [userControlMessage(UserControlEvent.PING_REQUEST, 0xdeadbeef), 4, '0006deadbeef'],
    ];
    for (const [m, type, hex] of cases) {
      assert.deepEqual({ csid: m.csid, streamId: m.streamId, timestamp: m.timestamp, type: m.type }, { csid: 2, streamId: 0, timestamp: 0, type });
      assert.equal(m.payload.toString('hex'), hex);
    }
    // a whole Set Chunk Size message on the wire
    assert.equal(encodeMessageFmt0(setChunkSizeMessage(4096), 128).toString('hex'), '02' + '000000' + '000004' + '01' + '00000000' + '00001000');
  });

  test('encoders reject nonsense', () => {
    assert.throws(() => setChunkSizeMessage(0), RangeError);
    assert.throws(() => setChunkSizeMessage(0x80000000), RangeError);
    assert.throws(() => windowAckSizeMessage(-1), RangeError);
    assert.throws(() => setPeerBandwidthMessage(1000, 3 as 0), RangeError);
    assert.throws(() => userControlMessage(UserControlEvent.SET_BUFFER_LENGTH, 1), RangeError);
    assert.throws(() => userControlMessage(5 as 0, 1), RangeError);
  });

  test('encode → decode round trip (property)', () => {
    const u32 = fc.nat({ max: 0xffffffff });
    const arb = fc.oneof(
      fc.integer({ min: 1, max: 0x7fffffff }).map((n) => [setChunkSizeMessage(n), { kind: 'setChunkSize', size: n }] as const),
      u32.map((n) => [abortMessage(n), { kind: 'abort', csid: n }] as const),
      u32.map((n) => [ackMessage(n), { kind: 'ack', sequence: n }] as const),
      fc.integer({ min: 1, max: 0xffffffff }).map((n) => [windowAckSizeMessage(n), { kind: 'windowAckSize', size: n }] as const),
      fc.tuple(fc.integer({ min: 1, max: 0xffffffff }), fc.constantFrom(0, 1, 2) as fc.Arbitrary<0 | 1 | 2>).map(
        ([n, l]) => [setPeerBandwidthMessage(n, l), { kind: 'setPeerBandwidth', size: n, limitType: l }] as const,
      ),
      fc.tuple(fc.constantFrom(0, 1, 2, 4) as fc.Arbitrary<0 | 1 | 2 | 4>, u32).map(
        ([ev, id]) => [userControlMessage(ev, id), { kind: 'userControl', event: ev, streamId: id }] as const,
      ),
      fc.tuple(u32, u32).map(
        ([id, ms]) => [userControlMessage(UserControlEvent.SET_BUFFER_LENGTH, id, ms), { kind: 'userControl', event: 3, streamId: id, bufferLength: ms }] as const,
      ),
      fc.tuple(fc.constantFrom(6, 7) as fc.Arbitrary<6 | 7>, u32).map(
        ([ev, ts]) => [userControlMessage(ev, ts), { kind: 'userControl', event: ev, timestamp: ts }] as const,
      ),
    );
    fc.assert(
      fc.property(arb, ([msg, expected]) => {
        assert.deepEqual(ok(decodeControl(msg)), expected);
      }),
    );
  });
});

describe('decodeControl', () => {
  const mk = (type: number, hex: string): RtmpMessage => ({ csid: 2, type, streamId: 0, timestamp: 0, payload: Buffer.from(hex, 'hex') });

  test('short payloads → MESSAGE_MALFORMED', () => {
    for (const [type, hex] of [
      [1, '000010'], [2, ''], [3, '0000'], [5, '000000'], [6, '00000001'],
      [4, '00'], [4, '000000'], [4, '00030000000100000b'], [4, '0006dead'],
    ] as const) {
      malformed(decodeControl(mk(type, hex)));
    }
  });

  test('peer bandwidth limit type > 2 and non-control types → MESSAGE_MALFORMED', () => {
    malformed(decodeControl(mk(6, '0000100003')));
    for (const t of [0, 7, 8, 9, 20, 22]) malformed(decodeControl(mk(t, '00000000000000')));
  });

  test('unknown user control events decode to just the event number', () => {
    assert.deepEqual(ok(decodeControl(mk(4, '001a'))), { kind: 'userControl', event: 26 });
    assert.deepEqual(ok(decodeControl(mk(4, '001f00000001'))), { kind: 'userControl', event: 31 });
  });

  test('trailing bytes are ignored', () => {
    assert.deepEqual(ok(decodeControl(mk(5, '00001000ffff'))), { kind: 'windowAckSize', size: 4096 });
  });

  test('decodeControl never throws on arbitrary payloads', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 30 }), fc.uint8Array({ maxLength: 12 }), (type, bytes) => {
        const r = decodeControl({ csid: 2, type, streamId: 0, timestamp: 0, payload: Buffer.from(bytes) });
        if (type >= 1 && type <= 6 && bytes.length >= 10 && !(type === 6 && bytes[4]! > 2)) assert.ok(!(r instanceof RtmpProtocolError));
      }),
    );
  });
});

// ---------------------------------------------------------------------------
// aggregate
// ---------------------------------------------------------------------------
interface Sub {
  type: number;
  ts: number;
  body: Buffer;
}

function aggregatePayload(subs: Sub[], { lastBackPointer = true, streamIdField = 0 } = {}): Buffer {
  const parts: Buffer[] = [];
  subs.forEach((s, i) => {
    const h = Buffer.alloc(11);
    h[0] = s.type;
    h.writeUIntBE(s.body.length, 1, 3);
    h.writeUIntBE(s.ts & 0xffffff, 4, 3);
    h[7] = s.ts >>> 24;
    h.writeUIntBE(streamIdField, 8, 3);
    parts.push(h, s.body);
    if (i < subs.length - 1 || lastBackPointer) {
      const bp = Buffer.alloc(4);
      bp.writeUInt32BE(11 + s.body.length);
      parts.push(bp);
    }
  });
  return Buffer.concat(parts);
}

describe('splitAggregate', () => {
  test('splits FLV-tag records and rebases timestamps on the aggregate timestamp', () => {
    const subs: Sub[] = [
      { type: 9, ts: 0x01000010, body: Buffer.from('170100000001', 'hex') }, // ts uses the extended byte
      { type: 8, ts: 0x01000020, body: Buffer.from('af01aa', 'hex') },
      { type: 9, ts: 0x01000030, body: Buffer.alloc(0) },
    ];
    const agg: RtmpMessage = { csid: 6, type: 22, streamId: 1, timestamp: 5000, payload: aggregatePayload(subs) };
    const out = splitAggregate(agg);
    assert.ok(Array.isArray(out));
    assert.deepEqual(
      out.map((m) => ({ csid: m.csid, type: m.type, streamId: m.streamId, timestamp: m.timestamp, hex: m.payload.toString('hex') })),
      [
        { csid: 6, type: 9, streamId: 1, timestamp: 5000, hex: '170100000001' },
        { csid: 6, type: 8, streamId: 1, timestamp: 5016, hex: 'af01aa' },
        { csid: 6, type: 9, streamId: 1, timestamp: 5032, hex: '' },
      ],
    );
    // without the final back pointer too
    const out2 = splitAggregate({ ...agg, payload: aggregatePayload(subs, { lastBackPointer: false }) });
    assert.ok(Array.isArray(out2));
    assert.equal(out2.length, 3);
  });

  test('property: any list of media sub-messages survives; timestamps are aggregate + (ts - first ts) mod 2^32', () => {
    const subArb = fc.record({
      type: fc.constantFrom(8, 9, 18, 15),
      ts: fc.nat({ max: 0xffffffff }),
      body: fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
    });
    fc.assert(
      fc.property(fc.array(subArb, { minLength: 1, maxLength: 8 }), fc.nat({ max: 0xffffffff }), fc.boolean(), (subs, aggTs, lastBp) => {
        const out = splitAggregate({ csid: 4, type: 22, streamId: 3, timestamp: aggTs, payload: aggregatePayload(subs, { lastBackPointer: lastBp }) });
        assert.ok(Array.isArray(out));
        assert.equal(out.length, subs.length);
        subs.forEach((s, i) => {
          assert.equal(out[i]!.type, s.type);
          assert.ok(out[i]!.payload.equals(s.body));
          assert.equal(out[i]!.timestamp, (aggTs + s.ts - subs[0]!.ts + 2 ** 32 * 2) % 2 ** 32);
        });
      }),
    );
  });

  test('malformed aggregates → MESSAGE_MALFORMED, never a throw', () => {
    const good = aggregatePayload([{ type: 9, ts: 0, body: Buffer.from('1701', 'hex') }]);
    const m = (payload: Buffer, type = 22): RtmpMessage => ({ csid: 4, type, streamId: 1, timestamp: 0, payload });
    malformed(splitAggregate(m(good, 9))); // not an aggregate
    malformed(splitAggregate(m(Buffer.alloc(0)))); // empty
    malformed(splitAggregate(m(good.subarray(0, 10)))); // header cut
    malformed(splitAggregate(m(good.subarray(0, 12)))); // body cut
    malformed(splitAggregate(m(Buffer.concat([good, Buffer.from([9, 0])])))); // trailing junk
    malformed(splitAggregate(m(aggregatePayload([{ type: 22, ts: 0, body: Buffer.from('00', 'hex') }])))); // nested
    malformed(splitAggregate(m(aggregatePayload([{ type: 1, ts: 0, body: Buffer.from('00001000', 'hex') }])))); // control inside
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (bytes) => {
        const r = splitAggregate(m(Buffer.from(bytes)));
        assert.ok(Array.isArray(r) || r instanceof RtmpProtocolError);
      }),
    );
  });

  test('an aggregate arriving through the chunk decoder splits the same', () => {
    const subs: Sub[] = [
      { type: 9, ts: 100, body: Buffer.alloc(300, 1) },
      { type: 8, ts: 120, body: Buffer.alloc(50, 2) },
    ];
    const agg: RtmpMessage = { csid: 6, type: 22, streamId: 1, timestamp: 100, payload: aggregatePayload(subs) };
    const dec = new ChunkStreamDecoder().push(encodeMessageFmt0(agg, 128));
    assert.ok(Array.isArray(dec));
    const out = splitAggregate(dec[0]!);
    assert.ok(Array.isArray(out));
    assert.deepEqual(out.map((x) => [x.type, x.timestamp, x.payload.length]), [[9, 100, 300], [8, 120, 50]]);
  });
});
