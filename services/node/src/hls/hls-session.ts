/**
 * HlsStreamSession: one running HLS segmenter for one stream on this node, listed in the
 * session table (protocol "hls"). It listens to the stream's hub (which keeps a relay of
 * the stream alive while it runs), starts from the hub's snapshot (headers and the GOP so
 * far, so the first segment does not wait for the next keyframe), and stops after a spell
 * without playlist or segment requests. Which players may fetch from it is HlsAdmissions'
 * business (per viewer), not the segmenter's.
 */
import type { MediaFrame } from '../media/frame.ts';
import type { MediaHost, StreamRequest } from '../media/host.ts';
import type { FrameListener, StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';
import type { Session, SessionInfo } from '../sessions.ts';
import { HlsSegmenter, type SegmenterOptions } from './segmenter.ts';

export interface HlsSessionOptions extends SegmenterOptions {
  idleTimeoutMs: number;
}

export class HlsStreamSession implements Session {
  readonly segmenter: HlsSegmenter;
  /** Random per segmenter run: part of segment ETags, so a restarted segmenter's `0.ts` is not taken for the old one. */
  readonly generation = Math.random().toString(36).slice(2, 10);
  private readonly startedAt = Date.now();
  private lastAccess = Date.now();
  private bytesOut = 0;
  private requests = 0;
  /** Requests being answered now (a first playlist request waits for a segment): never idle meanwhile. */
  private inFlight = 0;
  private stopped = false;
  private readonly idleTimer: NodeJS.Timeout;
  private readonly log: Logger;

  constructor(
    readonly id: string,
    readonly hub: StreamHub,
    /** The request that started the segmenter (listed as the session's remote). */
    private readonly firstReq: StreamRequest,
    private readonly host: MediaHost,
    private readonly opts: HlsSessionOptions,
    private readonly onStopped: (s: HlsStreamSession) => void,
  ) {
    this.log = host.log.child({ session: id, app: firstReq.app, stream: firstReq.stream, protocol: 'hls' });
    this.segmenter = new HlsSegmenter(opts);
    const every = Math.max(50, Math.min(1000, opts.idleTimeoutMs / 4));
    this.idleTimer = setInterval(() => {
      if (this.inFlight === 0 && Date.now() - this.lastAccess >= this.opts.idleTimeoutMs) this.stop('no HLS requests within the idle timeout');
    }, every);
    this.idleTimer.unref();
  }

  get active(): boolean {
    return !this.stopped;
  }

  start(): void {
    this.segmenter.pushAll(this.hub.snapshot());
    this.hub.addFrameListener(this.onFrames);
    this.hub.on('publish', this.onPublisherChange);
    this.hub.on('unpublish', this.onPublisherChange);
    this.log.info('HLS segmenter started');
  }

  private readonly onFrames: FrameListener = (frames: readonly MediaFrame[]) => {
    if (!this.stopped) this.segmenter.pushAll(frames);
  };

  private readonly onPublisherChange = (): void => {
    this.segmenter.publisherChanged();
  };

  /** A playlist or segment request: keeps the segmenter alive. */
  touch(): void {
    this.lastAccess = Date.now();
    this.requests++;
  }

  /** Bytes of playlists and segments sent. */
  sent(bytes: number): void {
    this.bytesOut += bytes;
  }

  /** Wraps the answering of a request: the segmenter does not count as idle while it runs. */
  async serving<T>(fn: () => Promise<T>): Promise<T> {
    this.inFlight++;
    this.touch();
    try {
      return await fn();
    } finally {
      this.inFlight--;
      this.lastAccess = Date.now();
    }
  }

  kick(reason: string): void {
    this.stop(reason);
  }

  stop(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.idleTimer);
    this.hub.removeFrameListener(this.onFrames);
    this.hub.off('publish', this.onPublisherChange);
    this.hub.off('unpublish', this.onPublisherChange);
    this.segmenter.wakeWaiters();
    this.host.endPlay(this.hub);
    this.log.info({ reason, segments: this.segmenter.stats.segments, requests: this.requests }, 'HLS segmenter stopped');
    this.onStopped(this);
  }

  info(): SessionInfo {
    const req = this.firstReq;
    return {
      id: this.id,
      protocol: 'hls',
      remote: req.remote,
      role: 'viewer',
      app: req.app,
      stream: req.stream,
      startedAt: this.startedAt,
      bytesIn: 0,
      bytesOut: this.bytesOut,
      droppedFrames: this.segmenter.stats.droppedFrames,
    };
  }
}
