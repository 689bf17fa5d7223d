/**
 * A WHEP peer that goes away without a word: libdatachannel peers (node-datachannel, the load
 * tester's WHEP client library) play from a real node process. A peer that sends receiver
 * reports keeps its session; one that sends no RTCP at all (as a peer whose machine died would)
 * is closed after `webrtc.rtcp_timeout_s`, and so is one whose peer connection closes (DTLS
 * close). Each session end is seen in the admin API. A Chromium viewer keeps its session while
 * the stream has no publisher for longer than the timeout: browsers send RTCP without media too.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection } from 'node-datachannel';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { answerAndConnect, connectWithRetry } from '../harness/ndc-whep.ts';
import { browserUnavailable, launchBrowser } from '../harness/browser.ts';

const RTCP_TIMEOUT_S = 2;

/** A recvonly H.264 + Opus peer; `reports`: send RTCP receiver reports as a browser does. Resolves once media arrives. */
function peer(url: string, reports: boolean): Promise<{ pc: PeerConnection; close: () => void; packets: () => number }> {
  return connectWithRetry(async () => {
    const pc = new nodeDataChannel.PeerConnection(`gone-${reports}`, { iceServers: [], bindAddress: '127.0.0.1' });
    const video = new nodeDataChannel.Video('0', 'RecvOnly');
    video.addH264Codec(102, 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f');
    const audio = new nodeDataChannel.Audio('1', 'RecvOnly');
    audio.addOpusCodec(111);
    const vt = pc.addTrack(video);
    const at = pc.addTrack(audio);
    if (reports) {
      vt.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
      at.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
    }
    let n = 0;
    vt.onMessage(() => n++);
    // Tracks first: libdatachannel aborts when a peer connection goes with its tracks still open.
    const close = (): void => {
      vt.close();
      at.close();
      pc.close();
    };
    const offer = await new Promise<string>((resolve) => {
      pc.onGatheringStateChange((s) => s === 'complete' && resolve(pc.localDescription()!.sdp));
      pc.setLocalDescription();
    });
    const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: offer });
    assert.equal(res.status, 201, await res.clone().text());
    if (!(await answerAndConnect(pc, await res.text()))) {
      close();
      await fetch(new URL(res.headers.get('Location')!, url), { method: 'DELETE' });
      return undefined;
    }
    await waitFor('media reaches the peer', () => n > 20 || undefined, 10_000, 50);
    return { pc, close, packets: () => n };
  });
}

describe('WHEP peers that go away', { timeout: 90_000 }, () => {
  let node: NodeProcess;
  let pub: FfmpegPublisher;
  const pcs: PeerConnection[] = [];
  const talkingIds = new Set<string>();

  before(async () => {
    // Debug: the session's close reason is a debug line.
    node = await NodeProcess.start({ config: { webrtc: { udp_port: await freeUdpPort(), rtcp_timeout_s: RTCP_TIMEOUT_S } }, env: { MESHCAST_LOG_LEVEL: 'debug' } });
    pub = new FfmpegPublisher(`${node.rtmpUrl}/live/gone`);
    await waitFor('live', async () => (await node.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'gone' && s.live), 15_000);
  });

  after(async () => {
    for (const pc of pcs) pc.close();
    nodeDataChannel.cleanup();
    await pub?.stop();
    await node?.stop();
  });

  const whep = async (): Promise<string[]> =>
    (await node.api<{ sessions: Array<{ id: string; protocol: string }> }>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'whep').map((s) => s.id);

  test('a peer that sends no RTCP is closed after rtcp_timeout_s; one that reports stays', async () => {
    const talking = await peer(`${node.httpUrl}/live/gone/whep`, true);
    pcs.push(talking.pc);
    const [talkingId] = await whep();
    assert.ok(talkingId);
    talkingIds.add(talkingId);
    const t0 = Date.now();
    const mute = await peer(`${node.httpUrl}/live/gone/whep`, false);
    pcs.push(mute.pc);
    assert.equal((await whep()).length, 2);
    await waitFor('the silent peer\'s session ended', async () => ((await whep()).length === 1 || undefined), 15_000, 100);
    const closedAfter = Date.now() - t0;
    console.log(`# a WHEP peer without RTCP was closed ${closedAfter} ms after its offer (rtcp_timeout_s ${RTCP_TIMEOUT_S})`);
    assert.ok(closedAfter >= RTCP_TIMEOUT_S * 1000, `not before the timeout: ${closedAfter} ms`);
    assert.deepEqual(await whep(), [talkingId], 'the peer that reports keeps its session');
    await new Promise((r) => setTimeout(r, RTCP_TIMEOUT_S * 1500));
    assert.deepEqual(await whep(), [talkingId], 'still there after another 1.5 timeouts');
    const before = talking.packets();
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(talking.packets() > before, 'and media still flows to it');
    assert.match(node.logs(), /no RTCP from the peer for \d+ s/, 'the reason is logged');
  });

  test('Chromium keeps sending RTCP while no media comes: its session outlives a publisher gap longer than the timeout', { skip: browserUnavailable() }, async () => {
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      await page.goto(`${node.httpUrl}/healthz`);
      const status = await page.evaluate(`(async (url) => {
        const pc = new RTCPeerConnection();
        window.__pc = pc;
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.addTransceiver('audio', { direction: 'recvonly' });
        await pc.setLocalDescription(await pc.createOffer());
        await new Promise((res) => { if (pc.iceGatheringState === 'complete') return res(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res(); setTimeout(res, 2000); });
        const resp = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
        if (resp.status === 201) await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
        return resp.status;
      })(${JSON.stringify(`${node.httpUrl}/live/gone/whep`)})`);
      assert.equal(status, 201);
      await waitFor('Chromium connected', async () => (await page.evaluate('window.__pc.connectionState')) === 'connected' || undefined, 10_000, 100);
      const mine = await waitFor('its session listed', async () => (await whep()).find((id) => !(talkingIds.has(id))), 5000, 100);
      await pub.stop();
      await new Promise((r) => setTimeout(r, RTCP_TIMEOUT_S * 2500));
      assert.ok((await whep()).includes(mine), 'the browser\'s session is still there, with no media for 2.5 timeouts');
      pub = new FfmpegPublisher(`${node.rtmpUrl}/live/gone`);
      await waitFor('live again', async () => (await node.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'gone' && s.live), 15_000);
    } finally {
      await browser.close();
    }
  });

  test('a peer whose connection closes (DTLS close) is cleaned up', async () => {
    const p = await peer(`${node.httpUrl}/live/gone/whep`, true);
    const n = (await whep()).length;
    p.close();
    await waitFor('the closed peer\'s session ended', async () => ((await whep()).length === n - 1 || undefined), 5000, 100);
  });
});
