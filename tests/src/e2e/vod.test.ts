/**
 * VOD apps with real clients: ffmpeg makes a 20 s MP4 (H.264 with B-frames + AAC, a keyframe
 * every 2 s) and an FLV of it in the app's root; one node process serves them.
 * - ffprobe and ffmpeg read both over RTMP (`mp4:dir/clip.mp4`, `clip.flv`, `clip`) and decode
 *   them end to end with the right duration;
 * - the project's RTMP client seeks to the middle and gets the keyframe at or before the target
 *   first, pauses and resumes without losing its place, asks getStreamLength, and gets
 *   Play.Complete, StreamEOF and Play.Stop at the end;
 * - ffprobe reads the HLS VOD playlist with the right duration, ffmpeg decodes it, and hls.js in
 *   headless Chromium plays it with currentTime growing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RtmpClient, type StatusInfo } from '@meshcast/node/client';
import { decodeAmf0, type RtmpMessage } from '@meshcast/proto';
import { NodeProcess } from '../harness/node-process.ts';
import { run } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { launchBrowser } from '../harness/browser.ts';
import { mintToken } from '../../../services/node/src/auth/token.ts';

const DURATION_S = 20;
const GOP_S = 2;
const FPS = 25;
const TOKEN_SECRET = 'vod-e2e-token-secret';

const tmp = mkdtempSync(join(tmpdir(), 'meshcast-vod-e2e-'));
const root = join(tmp, 'media');
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The media time ffmpeg reached decoding `url` to its end (its last `time=`), and its errors. */
async function decodeToEnd(url: string): Promise<{ code: number | null; seconds: number; frames: number; errors: string }> {
  const r = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-stats', '-rw_timeout', '15000000', '-i', url, '-f', 'null', '-'], 90_000);
  const time = [...r.stderr.matchAll(/time=(\d+):(\d+):([\d.]+)/g)].pop();
  const frames = [...r.stderr.matchAll(/frame=\s*(\d+)/g)].pop();
  const errors = r.stderr
    .split(/\r|\n/)
    .filter((l) => l.trim() !== '' && !/^frame=/.test(l.trim()))
    .join('\n');
  return { code: r.code, seconds: time ? Number(time[1]) * 3600 + Number(time[2]) * 60 + Number(time[3]) : 0, frames: frames ? Number(frames[1]) : 0, errors };
}

async function probeDuration(url: string): Promise<number> {
  const r = await run('ffprobe', ['-v', 'error', '-rw_timeout', '15000000', '-show_entries', 'format=duration', '-of', 'csv=p=0', url], 30_000);
  assert.equal(r.code, 0, r.stderr);
  return Number(r.stdout.trim());
}

interface Seen {
  at: number;
  kind: 'video' | 'audio' | 'status' | 'data' | 'eof';
  ts?: number;
  key?: boolean;
  header?: boolean;
  code?: string;
  name?: string;
}

/** A player of the project's RTMP client that records, in arrival order, frames, statuses, data messages and StreamEOF. */
async function recordingPlayer(url: string, start?: number): Promise<{ client: RtmpClient; seen: Seen[] }> {
  const seen: Seen[] = [];
  const onFrame = (m: RtmpMessage): void => {
    const at = Date.now();
    if (m.type === 9) seen.push({ at, kind: 'video', ts: m.timestamp, key: m.payload[0]! >> 4 === 1, header: m.payload[1] === 0 });
    else if (m.type === 8) seen.push({ at, kind: 'audio', ts: m.timestamp, header: m.payload[1] === 0 });
    else if (m.type === 18) {
      const v = decodeAmf0(m.payload);
      const name = Array.isArray(v) && typeof v[0] === 'string' ? v[0] : '?';
      const code = Array.isArray(v) && v[1] && typeof v[1] === 'object' && 'code' in v[1] ? String((v[1] as { code: unknown }).code) : undefined;
      seen.push({ at, kind: 'data', name, ...(code ? { code } : {}) });
    }
  };
  const client = await RtmpClient.connect(url);
  client.onFrame = onFrame;
  client.on('status', (s: StatusInfo) => seen.push({ at: Date.now(), kind: 'status', code: s.code }));
  client.on('eof', () => seen.push({ at: Date.now(), kind: 'eof' }));
  await client.play(undefined, undefined, start);
  return { client, seen };
}

describe('VOD apps: files over RTMP and HLS from a node process', () => {
  let node: NodeProcess;

  before(async () => {
    mkdirSync(join(root, 'dir'), { recursive: true });
    const mp4 = join(root, 'dir', 'clip.mp4');
    const made = await run(
      'ffmpeg',
      [
        ...['-v', 'error', '-f', 'lavfi', '-i', `testsrc=size=640x360:rate=${FPS}`, '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100'],
        ...['-t', String(DURATION_S), '-c:v', 'libx264', '-preset', 'ultrafast', '-bf', '2', '-g', String(GOP_S * FPS), '-keyint_min', String(GOP_S * FPS), '-sc_threshold', '0', '-pix_fmt', 'yuv420p'],
        ...['-c:a', 'aac', '-b:a', '64k', '-movflags', '+faststart', '-y', mp4],
      ],
      60_000,
    );
    assert.equal(made.code, 0, made.stderr);
    const flv = await run('ffmpeg', ['-v', 'error', '-i', mp4, '-c', 'copy', '-f', 'flv', '-y', join(root, 'clip.flv')], 60_000);
    assert.equal(flv.code, 0, flv.stderr);
    // `vod` is open; `paid` serves the same files to signed play tokens only.
    node = await NodeProcess.start({ config: { apps: { vod: { vod: { root } }, paid: { vod: { root } } }, auth: { token_secret: TOKEN_SECRET, apps: { paid: { play: { tokens: true } } } } } });
  });

  after(async () => {
    await node?.stop();
  });

  test('ffprobe and ffmpeg read the MP4 and the FLV over RTMP end to end, with the right duration', async () => {
    const urls = [`${node.rtmpUrl}/vod/mp4:dir/clip.mp4`, `${node.rtmpUrl}/vod/clip.flv`, `${node.rtmpUrl}/vod/clip`];
    for (const url of urls) assert.ok(Math.abs((await probeDuration(url)) - DURATION_S) <= 0.5, `ffprobe duration of ${url}`);
    // Played in real time: all three at once.
    const decoded = await Promise.all(urls.map((u) => decodeToEnd(u)));
    for (const [i, d] of decoded.entries()) {
      assert.equal(d.code, 0, `${urls[i]}: ${d.errors}`);
      assert.equal(d.errors, '', `${urls[i]} decodes without errors`);
      assert.ok(Math.abs(d.seconds - DURATION_S) <= 0.5, `${urls[i]} decoded ${d.seconds} s`);
      assert.ok(Math.abs(d.frames - DURATION_S * FPS) <= FPS / 2, `${urls[i]} decoded ${d.frames} pictures`);
    }
  });

  test('getStreamLength and onMetaData give the duration; a path out of the root is refused', async () => {
    const { client, seen } = await recordingPlayer(`${node.rtmpUrl}/vod/mp4:dir/clip.mp4`);
    try {
      assert.ok(Math.abs((await client.getStreamLength('mp4:dir/clip.mp4')) - DURATION_S) <= 0.1);
      assert.ok(Math.abs((await client.getStreamLength('clip')) - DURATION_S) <= 0.1);
      assert.equal(await client.getStreamLength('nothing.flv'), 0);
      await waitFor('onMetaData', () => seen.some((s) => s.kind === 'data' && s.name === 'onMetaData'), 5000);
      const codes = seen.filter((s) => s.kind === 'status').map((s) => s.code);
      assert.deepEqual(codes.slice(0, 2), ['NetStream.Play.Reset', 'NetStream.Play.Start']);
    } finally {
      client.close();
    }
    const bad = await RtmpClient.connect(`${node.rtmpUrl}/vod/x`);
    try {
      await assert.rejects(bad.play('mp4:../media/dir/clip.mp4'), /NetStream\.Play\.StreamNotFound/);
    } finally {
      bad.close();
    }
  });

  test('the play rules apply: a signed token for the file plays it, over RTMP and HLS; none, or another file\'s, is refused', async () => {
    const token = (stream: string): string => mintToken({ secret: TOKEN_SECRET, action: 'play', app: 'paid', stream, ttlSeconds: 600 }).query;
    // The token names the file as checked (`dir/clip.mp4`), whatever form the RTMP name takes.
    const ok = await RtmpClient.connect(`${node.rtmpUrl}/paid/x`);
    try {
      assert.equal((await ok.play(`mp4:dir/clip.mp4?${token('dir/clip.mp4')}`)).code, 'NetStream.Play.Start');
    } finally {
      ok.close();
    }
    for (const name of ['mp4:dir/clip.mp4', `mp4:dir/clip.mp4?${token('clip.flv')}`]) {
      const c = await RtmpClient.connect(`${node.rtmpUrl}/paid/x`);
      try {
        await assert.rejects(c.play(name), /NetStream\.Play\.Unauthorized/, name);
      } finally {
        c.close();
      }
    }
    const base = `${node.httpUrl}/paid/dir/clip.mp4`;
    assert.equal((await fetch(`${base}/index.m3u8`)).status, 403);
    assert.equal((await fetch(`${base}/index.m3u8?${token('clip.flv')}`)).status, 403);
    const playlist = await fetch(`${base}/index.m3u8?${token('dir/clip.mp4')}`);
    assert.equal(playlist.status, 200);
    const first = (await playlist.text()).split('\n').find((l) => l.endsWith('.ts') || l.includes('.ts?'))!;
    assert.ok(first.includes('sig='), `segment URIs carry the token: ${first}`);
    assert.equal((await fetch(`${base}/${first}`)).status, 200);
    assert.equal((await fetch(`${base}/0.ts`)).status, 403, 'a segment needs the token too');
  });

  test('seek to the middle: Seek.Notify, then the keyframe at or before the target first', async () => {
    const { client, seen } = await recordingPlayer(`${node.rtmpUrl}/vod/mp4:dir/clip.mp4`);
    try {
      await waitFor('first frames', () => seen.some((s) => s.kind === 'video' && !s.header), 5000);
      const target = 10_700;
      await client.seek(target);
      const notify = seen.findIndex((s) => s.kind === 'status' && s.code === 'NetStream.Seek.Notify');
      assert.ok(notify >= 0);
      await waitFor('frames after the seek', () => seen.slice(notify).some((s) => s.kind === 'video' && !s.header), 5000);
      const after = seen.slice(notify);
      const firstVideo = after.find((s) => s.kind === 'video' && !s.header)!;
      const expectedKey = Math.floor(target / 1000 / GOP_S) * GOP_S * 1000;
      assert.ok(firstVideo.key, 'the first picture after the seek is a keyframe');
      assert.equal(firstVideo.ts, expectedKey, 'the keyframe at or before the target');
      assert.ok(after.some((s) => s.kind === 'video' && s.header), 'the sequence header comes again');
      await waitFor('audio after the seek', () => seen.slice(notify).some((s) => s.kind === 'audio' && !s.header), 5000);
      const audio = seen.slice(notify).filter((s) => s.kind === 'audio' && !s.header);
      assert.ok(audio.every((a) => a.ts! >= expectedKey - 100), 'no audio from before the keyframe');
    } finally {
      client.close();
    }
  });

  test('play with a start position begins at the keyframe at or before it', async () => {
    const { client, seen } = await recordingPlayer(`${node.rtmpUrl}/vod/clip.flv`, 6500);
    try {
      await waitFor('first picture', () => seen.some((s) => s.kind === 'video' && !s.header), 5000);
      const first = seen.find((s) => s.kind === 'video' && !s.header)!;
      assert.ok(first.key);
      assert.ok(Math.abs(first.ts! - 6000) <= 50, `first picture at ${first.ts}`);
    } finally {
      client.close();
    }
  });

  test('pause stops the media, unpause resumes where it was', async () => {
    const { client, seen } = await recordingPlayer(`${node.rtmpUrl}/vod/clip.flv`);
    try {
      await sleep(1500);
      await client.pause(true, 1500);
      const paused = seen.length;
      const lastTs = Math.max(...seen.filter((s) => s.kind === 'video').map((s) => s.ts!));
      await sleep(2500);
      const during = seen.slice(paused).filter((s) => s.kind === 'video' || s.kind === 'audio');
      assert.deepEqual(during, [], 'no media while paused');
      await client.pause(false, lastTs);
      await waitFor('media after unpause', () => seen.slice(paused).some((s) => s.kind === 'video'), 5000);
      const next = seen.slice(paused).find((s) => s.kind === 'video')!;
      assert.ok(next.ts! > lastTs && next.ts! - lastTs <= 100, `resumed at ${next.ts} after ${lastTs}`);
    } finally {
      client.close();
    }
  });

  test('at the end: onPlayStatus Play.Complete, StreamEOF, then Play.Stop', async () => {
    const { client, seen } = await recordingPlayer(`${node.rtmpUrl}/vod/mp4:dir/clip.mp4`);
    try {
      await client.seek((DURATION_S - 3) * 1000);
      await waitFor('Play.Stop', () => seen.some((s) => s.kind === 'status' && s.code === 'NetStream.Play.Stop'), 10_000, 50);
      const complete = seen.findIndex((s) => s.kind === 'data' && s.name === 'onPlayStatus' && s.code === 'NetStream.Play.Complete');
      const eof = seen.findIndex((s) => s.kind === 'eof');
      const stop = seen.findIndex((s) => s.kind === 'status' && s.code === 'NetStream.Play.Stop');
      assert.ok(complete >= 0 && eof > complete && stop > eof, `order: complete ${complete}, eof ${eof}, stop ${stop}`);
      const lastVideo = Math.max(...seen.filter((s) => s.kind === 'video').map((s) => s.ts!));
      assert.ok(lastVideo >= (DURATION_S - 0.1) * 1000 - 100, `last picture at ${lastVideo}`);
      // Paced in real time: from the seek (3 s before the end) to Play.Stop takes about 3 s.
      const seekAt = seen.find((s) => s.kind === 'status' && s.code === 'NetStream.Seek.Notify')!.at;
      const tookMs = seen[stop]!.at - seekAt;
      assert.ok(tookMs >= 2000 && tookMs <= 6000, `Play.Stop ${tookMs} ms after the seek`);
    } finally {
      client.close();
    }
  });

  test('HLS VOD: a whole playlist cut on keyframes; ffprobe and ffmpeg read it with the right duration', async () => {
    const url = `${node.httpUrl}/vod/dir/clip.mp4/index.m3u8`;
    const r = await fetch(url);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /mpegurl/);
    const text = await r.text();
    assert.match(text, /#EXT-X-PLAYLIST-TYPE:VOD/);
    assert.match(text, /#EXT-X-ENDLIST\s*$/);
    const durations = [...text.matchAll(/#EXTINF:([\d.]+),/g)].map((m) => Number(m[1]));
    assert.ok(durations.length >= 4, `${durations.length} segments`);
    assert.ok(
      durations.every((d) => d % GOP_S === 0 || Math.abs(d - Math.round(d / GOP_S) * GOP_S) < 0.05),
      `segments cut on keyframes: ${durations.join(', ')}`,
    );
    assert.ok(Math.abs(durations.reduce((a, b) => a + b, 0) - DURATION_S) <= 0.5);
    assert.ok(Math.abs((await probeDuration(url)) - DURATION_S) <= 0.5, 'ffprobe duration of the playlist');
    const d = await decodeToEnd(url);
    assert.equal(d.code, 0, d.errors);
    assert.ok(Math.abs(d.seconds - DURATION_S) <= 0.5, `decoded ${d.seconds} s`);
    assert.ok(Math.abs(d.frames - DURATION_S * FPS) <= FPS / 2, `decoded ${d.frames} pictures`);
    const flv = await fetch(`${node.httpUrl}/vod/clip.flv/index.m3u8`);
    assert.equal(flv.status, 200, 'an FLV file has a playlist too');
    assert.equal((await fetch(`${node.httpUrl}/vod/dir/clip.mp4/99.ts`)).status, 404);
    assert.equal((await fetch(`${node.httpUrl}/vod/dir/nothing.mp4/index.m3u8`)).status, 404);
  });

  test('hls.js in headless Chromium plays the VOD playlist, currentTime growing', async () => {
    const hlsPath = createRequire(import.meta.url).resolve('hls.js/dist/hls.min.js');
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      await page.setContent('<video id="v" muted playsinline></video>');
      await page.addScriptTag({ path: hlsPath });
      const url = `${node.httpUrl}/vod/dir/clip.mp4/index.m3u8`;
      await page.evaluate((src) => {
        const w = globalThis as unknown as { Hls: new () => { loadSource(u: string): void; attachMedia(v: unknown): void }; document: { getElementById(id: string): { play(): Promise<void> } } };
        const video = w.document.getElementById('v');
        const hls = new w.Hls();
        hls.loadSource(src);
        hls.attachMedia(video);
        void video.play().catch(() => undefined);
      }, url);
      const currentTime = (): Promise<number> => page.evaluate(() => (globalThis as unknown as { document: { getElementById(id: string): { currentTime: number } } }).document.getElementById('v').currentTime);
      const first = await waitFor('playback started', async () => ((await currentTime()) > 0.5 ? await currentTime() : undefined), 20_000, 200);
      await sleep(2000);
      const later = await currentTime();
      assert.ok(later - first >= 1.2, `currentTime ${first} → ${later}`);
      // The whole file's length, known at once (a VOD playlist).
      const duration = await page.evaluate(() => (globalThis as unknown as { document: { getElementById(id: string): { duration: number } } }).document.getElementById('v').duration);
      assert.ok(Math.abs(duration - DURATION_S) <= 0.5, `video.duration ${duration}`);
      assert.deepEqual(browser.errors.filter((e) => /^page:/.test(e)), []);
    } finally {
      await browser.close();
    }
  });
});
