/**
 * HlsSegmenter: turns a stream's frames (the hub's timeline, in arrival order) into MPEG-TS
 * segments cut on video keyframes, and keeps a sliding window of them in memory.
 *
 * - A segment starts at a keyframe and ends at the first keyframe at or after the target
 *   duration; its duration is the distance between those two keyframes' timestamps.
 * - Each segment starts with PAT/PMT, then the keyframe with its parameter sets, so every
 *   segment decodes on its own.
 * - A new publisher, a changed decoder configuration, a new muxer (codec or audio track
 *   changed) or a gap in the timeline ends the segment being cut and marks the next one
 *   with a discontinuity.
 * - Memory is bounded: the window holds `windowLength + keepExtra` segments at most, and
 *   the window plus the segment being cut stay under `maxBytes` (older segments go first;
 *   a segment that grows past half of it is abandoned until the next keyframe).
 *
 * No I/O and no timers: the caller feeds frames and reads segments.
 */
import { classifyAudioTag, classifyVideoTag, CodecConfigError, TsMuxer } from '@meshcast/proto';
import { FRAME_AUDIO, FRAME_VIDEO, type MediaFrame } from '../media/frame.ts';
import { renderMediaPlaylist, targetDurationFor, type PlaylistSegment } from './playlist.ts';

export interface SegmenterOptions {
  targetDurationMs: number;
  /** Segments listed in the playlist. */
  windowLength: number;
  /** Segments kept after they leave the playlist, for players that loaded an older playlist. */
  keepExtra?: number;
  /** Bytes of segments held at most (window plus the segment being cut). */
  maxBytes: number;
  /** A jump between video frames longer than this is a timeline gap (default max(10 s, 5 targets)). */
  gapMs?: number;
  /**
   * Where numbering starts (a segmenter restarted for the same stream continues the old one's
   * media and discontinuity sequences, so a player never sees them go back). When above 0, the
   * first segment is marked as a discontinuity.
   */
  firstSeq?: number;
  discontinuitiesBefore?: number;
}

export interface HlsSegment extends PlaylistSegment {
  data: Buffer;
  /** Hub timestamp (ms) of the segment's first keyframe. */
  startTs: number;
  createdAt: number;
}

interface OpenSegment {
  startTs: number;
  chunks: Buffer[];
  bytes: number;
  discontinuity: boolean;
  lastVideoTs: number;
  frameIntervalMs: number;
}

type VideoCodec = 'avc' | 'hevc';

export interface SegmenterStats {
  segments: number;
  /** Frames the muxer could not carry (malformed, before their sequence header, unsupported). */
  droppedFrames: number;
  /** Segments given up because they grew past the byte bound. */
  abandonedSegments: number;
  lastError: string | undefined;
}

export class HlsSegmenter {
  private readonly opts: Required<SegmenterOptions>;
  private videoHeader: Buffer | undefined;
  private videoCodec: VideoCodec | undefined;
  private audioHeader: Buffer | undefined;
  private muxer: TsMuxer | undefined;
  private muxerKey = '';
  private open: OpenSegment | undefined;
  private pendingDiscontinuity = false;
  private readonly window: HlsSegment[] = [];
  private windowBytes = 0;
  private nextSeq = 0;
  private discontinuityTags = 0;
  private maxDurationMs = 0;
  private lastVideoTs: number | undefined;
  private unsupportedReason: string | undefined;
  private readonly waiters = new Set<() => void>();
  readonly stats: SegmenterStats = { segments: 0, droppedFrames: 0, abandonedSegments: 0, lastError: undefined };

  constructor(opts: SegmenterOptions) {
    this.opts = {
      keepExtra: 2,
      gapMs: Math.max(10_000, 5 * opts.targetDurationMs),
      firstSeq: 0,
      discontinuitiesBefore: 0,
      ...opts,
    };
    this.nextSeq = this.opts.firstSeq;
    this.discontinuityTags = this.opts.discontinuitiesBefore;
    this.pendingDiscontinuity = this.nextSeq > 0;
  }

  /** Numbering for a segmenter that takes over from this one (see `firstSeq`). */
  get continuation(): { firstSeq: number; discontinuitiesBefore: number } {
    return { firstSeq: this.nextSeq, discontinuitiesBefore: this.discontinuityTags };
  }

  /** Why this stream cannot be segmented (a video codec MPEG-TS HLS does not carry here), if so. */
  get unsupported(): string | undefined {
    return this.unsupportedReason;
  }

  /** Segments listed in the playlist, oldest first. */
  get listed(): readonly HlsSegment[] {
    return this.window.slice(-this.opts.windowLength);
  }

  /** Bytes held: finished segments plus the one being cut. */
  get bytes(): number {
    return this.windowBytes + (this.open?.bytes ?? 0);
  }

  get targetDurationS(): number {
    return targetDurationFor(this.opts.targetDurationMs / 1000, this.maxDurationMs);
  }

  segment(seq: number): HlsSegment | undefined {
    for (const s of this.window) if (s.seq === seq) return s;
    return undefined;
  }

  playlist(uri?: (seq: number) => string): string {
    return renderMediaPlaylist({ targetDurationS: this.targetDurationS, segments: this.listed, ...(uri ? { uri } : {}) });
  }

  /** Resolves true once at least one segment exists, false after `timeoutMs`. */
  waitForSegment(timeoutMs: number): Promise<boolean> {
    if (this.window.length > 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve(this.window.length > 0);
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(done);
    });
  }

  /** Wakes every waiting playlist request now (stream refused, segmenter stopping). */
  wakeWaiters(): void {
    for (const w of [...this.waiters]) w();
  }

  pushAll(frames: readonly MediaFrame[]): void {
    for (const f of frames) this.push(f);
  }

  push(f: MediaFrame): void {
    if (f.type === FRAME_VIDEO) this.video(f);
    else if (f.type === FRAME_AUDIO) this.audio(f);
  }

  /** The publisher went away or a new one took over: end the segment being cut; the next one is a discontinuity. */
  publisherChanged(): void {
    this.closeOpenEarly();
    this.pendingDiscontinuity = true;
  }

  private video(f: MediaFrame): void {
    if (f.isSequenceHeader) {
      const info = classifyVideoTag(f.payload);
      if (info instanceof CodecConfigError) return this.dropped(info.message);
      if (info.codec !== 'avc' && info.codec !== 'hevc') {
        this.unsupportedReason = `video codec ${info.codec} is not carried in HLS (MPEG-TS) by this node`;
        this.closeOpenEarly();
        this.videoHeader = undefined;
        this.videoCodec = undefined;
        this.pendingDiscontinuity = true;
        this.wakeWaiters();
        return;
      }
      this.unsupportedReason = undefined;
      if (this.videoHeader && !this.videoHeader.equals(f.payload)) this.pendingDiscontinuity = true;
      this.videoHeader = f.payload;
      this.videoCodec = info.codec;
      return;
    }
    if (this.videoHeader === undefined || this.videoCodec === undefined) return;
    const ts = f.timestamp;
    if (this.lastVideoTs !== undefined && ts - this.lastVideoTs > this.opts.gapMs) {
      this.closeOpenEarly();
      this.pendingDiscontinuity = true;
    }
    this.lastVideoTs = ts;
    const open = this.open;
    if (f.isKeyframe) {
      if (!open) {
        this.openSegment(ts);
      } else if (this.pendingDiscontinuity || ts - open.startTs >= this.opts.targetDurationMs || this.muxerKey !== this.wantedMuxerKey()) {
        this.closeSegment(ts);
        this.openSegment(ts);
      }
    } else if (!open) {
      return;
    }
    const seg = this.open;
    if (!seg || !this.muxer) return;
    const before = this.muxer.droppedFrames;
    this.append(this.muxer.pushVideo(ts, f.payload));
    this.noteMuxerDrops(before);
    if (this.open === seg) {
      if (ts > seg.lastVideoTs) seg.frameIntervalMs = ts - seg.lastVideoTs;
      seg.lastVideoTs = ts;
    }
  }

  private audio(f: MediaFrame): void {
    if (f.isSequenceHeader) {
      const info = classifyAudioTag(f.payload);
      if (info instanceof CodecConfigError) return this.dropped(info.message);
      // Only AAC goes into the segments; other audio is left out (video still plays).
      this.audioHeader = info.codec === 'aac' ? f.payload : undefined;
      return;
    }
    if (!this.open || !this.muxer || !this.muxerKey.endsWith(':a')) return;
    const before = this.muxer.droppedFrames;
    this.append(this.muxer.pushAudio(f.timestamp, f.payload));
    this.noteMuxerDrops(before);
  }

  private wantedMuxerKey(): string {
    return `${this.videoCodec ?? '-'}:${this.audioHeader ? 'a' : '-'}`;
  }

  private openSegment(ts: number): void {
    const codec = this.videoCodec;
    const header = this.videoHeader;
    if (!codec || !header) return;
    let discontinuity = this.pendingDiscontinuity;
    const key = this.wantedMuxerKey();
    if (!this.muxer || this.muxerKey !== key) {
      // A new program (codec or tracks changed): players must reset their demuxer.
      if (this.muxer) discontinuity = true;
      this.muxer = new TsMuxer({ videoCodec: codec, audio: this.audioHeader !== undefined });
      this.muxerKey = key;
    }
    const m = this.muxer;
    const before = m.droppedFrames;
    m.pushVideo(ts, header);
    if (this.audioHeader) m.pushAudio(ts, this.audioHeader);
    this.noteMuxerDrops(before);
    const head = m.startSegment();
    this.open = {
      startTs: ts,
      chunks: [head],
      bytes: head.length,
      // The first segment of all follows nothing.
      discontinuity: discontinuity && this.nextSeq > 0,
      lastVideoTs: ts,
      frameIntervalMs: 0,
    };
    this.pendingDiscontinuity = false;
  }

  private append(buf: Buffer): void {
    const open = this.open;
    if (!open || buf.length === 0) return;
    open.chunks.push(buf);
    open.bytes += buf.length;
    if (open.bytes > this.opts.maxBytes / 2) {
      // A GOP too big to hold: give this segment up; the next keyframe starts a new one after a gap.
      this.stats.abandonedSegments++;
      this.stats.lastError = `segment grew past ${Math.floor(this.opts.maxBytes / 2)} bytes without a keyframe; abandoned`;
      this.open = undefined;
      this.pendingDiscontinuity = true;
      return;
    }
    this.trim();
  }

  /** Ends the open segment at its last frame (no next keyframe is coming on this timeline). */
  private closeOpenEarly(): void {
    const open = this.open;
    if (!open) return;
    this.closeSegment(open.lastVideoTs + (open.frameIntervalMs || 33));
  }

  private closeSegment(endTs: number): void {
    const open = this.open;
    if (!open) return;
    this.open = undefined;
    const durationMs = endTs - open.startTs;
    if (durationMs <= 0) {
      if (open.discontinuity) this.pendingDiscontinuity = true;
      return;
    }
    const seg: HlsSegment = {
      seq: this.nextSeq++,
      durationMs,
      discontinuity: open.discontinuity,
      discontinuitiesBefore: this.discontinuityTags,
      data: open.chunks.length === 1 ? open.chunks[0]! : Buffer.concat(open.chunks, open.bytes),
      startTs: open.startTs,
      createdAt: Date.now(),
    };
    if (seg.discontinuity) this.discontinuityTags++;
    this.window.push(seg);
    this.windowBytes += seg.data.length;
    this.stats.segments++;
    if (durationMs > this.maxDurationMs) this.maxDurationMs = durationMs;
    this.trim();
    this.wakeWaiters();
  }

  private trim(): void {
    const maxCount = this.opts.windowLength + this.opts.keepExtra;
    while (this.window.length > 0 && (this.window.length > maxCount || this.bytes > this.opts.maxBytes)) {
      this.windowBytes -= this.window.shift()!.data.length;
    }
  }

  private noteMuxerDrops(before: number): void {
    const m = this.muxer;
    if (m && m.droppedFrames > before) {
      this.stats.droppedFrames += m.droppedFrames - before;
      this.stats.lastError = m.lastError?.message;
    }
  }

  private dropped(reason: string): void {
    this.stats.droppedFrames++;
    this.stats.lastError = reason;
  }
}
