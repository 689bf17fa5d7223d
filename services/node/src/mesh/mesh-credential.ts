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
 *
 * A pull credential is also bound to the node it is shown to (`to`), valid for
 * {@link PULL_CREDENTIAL_WINDOW_MS} only, and used once: it carries a random nonce that the
 * target remembers until the credential expires ({@link NonceMemory}, bounded). A captured one
 * cannot be replayed, shown to another node, or used after those seconds; and the RTMP
 * connection it opens plays one stream, once (rtmp-session.ts).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

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

/** A relay's pull credential names, besides the stream epoch, the node it is for and a one-time nonce. */
interface PullBinding {
  to: string;
  nonce: string;
}

export interface MeshCredential extends Partial<MeshPull>, Partial<PullBinding> {
  node: string;
  ts: number;
  sig: string;
}

/** How far a node credential's clock may be from ours (a dashboard's peer request; covers skew). */
export const CREDENTIAL_WINDOW_MS = 60_000;
/** How long a relay's pull credential is good for (skew and one connect; each pull signs a new one). */
export const PULL_CREDENTIAL_WINDOW_MS = 10_000;

function signed(node: string, ts: number, p: (MeshPull & PullBinding) | undefined): string {
  // Newline-separated: node ids, names and numbers never contain a newline (names with control characters are refused).
  return p ? `${node}\n${ts}\n${p.app}\n${p.stream}\n${p.owner}\n${p.epoch}\n${p.to}\n${p.nonce}` : `${node}\n${ts}`;
}

/** A node credential, or with `pull` a relay's pull credential for node `pull.to` (with a fresh nonce). */
export function signCredential(secret: string, node: string, pull?: MeshPull & { to: string }, now = Date.now()): MeshCredential {
  const p = pull && { app: pull.app, stream: pull.stream, owner: pull.owner, epoch: pull.epoch, to: pull.to, nonce: randomBytes(12).toString('hex') };
  return { node, ts: now, ...p, sig: createHmac('sha256', secret).update(signed(node, now, p)).digest('hex') };
}

/** `pull` is set when the credential is a relay's pull credential. */
export type CredentialCheck = { ok: true; node: string; pull?: MeshPull } | { ok: false; reason: string };

/**
 * Nonces of pull credentials already used, each until its credential expires. Bounded: past `max`
 * the oldest is forgotten (only credentials with a valid signature get here, so only mesh nodes fill it).
 */
export class NonceMemory {
  readonly #used = new Map<string, number>();
  constructor(readonly max = 65_536) {}
  /** False when `nonce` was used before. */
  use(nonce: string, expiresAt: number, now: number): boolean {
    for (const [k, exp] of this.#used) {
      if (exp > now && this.#used.size < this.max) break;
      this.#used.delete(k);
    }
    if (this.#used.has(nonce)) return false;
    this.#used.set(nonce, expiresAt);
    return true;
  }
  get size(): number {
    return this.#used.size;
  }
}

export interface VerifyContext {
  /** This node's id: a pull credential must name it. */
  self?: string;
  /** Where this node remembers used nonces; a pull credential is refused without one. */
  nonces?: NonceMemory;
  now?: number;
}

export function verifyCredential(secret: string, value: unknown, ctx: VerifyContext = {}): CredentialCheck {
  const now = ctx.now ?? Date.now();
  if (!secret) return { ok: false, reason: 'this node has no mesh secret configured' };
  if (typeof value !== 'object' || value === null) return { ok: false, reason: 'no mesh credential' };
  const { node, ts, sig, app, stream, owner, epoch, to, nonce } = value as Partial<MeshCredential>;
  if (typeof node !== 'string' || typeof ts !== 'number' || typeof sig !== 'string') return { ok: false, reason: 'malformed mesh credential' };
  const anyPull = app !== undefined || stream !== undefined || owner !== undefined || epoch !== undefined || to !== undefined || nonce !== undefined;
  if (
    anyPull &&
    (typeof app !== 'string' || typeof stream !== 'string' || typeof owner !== 'string' || typeof epoch !== 'number' || !Number.isSafeInteger(epoch) || typeof to !== 'string' || typeof nonce !== 'string' || nonce.length > 64)
  ) {
    return { ok: false, reason: 'malformed mesh credential (stream epoch, target node and nonce)' };
  }
  const windowMs = anyPull ? PULL_CREDENTIAL_WINDOW_MS : CREDENTIAL_WINDOW_MS;
  if (Math.abs(now - ts) > windowMs) return { ok: false, reason: 'mesh credential expired' };
  const pull = anyPull ? { app: app!, stream: stream!, owner: owner!, epoch: epoch!, to: to!, nonce: nonce! } : undefined;
  const want = createHmac('sha256', secret).update(signed(node, ts, pull)).digest();
  const got = Buffer.from(sig, 'hex');
  if (got.length !== want.length || !timingSafeEqual(got, want)) return { ok: false, reason: 'bad mesh credential signature' };
  if (!pull) return { ok: true, node };
  if (ctx.self === undefined || pull.to !== ctx.self) return { ok: false, reason: `mesh credential is for node ${pull.to}, not this one` };
  if (!ctx.nonces || !ctx.nonces.use(pull.nonce, ts + windowMs, now)) return { ok: false, reason: 'mesh credential already used' };
  return { ok: true, node, pull: { app: pull.app, stream: pull.stream, owner: pull.owner, epoch: pull.epoch } };
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
