/**
 * Recording across an owner kill, with real peers: a nats-server (the recordings live in its
 * JetStream Object Store), two ingest nodes A and B as processes, two real ffmpeg encoders on
 * one key (E1 → A is the primary, E2 → B the standby) and an RTMP viewer on B.
 *
 * ~28 s are recorded; A (the owner, recording) is SIGKILLed in the middle and B's standby is
 * promoted and records on. Every stored segment decodes alone with monotonic timestamps. Then a third node C, which recorded nothing, lists the recording
 * and serves it as one MP4 (under C's play rules: signed tokens) that ffprobe and ffmpeg read end to end: monotonic timestamps, no
 * hole longer than the one the viewer saw (plus the object store's flush interval and one
 * put: A's last unstored part died with it). A Range request returns 206 with the right bytes, and a
 * `<video>` tag in headless Chromium plays it.
 *
 * Meanwhile: a short-retention app on B is recorded and then deleted by retention (metrics
 * show it), and a node without NATS whose recording directory cannot be written logs it once
 * while its HTTP-FLV viewer keeps getting video.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RtmpClient } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher, run } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { launchBrowser } from '../harness/browser.ts';
import { NatsObjectStore } from '../../../services/node/src/recording/object-store.ts';
import { connect } from '@nats-io/transport-node';
import { Objm } from '@nats-io/obj';
import { mintToken } from '../../../services/node/src/auth/token.ts';

const MESH = { mesh_secret: 'e2e-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };
const APPS = {
  live: { record: { format: 'flv', segment_s: 4, retention: '1h' } },
  short: { record: { format: 'flv', segment_s: 1, retention: '3s' } },
};
const FLUSH_MS = 1000;
const TOKEN_SECRET = 'e2e-token-secret';
const ENCODER = { width: 320, height: 180, fps: 25, gop: 25, bitrate: '300k' };

interface Listing {
  spans: Array<{ start: string; duration: number }>;
  segments: Array<{ start: string; duration: number; bytes: number; node: string }>;
}

interface Viewer {
  client: RtmpClient;
  video: number[];
}

async function view(url: string): Promise<Viewer> {
  const v: Viewer = { client: undefined as unknown as RtmpClient, video: [] };
  v.client = await RtmpClient.openPlayer(url, {
    onFrame: (m: RtmpMessage) => {
      if (m.type === 9 && m.payload[1] === 1) v.video.push(Date.now());
    },
  });
  return v;
}

/** The longest stretch without video from `from` on. */
function longestGap(times: number[], from: number): number {
  const xs = times.filter((t) => t >= from);
  let gap = 0;
  for (let i = 1; i < xs.length; i++) gap = Math.max(gap, xs[i]! - xs[i - 1]!);
  return gap;
}

/** The sum of a metric's samples whose line also holds `having` (a label). */
function metric(text: string, name: string, having = ''): number {
  let sum = 0;
  for (const line of text.split('\n')) if ((line.startsWith(`${name}{`) || line.startsWith(`${name} `)) && line.includes(having)) sum += Number(line.split(' ').pop());
  return sum;
}

describe('recording across an owner kill, served by a node that did not record', () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  const encoders: FfmpegPublisher[] = [];
  const dirs: string[] = [];
  let a: NodeProcess;
  let b: NodeProcess;

  const meshNode = async (id: string, roles = 'ingest,playback', extra: Record<string, unknown> = {}): Promise<NodeProcess> => {
    const n = await NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats.url] }, apps: APPS, recording: { flush_ms: FLUSH_MS, max_bytes: 256 * 1024 * 1024 }, ...extra }, args: ['--roles', roles] });
    nodes.push(n);
    return n;
  };

  before(async () => {
    nats = await startNatsServer();
    [a, b] = await Promise.all([meshNode('RA'), meshNode('RB')]);
    await waitFor('mesh of 2', async () => (await b.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length >= 2, 15_000, 100);
  });

  after(async () => {
    for (const e of encoders) await e.stop();
    await Promise.all(nodes.map((n) => n.kill()));
    for (const n of nodes) n.cleanup();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    await nats?.stop();
  });

  test('30 s with the owner killed in the middle: one MP4 from the third node plays end to end; Range; retention; an unwritable directory', async () => {
    // The node without NATS whose recording directory is a file: it cannot record, and must not care.
    const dir = mkdtempSync(join(tmpdir(), 'rec-e2e-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'blocked'), 'not a directory');
    const lone = await NodeProcess.start({ nodeId: 'RL', config: { apps: APPS, recording: { dir: join(dir, 'blocked', 'recordings') } } });
    nodes.push(lone);

    const e1 = new FfmpegPublisher(`${a.rtmpUrl}/live/rec`, ENCODER);
    encoders.push(e1);
    await waitFor('A owns live/rec', async () => (await a.api<{ streams: Array<{ stream: string; publisher: unknown }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'rec')?.publisher, 20_000, 100);
    const e2 = new FfmpegPublisher(`${b.rtmpUrl}/live/rec`, ENCODER);
    const loneEnc = new FfmpegPublisher(`${lone.rtmpUrl}/live/cam`, ENCODER);
    encoders.push(e2, loneEnc);
    const viewer = await view(`${b.rtmpUrl}/live/rec`);
    const loneViewer = await view(`${lone.rtmpUrl}/live/cam`);
    const started = Date.now();

    await sleep(14_000);
    const killedAt = Date.now();
    await a.kill();
    // Retention (after the kill, so that the deletions are counted by nodes still alive): the
    // short app's segments appear, then go 3 s after they end.
    const short = new FfmpegPublisher(`${b.rtmpUrl}/short/ret`, { ...ENCODER, seconds: 6 });
    encoders.push(short);
    let shortSeen = 0;
    const watchShort = (async () => {
      while (Date.now() - killedAt < 12_000) {
        const l = await (await fetch(`${b.httpUrl}/api/v1/recordings/short/ret`)).json() as Listing;
        shortSeen = Math.max(shortSeen, l.segments.length);
        await sleep(500);
      }
    })();
    await sleep(14_000);
    await watchShort;
    const viewerGap = longestGap(viewer.video, killedAt - 2000);
    const loneVideo = viewer.video.length;
    assert.ok(loneViewer.video.length > 25 * 20, `the unrecordable node's viewer kept getting video (${loneViewer.video.length} frames)`);
    assert.ok(longestGap(loneViewer.video, started + 2000) < 1500, 'with no stall');
    for (const e of [e1, e2, loneEnc]) await e.stop();
    viewer.client.close();
    loneViewer.client.close();

    // Logged once, then at most every 30 s (the run is about that long), while a new segment was tried at every keyframe.
    const loneLog = lone.logs();
    const warned = loneLog.split('\n').filter((l) => l.includes('recording failed; live streaming goes on')).length;
    const failures = metric(await (await lone.adminFetch('/metrics')).text(), 'meshcast_recording_store_errors_total');
    assert.ok(warned >= 1 && warned <= 2, `the failing directory is logged, rate-limited (${warned} lines)`);
    assert.ok(failures >= 10, `for ${failures} failures`);
    assert.match(loneLog, /ENOTDIR|EEXIST/);

    // C recorded nothing: it serves what A and B stored. Its app live needs signed play tokens: so do its recordings.
    const c = await meshNode('RC', 'playback', { auth: { token_secret: TOKEN_SECRET, apps: { live: { play: { tokens: true } } } } });
    const token = mintToken({ secret: TOKEN_SECRET, action: 'play', app: 'live', stream: 'rec', ttlSeconds: 600 }).query;
    const refused = await fetch(`${c.httpUrl}/api/v1/recordings/live/rec`);
    assert.equal(refused.status, 403, 'no token, no listing');
    const wrong = mintToken({ secret: TOKEN_SECRET, action: 'play', app: 'live', stream: 'other', ttlSeconds: 600 }).query;
    assert.equal((await fetch(`${c.httpUrl}/api/v1/recordings/live/rec?${wrong}`)).status, 403, 'a token for another stream opens nothing');
    const listing = await waitFor('the recording listed on C', async () => {
      const l = await (await fetch(`${c.httpUrl}/api/v1/recordings/live/rec?${token}`)).json() as Listing;
      return l.segments.some((s) => s.node === 'RB') ? l : undefined;
    }, 15_000, 200);
    const byNode = new Set(listing.segments.map((s) => s.node));
    assert.deepEqual([...byNode].sort(), ['RA', 'RB'], 'segments from the killed owner and from the promoted standby');
    assert.ok(!listing.segments.some((s) => s.node === 'RC'));
    // The hole between A's last segment and B's first, against what the viewer saw.
    const segs = listing.segments.map((s) => ({ ...s, startMs: Date.parse(s.start) }));
    const lastA = segs.filter((s) => s.node === 'RA').at(-1)!;
    const firstB = segs.find((s) => s.node === 'RB')!;
    const recordingHole = firstB.startMs - (lastA.startMs + lastA.duration * 1000);
    const first = segs[0]!.startMs;
    const end = Math.max(...segs.map((s) => s.startMs + s.duration * 1000));
    console.log(`# recording e2e: ${segs.length} segments (${segs.filter((s) => s.node === 'RA').length} by RA, ${segs.filter((s) => s.node === 'RB').length} by RB), ${((end - first) / 1000).toFixed(1)} s; hole at the owner kill ${recordingHole} ms; viewer's longest gap ${viewerGap} ms; viewer frames ${loneVideo}`);
    assert.ok(recordingHole <= viewerGap + FLUSH_MS + 500, `recording hole ${recordingHole} ms ≤ viewer gap ${viewerGap} ms + flush ${FLUSH_MS} ms`);
    assert.ok((end - first) / 1000 > 24, 'about 28 s recorded');

    // Each stored segment, read straight from the object store, plays alone end to end with monotonic timestamps.
    const store = new NatsObjectStore({ servers: [nats.url], name: 'e2e-reader', bucket: 'meshcast-recordings', replicas: 1, maxBytes: 10 * 1024 ** 3, flushMs: 1000, auth: {} });
    try {
      const stored = await store.list({ app: 'live', stream: 'rec' });
      assert.equal(stored.length, listing.segments.length);
      for (const [i, seg] of stored.entries()) {
        const f = join(dir, `seg${i}.flv`);
        writeFileSync(f, await store.read(seg));
        const d = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', f, '-f', 'null', '-'], 30_000);
        assert.equal(d.code, 0, d.stderr);
        assert.equal(d.stderr.trim(), '', `segment ${i} (${seg.node}) decodes without errors: ${d.stderr.slice(0, 300)}`);
        const ts = (await run('ffprobe', ['-v', 'error', '-select_streams', 'v', '-show_entries', 'packet=dts_time', '-of', 'csv=p=0', f], 20_000)).stdout.trim().split('\n').map(Number);
        assert.equal(ts[0], 0, `segment ${i} starts at 0`);
        for (let k = 1; k < ts.length; k++) assert.ok(ts[k]! > ts[k - 1]!, `segment ${i}: dts ${ts[k - 1]} then ${ts[k]}`);
        assert.ok(Math.abs(ts.at(-1)! - seg.durationMs / 1000) < 0.1, `segment ${i}: listed duration ${seg.durationMs} ms, last video dts ${ts.at(-1)} s`);
      }
    } finally {
      await store.close();
    }

    // Finished segments are one object each (their parts joined); only the killed owner's last one stays in parts.
    const nc = await connect({ servers: nats.url });
    try {
      const names = (await (await new Objm(nc).open('meshcast-recordings')).list()).filter((o) => !o.deleted && o.name.startsWith('live/rec/')).map((o) => o.name);
      const whole = names.filter((n) => n.includes('/999999_'));
      console.log(`# recording e2e: ${names.length} objects for ${listing.segments.length} segments (${whole.length} joined)`);
      assert.ok(whole.length >= listing.segments.length - 2, `${whole.length} of ${listing.segments.length} segments joined into one object`);
      assert.ok(names.length <= listing.segments.length + 2 * (4 + 1), 'parts of joined segments are gone');
    } finally {
      await nc.close();
    }

    // One MP4 from C.
    const bare = `${c.httpUrl}/recordings/live/rec.mp4?start=${encodeURIComponent(new Date(first).toISOString())}&duration=60`;
    assert.equal((await fetch(bare)).status, 403, 'the MP4 needs the token too');
    const url = `${bare}&${token}`;
    const res = await fetch(url);
    assert.equal(res.status, 200, await res.clone().text().catch(() => ''));
    assert.equal(res.headers.get('content-type'), 'video/mp4');
    assert.equal(res.headers.get('accept-ranges'), 'bytes');
    const mp4 = Buffer.from(await res.arrayBuffer());
    const file = join(dir, 'rec.mp4');
    writeFileSync(file, mp4);
    assert.equal(mp4.subarray(4, 8).toString('latin1'), 'ftyp');
    assert.ok(mp4.indexOf('moov') < mp4.indexOf('mdat'), 'progressive: moov before mdat');
    const probe = await run('ffprobe', ['-v', 'error', '-show_entries', 'format=duration:stream=codec_name,codec_type', '-of', 'json', file], 20_000);
    assert.equal(probe.code, 0, probe.stderr);
    const p = JSON.parse(probe.stdout) as { format: { duration: string }; streams: Array<{ codec_name: string; codec_type: string }> };
    assert.deepEqual(p.streams.map((s) => s.codec_name).sort(), ['aac', 'h264']);
    const duration = Number(p.format.duration);
    assert.ok(Math.abs(duration - (end - first) / 1000) < 2.5, `MP4 lasts ${duration} s, the recording ${(end - first) / 1000} s`);
    // Decoded end to end without errors.
    const dec = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', file, '-f', 'null', '-'], 60_000);
    assert.equal(dec.code, 0, dec.stderr);
    assert.equal(dec.stderr.trim(), '', `ffmpeg decodes it without errors: ${dec.stderr.slice(0, 500)}`);
    // Video timestamps only grow; no hole longer than the viewer's gap (+ flush).
    const pk = await run('ffprobe', ['-v', 'error', '-select_streams', 'v', '-show_entries', 'packet=dts_time', '-of', 'csv=p=0', file], 20_000);
    const dts = pk.stdout.trim().split('\n').map(Number);
    let maxStep = 0;
    for (let i = 1; i < dts.length; i++) {
      assert.ok(dts[i]! > dts[i - 1]!, `dts ${dts[i - 1]} then ${dts[i]}`);
      maxStep = Math.max(maxStep, (dts[i]! - dts[i - 1]!) * 1000);
    }
    console.log(`# recording e2e: MP4 ${mp4.length} bytes, ${duration} s, ${dts.length} video frames, longest video step ${Math.round(maxStep)} ms`);
    assert.ok(maxStep <= viewerGap + FLUSH_MS + 500, `longest step ${maxStep} ms`);

    // A Range request: 206 with exactly those bytes.
    const r = await fetch(url, { headers: { Range: 'bytes=1000-1999' } });
    assert.equal(r.status, 206);
    assert.equal(r.headers.get('content-range'), `bytes 1000-1999/${mp4.length}`);
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), mp4.subarray(1000, 2000));

    // A <video> tag plays it (Chromium fetches media with Range requests).
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      await page.setContent(`<video id="v" muted playsinline src="${url}"></video>`);
      const played = await page.evaluate(async () => {
        interface VideoEl { play(): Promise<void>; currentTime: number; duration: number; videoWidth: number; error: { message: string } | null }
        const v = (globalThis as unknown as { document: { getElementById(id: string): VideoEl } }).document.getElementById('v');
        await v.play();
        await new Promise((r) => setTimeout(r, 2500));
        return { currentTime: v.currentTime, duration: v.duration, width: v.videoWidth, error: v.error?.message ?? null };
      });
      console.log(`# recording e2e: <video> played to ${played.currentTime.toFixed(2)} s of ${played.duration.toFixed(1)} s (${played.width} px wide)`);
      assert.equal(played.error, null);
      assert.ok(played.currentTime > 1, `currentTime grows (${played.currentTime})`);
      assert.equal(played.width, 320);
      assert.ok(Math.abs(played.duration - duration) < 1, 'the <video> sees the whole duration');
    } finally {
      await browser.close();
    }

    // Retention removed the short app's segments; the metrics say so.
    assert.ok(shortSeen >= 3, `the short app was recorded (${shortSeen} segments seen)`);
    await waitFor('short app deleted by retention', async () => ((await (await fetch(`${c.httpUrl}/api/v1/recordings/short/ret`)).json()) as Listing).segments.length === 0, 10_000, 250);
    // Every node sweeps the shared bucket: B and C (A is dead) counted the deletions between them.
    const m = await (await b.adminFetch('/metrics')).text();
    const mc = await (await c.adminFetch('/metrics')).text();
    const deletedBy = [m, mc].map((t) => metric(t, 'meshcast_recording_segments_deleted_total', 'reason="retention"'));
    assert.ok(deletedBy[0]! + deletedBy[1]! >= 3, `deletions counted (B ${deletedBy[0]}, C ${deletedBy[1]})`);
    assert.ok(metric(m, 'meshcast_recording_store_bytes') > 0, 'store usage shown');
    assert.ok(metric(m, 'meshcast_recording_bytes_written_total') > 0);
  });
});
