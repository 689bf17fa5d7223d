/**
 * Signed, expiring publish/play tokens: `?exp=<unix seconds>&sig=<hex>` where
 *
 *   sig = hex(HMAC-SHA256(secret, "<action>:<app>/<stream>:<exp>"))
 *
 * A token names its action, app and stream, so a play token cannot publish and a token for
 * one stream opens no other. `mintToken` is what `meshctl token` calls.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { AuthAction, AuthDecision } from './authorizer.ts';

export interface MintTokenInput {
  secret: string;
  action: AuthAction;
  app: string;
  stream: string;
  /** How long the token is valid from `now`. */
  ttlSeconds: number;
  /** Unix time in ms to count from (default Date.now()); for tests and pre-minting. */
  now?: number;
}

export interface MintedToken {
  exp: number;
  sig: string;
  /** `exp=…&sig=…`, ready to append after `?` or `&`. */
  query: string;
}

/** The exact text that is signed. */
export function tokenPayload(action: AuthAction, app: string, stream: string, exp: number): string {
  return `${action}:${app}/${stream}:${exp}`;
}

export function signToken(secret: string, action: AuthAction, app: string, stream: string, exp: number): string {
  return createHmac('sha256', secret).update(tokenPayload(action, app, stream, exp)).digest('hex');
}

export function mintToken(input: MintTokenInput): MintedToken {
  if (!input.secret) throw new TypeError('mintToken: secret is empty');
  if (input.action !== 'publish' && input.action !== 'play') throw new TypeError(`mintToken: action must be "publish" or "play", got ${JSON.stringify(input.action)}`);
  if (!input.app || !input.stream) throw new TypeError('mintToken: app and stream are required');
  if (!Number.isFinite(input.ttlSeconds) || input.ttlSeconds <= 0) throw new TypeError('mintToken: ttlSeconds must be a positive number');
  const exp = Math.floor((input.now ?? Date.now()) / 1000) + Math.ceil(input.ttlSeconds);
  const sig = signToken(input.secret, input.action, input.app, input.stream, exp);
  return { exp, sig, query: `exp=${exp}&sig=${sig}` };
}

/** Checks `exp`/`sig` from a request's parameters. `now` in ms. */
export function verifyToken(
  secret: string,
  action: AuthAction,
  app: string,
  stream: string,
  params: URLSearchParams,
  now = Date.now(),
): AuthDecision {
  const expRaw = params.get('exp');
  const sig = params.get('sig');
  if (expRaw === null || sig === null) return { ok: false, reason: 'signed token missing (need ?exp=…&sig=…)' };
  if (!/^\d{1,12}$/.test(expRaw)) return { ok: false, reason: 'signed token malformed: exp is not a unix time in seconds' };
  if (!/^[0-9a-fA-F]{64}$/.test(sig)) return { ok: false, reason: 'signed token malformed: sig is not 64 hex digits' };
  const exp = Number(expRaw);
  const expected = Buffer.from(signToken(secret, action, app, stream, exp), 'hex');
  // Checked before expiry so a forged token learns nothing about timing or validity windows.
  if (!timingSafeEqual(expected, Buffer.from(sig, 'hex'))) return { ok: false, reason: `signed token invalid for ${action} ${app}/${stream}` };
  const nowS = Math.floor(now / 1000);
  if (exp < nowS) return { ok: false, reason: `signed token expired ${nowS - exp} s ago (exp ${exp})` };
  // Valid through the whole second `exp`, as the check above reads it.
  return { ok: true, validUntil: (exp + 1) * 1000 };
}
