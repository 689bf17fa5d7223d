/**
 * WhipSession: one WebRTC (WHIP) publisher. It receives the peer's H.264 and Opus over RTP and
 * publishes them into the stream's hub as FLV tags, exactly as an RTMP publisher's would arrive:
 *
 * - video: RTP (RFC 6184) → access units (proto's H264Depacketizer) → AVC frames, NAL units
 *   4-byte length-prefixed, a sequence header built from the SPS/PPS the peer sends before its
 *   IDRs (again whenever they change), the keyframe flag on IDRs. A damaged access unit (a lost
 *   packet) is dropped and the stream resumes at the next keyframe, which it asks the peer for
 *   with a PLI (also at the start, and every webrtc.whip_keyframe_interval_s: a WebRTC encoder
 *   sends keyframes only when asked, and HLS segments and new viewers start on one);
 * - audio: the peer's Opus goes untouched to this node's WHEP viewers of the stream (whipOpusOf);
 *   the stream's other consumers (RTMP, HTTP-FLV, HLS, recording, and relays to other nodes, whose
 *   viewers, WHEP ones included, get AAC) get AAC from an AacTranscoder (one ffmpeg child), which
 *   runs only while the hub has such a consumer: started AAC_START_MS after the first arrives,
 *   stopped AAC_LINGER_MS after the last leaves;
 * - time: each track's RTP clock in ms from the moment its first packet arrived, relative to the
 *   first packet of the session, so audio and video line up as they arrived. AAC comes out of the
 *   transcoder tens of ms after the video of the same moment; video is held back (at most
 *   HOLD_MS) until the audio up to its time is out, so the hub gets the tags in time order.
 *
 * A peer that goes away (ICE failure, DTLS or peer connection closed, no RTP for
 * limits.idle_publisher_timeout_ms, not connected within webrtc.session_timeout_s) ends the publish.
 */
import type { PeerConnection, Track } from 'node-datachannel';
import { H264Depacketizer, NAL_PPS, NAL_SPS, RtpClock, flvAacFrame, flvAacSequenceHeader, flvAvcFrame, flvAvcSequenceHeader, parseAvcSps, parseRtp, CodecConfigError, type AccessUnit } from '@meshcast/proto';
import { FRAME_AUDIO, FRAME_VIDEO, type FrameType } from '../media/frame.ts';
import type { MediaHost, StreamRequest } from '../media/host.ts';
import type { PublisherHandle, StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';
import type { Session, SessionInfo } from '../sessions.ts';
import { AacTranscoder } from './aac-transcoder.ts';
import type { OpusListener } from './opus-transcoder.ts';

/** Where WebRTC viewers of a stream take Opus packets from (a WHIP publisher's own, or the AAC→Opus transcoder). */
export interface OpusSource {
  add(l: OpusListener): void;
  remove(l: OpusListener): void;
}

const whipOpus = new WeakMap<PublisherHandle, OpusSource>();

/** The publisher's Opus when the stream is published over WHIP on this node: WHEP viewers here take it as it is. */
export function whipOpusOf(hub: StreamHub): OpusSource | undefined {
  return hub.publisher ? whipOpus.get(hub.publisher) : undefined;
}

const VIDEO_CLOCK = 90_000;
const OPUS_CLOCK = 48_000;
/** Longest a video frame waits for the audio of its moment: past it, video goes on without (audio stopped or is slow). */
const HOLD_MS = 500;
/** Bytes of video held for interleaving, at most: a burst past this is written at once. */
const MAX_HELD_BYTES = 8 * 1024 * 1024;
/** One access unit's bytes, at most (FU-A pieces included): a 1080p IDR is well under 1 MiB. */
export const MAX_ACCESS_UNIT_BYTES = 4 * 1024 * 1024;
/** Keyframe requests while waiting for one, at most this often. */
const PLI_INTERVAL_MS = 500;
/**
 * A consumer that needs AAC must stay this long before the transcoder starts: a WHEP viewer joins the
 * hub a moment before it takes the Opus, and must not start an ffmpeg for nothing.
 */
const AAC_START_MS = 300;
/** The transcoder stops this long after the last consumer that needs AAC left (a viewer reconnecting keeps it). */
const AAC_LINGER_MS = 3000;

export interface WhipTracks {
  pc: PeerConnection;
  video: Track;
  /** The payload types the answer took for H.264 and Opus: anything else on the tracks is dropped. */
  videoPt: number;
  audio?: { track: Track; pt: number };
}

interface Held {
  type: FrameType;
  ms: number;
  payload: Buffer;
  at: number;
}

export class WhipSession implements Session {
  private state: 'connecting' | 'publishing' | 'closed' = 'connecting';
  private readonly startedAt = Date.now();
  private log: Logger;
  private readonly depacketizer = new H264Depacketizer(MAX_ACCESS_UNIT_BYTES);
  private t0: number | undefined;
  private videoClock: RtpClock | undefined;
  private audioClock: RtpClock | undefined;
  private sps: Buffer | undefined;
  private pps: Buffer | undefined;
  private headerSent = false;
  private waitKey = true;
  private lastPliAt = 0;
  /** When the peer last sent a keyframe (for webrtc.whip_keyframe_interval_s). */
  private lastKeyAt = 0;
  private lastRtpAt = Date.now();
  private bytesIn = 0;
  private framesIn = 0;
  private damagedUnits = 0;
  private held: Held[] = [];
  private heldBytes = 0;
  /** The latest AAC time handed to the hub: video up to it may go. */
  private audioUpTo = -1;
  private transcoder: AacTranscoder | undefined;
  private aacWantedSince: number | undefined;
  private aacUnwantedSince: number | undefined;
  private readonly opusListeners = new Set<OpusListener>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly id: string,
    private readonly tracks: WhipTracks,
    /** The admitted publish: its hub and the handle the hub knows this publisher by (its evict closes this session). */
    private readonly hub: StreamHub,
    readonly handle: PublisherHandle,
    private readonly req: StreamRequest,
    private readonly host: MediaHost,
    private readonly onClosed: (s: WhipSession) => void,
  ) {
    this.log = host.log.child({ session: id, app: req.app, stream: req.stream, remote: req.remote });
  }

  /** Waits for the peer, which must connect within `connectTimeoutMs`; its media goes to the hub from then on. */
  start(connectTimeoutMs: number): void {
    const { pc, video, audio } = this.tracks;
    const idleMs = this.host.config.limits.idle_publisher_timeout_ms;
    const keyEveryMs = this.host.config.webrtc.whip_keyframe_interval_s * 1000;
    video.onOpen(() => {
      if (this.state !== 'connecting') return;
      this.state = 'publishing';
      this.lastRtpAt = Date.now();
      this.log.info('WHIP publisher connected');
      this.requestKeyframe(true);
    });
    video.onMessage((msg) => this.onVideo(msg));
    video.onClosed(() => this.close('the peer closed the video track'));
    if (audio) {
      whipOpus.set(this.handle, { add: (l) => this.opusListeners.add(l), remove: (l) => this.opusListeners.delete(l) });
      audio.track.onMessage((msg) => this.onAudio(msg));
    }
    pc.onStateChange((s) => {
      if (s === 'failed' || s === 'closed') this.close(`peer connection ${s}`);
    });
    const connectBy = Date.now() + connectTimeoutMs;
    this.timer = setInterval(() => {
      const now = Date.now();
      if (this.state === 'connecting' && now > connectBy) return this.close(`the peer did not connect within ${connectTimeoutMs} ms`);
      if (this.state === 'publishing' && now - this.lastRtpAt > idleMs) return this.close(`no media from the peer for ${idleMs} ms`);
      this.manageTranscoder(now);
      this.release(now, false);
      if (this.waitKey || (keyEveryMs > 0 && this.state === 'publishing' && now - this.lastKeyAt >= keyEveryMs)) this.requestKeyframe(false);
    }, 100);
    this.timer.unref();
  }

  /** The session's time for a track's first packet: ms since the session's first packet. */
  private baseMs(now: number): number {
    this.t0 ??= now;
    return now - this.t0;
  }

  private onVideo(msg: Buffer): void {
    if (this.state !== 'publishing') return;
    const p = parseRtp(msg);
    if (!p || p.payloadType !== this.tracks.videoPt) return;
    const now = Date.now();
    this.lastRtpAt = now;
    this.bytesIn += msg.length;
    this.videoClock ??= new RtpClock(VIDEO_CLOCK, this.baseMs(now));
    for (const au of this.depacketizer.push(p)) this.accessUnit(au);
  }

  private accessUnit(au: AccessUnit): void {
    const ms = this.videoClock!.toMs(au.timestamp);
    if (au.damaged) {
      this.damagedUnits++;
      this.waitKey = true;
      this.requestKeyframe(false);
      return;
    }
    for (const n of au.nals) {
      const t = n[0]! & 0x1f;
      if (t === NAL_SPS) this.setParameterSet('sps', n);
      else if (t === NAL_PPS) this.setParameterSet('pps', n);
    }
    if (this.waitKey && !au.keyframe) return;
    if (!this.headerSent) {
      if (!this.sps || !this.pps) {
        this.requestKeyframe(false);
        return; // a keyframe without its parameter sets: wait for one that has them
      }
      this.sendVideoHeader(ms);
    }
    this.waitKey = false;
    if (au.keyframe) this.lastKeyAt = Date.now();
    this.framesIn++;
    this.hold(FRAME_VIDEO, ms, flvAvcFrame(au.nals, au.keyframe));
  }

  private setParameterSet(which: 'sps' | 'pps', nal: Buffer): void {
    const cur = which === 'sps' ? this.sps : this.pps;
    if (cur?.equals(nal)) return;
    if (which === 'sps') this.sps = Buffer.from(nal);
    else this.pps = Buffer.from(nal);
    this.headerSent = false; // a new configuration: a new sequence header before the next frame
  }

  private sendVideoHeader(ms: number): void {
    const sps = this.sps!;
    const info = parseAvcSps(sps);
    if (!(info instanceof CodecConfigError)) {
      this.hub.setMetadata({ encoder: 'meshcast WHIP', videocodecid: 7, audiocodecid: this.tracks.audio ? 10 : 0, width: info.width, height: info.height }, this.handle);
      this.log.info({ width: info.width, height: info.height, profile: info.profile, level: info.level }, 'WHIP video configuration');
    }
    this.hold(FRAME_VIDEO, ms, flvAvcSequenceHeader(sps, this.pps!));
    this.headerSent = true;
  }

  private onAudio(msg: Buffer): void {
    if (this.state !== 'publishing') return;
    const p = parseRtp(msg);
    if (!p || p.payloadType !== this.tracks.audio!.pt || p.payload.length === 0) return;
    const now = Date.now();
    this.lastRtpAt = now;
    this.bytesIn += msg.length;
    this.audioClock ??= new RtpClock(OPUS_CLOCK, this.baseMs(now));
    const ms = this.audioClock.toMs(p.timestamp);
    for (const l of this.opusListeners) l(p.payload);
    this.transcoder?.push(p.payload, p.timestamp, ms);
  }

  /**
   * AAC only while the hub has a consumer other than this node's WHEP viewers taking the Opus
   * (each such viewer is one hub sink and one Opus listener).
   */
  private manageTranscoder(now: number): void {
    if (!this.tracks.audio || this.state !== 'publishing') return;
    const needAac = this.hub.consumerCount > this.opusListeners.size;
    if (needAac) {
      this.aacUnwantedSince = undefined;
      this.aacWantedSince ??= now;
      if (!this.transcoder && now - this.aacWantedSince >= AAC_START_MS) {
        this.transcoder = new AacTranscoder(
          {
            // At the first frame's time: the hub reads a time far behind its clock as a publisher restart.
            config: (asc, ms) => this.onAacConfig(asc, ms),
            frame: (ms, data) => this.onAac(ms, data),
          },
          this.log,
          this.host.config.webrtc.ffmpeg,
        );
        this.log.info({ consumers: this.hub.consumerCount, webrtcViewers: this.opusListeners.size }, 'Opus→AAC transcoding started: the stream has consumers that need AAC');
      }
    } else {
      this.aacWantedSince = undefined;
      if (!this.transcoder) return;
      this.aacUnwantedSince ??= now;
      if (now - this.aacUnwantedSince >= AAC_LINGER_MS) this.stopTranscoder('no consumer needs AAC');
    }
  }

  private stopTranscoder(reason: string): void {
    if (!this.transcoder) return;
    this.transcoder.stop(reason);
    this.transcoder = undefined;
    this.log.info({ reason }, 'Opus→AAC transcoding stopped');
    this.release(Date.now(), true);
    this.audioUpTo = -1;
  }

  private onAacConfig(asc: Buffer, ms: number): void {
    if (this.state !== 'publishing' || !this.transcoder) return;
    this.release(Date.now(), false, ms);
    this.emit(FRAME_AUDIO, ms, flvAacSequenceHeader(asc));
  }

  private onAac(ms: number, data: Buffer): void {
    if (this.state !== 'publishing' || !this.transcoder) return;
    this.audioUpTo = ms;
    this.release(Date.now(), false);
    this.emit(FRAME_AUDIO, ms, flvAacFrame(data));
  }

  /** Video waits for the audio of its moment (see the file comment); without AAC coming it goes at once. */
  private hold(type: FrameType, ms: number, payload: Buffer): void {
    if (!this.transcoder) return this.emit(type, ms, payload);
    this.held.push({ type, ms, payload, at: Date.now() });
    this.heldBytes += payload.length;
    this.release(Date.now(), this.heldBytes > MAX_HELD_BYTES);
  }

  /** Hands the hub the held video up to `upTo` (default: the audio handed so far), and any held longer than HOLD_MS. */
  private release(now: number, all: boolean, upTo = this.audioUpTo): void {
    while (this.held.length > 0) {
      const h = this.held[0]!;
      if (!all && h.ms > upTo && now - h.at < HOLD_MS) break;
      this.held.shift();
      this.heldBytes -= h.payload.length;
      this.emit(h.type, h.ms, h.payload);
    }
  }

  private emit(type: FrameType, ms: number, payload: Buffer): void {
    if (this.state === 'closed') return;
    this.hub.ingest(type, ms, payload, this.handle);
  }

  private requestKeyframe(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.lastPliAt < PLI_INTERVAL_MS) return;
    this.lastPliAt = now;
    try {
      if (this.tracks.video.isOpen()) this.tracks.video.requestKeyframe();
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'keyframe request failed');
    }
  }

  kick(reason: string): void {
    this.close(reason);
  }

  close(reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearInterval(this.timer);
    this.transcoder?.stop(reason);
    this.transcoder = undefined;
    whipOpus.delete(this.handle);
    this.opusListeners.clear();
    this.held = [];
    this.heldBytes = 0;
    this.host.endPublish(this.hub, this.handle);
    this.host.sessionDone('publish', this.req, { bytesIn: this.bytesIn, bytesOut: 0, durationMs: Date.now() - this.startedAt });
    this.log.info({ reason, frames: this.framesIn, damagedAccessUnits: this.damagedUnits }, 'WHIP publisher closed');
    try {
      this.tracks.video.close();
      this.tracks.audio?.track.close();
      this.tracks.pc.close();
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'closing the peer connection failed');
    }
    this.onClosed(this);
  }

  info(): SessionInfo {
    return {
      id: this.id,
      protocol: 'whip',
      remote: this.req.remote,
      role: 'publisher',
      app: this.req.app,
      stream: this.req.stream,
      startedAt: this.startedAt,
      bytesIn: this.bytesIn,
      bytesOut: 0,
      droppedFrames: this.damagedUnits,
    };
  }
}
