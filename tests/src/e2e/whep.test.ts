/**
 * WebRTC playback (WHEP) on a real node process: ffmpeg publishes H.264 (no B-frames) + AAC over
 * RTMP, and headless Chromium (the system's, driven by playwright-core) plays the stream through
 * a minimal WHEP client (RTCPeerConnection recvonly, POST the offer, set the answer). Video frames
 * must decode and the clock advance; the session is listed and ends with DELETE. A B-frame source
 * gets the documented 422, an offer without a play token is refused before any media flows.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Page } from 'playwright-core';
import { NodeProcess } from '../harness/node-process.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { browserUnavailable, launchBrowser, type HeadlessBrowser } from '../harness/browser.ts';
import { mintToken } from '../../../services/node/src/auth/token.ts';

const SECRET = 'whep-test-secret';
const playQuery = (stream: string): string => mintToken({ secret: SECRET, action: 'play', app: 'live', stream, ttlSeconds: 120 }).query;

/** The node's ffmpeg children (its AAC→Opus transcoders). */
function ffmpegChildren(node: NodeProcess): number[] {
  let out = '';
  try {
    out = execFileSync('ps', ['-o', 'pid=,comm=', '--ppid', String(node.proc.pid)], { encoding: 'utf8' });
  } catch {
    return []; // ps exits 1 when there are none
  }
  return out.split('\n').filter((l) => /\bffmpeg$/.test(l.trim())).map((l) => Number(l.trim().split(/\s+/)[0]));
}

/** User + system CPU seconds a process has used (/proc/<pid>/stat, clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

interface Played {
  status: number;
  location: string | null;
  error?: string;
  /** ms from the POST to the first decoded video frame (requestVideoFrameCallback). */
  firstFrameMs?: number;
  frames: number;
  width: number;
  currentTime: number;
  framesDecoded: number;
  audioPackets?: number;
  audioCodec?: string;
}

/**
 * The WHEP client, run in the page: offer recvonly video+audio, POST it, set the answer, count
 * decoded frames for `watchMs`. Plain JavaScript in a string: tsx would wrap a compiled function's
 * inner functions in a helper (`__name`) the page does not have.
 */
const WHEP_CLIENT = `async ({ url, watchMs }) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const video = document.createElement('video');
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  document.body.appendChild(video);
  (window.__pcs ??= []).push(pc);
  const stream = new MediaStream();
  pc.ontrack = (ev) => {
    stream.addTrack(ev.track);
    video.srcObject = stream;
  };
  await pc.setLocalDescription(await pc.createOffer());
  // Non-trickle: wait for the browser's candidates (loopback: quick).
  await new Promise((res) => {
    if (pc.iceGatheringState === 'complete') return res();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res();
    setTimeout(res, 2000);
  });
  const t0 = performance.now();
  const resp = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  const body = await resp.text();
  const out = { status: resp.status, location: resp.headers.get('Location'), frames: 0, width: 0, currentTime: 0, framesDecoded: 0 };
  if (resp.status !== 201) {
    out.error = body;
    pc.close();
    return out;
  }
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  let frames = 0;
  const onFrame = () => {
    frames++;
    if (out.firstFrameMs === undefined) out.firstFrameMs = performance.now() - t0;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  await new Promise((r) => setTimeout(r, watchMs));
  out.frames = frames;
  out.width = video.videoWidth;
  out.currentTime = video.currentTime;
  const stats = await pc.getStats();
  const codecs = new Map();
  stats.forEach((s) => s.type === 'codec' && codecs.set(s.id, s.mimeType));
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') out.framesDecoded = s.framesDecoded ?? 0;
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioPackets = s.packetsReceived ?? 0;
      out.audioCodec = codecs.get(s.codecId);
    }
  });
  return out;
}`;

function playWhep(page: Page, url: string, watchMs: number): Promise<Played> {
  return page.evaluate(`(${WHEP_CLIENT})(${JSON.stringify({ url, watchMs })})`) as Promise<Played>;
}

const skip = browserUnavailable();

describe('WHEP playback', { skip, timeout: 100_000 }, () => {
  let node: NodeProcess;
  let browser: HeadlessBrowser;
  let page: Page;
  const publishers: FfmpegPublisher[] = [];

  before(async () => {
    const udp = await freeUdpPort();
    node = await NodeProcess.start({
      config: { auth: { token_secret: SECRET, apps: { live: { play: { tokens: true } } } }, webrtc: { udp_port: udp } },
    });
    browser = await launchBrowser();
    page = await browser.newPage();
    await page.goto(`${node.httpUrl}/healthz`);
  });

  after(async () => {
    for (const p of publishers) await p.stop();
    await browser?.close();
    await node?.stop();
  });

  test('Chromium plays H.264 over WHEP; the session is listed and DELETE ends it', async () => {
    const pub = new FfmpegPublisher(`${node.rtmpUrl}/live/cam`);
    publishers.push(pub);
    await waitFor('stream live', async () => (await node.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'cam' && s.live), 15_000);
    const baseline = (await node.api<{ sessions: unknown[] }>('/api/v1/sessions')).sessions.length;

    const url = `${node.httpUrl}/live/cam/whep?${playQuery('cam')}`;
    const cpu: { pid?: number; at?: number; cpu?: number } = {};
    const sample = setTimeout(() => {
      const [pid] = ffmpegChildren(node);
      if (pid) Object.assign(cpu, { pid, at: Date.now(), cpu: cpuSeconds(pid) });
    }, 2000);
    const [played, second] = await Promise.all([playWhep(page, url, 4000), playWhep(page, url, 4000)]);
    clearTimeout(sample);
    assert.equal(played.status, 201, played.error);
    assert.equal(second.status, 201, second.error);
    assert.deepEqual(ffmpegChildren(node).length, 1, 'two WebRTC viewers of one stream share one AAC→Opus transcoder');
    assert.ok(cpu.pid, 'the transcoder ran while the viewers played');
    const opusCpu = (cpuSeconds(cpu.pid) - cpu.cpu!) / ((Date.now() - cpu.at!) / 1000);
    assert.equal(played.audioCodec, 'audio/opus');
    assert.ok((played.audioPackets ?? 0) > 50, `Opus packets received: ${played.audioPackets}`);
    assert.ok((second.audioPackets ?? 0) > 50, `second viewer's Opus packets: ${second.audioPackets}`);
    console.log(`# AAC→Opus transcoder: ${(opusCpu * 100).toFixed(1)}% of one core for one stream (64 kbit/s stereo)`);
    assert.ok(played.location?.startsWith('/whep/session/'), `Location: ${played.location}`);
    assert.ok(played.frames > 30, `decoded frames shown: ${played.frames}`);
    assert.ok(played.framesDecoded > 30, `inbound-rtp framesDecoded: ${played.framesDecoded}`);
    assert.equal(played.width, 640);
    assert.ok(played.currentTime > 1, `currentTime ${played.currentTime}`);
    console.log(`# WHEP first frame ${played.firstFrameMs?.toFixed(0)} ms after the POST; ${played.frames} frames in 4 s`);

    const sessions = (await node.api<{ sessions: Array<{ id: string; protocol: string; bytesOut: number }> }>('/api/v1/sessions')).sessions;
    const wheps = sessions.filter((s) => s.protocol === 'whep');
    assert.equal(wheps.length, 2, `both WHEP sessions are listed: ${JSON.stringify(sessions)}`);
    const whep = wheps[0]!;
    assert.ok(whep.bytesOut > 10_000, `bytes sent ${whep.bytesOut}`);

    const patch = await fetch(`${node.httpUrl}${played.location}`, { method: 'PATCH', headers: { 'Content-Type': 'application/trickle-ice-sdpfrag' }, body: 'a=ice-ufrag:x' });
    assert.equal(patch.status, 405);
    const wrongSecret = await fetch(`${node.httpUrl}${played.location!.replace(/\.[0-9a-f]+$/, '.00')}`, { method: 'DELETE' });
    assert.equal(wrongSecret.status, 404, 'only the holder of the Location may end the session');
    const del = await fetch(`${node.httpUrl}${played.location}`, { method: 'DELETE' });
    assert.equal(del.status, 200);
    assert.equal(ffmpegChildren(node).length, 1, 'the transcoder stays while a WebRTC viewer remains');
    assert.equal((await fetch(`${node.httpUrl}${second.location}`, { method: 'DELETE' })).status, 200);
    await waitFor('the transcoder stopped after the last viewer', () => ffmpegChildren(node).length === 0 || undefined, 5000);
    await waitFor('sessions back to baseline', async () => (await node.api<{ sessions: unknown[] }>('/api/v1/sessions')).sessions.length === baseline || undefined, 5000);
    await page.evaluate('window.__pcs.forEach((pc) => pc.close())');
  });

  test('a WHEP offer without a valid play token is refused before any media flows', async () => {
    const played = await playWhep(page, `${node.httpUrl}/live/cam/whep`, 0);
    assert.equal(played.status, 403, played.error);
    const sessions = (await node.api<{ sessions: Array<{ protocol: string }> }>('/api/v1/sessions')).sessions;
    assert.equal(sessions.filter((s) => s.protocol === 'whep').length, 0);
  });

  test('the SRS alias /rtc/v1/whep/?app=&stream= plays too', async () => {
    const played = await playWhep(page, `${node.httpUrl}/rtc/v1/whep/?app=live&stream=cam&${playQuery('cam')}`, 2500);
    assert.equal(played.status, 201, played.error);
    assert.ok(played.frames > 10, `frames ${played.frames}`);
    const del = await fetch(`${node.httpUrl}${played.location}`, { method: 'DELETE' });
    assert.equal(del.status, 200);
  });

  test('a viewer that closes its peer connection without DELETE is cleaned up; the admin API kicks a WHEP viewer', async () => {
    const whepSessions = async (): Promise<Array<{ id: string }>> =>
      (await node.api<{ sessions: Array<{ id: string; protocol: string }> }>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'whep');
    const url = `${node.httpUrl}/live/cam/whep?${playQuery('cam')}`;
    const gone = await playWhep(page, url, 1500);
    assert.equal(gone.status, 201, gone.error);
    await page.evaluate('window.__pcs.at(-1).close()');
    await waitFor('the closed peer\'s session ended', async () => (await whepSessions()).length === 0 || undefined, 10_000);

    const kicked = await playWhep(page, url, 1500);
    assert.equal(kicked.status, 201, kicked.error);
    const [s] = await whepSessions();
    assert.ok(s, 'the viewer is listed');
    assert.equal((await node.adminFetch(`/api/v1/sessions/${s.id}`, { method: 'DELETE' })).status, 200);
    await waitFor('the kicked session ended', async () => (await whepSessions()).length === 0 || undefined, 5000);
    await waitFor('the browser saw its peer go', async () => {
      const st = (await page.evaluate('window.__pcs.at(-1).connectionState')) as string;
      return st === 'closed' || st === 'failed' || st === 'disconnected' || undefined;
    }, 15_000);
    assert.equal(ffmpegChildren(node).length, 0, 'no transcoder left behind');
  });

  test('the dashboard\'s WebRTC button plays the stream over WHEP; Stop ends the session', async () => {
    publishers.push(new FfmpegPublisher(`${node.rtmpUrl}/open/dash`));
    const dash = await browser.newPage();
    await dash.goto(`${node.adminUrl}/`);
    await dash.waitForSelector('#streams-table button[data-play="whep"][data-key="open/dash"]', { timeout: 20_000 });
    await dash.click('#streams-table button[data-play="whep"][data-key="open/dash"]');
    const state = (): Promise<{ t: number; w: number; status: string; title: string }> =>
      dash.evaluate(`(() => { const v = document.querySelector('video'); return { t: v.currentTime, w: v.videoWidth, status: document.getElementById('ps-status').textContent, title: document.getElementById('player-title').textContent }; })()`) as Promise<{ t: number; w: number; status: string; title: string }>;
    const first = await waitFor('the dashboard plays over WebRTC', async () => {
      const s = await state();
      if (/error|cannot|WHEP \d/i.test(s.status)) throw new Error(`player says: ${s.status}`);
      return s.t > 0.5 ? s : undefined;
    }, 15_000, 200);
    await new Promise((r) => setTimeout(r, 2000));
    const later = await state();
    assert.ok(later.t > first.t + 1, `currentTime grows: ${first.t} → ${later.t}`);
    assert.equal(later.w, 640);
    assert.match(later.title, /WebRTC/);
    await dash.click('#player-stop');
    await waitFor('Stop ended the WHEP session', async () => {
      const ss = (await node.api<{ sessions: Array<{ protocol: string; stream?: string }> }>('/api/v1/sessions')).sessions;
      return !ss.some((s) => s.protocol === 'whep' && s.stream === 'dash') || undefined;
    }, 5000);
    await dash.close();
  });

  test('an offer for a stream not live yet waits for its publisher, then plays', async () => {
    const pending = playWhep(page, `${node.httpUrl}/live/late/whep?${playQuery('late')}`, 2500);
    await new Promise((r) => setTimeout(r, 1500));
    publishers.push(new FfmpegPublisher(`${node.rtmpUrl}/live/late`));
    const played = await pending;
    assert.equal(played.status, 201, played.error);
    assert.ok(played.frames > 10, `frames ${played.frames}`);
    assert.equal((await fetch(`${node.httpUrl}${played.location}`, { method: 'DELETE' })).status, 200);
  });

  test('a B-frame source gets the explicit 422 and the stream API flags it', async () => {
    const pub = new FfmpegPublisher(`${node.rtmpUrl}/live/bframes`, { bframes: 2 });
    publishers.push(pub);
    await waitFor('B-frames flagged', async () => (await node.api<{ streams: Array<{ stream: string; bFrames: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'bframes' && s.bFrames), 15_000);
    const played = await playWhep(page, `${node.httpUrl}/live/bframes/whep?${playQuery('bframes')}`, 0);
    assert.equal(played.status, 422);
    const body = JSON.parse(played.error!) as { code: string; error: string };
    assert.equal(body.code, 'WHEP.BFrames');
    assert.match(body.error, /B-frames/);
    assert.match(node.logs(), /the source sends B-frames/);
  });
});

describe('WHEP in a mesh: a playback node pulls the stream over the relay', { skip, timeout: 100_000 }, () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  let browser: HeadlessBrowser;
  let pub: FfmpegPublisher | undefined;

  const MESH = { mesh_secret: 'whep-mesh-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };

  before(async () => {
    nats = await startNatsServer();
    for (const [id, roles] of [['W-ingest', 'ingest'], ['W-play', 'playback']] as const) {
      nodes.push(await NodeProcess.start({ nodeId: id, args: ['--roles', roles], config: { mesh: { ...MESH, nats: [nats.url] }, webrtc: { udp_port: await freeUdpPort() } } }));
    }
    browser = await launchBrowser();
  });

  after(async () => {
    await pub?.stop();
    await browser?.close();
    for (const n of nodes) await n.stop();
    await nats?.stop();
  });

  test('the route API names the placed node\'s WHEP URL, and Chromium plays through it over the relay', async () => {
    const [ingest, play] = nodes as [NodeProcess, NodeProcess];
    await waitFor('the mesh sees both nodes', async () => (await play.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 2 || undefined, 15_000, 100);
    pub = new FfmpegPublisher(`${ingest.rtmpUrl}/live/meshcam`);
    await waitFor('stream live on the ingest node', async () => (await ingest.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'meshcam' && s.live), 15_000);

    const route = (await (await fetch(`${ingest.httpUrl}/api/v1/route/live/meshcam`)).json()) as { whep?: string; candidates?: Array<{ whep: string }> };
    const whep = route.whep ?? route.candidates?.[0]?.whep;
    assert.equal(whep, `${play.httpUrl}/live/meshcam/whep`, `route answer: ${JSON.stringify(route)}`);

    const page = await browser.newPage();
    await page.goto(`${play.httpUrl}/healthz`);
    const played = await playWhep(page, whep, 4000);
    assert.equal(played.status, 201, played.error);
    assert.ok(played.frames > 30, `frames over the relay: ${played.frames}`);
    assert.equal(played.audioCodec, 'audio/opus');
    console.log(`# WHEP over one relay hop: first frame ${played.firstFrameMs?.toFixed(0)} ms after the POST`);
    const relayed = (await play.api<{ streams: Array<{ stream: string; publisher: { kind: string } | null }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'meshcam');
    assert.equal(relayed?.publisher?.kind, 'relay', 'the playback node pulled the stream over the relay');
    assert.equal((await fetch(`${play.httpUrl}${played.location}`, { method: 'DELETE' })).status, 200);
  });
});
