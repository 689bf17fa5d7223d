/**
 * HlsStreamSession: one running HLS segmenter for one stream on this node, listed in the
 * session table (protocol "hls"). It listens to the stream's hub (which keeps a relay of
 * the stream alive while it runs), starts from the hub's snapshot (headers and the GOP so
 * far, so the first segment does not wait for the next keyframe), and stops after a spell
 * without playlist or segment requests.
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

/** Distinct query strings (tokens) remembered as admitted per stream; beyond that each new one is asked again. */
const MAX_ADMITTED = 256;

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
  /** Query strings admitted for this stream, each with the request that was admitted (for the done notification). */
  private readonly admitted = new Map<string, StreamRequest>();

  constructor(
    readonly id: string,
    readonly hub: StreamHub,
    req: StreamRequest,
    private readonly host: MediaHost,
    private readonly opts: HlsSessionOptions,
    private readonly onStopped: (s: HlsStreamSession) => void,
  ) {
    this.admitted.set(req.params.toString(), req);
    this.log = host.log.child({ session: id, app: req.app, stream: req.stream, protocol: 'hls' });
    this.segmenter = new HlsSegmenter(opts);
    const every = Math.max(50, Math.min(1000, opts.idleTimeoutMs / 4));
    this.idleTimer = setInterval(() => {
      if (this.inFlight === 0 && Date.now() - this.lastAccess >= this.opts.idleTimeoutMs) this.stop('no HLS requests within the idle timeout');
    }, every);
    this.idleTimer.unref();
  }

  private get firstReq(): StreamRequest {
    return this.admitted.values().next().value!;
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

  isAdmitted(query: string): boolean {
    return this.admitted.has(query);
  }

  /** Another query string (token) was admitted for this stream. */
  addAdmitted(query: string, req: StreamRequest): void {
    if (this.admitted.size < MAX_ADMITTED) this.admitted.set(query, req);
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
    const summary = { bytesIn: 0, bytesOut: this.bytesOut, durationMs: Date.now() - this.startedAt };
    for (const req of this.admitted.values()) this.host.sessionDone('play', req, summary);
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
