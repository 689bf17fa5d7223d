/**
 * VOD media: MP4 (mediabunny) and FLV (the project's reader) files made by ffmpeg here, with and
 * without B-frames. What the node would send is written back out as FLV and read by ffprobe:
 * every picture keeps its presentation time (composition offsets kept), and the stream decodes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFile, mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeAmf0, encodeFlvHeader, encodeFlvTag } from '@meshcast/proto';
import { FRAME_DATA, FRAME_VIDEO, type MediaFrame } from '../src/media/frame.ts';
import { keyframeAtOrBefore, openVodMedia, VodMediaError, VodMediaPool, type VodMedia } from '../src/vod/vod-media.ts';
import type { VodFile } from '../src/vod/vod-library.ts';
import { makeSegment, planSegments, VodHls } from '../src/vod/vod-hls.ts';

const run = promisify(execFile);
let dir = '';

/** 6 s of 25 fps H.264 (keyframe every 2 s) + AAC. */
async function makeMp4(name: string, bframes: number): Promise<string> {
  const out = join(dir, name);
  await run('ffmpeg', [
    ...['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100'],
    ...['-t', '6', '-c:v', 'libx264', '-preset', 'ultrafast', '-g', '50', '-keyint_min', '50', '-sc_threshold', '0', '-bf', String(bframes), '-pix_fmt', 'yuv420p'],
    ...['-c:a', 'aac', '-b:a', '64k', '-movflags', '+faststart', '-y', out],
  ]);
  return out;
}

async function vodFile(path: string, format: 'mp4' | 'flv'): Promise<VodFile> {
  return { app: 'vod', name: path.split('/').pop()!, path, size: (await stat(path)).size, format };
}

async function collect(media: VodMedia, fromMs: number, max = Infinity): Promise<MediaFrame[]> {
  const out: MediaFrame[] = [];
  for await (const f of media.frames(fromMs)) {
    out.push(f);
    if (out.length >= max) break;
  }
  return out;
}

/** Presentation times (ms) of the video packets of a file, as ffprobe reads them, sorted. */
async function videoPts(path: string): Promise<number[]> {
  const { stdout } = await run('ffprobe', ['-v', 'error', '-select_streams', 'v', '-show_entries', 'packet=pts_time', '-of', 'csv=p=0', path]);
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => Math.round(Number(l.split(',')[0]) * 1000))
    .sort((a, b) => a - b);
}

/** What a player would receive, as an FLV file: metadata, sequence headers, frames. */
async function asFlv(media: VodMedia, frames: MediaFrame[], path: string): Promise<void> {
  const parts = [encodeFlvHeader({ audio: true, video: true }), encodeFlvTag(FRAME_DATA, 0, encodeAmf0(['onMetaData', media.metadata]))];
  if (media.videoHeader) parts.push(encodeFlvTag(9, 0, media.videoHeader));
  if (media.audioHeader) parts.push(encodeFlvTag(8, 0, media.audioHeader));
  for (const f of frames) parts.push(f.flv());
  await writeFile(path, Buffer.concat(parts));
}

const cts = (f: MediaFrame): number => (f.payload.readUIntBE(2, 3) << 8) >> 8;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshcast-vod-media-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

for (const bframes of [0, 3]) {
  test(`MP4 with ${bframes} B-frames: duration, metadata, headers, keyframe index, and frames whose presentation times match the file's`, async () => {
    const path = await makeMp4(`clip-bf${bframes}.mp4`, bframes);
    const media = await openVodMedia(await vodFile(path, 'mp4'));
    try {
      assert.ok(Math.abs(media.durationMs - 6000) <= 100, `duration ${media.durationMs}`);
      assert.equal(media.metadata.width, 320);
      assert.equal(media.metadata.height, 240);
      assert.equal(media.metadata.videocodecid, 7);
      assert.equal(media.metadata.audiocodecid, 10);
      assert.equal(media.metadata.duration, media.durationMs / 1000);
      assert.deepEqual([...media.videoHeader!.subarray(0, 5)], [0x17, 0, 0, 0, 0]);
      assert.equal(media.videoHeader![5], 1, 'AVCDecoderConfigurationRecord version 1');
      assert.deepEqual([...media.audioHeader!.subarray(0, 2)], [0xaf, 0]);
      assert.deepEqual(
        media.keyframes.map((k) => k.timestamp),
        [0, 2000, 4000],
      );

      const all = await collect(media, 0);
      const video = all.filter((f) => f.type === FRAME_VIDEO);
      assert.equal(video.length, 150);
      assert.ok(video[0]!.isKeyframe);
      for (let i = 1; i < all.length; i++) assert.ok(all[i]!.timestamp >= all[i - 1]!.timestamp, `timestamps go back at ${i}`);
      const offsets = new Set(video.map(cts));
      if (bframes > 0) assert.ok(offsets.size > 1, 'B-frames have varying composition offsets');
      else assert.deepEqual([...offsets], [0]);
      // Every picture keeps its presentation time (shifted by the same delay for all).
      const shown = video.map((f) => f.timestamp + cts(f)).sort((a, b) => a - b);
      const shift = shown[0]!;
      assert.deepEqual(
        shown.map((t) => t - shift),
        await videoPts(path),
      );
      const flv = join(dir, `out-bf${bframes}.flv`);
      await asFlv(media, all, flv);
      const decoded = await run('ffmpeg', ['-v', 'error', '-i', flv, '-f', 'null', '-']);
      assert.equal(decoded.stderr.trim(), '', 'the frames decode without errors');

      // From 3 s: the keyframe at 2 s comes first; audio starts with it, not seconds before.
      const mid = await collect(media, 3000, 40);
      const firstVideo = mid.find((f) => f.type === FRAME_VIDEO)!;
      assert.ok(firstVideo.isKeyframe);
      assert.equal(firstVideo.timestamp, 2000 + (video[0]!.timestamp - 0));
      assert.ok(mid[0]!.timestamp >= 1950, `first frame at ${mid[0]!.timestamp}`);
    } finally {
      media.close();
    }
  });
}

test('FLV file: index from one scan, frames read from the keyframe offset, duration from the tags', async () => {
  const mp4 = await makeMp4('src.mp4', 3);
  const path = join(dir, 'clip.flv');
  await run('ffmpeg', ['-v', 'error', '-i', mp4, '-c', 'copy', '-f', 'flv', '-y', path]);
  const media = await openVodMedia(await vodFile(path, 'flv'));
  assert.ok(Math.abs(media.durationMs - 6000) <= 100, `duration ${media.durationMs}`);
  assert.equal(media.metadata.width, 320);
  assert.ok(media.videoHeader && media.audioHeader);
  assert.equal(media.keyframes.length, 3);
  assert.ok(media.keyframes.every((k, i) => Math.abs(k.timestamp - i * 2000) <= 100));
  const k = keyframeAtOrBefore(media.keyframes, 4500)!;
  assert.equal(k, media.keyframes[2]);
  const frames = await collect(media, 4500);
  // Coded pictures (ffmpeg ends an FLV with an AVC end-of-sequence tag, passed through too).
  const v = frames.filter((f) => f.type === FRAME_VIDEO && f.payload[1] === 1);
  assert.ok(v[0]!.isKeyframe);
  assert.equal(v[0]!.timestamp, k.timestamp);
  assert.equal(v.length, 50);
  assert.ok(frames.every((f) => !f.isSequenceHeader), 'headers are sent by the player, not repeated as frames');
  assert.ok(v.some((f) => cts(f) !== cts(v[0]!)), 'composition offsets are kept');
  const all = await collect(media, 0);
  assert.equal(all.filter((f) => f.type === FRAME_VIDEO && f.payload[1] === 1).length, 150);
  media.close();
});

test('a file that is not media is refused with a typed error', async () => {
  const path = join(dir, 'junk.mp4');
  await writeFile(path, Buffer.alloc(4096, 7));
  await assert.rejects(openVodMedia(await vodFile(path, 'mp4')), (e: unknown) => e instanceof VodMediaError);
  const flv = join(dir, 'junk.flv');
  await writeFile(flv, Buffer.alloc(4096, 7));
  await assert.rejects(openVodMedia(await vodFile(flv, 'flv')), (e: unknown) => e instanceof VodMediaError && e.reason === 'malformed');
});

test('the pool opens a file once for all its users, keeps a few idle, and forgets one that failed', async () => {
  const opened: string[] = [];
  const closed: string[] = [];
  const pool = new VodMediaPool(async (file) => {
    opened.push(file.name);
    if (file.name.startsWith('bad')) throw new VodMediaError('malformed', 'bad file');
    await new Promise((r) => setTimeout(r, 5));
    return { file, durationMs: 1, metadata: {}, videoHeader: undefined, audioHeader: undefined, keyframes: [], frames: async function* () {}, close: () => void closed.push(file.name) };
  });
  const f = (name: string, size = 1): VodFile => ({ app: 'vod', name, path: `/x/${name}`, size, format: 'mp4' });
  const [a, b] = await Promise.all([pool.acquire(f('a.mp4')), pool.acquire(f('a.mp4'))]);
  assert.deepEqual(opened, ['a.mp4'], 'two viewers at once: one open');
  a.close();
  a.close(); // a second close of the same use counts once
  b.close();
  await settleTimers();
  assert.deepEqual([...closed], [], 'kept while idle');
  const again = await pool.acquire(f('a.mp4'));
  assert.deepEqual(opened, ['a.mp4']);
  // Eight other idle files: the ninth idle one (the oldest) is closed; one in use never is.
  for (let i = 0; i < 9; i++) (await pool.acquire(f(`o${i}.mp4`))).close();
  await settleTimers();
  assert.deepEqual([...closed], ['o0.mp4']);
  assert.ok(!closed.includes('a.mp4'), 'in use');
  again.close();
  await assert.rejects(pool.acquire(f('bad.mp4')), VodMediaError);
  await assert.rejects(pool.acquire(f('bad.mp4')), VodMediaError);
  assert.equal(opened.filter((n) => n === 'bad.mp4').length, 2, 'a failed open is tried again');
  // Another size is another version of the file.
  (await pool.acquire(f('a.mp4', 2))).close();
  assert.equal(opened.filter((n) => n === 'a.mp4').length, 2);
  pool.closeIdle();
  await settleTimers();
  assert.equal(pool.size, 0);
});

async function settleTimers(): Promise<void> {
  await new Promise((r) => setTimeout(r, 10));
}

test('HLS VOD segments: cut on keyframes, each decodable alone at its time; a file cut short is refused at open, typed', async () => {
  const path = await makeMp4('seg.mp4', 2);
  const media = await openVodMedia(await vodFile(path, 'mp4'));
  const spans = planSegments(media, 4000);
  assert.deepEqual(spans.map((s) => s.startMs), [0, 4000]);
  assert.equal(spans[1]!.endMs, media.durationMs);
  const ts = await makeSegment(media, spans[1]!, true);
  assert.equal(ts.length % 188, 0);
  const file = join(dir, 'seg1.ts');
  await writeFile(file, ts);
  const probed = await run('ffprobe', ['-v', 'error', '-show_entries', 'format=start_time,duration', '-of', 'csv=p=0', file]);
  const [start, duration] = probed.stdout.trim().split(',').map(Number);
  assert.ok(Math.abs(start! - 4) < 0.2 && Math.abs(duration! - 2) < 0.2, probed.stdout);
  media.close();
  // Half of the file (moov first): the sample tables promise what is not there.
  const whole = await readFile(path);
  const cut = join(dir, 'cut.mp4');
  await writeFile(cut, whole.subarray(0, Math.floor(whole.length / 2)));
  await assert.rejects(openVodMedia(await vodFile(cut, 'mp4')), (e: unknown) => e instanceof VodMediaError && e.reason === 'malformed' && /cut short/.test(e.message));
});

test('an FLV file plays whatever it holds over RTMP, but HLS VOD refuses video it cannot carry', async () => {
  const path = join(dir, 'old.flv');
  await run('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-t', '2', '-c:v', 'flv1', '-f', 'flv', '-y', path]);
  const media = await openVodMedia(await vodFile(path, 'flv'));
  const frames = await collect(media, 0);
  assert.equal(frames.filter((f) => f.type === FRAME_VIDEO).length, 50, 'Sorenson H.263 frames pass through for RTMP');
  await assert.rejects(makeSegment(media, planSegments(media)[0]!, true), (e: unknown) => e instanceof VodMediaError && e.reason === 'unsupported' && /not H\.264 or HEVC/.test(e.message));
  media.close();
});

test('an audio-only MP4: no keyframes, frames from the time asked, HLS cut by time', async () => {
  const path = join(dir, 'tone.mp4');
  await run('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100', '-t', '9', '-c:a', 'aac', '-y', path]);
  const media = await openVodMedia(await vodFile(path, 'mp4'));
  assert.equal(media.videoHeader, undefined);
  assert.deepEqual(media.keyframes, []);
  assert.ok(Math.abs(media.durationMs - 9000) <= 100);
  const from = await collect(media, 5000, 5);
  assert.ok(from.every((f) => f.type === 8) && from[0]!.timestamp <= 5000 && from[0]!.timestamp > 4900, `first audio at ${from[0]!.timestamp}`);
  const spans = planSegments(media, 4000);
  assert.deepEqual(spans.map((s) => s.startMs), [0, 4000, 8000]);
  const ts = await makeSegment(media, spans[1]!, false);
  const file = join(dir, 'tone1.ts');
  await writeFile(file, ts);
  const probed = await run('ffprobe', ['-v', 'error', '-show_entries', 'format=start_time,duration', '-of', 'csv=p=0', file]);
  const [start, duration] = probed.stdout.trim().split(',').map(Number);
  assert.ok(Math.abs(start! - 4) < 0.1 && Math.abs(duration! - 4) < 0.1, probed.stdout);
  media.close();
});

test('an opened FLV file keeps being read by every reader after it is removed (a cache eviction), and readers at once do not disturb each other', async () => {
  const src = join(dir, 'clip.flv');
  const path = join(dir, 'evicted.flv');
  await copyFile(src, path);
  const media = await openVodMedia(await vodFile(path, 'flv'));
  await unlink(path);
  const [a, b] = await Promise.all([collect(media, 0), collect(media, 4500)]);
  assert.equal(a.filter((f) => f.type === FRAME_VIDEO && f.payload[1] === 1).length, 150);
  assert.equal(b.filter((f) => f.type === FRAME_VIDEO && f.payload[1] === 1).length, 50);
  media.close();
});

test('HLS VOD service: a VOD playlist with every segment; a segment made once for concurrent requests, then from the cache', async () => {
  const path = await makeMp4('hls.mp4', 2);
  const file = await vodFile(path, 'mp4');
  const pool = new VodMediaPool();
  const hls = new VodHls(pool);
  const text = await hls.playlist(file, 'sig=abc');
  assert.match(text, /#EXT-X-PLAYLIST-TYPE:VOD\n/);
  assert.match(text, /#EXTINF:4\.000,\n0\.ts\?sig=abc\n#EXTINF:2\.000,\n1\.ts\?sig=abc\n#EXT-X-ENDLIST\n$/);
  const [a, b] = await Promise.all([hls.segment(file, 1), hls.segment(file, 1)]);
  assert.ok(a && a === b, 'one build for both');
  assert.equal(hls.stats.segmentsMade, 1);
  assert.equal(await hls.segment(file, 1), a);
  assert.equal(hls.stats.segmentHits, 1);
  assert.equal(await hls.segment(file, 2), undefined, 'no such segment');
  assert.equal(pool.size, 1, 'one opened file for all of it');
  hls.close();
  pool.closeIdle();
});
