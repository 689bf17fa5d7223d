/**
 * Bytes held per connection by the chunk decoder: the assembly buffers of unfinished
 * messages, over all chunk streams, stay within maxPartialBytes; one more is refused with
 * PARTIAL_TOO_LARGE instead of letting a peer reserve chunk streams × message length.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import fc from 'fast-check';
import { ChunkStreamDecoder, ChunkStreamEncoder } from '../src/rtmp/chunk.ts';
import { RtmpProtocolError } from '../src/errors.ts';

const CHUNK = 128;
const HEADER = 12; // fmt 0 basic + message header, chunk stream ids below 64

/** The first chunk of a `length`-byte video message on chunk stream `csid`: the message stays unfinished. */
function firstChunk(csid: number, length: number): Buffer {
  const enc = new ChunkStreamEncoder(CHUNK);
  const whole = enc.encode({ csid, type: 9, streamId: 1, timestamp: 0, payload: Buffer.alloc(length, csid) });
  return whole.subarray(0, HEADER + Math.min(CHUNK, length));
}

/** The rest of that message: fmt 3 continuation chunks. */
function remainder(csid: number, length: number): Buffer {
  const enc = new ChunkStreamEncoder(CHUNK);
  const whole = enc.encode({ csid, type: 9, streamId: 1, timestamp: 0, payload: Buffer.alloc(length, csid) });
  return whole.subarray(HEADER + Math.min(CHUNK, length));
}

describe('chunk decoder partial-bytes budget', () => {
  test('63 unfinished 8 MiB messages: refused at the bound, not held', () => {
    const d = new ChunkStreamDecoder({ maxPartialBytes: 20 * 1024 * 1024 });
    let err: RtmpProtocolError | undefined;
    let started = 0;
    for (let csid = 3; csid < 66 && err === undefined; csid++) {
      const r = d.push(firstChunk(csid, 8 * 1024 * 1024 - 1));
      if (r instanceof RtmpProtocolError) err = r;
      else started++;
    }
    assert.equal(started, 2, 'two 8 MiB messages fit in 20 MiB, the third does not');
    assert.equal(err?.code, 'PARTIAL_TOO_LARGE');
    assert.equal(d.partialBytes, 0, 'a failed decoder holds nothing');
  });

  test('the bound can be raised (publish authorised) and lowered while decoding', () => {
    const d = new ChunkStreamDecoder({ maxPartialBytes: 1000 });
    assert.ok(d.push(firstChunk(3, 900)) instanceof Array);
    assert.equal(d.partialBytes, 900);
    assert.ok(d.push(firstChunk(4, 900)) instanceof RtmpProtocolError);
    const d2 = new ChunkStreamDecoder({ maxPartialBytes: 1000 });
    assert.ok(d2.push(firstChunk(3, 900)) instanceof Array);
    d2.setMaxPartialBytes(4000);
    assert.ok(d2.push(firstChunk(4, 900)) instanceof Array);
    assert.equal(d2.partialBytes, 1800);
    const done = d2.push(remainder(3, 900));
    assert.ok(Array.isArray(done) && done.length === 1 && done[0]!.payload.length === 900);
    assert.equal(d2.partialBytes, 900);
  });

  test('property: partial bytes never exceed the bound; finished and aborted messages release theirs', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 200, max: 20_000 }),
        fc.array(fc.record({ csid: fc.integer({ min: 3, max: 40 }), length: fc.integer({ min: 129, max: 6000 }), finish: fc.boolean(), abort: fc.boolean() }), { maxLength: 30 }),
        (bound, steps) => {
          const d = new ChunkStreamDecoder({ maxPartialBytes: bound });
          const open = new Map<number, number>();
          const enc = new ChunkStreamEncoder(CHUNK);
          for (const s of steps) {
            if (open.has(s.csid)) continue; // a new message on a busy chunk stream is a different error
            const r = d.push(firstChunk(s.csid, s.length));
            const expected = [...open.values()].reduce((a, b) => a + b, 0) + s.length;
            if (expected > bound) {
              assert.ok(r instanceof RtmpProtocolError && r.code === 'PARTIAL_TOO_LARGE');
              return;
            }
            assert.ok(Array.isArray(r));
            open.set(s.csid, s.length);
            assert.ok(d.partialBytes <= bound);
            if (s.finish) {
              const r2 = d.push(remainder(s.csid, s.length));
              assert.ok(Array.isArray(r2) && r2.length === 1);
              open.delete(s.csid);
            } else if (s.abort) {
              const abort = Buffer.alloc(4);
              abort.writeUInt32BE(s.csid);
              assert.ok(Array.isArray(d.push(enc.encode({ csid: 2, type: 2, streamId: 0, timestamp: 0, payload: abort }))));
              open.delete(s.csid);
            }
            assert.equal(d.partialBytes, [...open.values()].reduce((a, b) => a + b, 0));
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
