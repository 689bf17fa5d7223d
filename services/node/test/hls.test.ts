/**
 * HLS building blocks without a node: the playlist writer, and the segmenter fed with real
 * H.264/AAC and HEVC frames (checked with ffprobe/ffmpeg).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../src/config.ts';
import { renderMediaPlaylist, targetDurationFor } from '../src/hls/playlist.ts';
import { HlsSegmenter, type HlsSegment } from '../src/hls/segmenter.ts';
import { FRAME_AUDIO, FRAME_VIDEO, MediaFrame } from '../src/media/frame.ts';
import { avcClip, clipFrames, firstVideoPesIsRandomAccess, hevcClip, toFrame, type Clip } from './hls-support.ts';

const tmp = mkdtempSync(join(tmpdir(), 'meshcast-hls-unit-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

interface ProbeFrame {
  media_type: string;
  key_frame: number;
  pict_type?: string;
  pts_time?: string;
}

function probeFile(data: Buffer, name: string): { streams: Array<{ codec_type: string; codec_name: string; width?: number; height?: number }>; frames: ProbeFrame[] } {
  const file = join(tmp, name);
  writeFileSync(file, data);
  const out = execFileSync('ffprobe', ['-v', 'error', '-show_streams', '-show_frames', '-of', 'json', file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return JSON.parse(out) as { streams: Array<{ codec_type: string; codec_name: string; width?: number; height?: number }>; frames: ProbeFrame[] };
}

function decodeErrors(data: Buffer, name: string): string {
  const file = join(tmp, name);
  writeFileSync(file, data);
  const r = spawnSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', file, '-f', 'null', '-'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stderr;
}

function durations(segs: readonly HlsSegment[]): number[] {
  return segs.map((s) => s.durationMs);
}

/** Timestamp of a clip's first keyframe (ffmpeg's FLV starts video a little after 0: AAC priming). */
function firstKey(clip: Clip): number {
  return clip.frames.find((f) => toFrame(f).isKeyframe)!.timestamp;
}

test('playlist writer: RFC 8216 live playlist with durations, sequence numbers and discontinuities', () => {
  const text = renderMediaPlaylist({
    targetDurationS: 2,
    segments: [
      { seq: 7, durationMs: 2000, discontinuity: false, discontinuitiesBefore: 1 },
      { seq: 8, durationMs: 1966, discontinuity: true, discontinuitiesBefore: 1 },
      { seq: 9, durationMs: 2033, discontinuity: false, discontinuitiesBefore: 2 },
    ],
    uri: (n) => `${n}.ts?key=a`,
  });
  assert.equal(
    text,
    [
      '#EXTM3U',
      '#EXT-X-VERSION:3',
      '#EXT-X-TARGETDURATION:2',
      '#EXT-X-MEDIA-SEQUENCE:7',
      '#EXT-X-DISCONTINUITY-SEQUENCE:1',
      '#EXTINF:2.000,',
      '7.ts?key=a',
      '#EXT-X-DISCONTINUITY',
      '#EXTINF:1.966,',
      '8.ts?key=a',
      '#EXTINF:2.033,',
      '9.ts?key=a',
      '',
    ].join('\n'),
  );
  const empty = renderMediaPlaylist({ targetDurationS: 2, segments: [] });
  assert.equal(empty, '#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n');
  assert.ok(!/ENDLIST/.test(text), 'a live playlist has no end');
  // Target duration: an integer that covers every segment, never below the configured target.
  assert.equal(targetDurationFor(2, 2000), 2);
  assert.equal(targetDurationFor(2, 2001), 3);
  assert.equal(targetDurationFor(2, 900), 2);
  assert.equal(targetDurationFor(0.5, 1000), 1);
  assert.equal(targetDurationFor(1.5, 0), 2);
});

test('segmenter: H.264+AAC cut on keyframes at the target, sliding window, each segment decodes alone', () => {
  const clip = avcClip({ seconds: 4, fps: 10, gop: 10 });
  const seg = new HlsSegmenter({ targetDurationMs: 2000, windowLength: 3, maxBytes: 64 << 20 });
  seg.pushAll(clipFrames(clip, 3)); // 12 s: keyframes every second
  // Closed at 2, 4, 6, 8, 10 s; 10..12 s is still being cut (its end is the next keyframe).
  assert.equal(seg.stats.segments, 5);
  assert.deepEqual(durations(seg.listed), [2000, 2000, 2000]);
  assert.deepEqual(
    seg.listed.map((s) => s.seq),
    [2, 3, 4],
  );
  assert.ok(seg.segment(0), 'two segments past the playlist are still served');
  assert.equal(seg.segment(5), undefined);
  const text = seg.playlist();
  assert.match(text, /#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:2\n/);
  assert.equal(text.match(/#EXTINF:2\.000,/g)?.length, 3);
  assert.equal(seg.stats.droppedFrames, 0, seg.stats.lastError);

  for (const s of [seg.segment(0)!, seg.segment(3)!]) {
    assert.equal(s.data.length % 188, 0);
    assert.equal(s.data.readUInt16BE(1) & 0x1fff, 0, 'starts with the PAT');
    assert.equal(firstVideoPesIsRandomAccess(s.data), true, 'first video PES is a random access point');
    const p = probeFile(s.data, `avc-${s.seq}.ts`);
    assert.deepEqual(p.streams.map((x) => x.codec_name).sort(), ['aac', 'h264']);
    const v = p.streams.find((x) => x.codec_type === 'video')!;
    assert.deepEqual([v.width, v.height], [320, 240]);
    const video = p.frames.filter((f) => f.media_type === 'video');
    assert.equal(video.length, 20, '2 s at 10 fps');
    assert.equal(video[0]!.key_frame, 1, 'segment starts with a keyframe');
    assert.equal(video[0]!.pict_type, 'I');
    assert.equal(decodeErrors(s.data, `avc-dec-${s.seq}.ts`), '');
  }
  // Consecutive segments play as one stream.
  assert.equal(decodeErrors(Buffer.concat(seg.listed.map((s) => s.data)), 'avc-window.ts'), '');
});

test('segmenter: a GOP longer than the target makes longer segments and a larger (ceil) target duration', () => {
  const clip = avcClip({ seconds: 5, fps: 10, gop: 25 });
  const seg = new HlsSegmenter({ targetDurationMs: 2000, windowLength: 6, maxBytes: 64 << 20 });
  seg.pushAll(clipFrames(clip, 2));
  assert.deepEqual(durations(seg.listed), [2500, 2500, 2500]);
  assert.equal(seg.targetDurationS, 3);
  assert.match(seg.playlist(), /#EXT-X-TARGETDURATION:3\n/);

  const short = new HlsSegmenter({ targetDurationMs: 500, windowLength: 6, maxBytes: 64 << 20 });
  short.pushAll(clipFrames(avcClip({ seconds: 4, fps: 10, gop: 10 }), 1));
  assert.deepEqual(durations(short.listed), [1000, 1000, 1000], 'never cut between keyframes');
  assert.equal(short.targetDurationS, 1);
});

test('segmenter: a new publisher ends the segment early and marks a discontinuity; the discontinuity sequence follows the window', () => {
  const clip = avcClip({ seconds: 4, fps: 10, gop: 10 });
  const seg = new HlsSegmenter({ targetDurationMs: 2000, windowLength: 3, maxBytes: 64 << 20 });
  const first = clipFrames(clip, 1).filter((f) => f.timestamp < 3000); // publisher leaves at 3 s
  seg.pushAll(first);
  seg.publisherChanged();
  assert.deepEqual(durations(seg.listed), [2000, 1000], 'the open segment was closed at its last frame');
  // The hub continues the timeline (rebased) for the next publisher: headers again, then frames.
  seg.pushAll(clipFrames(clip, 1, 3001));
  const listed = seg.listed;
  assert.equal(listed[2]!.discontinuity, true);
  assert.equal(listed[2]!.startTs, 3001 + firstKey(clip));
  const text = seg.playlist();
  assert.match(text, /#EXTINF:1\.000,\n1\.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:2\.000,\n2\.ts\n/);
  assert.ok(!/DISCONTINUITY-SEQUENCE/.test(text));
  // Across the discontinuity the segments still play.
  assert.equal(decodeErrors(Buffer.concat([seg.segment(1)!.data, seg.segment(2)!.data]), 'disc.ts'), '');
  // Feed on until the discontinuity has left the playlist.
  seg.pushAll(clipFrames(clip, 3, 7001).slice(clip.headers.length));
  assert.ok(seg.listed[0]!.seq > 2);
  assert.match(seg.playlist(), /#EXT-X-DISCONTINUITY-SEQUENCE:1\n/);
  assert.ok(!/#EXT-X-DISCONTINUITY\n/.test(seg.playlist()));
});

test('segmenter: a changed decoder configuration or a new audio track starts a new segment with a discontinuity', () => {
  const a = avcClip({ seconds: 4, fps: 10, gop: 10 });
  const other = avcClip({ seconds: 4, fps: 10, gop: 10, size: '480x270' }); // another resolution: another SPS
  assert.ok(!a.headers[0]!.payload.equals(other.headers[0]!.payload));
  const seg = new HlsSegmenter({ targetDurationMs: 2000, windowLength: 6, maxBytes: 64 << 20 });
  seg.pushAll(clipFrames(a, 1));
  seg.pushAll(clipFrames(other, 1, 4000));
  const k = firstKey(a);
  assert.equal(firstKey(other), k);
  const d = seg.listed.map((s) => [s.startTs, s.discontinuity]);
  assert.deepEqual(d, [
    [k, false],
    [k + 2000, false],
    [k + 4000, true],
  ]);

  // Video first, audio header later: the PMT must gain the audio PID, so a new program.
  const v = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 6, maxBytes: 64 << 20 });
  const frames = clipFrames(a, 1);
  const audioHeader = frames.find((f) => f.type === FRAME_AUDIO && f.isSequenceHeader)!;
  const noAudio = frames.filter((f) => f.type === FRAME_VIDEO);
  v.pushAll(noAudio.filter((f) => f.isSequenceHeader || f.timestamp < 2000));
  v.push(audioHeader.restamped(2000));
  v.pushAll(frames.filter((f) => !f.isSequenceHeader && f.timestamp >= 2000));
  assert.deepEqual(
    v.listed.map((s) => [s.startTs, s.discontinuity]),
    [
      [k, false],
      [k + 1000, false],
      [k + 2000, true],
    ],
  );
  const p = probeFile(v.segment(2)!.data, 'late-audio.ts');
  assert.deepEqual(p.streams.map((x) => x.codec_name).sort(), ['aac', 'h264']);
  assert.deepEqual(probeFile(v.segment(0)!.data, 'no-audio.ts').streams.map((x) => x.codec_name), ['h264']);
});

test('segmenter: HEVC source gives HEVC segments starting with a keyframe', () => {
  const clip = hevcClip({ seconds: 4, fps: 10, gop: 10 });
  const seg = new HlsSegmenter({ targetDurationMs: 2000, windowLength: 6, maxBytes: 64 << 20 });
  seg.pushAll(clipFrames(clip, 2));
  assert.deepEqual(durations(seg.listed), [2000, 2000, 2000]);
  assert.equal(seg.stats.droppedFrames, 0, seg.stats.lastError);
  const s = seg.segment(1)!;
  const p = probeFile(s.data, 'hevc.ts');
  assert.deepEqual(p.streams.map((x) => x.codec_name), ['hevc']);
  assert.equal(p.frames[0]!.key_frame, 1);
  assert.equal(decodeErrors(s.data, 'hevc-dec.ts'), '');
});

test('segmenter: a codec MPEG-TS does not carry here is reported, and a waiting playlist request is woken', async () => {
  const seg = new HlsSegmenter({ targetDurationMs: 2000, windowLength: 6, maxBytes: 64 << 20 });
  const waiting = seg.waitForSegment(10_000);
  // Enhanced RTMP AV1 sequence start ('av01' + a minimal config record).
  const av1 = Buffer.concat([Buffer.from([0x90]), Buffer.from('av01'), Buffer.from([0x81, 0x00, 0x0c, 0x00])]);
  seg.push(new MediaFrame(FRAME_VIDEO, 0, av1, false, true));
  assert.match(seg.unsupported ?? '', /av1/);
  assert.equal(await waiting, false);
  // A later AVC publisher clears it.
  seg.publisherChanged();
  seg.pushAll(clipFrames(avcClip(), 1));
  assert.equal(seg.unsupported, undefined);
  assert.ok(seg.listed.length > 0);
});

test('segmenter: memory stays under max bytes; an oversized GOP is abandoned, not buffered', () => {
  const clip = avcClip({ seconds: 4, fps: 10, gop: 10 });
  const frames = clipFrames(clip, 5);
  const probe = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 6, maxBytes: 64 << 20 });
  probe.pushAll(frames);
  const segBytes = Math.max(...probe.listed.map((s) => s.data.length));

  // Room for about three segments: the window shrinks to fit.
  const maxBytes = Math.ceil(segBytes * 3.5);
  const seg = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 6, maxBytes });
  let peak = 0;
  for (const f of frames) {
    seg.push(f);
    peak = Math.max(peak, seg.bytes);
  }
  assert.ok(peak <= maxBytes, `peak ${peak} ≤ ${maxBytes}`);
  assert.ok(seg.listed.length >= 2 && seg.listed.length < 6, `window of ${seg.listed.length}`);
  assert.equal(seg.stats.abandonedSegments, 0);

  // A segment may not grow past half the bound: with a bound below two segments nothing completes.
  const tiny = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 6, maxBytes: Math.floor(segBytes * 1.2) });
  for (const f of frames) {
    tiny.push(f);
    assert.ok(tiny.bytes <= Math.floor(segBytes * 1.2));
  }
  assert.ok(tiny.stats.abandonedSegments > 0);
});

test('segmenter: waitForSegment resolves when the first segment is cut, or false at the timeout', async () => {
  const clip = avcClip({ seconds: 4, fps: 10, gop: 10 });
  const seg = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 6, maxBytes: 64 << 20 });
  assert.equal(await seg.waitForSegment(30), false);
  const waiting = seg.waitForSegment(5000);
  const frames = clipFrames(clip, 1);
  setTimeout(() => seg.pushAll(frames), 20);
  assert.equal(await waiting, true);
  assert.equal(await seg.waitForSegment(1), true, 'immediately once one exists');
  // Audio and video before the first keyframe (a viewer joining mid-GOP without a cache) are skipped.
  const late = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 6, maxBytes: 64 << 20 });
  const withoutFirstKey = frames.filter((f) => f.isSequenceHeader || f.timestamp >= 500);
  late.pushAll(withoutFirstKey);
  assert.equal(late.listed[0]!.startTs, firstKey(clip) + 1000);
});

test('segmenter: a restarted segmenter continues the media and discontinuity sequences', () => {
  const clip = avcClip({ seconds: 4, fps: 10, gop: 10 });
  const old = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 3, maxBytes: 64 << 20 });
  old.pushAll(clipFrames(clip, 1));
  assert.deepEqual(old.continuation, { firstSeq: 3, discontinuitiesBefore: 0 });
  const next = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 3, maxBytes: 64 << 20, ...old.continuation });
  next.pushAll(clipFrames(clip, 1, 60_000));
  assert.deepEqual(
    next.listed.map((s) => [s.seq, s.discontinuity]),
    [
      [3, true],
      [4, false],
      [5, false],
    ],
  );
  assert.match(next.playlist(), /#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-DISCONTINUITY\n#EXTINF/);
  const third = new HlsSegmenter({ targetDurationMs: 1000, windowLength: 3, maxBytes: 64 << 20, ...next.continuation });
  third.pushAll(clipFrames(clip, 1, 120_000));
  assert.match(third.playlist(), /#EXT-X-MEDIA-SEQUENCE:6\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n#EXT-X-DISCONTINUITY\n/);
});

test('config: hls defaults, overrides and bad values', () => {
  const d = loadConfig({ flags: { 'node-id': 'a' } });
  assert.deepEqual(d.hls, { target_duration_s: 2, playlist_length: 6, idle_timeout_s: 30, max_stream_bytes: 64 * 1024 * 1024, admission_cache_bytes: 16 * 1024 * 1024 });
  const c = loadConfig({ inline: { node_id: 'a', hls: { target_duration_s: 4, playlist_length: 3, idle_timeout_s: 0.5 } } });
  assert.equal(c.hls.target_duration_s, 4);
  assert.equal(c.hls.playlist_length, 3);
  assert.equal(c.hls.idle_timeout_s, 0.5);
  assert.throws(() => loadConfig({ inline: { node_id: 'a', hls: { target_duration_s: 0 } } }), /hls\.target_duration_s/);
  assert.throws(() => loadConfig({ inline: { node_id: 'a', hls: { playlist_length: 0 } } }), /hls\.playlist_length/);
  assert.throws(() => loadConfig({ inline: { node_id: 'a', hls: { idle_timeout_s: 0 } } }), /hls\.idle_timeout_s/);
  assert.throws(() => loadConfig({ inline: { node_id: 'a', hls: { segment_count: 3 } } }), /"hls\.segment_count"/);
});
