/**
 * Retry pacing shared by every retry loop of a node (relay pulls, claims, ownership confirms).
 *
 * `Backoff` spaces the retries of one failing operation: exponential growth with decorrelated
 * jitter (each delay drawn uniformly from [base, 3 × previous delay], capped), so a hundred
 * relays that lost the same parent at the same instant do not retry it in lockstep, and a
 * parent that keeps refusing is asked less and less often. A success resets it.
 *
 * `FailureLogLimiter` decides how loudly to log the failures of such a loop: the first failure
 * of a streak at warn, then at most one warn line per interval carrying the count of failures
 * logged at debug in between, so a retry loop that fails for an hour writes a line every 30 s
 * rather than one per attempt. Both take their randomness and clock by injection (unit tests).
 */

export interface BackoffOptions {
  /** Smallest delay, and the first one's lower bound (ms). */
  baseMs?: number;
  /** Largest delay (ms). */
  capMs?: number;
  /** Uniform in [0, 1). */
  random?: () => number;
}

export const DEFAULT_BACKOFF_BASE_MS = 250;
export const DEFAULT_BACKOFF_CAP_MS = 5000;

export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  readonly #random: () => number;
  #prev: number;
  #failures = 0;

  constructor(opts: BackoffOptions = {}) {
    this.baseMs = opts.baseMs ?? DEFAULT_BACKOFF_BASE_MS;
    this.capMs = opts.capMs ?? DEFAULT_BACKOFF_CAP_MS;
    if (!(this.baseMs > 0) || !(this.capMs >= this.baseMs)) throw new RangeError(`backoff needs 0 < baseMs ≤ capMs (got ${this.baseMs}, ${this.capMs})`);
    this.#random = opts.random ?? Math.random;
    this.#prev = this.baseMs;
  }

  /** Failures since the last success (or since creation). */
  get failures(): number {
    return this.#failures;
  }

  /** Records a failure and returns how long to wait before the next attempt (ms). */
  next(): number {
    this.#failures++;
    const hi = Math.min(this.capMs, this.#prev * 3);
    const d = Math.min(this.capMs, Math.round(this.baseMs + this.#random() * (hi - this.baseMs)));
    this.#prev = d;
    return d;
  }

  /** The operation succeeded: the next failure starts again from the base delay. */
  reset(): void {
    this.#prev = this.baseMs;
    this.#failures = 0;
  }
}

export interface FailureLogOptions {
  /** At most one warn line per this interval during a streak of failures (ms). */
  intervalMs?: number;
  now?: () => number;
}

export const DEFAULT_FAILURE_LOG_INTERVAL_MS = 30_000;

export interface FailureLogDecision {
  level: 'warn' | 'debug';
  /** On a warn line: failures logged at debug since the previous warn line of this streak. */
  suppressed: number;
  /** Failures in this streak, this one included. */
  streak: number;
}

export class FailureLogLimiter {
  readonly intervalMs: number;
  readonly #now: () => number;
  #streak = 0;
  #suppressed = 0;
  #lastWarnAt = 0;

  constructor(opts: FailureLogOptions = {}) {
    this.intervalMs = opts.intervalMs ?? DEFAULT_FAILURE_LOG_INTERVAL_MS;
    this.#now = opts.now ?? Date.now;
  }

  /** One more failure: how to log it. */
  failure(): FailureLogDecision {
    this.#streak++;
    const now = this.#now();
    if (this.#streak === 1 || now - this.#lastWarnAt >= this.intervalMs) {
      const suppressed = this.#suppressed;
      this.#suppressed = 0;
      this.#lastWarnAt = now;
      return { level: 'warn', suppressed, streak: this.#streak };
    }
    this.#suppressed++;
    return { level: 'debug', suppressed: 0, streak: this.#streak };
  }

  /** The operation succeeded: returns the length of the streak it ended (0 when there was none). */
  success(): number {
    const streak = this.#streak;
    this.#streak = 0;
    this.#suppressed = 0;
    return streak;
  }
}
