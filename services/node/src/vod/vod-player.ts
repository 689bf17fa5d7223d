/**
 * VodPlayer: one RTMP viewer of one VOD file (an FMS/crtmpserver-style `play` on a VOD app).
 * One actor: every input (a frame read, a timer, the socket drained, seek, pause, close) is a
 * message handled in order by `handle`, a `switch` over the player's state.
 *
 *   playing ──pause──▶ paused ──unpause──▶ playing
 *      │  ▲                                   │
 *      │  └────────────── seek ───────────────┘ (from any state but closed; a paused player stays paused)
 *      ▼
 *    ended (Play.Complete, StreamEOF, Play.Stop sent) ──seek──▶ playing
 *   any ──close──▶ closed
 *
 * Pacing: frames go out in real time, ahead of the clock by a lead (the client's buffer length,
 * from its SetBufferLength, plus a margin, bounded), so a client fills its buffer at once and
 * then receives media as it plays it. Memory is bounded: at most one frame waits here, and
 * while the socket holds more than WRITE_BUFFER_BYTES unsent the player sends nothing until it
 * drains (the session passes a `drained` message on the socket's `drain`).
 */
import type { AmfValue } from '@meshcast/proto';
import { FRAME_AUDIO, FRAME_VIDEO, MediaFrame } from '../media/frame.ts';
import type { Logger } from '../log.ts';
import type { VodMedia } from './vod-media.ts';

/** Time and timers, injected (tests drive a manual clock). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const SYSTEM_CLOCK: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** What the player sends on its NetStream; the RTMP session implements it. */
export interface VodOutput {
  status(level: 'status' | 'error', code: string, description: string, extra?: Record<string, AmfValue>): void;
  /** An AMF0 data message on the stream (onMetaData, onPlayStatus, |RtmpSampleAccess). */
  data(values: AmfValue[]): void;
  /** A user control event about the stream. */
  control(event: 'begin' | 'eof' | 'recorded'): void;
  frame(f: MediaFrame): void;
  /** Bytes written to the peer and not yet taken by its socket. */
  bufferedBytes(): number;
}

export type VodPlayerMessage =
  | { type: 'read'; gen: number; frame: MediaFrame | undefined }
  | { type: 'readFailed'; gen: number; err: Error }
  | { type: 'timer' }
  | { type: 'drained' }
  | { type: 'seek'; ms: number }
  /** `pause`: true pauses, false resumes, undefined toggles (pauseRaw without a flag). */
  | { type: 'pause'; pause: boolean | undefined }
  | { type: 'bufferLength'; ms: number }
  | { type: 'close' };

/** Unsent bytes the socket may hold before the player waits for it to drain (unless the options give less). */
export const WRITE_BUFFER_BYTES = 512 * 1024;

export interface VodPlayerOptions {
  clock?: Clock;
  /** Where playback starts (ms; the keyframe at or before it). */
  startMs?: number;
  /** Unsent bytes the socket may hold before the player waits (default WRITE_BUFFER_BYTES). */
  writeBufferBytes?: number;
}
/** How far ahead of real time frames are sent when the client gave no buffer length, and at most. */
const MIN_LEAD_MS = 1000;
const MAX_LEAD_MS = 10_000;
/** Sent ahead of the client's buffer length, so that its buffer never runs dry on jitter. */
const LEAD_MARGIN_MS = 500;

/** A reader of the file from one position; a new one (generation) replaces it on seek. */
interface Reader {
  gen: number;
  it: AsyncGenerator<MediaFrame, void, undefined>;
  /** The next frame, read and not yet due. */
  next: MediaFrame | undefined;
  reading: boolean;
  eof: boolean;
  /** Sequence headers go before the first frame of a reader (at start and after a seek). */
  headersSent: boolean;
}

type State =
  | { kind: 'playing'; reader: Reader; baseWall: number; baseTs: number }
  | { kind: 'paused'; reader: Reader }
  | { kind: 'ended' }
  | { kind: 'closed' };

export class VodPlayer {
  private state: State;
  private gen = 0;
  private timer: unknown;
  private leadMs = MIN_LEAD_MS;
  /** Timestamp of the last frame sent (the position a pause keeps, and what Play.Complete follows). */
  private position = 0;
  private bytes = 0;
  private readonly label: string;
  private readonly clock: Clock;
  private readonly writeBufferBytes: number;

  constructor(
    private readonly media: VodMedia,
    private readonly out: VodOutput,
    private readonly log: Logger,
    opts: VodPlayerOptions = {},
  ) {
    const clock = (this.clock = opts.clock ?? SYSTEM_CLOCK);
    this.writeBufferBytes = opts.writeBufferBytes ?? WRITE_BUFFER_BYTES;
    const startMs = opts.startMs ?? 0;
    this.label = `${media.file.app}/${media.file.name}`;
    out.control('recorded');
    out.control('begin');
    out.status('status', 'NetStream.Play.Reset', `Playing and resetting ${this.label}.`);
    out.status('status', 'NetStream.Play.Start', `Started playing ${this.label}.`);
    out.data(['|RtmpSampleAccess', true, true]);
    out.data(['onMetaData', media.metadata]);
    this.state = { kind: 'playing', reader: this.openReader(startMs), baseWall: clock.now(), baseTs: Math.max(0, startMs) };
    this.pump();
  }

  get stateKind(): State['kind'] {
    return this.state.kind;
  }

  handle(msg: VodPlayerMessage): void {
    const s = this.state;
    switch (msg.type) {
      case 'read':
      case 'readFailed': {
        if (s.kind !== 'playing' && s.kind !== 'paused') return;
        const r = s.reader;
        if (r.gen !== msg.gen) return; // a reader replaced by a seek
        r.reading = false;
        if (msg.type === 'readFailed') {
          this.log.warn({ err: msg.err.message, file: this.label }, 'VOD file read failed; playback stopped');
          this.out.status('error', 'NetStream.Play.Failed', `reading ${this.label} failed`);
          this.endReader(r);
          this.state = { kind: 'ended' };
          return;
        }
        if (msg.frame) r.next = msg.frame;
        else r.eof = true;
        if (s.kind === 'playing') {
          // The first frame of a reader sets where real time starts counting.
          if (!r.headersSent && r.next) s.baseTs = r.next.timestamp;
          this.pump();
        }
        return;
      }
      case 'timer':
        this.timer = undefined;
        if (s.kind === 'playing') this.pump();
        return;
      case 'drained':
        if (s.kind === 'playing') this.pump();
        return;
      case 'bufferLength':
        this.leadMs = Math.min(MAX_LEAD_MS, Math.max(MIN_LEAD_MS, msg.ms + LEAD_MARGIN_MS));
        if (s.kind === 'playing') this.pump();
        return;
      case 'seek': {
        if (s.kind === 'closed') return;
        const target = Math.max(0, Math.min(msg.ms, this.media.durationMs));
        if (s.kind === 'playing' || s.kind === 'paused') this.endReader(s.reader);
        this.clearTimer();
        this.out.control('begin');
        this.out.status('status', 'NetStream.Seek.Notify', `Seeking ${target}.`);
        const reader = this.openReader(target);
        this.position = target;
        this.log.debug({ file: this.label, target }, 'VOD seek');
        if (s.kind === 'paused') {
          this.state = { kind: 'paused', reader };
          return;
        }
        this.out.status('status', 'NetStream.Play.Start', `Started playing ${this.label}.`);
        this.out.data(['|RtmpSampleAccess', true, true]);
        this.state = { kind: 'playing', reader, baseWall: this.clock.now(), baseTs: target };
        this.pump();
        return;
      }
      case 'pause': {
        if (s.kind === 'closed') return;
        const pause = msg.pause ?? s.kind !== 'paused';
        if (pause) {
          if (s.kind === 'playing') {
            this.clearTimer();
            this.state = { kind: 'paused', reader: s.reader };
          }
          this.out.status('status', 'NetStream.Pause.Notify', `Pausing ${this.label}.`);
          return;
        }
        if (s.kind === 'paused') {
          this.out.control('begin');
          this.out.status('status', 'NetStream.Unpause.Notify', `Unpausing ${this.label}.`);
          // Real time resumes at the frame that was next, so the paused time is not caught up in a burst.
          this.state = { kind: 'playing', reader: s.reader, baseWall: this.clock.now(), baseTs: s.reader.next?.timestamp ?? this.position };
          this.pump();
        } else {
          this.out.status('status', 'NetStream.Unpause.Notify', `Unpausing ${this.label}.`);
        }
        return;
      }
      case 'close':
        if (s.kind === 'playing' || s.kind === 'paused') this.endReader(s.reader);
        this.clearTimer();
        this.state = { kind: 'closed' };
        this.media.close();
        return;
    }
  }

  private openReader(fromMs: number): Reader {
    return { gen: ++this.gen, it: this.media.frames(fromMs), next: undefined, reading: false, eof: false, headersSent: false };
  }

  private endReader(r: Reader): void {
    r.eof = true;
    r.next = undefined;
    // A read still under way finishes first; its result is then ignored (another generation).
    void r.it.return(undefined).catch((err: unknown) => this.log.debug({ err: (err as Error).message }, 'VOD reader close failed'));
  }

  /** Sends every frame that is due, then waits for the next read, the next due time or the socket to drain. */
  private pump(): void {
    const s = this.state;
    if (s.kind !== 'playing') return;
    const r = s.reader;
    for (;;) {
      if (this.out.bufferedBytes() > this.writeBufferBytes) return; // 'drained' resumes
      const f = r.next;
      if (!f) {
        if (r.eof) return this.finishWhenDue(s);
        if (!r.reading) this.read(r);
        return;
      }
      const elapsed = this.clock.now() - s.baseWall;
      const dueIn = f.timestamp - s.baseTs - elapsed - this.leadMs;
      if (dueIn > 0) return this.schedule(dueIn);
      if (!r.headersSent) {
        r.headersSent = true;
        if (this.media.videoHeader) this.send(new MediaFrame(FRAME_VIDEO, f.timestamp, this.media.videoHeader, false, true));
        if (this.media.audioHeader) this.send(new MediaFrame(FRAME_AUDIO, f.timestamp, this.media.audioHeader, false, true));
      }
      r.next = undefined;
      this.send(f);
      this.position = f.timestamp;
    }
  }

  private send(f: MediaFrame): void {
    this.bytes += f.payload.length;
    this.out.frame(f);
  }

  private read(r: Reader): void {
    r.reading = true;
    const gen = r.gen;
    r.it.next().then(
      (res) => this.handle({ type: 'read', gen, frame: res.done ? undefined : res.value }),
      (err: unknown) => this.handle({ type: 'readFailed', gen, err: err instanceof Error ? err : new Error(String(err)) }),
    );
  }

  /** All frames are out: the stream ends when its last frame's time has come (as for a live viewer). */
  private finishWhenDue(s: Extract<State, { kind: 'playing' }>): void {
    const dueIn = this.position - s.baseTs - (this.clock.now() - s.baseWall);
    if (dueIn > 0) return this.schedule(dueIn);
    this.clearTimer();
    this.out.data(['onPlayStatus', { level: 'status', code: 'NetStream.Play.Complete', duration: this.media.durationMs / 1000, bytes: this.bytes }]);
    this.out.control('eof');
    this.out.status('status', 'NetStream.Play.Stop', `Stopped playing ${this.label}.`);
    this.state = { kind: 'ended' };
    this.log.debug({ file: this.label, bytes: this.bytes }, 'VOD playback complete');
  }

  private schedule(ms: number): void {
    this.clearTimer();
    this.timer = this.clock.setTimeout(() => this.handle({ type: 'timer' }), Math.max(1, Math.ceil(ms)));
  }

  private clearTimer(): void {
    if (this.timer === undefined) return;
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}
