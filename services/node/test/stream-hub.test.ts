import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { FlvDecoder, FlvError } from '@meshcast/proto';
import { StreamHub, type MediaSink, type PublisherHandle } from '../src/media/stream-hub.ts';
import type { WireFormat } from '../src/media/frame.ts';

const log = pino({ level: 'silent' });

/** A sink that decodes what the hub writes (FLV tags) so tests see exactly what a viewer gets. */
class RecordingSink implements MediaSink {
  readonly format: WireFormat = { kind: 'flv' };
  private readonly decoder = new FlvDecoder();
  tags: Array<{ type: number; timestamp: number; payload: Buffer }> = [];
  buffered = 0;
  writes = 0;
  evicted: string | undefined;
  constructor(readonly id: string) {
    // The FLV decoder needs a file header first; the hub writes only tags.
    this.decoder.push(Buffer.from([0x46, 0x4c, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0]));
  }
  bufferedBytes(): number {
    return this.buffered;
  }
  write(buf: Buffer): void {
    this.writes++;
    const tags = this.decoder.push(buf);
    if (tags instanceof FlvError) throw tags;
    this.tags.push(...tags);
  }
  evict(reason: string): void {
    this.evicted = reason;
  }
}

const AVC_SEQ = Buffer.from([0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 0]);
const AAC_SEQ = Buffer.from([0xaf, 0, 0x12, 0x10]);
const key = (n: number): Buffer => Buffer.from([0x17, 1, 0, 0, 0, n & 0xff, 1, 2, 3]);
const inter = (n: number): Buffer => Buffer.from([0x27, 1, 0, 0, 0, n & 0xff, 4, 5]);
const audio = (n: number): Buffer => Buffer.from([0xaf, 1, n & 0xff]);

function publisher(id: string): PublisherHandle & { evictions: string[] } {
  const evictions: string[] = [];
  return { id, kind: 'rtmp', evict: (r) => evictions.push(r), evictions };
}

function hub(over: Partial<ConstructorParameters<typeof StreamHub>[2]> = {}): StreamHub {
  return new StreamHub('live', 's', { gopCache: true, gopCacheMaxBytes: 1 << 20, flushMs: 0, sinkQueueBytes: 1000, maxLagMs: 50, ...over }, log);
}

function feedGop(h: StreamHub, start: number, frames: number, firstTs: number): number {
  let ts = firstTs;
  h.ingest(9, ts, key(start));
  h.ingest(8, ts, audio(start));
  for (let i = 1; i < frames; i++) {
    ts += 33;
    h.ingest(9, ts, inter(start + i));
    h.ingest(8, ts, audio(start + i));
  }
  return ts;
}

test('a viewer joining mid-GOP gets metadata, headers and the GOP from its keyframe at once', () => {
  const h = hub();
  const p = publisher('p1');
  h.attachPublisher(p);
  h.setMetadata({ width: 640, height: 360 });
  h.ingest(9, 0, AVC_SEQ);
  h.ingest(8, 0, AAC_SEQ);
  feedGop(h, 0, 30, 0);
  const last = feedGop(h, 100, 5, 1000);
  h.flush();
  const v = new RecordingSink('v1');
  h.addSink(v);
  assert.equal(v.tags[0]!.type, 18, 'metadata first');
  assert.deepEqual(v.tags[1]!.payload, AVC_SEQ);
  assert.deepEqual(v.tags[2]!.payload, AAC_SEQ);
  const media = v.tags.slice(3);
  assert.deepEqual(media[0]!.payload, key(100), 'starts at the latest keyframe, not the first GOP');
  assert.equal(media.filter((t) => t.type === 9).length, 5);
  assert.equal(media.at(-1)!.timestamp, last);
  // sequence headers are stamped at the GOP start so the viewer's media clock never runs backwards;
  // metadata stays at 0, where players expect stream metadata
  assert.equal(v.tags[0]!.timestamp, 0);
  for (const t of v.tags.slice(1, 3)) assert.equal(t.timestamp, 1000);
});

test('frames flushed together reach every caught-up viewer in one write, identical bytes', () => {
  const h = hub();
  h.attachPublisher(publisher('p'));
  h.ingest(9, 0, AVC_SEQ);
  feedGop(h, 0, 3, 0);
  h.flush();
  const sinks = [new RecordingSink('a'), new RecordingSink('b'), new RecordingSink('c')];
  for (const s of sinks) h.addSink(s);
  const before = sinks.map((s) => s.writes);
  feedGop(h, 10, 4, 200);
  h.flush();
  sinks.forEach((s, i) => assert.equal(s.writes - before[i]!, 1, 'one write per batch'));
  assert.deepEqual(sinks[0]!.tags, sinks[1]!.tags);
  assert.deepEqual(sinks[1]!.tags, sinks[2]!.tags);
});

test('a viewer that falls behind drops to the next keyframe (audio too), counts drops, and resumes with headers', () => {
  const h = hub({ maxLagMs: 10_000 });
  h.attachPublisher(publisher('p'));
  h.ingest(9, 0, AVC_SEQ);
  h.ingest(8, 0, AAC_SEQ);
  feedGop(h, 0, 2, 0);
  h.flush();
  const slow = new RecordingSink('slow');
  const fast = new RecordingSink('fast');
  h.addSink(slow);
  h.addSink(fast);
  slow.buffered = 5000; // above the 1000-byte bound
  feedGop(h, 10, 3, 100);
  h.flush();
  const slowCount = slow.tags.length;
  h.ingest(9, 300, inter(50));
  h.ingest(8, 300, audio(50));
  h.flush();
  assert.equal(slow.tags.length, slowCount, 'nothing written while behind');
  slow.buffered = 0;
  h.ingest(9, 333, inter(51)); // drained, but no keyframe yet: still waits
  h.flush();
  assert.equal(slow.tags.length, slowCount);
  feedGop(h, 20, 2, 400);
  h.flush();
  const resumed = slow.tags.slice(slowCount);
  assert.deepEqual(resumed[0]!.payload, AVC_SEQ, 'headers re-sent on resume');
  assert.deepEqual(resumed[1]!.payload, AAC_SEQ);
  assert.deepEqual(resumed[2]!.payload, key(20), 'resumes at the keyframe');
  assert.ok(h.sinkDrops('slow') >= 6 + 2 + 1, `drops counted (${h.sinkDrops('slow')})`);
  assert.equal(h.sinkDrops('fast'), 0);
  assert.ok(fast.tags.length > slow.tags.length);
  assert.equal(slow.evicted, undefined);
});

test('a viewer behind for longer than maxLag is evicted; others keep going', async () => {
  const h = hub({ maxLagMs: 30 });
  h.attachPublisher(publisher('p'));
  feedGop(h, 0, 2, 0);
  h.flush();
  const stuck = new RecordingSink('stuck');
  const ok = new RecordingSink('ok');
  h.addSink(stuck);
  h.addSink(ok);
  stuck.buffered = 1 << 20;
  h.ingest(9, 100, inter(1));
  h.flush();
  await new Promise((r) => setTimeout(r, 60));
  h.ingest(9, 133, inter(2));
  h.flush();
  assert.match(stuck.evicted ?? '', /behind/);
  assert.equal(h.sinkCount, 1);
  assert.equal(h.stats.evictedSinks, 1);
  assert.equal(ok.evicted, undefined);
});

test('timestamps stay monotonic for a viewer across a publisher reconnect, with fresh headers', () => {
  const h = hub();
  const p1 = publisher('p1');
  h.attachPublisher(p1);
  h.ingest(9, 5000, AVC_SEQ);
  feedGop(h, 0, 10, 5000);
  h.flush();
  const v = new RecordingSink('v');
  h.addSink(v);
  feedGop(h, 10, 5, 5400);
  h.flush();
  h.detachPublisher(p1);
  const before = v.tags.length;
  const lastTs = v.tags.at(-1)!.timestamp;
  const p2 = publisher('p2');
  h.attachPublisher(p2);
  const NEW_SEQ = Buffer.from([0x17, 0, 0, 0, 0, 9, 9, 9]);
  h.ingest(9, 0, NEW_SEQ); // the new encoder starts its clock at 0
  feedGop(h, 100, 5, 0);
  h.flush();
  const after = v.tags.slice(before);
  assert.ok(after.length > 0, 'viewer receives the new publisher');
  assert.deepEqual(after[0]!.payload, NEW_SEQ, 'new sequence header comes first');
  let prev = lastTs;
  for (const t of after) {
    assert.ok(t.timestamp >= prev, `timestamp ${t.timestamp} after ${prev}`);
    prev = t.timestamp;
  }
  assert.deepEqual(p1.evictions, []);
});

test('a second publisher takes the stream over and the first is evicted', () => {
  const h = hub();
  const p1 = publisher('p1');
  const p2 = publisher('p2');
  h.attachPublisher(p1);
  h.attachPublisher(p2);
  assert.equal(h.publisher, p2);
  assert.equal(p1.evictions.length, 1);
});

test('a GOP larger than the cache bound is not cached: new viewers wait for the next keyframe', () => {
  const h = hub({ gopCacheMaxBytes: 30 });
  h.attachPublisher(publisher('p'));
  feedGop(h, 0, 10, 0);
  h.flush();
  const v = new RecordingSink('v');
  h.addSink(v);
  assert.equal(v.tags.length, 0);
  feedGop(h, 20, 1, 500);
  h.flush();
  assert.deepEqual(v.tags.find((t) => t.type === 9)!.payload, key(20));
});

test('with the GOP cache off, a viewer starts at the next keyframe', () => {
  const h = hub({ gopCache: false });
  h.attachPublisher(publisher('p'));
  feedGop(h, 0, 3, 0);
  h.flush();
  const v = new RecordingSink('v');
  h.addSink(v);
  assert.equal(v.tags.length, 0);
  h.ingest(9, 200, inter(9));
  h.flush();
  assert.equal(v.tags.length, 0);
  feedGop(h, 30, 1, 233);
  h.flush();
  assert.deepEqual(v.tags[0]!.payload, key(30));
});
