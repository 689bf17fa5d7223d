/**
 * WebRTC ingest (WHIP) on real node processes of a two-node mesh (real nats-server): headless
 * Chromium publishes its fake camera and microphone (H.264 + Opus) through a minimal WHIP client
 * to the ingest node, with the stream key as `Authorization: Bearer`. A WHEP viewer on the ingest
 * node gets the publisher's Opus untouched, with no transcoder running; then the OTHER node plays
 * the stream over RTMP and HLS, pulled over the relay, which starts the Opus→AAC transcoder, and
 * ffprobe/ffmpeg see H.264 + AAC and decode frames. A publish without a valid key is refused
 * before any media; DELETE ends the publish; a peer that closes without DELETE is cleaned up.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { Page } from 'playwright-core';
import { NodeProcess } from '../harness/node-process.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { ffmpegDecode, ffprobe, run } from '../harness/ffmpeg.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { browserUnavailable, launchBrowser, type HeadlessBrowser } from '../harness/browser.ts';
import { playWhep } from '../harness/whep-client.ts';
import { mintToken } from '../../../services/node/src/auth/token.ts';

const KEY = 'whip-publish-key';
const TOKEN_SECRET = 'whip-token-secret';
/** limits.idle_publisher_timeout_ms of the nodes: a WHIP peer that sends no RTP this long is dropped. */
const IDLE_MS = 3000;

interface Published {
  status: number;
  location: string | null;
  error?: string;
  /** The page's peer connection state after the wait. */
  state?: string;
  videoCodec?: string;
  audioCodec?: string;
  framesEncoded?: number;
}

/**
 * The WHIP client, run in the page: the fake camera and microphone, sendonly, the offer POSTed
 * after ICE gathering, the answer set. Plain JavaScript in a string (see whep.test.ts). The
 * peer stays open in window.__pubs for later steps.
 */
const WHIP_CLIENT = `async ({ url, bearer, waitMs }) => {
  const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360, frameRate: 30 }, audio: true });
  const pc = new RTCPeerConnection();
  (window.__pubs ??= []).push(pc);
  for (const track of media.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((res) => {
    if (pc.iceGatheringState === 'complete') return res();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res();
    setTimeout(res, 2000);
  });
  const headers = { 'Content-Type': 'application/sdp' };
  if (bearer) headers.Authorization = 'Bearer ' + bearer;
  const resp = await fetch(url, { method: 'POST', headers, body: pc.localDescription.sdp });
  const body = await resp.text();
  const out = { status: resp.status, location: resp.headers.get('Location') };
  if (resp.status !== 201) {
    out.error = body;
    pc.close();
    media.getTracks().forEach((t) => t.stop());
    return out;
  }
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  await new Promise((r) => setTimeout(r, waitMs));
  out.state = pc.connectionState;
  const stats = await pc.getStats();
  const codecs = new Map();
  stats.forEach((s) => s.type === 'codec' && codecs.set(s.id, s.mimeType));
  stats.forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.videoCodec = codecs.get(s.codecId);
      out.framesEncoded = s.framesEncoded;
    }
    if (s.type === 'outbound-rtp' && s.kind === 'audio') out.audioCodec = codecs.get(s.codecId);
  });
  return out;
}`;

function publishWhip(page: Page, url: string, bearer: string | undefined, waitMs: number): Promise<Published> {
  return page.evaluate(`(${WHIP_CLIENT})(${JSON.stringify({ url, bearer: bearer ?? null, waitMs })})`) as Promise<Published>;
}

/** The node's ffmpeg children (its Opus→AAC transcoders). */
function ffmpegChildren(node: NodeProcess): number[] {
  let out = '';
  try {
    out = execFileSync('ps', ['-o', 'pid=,comm=', '--ppid', String(node.proc.pid)], { encoding: 'utf8' });
  } catch {
    return []; // ps exits 1 when there are none
  }
  return out.split('\n').filter((l) => /\bffmpeg$/.test(l.trim())).map((l) => Number(l.trim().split(/\s+/)[0]));
}

/** User + system CPU seconds of a process (/proc/<pid>/stat, in 1/100 s ticks). */
function cpuSeconds(pid: number): number {
  const fields = execFileSync('cat', [`/proc/${pid}/stat`], { encoding: 'utf8' }).split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

type Streams = { streams: Array<{ stream: string; live: boolean; publisher: { kind: string } | null }> };
type Sessions = { sessions: Array<{ id: string; protocol: string; role: string; stream?: string; bytesIn: number }> };

const skip = browserUnavailable();

describe('WHIP ingest into a mesh; RTMP and HLS playback from the other node', { skip, timeout: 150_000 }, () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  let browser: HeadlessBrowser;
  let page: Page;
  const MESH = { mesh_secret: 'whip-mesh-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };

  before(async () => {
    nats = await startNatsServer();
    for (const [id, roles] of [['P-ingest', 'ingest,playback'], ['P-play', 'playback']] as const) {
      nodes.push(
        await NodeProcess.start({
          nodeId: id,
          args: ['--roles', roles],
          config: { mesh: { ...MESH, nats: [nats.url] }, webrtc: { udp_port: await freeUdpPort() }, hls: { idle_timeout_s: 3 }, limits: { idle_publisher_timeout_ms: IDLE_MS }, auth: { token_secret: TOKEN_SECRET, apps: { live: { publish: { keys: [KEY], tokens: true } } } } },
        }),
      );
    }
    browser = await launchBrowser({ args: ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'] });
    page = await browser.newPage();
    await page.goto(`${nodes[0]!.httpUrl}/healthz`);
  });

  after(async () => {
    await browser?.close();
    for (const n of nodes) await n.stop();
    await nats?.stop();
  });

  test('a WHIP offer without a valid stream key is refused (401) before any media; nothing is published', async () => {
    const [ingest] = nodes as [NodeProcess];
    const none = await publishWhip(page, `${ingest.httpUrl}/live/nokey/whip`, undefined, 0);
    assert.equal(none.status, 401, none.error);
    assert.match(none.error ?? '', /stream key/);
    const wrong = await publishWhip(page, `${ingest.httpUrl}/live/nokey/whip`, 'not-the-key', 0);
    assert.equal(wrong.status, 401, wrong.error);
    const sessions = (await ingest.api<Sessions>('/api/v1/sessions')).sessions;
    assert.equal(sessions.filter((s) => s.protocol === 'whip').length, 0, 'no WHIP session was made');
    const streams = (await ingest.api<Streams>('/api/v1/streams')).streams;
    assert.ok(!streams.some((s) => s.stream === 'nokey' && s.live), 'the stream is not live');
    assert.equal(ffmpegChildren(ingest).length, 0, 'no transcoder was started');
    // The playback-only node takes no publishers at all: it does not serve the path.
    const play = nodes[1]!;
    assert.equal((await fetch(`${play.httpUrl}/live/x/whip`, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: 'v=0' })).status, 404);
  });

  test('Chromium publishes over WHIP; the other node plays H.264 + AAC over RTMP and HLS; DELETE ends the publish', async () => {
    const [ingest, play] = nodes as [NodeProcess, NodeProcess];
    await waitFor('the mesh sees both nodes', async () => (await play.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 2 || undefined, 15_000, 100);

    const pub = await publishWhip(page, `${ingest.httpUrl}/live/cam/whip`, KEY, 3000);
    assert.equal(pub.status, 201, pub.error);
    assert.ok(pub.location?.startsWith('/whip/session/'), `Location: ${pub.location}`);
    assert.equal(pub.state, 'connected');
    assert.equal(pub.videoCodec, 'video/H264', 'the answer took H.264');
    assert.equal(pub.audioCodec, 'audio/opus');

    const live = await waitFor('the stream is live on the ingest node, published over WHIP', async () => (await ingest.api<Streams>('/api/v1/streams')).streams.find((s) => s.stream === 'cam' && s.live && s.publisher?.kind === 'whip'), 15_000);
    assert.ok(live);
    const session = (await ingest.api<Sessions>('/api/v1/sessions')).sessions.find((s) => s.protocol === 'whip');
    assert.equal(session?.role, 'publisher');
    // A WebRTC viewer on the ingest node takes the publisher's Opus as it is: nothing is transcoded.
    const viewer = await browser.newPage();
    await viewer.goto(`${ingest.httpUrl}/healthz`);
    const watched = await playWhep(viewer, `${ingest.httpUrl}/live/cam/whep`, 3000);
    assert.equal(watched.status, 201, watched.error);
    assert.ok(watched.framesDecoded > 30, `WHEP frames decoded on the ingest node: ${watched.framesDecoded}`);
    assert.equal(watched.audioCodec, 'audio/opus');
    assert.ok((watched.audioPackets ?? 0) > 50, `Opus packets passed through to the WHEP viewer: ${watched.audioPackets}`);
    assert.deepEqual(ffmpegChildren(ingest), [], 'no transcoder while the only consumer is a WebRTC viewer');
    assert.equal((await fetch(`${ingest.httpUrl}${watched.location}`, { method: 'DELETE' })).status, 200);
    await viewer.close();

    // A consumer that needs AAC (the playback node's relay, for its RTMP viewer) starts the transcoder on the owner.
    const probing = ffprobe(`${play.rtmpUrl}/live/cam`);
    const tx = await waitFor('the Opus→AAC transcoder started on the ingest node', () => ffmpegChildren(ingest)[0], 10_000, 50);
    const cpu0 = { at: Date.now(), cpu: cpuSeconds(tx) };

    const rtmp = await probing;
    const rtmpVideo = rtmp.streams.find((s) => s.codec_type === 'video');
    const rtmpAudio = rtmp.streams.find((s) => s.codec_type === 'audio');
    assert.equal(rtmpVideo?.codec_name, 'h264', JSON.stringify(rtmp.streams));
    assert.equal(rtmpVideo?.width, 640);
    assert.equal(rtmpVideo?.height, 360);
    assert.equal(rtmpAudio?.codec_name, 'aac', JSON.stringify(rtmp.streams));
    assert.equal(rtmpAudio?.sample_rate, '48000');
    const decoded = await ffmpegDecode(`${play.rtmpUrl}/live/cam`, 4);
    console.log(`# RTMP from the playback node: ${decoded.frames} video frames decoded in 4 s`);
    assert.ok(decoded.frames > 60, `RTMP frames decoded in 4 s from the playback node: ${decoded.frames} (${decoded.errors})`);
    // Audio and video on one timeline: over 5 s read from the playback node, AAC arrives at its
    // rate (1024 samples at 48 kHz: 46.9 frames/s) and ends within half a second of the video.
    const pk = await run('ffprobe', ['-v', 'error', '-rw_timeout', '10000000', '-read_intervals', '%+5', '-show_entries', 'packet=codec_type,pts_time', '-of', 'csv=p=0', `${play.rtmpUrl}/live/cam`], 30_000);
    const rows = pk.stdout.trim().split('\n').map((l) => l.split(',')).filter((r) => r[1] !== undefined && r[1] !== 'N/A');
    const times = (kind: string): number[] => rows.filter((r) => r[0] === kind).map((r) => Number(r[1]));
    const [va, aa] = [times('video'), times('audio')];
    const span = (t: number[]): number => Math.max(...t) - Math.min(...t);
    const audioRate = (aa.length - 1) / span(aa);
    console.log(`# RTMP from the playback node over 5 s: ${va.length} video / ${aa.length} audio packets; audio ${audioRate.toFixed(1)}/s; last video ${Math.max(...va).toFixed(3)} s, last audio ${Math.max(...aa).toFixed(3)} s`);
    assert.ok(span(aa) > 3, `audio spans ${span(aa)} s`);
    assert.ok(Math.abs(audioRate - 46.875) < 5, `AAC frames per second: ${audioRate}`);
    assert.ok(Math.abs(Math.max(...va) - Math.max(...aa)) < 0.5, `video and audio end together: ${Math.max(...va)} vs ${Math.max(...aa)}`);
    const relayed = (await play.api<Streams>('/api/v1/streams')).streams.find((s) => s.stream === 'cam');
    assert.equal(relayed?.publisher?.kind, 'relay', 'the playback node pulled the stream over the relay');

    const hlsUrl = `${play.httpUrl}/live/cam/index.m3u8`;
    // HLS is cut on demand: the first request starts the segmenter, the playlist is served once a segment is complete.
    await waitFor('the playback node\'s HLS playlist', async () => (await fetch(hlsUrl)).status === 200 || undefined, 15_000, 250);
    const hls = await ffprobe(hlsUrl, 30_000);
    assert.deepEqual(hls.streams.map((s) => s.codec_name).sort(), ['aac', 'h264'], JSON.stringify(hls.streams));
    const hlsDecoded = await ffmpegDecode(hlsUrl, 4, 40_000);
    console.log(`# HLS from the playback node: ${hlsDecoded.frames} video frames decoded`);
    assert.ok(hlsDecoded.frames > 30, `HLS frames decoded from the playback node: ${hlsDecoded.frames} (${hlsDecoded.errors})`);

    const cpu = (cpuSeconds(tx) - cpu0.cpu) / ((Date.now() - cpu0.at) / 1000);
    console.log(`# Opus→AAC transcoder on the ingest node: ${(cpu * 100).toFixed(1)}% of one core for one WHIP stream (128 kbit/s stereo AAC)`);
    const bytesIn = (await ingest.api<Sessions>('/api/v1/sessions')).sessions.find((s) => s.protocol === 'whip')?.bytesIn ?? 0;
    assert.ok(bytesIn > 100_000, `bytes received from the WHIP peer: ${bytesIn}`);

    // Once the playback node's viewers, segmenter and relay are gone, nothing needs AAC: the transcoder stops, the publish goes on.
    const stoppedAt = Date.now();
    await waitFor('the transcoder stopped after the last AAC consumer left', () => ffmpegChildren(ingest).length === 0 || undefined, 30_000, 200);
    console.log(`# transcoder stopped ${Date.now() - stoppedAt} ms after the last AAC read (HLS idle 3 s + relay linger 2 s + transcoder linger 3 s)`);
    assert.ok((await ingest.api<Streams>('/api/v1/streams')).streams.some((s) => s.stream === 'cam' && s.live), 'the publish goes on without the transcoder');

    const patch = await fetch(`${ingest.httpUrl}${pub.location}`, { method: 'PATCH', headers: { 'Content-Type': 'application/trickle-ice-sdpfrag' }, body: 'a=ice-ufrag:x' });
    assert.equal(patch.status, 405);
    const wrong = await fetch(`${ingest.httpUrl}${pub.location!.replace(/\.[0-9a-f]+$/, '.00')}`, { method: 'DELETE' });
    assert.equal(wrong.status, 404, 'only the holder of the Location may end the publish');
    assert.equal((await fetch(`${ingest.httpUrl}${pub.location}`, { method: 'DELETE' })).status, 200);
    await waitFor('the publish ended', async () => !(await ingest.api<Streams>('/api/v1/streams')).streams.some((s) => s.stream === 'cam' && s.live) || undefined, 5000);
    // (The playback node's relay lingers; the transcoder ends with the publish at once.)
    await waitFor('the transcoder stopped', () => ffmpegChildren(ingest).length === 0 || undefined, 5000);
    assert.equal((await ingest.api<Sessions>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'whip').length, 0);
    await page.evaluate('window.__pubs.at(-1).close()');
  });

  test('the key in the query, and a signed publish token as the Bearer, publish too; a token for another stream does not', async () => {
    const [ingest] = nodes as [NodeProcess];
    const byQuery = await publishWhip(page, `${ingest.httpUrl}/live/q1/whip?key=${KEY}`, undefined, 300);
    assert.equal(byQuery.status, 201, byQuery.error);
    const token = (stream: string): string => mintToken({ secret: TOKEN_SECRET, action: 'publish', app: 'live', stream, ttlSeconds: 60 }).query;
    const byToken = await publishWhip(page, `${ingest.httpUrl}/live/q2/whip`, token('q2'), 300);
    assert.equal(byToken.status, 201, byToken.error);
    const otherStream = await publishWhip(page, `${ingest.httpUrl}/live/q3/whip`, token('q2'), 0);
    assert.equal(otherStream.status, 401, otherStream.error);
    const twice = await publishWhip(page, `${ingest.httpUrl}/live/q3/whip?key=${KEY}`, KEY, 0);
    assert.equal(twice.status, 401, `a key given twice (query and Bearer) is refused: ${twice.error}`);
    for (const p of [byQuery, byToken]) assert.equal((await fetch(`${ingest.httpUrl}${p.location}`, { method: 'DELETE' })).status, 200);
    await waitFor('both publishes ended', async () => !(await ingest.api<Streams>('/api/v1/streams')).streams.some((s) => (s.stream === 'q1' || s.stream === 'q2') && s.live) || undefined, 5000);
    await page.evaluate('window.__pubs.forEach((pc) => pc.close())');
  });

  test('the SRS alias publishes too; a peer that closes without DELETE ends its publish', async () => {
    const [ingest] = nodes as [NodeProcess];
    const pub = await publishWhip(page, `${ingest.httpUrl}/rtc/v1/whip/?app=live&stream=alias`, KEY, 1500);
    assert.equal(pub.status, 201, pub.error);
    await waitFor('the alias stream is live', async () => (await ingest.api<Streams>('/api/v1/streams')).streams.find((s) => s.stream === 'alias' && s.live), 10_000);
    await page.evaluate('window.__pubs.at(-1).close()');
    await waitFor('the closed peer\'s publish ended', async () => !(await ingest.api<Streams>('/api/v1/streams')).streams.some((s) => s.stream === 'alias' && s.live) || undefined, 20_000);
    assert.equal((await ingest.api<Sessions>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'whip').length, 0);
    await waitFor('no transcoder left behind', () => ffmpegChildren(ingest).length === 0 || undefined, 5000);
  });

  test('a second WHIP publisher of a live key is the hot standby, a third is refused (409), and the standby takes over when the primary goes', async () => {
    const [ingest, play] = nodes as [NodeProcess, NodeProcess];
    type Publishing = { streams: Array<{ stream: string; live: boolean; publishing: { state: string; primary: { node: string } | null; standby: { node: string } | null; failovers: Array<{ reason: string }> } | null }> };
    const publishing = async (): Promise<NonNullable<Publishing['streams'][number]['publishing']> | undefined> => (await ingest.api<Publishing>('/api/v1/streams')).streams.find((s) => s.stream === 'dup')?.publishing ?? undefined;
    const first = await publishWhip(page, `${ingest.httpUrl}/live/dup/whip`, KEY, 1500);
    assert.equal(first.status, 201, first.error);
    await waitFor('the first WHIP publisher is the primary', async () => (await publishing())?.primary ?? undefined, 10_000);
    const pageB = await browser.newPage();
    const pageC = await browser.newPage();
    try {
      await pageB.goto(`${ingest.httpUrl}/healthz`);
      await pageC.goto(`${ingest.httpUrl}/healthz`);
      const second = await publishWhip(pageB, `${ingest.httpUrl}/live/dup/whip`, KEY, 1500);
      assert.equal(second.status, 201, `a live encoder's twin is kept as the standby: ${second.error}`);
      assert.equal(second.state, 'connected');
      await waitFor('the stream API shows the standby', async () => (await publishing())?.standby ?? undefined, 10_000, 100);
      const third = await publishWhip(pageC, `${ingest.httpUrl}/live/dup/whip`, KEY, 0);
      assert.equal(third.status, 409, third.error);
      assert.match(third.error ?? '', /standby/);
      // A viewer on the other node plays through the change of publisher.
      const before = await ffmpegDecode(`${play.rtmpUrl}/live/dup`, 2);
      assert.ok(before.frames > 20, `frames from the primary: ${before.frames} (${before.errors})`);
      const goneAt = Date.now();
      await page.evaluate('window.__pubs.at(-1).close()');
      const promoted = await waitFor('the standby is promoted', async () => {
        const p = await publishing();
        return p && p.standby === null && p.primary && p.failovers.length > 0 ? p : undefined;
      }, 15_000, 50);
      const promotedMs = Date.now() - goneAt;
      console.log(`# WHIP standby promoted ${promotedMs} ms after the primary's peer closed (failover reason: ${promoted.failovers.at(-1)?.reason})`);
      const after = await ffmpegDecode(`${play.rtmpUrl}/live/dup`, 2);
      assert.ok(after.frames > 20, `frames from the promoted standby on the other node: ${after.frames} (${after.errors})`);
      assert.equal((await fetch(`${ingest.httpUrl}${second.location}`, { method: 'DELETE' })).status, 200);
      await waitFor('the publish ended', async () => !(await ingest.api<Streams>('/api/v1/streams')).streams.some((s) => s.stream === 'dup' && s.live) || undefined, 5000);
    } finally {
      await pageB.close();
      await pageC.close();
    }
  });

  test('a peer that stays connected but sends no RTP is dropped after limits.idle_publisher_timeout_ms', async () => {
    const [ingest] = nodes as [NodeProcess];
    const pub = await publishWhip(page, `${ingest.httpUrl}/live/quiet/whip`, KEY, 1000);
    assert.equal(pub.status, 201, pub.error);
    await waitFor('the quiet stream is live', async () => (await ingest.api<Streams>('/api/v1/streams')).streams.find((s) => s.stream === 'quiet' && s.live), 10_000);
    // The senders stop (no RTP); ICE and DTLS stay up, so only the media timeout can notice.
    const silentAt = Date.now();
    await page.evaluate('Promise.all(window.__pubs.at(-1).getSenders().map((s) => s.replaceTrack(null)))');
    await waitFor('the silent publish ended', async () => !(await ingest.api<Streams>('/api/v1/streams')).streams.some((s) => s.stream === 'quiet' && s.live) || undefined, 15_000, 200);
    const after = Date.now() - silentAt;
    assert.ok(after >= IDLE_MS - 500, `ended ${after} ms after the media stopped, not before the timeout`);
    assert.equal(await page.evaluate('window.__pubs.at(-1).connectionState'), 'connected', 'the peer connection itself was still up');
    assert.match(ingest.logs(), /no media from the peer for 3000 ms/);
    await page.evaluate('window.__pubs.at(-1).close()');
  });
});
