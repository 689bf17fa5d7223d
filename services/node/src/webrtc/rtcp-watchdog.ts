/**
 * RtcpWatchdog: a WebRTC peer that has gone away without a word (its machine or network died,
 * a tab frozen) still holds its session until ICE consent runs out. Its receiver reports stop
 * at once, though: a browser sends RTCP for every track it receives, about once a second
 * (RFC 3550 §6.2), so silence for `timeoutMs` ends the session.
 */

/** The time and the timer the watchdog uses (injected: tests drive it by hand). */
export interface WatchdogClock {
  now(): number;
  every(ms: number, fn: () => void): { stop(): void };
}

export const SYSTEM_WATCHDOG_CLOCK: WatchdogClock = {
  now: () => Date.now(),
  every(ms, fn) {
    const t = setInterval(fn, ms);
    t.unref();
    return { stop: () => clearInterval(t) };
  },
};

export class RtcpWatchdog {
  private lastHeard = 0;
  private timer: { stop(): void } | undefined;

  /** `timeoutMs` 0 turns the watchdog off. */
  constructor(
    private readonly timeoutMs: number,
    private readonly onSilent: (silentMs: number) => void,
    private readonly clock: WatchdogClock = SYSTEM_WATCHDOG_CLOCK,
  ) {}

  /** Starts counting from now (the peer is connected: RTCP can flow). */
  start(): void {
    if (this.timeoutMs <= 0 || this.timer) return;
    this.lastHeard = this.clock.now();
    // Checked at a quarter of the timeout (at most every second), so a silent peer goes within 1.25 × timeout.
    this.timer = this.clock.every(Math.min(1000, Math.max(50, this.timeoutMs / 4)), () => this.check());
  }

  /** An RTCP packet came from the peer. */
  heard(): void {
    this.lastHeard = this.clock.now();
  }

  stop(): void {
    this.timer?.stop();
    this.timer = undefined;
  }

  private check(): void {
    const silent = this.clock.now() - this.lastHeard;
    if (silent < this.timeoutMs) return;
    this.stop();
    this.onSilent(silent);
  }
}
