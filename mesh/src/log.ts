import pino from 'pino';

export type Logger = pino.Logger;

/** Used when no logger is passed: mesh code never prints by itself. */
export const silentLogger: Logger = pino({ level: 'silent' });

/**
 * Logs each distinct (peer, reason) once, so a flood of garbage cannot flood
 * the log. Bounded: after `max` distinct pairs it stops remembering (and
 * stops logging new pairs, counting them instead).
 */
export class LogOnce {
  readonly #seen = new Set<string>();
  #suppressed = 0;
  constructor(
    private readonly log: Logger,
    private readonly max = 1000,
  ) {}

  warn(peer: string, reason: string, fields: Record<string, unknown>, msg: string): boolean {
    const k = `${peer}\u0000${reason}`;
    if (this.#seen.has(k)) return false;
    if (this.#seen.size >= this.max) {
      this.#suppressed++;
      return false;
    }
    this.#seen.add(k);
    this.log.warn({ peer, reason, ...fields }, msg);
    return true;
  }

  get suppressed(): number {
    return this.#suppressed;
  }
}

export function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
