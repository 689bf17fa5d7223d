/**
 * Inter-node pulls authenticate with an HMAC of (node id, time) under the shared mesh
 * secret, carried in the RTMP connect command. Only a peer that knows the secret can pose
 * as a relay, and a captured credential is only good for a short window.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export interface MeshCredential {
  node: string;
  ts: number;
  sig: string;
}

/** How far a credential's clock may be from ours (covers skew and a slow connect). */
export const CREDENTIAL_WINDOW_MS = 60_000;

export function signCredential(secret: string, node: string, now = Date.now()): MeshCredential {
  return { node, ts: now, sig: createHmac('sha256', secret).update(`${node}\n${now}`).digest('hex') };
}

export type CredentialCheck = { ok: true; node: string } | { ok: false; reason: string };

export function verifyCredential(secret: string, value: unknown, now = Date.now()): CredentialCheck {
  if (!secret) return { ok: false, reason: 'this node has no mesh secret configured' };
  if (typeof value !== 'object' || value === null) return { ok: false, reason: 'no mesh credential' };
  const { node, ts, sig } = value as Partial<MeshCredential>;
  if (typeof node !== 'string' || typeof ts !== 'number' || typeof sig !== 'string') return { ok: false, reason: 'malformed mesh credential' };
  if (Math.abs(now - ts) > CREDENTIAL_WINDOW_MS) return { ok: false, reason: 'mesh credential expired' };
  const want = createHmac('sha256', secret).update(`${node}\n${ts}`).digest();
  const got = Buffer.from(sig, 'hex');
  if (got.length !== want.length || !timingSafeEqual(got, want)) return { ok: false, reason: 'bad mesh credential signature' };
  return { ok: true, node };
}
