import pino from 'pino';
import type { Logger } from '../src/log.ts';

export interface CapturedLogger {
  logger: Logger;
  lines: Record<string, unknown>[];
  matching(re: RegExp): Record<string, unknown>[];
}

/** A pino logger whose JSON lines are kept in memory for assertions. */
export function captureLogger(level: pino.Level = 'debug'): CapturedLogger {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return {
    logger,
    lines,
    matching: (re) => lines.filter((l) => re.test(JSON.stringify(l))),
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `cond` until true or throw after `timeoutMs`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 3000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

export const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
export const dec = (b: Uint8Array): string => new TextDecoder().decode(b);
