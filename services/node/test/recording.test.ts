/**
 * Recording, in process: segments cut on keyframes (injected clock), retention and the size
 * bound (injected clock), the local store round trip through a real stream hub, a store that
 * cannot be written (logged, viewers unaffected), a slow store (bounded queue) and the config
 * rules. The e2e test (tests/src/e2e/recording.test.ts) records real ffmpeg over two node
 * processes and a real NATS object store.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { FlvDecoder, FlvError } from '@meshcast/proto';
import { FRAME_AUDIO, FRAME_DATA, FRAME_VIDEO, MediaFrame, type WireFormat } from '../src/media/frame.ts';
import { StreamHub, type MediaSink, type PublisherHandle } from '../src/media/stream-hub.ts';
import { RecordingSegmenter, type SegmentOp } from '../src/recording/segmenter.ts';
import { segmentsToDelete, spansOf } from '../src/recording/retention.ts';
import { LocalDirStore } from '../src/recording/local-store.ts';
import { NatsObjectStore } from '../src/recording/object-store.ts';
import { RecordingService } from '../src/recording/recording-service.ts';
import { StreamRegistry } from '../src/media/stream-registry.ts';
import { StreamRecorder, type RecorderCounters } from '../src/recording/stream-recorder.ts';
import { readFlvTags } from '../src/recording/flv-segment.ts';
import { parseSegmentKey, segmentKey, type RecordingStore, type SegmentInfo } from '../src/recording/store.ts';
import { parseRange } from '../src/recording/recording-feature.ts';
import { loadConfig } from '../src/config.ts';

const AVC_SEQ = Buffer.from([0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 0]);
const AAC_SEQ = Buffer.from([0xaf, 0, 0x12, 0x10]);
const key = (n: number): Buffer => Buffer.from([0x17, 1, 0, 0, 0, n & 0xff, 1, 2, 3]);
const inter = (n: number): Buffer => Buffer.from([0x27, 1, 0, 0, 0, n & 0xff, 4, 5]);
const audio = (n: number): Buffer => Buffer.from([0xaf, 1, n & 0xff]);

/** 30 fps video with a keyframe every `gopMs`, and audio every ~23 ms, from `from` to `to` ms. */
function frames(from: number, to: number, gopMs = 1000): MediaFrame[] {
  const out: MediaFrame[] = [];
  let a = from;
  for (let t = from; t < to; t += 33) {
    const isKey = (t - from) % gopMs < 33;
    for (; a < t; a += 23) out.push(new MediaFrame(FRAME_AUDIO, a, audio(a), false, false));
    out.push(new MediaFrame(FRAME_VIDEO, t, isKey ? key(t) : inter(t), isKey, false));
  }
  return out;
}

const HEADERS = [new MediaFrame(FRAME_DATA, 0, Buffer.from([2, 0, 10, ...Buffer.from('onMetaData'), 3, 0, 0, 9]), false, true), new MediaFrame(FRAME_VIDEO, 0, AVC_SEQ, false, true), new MediaFrame(FRAME_AUDIO, 0, AAC_SEQ, false, true)];

/** Plays ops into byte buffers per opened segment. */
function apply(ops: SegmentOp[], segs: Array<{ startMs: number; data: Buffer[]; closedAt?: number }>): void {
  for (const op of ops) {
    if (op.op === 'open') segs.push({ startMs: op.startMs, data: [] });
    else if (op.op === 'write') segs[segs.length - 1]!.data.push(op.data);
    else segs[segs.length - 1]!.closedAt = op.durationMs;
  }
}

test('segments are cut at the first keyframe at or after segment_s, each playable alone with timestamps from 0 and its wall-clock start', () => {
  let now = 1_700_000_000_000;
  const seg = new RecordingSegmenter({ segmentMs: 2500, now: () => now });
  const segs: Array<{ startMs: number; data: Buffer[]; closedAt?: number }> = [];
  apply(seg.push(HEADERS), segs);
  assert.equal(segs.length, 0, 'no segment before the first keyframe');
  // Feed in 100 ms batches, the clock following media time.
  const all = frames(0, 7000);
  for (let t = 0; t < 7000; t += 100) {
    now = 1_700_000_000_000 + t;
    apply(seg.push(all.filter((f) => f.timestamp >= t && f.timestamp < t + 100)), segs);
  }
  // The clock runs 2 s ahead of the media (the encoder stalled): the next segment's start follows the clock again.
  for (let t = 7000; t < 10_000; t += 100) {
    now = 1_700_000_002_000 + t;
    apply(seg.push(frames(7000, 10_000).filter((f) => f.timestamp >= t && f.timestamp < t + 100)), segs);
  }
  apply(seg.restart(), segs);
  assert.equal(segs.length, 4);
  assert.equal(segs[3]!.startMs - 1_700_000_000_000, 2000 + 9000, 'after a drift past 1 s, the start is the clock again');
  segs.pop();
  // Keyframes at 0, 1023, 2013, 3003, 4026, 5016, 6006: cuts at 3003 (≥ 2500) and 6006 (≥ 3003 + 2500).
  assert.equal(segs.length, 3);
  const starts = segs.map((s) => s.startMs - 1_700_000_000_000);
  assert.deepEqual(starts, [0, 3003, 6006], 'the first start is the clock at the first keyframe; the next ones follow in media time');
  for (const [i, s] of segs.entries()) {
    const tags = readFlvTags(Buffer.concat(s.data));
    assert.equal(tags[0]!.type, FRAME_DATA, 'metadata first');
    assert.deepEqual(tags[1]!.payload, AVC_SEQ, 'then the video sequence header');
    assert.deepEqual(tags[2]!.payload, AAC_SEQ, 'then the audio sequence header');
    const media = tags.slice(3);
    assert.equal(media[0]!.type, FRAME_VIDEO);
    assert.equal(media[0]!.payload[0], 0x17, `segment ${i} starts on a keyframe`);
    assert.equal(media[0]!.timestamp, 0, 'timestamps start at 0');
    for (let k = 1; k < media.length; k++) assert.ok(media[k]!.timestamp >= media[k - 1]!.timestamp, 'timestamps never go back');
    const last = media[media.length - 1]!.timestamp;
    assert.equal(s.closedAt, last, 'the closing duration is the last frame\'s timestamp');
    if (i < 2) assert.ok(last >= 2500 - 33 && last < 2500 + 1000, `segment ${i} lasts ${last} ms: segment_s to one GOP more`);
  }
});

test('a new publisher closes the open segment; the next one opens at its first keyframe with its headers', () => {
  const seg = new RecordingSegmenter({ segmentMs: 60_000, now: () => 0 });
  const segs: Array<{ startMs: number; data: Buffer[]; closedAt?: number }> = [];
  apply(seg.push([...HEADERS, ...frames(0, 1500)]), segs);
  apply(seg.newPublisher(), segs);
  assert.equal(segs.length, 1);
  assert.ok(segs[0]!.closedAt! > 1400);
  const seq2 = Buffer.from([0x17, 0, 0, 0, 0, 1, 0x4d, 0, 0x1e, 0xff, 0xe1, 0, 0]);
  // The new publisher's frames before its keyframe are not recorded.
  apply(seg.push([new MediaFrame(FRAME_VIDEO, 1600, inter(1), false, false), new MediaFrame(FRAME_VIDEO, 1601, seq2, false, true), ...frames(1700, 2000)]), segs);
  assert.equal(segs.length, 2);
  const tags = readFlvTags(Buffer.concat(segs[1]!.data));
  assert.deepEqual(tags.find((t) => t.type === FRAME_VIDEO)!.payload, seq2, 'the new publisher\'s sequence header');
  assert.equal(tags.filter((t) => t.type === FRAME_VIDEO)[1]!.payload[0], 0x17, 'then its keyframe');
});

function info(app: string, startMs: number, durationMs: number, bytes: number): SegmentInfo {
  const ref = { app, stream: 's', startMs, node: 'n1', format: 'flv' as const };
  return { ...ref, key: segmentKey(ref), durationMs, bytes };
}

test('retention deletes segments whose end is older than their app\'s retention, then the oldest until under max_bytes; never an open segment or an app with no rule', () => {
  const now = 1_000_000;
  const segs = [info('a', 0, 10_000, 100), info('a', 10_000, 10_000, 100), info('b', 0, 10_000, 100), info('keep', 0, 1000, 100), info('a', 900_000, 10_000, 100), info('a', 950_000, 10_000, 100)];
  const retentionMs = (app: string): number | undefined => ({ a: 985_000, b: 2_000_000 })[app];
  const writing = new Set([segs[5]!.key]);
  const r1 = segmentsToDelete(segs, { now, retentionMs, maxBytes: 10_000, usedBytes: 600, writing });
  assert.deepEqual(r1.map((d) => [d.seg.startMs, d.seg.app, d.reason]), [[0, 'a', 'retention']], 'only a\'s first segment ended more than 985 s ago');
  // The size bound: 600 bytes held, 250 allowed: the oldest go first (by start), the open one stays.
  const r2 = segmentsToDelete(segs, { now, retentionMs, maxBytes: 250, usedBytes: 600, writing });
  assert.deepEqual(r2.map((d) => d.reason), ['retention', 'max_bytes', 'max_bytes', 'max_bytes']);
  assert.ok(!r2.some((d) => writing.has(d.seg.key)));
  // As time passes (injected clock), more of them expire.
  const r3 = segmentsToDelete(segs, { now: now + 100_000, retentionMs, maxBytes: 10_000, usedBytes: 600, writing });
  assert.deepEqual(r3.map((d) => `${d.seg.app}@${d.seg.startMs}`), ['a@0', 'a@10000']);
});

test('spans join segments that follow each other and split at holes', () => {
  const spans = spansOf([info('a', 0, 5000, 1), info('a', 5033, 5000, 1), info('a', 20_000, 1000, 1)]);
  assert.deepEqual(spans, [{ startMs: 0, durationMs: 10_033 }, { startMs: 20_000, durationMs: 1000 }]);
});

test('segment keys keep names safe: no "/" or ".." can reach the path, and they parse back', () => {
  const ref = { app: '..', stream: 'a/../b c', startMs: Date.UTC(2026, 11, 5, 16, 20, 0, 123), node: 'n-1', format: 'flv' as const };
  const k = segmentKey(ref);
  assert.equal(k.split('/').length, 3);
  assert.ok(!k.split('/').includes('..'));
  assert.match(k, /2026-12-05T16-20-00\.123Z_n-1\.flv$/);
  assert.deepEqual(parseSegmentKey(k), ref);
});

test('Range header parsing', () => {
  assert.deepEqual(parseRange('bytes=0-99', 1000), { start: 0, end: 99 });
  assert.deepEqual(parseRange('bytes=900-', 1000), { start: 900, end: 999 });
  assert.deepEqual(parseRange('bytes=-100', 1000), { start: 900, end: 999 });
  assert.deepEqual(parseRange('bytes=990-2000', 1000), { start: 990, end: 999 });
  assert.equal(parseRange('bytes=1000-', 1000), 'unsatisfiable');
  assert.equal(parseRange('items=1-2', 1000), undefined);
  assert.equal(parseRange(undefined, 1000), undefined);
});

class Viewer implements MediaSink {
  readonly format: WireFormat = { kind: 'flv' };
  private readonly decoder = new FlvDecoder();
  tags = 0;
  constructor(readonly id: string) {
    this.decoder.push(Buffer.from([0x46, 0x4c, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0]));
  }
  bufferedBytes(): number {
    return 0;
  }
  write(buf: Buffer): void {
    const t = this.decoder.push(buf);
    if (t instanceof FlvError) throw t;
    this.tags += t.length;
  }
  evict(): void {}
}

function memoryLog(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

const publisher: PublisherHandle = { id: 'p', kind: 'rtmp', evict: () => undefined };
const newHub = (): StreamHub => new StreamHub('live', 'cam', { gopCache: true, gopCacheMaxBytes: 1 << 20, flushMs: 0, sinkQueueBytes: 1 << 20, maxLagMs: 1000 }, pino({ level: 'silent' }));
const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 5));
const counters = (): RecorderCounters => ({ bytesWritten: 0, bytesDropped: 0, segmentsWritten: 0, storeErrors: 0 });

async function publish(hub: StreamHub, from: number, to: number): Promise<void> {
  for (const f of frames(from, to)) {
    hub.ingest(f.type as 8 | 9, f.timestamp, f.payload);
    if (f.type === FRAME_VIDEO && f.isKeyframe) await tick();
  }
  await tick();
}

test('a recorder on a real hub writes segments to a local directory that read back whole', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rec-'));
  try {
    const store = new LocalDirStore(dir);
    const hub = newHub();
    hub.attachPublisher(publisher);
    const c = counters();
    const rec = new StreamRecorder(hub, store, { node: 'n1', format: 'flv', segmentMs: 2000, queueBytes: 1 << 20, now: Date.now }, c, pino({ level: 'silent' }));
    rec.start();
    for (const h of HEADERS.slice(1)) hub.ingest(h.type as 8 | 9, 0, h.payload);
    await publish(hub, 0, 5000);
    await rec.stop();
    const segs = await store.list({ app: 'live', stream: 'cam' });
    // Keyframes at 0, 1023, 2013, 3003, 4026: cut at 2013 and 4026.
    assert.equal(segs.length, 3, 'cut at the first keyframes at or after 2000 ms of media');
    assert.equal(c.segmentsWritten, 3);
    assert.ok(segs[0]!.durationMs >= 1900 && segs[0]!.durationMs <= 3000, `first segment ${segs[0]!.durationMs} ms`);
    const tags = readFlvTags(await store.read(segs[1]!));
    assert.equal(tags.filter((t) => t.type === FRAME_VIDEO && t.payload[1] === 1)[0]!.payload[0], 0x17, 'the second segment starts on a keyframe');
    assert.equal(tags[tags.length - 1]!.timestamp, segs[1]!.durationMs, 'the listed duration is the last tag\'s timestamp');
    const part = await store.read(segs[0]!, { start: 3, end: 13 });
    assert.deepEqual(part, (await store.read(segs[0]!)).subarray(3, 13), 'a byte range reads those bytes');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('an unwritable recording directory is logged once (then rate-limited) and the viewers keep getting every frame', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rec-'));
  try {
    // A file where the directory should be: nothing can be created under it (works as root too).
    await writeFile(join(dir, 'blocked'), 'x');
    await chmod(join(dir, 'blocked'), 0o444);
    const store = new LocalDirStore(join(dir, 'blocked', 'sub'));
    const hub = newHub();
    hub.attachPublisher(publisher);
    const viewer = new Viewer('v');
    hub.addSink(viewer);
    const { log, lines } = memoryLog();
    const c = counters();
    const rec = new StreamRecorder(hub, store, { node: 'n1', format: 'flv', segmentMs: 1000, queueBytes: 1 << 20, now: Date.now }, c, log);
    rec.start();
    for (const h of HEADERS.slice(1)) hub.ingest(h.type as 8 | 9, 0, h.payload);
    await publish(hub, 0, 6000);
    await rec.stop();
    const sent = frames(0, 6000).length + 2;
    assert.equal(viewer.tags, sent, 'the viewer got every frame');
    assert.ok(c.storeErrors >= 3, `a new segment was tried at each keyframe (${c.storeErrors} failures)`);
    const warns = lines.filter((l) => l.level === 40);
    assert.equal(warns.length, 1, 'one warning for the whole streak (the next after 30 s)');
    assert.match(String(warns[0]!.err), /ENOTDIR|EACCES|EEXIST/);
    assert.match(String(warns[0]!.msg), /recording failed; live streaming goes on/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('an unreachable object store is logged once and the viewers keep getting every frame', async () => {
  // Nothing listens on this port: every connection attempt is refused at once.
  const store = new NatsObjectStore({ servers: ['nats://127.0.0.1:1'], name: 'n1', bucket: 'meshcast-recordings', replicas: 1, maxBytes: 1 << 20, flushMs: 100, auth: {}, timeoutMs: 500 });
  const hub = newHub();
  hub.attachPublisher(publisher);
  const viewer = new Viewer('v');
  hub.addSink(viewer);
  const { log, lines } = memoryLog();
  const c = counters();
  const rec = new StreamRecorder(hub, store, { node: 'n1', format: 'flv', segmentMs: 1000, queueBytes: 1 << 20, now: Date.now }, c, log);
  rec.start();
  for (const h of HEADERS.slice(1)) hub.ingest(h.type as 8 | 9, 0, h.payload);
  await publish(hub, 0, 4000);
  await new Promise((r) => setTimeout(r, 300));
  await rec.stop();
  await store.close();
  assert.equal(viewer.tags, frames(0, 4000).length + 2, 'the viewer got every frame');
  assert.ok(c.storeErrors >= 1);
  const warns = lines.filter((l) => l.level === 40);
  assert.equal(warns.length, 1, 'one warning for the streak');
  assert.match(String(warns[0]!.err), /object store meshcast-recordings unreachable/);
  assert.equal(warns[0]!.store, 'object_store');
});

test('a slow store never holds the hub: the queue is bounded, frames are dropped to a keyframe and a new segment follows', async () => {
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => (release = r));
  const written: Buffer[][] = [];
  const slow: RecordingStore = {
    kind: 'local',
    open: async () => {
      const mine: Buffer[] = [];
      written.push(mine);
      return {
        append: async (d) => {
          await gate;
          mine.push(d);
        },
        close: async () => undefined,
      };
    },
    list: async () => [],
    read: async () => Buffer.alloc(0),
    delete: async () => undefined,
    usage: async () => ({ bytes: 0, segments: 0 }),
    close: async () => undefined,
  };
  const hub = newHub();
  hub.attachPublisher(publisher);
  const viewer = new Viewer('v');
  hub.addSink(viewer);
  const { log, lines } = memoryLog();
  const c = counters();
  const rec = new StreamRecorder(hub, slow, { node: 'n1', format: 'flv', segmentMs: 60_000, queueBytes: 2000, now: Date.now }, c, log);
  rec.start();
  for (const h of HEADERS.slice(1)) hub.ingest(h.type as 8 | 9, 0, h.payload);
  await publish(hub, 0, 3000);
  assert.equal(viewer.tags, frames(0, 3000).length + 2, 'the viewer got every frame while the store was stuck');
  assert.ok(c.bytesDropped > 0, 'frames past the queue bound were dropped');
  assert.equal(lines.filter((l) => l.level === 40 && /slower than the stream/.test(String(l.msg))).length, 1, 'logged once');
  release();
  await tick();
  await publish(hub, 3000, 6000);
  await rec.stop();
  assert.ok(written.length >= 2, 'a new segment opened at a keyframe once the queue drained');
  const second = readFlvTags(Buffer.concat(written[written.length - 1]!));
  assert.equal(second.find((t) => t.type === FRAME_VIDEO && t.payload[1] === 1)!.payload[0], 0x17, 'and it starts on a keyframe');
});

test('the service records what a non-relay publisher brings to a hub of a recording app, and stops when the hub is closed or a relay takes over', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rec-'));
  try {
    const config = loadConfig({ inline: { apps: { live: { record: { segment_s: 60 } } }, recording: { dir } }, env: {} });
    const registry = new StreamRegistry({ gopCache: true, gopCacheMaxBytes: 1 << 20, flushMs: 0, sinkQueueBytes: 1 << 20, maxLagMs: 1000 }, pino({ level: 'silent' }));
    const service = new RecordingService(config, registry, pino({ level: 'silent' }));
    const other = registry.open('other', 'x');
    other.attachPublisher(publisher);
    assert.equal(service.recording, 0, 'an app without record is not recorded');
    const relayed = registry.open('live', 'relayed');
    relayed.attachPublisher({ id: 'r', kind: 'relay', evict: () => undefined });
    assert.equal(service.recording, 0, 'a relay is not the owner');
    const hub = registry.open('live', 'cam');
    hub.attachPublisher(publisher);
    assert.equal(service.recording, 1);
    for (const h of HEADERS.slice(1)) hub.ingest(h.type as 8 | 9, 0, h.payload);
    await publish(hub, 0, 1500);
    hub.close('fenced');
    await until(() => service.recording === 0);
    await new Promise((r) => setTimeout(r, 50));
    const segs = await service.segments('live', 'cam');
    assert.equal(segs.length, 1);
    assert.ok(segs[0]!.durationMs > 1400, 'the segment holds what was published');
    await service.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

async function until(f: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !f(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(f());
}

test('record config: off by default, true means the defaults, and invalid settings fail at start naming the setting', () => {
  const d = loadConfig({ inline: {}, env: {} });
  assert.equal(d.app_defaults.record, false);
  const on = loadConfig({ inline: { apps: { live: { record: true } } }, env: {} });
  assert.deepEqual(on.apps.live!.record, { format: 'flv', segment_s: 60, retention_s: 86400 });
  const custom = loadConfig({ inline: { apps: { live: { record: { segment_s: 10, retention: '90m' } } } }, env: {} });
  assert.deepEqual(custom.apps.live!.record, { format: 'flv', segment_s: 10, retention_s: 5400 });
  assert.throws(() => loadConfig({ inline: { apps: { live: { record: { segment_s: 60, retention: '30s' } } } }, env: {} }), /config key "apps\.live\.record\.retention": 30 s is shorter than/);
  assert.throws(() => loadConfig({ inline: { apps: { live: { record: { format: 'avi' } } } }, env: {} }), /apps\.live\.record/);
  assert.throws(() => loadConfig({ inline: { app_defaults: { record: { retention: 'soon' } } }, env: {} }), /app_defaults\.record/);
  assert.throws(() => loadConfig({ inline: { recording: { storage: 'object_store' } }, env: {} }), /config key "recording\.storage": "object_store" needs NATS/);
});
