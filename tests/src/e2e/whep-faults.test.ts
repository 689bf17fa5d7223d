/**
 * WHEP under a fault: Chromium plays over WHEP from a playback node that relays the stream from
 * its owner (real nats-server, node processes, ffmpeg). The owner is SIGKILLed and the encoder
 * publishes again to the other ingest node. The browser's peer connection must stay up and video
 * resume on the same connection; the gap is measured.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { NodeProcess } from '../harness/node-process.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { browserUnavailable, launchBrowser, type HeadlessBrowser } from '../harness/browser.ts';

const MESH = { mesh_secret: 'whep-faults-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };

/** Starts a WHEP viewer in the page that keeps playing; the wall times of shown frames collect in window.__shown. */
const START = `async (url) => {
  const pc = new RTCPeerConnection();
  window.__pc = pc;
  window.__shown = [];
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  const media = new MediaStream();
  pc.ontrack = (e) => { media.addTrack(e.track); video.srcObject = media; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((res) => { if (pc.iceGatheringState === 'complete') return res(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res(); setTimeout(res, 2000); });
  const resp = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  if (resp.status !== 201) return { status: resp.status, error: await resp.text() };
  await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  const onFrame = () => { window.__shown.push(Date.now()); video.requestVideoFrameCallback(onFrame); };
  video.requestVideoFrameCallback(onFrame);
  return { status: 201 };
}`;

describe('WHEP when the owner dies', { skip: browserUnavailable(), timeout: 110_000 }, () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  const pubs: FfmpegPublisher[] = [];
  let browser: HeadlessBrowser;
  let page: Page;

  before(async () => {
    nats = await startNatsServer();
    for (const [id, roles] of [['F-a', 'ingest'], ['F-b', 'ingest'], ['F-play', 'playback']] as const) {
      nodes.push(await NodeProcess.start({ nodeId: id, args: ['--roles', roles], config: { mesh: { ...MESH, nats: [nats.url] }, webrtc: { udp_port: await freeUdpPort() } } }));
    }
    browser = await launchBrowser();
    page = await browser.newPage();
    await page.goto(`${nodes[2]!.httpUrl}/healthz`);
  });

  after(async () => {
    for (const p of pubs) await p.stop();
    await browser?.close();
    for (const n of nodes) await (n.exitCode === undefined ? n.stop() : undefined);
    await nats?.stop();
  });

  test('owner SIGKILLed, encoder republishes to the other ingest node: the peer connection stays up and video resumes', async () => {
    const [a, b, play] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    await waitFor('the mesh sees 3 nodes', async () => (await play.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 3 || undefined, 15_000, 100);
    const first = new FfmpegPublisher(`${a.rtmpUrl}/live/fault`);
    pubs.push(first);
    await waitFor('live on the owner', async () => (await a.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'fault' && s.live), 15_000);

    const started = (await page.evaluate(`(${START})(${JSON.stringify(`${play.httpUrl}/live/fault/whep`)})`)) as { status: number; error?: string };
    assert.equal(started.status, 201, started.error);
    const shown = async (): Promise<number[]> => (await page.evaluate('window.__shown')) as number[];
    await waitFor('playing over WHEP', async () => (await shown()).length > 30 || undefined, 15_000, 100);

    const killAt = Date.now();
    await a.kill();
    await first.stop();
    const second = new FfmpegPublisher(`${b.rtmpUrl}/live/fault`);
    pubs.push(second);
    const republishedAt = Date.now();
    const resumed = await waitFor('video resumes', async () => (await shown()).find((t) => t > republishedAt + 100), 20_000, 100);
    await new Promise((r) => setTimeout(r, 2000));
    const after2s = (await shown()).filter((t) => t > resumed).length;
    const before = (await shown()).filter((t) => t <= killAt);
    const gap = resumed - before[before.length - 1]!;
    console.log(`# WHEP through the owner's death: video resumed ${resumed - republishedAt} ms after the republish (${gap} ms without a new frame)`);
    assert.equal(await page.evaluate('window.__pc.connectionState'), 'connected', 'the same peer connection carries on');
    assert.ok(after2s > 30, `frames in the 2 s after resuming: ${after2s}`);
    assert.ok(resumed - republishedAt < 10_000, `resumed ${resumed - republishedAt} ms after the republish`);
  });
});
