/**
 * RecordingSegmenter: cuts one stream's frames (as the hub flushes them) into FLV segments.
 * Pure: it turns frames into store operations and keeps no I/O; the clock is injected.
 *
 * - A segment starts at a video keyframe (audio-only streams: at any audio frame) and is cut at
 *   the first keyframe at or after `segmentMs` of media; its timestamps start at 0.
 * - Each segment begins with the stream's metadata and sequence headers, so it plays alone.
 * - Its wall-clock start is the clock when its first frame arrived here, or, for a segment that
 *   follows another of the same stream, the previous one's start plus the media time between
 *   them (while that stays within DRIFT_MS of the clock).
 * - `restart()` (a new publisher, frames dropped, a store failure) closes the open segment; the
 *   next one opens at the next keyframe.
 */
import { FRAME_AUDIO, FRAME_DATA, FRAME_VIDEO, type MediaFrame } from '../media/frame.ts';
import { encodeFlvTag, flvFileHeader } from './flv-segment.ts';

export type SegmentOp =
  | { op: 'open'; startMs: number }
  | { op: 'write'; data: Buffer; durationMs: number }
  | { op: 'close'; durationMs: number };

/** How far media time may drift from the wall clock before a segment's start follows the wall clock again. */
const DRIFT_MS = 1000;

export interface SegmenterOptions {
  segmentMs: number;
  now: () => number;
}

interface OpenSegment {
  firstTs: number;
  lastTs: number;
  /** Last timestamp written per track (8 audio, 9 video), relative to the segment. */
  last: Record<number, number>;
}

export class RecordingSegmenter {
  private meta: MediaFrame | undefined;
  private videoHeader: MediaFrame | undefined;
  private audioHeader: MediaFrame | undefined;
  private hasVideo = false;
  private current: OpenSegment | undefined;
  /**
   * Wall clock minus hub timestamp, fixed while the two agree within DRIFT_MS: segments that
   * follow each other then follow each other exactly in wall-clock time too (their starts are
   * not each shifted by when a batch happened to arrive), which the MP4 stitcher relies on.
   */
  private anchor: number | undefined;

  constructor(private readonly opts: SegmenterOptions) {}

  get open(): boolean {
    return this.current !== undefined;
  }

  /** Frames from one hub flush, in order: the operations that record them. */
  push(frames: readonly MediaFrame[]): SegmentOp[] {
    const ops: SegmentOp[] = [];
    let parts: Buffer[] = [];
    const flushParts = (): void => {
      if (parts.length > 0 && this.current) ops.push({ op: 'write', data: Buffer.concat(parts), durationMs: this.current.lastTs - this.current.firstTs });
      parts = [];
    };
    for (const f of frames) {
      if (f.type === FRAME_DATA) {
        if (f.isSequenceHeader) this.meta = f;
        continue; // other data messages (cue points, captions) are not recorded
      }
      if (f.isSequenceHeader) {
        if (f.type === FRAME_VIDEO) {
          this.videoHeader = f;
          this.hasVideo = true;
        } else {
          this.audioHeader = f;
        }
        // A codec change mid-segment: the new configuration goes in where it happened.
        if (this.current) parts.push(encodeFlvTag(f.type, this.current.lastTs - this.current.firstTs, f.payload));
        continue;
      }
      if (f.type === FRAME_VIDEO) this.hasVideo = true;
      const startsHere = f.type === FRAME_VIDEO ? f.isKeyframe : f.type === FRAME_AUDIO && !this.hasVideo;
      const cur = this.current;
      if (cur && startsHere && f.timestamp - cur.firstTs >= this.opts.segmentMs) {
        flushParts();
        ops.push({ op: 'close', durationMs: cur.lastTs - cur.firstTs });
        this.current = undefined;
      }
      if (!this.current) {
        if (!startsHere) continue;
        this.current = { firstTs: f.timestamp, lastTs: f.timestamp, last: {} };
        const wall = this.opts.now();
        if (this.anchor === undefined || Math.abs(wall - (this.anchor + f.timestamp)) > DRIFT_MS) this.anchor = wall - f.timestamp;
        ops.push({ op: 'open', startMs: this.anchor + f.timestamp });
        parts.push(this.head());
      }
      const seg = this.current;
      // The hub's timeline never goes back, but two frames of a track can share a timestamp (it
      // holds a frame that arrived late at the last one sent); muxers want each track's to grow.
      const prev = seg.last[f.type];
      const ts = prev !== undefined && f.timestamp - seg.firstTs <= prev ? prev + 1 : f.timestamp - seg.firstTs;
      seg.last[f.type] = ts;
      seg.lastTs = Math.max(seg.lastTs, seg.firstTs + ts);
      parts.push(encodeFlvTag(f.type, ts, f.payload));
    }
    flushParts();
    return ops;
  }

  /** Closes the open segment (if any); recording resumes at the next keyframe in a new segment. */
  restart(): SegmentOp[] {
    const cur = this.current;
    this.current = undefined;
    return cur ? [{ op: 'close', durationMs: cur.lastTs - cur.firstTs }] : [];
  }

  /** A new publisher: its headers and metadata replace the old ones. */
  newPublisher(): SegmentOp[] {
    this.meta = undefined;
    this.videoHeader = undefined;
    this.audioHeader = undefined;
    this.hasVideo = false;
    return this.restart();
  }

  /** FLV header, metadata and sequence headers at timestamp 0. */
  private head(): Buffer {
    const parts = [flvFileHeader(this.audioHeader !== undefined || !this.hasVideo, this.hasVideo)];
    if (this.meta) parts.push(encodeFlvTag(FRAME_DATA, 0, this.meta.payload));
    if (this.videoHeader) parts.push(encodeFlvTag(FRAME_VIDEO, 0, this.videoHeader.payload));
    if (this.audioHeader) parts.push(encodeFlvTag(FRAME_AUDIO, 0, this.audioHeader.payload));
    return Buffer.concat(parts);
  }
}
