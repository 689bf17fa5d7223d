/**
 * StreamHub: one per live stream on this node. It holds the stream's metadata, sequence
 * headers and GOP cache, and fans every frame out to its sinks (RTMP viewers, HTTP-FLV
 * viewers, child relays, segmenters).
 *
 * Frames never pass through actor mailboxes: a publisher's frames land here synchronously
 * and are written out in batches. Frames arriving within `flushMs` are serialised once per
 * wire format into one buffer, and that same buffer is written to every caught-up viewer,
 * so a viewer costs one write per batch, not one per frame, and no per-viewer copy.
 *
 * A viewer whose socket backs up past its byte bound stops receiving (audio and video
 * alike, to stay in sync), resumes at the next keyframe with fresh headers once it drains,
 * and is closed if it stays behind longer than `maxLagMs`. Memory is bounded by
 * (viewers × bound) plus one GOP per stream.
 */
import { EventEmitter } from 'node:events';
import { encodeAmf0, type AmfObject } from '@meshcast/proto';
import { hasCompositionOffset, isAudioSequenceHeader, isVideoKeyframe, isVideoSequenceHeader } from '@meshcast/proto';
import { FRAME_AUDIO, FRAME_DATA, FRAME_VIDEO, MediaFrame, serialise, wireKey, type FrameType, type WireFormat } from './frame.ts';
import { sanitizeMetadata } from './metadata.ts';
import type { Logger } from '../log.ts';

export interface MediaSink {
  readonly id: string;
  readonly format: WireFormat;
  /** Bytes written but not yet accepted by the kernel. */
  bufferedBytes(): number;
  write(buf: Buffer): void;
  /** The hub gave up on this sink (too slow); the sink closes its connection. */
  evict(reason: string): void;
  onPublishStart?(): void;
  onPublishStop?(): void;
}

/** Non-socket consumers (segmenters, static pushes) get every frame as it is flushed. */
export type FrameListener = (frames: readonly MediaFrame[]) => void;

export interface HubOptions {
  gopCache: boolean;
  gopCacheMaxBytes: number;
  flushMs: number;
  sinkQueueBytes: number;
  maxLagMs: number;
}

export interface PublisherHandle {
  readonly id: string;
  /** `rtmp` and `whip`: an encoder publishing on this node (see isEncoder); `relay`, `pull`: media from elsewhere. */
  readonly kind: 'rtmp' | 'whip' | 'relay' | 'pull';
  /** Called when a newer publisher takes the stream over, or the node fences the stream. */
  evict(reason: string): void;
}

/** An encoder publishes on this node (RTMP or WHIP): the stream is owned here, not relayed or pulled. */
export const isEncoder = (p: { readonly kind: string } | undefined): boolean => p?.kind === 'rtmp' || p?.kind === 'whip';

type SinkState = 'waitKey' | 'live' | 'lagging';

interface SinkRecord {
  sink: MediaSink;
  state: SinkState;
  key: string;
  laggingSince: number;
  droppedFrames: number;
  skips: number;
}

export interface HubStats {
  framesIn: number;
  bytesIn: number;
  bytesOut: number;
  droppedFrames: number;
  evictedSinks: number;
  publishedAt: number | undefined;
}

export class StreamHub extends EventEmitter {
  readonly key: string;
  private publisherHandle: PublisherHandle | undefined;
  private metadataFrame: MediaFrame | undefined;
  private metadataValue: AmfObject | undefined;
  private videoHeader: MediaFrame | undefined;
  private audioHeader: MediaFrame | undefined;
  private gop: MediaFrame[] = [];
  private gopBytes = 0;
  private gopFlushed = 0;
  private gopValid = false;
  private pending: MediaFrame[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  private flushScheduled = false;
  private readonly sinks = new Map<string, SinkRecord>();
  private readonly listeners_ = new Set<FrameListener>();
  private lastTs: number | undefined;
  private tsOffset = 0;
  private rebase = true;
  /**
   * Set by the stream's PublishedStream actor: asked on every published frame (that is how a pause is noticed
   * first); while it returns false (ownership being re-confirmed after a pause, or fenced), frames are dropped
   * and media resumes at the next keyframe.
   */
  inputGate: (() => boolean) | undefined;
  /** The source uses B-frames (a video frame with a composition time offset): WebRTC cannot play it in order. */
  bFrames = false;
  private standbyHandle: PublisherHandle | undefined;
  private standbySinceAt = 0;
  private primaryMediaAt = 0;
  private standbyMediaAt = 0;
  /** The standby's metadata, sequence headers and frames since its last keyframe: what viewers need at its promotion. */
  private warm: { meta: AmfObject | undefined; frames: Array<{ type: FrameType; ts: number; payload: Buffer; header: boolean }>; bytes: number } = { meta: undefined, frames: [], bytes: 0 };
  private skipToKeyframe = false;
  readonly stats: HubStats = { framesIn: 0, bytesIn: 0, bytesOut: 0, droppedFrames: 0, evictedSinks: 0, publishedAt: undefined };

  constructor(
    readonly app: string,
    readonly stream: string,
    private readonly opts: HubOptions,
    private readonly log: Logger,
  ) {
    super();
    this.key = `${app}/${stream}`;
  }

  get publisher(): PublisherHandle | undefined {
    return this.publisherHandle;
  }

  get isLive(): boolean {
    return this.publisherHandle !== undefined;
  }

  get metadata(): AmfObject | undefined {
    return this.metadataValue;
  }

  get headers(): { video: Buffer | undefined; audio: Buffer | undefined } {
    return { video: this.videoHeader?.payload, audio: this.audioHeader?.payload };
  }

  get sinkCount(): number {
    return this.sinks.size;
  }

  /** Viewers plus in-process consumers (segmenters, pushes): what keeps a relay of this stream alive. */
  get consumerCount(): number {
    return this.sinks.size + this.listeners_.size;
  }

  get idle(): boolean {
    return this.publisherHandle === undefined && this.sinks.size === 0 && this.listeners_.size === 0;
  }

  /**
   * Attaches a publisher. A current one is evicted (takeover); the caller decides whether takeover is allowed.
   * A promoted standby brings its warm frames (headers, the GOP so far): viewers resume on its keyframe at once.
   */
  attachPublisher(p: PublisherHandle, reason = 'taken over by a newer publisher'): void {
    const old = this.publisherHandle;
    if (old) {
      this.flush();
      this.publisherHandle = undefined;
      old.evict(reason);
    }
    const warm = this.standbyHandle === p ? this.warm : undefined;
    if (this.standbyHandle === p) this.setStandby(undefined);
    this.publisherHandle = p;
    this.primaryMediaAt = Date.now();
    this.resetMediaState();
    this.rebase = true;
    this.stats.publishedAt = Date.now();
    for (const rec of this.sinks.values()) {
      rec.sink.onPublishStart?.();
      // The next frames are a new publisher's: resume on its keyframe, with its headers.
      if (rec.state === 'live') rec.state = 'waitKey';
    }
    this.emit('publish', p);
    if (warm) {
      if (warm.meta) this.setMetadata(warm.meta);
      for (const f of warm.frames) this.ingest(f.type, f.ts, f.payload, p);
    }
  }

  get standby(): PublisherHandle | undefined {
    return this.standbyHandle;
  }

  get standbySince(): number | undefined {
    return this.standbyHandle ? this.standbySinceAt : undefined;
  }

  /** Keeps `p` connected as the stream's standby (its frames are read and kept only as a warm GOP), or clears the slot. */
  setStandby(p: PublisherHandle | undefined): void {
    this.standbyHandle = p;
    this.standbySinceAt = Date.now();
    this.standbyMediaAt = Date.now();
    this.warm = { meta: undefined, frames: [], bytes: 0 };
  }

  /** When `p` (the publisher or the standby) last sent a frame, ms since epoch; 0 for anyone else. */
  lastMediaAt(p: PublisherHandle): number {
    if (p === this.publisherHandle) return this.primaryMediaAt;
    if (p === this.standbyHandle) return this.standbyMediaAt;
    return 0;
  }

  private keepWarm(type: FrameType, ts: number, payload: Buffer): void {
    if (payload.length === 0) return;
    const header = type === FRAME_VIDEO ? isVideoSequenceHeader(payload) : type === FRAME_AUDIO ? isAudioSequenceHeader(payload) : false;
    const w = this.warm;
    if (header) {
      w.frames = [...w.frames.filter((f) => !(f.header && f.type === type)), { type, ts, payload, header }];
    } else if (type === FRAME_VIDEO && isVideoKeyframe(payload)) {
      w.frames = [...w.frames.filter((f) => f.header), { type, ts, payload, header }];
      w.bytes = payload.length;
      return;
    } else {
      if (!w.frames.some((f) => !f.header)) return; // nothing to resume on before the first keyframe
      w.bytes += payload.length;
      if (w.bytes > this.opts.gopCacheMaxBytes) {
        w.frames = w.frames.filter((f) => f.header);
        w.bytes = 0;
        return;
      }
      w.frames.push({ type, ts, payload, header });
    }
  }

  /**
   * The same publisher starts a new upstream session (a relay moved to another parent):
   * viewers keep their connections and resume at its first keyframe, with its headers and
   * timestamps continuing from where they were.
   */
  restartSession(p: PublisherHandle): void {
    if (this.publisherHandle !== p) return;
    this.flush();
    this.resetMediaState();
    this.rebase = true;
    for (const rec of this.sinks.values()) if (rec.state === 'live') rec.state = 'waitKey';
  }

  detachPublisher(p: PublisherHandle): void {
    if (this.standbyHandle === p) this.setStandby(undefined);
    if (this.publisherHandle !== p) return;
    this.flush();
    this.publisherHandle = undefined;
    this.resetMediaState();
    for (const rec of this.sinks.values()) {
      rec.sink.onPublishStop?.();
      // They resume at the next publisher's first keyframe, with its headers.
      rec.state = 'waitKey';
    }
    this.emit('unpublish', p);
    this.emitIfIdle();
  }

  private resetMediaState(): void {
    this.skipToKeyframe = false;
    this.metadataFrame = undefined;
    this.metadataValue = undefined;
    this.videoHeader = undefined;
    this.audioHeader = undefined;
    this.gop = [];
    this.gopBytes = 0;
    this.gopFlushed = 0;
    this.gopValid = false;
  }

  setMetadata(raw: AmfObject, from?: PublisherHandle): void {
    // Kept, sent to viewers and listed by the API: only a bounded copy (see sanitizeMetadata).
    const meta = sanitizeMetadata(raw);
    if (from !== undefined && from !== this.publisherHandle) {
      if (from === this.standbyHandle) this.warm.meta = meta;
      return;
    }
    this.metadataValue = meta;
    const payload = encodeAmf0(['onMetaData', meta]);
    // Metadata is stamped 0: players (ffmpeg's FLV demuxer among them) read a script tag with a
    // non-zero timestamp as a data/subtitle track rather than as stream metadata.
    const frame = new MediaFrame(FRAME_DATA, 0, payload, false, true);
    this.metadataFrame = frame;
    this.enqueue(frame);
  }

  /**
   * A media or data message from the publisher, on the publisher's own timeline. `from` names the sender: a
   * standby's frames are only kept warm, anyone else's (an evicted publisher's last frames) are dropped.
   */
  ingest(type: FrameType, timestamp: number, payload: Buffer, from?: PublisherHandle): void {
    if (from !== undefined && from !== this.publisherHandle) {
      if (from === this.standbyHandle) {
        this.standbyMediaAt = Date.now();
        this.keepWarm(type, timestamp, payload);
      }
      return;
    }
    this.primaryMediaAt = Date.now();
    if (this.inputGate !== undefined && !this.inputGate()) {
      this.skipToKeyframe = true;
      return;
    }
    if (this.skipToKeyframe && type !== FRAME_DATA && payload.length > 0) {
      // Frames were dropped: a decoder needs a keyframe first (sequence headers still pass; audio-only streams resume at once).
      const header = type === FRAME_VIDEO ? isVideoSequenceHeader(payload) : isAudioSequenceHeader(payload);
      if (!header) {
        if (type === FRAME_VIDEO && isVideoKeyframe(payload)) this.skipToKeyframe = false;
        else if (type === FRAME_VIDEO || this.videoHeader !== undefined) return;
        else this.skipToKeyframe = false;
      }
    }
    this.stats.framesIn++;
    this.stats.bytesIn += payload.length;
    const ts = this.timeline(timestamp);
    let frame: MediaFrame;
    if (type === FRAME_VIDEO) {
      if (payload.length === 0) return;
      const seq = isVideoSequenceHeader(payload);
      const key = !seq && isVideoKeyframe(payload);
      frame = new MediaFrame(FRAME_VIDEO, ts, payload, key, seq);
      if (!seq && !this.bFrames && hasCompositionOffset(payload)) {
        this.bFrames = true;
        this.log.warn({ stream: this.key }, 'the source sends B-frames (composition time offsets): WebRTC (WHEP) viewers are refused for this stream');
      }
      if (seq) {
        this.videoHeader = frame;
      } else if (key) {
        this.gop = [frame];
        this.gopBytes = payload.length;
        this.gopFlushed = 0;
        this.gopValid = this.opts.gopCache;
      } else {
        this.addToGop(frame);
      }
    } else if (type === FRAME_AUDIO) {
      if (payload.length === 0) return;
      const seq = isAudioSequenceHeader(payload);
      frame = new MediaFrame(FRAME_AUDIO, ts, payload, false, seq);
      if (seq) this.audioHeader = frame;
      else this.addToGop(frame);
    } else {
      frame = new MediaFrame(FRAME_DATA, ts, payload, false, false);
      this.addToGop(frame);
    }
    this.enqueue(frame);
  }

  private addToGop(frame: MediaFrame): void {
    if (!this.gopValid) return;
    this.gopBytes += frame.payload.length;
    if (this.gopBytes > this.opts.gopCacheMaxBytes) {
      // A GOP too long to hold: new viewers wait for the next keyframe instead.
      this.gopValid = false;
      this.gop = [];
      this.gopBytes = 0;
      this.gopFlushed = 0;
      return;
    }
    this.gop.push(frame);
  }

  /** Maps a publisher timestamp onto the hub's timeline, which never goes backwards. */
  private timeline(ts: number): number {
    if (this.rebase || this.lastTs === undefined) {
      this.tsOffset = this.lastTs === undefined ? 0 : this.lastTs + 1 - ts;
      this.rebase = false;
    } else if (ts + this.tsOffset < this.lastTs - 1000) {
      // The publisher's clock jumped back (encoder restart without reconnect): continue from where viewers are.
      this.tsOffset = this.lastTs + 1 - ts;
    }
    let out = ts + this.tsOffset;
    if (this.lastTs !== undefined && out < this.lastTs) out = this.lastTs;
    this.lastTs = out;
    return out;
  }

  private enqueue(frame: MediaFrame): void {
    this.pending.push(frame);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    if (this.opts.flushMs > 0) {
      this.flushTimer = setTimeout(this.flushNow, this.opts.flushMs);
    } else {
      setImmediate(this.flushNow);
    }
  }

  private readonly flushNow = (): void => {
    this.flushTimer = undefined;
    this.flushScheduled = false;
    this.flush();
  };

  /** Headers re-stamped to `ts`, so a viewer's timeline stays monotonic when it (re)starts at a keyframe. */
  private headerFrames(ts: number): MediaFrame[] {
    const out: MediaFrame[] = [];
    if (this.metadataFrame) out.push(this.metadataFrame);
    if (this.videoHeader) out.push(this.videoHeader.restamped(ts));
    if (this.audioHeader) out.push(this.audioHeader.restamped(ts));
    return out;
  }

  flush(): void {
    if (this.flushTimer) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
      this.flushScheduled = false;
    }
    const frames = this.pending;
    if (frames.length === 0) return;
    this.pending = [];
    this.gopFlushed = this.gop.length;

    for (const l of this.listeners_) l(frames);
    if (this.sinks.size === 0) return;

    let keyIdx = -1;
    for (let i = 0; i < frames.length; i++) {
      if (frames[i]!.isKeyframe) {
        keyIdx = i;
        break;
      }
    }
    const whole = new Map<string, Buffer>();
    const fromKey = new Map<string, Buffer>();
    let resumeFrames: MediaFrame[] | undefined;
    const now = Date.now();
    const bound = this.opts.sinkQueueBytes;

    for (const rec of this.sinks.values()) {
      const sink = rec.sink;
      switch (rec.state) {
        case 'live': {
          if (sink.bufferedBytes() > bound) {
            rec.state = 'lagging';
            rec.laggingSince = now;
            this.drop(rec, frames.length);
            break;
          }
          let buf = whole.get(rec.key);
          if (!buf) {
            buf = serialise(frames, sink.format);
            whole.set(rec.key, buf);
          }
          this.stats.bytesOut += buf.length;
          sink.write(buf);
          break;
        }
        case 'lagging':
        case 'waitKey': {
          // Resume only at a keyframe and only once the socket has drained to half its bound.
          if (keyIdx >= 0 && sink.bufferedBytes() <= bound / 2) {
            let buf = fromKey.get(rec.key);
            if (!buf) {
              resumeFrames ??= [...this.headerFrames(frames[keyIdx]!.timestamp), ...frames.slice(keyIdx)];
              buf = serialise(resumeFrames, sink.format);
              fromKey.set(rec.key, buf);
            }
            if (rec.state === 'lagging') this.drop(rec, keyIdx);
            rec.state = 'live';
            this.stats.bytesOut += buf.length;
            sink.write(buf);
            break;
          }
          if (rec.state === 'lagging') {
            this.drop(rec, frames.length);
            if (now - rec.laggingSince > this.opts.maxLagMs) {
              this.stats.evictedSinks++;
              this.sinks.delete(sink.id);
              this.log.warn({ session: sink.id, stream: this.key, dropped: rec.droppedFrames, buffered: sink.bufferedBytes() }, 'viewer stayed behind past the limit; closing it');
              sink.evict(`viewer stayed behind for more than ${this.opts.maxLagMs} ms`);
            }
          }
          break;
        }
      }
    }
  }

  private drop(rec: SinkRecord, n: number): void {
    rec.droppedFrames += n;
    this.stats.droppedFrames += n;
  }

  /**
   * Adds a viewer. It gets metadata, sequence headers and the GOP so far at once (so the
   * first picture shows without waiting for the next keyframe), then the live batches.
   */
  addSink(sink: MediaSink): void {
    const rec: SinkRecord = { sink, state: 'waitKey', key: wireKey(sink.format), laggingSince: 0, droppedFrames: 0, skips: 0 };
    this.sinks.set(sink.id, rec);
    if (this.publisherHandle && this.gopValid && this.gopFlushed > 0) {
      const gop = this.gop.slice(0, this.gopFlushed);
      const frames = [...this.headerFrames(gop[0]!.timestamp), ...gop];
      const buf = serialise(frames, sink.format);
      this.stats.bytesOut += buf.length;
      sink.write(buf);
      rec.state = 'live';
    }
  }

  removeSink(sink: MediaSink): void {
    if (this.sinks.delete(sink.id)) this.emitIfIdle();
  }

  sinkDrops(id: string): number {
    return this.sinks.get(id)?.droppedFrames ?? 0;
  }

  addFrameListener(l: FrameListener): void {
    this.listeners_.add(l);
  }

  removeFrameListener(l: FrameListener): void {
    if (this.listeners_.delete(l)) this.emitIfIdle();
  }

  /** Frames a new in-process consumer needs to start decoding: headers and the GOP so far. */
  snapshot(): MediaFrame[] {
    if (!this.gopValid || this.gop.length === 0) return this.headerFrames(this.lastTs ?? 0);
    return [...this.headerFrames(this.gop[0]!.timestamp), ...this.gop.slice(0, this.gopFlushed)];
  }

  private emitIfIdle(): void {
    if (this.idle) this.emit('idle');
  }

  /**
   * Closes every viewer, keeping the publisher (a relay that cannot get the stream: players re-route).
   * Each sink closes its connection and leaves the hub as any closing viewer does. Returns how many.
   */
  evictViewers(reason: string): number {
    const recs = [...this.sinks.values()];
    for (const rec of recs) rec.sink.evict(reason);
    return recs.length;
  }

  /** Closes every sink (node shutdown or fencing). */
  close(reason: string): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const p = this.publisherHandle;
    this.publisherHandle = undefined;
    if (p) p.evict(reason);
    for (const rec of [...this.sinks.values()]) rec.sink.evict(reason);
    this.sinks.clear();
    this.emit('idle');
  }
}
