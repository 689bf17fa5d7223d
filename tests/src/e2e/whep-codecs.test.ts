/**
 * WHEP for Enhanced RTMP sources (a real node process; libdatachannel peers as the viewers).
 * An H.265 stream published over Enhanced RTMP ('hvc1', encoded by ffmpeg's libx265) goes to a
 * viewer whose offer has H.265 untouched, as RTP per RFC 7798 with VPS/SPS/PPS before every IDR.
 * A viewer whose offer lacks it gets 415 WHEP.Codec naming the stream's codec and the offer's. An
 * AV1 stream is refused the same way, whether or not the offer has AV1.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection, Track } from 'node-datachannel';
import { RtmpClient } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { hevcClip, publishClip } from '../../../services/node/test/hls-support.ts';

interface Offerer {
  pc: PeerConnection;
  tracks: Track[];
  offer: string;
  close(): void;
}

/** A recvonly video peer offering `codecs` (payload types from 96). */
async function offerer(codecs: Array<'H264' | 'H265' | 'VP8' | 'AV1'>): Promise<Offerer> {
  const pc = new nodeDataChannel.PeerConnection('codecs', { iceServers: [], bindAddress: '127.0.0.1' });
  const video = new nodeDataChannel.Video('0', 'RecvOnly');
  codecs.forEach((c, i) => {
    const pt = 96 + i;
    if (c === 'H264') video.addH264Codec(pt, 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f');
    else if (c === 'H265') video.addH265Codec(pt);
    else if (c === 'VP8') video.addVP8Codec(pt);
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
    // AV1: a sequence header (av1C) and keyframes whose OBUs nobody decodes here; the node refuses before it would send them.
    const av1 = await RtmpClient.openPublisher(`${node.rtmpUrl}/live/av1`);
    av1.sendMedia(9, 0, exVideo(1, 0, 'av01', Buffer.from([0x81, 0x08, 0x0c, 0x00, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x42, 0xab, 0xbf, 0xc3, 0x70, 0x0b, 0xe0])));
    let ts = 0;
    const t = setInterval(() => av1.sendMedia(9, (ts += 100), exVideo(1, 1, 'av01', Buffer.from([0x12, 0x00, 0x32, 0x02, 0x10, 0x00]))), 100);
    stops.push(() => {
      clearInterval(t);
      av1.close();
    });
    await waitFor('both streams live', async () => {
      const s = (await node.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams;
      return (s.some((x) => x.stream === 'h265' && x.live) && s.some((x) => x.stream === 'av1' && x.live)) || undefined;
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
    p.pc.setRemoteDescription(answer, 'answer');
    await waitFor('H.265 RTP arrives', () => (packets > 30 && [32, 33, 34].every((t) => nalTypes.has(t)) && (nalTypes.has(19) || nalTypes.has(20))) || undefined, 15_000, 100);
    const sessions = (await node.api<{ sessions: Array<{ protocol: string; stream: string; bytesOut: number }> }>('/api/v1/sessions')).sessions;
    assert.ok(sessions.some((s) => s.protocol === 'whep' && s.stream === 'h265' && s.bytesOut > 0));
  });

  test('an AV1 stream is refused with 415 whether or not the offer has AV1', async () => {
    const without = await offerer(['H264']);
    const withAv1 = await offerer(['H264', 'AV1']);
    peers.push(without, withAv1);
    const r1 = await post(`${node.httpUrl}/live/av1/whep`, without.offer);
    assert.equal(r1.status, 415);
    assert.match(((await r1.json()) as { error: string }).error, /the stream's video is AV1; the offer does not have it \(the offer has H264\)/);
    const r2 = await post(`${node.httpUrl}/live/av1/whep`, withAv1.offer);
    assert.equal(r2.status, 415);
    assert.match(((await r2.json()) as { error: string }).error, /the stream's video is AV1; the offer has it, but this node passes through only H\.264 and H\.265 \(the offer has H264, AV1\)/);
  });
});
