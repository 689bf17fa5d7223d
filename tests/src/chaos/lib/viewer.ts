/**
 * A viewer that records what it receives, and the measurements the chaos suite makes on it:
 *
 * - survived: its connection is still open (it never had to reconnect);
 * - media gap: wall clock between the last numbered video frame before a fault and the first
 *   one after it (frames of the synthetic source carry their frame number);
 * - timestamp monotonicity: no audio/video timestamp ever goes backwards;
 * - resumes on a keyframe: after a gap, no coded non-key video frame arrives before the first
 *   keyframe (a decoder would show garbage otherwise);
 * - max inter-frame gap over a window (for viewers that must see no interruption at all);
 * - no interleaving: once a viewer got a frame of a newer publisher, it never gets another frame
 *   of an older one (frames carry their publisher's identity, see `stampPublisher`). Given the
 *   publishers in the order they took the stream, this is the epoch invariant: each takeover is a
 *   new ownership epoch, and no viewer gets a frame of an older epoch after one of a newer epoch.
 */
import { RtmpClient, syntheticPublisherId, type RtmpClientOptions } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';

export interface FrameRecord {
  /** 8 audio, 9 video, 18 data */
  type: number;
  timestamp: number;
  /** Frame number carried by a synthetic video frame, else undefined. */
  n: number | undefined;
  /** Identity of the publisher that sent a synthetic video frame, else undefined. */
  pub: number | undefined;
  /** Local receive time (ms). */
  at: number;
  /** Video: coded frame (AVC packet type 1) that is a keyframe. */
  key: boolean;
  /** Video: sequence header (AVC packet type 0). */
  seqHeader: boolean;
}

/**
 * Frame number of a synthetic video frame: `startSyntheticPublisher` frames (600 bytes) and the
 * chaos suite's heavier ones (any size ≥ 9) carry it at byte 5, after the 5-byte AVC header.
 */
export function frameNumber(type: number, payload: Buffer): number | undefined {
  if (type !== 9 || payload.length < 9 || payload[1] !== 1) return undefined;
  const codec = payload[0]! & 0x0f;
  if (codec !== 7) return undefined;
  return payload.readUInt32BE(5);
}

export interface ViewerOptions extends RtmpClientOptions {
  /** Keep only numbered video frames' arrival times (cheap, for crowds of viewers). */
  light?: boolean;
}

export class RecordingViewer {
  readonly frames: FrameRecord[] = [];
  readonly statuses: Array<{ code: string; at: number }> = [];
  readonly openedAt: number;
  firstFrameAt: number | undefined;
  closedAt: number | undefined;
  closeReason: string | undefined;
  client!: RtmpClient;

  private constructor(
    readonly url: string,
    readonly label: string,
    private readonly light: boolean,
  ) {
    this.openedAt = Date.now();
  }

  static async open(url: string, label = url, opts: ViewerOptions = {}): Promise<RecordingViewer> {
    const v = new RecordingViewer(url, label, opts.light ?? false);
    v.client = await RtmpClient.openPlayer(url, { timeoutMs: 5000, ...opts, onFrame: (m) => v.onFrame(m) });
    v.client.on('status', (s: { code: string }) => v.statuses.push({ code: s.code, at: Date.now() }));
    v.client.once('close', (reason: string) => {
      v.closedAt = Date.now();
      v.closeReason = reason;
    });
    return v;
  }

  private onFrame(m: RtmpMessage): void {
    const at = Date.now();
    const n = frameNumber(m.type, m.payload);
    if (n !== undefined) this.firstFrameAt ??= at;
    if (this.light && n === undefined) return;
    const video = m.type === 9 && m.payload.length >= 2;
    this.frames.push({
      type: m.type,
      timestamp: m.timestamp,
      n,
      pub: n === undefined ? undefined : syntheticPublisherId(m.type, m.payload),
      at,
      key: video && m.payload[1] === 1 && m.payload[0]! >> 4 === 1,
      seqHeader: video && m.payload[1] === 0,
    });
  }

  get survived(): boolean {
    return !this.client.closed;
  }

  close(): void {
    this.client.close();
  }

  /** Numbered video frames received at or after `since`. */
  numbered(since = 0): FrameRecord[] {
    return this.frames.filter((f) => f.n !== undefined && f.at >= since);
  }

  /** Wait until `pred` holds for some numbered frame received at or after `since`; resolves with that frame. */
  async waitFrame(pred: (f: FrameRecord) => boolean, timeoutMs: number, since = 0): Promise<FrameRecord | undefined> {
    const deadline = Date.now() + timeoutMs;
    let from = 0;
    for (;;) {
      for (let i = from; i < this.frames.length; i++) {
        const f = this.frames[i]!;
        if (f.n !== undefined && f.at >= since && pred(f)) return f;
      }
      from = this.frames.length;
      if (Date.now() > deadline) return undefined;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

export interface GapMeasure {
  /** Last numbered frame received before the fault (receive time). */
  lastBefore: number | undefined;
  /** First numbered frame after the fault matching the predicate. */
  firstAfter: number | undefined;
  /** firstAfter − lastBefore, ms (undefined if it never resumed). */
  gapMs: number | undefined;
}

/** The media gap around a fault: last numbered frame before `faultAt`, first one after it that satisfies `resumed`. */
export function mediaGap(v: RecordingViewer, faultAt: number, resumed: (f: FrameRecord) => boolean = () => true): GapMeasure {
  let lastBefore: number | undefined;
  let firstAfter: number | undefined;
  for (const f of v.frames) {
    if (f.n === undefined) continue;
    if (f.at < faultAt) lastBefore = f.at;
    else if (firstAfter === undefined && resumed(f)) firstAfter = f.at;
  }
  return { lastBefore, firstAfter, gapMs: lastBefore !== undefined && firstAfter !== undefined ? firstAfter - lastBefore : undefined };
}

export interface InterleaveCheck {
  /** Frames of a publisher received after the first frame of a later publisher (a newer epoch). */
  violations: number;
  /** Publishers this viewer got frames of. */
  publishers: number;
  /** Numbered video frames that carried no publisher stamp (the check cannot judge them). */
  unstamped: number;
  /** Stamped frames of a publisher not in the given epoch order (the check cannot place them). */
  unknown: number;
  first?: string;
}

/**
 * Media-level "one source at a time": after the first frame of publisher B a viewer must never
 * receive a frame of a publisher A that comes before B (A's frames interleaved with B's would be
 * two sources feeding one stream). With `epochs`, the publishers' ids in the order they took the
 * stream (one ownership epoch each), "before" is that order: a frame of an older epoch after one of
 * a newer epoch is a violation even if the viewer had not seen the older one yet. Without it, the
 * order is the one in which the viewer first saw them.
 */
export function interleaving(v: Pick<RecordingViewer, 'frames'>, epochs?: readonly number[]): InterleaveCheck {
  const order = new Map<number, number>(epochs?.map((id, i) => [id, i]));
  const seen = new Set<number>();
  let newest = -1;
  let violations = 0;
  let unstamped = 0;
  let unknown = 0;
  let first: string | undefined;
  for (const f of v.frames) {
    if (f.n === undefined) continue;
    if (f.pub === undefined) {
      unstamped++;
      continue;
    }
    let rank = order.get(f.pub);
    if (rank === undefined) {
      if (epochs) {
        unknown++;
        continue;
      }
      rank = order.size;
      order.set(f.pub, rank);
    }
    seen.add(f.pub);
    if (rank < newest) {
      violations++;
      first ??= `frame ${f.n} of ${epochs ? 'epoch' : 'publisher'} #${rank + 1} after ${epochs ? 'epoch' : 'publisher'} #${newest + 1} had started`;
    }
    newest = Math.max(newest, rank);
  }
  return { violations, publishers: seen.size, unstamped, unknown, ...(first ? { first } : {}) };
}

/** Interleave violations summed over viewers, with the first one seen (for rows and failure messages). */
export function interleavingAll(
  viewers: ReadonlyArray<Pick<RecordingViewer, 'frames' | 'label'>>,
  epochs?: readonly number[],
): { violations: number; unstamped: number; unknown: number; perViewer: number[]; first?: string } {
  const checks = viewers.map((v) => ({ v, c: interleaving(v, epochs) }));
  const bad = checks.find((x) => x.c.first !== undefined);
  return {
    violations: checks.reduce((s, x) => s + x.c.violations, 0),
    unstamped: checks.reduce((s, x) => s + x.c.unstamped, 0),
    unknown: checks.reduce((s, x) => s + x.c.unknown, 0),
    perViewer: checks.map((x) => x.c.violations),
    ...(bad ? { first: `${bad.v.label}: ${bad.c.first}` } : {}),
  };
}

export interface MonotonicCheck {
  ok: boolean;
  violations: number;
  first?: string;
}

/** Audio and video timestamps never go backwards (metadata is stamped 0 by design and is skipped). */
export function monotonic(v: RecordingViewer): MonotonicCheck {
  let prev: number | undefined;
  let violations = 0;
  let first: string | undefined;
  for (const f of v.frames) {
    if (f.type === 18) continue;
    if (prev !== undefined && f.timestamp < prev) {
      violations++;
      first ??= `${prev} → ${f.timestamp}`;
    }
    prev = f.timestamp;
  }
  return { ok: violations === 0, violations, ...(first ? { first } : {}) };
}

/**
 * After the fault, every discontinuity in the frame numbering (a frame whose predecessor was
 * not received: frames were skipped, or a new publisher's numbering starts) is a keyframe, so a
 * decoder never gets a frame whose references it lacks. Sequence headers may come first.
 * True when there was no discontinuity.
 */
export function resumesOnKeyframe(v: RecordingViewer, faultAt: number): boolean {
  let prev: number | undefined;
  for (const f of v.frames) {
    if (f.type !== 9 || f.seqHeader || f.n === undefined) continue;
    if (f.at >= faultAt && prev !== undefined && f.n !== prev + 1 && !f.key) return false;
    prev = f.n;
  }
  return true;
}

/**
 * Largest wall-clock gap between consecutive numbered video frames within [from, to], counting
 * the silences at both edges (from `from` to the first frame, from the last frame to `to`), so a
 * viewer that stopped receiving shows the whole silence.
 */
export function maxInterFrameGap(v: RecordingViewer, from: number, to: number): number {
  // A viewer that started playing inside the window is judged from its first frame.
  let prev = v.firstFrameAt !== undefined ? Math.max(from, v.firstFrameAt) : from;
  let max = 0;
  for (const f of v.frames) {
    if (f.n === undefined || f.at < from || f.at > to) continue;
    max = Math.max(max, f.at - prev);
    prev = f.at;
  }
  return Math.max(max, to - prev);
}

/** Frame numbers received in [from, to] that repeat or skip: a glitch-free viewer has none. */
export function numberingHoles(v: RecordingViewer, from: number, to: number): { skipped: number; repeated: number } {
  let prev: number | undefined;
  let skipped = 0;
  let repeated = 0;
  for (const f of v.frames) {
    if (f.n === undefined || f.at < from || f.at > to) continue;
    if (prev !== undefined) {
      if (f.n <= prev) repeated++;
      else if (f.n > prev + 1) skipped += f.n - prev - 1;
    }
    prev = f.n;
  }
  return { skipped, repeated };
}

export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

export function max(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : Math.max(...xs);
}

/** Compact dump of the video frames a viewer received around `t` (for failure messages). */
export function framesAround(v: RecordingViewer, t: number, beforeMs = 150, count = 10): string {
  return v.frames
    .filter((f) => f.type === 9 && f.at >= t - beforeMs)
    .slice(0, count)
    .map((f) => `${f.seqHeader ? 'SH' : f.key ? 'K' : 'P'}${f.n ?? ''}@${f.at - t}ms/ts${f.timestamp}`)
    .join(' ');
}
