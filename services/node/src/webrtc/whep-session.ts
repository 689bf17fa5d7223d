/**
 * WhepSession: one WebRTC (WHEP) viewer. It is a hub sink taking the shared FLV tags, and sends
 * their H.264 access units untouched over one RTP video track (RFC 6184 packetization-mode 1 by
 * libdatachannel's packetiser, RTCP sender reports, NACK answered from a small history); H.265,
 * AV1 and VP9 likewise (VP9 packetised here: see attachVideoChain).
 *
 * It joins the hub only once the peer's DTLS is up, so the hub's GOP cache gives the first
 * picture at once. SPS/PPS go in front of every IDR. A picture-loss request (PLI/FIR) makes this
 * viewer skip to the next keyframe the publisher sends: no re-encode, no cost to other viewers.
 */
import { randomInt } from 'node:crypto';
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection, Track, RtpPacketizationConfig } from 'node-datachannel';
import { av1TemporalUnit, avccAccessUnit, classifyVideoTag, opusPacketSamples, packetizeVp9Frame, parseAvcDecoderConfig, parseHevcDecoderConfig, rtcpKeyframeRequests, rtpPackets, vp9KeyframeSize, VP9_PICTURE_ID_MASK, CodecConfigError, type Vp9FrameSize } from '@meshcast/proto';
import { FRAME_VIDEO, type WireFormat } from '../media/frame.ts';
import type { MediaHost, StreamRequest } from '../media/host.ts';
import type { MediaSink, StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';
import type { Session, SessionInfo } from '../sessions.ts';
import { OPUS_FRAME_SAMPLES, type OpusListener } from './opus-transcoder.ts';
import type { OpusSource } from './whip-session.ts';
import { RtcpWatchdog, type WatchdogClock } from './rtcp-watchdog.ts';

const { H264RtpPacketizer, RtcpNackResponder, RtcpSrReporter } = nodeDataChannel;

/** H.264's RTP clock (RFC 6184 §8.2.1). */
const VIDEO_CLOCK = 90_000;
/** Opus's RTP clock is always 48 kHz (RFC 7587 §4.1). */
const OPUS_CLOCK = 48_000;
/** A PLI this soon after an IDR went out asks for a picture already in flight: not worth skipping a GOP for. */
const PLI_AFTER_IDR_MS = 300;
/** RTP payload bytes per packet: a 1200-byte budget leaves room for SRTP, UDP, IP and TURN headers. */
const MAX_FRAGMENT = 1200;

/** The video codecs passed through to WebRTC untouched (as classifyVideoTag names them). */
export type PassthroughCodec = 'avc' | 'hevc' | 'av1' | 'vp9';

export interface WhepTrackSetup {
  pc: PeerConnection;
  track: Track;
  rtpConfig: RtpPacketizationConfig;
  /** The video track's SSRC and payload type: VP9 packets are written here whole (no libdatachannel packetiser for it). */
  ssrc: number;
  payloadType: number;
  /** The stream's video codec the track carries; frames of any other codec (a republish with another) are not sent. */
  codec: PassthroughCodec;
  /** The Opus track and where its packets come from: the stream's shared AAC→Opus transcoder, or a WHIP publisher's own Opus. */
  audio?: { track: Track; rtpConfig: RtpPacketizationConfig; transcoder: OpusSource };
}

/**
 * Sets up the video track's RTP chain (packetiser → sender reports → NACK history) on a fresh
 * track: RFC 6184 for H.264, RFC 7798 for H.265, the AOM RTP payload format for AV1. VP9 has no
 * packetiser in libdatachannel: the session writes whole RTP packets (RFC 9628, proto's
 * vp9-packetizer), which the chain's sender reports count and its NACK history keeps, as for the others.
 */
export function attachVideoChain(track: Track, ssrc: number, payloadType: number, codec: PassthroughCodec = 'avc'): RtpPacketizationConfig {
  const rtpConfig = new nodeDataChannel.RtpPacketizationConfig(ssrc, 'meshcast', payloadType, VIDEO_CLOCK);
  if (codec === 'vp9') {
    const reporter = new RtcpSrReporter(rtpConfig);
    reporter.addToChain(new RtcpNackResponder());
    track.setMediaHandler(reporter);
    return rtpConfig;
  }
  const packetizer =
    codec === 'hevc'
      ? new nodeDataChannel.H265RtpPacketizer('Length', rtpConfig, MAX_FRAGMENT)
      : codec === 'av1'
        ? new nodeDataChannel.AV1RtpPacketizer('TemporalUnit', rtpConfig, MAX_FRAGMENT)
        : new H264RtpPacketizer('Length', rtpConfig, MAX_FRAGMENT);
  packetizer.addToChain(new RtcpSrReporter(rtpConfig));
  packetizer.addToChain(new RtcpNackResponder());
  track.setMediaHandler(packetizer);
  return rtpConfig;
}

/** Sets up an Opus track's RTP chain (one packet per frame → sender reports). */
export function attachAudioChain(track: Track, ssrc: number, payloadType: number): RtpPacketizationConfig {
  const rtpConfig = new nodeDataChannel.RtpPacketizationConfig(ssrc, 'meshcast', payloadType, OPUS_CLOCK);
  const packetizer = new nodeDataChannel.RtpPacketizer(rtpConfig);
  packetizer.addToChain(new RtcpSrReporter(rtpConfig));
  track.setMediaHandler(packetizer);
  return rtpConfig;
}

export const newSsrc = (): number => randomInt(1, 0x7fffffff);

export class WhepSession implements Session, MediaSink {
  readonly format: WireFormat = { kind: 'flv' };
  private state: 'connecting' | 'playing' | 'closed' = 'connecting';
  private bytesOut = 0;
  private framesOut = 0;
  private readonly startedAt = Date.now();
  private readonly log: Logger;
  private parameterSets: Buffer[] = [];
  private nalLengthSize = 4;
  private waitKey = true;
  private lastIdrAt = 0;
  private firstTs: number | undefined;
  private readonly baseRtpTs: number;
  private connectTimer: NodeJS.Timeout | undefined;
  private opusListener: OpusListener | undefined;
  private opusPackets = 0;
  private opusSamples = 0;
  private watchdog: RtcpWatchdog | undefined;
  /** VP9 only (we write its RTP headers): the next sequence number and picture ID, and the last keyframe's size. */
  private vp9Sequence = randomInt(0, 0x10000);
  private vp9PictureId = randomInt(0, 0x8000);
  private vp9Size: Vp9FrameSize | undefined;

  constructor(
    readonly id: string,
    private readonly setup: WhepTrackSetup,
    private readonly hub: StreamHub,
    private readonly req: StreamRequest,
    private readonly host: MediaHost,
    private readonly onClosed: (s: WhepSession) => void,
  ) {
    this.log = host.log.child({ session: id, app: req.app, stream: req.stream, remote: req.remote });
    this.baseRtpTs = setup.rtpConfig.timestamp;
  }

  /**
   * Waits for the peer: media starts when the track opens; a peer that never connects is closed
   * after `timeoutMs`, and a connected one that sends no RTCP for `rtcpTimeoutMs` (0: never).
   */
  start(timeoutMs: number, rtcpTimeoutMs = 0, clock?: WatchdogClock): void {
    const { pc, track } = this.setup;
    this.watchdog = new RtcpWatchdog(rtcpTimeoutMs, (silentMs) => this.close(`no RTCP from the peer for ${Math.round(silentMs / 1000)} s`), clock);
    track.onOpen(() => {
      if (this.state !== 'connecting') return;
      this.state = 'playing';
      clearTimeout(this.connectTimer);
      this.log.debug('WHEP viewer connected');
      this.watchdog?.start();
      this.hub.addSink(this);
    });
    track.onMessage((msg) => {
      this.watchdog?.heard();
      if (rtcpKeyframeRequests(msg).length > 0 && Date.now() - this.lastIdrAt > PLI_AFTER_IDR_MS) this.waitKey = true;
    });
    track.onClosed(() => this.close('the peer closed the track'));
    const audio = this.setup.audio;
    if (audio) {
      const base = audio.rtpConfig.timestamp;
      audio.track.onMessage(() => this.watchdog?.heard());
      audio.track.onOpen(() => {
        if (this.state === 'closed' || this.opusListener) return;
        this.opusListener = (packet) => {
          if (!audio.track.isOpen()) return;
          // Each packet advances the clock by its own duration: a WHIP publisher's packets (passed through) need not be 20 ms.
          audio.rtpConfig.timestamp = (base + this.opusSamples) >>> 0;
          this.opusSamples += opusPacketSamples(packet) || OPUS_FRAME_SAMPLES;
          this.opusPackets++;
          try {
            audio.track.sendMessageBinary(packet);
            this.bytesOut += packet.length;
          } catch (err) {
            this.close(`sending audio to the peer failed: ${(err as Error).message}`);
          }
        };
        audio.transcoder.add(this.opusListener);
      });
    }
    pc.onStateChange((s) => {
      if (s === 'failed' || s === 'closed') this.close(`peer connection ${s}`);
    });
    this.connectTimer = setTimeout(() => this.close(`the peer did not connect within ${timeoutMs} ms`), timeoutMs);
    this.connectTimer.unref();
  }

  /** Hub frames come as FLV tags (11-byte header, payload, 4-byte previous size). */
  write(buf: Buffer): void {
    if (this.state !== 'playing') return;
    let off = 0;
    while (off + 11 <= buf.length) {
      const type = buf[off]! & 0x1f;
      const size = buf.readUIntBE(off + 1, 3);
      const ts = (buf.readUIntBE(off + 4, 3) | (buf[off + 7]! << 24)) >>> 0;
      const payload = buf.subarray(off + 11, off + 11 + size);
      off += 11 + size + 4;
      if (type === FRAME_VIDEO) this.video(ts, payload);
    }
  }

  private video(ts: number, payload: Buffer): void {
    const tag = classifyVideoTag(payload);
    if (tag instanceof CodecConfigError) return;
    const codec = this.setup.codec;
    if (tag.codec !== codec) return;
    if (tag.isSequenceHeader && codec === 'av1') {
      // av1C (AV1-ISOBMFF §2.3): 4 bytes of fields, then the configOBUs (the sequence header).
      this.parameterSets = [payload.subarray(tag.dataOffset + 4, tag.dataOffset + tag.dataLength)];
      return;
    }
    if (tag.isSequenceHeader && codec === 'vp9') {
      // vpcC: nothing of it goes on the wire (VP9 keyframes carry their own headers); kept as "configuration seen".
      this.parameterSets = [payload.subarray(tag.dataOffset, tag.dataOffset + tag.dataLength)];
      return;
    }
    if (tag.isSequenceHeader) {
      const record = payload.subarray(tag.dataOffset, tag.dataOffset + tag.dataLength);
      const cfg = codec === 'hevc' ? parseHevcDecoderConfig(record) : parseAvcDecoderConfig(record);
      if (cfg instanceof CodecConfigError) {
        this.log.warn({ err: cfg.message, codec }, 'unusable video decoder configuration; waiting for the next one');
        this.parameterSets = [];
        return;
      }
      this.parameterSets = cfg.codec === 'hevc' ? [...cfg.vps, ...cfg.sps, ...cfg.pps] : [...cfg.sps, ...cfg.pps];
      this.nalLengthSize = cfg.nalLengthSize;
      return;
    }
    // Coded frames: packet type 1 (legacy and Enhanced RTMP CodedFrames) or 3 (Enhanced CodedFramesX, no composition time).
    if (tag.packetType !== 1 && !(tag.enhanced && tag.packetType === 3)) return;
    if (this.waitKey && !tag.isKeyframe) return;
    if (tag.isKeyframe && this.parameterSets.length === 0) return; // no decoder configuration yet
    const data = payload.subarray(tag.dataOffset, tag.dataOffset + tag.dataLength);
    if (data.length === 0) return;
    if (!this.setup.track.isOpen()) return;
    const timestamp = this.rtpTimestamp(ts);
    this.setup.rtpConfig.timestamp = timestamp;
    // One access unit for libdatachannel's packetiser to cut, or (VP9) the RTP packets themselves.
    const messages =
      codec === 'vp9'
        ? this.vp9Packets(data, tag.isKeyframe, timestamp)
        : [codec === 'av1' ? av1TemporalUnit(data, tag.isKeyframe ? this.parameterSets[0] : undefined) : avccAccessUnit(data, this.nalLengthSize, tag.isKeyframe ? this.parameterSets : undefined, codec)];
    if (messages.every((m) => m.length === 0)) return;
    try {
      for (const m of messages) {
        this.setup.track.sendMessageBinary(m);
        this.bytesOut += m.length;
      }
    } catch (err) {
      this.close(`sending to the peer failed: ${(err as Error).message}`);
      return;
    }
    if (tag.isKeyframe) {
      this.waitKey = false;
      this.lastIdrAt = Date.now();
    }
    this.framesOut++;
  }

  /** The RTP timestamp of an FLV timestamp (ms): the track's random base plus the time since the first frame sent. */
  private rtpTimestamp(ts: number): number {
    this.firstTs ??= ts;
    return (this.baseRtpTs + (ts - this.firstTs) * (VIDEO_CLOCK / 1000)) >>> 0;
  }

  /**
   * A VP9 frame (or superframe) as RTP packets of our own (RFC 9628), the picture ID one up per
   * frame sent: the receiver chains inter frames by picture ID, and a keyframe (after a skip)
   * starts afresh. The keyframe's size goes in its scalability structure.
   */
  private vp9Packets(frame: Buffer, keyframe: boolean, timestamp: number): Buffer[] {
    if (keyframe) this.vp9Size = vp9KeyframeSize(frame) ?? this.vp9Size;
    const payloads = packetizeVp9Frame(frame, { pictureId: this.vp9PictureId, keyframe, size: this.vp9Size, maxPayload: MAX_FRAGMENT });
    const packets = rtpPackets(payloads, { payloadType: this.setup.payloadType, ssrc: this.setup.ssrc, timestamp, sequence: this.vp9Sequence });
    this.vp9Sequence = (this.vp9Sequence + packets.length) & 0xffff;
    this.vp9PictureId = (this.vp9PictureId + 1) & VP9_PICTURE_ID_MASK;
    return packets;
  }

  /** RTP over UDP never backs up into the process: the socket takes or drops. */
  bufferedBytes(): number {
    return 0;
  }

  evict(reason: string): void {
    this.close(reason);
  }

  kick(reason: string): void {
    this.close(reason);
  }

  close(reason: string): void {
    if (this.state === 'closed') return;
    const wasPlaying = this.state === 'playing';
    this.state = 'closed';
    clearTimeout(this.connectTimer);
    this.watchdog?.stop();
    if (wasPlaying) this.hub.removeSink(this);
    if (this.opusListener) this.setup.audio?.transcoder.remove(this.opusListener);
    this.host.endPlay(this.hub);
    this.host.sessionDone('play', this.req, { bytesIn: 0, bytesOut: this.bytesOut, durationMs: Date.now() - this.startedAt });
    this.log.debug({ reason, frames: this.framesOut }, 'WHEP viewer closed');
    try {
      this.setup.track.close();
      this.setup.audio?.track.close();
      this.setup.pc.close();
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'closing the peer connection failed');
    }
    this.onClosed(this);
  }

  info(): SessionInfo {
    return {
      id: this.id,
      protocol: 'whep',
      remote: this.req.remote,
      role: 'viewer',
      app: this.req.app,
      stream: this.req.stream,
      startedAt: this.startedAt,
      bytesIn: 0,
      bytesOut: this.bytesOut,
      droppedFrames: this.hub.sinkDrops(this.id),
    };
  }
}
