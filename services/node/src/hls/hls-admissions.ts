/**
 * HlsAdmissions: the HLS viewers this node has admitted, one per stream and query string
 * (the credential: a token, a key, whatever the webhook reads). An HLS player has no
 * connection to hold, so its admission is remembered here and every playlist and segment
 * request is checked against it:
 *
 * - An admission stands until its credential lapses (a signed token's `exp`, checked on each
 *   request), or until the viewer has sent no request for `idleMs`, or until the stream's
 *   segmenter stops. Then the viewer's play has ended (on_play_done).
 * - The memory is bounded in bytes. When it is full the least recently seen viewer is
 *   forgotten (its play ends); its next request is simply admitted again. So nobody can fill
 *   it to lock others out: junk query strings only push each other out.
 *
 * Pure apart from the injected clock: the owner (HlsService) admits, this only remembers.
 */
import type { StreamRequest } from '../media/host.ts';

export interface AdmittedViewer {
  /** `app/stream`. */
  readonly stream: string;
  readonly query: string;
  /** The request that was admitted (its session id and params go into on_play_done). */
  readonly req: StreamRequest;
  readonly admittedAt: number;
  /** When the credential lapses (ms); Infinity when it does not. */
  readonly validUntil: number;
  lastSeen: number;
  /** Playlist and segment bytes sent for this viewer. */
  bytesOut: number;
  /** What this entry is counted as against the byte budget. */
  readonly cost: number;
}

export interface HlsAdmissionsOptions {
  /** Bytes of admissions remembered in all (entries are counted at their key and params sizes plus a fixed overhead). */
  maxBytes: number;
  /** A viewer with no request for this long has stopped playing. */
  idleMs: number;
}

export type AdmissionEnd = 'credential expired' | 'idle' | 'evicted' | 'stream stopped' | 'replaced';

/** Map, key and record overhead of one entry, roughly, on top of its strings. */
const ENTRY_OVERHEAD = 400;

function keyOf(stream: string, query: string): string {
  return `${stream}?${query}`;
}

export class HlsAdmissions {
  /** In least-recently-seen order: a hit moves the entry to the end. */
  private readonly entries = new Map<string, AdmittedViewer>();
  private bytes = 0;
  /** Viewers forgotten because the budget was full, since start. */
  evictions = 0;

  constructor(
    private readonly opts: HlsAdmissionsOptions,
    private readonly onEnd: (viewer: AdmittedViewer, why: AdmissionEnd) => void,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  get usedBytes(): number {
    return this.bytes;
  }

  /** The standing admission of this credential for this stream, if any (counts as a request). */
  lookup(stream: string, query: string): AdmittedViewer | undefined {
    const k = keyOf(stream, query);
    const v = this.entries.get(k);
    if (!v) return undefined;
    const now = this.now();
    if (now >= v.validUntil) {
      this.drop(k, v, 'credential expired');
      return undefined;
    }
    this.entries.delete(k);
    this.entries.set(k, v);
    v.lastSeen = now;
    return v;
  }

  /** Remembers an admission; the least recently seen ones make room. */
  add(stream: string, query: string, req: StreamRequest): AdmittedViewer {
    const k = keyOf(stream, query);
    const old = this.entries.get(k);
    if (old) this.drop(k, old, 'replaced');
    const now = this.now();
    const cost = ENTRY_OVERHEAD + 2 * (k.length + req.remote.length + req.sessionId.length);
    const v: AdmittedViewer = { stream, query, req, admittedAt: now, validUntil: req.authorizedUntil ?? Infinity, lastSeen: now, bytesOut: 0, cost };
    this.entries.set(k, v);
    this.bytes += cost;
    for (const [ok, ov] of this.entries) {
      if (this.bytes <= this.opts.maxBytes || ov === v) break;
      this.evictions++;
      this.drop(ok, ov, 'evicted');
    }
    return v;
  }

  /** Ends the viewers that have been idle too long or whose credential lapsed. */
  sweep(): void {
    const now = this.now();
    for (const [k, v] of this.entries) {
      if (now - v.lastSeen >= this.opts.idleMs) this.drop(k, v, 'idle');
      else if (now >= v.validUntil) this.drop(k, v, 'credential expired');
    }
  }

  /** Ends every viewer of a stream (its segmenter stopped). */
  endStream(stream: string, why: AdmissionEnd = 'stream stopped'): void {
    for (const [k, v] of this.entries) if (v.stream === stream) this.drop(k, v, why);
  }

  private drop(k: string, v: AdmittedViewer, why: AdmissionEnd): void {
    if (this.entries.get(k) !== v) return;
    this.entries.delete(k);
    this.bytes -= v.cost;
    this.onEnd(v, why);
  }
}
