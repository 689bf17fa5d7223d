/**
 * WHEP for Enhanced RTMP sources (a real node process; libdatachannel peers and headless
 * Chromium as the viewers). Debian's ffmpeg cannot publish Enhanced RTMP, so ffmpeg encodes
 * (libx265, SVT-AV1, libvpx-vp9) and the project's RTMP client publishes the frames as 'hvc1' /
 * 'av01' / 'vp09' tags.
 * - H.265 goes untouched to a viewer whose offer has it, as RTP per RFC 7798 (VPS, SPS, PPS and
 *   IDR NAL units seen). A viewer whose offer lacks it gets 415 WHEP.Codec naming both sides.
 * - AV1 goes untouched to Chromium, which decodes it; an offer without AV1 gets 415.
 * - VP9 goes to Chromium as RTP per RFC 9628 (this node's own packetiser), which decodes and shows
 *   it; an offer without VP9 gets 415.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection, Track } from 'node-datachannel';
import { NodeProcess } from '../harness/node-process.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { answerAndConnect, connectWithRetry } from '../harness/ndc-whep.ts';
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

/**
 * A recvonly video peer offering `codecs` (payload types from 96; 'VP9-2' is VP9 profile 2 only).
 * `raw`: no RTCP receiving session, so the test sees the node's RTCP (sender reports) too.
 */
async function offerer(codecs: Array<'H264' | 'H265' | 'VP8' | 'VP9' | 'VP9-2' | 'AV1'>, raw = false): Promise<Offerer> {
  const pc = new nodeDataChannel.PeerConnection('codecs', { iceServers: [], bindAddress: '127.0.0.1' });
  const video = new nodeDataChannel.Video('0', 'RecvOnly');
  codecs.forEach((c, i) => {
    const pt = 96 + i;
    if (c === 'H264') video.addH264Codec(pt, 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f');
    else if (c === 'H265') video.addH265Codec(pt);
    else if (c === 'VP8') video.addVP8Codec(pt);
    else if (c === 'VP9') video.addVP9Codec(pt);
    else if (c === 'VP9-2') video.addVideoCodec(pt, 'VP9', 'profile-id=2');
    else video.addAV1Codec(pt);
  });
  const track = pc.addTrack(video);
  if (!raw) track.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
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

/** ffmpeg's test pattern, 320x240, encoded with `codecArgs` into a file of `format`; its bytes. */
function encodeTestPattern(seconds: number, fps: number, codecArgs: string[], format: 'obu' | 'ivf'): Buffer {
  const dir = mkdtempSync(join(tmpdir(), `meshcast-${format}-`));
  try {
    const file = join(dir, `clip.${format}`);
    execFileSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-y', '-f', 'lavfi', '-i', `testsrc=size=320x240:rate=${fps}`, '-t', String(seconds), ...codecArgs, '-pix_fmt', 'yuv420p', '-f', format, file], { stdio: ['ignore', 'ignore', 'pipe'] });
    return readFileSync(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A clip of Enhanced RTMP video tags: the sequence header `config`, then one CodedFrames tag per frame at `fps`. */
function enhancedClip(fourcc: string, config: Buffer, frames: Array<{ data: Buffer; key: boolean }>, seconds: number, fps: number): Clip {
  return {
    headers: [{ type: 9, timestamp: 0, payload: exVideo(1, 0, fourcc, config) }],
    frames: frames.map((f, i) => ({ type: 9 as const, timestamp: Math.round((i * 1000) / fps), payload: exVideo(f.key ? 1 : 2, 1, fourcc, f.data) })),
    periodMs: seconds * 1000,
  };
}

/**
 * AV1 (SVT-AV1, low delay, a keyframe a second) as Enhanced RTMP 'av01' tags: an av1C sequence
 * header tag, then one CodedFrames tag per temporal unit (the OBUs as the encoder wrote them).
 */
function av1Clip(seconds: number, fps: number): Clip {
  const data = encodeTestPattern(seconds, fps, ['-c:v', 'libsvtav1', '-preset', '12', '-g', String(fps), '-svtav1-params', 'pred-struct=1'], 'obu');
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
  return enhancedClip('av01', av1C, units.map((u) => ({ data: u, key: u.includes(seqHeader!) })), seconds, fps);
}

/**
 * VP9 (libvpx-vp9, realtime, a keyframe a second, no alt-ref frames) as Enhanced RTMP 'vp09'
 * tags: a vpcC sequence header, then one CodedFrames tag per IVF frame, a keyframe tag where the
 * VP9 frame header says KEY_FRAME.
 */
function vp9Clip(seconds: number, fps: number): Clip {
  const data = encodeTestPattern(seconds, fps, ['-c:v', 'libvpx-vp9', '-deadline', 'realtime', '-cpu-used', '8', '-g', String(fps), '-auto-alt-ref', '0', '-lag-in-frames', '0'], 'ivf');
  // IVF: a 32-byte file header, then per frame a 4-byte little-endian size and an 8-byte timestamp.
  const frames: Buffer[] = [];
  for (let off = data.readUInt16LE(6); off + 12 <= data.length; ) {
    const size = data.readUInt32LE(off);
    frames.push(data.subarray(off + 12, off + 12 + size));
    off += 12 + size;
  }
  // Uncompressed header (VP9 spec §6.2), profile 0: frame_marker(2) profile(2) show_existing_frame(1) frame_type(1: 0 = key).
  const isKey = (f: Buffer): boolean => (f[0]! & 0xc8) === 0x80 && (f[0]! & 0x04) === 0;
  assert.ok(frames.length >= seconds * fps && isKey(frames[0]!), `${frames.length} VP9 frames, the first a keyframe`);
  // vpcC: version 1, flags 0; profile 0, level 1.0, 8 bits 4:2:0, BT.709 colour, no codec initialization data.
  const vpcC = Buffer.from([0x01, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x82, 0x01, 0x01, 0x01, 0x00, 0x00]);
  return enhancedClip('vp09', vpcC, frames.map((f) => ({ data: f, key: isKey(f) })), seconds, fps);
}

/**
 * In Chromium: plays a WHEP URL for `ms` in a <video> element and reports what getStats says of
 * the inbound video, how many frames the element showed (requestVideoFrameCallback) and its currentTime.
 */
const PLAY = `async ([url, ms]) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((res) => { if (pc.iceGatheringState === 'complete') return res(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res(); setTimeout(res, 2000); });
  const resp = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  if (resp.status !== 201) return { status: resp.status, error: await resp.text() };
  const video = document.createElement('video');
  video.muted = true;
  video.playsInline = true;
  document.body.appendChild(video);
  let shown = 0;
  const onFrame = () => { shown++; video.requestVideoFrameCallback(onFrame); };
  video.requestVideoFrameCallback(onFrame);
  pc.ontrack = (e) => { video.srcObject = e.streams[0] || new MediaStream([e.track]); video.play().catch(() => {}); };
  await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  await new Promise((r) => setTimeout(r, ms));
  const stats = [...(await pc.getStats()).values()];
  const inbound = stats.find((s) => s.type === 'inbound-rtp' && s.kind === 'video');
  const codec = inbound && stats.find((s) => s.id === inbound.codecId);
  pc.close();
  return { status: 201, framesDecoded: inbound ? inbound.framesDecoded : 0, mimeType: codec ? codec.mimeType : '', width: inbound ? inbound.frameWidth : 0, shown, currentTime: video.currentTime, nackCount: inbound ? inbound.nackCount : 0 };
}`;

const post = (url: string, sdp: string): Promise<Response> => fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: sdp });

/** An Enhanced RTMP video tag: frame type, packet type, FourCC, body. */
const exVideo = (frameType: number, packetType: number, fourcc: string, body: Buffer): Buffer => Buffer.concat([Buffer.from([0x80 | (frameType << 4) | packetType]), Buffer.from(fourcc), body]);

describe('WHEP for H.265, AV1 and VP9 sources (Enhanced RTMP)', { timeout: 120_000 }, () => {
  let node: NodeProcess;
  const stops: Array<() => void> = [];
  const peers: Offerer[] = [];

  before(async () => {
    node = await NodeProcess.start({ config: { webrtc: { udp_port: await freeUdpPort() } } });
    const hevc = await publishClip(`${node.rtmpUrl}/live/h265`, hevcClip({ seconds: 4, fps: 15, gop: 15 }));
    stops.push(hevc.stop);
    const av1 = await publishClip(`${node.rtmpUrl}/live/av1`, av1Clip(4, 15));
    stops.push(av1.stop);
    const vp9 = await publishClip(`${node.rtmpUrl}/live/vp9`, vp9Clip(2, 30));
    stops.push(vp9.stop);
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
    // A fresh peer when libdatachannel loses its offerer race (harness/ndc-whep.ts).
    const { nalTypes, packets } = await connectWithRetry(async () => {
      const p = await offerer(['H264', 'H265']);
      peers.push(p);
      const res = await post(`${node.httpUrl}/live/h265/whep`, p.offer);
      assert.equal(res.status, 201, await res.clone().text());
      const answer = await res.text();
      assert.match(answer, /a=rtpmap:97 H265\/90000/, 'the answer picks the offered H.265 format');
      assert.doesNotMatch(answer, /a=rtpmap:96 H264/, 'and only that one');
      const got = { nalTypes: new Set<number>(), n: 0, packets: () => got.n };
      p.tracks[0]!.onMessage((pkt) => {
        if (pkt.length < 14 || (pkt[1]! & 0x7f) !== 97) return; // not our RTP (RTCP)
        got.n++;
        const cc = pkt[0]! & 0x0f;
        const ext = pkt[0]! & 0x10 ? 4 + 4 * pkt.readUInt16BE(12 + 4 * cc + 2) : 0;
        const payload = pkt.subarray(12 + 4 * cc + ext);
        const type = (payload[0]! >> 1) & 0x3f;
        // 49: a fragmentation unit (RFC 7798 §4.4.3): the fragmented NAL's type is in the FU header.
        got.nalTypes.add(type === 49 ? payload[2]! & 0x3f : type);
      });
      if (await answerAndConnect(p.pc, answer)) return got;
      await fetch(new URL(res.headers.get('Location')!, node.httpUrl), { method: 'DELETE' });
      return undefined;
    });
    await waitFor('H.265 RTP arrives', () => (packets() > 30 && [32, 33, 34].every((t) => nalTypes.has(t)) && (nalTypes.has(19) || nalTypes.has(20))) || undefined, 15_000, 100);
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

  test('a VP9 stream to a libdatachannel peer: RFC 9628 descriptors and sender reports; an offer of VP9 profile 2 only gets 415', async () => {
    const profile2 = await offerer(['H264', 'VP9-2']);
    peers.push(profile2);
    const r = await post(`${node.httpUrl}/live/vp9/whep`, profile2.offer);
    assert.equal(r.status, 415);
    assert.match(((await r.json()) as { error: string }).error, /the stream's video is VP9 profile 0; the offer has VP9 but not that profile \(the offer has H264, VP9\)/);

    // A fresh peer when libdatachannel loses its offerer race (harness/ndc-whep.ts).
    const got = await connectWithRetry(async () => {
      const p = await offerer(['H264', 'VP9'], true);
      peers.push(p);
      const res = await post(`${node.httpUrl}/live/vp9/whep`, p.offer);
      assert.equal(res.status, 201, await res.clone().text());
      const answer = await res.text();
      assert.match(answer, /a=rtpmap:97 VP9\/90000/, 'the answer picks the offered VP9 format');
      const a = { answer, seen: new Map<number, number>(), ssrc: 0, keyframeSize: '', senderReports: 0, framesEnded: 0 }; // seen: sequence number → times received
      p.tracks[0]!.onMessage((pkt) => {
        if (pkt.length >= 8 && pkt[1] === 200) a.senderReports++; // RTCP SR (RFC 3550 §6.4.1)
        if (pkt.length < 15 || (pkt[1]! & 0x7f) !== 97) return;
        const seq = pkt.readUInt16BE(2);
        a.seen.set(seq, (a.seen.get(seq) ?? 0) + 1);
        a.ssrc = pkt.readUInt32BE(8);
        const d = pkt.subarray(12); // no CSRCs or extensions in the node's packets
        assert.equal(d[0]! & 0x80, 0x80, 'a picture ID in every descriptor');
        if (d[0]! & 0x04) {
          a.framesEnded++;
          assert.equal(pkt[1]! & 0x80, 0x80, 'the marker bit on the packet that ends a frame');
        }
        if (d[0]! & 0x02) a.keyframeSize = `${d.readUInt16BE(4)}x${d.readUInt16BE(6)}`; // V: one layer, Y=1
      });
      if (await answerAndConnect(p.pc, answer)) return a;
      await fetch(new URL(res.headers.get('Location')!, node.httpUrl), { method: 'DELETE' });
      return undefined;
    });
    await waitFor('VP9 RTP and a sender report arrive', () => (got.framesEnded > 20 && got.senderReports > 0) || undefined, 15_000, 100);
    assert.equal(got.keyframeSize, '320x240', 'the keyframe\'s scalability structure names its size');
    assert.ok(got.ssrc !== 0 && got.answer.includes(`a=ssrc:${got.ssrc} `), 'the packets carry the SSRC the answer names');
    assert.ok([...got.seen.values()].every((n) => n === 1), 'no sequence number used twice');
  });

  test('a VP9 stream: Chromium decodes and shows it over WHEP (RFC 9628); an offer without VP9 gets 415', { skip: browserUnavailable() }, async () => {
    const without = await offerer(['H264', 'AV1']);
    peers.push(without);
    const r1 = await post(`${node.httpUrl}/live/vp9/whep`, without.offer);
    assert.equal(r1.status, 415);
    const body = (await r1.json()) as { code: string; error: string };
    assert.equal(body.code, 'WHEP.Codec');
    assert.match(body.error, /the stream's video is VP9; the offer does not have it \(the offer has H264, AV1\)/);
    let browser: HeadlessBrowser | undefined;
    try {
      browser = await launchBrowser();
      const page = await browser.newPage();
      await page.goto(`${node.httpUrl}/healthz`);
      const r = (await page.evaluate(`(${PLAY})(${JSON.stringify([`${node.httpUrl}/live/vp9/whep`, 3000])})`)) as { status: number; error?: string; framesDecoded: number; mimeType: string; width: number; shown: number; currentTime: number; nackCount: number };
      console.log(`# VP9 in Chromium: ${JSON.stringify(r)}`);
      assert.equal(r.status, 201, r.error);
      assert.equal(r.mimeType, 'video/VP9');
      assert.equal(r.width, 320);
      assert.ok(r.framesDecoded > 30, `frames decoded in 3 s at 30 fps: ${r.framesDecoded}`);
      assert.ok(r.shown > 30, `frames shown by the <video> element: ${r.shown}`);
      assert.ok(r.currentTime > 1, `currentTime grows: ${r.currentTime}`);
    } finally {
      await browser?.close();
    }
  });
});
