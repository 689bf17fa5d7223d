/**
 * Inter-node requests authenticate with an HMAC under the shared mesh secret: a relay's pull
 * carries it in the RTMP connect command, a dashboard in an HTTP header. Only a peer that knows
 * the secret can pose as a mesh node, and a captured credential is only good for a short window.
 *
 * A relay's credential also names what it means to pull: the stream and the ownership epoch it
 * expects (the owner node and the epoch of its lease, as the ownership record showed them). Both
 * are under the signature, so a pull cannot be re-aimed at another stream or epoch, and a plain
 * node credential (the dashboard's) is no pull credential. The parent checks that epoch against
 * what it serves (see `epochRefusal`): a node that no longer owns that epoch, or relays another
 * one, refuses the pull.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** One ownership epoch of a stream: the owner node and the epoch of its lease. Epochs restart at 1 after a key expired, so the owner is part of it. */
export interface StreamEpoch {
  owner: string;
  epoch: number;
}

/** What a relay asks of its parent: this stream, as published under this epoch. */
export interface MeshPull extends StreamEpoch {
  app: string;
  stream: string;
}

export interface MeshCredential extends Partial<MeshPull> {
  node: string;
  ts: number;
  sig: string;
}

/** How far a credential's clock may be from ours (covers skew and a slow connect). */
export const CREDENTIAL_WINDOW_MS = 60_000;

function signed(node: string, ts: number, p: MeshPull | undefined): string {
  // Newline-separated: node ids, names and numbers never contain a newline (names with control characters are refused).
  return p ? `${node}\n${ts}\n${p.app}\n${p.stream}\n${p.owner}\n${p.epoch}` : `${node}\n${ts}`;
}

/** A node credential, or with `pull` a relay's pull credential. */
export function signCredential(secret: string, node: string, pull?: MeshPull, now = Date.now()): MeshCredential {
  const p: MeshPull | undefined = pull && { app: pull.app, stream: pull.stream, owner: pull.owner, epoch: pull.epoch };
  return { node, ts: now, ...p, sig: createHmac('sha256', secret).update(signed(node, now, p)).digest('hex') };
}

/** `pull` is set when the credential is a relay's pull credential. */
export type CredentialCheck = { ok: true; node: string; pull?: MeshPull } | { ok: false; reason: string };

export function verifyCredential(secret: string, value: unknown, now = Date.now()): CredentialCheck {
  if (!secret) return { ok: false, reason: 'this node has no mesh secret configured' };
  if (typeof value !== 'object' || value === null) return { ok: false, reason: 'no mesh credential' };
  const { node, ts, sig, app, stream, owner, epoch } = value as Partial<MeshCredential>;
  if (typeof node !== 'string' || typeof ts !== 'number' || typeof sig !== 'string') return { ok: false, reason: 'malformed mesh credential' };
  const anyPull = app !== undefined || stream !== undefined || owner !== undefined || epoch !== undefined;
  if (anyPull && (typeof app !== 'string' || typeof stream !== 'string' || typeof owner !== 'string' || typeof epoch !== 'number' || !Number.isSafeInteger(epoch))) {
    return { ok: false, reason: 'malformed mesh credential (stream epoch)' };
  }
  if (Math.abs(now - ts) > CREDENTIAL_WINDOW_MS) return { ok: false, reason: 'mesh credential expired' };
  const pull: MeshPull | undefined = anyPull ? { app: app!, stream: stream!, owner: owner!, epoch: epoch! } : undefined;
  const want = createHmac('sha256', secret).update(signed(node, ts, pull)).digest();
  const got = Buffer.from(sig, 'hex');
  if (got.length !== want.length || !timingSafeEqual(got, want)) return { ok: false, reason: 'bad mesh credential signature' };
  return pull ? { ok: true, node, pull } : { ok: true, node };
}

export function sameEpoch(a: StreamEpoch | undefined, b: StreamEpoch | undefined): boolean {
  return a !== undefined && b !== undefined && a.owner === b.owner && a.epoch === b.epoch;
}

export function describeEpoch(e: StreamEpoch): string {
  return `epoch ${e.epoch} of ${e.owner}`;
}

/**
 * The onStatus code of a pull refused (or a running pull closed) by the epoch fence. The
 * relay that gets it re-reads the owner record and pulls again; RTMP is the only protocol
 * relays pull over, so this is the refusal's only mapping.
 */
export const EPOCH_FENCE_CODE = 'NetStream.Play.EpochMismatch';

/** Why a parent will not serve a pull's epoch. */
export type EpochFence =
  /** A node credential without a stream epoch: not a relay's pull credential. */
  | { kind: 'no-epoch' }
  /** This node serves another epoch of the stream (it owns or relays a newer or older one). */
  | { kind: 'other-epoch'; asked: StreamEpoch; serving: StreamEpoch }
  /** This node neither owns nor relays the stream (e.g. it lost its lease and has no relay yet). */
  | { kind: 'not-serving'; asked: StreamEpoch }
  /** The credential was made for another stream than the one played. */
  | { kind: 'other-stream'; asked: MeshPull };

/** The one wording of an epoch-fence refusal, as the RTMP status the relay receives. */
export function epochRefusal(node: string, app: string, stream: string, f: EpochFence): { ok: false; code: string; description: string } {
  const name = `${app}/${stream}`;
  switch (f.kind) {
    case 'no-epoch':
      return { ok: false, code: EPOCH_FENCE_CODE, description: `mesh pull of ${name} names no ownership epoch` };
    case 'other-epoch':
      return { ok: false, code: EPOCH_FENCE_CODE, description: `stale epoch: asked for ${describeEpoch(f.asked)}, node ${node} serves ${name} at ${describeEpoch(f.serving)}` };
    case 'not-serving':
      return { ok: false, code: EPOCH_FENCE_CODE, description: `stale epoch: asked for ${describeEpoch(f.asked)}, node ${node} neither owns nor relays ${name}` };
    case 'other-stream':
      return { ok: false, code: EPOCH_FENCE_CODE, description: `mesh credential is for ${f.asked.app}/${f.asked.stream}, not ${name}` };
  }
}
