/**
 * fMP4 recording segments (record.format: fmp4): frames of a real ffmpeg-made FLV (H.264 with
 * B-frames, AAC) go through a hub and a StreamRecorder into fragmented MP4 files, which ffprobe
 * reads alone (codecs, duration, timestamps that grow, composition offsets kept); the playback
 * stitcher joins them, alone or next to FLV segments of the same stream.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { FlvDecoder, type FlvTag } from '@meshcast/proto';
import { StreamHub, type PublisherHandle } from '../src/media/stream-hub.ts';
import { LocalDirStore } from '../src/recording/local-store.ts';
import { StreamRecorder, type RecorderCounters } from '../src/recording/stream-recorder.ts';
import { readFmp4Tags } from '../src/recording/fmp4-segment.ts';
import { readFlvTags } from '../src/recording/flv-segment.ts';
import { stitchMp4 } from '../src/recording/mp4.ts';
import { parseSegmentKey, segmentKey, type SegmentFormat } from '../src/recording/store.ts';
import { loadConfig } from '../src/config.ts';

const run = promisify(execFile);
const publisher: PublisherHandle = { id: 'p', kind: 'rtmp', evict: () => undefined };
const counters = (): RecorderCounters => ({ bytesWritten: 0, bytesDropped: 0, segmentsWritten: 0, storeErrors: 0 });
const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 2));

/** 6 s of 30 fps H.264 (B-frames, a keyframe every second) and AAC, as ffmpeg writes it to FLV. */
async function sourceTags(dir: string): Promise<FlvTag[]> {
  const file = join(dir, 'src.flv');
  await run('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100', '-t', '6', '-c:v', 'libx264', '-preset', 'veryfast', '-bf', '2', '-g', '30', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-b:a', '64k', '-f', 'flv', file]);
  const tags = new FlvDecoder().push(await readFile(file));
  assert.ok(Array.isArray(tags));
  return tags.map((t) => ({ ...t, payload: Buffer.from(t.payload) }));
}

async function record(tags: FlvTag[], format: SegmentFormat, offsetMs: number, store: LocalDirStore): Promise<RecorderCounters> {
  const hub = new StreamHub('live', 'cam', { gopCache: true, gopCacheMaxBytes: 4 << 20, flushMs: 0, sinkQueueBytes: 4 << 20, maxLagMs: 1000 }, pino({ level: 'silent' }));
  hub.attachPublisher(publisher);
  const c = counters();
  let now = Date.parse('2026-12-05T20:00:00Z') + offsetMs;
  const rec = new StreamRecorder(hub, store, { node: 'n1', format, segmentMs: 2000, queueBytes: 8 << 20, now: () => now }, c, pino({ level: 'silent' }));
  rec.start();
  let last = 0;
  for (const t of tags) {
    if (t.type !== 8 && t.type !== 9) continue;
    now += Math.max(0, t.timestamp - last);
    last = Math.max(last, t.timestamp);
    hub.ingest(t.type, t.timestamp, t.payload);
    if (t.type === 9 && t.payload[0] === 0x17) await tick();
  }
  await tick();
  await rec.stop();
  return c;
}

interface Probe {
  streams: Array<{ codec_name: string; codec_type: string }>;
  format: { duration: string; format_name: string; tags?: Record<string, string> };
  packets: Array<{ codec_type: string; pts: number; dts: number }>;
}

async function probe(file: string): Promise<Probe> {
  const { stdout } = await run('ffprobe', ['-v', 'error', '-show_streams', '-show_format', '-show_packets', '-show_entries', 'packet=codec_type,pts,dts:stream=codec_name,codec_type:format=duration,format_name:format_tags', '-of', 'json', file]);
  return JSON.parse(stdout) as Probe;
}

test('fMP4 segments from a real ffmpeg stream: cut on keyframes, each read alone by ffprobe with its codecs, duration and growing timestamps, B-frame offsets kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rec-fmp4-'));
  try {
    const tags = await sourceTags(dir);
    const store = new LocalDirStore(join(dir, 'rec'));
    const c = await record(tags, 'fmp4', 0, store);
    const segs = await store.list({ app: 'live', stream: 'cam' });
    // Keyframes every second, segment_s 2: cut at 2 s and 4 s.
    assert.equal(segs.length, 3, `segments: ${segs.map((s) => s.key).join(', ')}`);
    assert.equal(c.segmentsWritten, 3);
    assert.equal(c.storeErrors, 0);
    assert.ok(segs.every((s) => s.format === 'fmp4' && s.key.endsWith('.mp4')), 'fMP4 segments are .mp4 files');
    assert.equal(c.bytesWritten, segs.reduce((n, s) => n + s.bytes, 0), 'bytes written are the files\' bytes');
    assert.equal(segs[1]!.startMs - segs[0]!.startMs, 2000, 'wall-clock starts follow the media time');
    let lastDur = 0;
    for (const s of segs) {
      const file = join(dir, 'rec', ...s.key.split('/'));
      const p = await probe(file);
      assert.match(p.format.format_name, /mp4/);
      assert.equal(p.format.tags?.date, new Date(s.startMs).toISOString(), 'the file carries its wall-clock start (©day, to the ms)');
      assert.deepEqual(p.streams.map((x) => x.codec_name).sort(), ['aac', 'h264']);
      const dur = Number(p.format.duration);
      // The listed duration runs to the last frame's decode time; ffprobe's adds that frame's length and the B-frame delay (~100 ms).
      assert.ok(dur * 1000 - s.durationMs >= 0 && dur * 1000 - s.durationMs < 250, `ffprobe duration ${dur} s vs listed ${s.durationMs} ms (${s.key})`);
      lastDur = dur;
      const video = p.packets.filter((x) => x.codec_type === 'video');
      const audio = p.packets.filter((x) => x.codec_type === 'audio');
      assert.ok(video.length >= 55 && audio.length > 80, `${video.length} video, ${audio.length} audio packets`);
      for (const list of [video, audio]) for (let i = 1; i < list.length; i++) assert.ok(list[i]!.dts > list[i - 1]!.dts, `dts grows at packet ${i} of ${s.key}`);
      assert.ok(video.some((x) => x.pts !== x.dts), 'composition offsets (B-frames) are kept');
      const sorted = video.map((x) => x.pts).sort((a, b) => a - b);
      for (let i = 1; i < sorted.length; i++) assert.ok(sorted[i]! > sorted[i - 1]!, 'no two frames share a presentation time');
      // Decoded whole: no error from the decoder.
      const { stderr } = await run('ffmpeg', ['-v', 'error', '-i', file, '-f', 'null', '-']);
      assert.equal(stderr.trim(), '', `ffmpeg decodes ${s.key} without errors`);
    }
    const total = (segs[2]!.startMs - segs[0]!.startMs) / 1000 + lastDur;
    assert.ok(Math.abs(total - 6.1) < 0.2, `the segments hold the 6 s source (${total.toFixed(2)} s)`);
    // What the stitcher reads back: B-frames as composition offsets, decode times growing.
    const back = await readFmp4Tags(await store.read(segs[0]!));
    const frames = back.filter((t) => t.type === 9 && t.payload[1] === 1);
    assert.ok(frames.some((t) => t.payload.readUIntBE(2, 3) > 0), 'composition offsets read back');
    for (let i = 1; i < frames.length; i++) assert.ok(frames[i]!.timestamp >= frames[i - 1]!.timestamp);
    // A segment whose writer was killed mid-fragment reads up to its last whole fragment.
    const whole = await store.read(segs[1]!);
    const cut = await readFmp4Tags(whole.subarray(0, Math.floor(whole.length * 0.8)));
    const all = await readFmp4Tags(whole);
    assert.ok(cut.length > 10 && cut.length < all.length, `a cut file reads ${cut.length} of ${all.length} tags`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the stitcher joins FLV and fMP4 segments of one stream (format changed between runs) into one MP4 ffmpeg decodes end to end', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rec-mix-'));
  try {
    const tags = await sourceTags(dir);
    const store = new LocalDirStore(join(dir, 'rec'));
    await record(tags, 'flv', 0, store);
    await record(tags, 'fmp4', 6000, store);
    const segs = await store.list({ app: 'live', stream: 'cam' });
    assert.deepEqual(segs.map((s) => s.format), ['flv', 'flv', 'flv', 'fmp4', 'fmp4', 'fmp4']);
    const parts = [];
    for (const s of segs) {
      const data = await store.read(s);
      parts.push({ startMs: s.startMs, tags: s.format === 'fmp4' ? await readFmp4Tags(data) : readFlvTags(data) });
    }
    const from = segs[0]!.startMs;
    const mp4 = await stitchMp4(parts, from, from + 12_000);
    assert.ok(Math.abs(mp4.durationMs - 12_000) < 300, `stitched ${mp4.durationMs} ms`);
    const file = join(dir, 'all.mp4');
    await writeFile(file, mp4.data);
    const p = await probe(file);
    assert.ok(Math.abs(Number(p.format.duration) - 12) < 0.3, `ffprobe ${p.format.duration} s`);
    const video = p.packets.filter((x) => x.codec_type === 'video');
    for (let i = 1; i < video.length; i++) assert.ok(video[i]!.dts > video[i - 1]!.dts, `dts grows at ${i}`);
    assert.ok(video.length >= 355, `${video.length} frames of 360`);
    const { stderr } = await run('ffmpeg', ['-v', 'error', '-i', file, '-f', 'null', '-']);
    assert.equal(stderr.trim(), '');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('record.format fmp4: accepted, keys end in .mp4 and parse back; other formats fail at start naming the setting', () => {
  const c = loadConfig({ inline: { apps: { live: { record: { format: 'fmp4' } } } }, env: {} });
  assert.deepEqual(c.apps.live!.record, { format: 'fmp4', segment_s: 60, retention_s: 86400 });
  const ref = { app: 'live', stream: 'cam', startMs: Date.parse('2026-12-05T20:00:00.250Z'), node: 'n1', format: 'fmp4' as const };
  const key = segmentKey(ref);
  assert.equal(key, 'live/cam/2026-12-05T20-00-00.250Z_n1.mp4');
  assert.deepEqual(parseSegmentKey(key), ref);
  assert.throws(() => loadConfig({ inline: { apps: { live: { record: { format: 'mkv' } } } }, env: {} }), /config key "apps\.live\.record"/);
});
