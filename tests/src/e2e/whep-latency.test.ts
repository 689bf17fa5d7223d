/**
 * RTMP in → WHEP out latency, with wall-clock stamps the test publisher embeds: ffmpeg
 * encodes H.264 + AAC to FLV on a pipe, and the test puts an SEI NAL unit (user data unregistered)
 * holding Date.now() into each video frame as it publishes the frame over RTMP. Chromium reads
 * the stamp out of the received encoded frame (encoded insertable streams) and keys it by RTP
 * timestamp; requestVideoFrameCallback then gives the wall time the frame is shown. Latency is
 * shown-at minus sent-at: the node, the network and the browser's jitter buffer and decoder,
 * not the encoder. Measured from the owner and through one relay hop (a 2-node mesh over a real
 * nats-server); p50 must be ≤ 300 ms in both (the target on loopback).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import type { Page } from 'playwright-core';
import { FlvDecoder, FlvError } from '@meshcast/proto';
import { RtmpClient } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { browserUnavailable, launchBrowser, type HeadlessBrowser } from '../harness/browser.ts';

/** The SEI's UUID: no zero bytes, so it never looks like a start code. */
const UUID = Buffer.from('6d65736863617374' + '2d77686570aabbcc', 'hex');

/** An SEI NAL (type 6, payload 5) carrying `ms` in 7 bytes of 7 bits each (high bit set: no emulation-prevention concerns). */
function stampSei(ms: number): Buffer {
  const stamp = Buffer.alloc(7);
  let v = ms;
  for (let i = 6; i >= 0; i--) {
    stamp[i] = 0x80 | (v % 128);
    v = Math.floor(v / 128);
  }
  return Buffer.concat([Buffer.from([0x06, 0x05, UUID.length + stamp.length]), UUID, stamp, Buffer.from([0x80])]);
}

/** ffmpeg → FLV pipe → SEI stamp on each coded video frame → RTMP publish. */
async function stampedPublisher(url: string): Promise<{ stop(): void }> {
  const client = await RtmpClient.openPublisher(url);
  const ff: ChildProcess = spawn('ffmpeg', [
    '-hide_banner', '-loglevel', 'error', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=30',
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-pix_fmt', 'yuv420p', '-g', '30', '-b:v', '800k',
    '-c:a', 'aac', '-b:a', '64k', '-f', 'flv', '-flush_packets', '1', 'pipe:1',
  ], { stdio: ['ignore', 'pipe', 'ignore'] });
  const dec = new FlvDecoder();
  ff.stdout!.on('data', (d: Buffer) => {
    const tags = dec.push(d);
    if (tags instanceof FlvError) throw tags;
    for (const t of tags) {
      let payload = Buffer.from(t.payload);
      // Legacy AVC coded frame: 5-byte header, then 4-byte-length NAL units; the SEI goes first.
      if (t.type === 9 && (payload[0]! & 0x0f) === 7 && payload[1] === 1) {
        const sei = stampSei(Date.now());
        const len = Buffer.alloc(4);
        len.writeUInt32BE(sei.length);
        payload = Buffer.concat([payload.subarray(0, 5), len, sei, payload.subarray(5)]);
      }
      client.sendMedia(t.type as 8 | 9 | 18, t.timestamp, payload);
    }
  });
  return {
    stop() {
      ff.kill('SIGKILL');
      client.close();
    },
  };
}

/** The in-page WHEP client with encoded insertable streams; returns the latencies (ms) of the frames shown in `watchMs`. */
const CLIENT = `async ({ url, watchMs, uuid }) => {
  const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  const stamps = new Map();
  const want = new Uint8Array(uuid);
  const find = (b) => {
    outer: for (let i = 0; i + want.length + 7 <= b.length; i++) {
      for (let j = 0; j < want.length; j++) if (b[i + j] !== want[j]) continue outer;
      let v = 0;
      for (let k = 0; k < 7; k++) v = v * 128 + (b[i + want.length + k] & 0x7f);
      return v;
    }
    return undefined;
  };
  pc.ontrack = (ev) => {
    const { readable, writable } = ev.receiver.createEncodedStreams();
    const kind = ev.track.kind;
    readable.pipeThrough(new TransformStream({ transform(frame, ctl) {
      if (kind === 'video') {
        const st = find(new Uint8Array(frame.data));
        if (st !== undefined) stamps.set(frame.getMetadata().rtpTimestamp, st);
      }
      ctl.enqueue(frame);
    } })).pipeTo(writable);
    if (!video.srcObject) video.srcObject = new MediaStream();
    video.srcObject.addTrack(ev.track);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((res) => { if (pc.iceGatheringState === 'complete') return res(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res(); setTimeout(res, 2000); });
  const resp = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  if (resp.status !== 201) return { status: resp.status, error: await resp.text(), latencies: [] };
  await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  const latencies = [];
  const onFrame = (_now, meta) => {
    const st = stamps.get(meta.rtpTimestamp);
    if (st !== undefined) latencies.push(performance.timeOrigin + meta.expectedDisplayTime - st);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  await new Promise((r) => setTimeout(r, watchMs));
  pc.close();
  return { status: 201, latencies };
}`;

const pct = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

/** Plays `url` for 8 s and returns p50/p95 of the frames after the first second (the GOP cache, replayed at once, is old by design). */
async function measure(page: Page, url: string): Promise<{ p50: number; p95: number; n: number }> {
  const r = (await page.evaluate(`(${CLIENT})(${JSON.stringify({ url, watchMs: 8000, uuid: [...UUID] })})`)) as { status: number; error?: string; latencies: number[] };
  assert.equal(r.status, 201, r.error);
  const steady = r.latencies.slice(30);
  assert.ok(steady.length > 100, `stamped frames shown: ${r.latencies.length}`);
  return { p50: pct(steady, 50), p95: pct(steady, 95), n: steady.length };
}

const MESH = { mesh_secret: 'whep-latency-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };

describe('WHEP glass-to-glass latency (RTMP in → WHEP out): one node, and one relay hop', { skip: browserUnavailable(), timeout: 110_000 }, () => {
  let nats: NatsServer;
  let ingest: NodeProcess;
  let play: NodeProcess;
  let browser: HeadlessBrowser;
  let page: Page;
  let pub: { stop(): void } | undefined;

  before(async () => {
    nats = await startNatsServer();
    ingest = await NodeProcess.start({ nodeId: 'L-ingest', config: { mesh: { ...MESH, nats: [nats.url] }, webrtc: { udp_port: await freeUdpPort() } } });
    play = await NodeProcess.start({ nodeId: 'L-play', args: ['--roles', 'playback'], config: { mesh: { ...MESH, nats: [nats.url] }, webrtc: { udp_port: await freeUdpPort() } } });
    browser = await launchBrowser();
    page = await browser.newPage();
    await page.goto(`${ingest.httpUrl}/healthz`);
  });

  after(async () => {
    pub?.stop();
    await browser?.close();
    await play?.stop();
    await ingest?.stop();
    await nats?.stop();
  });

  test('p50 ≤ 300 ms on loopback, from the owner and through one relay hop', async () => {
    await waitFor('the mesh sees both nodes', async () => (await play.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 2 || undefined, 15_000, 100);
    pub = await stampedPublisher(`${ingest.rtmpUrl}/live/stamped`);
    await waitFor('stream live', async () => (await ingest.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'stamped' && s.live), 15_000);
    const local = await measure(page, `${ingest.httpUrl}/live/stamped/whep`);
    console.log(`# RTMP in → WHEP out, one node: p50 ${local.p50.toFixed(0)} ms, p95 ${local.p95.toFixed(0)} ms over ${local.n} frames`);
    const hop = await measure(page, `${play.httpUrl}/live/stamped/whep`);
    console.log(`# RTMP in → WHEP out, one relay hop: p50 ${hop.p50.toFixed(0)} ms, p95 ${hop.p95.toFixed(0)} ms over ${hop.n} frames`);
    const relayed = (await play.api<{ streams: Array<{ stream: string; publisher: { kind: string } | null }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'stamped');
    assert.equal(relayed?.publisher?.kind, 'relay', 'the second measurement went through the relay');
    assert.ok(local.p50 <= 300, `one node p50 ${local.p50.toFixed(0)} ms`);
    assert.ok(hop.p50 <= 300, `one hop p50 ${hop.p50.toFixed(0)} ms`);
  });
});
