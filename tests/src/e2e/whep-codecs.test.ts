/**
 * WHEP for Enhanced RTMP sources (a real node process; libdatachannel peers and headless
 * Chromium as the viewers). Debian's ffmpeg cannot publish Enhanced RTMP, so ffmpeg encodes
 * (libx265, SVT-AV1) and the project's RTMP client publishes the frames as 'hvc1' / 'av01' tags.
 * - H.265 goes untouched to a viewer whose offer has it, as RTP per RFC 7798 (VPS, SPS, PPS and
 *   IDR NAL units seen). A viewer whose offer lacks it gets 415 WHEP.Codec naming both sides.
 * - AV1 goes untouched to Chromium, which decodes it; an offer without AV1 gets 415.
 * - VP9 is refused with 415 even when the offer has it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection, Track } from 'node-datachannel';
import { RtmpClient } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { hevcClip, publishClip, type Clip } from '../../../services/node/test/hls-support.ts';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { browserUnavailable, launchBrowser, type HeadlessBrowser } from '../harness/browser.ts';

interface Offerer {
  pc: PeerConnection;
  tracks: Track[];
  offer: string;
  close(): void;
}

/** A recvonly video peer offering `codecs` (payload types from 96). */
async function offerer(codecs: Array<'H264' | 'H265' | 'VP8' | 'VP9' | 'AV1'>): Promise<Offerer> {
  const pc = new nodeDataChannel.PeerConnection('codecs', { iceServers: [], bindAddress: '127.0.0.1' });
  const video = new nodeDataChannel.Video('0', 'RecvOnly');
  codecs.forEach((c, i) => {
    const pt = 96 + i;
    if (c === 'H264') video.addH264Codec(pt, 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f');
    else if (c === 'H265') video.addH265Codec(pt);
    else if (c === 'VP8') video.addVP8Codec(pt);
    else if (c === 'VP9') video.addVP9Codec(pt);
    else video.addAV1Codec(pt);
  });
  const track = pc.addTrack(video);
  track.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
  const offer = await new Promise<string>((resolve) => {
    pc.onGatheringStateChange((s) => s === 'complete' && resolve(pc.localDescription()!.sdp));
    pc.setLocalDescription();
  });
  return {
    pc,
    tracks: [track],
    offer,
    close: () => {
      track.close();
      pc.close();
    },
  };
}

/**
 * AV1 (SVT-AV1, low delay, a keyframe a second) as Enhanced RTMP 'av01' tags: an av1C sequence
 * header tag, then one CodedFrames tag per temporal unit (the OBUs as the encoder wrote them).
 */
function av1Clip(seconds: number, fps: number): Clip {
  const dir = mkdtempSync(join(tmpdir(), 'meshcast-av1-'));
  try {
    const file = join(dir, 'a.obu');
    execFileSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-y', '-f', 'lavfi', '-i', `testsrc=size=320x240:rate=${fps}`, '-t', String(seconds), '-c:v', 'libsvtav1', '-preset', '12', '-g', String(fps), '-svtav1-params', 'pred-struct=1', '-pix_fmt', 'yuv420p', '-f', 'obu', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    const data = readFileSync(file);
    // Split at temporal delimiters (OBU type 2); every OBU here carries its size (leb128).
    const units: Buffer[] = [];
    let seqHeader: Buffer | undefined;
    let start = 0;
    let off = 0;
    while (off < data.length) {
      const obuStart = off;
      const type = (data[off]! >> 3) & 0x0f;
      off += data[off]! & 0x04 ? 2 : 1;
      let size = 0;
      for (let i = 0; ; i++) {
        const b = data[off++]!;
        size += (b & 0x7f) * 2 ** (7 * i);
        if (!(b & 0x80)) break;
      }
      off += size;
      if (type === 2 && obuStart > start) {
        units.push(data.subarray(start, obuStart));
        start = obuStart;
      }
      if (type === 1) seqHeader ??= data.subarray(obuStart, off);
    }
    units.push(data.subarray(start));
    assert.ok(seqHeader, 'the encoder wrote a sequence header');
    // av1C: marker+version, then profile/level and flags this node does not read, then the configOBUs.
    const av1C = Buffer.concat([Buffer.from([0x81, 0x08, 0x0c, 0x00]), seqHeader]);
    const hasSeq = (u: Buffer): boolean => u.includes(seqHeader!);
    return {
      headers: [{ type: 9, timestamp: 0, payload: exVideo(1, 0, 'av01', av1C) }],
      frames: units.map((u, i) => ({ type: 9 as const, timestamp: Math.round((i * 1000) / fps), payload: exVideo(hasSeq(u) ? 1 : 2, 1, 'av01', u) })),
      periodMs: seconds * 1000,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** In Chromium: plays a WHEP URL for `ms` and reports what getStats says of the inbound video. */
const PLAY = `async ([url, ms]) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((res) => { if (pc.iceGatheringState === 'complete') return res(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res(); setTimeout(res, 2000); });
  const resp = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  if (resp.status !== 201) return { status: resp.status, error: await resp.text() };
  await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  await new Promise((r) => setTimeout(r, ms));
  const stats = [...(await pc.getStats()).values()];
  const inbound = stats.find((s) => s.type === 'inbound-rtp' && s.kind === 'video');
  const codec = inbound && stats.find((s) => s.id === inbound.codecId);
  pc.close();
  return { status: 201, framesDecoded: inbound ? inbound.framesDecoded : 0, mimeType: codec ? codec.mimeType : '', width: inbound ? inbound.frameWidth : 0 };
}`;

const post = (url: string, sdp: string): Promise<Response> => fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: sdp });

/** An Enhanced RTMP video tag: frame type, packet type, FourCC, body. */
const exVideo = (frameType: number, packetType: number, fourcc: string, body: Buffer): Buffer => Buffer.concat([Buffer.from([0x80 | (frameType << 4) | packetType]), Buffer.from(fourcc), body]);

describe('WHEP for H.265 and AV1 sources (Enhanced RTMP)', { timeout: 120_000 }, () => {
  let node: NodeProcess;
  const stops: Array<() => void> = [];
  const peers: Offerer[] = [];

  before(async () => {
    node = await NodeProcess.start({ config: { webrtc: { udp_port: await freeUdpPort() } } });
    const hevc = await publishClip(`${node.rtmpUrl}/live/h265`, hevcClip({ seconds: 4, fps: 15, gop: 15 }));
    stops.push(hevc.stop);
    const av1 = await publishClip(`${node.rtmpUrl}/live/av1`, av1Clip(4, 15));
    stops.push(av1.stop);
    // VP9: a sequence header and keyframes whose bytes nobody decodes here; the node refuses before it would send them.
    const vp9 = await RtmpClient.openPublisher(`${node.rtmpUrl}/live/vp9`);
    vp9.sendMedia(9, 0, exVideo(1, 0, 'vp09', Buffer.from([0x01, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x80, 0x02, 0x02, 0x02, 0x00, 0x00])));
    let ts = 0;
    const t = setInterval(() => vp9.sendMedia(9, (ts += 100), exVideo(1, 1, 'vp09', Buffer.from([0x82, 0x49, 0x83, 0x42, 0x00]))), 100);
    stops.push(() => {
      clearInterval(t);
      vp9.close();
    });
    await waitFor('both streams live', async () => {
      const s = (await node.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams;
      return (['h265', 'av1', 'vp9'].every((n) => s.some((x) => x.stream === n && x.live))) || undefined;
    }, 20_000);
  });

  after(async () => {
    for (const p of peers) p.close();
    nodeDataChannel.cleanup();
    for (const s of stops) s();
    await node?.stop();
  });

  test('an H.265 stream and an offer without H.265: 415 naming both', async () => {
    const p = await offerer(['H264', 'VP8']);
    peers.push(p);
    const res = await post(`${node.httpUrl}/live/h265/whep`, p.offer);
    assert.equal(res.status, 415);
    const body = (await res.json()) as { code: string; error: string };
    assert.equal(body.code, 'WHEP.Codec');
    assert.match(body.error, /the stream's video is H265; the offer does not have it \(the offer has H264, VP8\)/);
  });

  test('an H.265 stream and an offer with H.265: passed through as RTP (RFC 7798) with VPS, SPS, PPS and IDR NAL units', async () => {
    const p = await offerer(['H264', 'H265']);
    peers.push(p);
    const res = await post(`${node.httpUrl}/live/h265/whep`, p.offer);
    assert.equal(res.status, 201, await res.clone().text());
    const answer = await res.text();
    assert.match(answer, /a=rtpmap:97 H265\/90000/, 'the answer picks the offered H.265 format');
    assert.doesNotMatch(answer, /a=rtpmap:96 H264/, 'and only that one');
    const nalTypes = new Set<number>();
    let packets = 0;
    p.tracks[0]!.onMessage((pkt) => {
      if (pkt.length < 14 || (pkt[1]! & 0x7f) !== 97) return; // not our RTP (RTCP)
      packets++;
      const cc = pkt[0]! & 0x0f;
      const ext = pkt[0]! & 0x10 ? 4 + 4 * pkt.readUInt16BE(12 + 4 * cc + 2) : 0;
      const payload = pkt.subarray(12 + 4 * cc + ext);
      const type = (payload[0]! >> 1) & 0x3f;
      // 49: a fragmentation unit (RFC 7798 §4.4.3): the fragmented NAL's type is in the FU header.
      nalTypes.add(type === 49 ? payload[2]! & 0x3f : type);
    });
    try {
      p.pc.setRemoteDescription(answer, 'answer');
    } catch (err) {
      // As in whep-peer-gone.test.ts: libdatachannel now and then throws on the answer's
      // candidates after applying it; ICE goes on, and the wait for RTP below fails if not.
      if (!/remote candidate without ICE transport/.test((err as Error).message)) throw err;
    }
    await waitFor('H.265 RTP arrives', () => (packets > 30 && [32, 33, 34].every((t) => nalTypes.has(t)) && (nalTypes.has(19) || nalTypes.has(20))) || undefined, 15_000, 100);
    const sessions = (await node.api<{ sessions: Array<{ protocol: string; stream: string; bytesOut: number }> }>('/api/v1/sessions')).sessions;
    assert.ok(sessions.some((s) => s.protocol === 'whep' && s.stream === 'h265' && s.bytesOut > 0));
  });

  test('an AV1 stream: Chromium decodes it over WHEP; an offer without AV1 gets 415', { skip: browserUnavailable() }, async () => {
    const without = await offerer(['H264']);
    peers.push(without);
    const r1 = await post(`${node.httpUrl}/live/av1/whep`, without.offer);
    assert.equal(r1.status, 415);
    assert.match(((await r1.json()) as { error: string }).error, /the stream's video is AV1; the offer does not have it \(the offer has H264\)/);
    let browser: HeadlessBrowser | undefined;
    try {
      browser = await launchBrowser();
      const page = await browser.newPage();
      await page.goto(`${node.httpUrl}/healthz`);
      const r = (await page.evaluate(`(${PLAY})(${JSON.stringify([`${node.httpUrl}/live/av1/whep`, 3000])})`)) as { status: number; error?: string; framesDecoded: number; mimeType: string; width: number };
      assert.equal(r.status, 201, r.error);
      assert.equal(r.mimeType, 'video/AV1');
      assert.equal(r.width, 320);
      assert.ok(r.framesDecoded > 20, `frames decoded in 3 s at 15 fps: ${r.framesDecoded}`);
    } finally {
      await browser?.close();
    }
  });

  test('a VP9 stream is refused with 415 even when the offer has VP9', async () => {
    const withVp9 = await offerer(['H264', 'VP9']);
    peers.push(withVp9);
    const r = await post(`${node.httpUrl}/live/vp9/whep`, withVp9.offer);
    assert.equal(r.status, 415);
    assert.match(((await r.json()) as { error: string }).error, /the stream's video is VP9; the offer has it, but this node passes through only H\.264, H\.265 and AV1 \(the offer has H264, VP9\)/);
  });
});
