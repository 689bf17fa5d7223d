/**
 * PeerLogLimiter: bounds the log lines one peer's bad input can cause. A peer that sends
 * 200,000 malformed messages must not write 200,000 warn lines (tens of MB, seconds of CPU
 * in the logger). Each peer (an address) gets `burst` lines per `intervalMs`; the rest are
 * dropped and counted, and the next line written for that peer carries the count ("dropped N
 * more"). The table of peers is bounded: past `maxPeers` the least recently seen is forgotten.
 * The clock is injected (unit tests).
 */

export interface PeerLogOptions {
  /** Length of one window (ms). */
  intervalMs?: number;
  /** Lines per peer per window. */
  burst?: number;
  /** Peers remembered at once. */
  maxPeers?: number;
  now?: () => number;
}

export const DEFAULT_PEER_LOG_INTERVAL_MS = 10_000;
export const DEFAULT_PEER_LOG_BURST = 5;
export const DEFAULT_PEER_LOG_MAX_PEERS = 4096;

interface PeerWindow {
  startedAt: number;
  written: number;
  dropped: number;
}

export class PeerLogLimiter {
  readonly intervalMs: number;
  readonly burst: number;
  readonly maxPeers: number;
  readonly #now: () => number;
  readonly #peers = new Map<string, PeerWindow>();

  constructor(opts: PeerLogOptions = {}) {
    this.intervalMs = opts.intervalMs ?? DEFAULT_PEER_LOG_INTERVAL_MS;
    this.burst = opts.burst ?? DEFAULT_PEER_LOG_BURST;
    this.maxPeers = opts.maxPeers ?? DEFAULT_PEER_LOG_MAX_PEERS;
    if (!(this.intervalMs > 0) || !(this.burst >= 1) || !(this.maxPeers >= 1)) {
      throw new RangeError(`peer log limiter needs intervalMs > 0, burst ≥ 1, maxPeers ≥ 1 (got ${this.intervalMs}, ${this.burst}, ${this.maxPeers})`);
    }
    this.#now = opts.now ?? Date.now;
  }

  /**
   * One line caused by `peer`: undefined means drop it; otherwise write it, with `dropped`
   * (lines of this peer dropped since its previous written line) when that is not zero.
   */
  admit(peer: string): { dropped: number } | undefined {
    const now = this.#now();
    let w = this.#peers.get(peer);
    if (w === undefined) {
      if (this.#peers.size >= this.maxPeers) this.#peers.delete(this.#peers.keys().next().value!);
      w = { startedAt: now, written: 0, dropped: 0 };
    } else {
      // Re-insert: Map order is then least recently seen first.
      this.#peers.delete(peer);
    }
    this.#peers.set(peer, w);
    if (now - w.startedAt >= this.intervalMs) {
      w.startedAt = now;
      w.written = 0;
    }
    if (w.written >= this.burst) {
      w.dropped++;
      return undefined;
    }
    w.written++;
    const dropped = w.dropped;
    w.dropped = 0;
    return { dropped };
  }

  /** Lines of `peer` dropped and not yet reported (for a summary when the peer leaves). */
  pending(peer: string): number {
    return this.#peers.get(peer)?.dropped ?? 0;
  }
}
