/**
 * A VOD app whose files are the recordings of a live app (`vod: {recordings: live}`), with real
 * peers: two ffmpeg encoders (H.264 + AAC, 9 s) publish at once, one to a lone node process (no
 * NATS: the local directory store) and one to node M1 of a two-node mesh (nats-server: the object
 * store). Then:
 * - lone node: ffprobe reads `rtmp://…/rec/mp4:cam.mp4` with the recorded span's duration and
 *   ffmpeg decodes it end to end over RTMP; an RTMP play from 4 s starts at the keyframe before; `cam@<UTC>.mp4` starts at that time; HTTP Range gives
 *   206 with the bytes of the whole file; the HLS VOD playlist lists segments and ends; an
 *   unknown stream is 404 (RTMP StreamNotFound), a traversal or a bad time 400; the VOD app's play
 *   rules apply (a signed token for `cam.mp4`); two requests make one stitch;
 * - lone node in headless Chromium: a <video> plays `cam.mp4` over HTTP from the start and after a
 *   seek to the middle, and hls.js plays the HLS VOD of it;
 * - mesh: M2, which recorded nothing, serves M1's recording over RTMP, HTTP and HLS.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RtmpClient } from '@meshcast/node/client';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher, run } from '../harness/ffmpeg.ts';
import { waitFor } from '../harness/ports.ts';
import { launchBrowser } from '../harness/browser.ts';
import { mintToken } from '../../../services/node/src/auth/token.ts';

const SECONDS = 9;
const ENCODER = { width: 320, height: 180, fps: 25, gop: 25, bitrate: '300k', seconds: SECONDS };
const MESH = { mesh_secret: 'e2e-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000 };
const APPS = {
  live: { record: { format: 'flv', segment_s: 3, retention: '1h' } },
  rec: { vod: { recordings: 'live' } },
  recsec: { vod: { recordings: 'live' } },
};
const TOKEN_SECRET = 'vod-rec-e2e-secret';

interface Listing {
  spans: Array<{ start: string; duration: number }>;
  segments: Array<{ node: string }>;
}

async function listing(node: NodeProcess): Promise<Listing> {
  const r = await fetch(`${node.httpUrl}/api/v1/recordings/live/cam`);
  assert.equal(r.status, 200);
  return (await r.json()) as Listing;
}

/** The recording once it stops changing (two listings a second apart agree). */
async function settled(node: NodeProcess): Promise<Listing> {
  let last = '';
  let out: Listing | undefined;
  await waitFor(`recording on ${node.nodeId} settles`, async () => {
    out = await listing(node);
    const now = JSON.stringify(out);
    const same = now === last && out.spans.length > 0;
    last = now;
    return same;
  }, 20_000, 1000);
  return out!;
}

async function probeDuration(url: string): Promise<number> {
  const r = await run('ffprobe', ['-v', 'error', '-rw_timeout', '15000000', '-show_entries', 'format=duration', '-of', 'csv=p=0', url], 30_000);
  assert.equal(r.code, 0, r.stderr);
  return Number(r.stdout.trim());
}

async function decodeToEnd(url: string): Promise<{ code: number | null; seconds: number; errors: string }> {
  const r = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-stats', '-rw_timeout', '15000000', '-i', url, '-f', 'null', '-'], 60_000);
  const time = [...r.stderr.matchAll(/time=(\d+):(\d+):([\d.]+)/g)].pop();
  const errors = r.stderr.split(/\r|\n/).filter((l) => l.trim() !== '' && !/^frame=/.test(l.trim())).join('\n');
  return { code: r.code, seconds: time ? Number(time[1]) * 3600 + Number(time[2]) * 60 + Number(time[3]) : 0, errors };
}

/** `20261205T160000Z` of a time (whole seconds, UTC). */
const stamp = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');

/**
 * In the page (plain JS: the project compiles without the DOM library). A muted <video> plays
 * the recording from the start, then from a seek to the middle.
 */
const PROGRESSIVE_PLAY = `(async () => {
  const v = document.createElement('video');
  v.muted = true;
  document.body.append(v);
  const until = (what, ok, ms) => new Promise((res, rej) => {
    const t0 = Date.now();
    const tick = () => {
      if (ok()) return res();
      if (v.error) return rej(new Error(what + ': media error ' + v.error.code + ' ' + v.error.message));
      if (Date.now() - t0 > ms) return rej(new Error(what + ': timed out at currentTime ' + v.currentTime));
      setTimeout(tick, 50);
    };
    tick();
  });
  v.src = '/rec/cam.mp4';
  await v.play();
  await until('plays from the start', () => v.currentTime > 1.5 && v.videoWidth > 0, 15000);
  const fromStart = { currentTime: v.currentTime, width: v.videoWidth, height: v.videoHeight, duration: v.duration };
  const target = v.duration / 2;
  v.currentTime = target;
  await until('plays after the seek', () => !v.seeking && v.currentTime > target + 1, 15000);
  const q = v.getVideoPlaybackQuality();
  return { fromStart, seekTo: target, afterSeek: v.currentTime, framesShown: q.totalVideoFrames - q.droppedVideoFrames };
})()`;

/** In the page, after hls.js is loaded: the HLS VOD of the recording until 2 s have played, or a fatal error. */
const HLS_PLAY = `(async () => {
  const v = document.createElement('video');
  v.muted = true;
  document.body.append(v);
  const player = new Hls();
  const fatal = [];
  player.on(Hls.Events.ERROR, (_e, d) => { if (d.fatal) fatal.push(d.details || '?'); });
  player.loadSource('/rec/cam.mp4/index.m3u8');
  player.attachMedia(v);
  const t0 = Date.now();
  while (!(v.currentTime > 2 && v.videoWidth > 0) && fatal.length === 0 && Date.now() - t0 < 20000) {
    if (v.paused && v.readyState >= 2) await v.play().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
  }
  const out = { currentTime: v.currentTime, width: v.videoWidth, duration: v.duration, fatal };
  player.destroy();
  return out;
})()`;

describe('recordings as a VOD source', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'meshcast-vodrec-e2e-'));
  let nats: NatsServer;
  let lone: NodeProcess;
  let m1: NodeProcess;
  let m2: NodeProcess;
  let loneRec: Listing;
  let meshRec: Listing;

  before(async () => {
    nats = await startNatsServer();
    const mesh = (id: string): Promise<NodeProcess> =>
      NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats.url] }, apps: APPS, recording: { flush_ms: 500 }, vod: { cache_dir: join(tmp, `cache-${id}`) } } });
    [lone, m1, m2] = await Promise.all([
      NodeProcess.start({
        nodeId: 'RL',
        config: { apps: APPS, recording: { dir: join(tmp, 'recordings') }, vod: { cache_dir: join(tmp, 'cache-RL') }, auth: { token_secret: TOKEN_SECRET, apps: { recsec: { play: { tokens: true } } } } },
      }),
      mesh('M1'),
      mesh('M2'),
    ]);
    await waitFor('mesh of 2', async () => (await m2.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length >= 2, 15_000, 100);
    const encoders = [new FfmpegPublisher(`${lone.rtmpUrl}/live/cam`, ENCODER), new FfmpegPublisher(`${m1.rtmpUrl}/live/cam`, ENCODER)];
    const codes = await Promise.all(encoders.map((e) => e.exited));
    assert.deepEqual(codes, [0, 0], encoders.map((e) => e.stderr).join('\n'));
    [loneRec, meshRec] = await Promise.all([settled(lone), settled(m2)]);
  });

  after(async () => {
    await Promise.all([lone?.stop(), m1?.stop(), m2?.stop()]);
    for (const n of [lone, m1, m2]) n?.cleanup();
    await nats?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('lone node: RTMP (ffprobe, ffmpeg end to end), a start time, Range, HLS VOD, 404/400, play rules, one stitch', async () => {
    assert.equal(loneRec.spans.length, 1, JSON.stringify(loneRec));
    const span = loneRec.spans[0]!;
    assert.ok(span.duration > SECONDS - 2, `recorded ${span.duration} s`);

    const rtmp = `${lone.rtmpUrl}/rec/mp4:cam.mp4`;
    const probed = await probeDuration(rtmp);
    assert.ok(Math.abs(probed - span.duration) < 1, `ffprobe ${probed} s vs the span's ${span.duration} s`);
    const decoded = await decodeToEnd(rtmp);
    assert.equal(decoded.code, 0, decoded.errors);
    assert.ok(Math.abs(decoded.seconds - span.duration) < 1, `ffmpeg decoded ${decoded.seconds} s of ${span.duration} s: ${decoded.errors}`);

    // RTMP seek: play from 4 s into the file starts at the keyframe at or before it (GOP 1 s), as for any VOD file.
    const seeker = await RtmpClient.connect(rtmp);
    const video: Array<{ ts: number; key: boolean }> = [];
    seeker.onFrame = (m) => {
      if (m.type === 9 && m.payload[1] === 1) video.push({ ts: m.timestamp, key: m.payload[0]! >> 4 === 1 });
    };
    try {
      await seeker.play(undefined, undefined, 4000);
      await waitFor('video after the seek', () => video.length > 0, 10_000, 50);
      assert.ok(video[0]!.key && video[0]!.ts <= 4000 && video[0]!.ts >= 2900, `first frame after play from 4000 ms: ${JSON.stringify(video[0])}`);
    } finally {
      seeker.close();
    }

    // From a time: 4 s into the span (whole seconds), up to the span's end, from the keyframe at or before it (GOP 1 s).
    const startMs = Date.parse(span.start);
    const atMs = Math.ceil(startMs / 1000) * 1000 + 4000;
    const fromAt = await probeDuration(`${lone.httpUrl}/rec/cam@${stamp(atMs)}.mp4`);
    const expected = (startMs + span.duration * 1000 - atMs) / 1000;
    assert.ok(fromAt >= expected - 0.5 && fromAt <= expected + 1.5, `from ${stamp(atMs)}: ${fromAt} s, expected about ${expected} s`);

    // HTTP: whole, then a range of it (a <video> tag's requests see the same file).
    const whole = Buffer.from(await (await fetch(`${lone.httpUrl}/rec/cam.mp4`)).arrayBuffer());
    assert.ok(whole.length > 50_000, `${whole.length} bytes`);
    assert.equal(whole.subarray(4, 8).toString('latin1'), 'ftyp');
    const ranged = await fetch(`${lone.httpUrl}/rec/cam.mp4`, { headers: { Range: 'bytes=1000-20999' } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers.get('content-range'), `bytes 1000-20999/${whole.length}`);
    assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(whole.subarray(1000, 21000)), 'the range holds the file\'s bytes');

    // HLS VOD of the same file.
    const playlist = await fetch(`${lone.httpUrl}/rec/cam.mp4/index.m3u8`);
    assert.equal(playlist.status, 200);
    const text = await playlist.text();
    const segs = text.split('\n').filter((l) => /^\d+\.ts/.test(l));
    assert.ok(segs.length >= 2, text);
    assert.equal(text.trim().split('\n').pop(), '#EXT-X-ENDLIST');
    const ts = Buffer.from(await (await fetch(`${lone.httpUrl}/rec/cam.mp4/${segs[0]}`)).arrayBuffer());
    assert.ok(ts.length > 188 && ts[0] === 0x47, 'an MPEG-TS segment');

    // Refusals.
    assert.equal((await fetch(`${lone.httpUrl}/rec/nobody.mp4`)).status, 404);
    assert.equal((await fetch(`${lone.httpUrl}/rec/cam@${stamp(startMs - 3_600_000)}.mp4`)).status, 404, 'a time with no recording');
    assert.equal((await fetch(`${lone.httpUrl}/rec/%2e%2e%2fcam.mp4`)).status, 400);
    assert.equal((await fetch(`${lone.httpUrl}/rec/cam@20261332T000000Z.mp4`)).status, 400);
    assert.equal((await fetch(`${lone.httpUrl}/rec/cam.flv`)).status, 400);
    const client = await RtmpClient.connect(`${lone.rtmpUrl}/rec/x`);
    try {
      await assert.rejects(client.play('mp4:nobody'), /NetStream\.Play\.StreamNotFound/);
    } finally {
      client.close();
    }

    // The VOD app's play rules: recsec needs a signed token for the checked name `cam.mp4`.
    assert.equal((await fetch(`${lone.httpUrl}/recsec/cam.mp4`)).status, 403);
    const token = mintToken({ secret: TOKEN_SECRET, action: 'play', app: 'recsec', stream: 'cam.mp4', ttlSeconds: 600 }).query;
    const paid = await fetch(`${lone.httpUrl}/recsec/cam.mp4?${token}`);
    assert.equal(paid.status, 200);
    assert.ok(Buffer.from(await paid.arrayBuffer()).equals(whole), 'the same recording');

    // The cache: the whole recording and the time form were stitched once each, whatever the requests and apps.
    const vod = await lone.api<{ cache?: { fetches: number; hits: number } }>('/api/v1/vod');
    assert.ok(vod.cache && vod.cache.fetches === 2 && vod.cache.hits >= 4, JSON.stringify(vod));
  });

  test('Chromium plays the recording: a <video> over HTTP from the start and after a seek, and the HLS VOD with hls.js', async (t) => {
    const span = loneRec.spans[0]!;
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      // A page of the node's own origin (the playlist as text), so hls.js fetches from it as a player page would.
      await page.goto(`${lone.httpUrl}/rec/cam.mp4/index.m3u8`);
      const progressive = (await page.evaluate(PROGRESSIVE_PLAY)) as { fromStart: { currentTime: number; width: number; height: number; duration: number }; seekTo: number; afterSeek: number; framesShown: number };
      t.diagnostic(`<video> cam.mp4: ${JSON.stringify(progressive)}`);
      assert.equal(progressive.fromStart.width, ENCODER.width);
      assert.equal(progressive.fromStart.height, ENCODER.height);
      assert.ok(Math.abs(progressive.fromStart.duration - span.duration) < 1, `<video> duration ${progressive.fromStart.duration} s vs the span's ${span.duration} s`);
      assert.ok(progressive.framesShown > 25, `${progressive.framesShown} frames shown`);

      await page.addScriptTag({ content: readFileSync(createRequire(import.meta.url).resolve('hls.js/dist/hls.min.js'), 'utf8') });
      const hls = (await page.evaluate(HLS_PLAY)) as { currentTime: number; width: number; duration: number; fatal: string[] };
      t.diagnostic(`hls.js cam.mp4/index.m3u8: ${JSON.stringify(hls)}`);
      assert.deepEqual(hls.fatal, []);
      assert.ok(hls.currentTime > 2 && hls.width === ENCODER.width, JSON.stringify(hls));
      assert.ok(Math.abs(hls.duration - span.duration) < 1.5, `HLS duration ${hls.duration} s vs the span's ${span.duration} s`);
    } finally {
      await browser.close();
    }
  });

  test('mesh: a node that recorded nothing serves the recording from the object store over RTMP, HTTP and HLS', async () => {
    assert.equal(meshRec.spans.length, 1, JSON.stringify(meshRec));
    assert.ok(meshRec.segments.length > 0 && meshRec.segments.every((s) => s.node === 'M1'), `only M1 recorded: ${JSON.stringify(meshRec.segments)}`);
    const span = meshRec.spans[0]!;
    const probed = await probeDuration(`${m2.rtmpUrl}/rec/mp4:cam.mp4`);
    assert.ok(Math.abs(probed - span.duration) < 1, `ffprobe over RTMP from M2: ${probed} s vs the span's ${span.duration} s`);
    const decoded = await decodeToEnd(`${m2.httpUrl}/rec/cam.mp4`);
    assert.equal(decoded.code, 0, decoded.errors);
    assert.ok(Math.abs(decoded.seconds - span.duration) < 1, `ffmpeg decoded ${decoded.seconds} s of ${span.duration} s from M2`);
    const text = await (await fetch(`${m2.httpUrl}/rec/cam.mp4/index.m3u8`)).text();
    assert.ok(text.includes('#EXTINF') && text.trim().endsWith('#EXT-X-ENDLIST'), text);
    assert.equal((await fetch(`${m2.httpUrl}/rec/nobody.mp4`)).status, 404);
  });
});
