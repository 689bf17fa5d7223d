/**
 * WhepSwarm: N WebRTC viewers, each a libdatachannel peer (node-datachannel) that plays over
 * WHEP (RFC 9725): a recvonly H.264 + Opus offer is POSTed once ICE gathering is complete, the
 * answer is set, and the received RTP is counted. The session is DELETEd when the swarm stops.
 *
 * Frames are counted from RTP, never decoded: a video frame ends at a packet with the marker bit
 * (RFC 6184 §5.1), an Opus packet is one audio frame (RFC 7587). Bytes are RTP payload bytes.
 * RTP timestamps start at a random value per track, so a frame's media time is its distance from
 * the track's first timestamp: the measurement window counts by arrival time, not by the
 * publisher's media time. The ramp, counters and report are the load library's SwarmCore.
 */
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection, Track } from 'node-datachannel';
import { SwarmCore, ViewerTally } from '../load/index.ts';

const VIDEO_PT = 102;
const AUDIO_PT = 111;
const VIDEO_CLOCK_PER_MS = 90;
const OPUS_CLOCK_PER_MS = 48;
/** How long a DELETE of the session may take when the swarm stops before the peer is closed anyway. */
const DELETE_TIMEOUT_MS = 2000;
/**
 * Attempts per viewer whose peer fails before it plays. libdatachannel, as the DTLS client,
 * can receive the node's certificate before it has stored the answer's fingerprint; it then
 * refuses the certificate and the peer fails ~10 ms after the answer (a few peers in a hundred
 * under load). A browser does not do this, so a viewer asks again with a fresh peer, as a
 * player would, and the report counts the retry instead of a failure.
 */
const MAX_ATTEMPTS = 3;

/** Swarms in this process with peers not yet closed: libdatachannel's threads stop after the last. */
let liveSwarms = 0;

/** What one RTP packet holds, or undefined for RTCP (RFC 5761 demultiplexing) and anything too short. */
export interface RtpInfo {
  marker: boolean;
  payloadType: number;
  timestamp: number;
  payload: Buffer;
}

export function parseRtp(pkt: Buffer): RtpInfo | undefined {
  if (pkt.length < 12 || pkt[0]! >> 6 !== 2) return undefined;
  const b1 = pkt[1]!;
  // RTCP shares the port: its packet types 192-223 fill the whole second byte.
  if (b1 >= 192 && b1 <= 223) return undefined;
  const cc = pkt[0]! & 0x0f;
  let off = 12 + 4 * cc;
  if (pkt[0]! & 0x10) {
    if (pkt.length < off + 4) return undefined;
    off += 4 + 4 * pkt.readUInt16BE(off + 2);
  }
  let end = pkt.length;
  if (pkt[0]! & 0x20) end -= pkt[pkt.length - 1]!;
  if (end < off) return undefined;
  return { marker: (b1 & 0x80) !== 0, payloadType: b1 & 0x7f, timestamp: pkt.readUInt32BE(4), payload: pkt.subarray(off, end) };
}

/** True when an H.264 RTP payload (single NAL, STAP-A or the first FU-A fragment) carries an IDR slice. */
export function carriesIdr(payload: Buffer): boolean {
  if (payload.length < 2) return false;
  const type = payload[0]! & 0x1f;
  if (type === 5) return true;
  if (type === 28) return (payload[1]! & 0x80) !== 0 && (payload[1]! & 0x1f) === 5;
  if (type === 24) {
    for (let off = 1; off + 2 < payload.length; ) {
      const size = payload.readUInt16BE(off);
      if ((payload[off + 2]! & 0x1f) === 5) return true;
      off += 2 + size;
    }
  }
  return false;
}

class WhepViewer extends ViewerTally {
  pc: PeerConnection | undefined;
  /** Peers made for this viewer so far (see MAX_ATTEMPTS). */
  attempts = 0;
  tracks: Track[] = [];
  /** The session resource from the answer's Location, for the DELETE. */
  resource: string | undefined;
  /** The offer went out (libdatachannel may report gathering complete more than once). */
  posted = false;
  timer: NodeJS.Timeout | undefined;
  // Per video access unit being received: its bytes and whether it holds an IDR.
  auBytes = 0;
  auIdr = false;
  videoTs0: number | undefined;
  audioTs0: number | undefined;
}

/** Milliseconds from `ts0` to `ts` on a 32-bit RTP clock of `perMs` ticks per millisecond. */
const rtpMs = (ts: number, ts0: number, perMs: number): number => ((ts - ts0) >>> 0) / perMs;

export class WhepSwarm extends SwarmCore<WhepViewer> {
  private deleting = 0;
  private counted = false;

  override start(): void {
    if (!this.counted) liveSwarms++;
    this.counted = true;
    super.start();
  }

  protected newViewer(): WhepViewer {
    return new WhepViewer(this);
  }

  protected open(v: WhepViewer, i: number): void {
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    v.timer = setTimeout(() => {
      if (v.state !== 'connecting' && v.ttff >= 0) return;
      this.fail(v, v.resource ? 'play:NO_MEDIA' : 'connect:TIMEOUT');
      this.close(v);
    }, timeoutMs);
    v.attempts++;
    let pc: PeerConnection;
    try {
      // Loopback only, as every target of this tool; each peer has its own UDP port.
      pc = new nodeDataChannel.PeerConnection(`whep-load-${i}`, { iceServers: [], bindAddress: this.localAddress(i) ?? '127.0.0.1' });
    } catch (err) {
      this.fail(v, `connect:${(err as Error).message.slice(0, 40)}`);
      return;
    }
    v.pc = pc;
    const video = new nodeDataChannel.Video('0', 'RecvOnly');
    video.addH264Codec(VIDEO_PT, 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f');
    const audio = new nodeDataChannel.Audio('1', 'RecvOnly');
    audio.addOpusCodec(AUDIO_PT);
    const vt = pc.addTrack(video);
    const at = pc.addTrack(audio);
    v.tracks = [vt, at];
    // Receiver reports (RFC 3550 §6.4.2) go back to the node, as a browser's do.
    vt.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
    at.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
    // Events of a peer this viewer has replaced (a retry) are not the viewer's.
    vt.onMessage((pkt) => v.pc === pc && this.onVideo(v, pkt));
    at.onMessage((pkt) => v.pc === pc && this.onAudio(v, pkt));
    pc.onStateChange((s) => {
      if (v.pc !== pc) return;
      if (s === 'connected' && v.state === 'connecting') {
        v.state = 'playing';
        this.playing++;
      } else if ((s === 'failed' || s === 'closed' || s === 'disconnected') && !this.stopping) {
        const cause = v.state === 'playing' ? `closed:${s}` : `connect:ICE_${s.toUpperCase()}`;
        if (v.state === 'connecting' && v.attempts < MAX_ATTEMPTS) return this.retry(v, i, cause);
        this.fail(v, cause);
      }
    });
    pc.onGatheringStateChange((s) => {
      if (v.pc !== pc || s !== 'complete' || this.stopping || v.posted) return;
      v.posted = true;
      const offer = pc.localDescription();
      if (!offer) return this.fail(v, 'connect:NO_OFFER');
      void this.post(v, offer.sdp);
    });
    pc.setLocalDescription();
  }

  /** A fresh peer for a viewer whose peer failed before it played; the failed session is DELETEd. */
  private retry(v: WhepViewer, i: number, cause: string): void {
    this.noteRetry(cause);
    this.close(v);
    v.posted = false;
    v.tracks = [];
    v.auBytes = 0;
    v.auIdr = false;
    v.videoTs0 = undefined;
    v.audioTs0 = undefined;
    this.open(v, i);
  }

  private async post(v: WhepViewer, sdp: string): Promise<void> {
    const pc = v.pc;
    let res: Response;
    try {
      res = await fetch(this.opts.url, { method: 'POST', headers: { 'Content-Type': 'application/sdp', 'User-Agent': 'meshcast-load' }, body: sdp, signal: AbortSignal.timeout(this.opts.timeoutMs ?? 10_000) });
    } catch (err) {
      const e = err as Error & { cause?: { code?: string } };
      if (v.pc !== pc) return;
      return this.fail(v, `connect:${e.cause?.code ?? e.name}`);
    }
    const body = await res.text();
    if (res.status !== 201) {
      if (v.pc !== pc) return;
      let code = '';
      try {
        code = (JSON.parse(body) as { code?: string }).code ?? '';
      } catch {
        /* a body without a code: the status says enough */
      }
      return this.fail(v, `play:HTTP${res.status}${code ? `:${code}` : ''}`);
    }
    const loc = res.headers.get('location');
    const resource = loc ? new URL(loc, this.opts.url).toString() : undefined;
    if (v.pc !== pc) {
      // The peer was replaced while its offer was out: end the session it made.
      if (resource) void fetch(resource, { method: 'DELETE', signal: AbortSignal.timeout(DELETE_TIMEOUT_MS) }).then((r) => r.body?.cancel()).catch(() => undefined);
      return;
    }
    v.resource = resource;
    if (this.stopping || v.state === 'failed') return this.close(v);
    try {
      pc?.setRemoteDescription(body, 'answer');
    } catch (err) {
      // libdatachannel now and then throws on the answer's candidates after it has applied the
      // description and started ICE; ICE goes on (the node's checks give it the node's address),
      // and a viewer that never plays fails on its timeout.
      if (/remote candidate without ICE transport/.test((err as Error).message)) return;
      this.fail(v, `play:BAD_ANSWER:${(err as Error).message.slice(0, 40)}`);
      this.close(v);
    }
  }

  private onVideo(v: WhepViewer, pkt: Buffer): void {
    const rtp = parseRtp(pkt);
    if (!rtp || rtp.payloadType !== VIDEO_PT) return;
    v.auBytes += rtp.payload.length;
    if (!v.auIdr && carriesIdr(rtp.payload)) v.auIdr = true;
    if (!rtp.marker) return;
    v.videoTs0 ??= rtp.timestamp;
    const key = v.auIdr;
    const bytes = v.auBytes;
    v.auBytes = 0;
    v.auIdr = false;
    v.countFrame(9, rtpMs(rtp.timestamp, v.videoTs0, VIDEO_CLOCK_PER_MS), bytes, true, key);
    if (v.ttff >= 0 && v.timer) {
      clearTimeout(v.timer);
      v.timer = undefined;
    }
  }

  private onAudio(v: WhepViewer, pkt: Buffer): void {
    const rtp = parseRtp(pkt);
    if (!rtp || rtp.payloadType !== AUDIO_PT) return;
    v.audioTs0 ??= rtp.timestamp;
    v.countFrame(8, rtpMs(rtp.timestamp, v.audioTs0, OPUS_CLOCK_PER_MS), rtp.payload.length, false, false);
  }

  protected close(v: WhepViewer): void {
    clearTimeout(v.timer);
    v.timer = undefined;
    const pc = v.pc;
    v.pc = undefined;
    const resource = v.resource;
    v.resource = undefined;
    const tracks = v.tracks; // the peer's own: a retry gives the viewer new ones before this runs
    const closePeer = (): void => {
      for (const t of tracks) t.close();
      pc?.close();
    };
    if (!resource) return closePeer();
    // The node ends the session at once on DELETE (its on_play_done fires then, not at a timeout).
    this.deleting++;
    void fetch(resource, { method: 'DELETE', signal: AbortSignal.timeout(DELETE_TIMEOUT_MS) })
      .then((r) => r.body?.cancel())
      .catch(() => undefined) // the node may already be gone; the peer closes either way
      .finally(() => {
        this.deleting--;
        closePeer();
      });
  }

  /** Resolves once every DELETE sent by stop() has been answered or timed out. */
  async closed(): Promise<void> {
    const until = Date.now() + DELETE_TIMEOUT_MS + 500;
    while (Date.now() < until && this.deleting > 0) await new Promise((r) => setTimeout(r, 50));
    if (!this.counted) return;
    this.counted = false;
    // libdatachannel's threads would keep the process alive after the last peer.
    if (--liveSwarms === 0) nodeDataChannel.cleanup();
  }
}
