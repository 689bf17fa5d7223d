/**
 * A lease on one KV key, kept alive by compare-and-set renewals (docs/design.md).
 * Shared by stream ownership and relay claims.
 *
 * - Renewal: every `renewMs`, `update(key, value, lastRevision)`; after a
 *   failed attempt (bus down, JetStream electing a stream leader) it retries
 *   every `min(500, renewMs/4)` ms until acknowledged or fenced.
 * - Lost, and `onLost` fires once, at once, when:
 *   - `CAS_FAILED`: a renewal/update found another revision (someone wrote the key);
 *   - `SUPERSEDED`: the bucket watch shows a newer revision that is not ours;
 *   - `DELETED`: the watch shows a delete/purge we did not make;
 *   - `EXPIRED_LOCALLY`: no renewal was acknowledged for `maxAgeMs` since the
 *     SEND time of the last acknowledged one. The server stamps a write after
 *     we send it, so by then the server (max age) or any peer (staleness
 *     check on the stamp) may already treat the key as free: we fence
 *     ourselves no later than anybody else may take over (clock skew aside).
 * - `release()`: stop renewing and delete the key if it is still at our revision.
 */
import type { KvBucket, KvEntry } from './bus.ts';
import { KvRevisionMismatchError, LeaseLostError } from './errors.ts';
import { errMessage, type Logger } from './log.ts';

export type LeaseLostCode = 'CAS_FAILED' | 'SUPERSEDED' | 'DELETED' | 'EXPIRED_LOCALLY';

export interface LeaseLostReason {
  code: LeaseLostCode;
  message: string;
  /** The revision that replaced ours, when known. */
  revision?: number;
}

export interface KvLeaseParams<T> {
  bucket: KvBucket;
  key: string;
  value: T;
  revision: number;
  /** Local time the acquiring write was sent. */
  sentAt: number;
  renewMs: number;
  maxAgeMs: number;
  encode: (v: T) => Uint8Array;
  /** The value to write on a renewal. */
  renewed: (v: T) => T;
  /** True when a watched PUT value is one of our own writes (acknowledgement not yet seen). */
  isOwn: (raw: Uint8Array) => boolean;
  log: Logger;
  now: () => number;
  /** Called when the lease ends (lost or released) so the owner can drop it from its index. */
  onEnd: () => void;
}

export class KvLease<T> {
  readonly key: string;
  readonly acquiredRevision: number;
  #value: T;
  #revision: number;
  #lastAckSentAt: number;
  #lost: LeaseLostReason | undefined;
  #released = false;
  #renewTimer: NodeJS.Timeout | undefined;
  #fenceTimer: NodeJS.Timeout | undefined;
  #chain: Promise<unknown> = Promise.resolve();
  #failures = 0;
  readonly #lostCbs: ((r: LeaseLostReason) => void)[] = [];
  readonly #p: KvLeaseParams<T>;

  constructor(p: KvLeaseParams<T>) {
    this.#p = p;
    this.key = p.key;
    this.#value = p.value;
    this.#revision = p.revision;
    this.acquiredRevision = p.revision;
    this.#lastAckSentAt = p.sentAt;
    this.#armFence();
    this.#scheduleRenew();
  }

  get value(): T {
    return this.#value;
  }
  /** Latest revision we wrote (changes on every renewal). */
  get revision(): number {
    return this.#revision;
  }
  get lost(): LeaseLostReason | undefined {
    return this.#lost;
  }
  get held(): boolean {
    return !this.#lost && !this.#released;
  }

  onLost(cb: (r: LeaseLostReason) => void): void {
    if (this.#lost) {
      const r = this.#lost;
      queueMicrotask(() => cb(r));
      return;
    }
    if (!this.#released) this.#lostCbs.push(cb);
  }

  /** Write a new value now (CAS). Throws LeaseLostError if the lease is gone or the CAS fails. */
  update(mutate: (v: T) => T): Promise<void> {
    const p = this.#chain.then(async () => {
      await this.#write(mutate, true);
    });
    this.#chain = p.catch(() => undefined);
    return p;
  }

  /** Stop renewing; delete the key if it is still ours. Never throws. */
  async release(): Promise<void> {
    if (this.#released) return;
    const wasHeld = !this.#lost;
    this.#released = true;
    this.#clearTimers();
    this.#lostCbs.length = 0;
    await this.#chain;
    this.#p.onEnd();
    if (!wasHeld) return;
    try {
      await this.#p.bucket.delete(this.key, { revision: this.#revision });
    } catch (err) {
      this.#p.log.debug({ key: this.key, err: errMessage(err) }, 'lease release: key not deleted (taken over, or bus down: it expires by max age)');
    }
  }

  /** Feed entries of this key from the bucket watch. */
  observe(e: KvEntry): void {
    if (!this.held || e.key !== this.key || e.revision <= this.#revision) return;
    if (e.operation === 'PUT') {
      if (this.#p.isOwn(e.value)) return; // our write, its ack is on its way
      this.lose({ code: 'SUPERSEDED', message: `key ${this.key} was written by someone else (revision ${e.revision})`, revision: e.revision });
    } else {
      this.lose({ code: 'DELETED', message: `key ${this.key} was deleted by someone else (revision ${e.revision})`, revision: e.revision });
    }
  }

  /** An unverifiable value replaced ours (seen by a sealed bucket's watch): renew now, which writes ours back over it. */
  restoreNow(): void {
    if (!this.held) return;
    clearTimeout(this.#renewTimer);
    this.#scheduleRenew(0);
  }

  lose(r: LeaseLostReason): void {
    if (!this.held) return;
    this.#lost = r;
    this.#clearTimers();
    this.#p.log.warn({ key: this.key, code: r.code, reason: r.message }, 'lease lost');
    this.#p.onEnd();
    for (const cb of this.#lostCbs.splice(0)) {
      try {
        cb(r);
      } catch (err) {
        this.#p.log.error({ key: this.key, err: errMessage(err) }, 'onLost callback threw');
      }
    }
  }

  #clearTimers(): void {
    clearTimeout(this.#renewTimer);
    clearTimeout(this.#fenceTimer);
    this.#renewTimer = undefined;
    this.#fenceTimer = undefined;
  }

  #armFence(): void {
    clearTimeout(this.#fenceTimer);
    const due = this.#lastAckSentAt + this.#p.maxAgeMs - this.#p.now();
    this.#fenceTimer = setTimeout(() => {
      if (this.#p.now() - this.#lastAckSentAt >= this.#p.maxAgeMs) {
        this.lose({
          code: 'EXPIRED_LOCALLY',
          message: `no renewal of ${this.key} acknowledged for ${this.#p.maxAgeMs} ms (bus down or slow)`,
        });
      } else {
        this.#armFence();
      }
    }, Math.max(0, due));
    this.#fenceTimer.unref();
  }

  /** Renew every `renewMs`; after a failed attempt (bus down, no stream leader) retry sooner. */
  #scheduleRenew(delay = this.#p.renewMs): void {
    if (!this.held) return;
    this.#renewTimer = setTimeout(() => {
      let ok = false;
      this.#chain = this.#chain
        .then(async () => {
          ok = await this.#write((v) => this.#p.renewed(v), false);
        })
        .catch(() => undefined)
        .finally(() => this.#scheduleRenew(ok ? this.#p.renewMs : this.#retryMs()));
    }, delay);
    this.#renewTimer.unref();
  }

  #retryMs(): number {
    return Math.max(50, Math.min(500, Math.floor(this.#p.renewMs / 4)));
  }

  /** One CAS write; true when acknowledged. */
  async #write(mutate: (v: T) => T, throwing: boolean): Promise<boolean> {
    if (!this.held) {
      if (throwing) throw new LeaseLostError(`lease on ${this.key} is no longer held${this.#lost ? `: ${this.#lost.message}` : ''}`);
      return false;
    }
    const next = mutate(this.#value);
    const sentAt = this.#p.now();
    let rev: number;
    try {
      // overUntrusted: a value someone wrote without the mesh secret (a sealed bus cannot verify it) is no
      // owner's; our record goes back over it and the lease stays held (sealed-bus.ts).
      rev = await this.#p.bucket.update(this.key, this.#p.encode(next), this.#revision, {
        timeoutMs: Math.max(500, Math.min(2000, this.#p.renewMs)),
        overUntrusted: true,
      });
    } catch (err) {
      if (err instanceof KvRevisionMismatchError) {
        this.lose({ code: 'CAS_FAILED', message: `compare-and-set on ${this.key} at revision ${this.#revision} failed` });
        if (throwing) throw new LeaseLostError(`lease on ${this.key} lost: compare-and-set failed`);
        return false;
      }
      this.#failures++;
      if (this.#failures === 1 || this.#failures % 20 === 0) {
        this.#p.log.warn({ key: this.key, err: errMessage(err), failures: this.#failures }, 'lease renewal failed; retrying');
      }
      if (throwing) throw err;
      return false;
    }
    if (!this.held) {
      // fenced while the write was in flight: do not leave a fresh record behind
      if (!this.#released) void this.#p.bucket.delete(this.key, { revision: rev }).catch(() => undefined);
      return false;
    }
    if (this.#failures > 0) this.#p.log.info({ key: this.key, failures: this.#failures }, 'lease renewal recovered');
    this.#failures = 0;
    this.#revision = rev;
    this.#value = next;
    if (sentAt > this.#lastAckSentAt) {
      this.#lastAckSentAt = sentAt;
      this.#armFence();
    }
    return true;
  }
}
