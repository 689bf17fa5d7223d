/**
 * SealedBus: every mesh message, KV value and event authenticated under the mesh secret, in
 * one place — a decorator around any {@link Bus}. Whoever can publish on NATS but does not know
 * the secret can no longer forge an ownership record, a heartbeat, a `bye`, an event or an RPC.
 *
 * A seal is `MAGIC (4) | ts (8, ms, big-endian) | HMAC-SHA256 (32) | payload`. The MAC covers
 * a domain tag, the *context* and the timestamp with the payload, so a sealed value cannot be
 * moved to another subject, key, bucket or kind of use:
 * - publish/subscribe:    `msg <subject>`
 * - request:              `req <subject>`
 * - reply to a request:   `rep <request subject> <the request's MAC>` (a reply answers that request only)
 * - KV value:             `kv <bucket> <key>`
 * - event:                `evt <full subject>`
 *
 * Freshness (the replay window, {@link SEAL_WINDOW_MS} = 15 s, covering clock skew between
 * hosts and NATS): a message or request is accepted while `|now − ts| ≤ window`, and each
 * subscription remembers the MACs it accepted until they leave the window (bounded), so a
 * captured heartbeat, `bye` or RPC cannot be replayed either. A KV value or event is accepted
 * when its seal time is within the window of the server's time of the write (`createdAt`,
 * `time`): a value captured earlier and written again later is refused, and a lease renewal
 * re-seals every write. Values stay valid in the bucket for as long as the bucket keeps them.
 *
 * What fails verification is dropped: not delivered to handlers, watches and listings, and
 * `get` answers null (the key is "not trustworthy", never "owned by the forger"). Each drop is
 * logged at a bounded rate per subject or bucket (PeerLogLimiter). A lease holder can ask to
 * write over an unverifiable value (`overUntrusted` on `create`/`update`) and to be told when
 * one appears on its watch (`onUntrusted`): that is how an owner restores its own record.
 *
 * Not covered by the secret: KV deletes and purges (a delete marker has no value to seal) and
 * anything a NATS user may do besides writing (reading, flooding). NATS accounts and
 * permissions protect those (docs/security.md).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type {
  Bus,
  BusHandler,
  BusMessage,
  BusStatus,
  BusSubscription,
  EventFollower,
  EventLog,
  EventLogEntry,
  EventReadOptions,
  KvBucket,
  KvBucketOptions,
  KvEntry,
  KvWatchOptions,
  KvWriteOptions,
  RequestOptions,
} from './bus.ts';
import { KvKeyExistsError, KvRevisionMismatchError, MeshConfigError, MeshError } from './errors.ts';
import { silentLogger, type Logger } from './log.ts';
import type { MeshNames } from './names.ts';
import { PeerLogLimiter } from './peer-log.ts';

/** How far a seal's time may be from the receiver's clock (messages) or the server's write time (KV, events). */
export const SEAL_WINDOW_MS = 15_000;
const MAGIC = Buffer.from('MCs1', 'latin1');
const HEADER = MAGIC.length + 8 + 32;
/** Accepted MACs one subscription remembers at most (replays of forgotten ones within the window get through). */
const MAX_REMEMBERED = 16_384;

/** A value that is not a valid seal under our secret, for the context it was found in. */
export class SealError extends MeshError {
  constructor(message: string) {
    super('SEAL', message);
  }
}

export type SealContext = { kind: 'msg' | 'req' | 'evt'; subject: string } | { kind: 'rep'; subject: string; requestMac: string } | { kind: 'kv'; bucket: string; key: string };

function contextString(c: SealContext): string {
  switch (c.kind) {
    case 'msg':
    case 'req':
    case 'evt':
      return `${c.kind}\u0000${c.subject}`;
    case 'rep':
      return `rep\u0000${c.subject}\u0000${c.requestMac}`;
    case 'kv':
      return `kv\u0000${c.bucket}\u0000${c.key}`;
  }
}

/** The HMAC key for seals: derived from the mesh secret, so a seal is never a valid pull credential or the reverse. */
export function sealKey(secret: string): Buffer {
  if (!secret) throw new MeshConfigError('a sealed bus needs a mesh secret');
  return createHmac('sha256', secret).update('meshcast bus seal v1').digest();
}

function mac(key: Buffer, ctx: SealContext, ts: number, payload: Uint8Array): Buffer {
  return createHmac('sha256', key).update(`meshcast-seal/1\u0000${contextString(ctx)}\u0000${ts}\u0000`).update(payload).digest();
}

/** Pure: `payload` sealed for `ctx` at time `ts`. */
export function seal(key: Buffer, ctx: SealContext, payload: Uint8Array, ts: number): Uint8Array {
  const out = Buffer.allocUnsafe(HEADER + payload.length);
  MAGIC.copy(out, 0);
  out.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(ts))), 4);
  mac(key, ctx, Math.max(0, Math.floor(ts)), payload).copy(out, 12);
  out.set(payload, HEADER);
  return out;
}

export interface Opened {
  payload: Uint8Array;
  ts: number;
  /** Hex of the MAC: the seal's identity (replay memory, reply binding). */
  mac: string;
}

/** Pure: the payload of a seal made for `ctx`, whose time is within `windowMs` of `at`; SealError otherwise. */
export function unseal(key: Buffer, ctx: SealContext, sealed: Uint8Array, at: number, windowMs = SEAL_WINDOW_MS): Opened {
  const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (b.length < HEADER || !b.subarray(0, 4).equals(MAGIC)) throw new SealError('not sealed (no mesh seal header)');
  const ts = Number(b.readBigUInt64BE(4));
  const payload = b.subarray(HEADER);
  const want = mac(key, ctx, ts, payload);
  if (!timingSafeEqual(want, b.subarray(12, HEADER))) throw new SealError('bad seal (wrong mesh secret, or made for another subject or key, or altered)');
  if (Math.abs(at - ts) > windowMs) throw new SealError(`stale seal (${Math.round((at - ts) / 1000)} s from now; the window is ±${windowMs / 1000} s)`);
  return { payload, ts, mac: want.toString('hex') };
}

/**
 * Pure, NOT a verification: the payload and time of something that looks sealed, for inspection tools
 * (`meshctl decode` of what `nats sub` shows). Undefined when it has no seal header.
 */
export function peelSeal(sealed: Uint8Array): { payload: Uint8Array; ts: number } | undefined {
  const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (b.length < HEADER || !b.subarray(0, 4).equals(MAGIC)) return undefined;
  return { payload: b.subarray(HEADER), ts: Number(b.readBigUInt64BE(4)) };
}

/** MACs accepted recently, each forgotten when its seal leaves the window; bounded. */
class ReplayMemory {
  readonly #seen = new Map<string, number>();
  constructor(private readonly windowMs: number) {}
  /** False when `id` was accepted before (a replay). */
  admit(id: string, ts: number, now: number): boolean {
    for (const [k, exp] of this.#seen) {
      if (exp > now && this.#seen.size < MAX_REMEMBERED) break;
      this.#seen.delete(k);
    }
    if (this.#seen.has(id)) return false;
    // Remembered until the seal itself is stale: later copies are refused as stale then.
    this.#seen.set(id, ts + this.windowMs + 1);
    return true;
  }
}

export interface SealedBusOptions {
  secret: string;
  logger?: Logger;
  windowMs?: number;
  now?: () => number;
}

export class SealedBus implements Bus {
  readonly #inner: Bus;
  readonly #key: Buffer;
  readonly #log: Logger;
  readonly #limiter: PeerLogLimiter;
  readonly #windowMs: number;
  readonly #now: () => number;
  readonly events: EventLog;

  constructor(inner: Bus, opts: SealedBusOptions) {
    this.#inner = inner;
    this.#key = sealKey(opts.secret);
    this.#log = (opts.logger ?? silentLogger).child({ component: 'sealed-bus' });
    this.#now = opts.now ?? Date.now;
    this.#windowMs = opts.windowMs ?? SEAL_WINDOW_MS;
    this.#limiter = new PeerLogLimiter({ now: this.#now, maxPeers: 1024 });
    this.events = this.#sealedEvents(inner.events);
  }

  get name(): string {
    return this.#inner.name;
  }
  get names(): MeshNames {
    return this.#inner.names;
  }
  get status(): BusStatus {
    return this.#inner.status;
  }
  onStatus(cb: (status: BusStatus) => void): () => void {
    return this.#inner.onStatus(cb);
  }
  close(): Promise<void> {
    return this.#inner.close();
  }

  /** Logs one dropped input, at most a few lines per `where` per interval ("dropped N more"). */
  #dropped(where: string, err: unknown, fields: Record<string, unknown> = {}): void {
    const ok = this.#limiter.admit(where);
    if (!ok) return;
    this.#log.warn({ where, reason: err instanceof Error ? err.message : String(err), ...fields, ...(ok.dropped ? { droppedMore: ok.dropped } : {}) }, 'unverifiable mesh input dropped (not sealed with our mesh secret)');
  }

  #open(ctx: SealContext, data: Uint8Array, at: number, where: string): Opened | undefined {
    try {
      return unseal(this.#key, ctx, data, at, this.#windowMs);
    } catch (err) {
      if (!(err instanceof SealError)) throw err;
      this.#dropped(where, err);
      return undefined;
    }
  }

  publish(subject: string, data: Uint8Array): void {
    this.#inner.publish(subject, seal(this.#key, { kind: 'msg', subject }, data, this.#now()));
  }

  subscribe(subject: string, handler: BusHandler): BusSubscription {
    const replays = new ReplayMemory(this.#windowMs);
    return this.#inner.subscribe(subject, (m) => {
      const now = this.#now();
      const kind = m.reply ? 'req' : 'msg';
      const o = this.#open({ kind, subject: m.subject }, m.data, now, m.subject);
      if (!o) return;
      if (!replays.admit(o.mac, o.ts, now)) return void this.#dropped(m.subject, new SealError('replayed seal'));
      const inner = m;
      const key = this.#key;
      const clock = this.#now;
      const msg: BusMessage = {
        subject: m.subject,
        data: o.payload,
        ...(m.reply !== undefined ? { reply: m.reply } : {}),
        respond: (reply: Uint8Array) => inner.respond(seal(key, { kind: 'rep', subject: m.subject, requestMac: o.mac }, reply, clock())),
      };
      handler(msg);
    });
  }

  async request(subject: string, data: Uint8Array, opts?: RequestOptions): Promise<Uint8Array> {
    const sealed = seal(this.#key, { kind: 'req', subject }, data, this.#now());
    const requestMac = Buffer.from(sealed.subarray(12, HEADER)).toString('hex');
    const answer = await this.#inner.request(subject, sealed, opts);
    try {
      return unseal(this.#key, { kind: 'rep', subject, requestMac }, answer, this.#now(), this.#windowMs).payload;
    } catch (err) {
      if (err instanceof SealError) this.#dropped(subject, err, { reply: true });
      throw err;
    }
  }

  async kv(bucket: string, opts: KvBucketOptions): Promise<KvBucket> {
    return this.#sealedBucket(await this.#inner.kv(bucket, opts));
  }

  #sealedBucket(b: KvBucket): KvBucket {
    const key = this.#key;
    const now = this.#now;
    const ctx = (k: string): SealContext => ({ kind: 'kv', bucket: b.name, key: k });
    const wrap = (k: string, v: Uint8Array): Uint8Array => seal(key, ctx(k), v, now());
    /** The entry with its payload, or undefined (untrusted). Deletes and purges carry no value and pass as they are. */
    const open = (e: KvEntry): KvEntry | undefined => {
      if (e.operation !== 'PUT') return e;
      const o = this.#open(ctx(e.key), e.value, e.createdAt, `kv ${b.name}`);
      return o ? { ...e, value: o.payload } : undefined;
    };
    const untrustedRevision = async (k: string): Promise<number | undefined> => {
      const cur = await b.get(k);
      return cur && cur.operation === 'PUT' && !this.#trusted(ctx(k), cur) ? cur.revision : undefined;
    };
    return {
      name: b.name,
      maxAgeMs: b.maxAgeMs,
      create: async (k, v, o?: KvWriteOptions) => {
        try {
          return await b.create(k, wrap(k, v), o);
        } catch (err) {
          if (!(err instanceof KvKeyExistsError) || !o?.overUntrusted) throw err;
          const rev = await untrustedRevision(k);
          if (rev === undefined) throw err;
          this.#log.warn({ bucket: b.name, key: k, revision: rev }, 'writing over an unverifiable value');
          return b.update(k, wrap(k, v), rev, o);
        }
      },
      update: async (k, v, revision, o?: KvWriteOptions) => {
        try {
          return await b.update(k, wrap(k, v), revision, o);
        } catch (err) {
          if (!(err instanceof KvRevisionMismatchError) || !o?.overUntrusted) throw err;
          const rev = await untrustedRevision(k);
          if (rev === undefined) throw err;
          this.#log.warn({ bucket: b.name, key: k, revision: rev, ours: revision }, 'restoring our value over an unverifiable one');
          return b.update(k, wrap(k, v), rev, o);
        }
      },
      put: (k, v, o) => b.put(k, wrap(k, v), o),
      get: async (k) => {
        const e = await b.get(k);
        return e ? (open(e) ?? null) : null;
      },
      delete: (k, o) => b.delete(k, o),
      purge: (k, o) => b.purge(k, o),
      keys: async (filter) => (await b.entries(filter)).filter((e) => open(e) !== undefined).map((e) => e.key),
      entries: async (filter) => (await b.entries(filter)).flatMap((e) => open(e) ?? []),
      watch: (cb, o?: KvWatchOptions) =>
        b.watch((e) => {
          const opened = open(e);
          if (opened) cb(opened);
          else o?.onUntrusted?.(e.key, e.revision);
        }, o),
    };
  }

  #trusted(ctx: SealContext, e: KvEntry): boolean {
    try {
      unseal(this.#key, ctx, e.value, e.createdAt, this.#windowMs);
      return true;
    } catch (err) {
      if (err instanceof SealError) return false;
      throw err;
    }
  }

  #sealedEvents(log: EventLog): EventLog {
    const key = this.#key;
    const prefix = `${this.#inner.names.eventsBase}.`;
    const open = (e: EventLogEntry): EventLogEntry | undefined => {
      const o = this.#open({ kind: 'evt', subject: e.subject }, e.data, e.time, 'events');
      return o ? { ...e, data: o.payload } : undefined;
    };
    return {
      append: (suffix, data) => log.append(suffix, seal(key, { kind: 'evt', subject: prefix + suffix }, data, this.#now())),
      read: async (o?: EventReadOptions) => (await log.read(o)).flatMap((e) => open(e) ?? []),
      follow: (cb, o): Promise<EventFollower> =>
        log.follow((e) => {
          const opened = open(e);
          if (opened) cb(opened);
        }, o),
    };
  }
}
