/**
 * Stream ownership registry (docs/design.md): KV bucket `meshcast-streams`, key
 * `<app>.<stream>` (stream tokens), value an `OwnershipRecord`. Exactly one
 * node owns a live stream; the KV revision is the fencing token.
 *
 * Lease rules (see lease.ts for the renewal/fencing mechanics):
 * - `acquire` creates the key. If it exists and is live, it is taken over
 *   (CAS update, epoch + 1) when `takeover: true` — a publisher reconnecting
 *   elsewhere — or refused with `StreamOwnedError` when `takeover: false`
 *   (`duplicate_publish: reject`; this includes a record held by this same
 *   node and process). A record of this node id with another boot id is the
 *   lease of an earlier process of this node: stale, taken over at once.
 *   A record is live while `now − createdAt ≤ maxAgeMs`, `createdAt`
 *   being the server's time of its last write (renewal): stale or
 *   undecodable records count as free and are taken over by CAS.
 * - On NATS 2.9 an expired record silently disappears (no delete marker in
 *   the watch). Watchers therefore age records themselves: `watch()` emits
 *   `gone` (reason `expired`) when a cached record passes max age without a
 *   renewal, and `lookup()`/`list()` skip stale records.
 * - Epoch increases by one on every takeover; after the key was deleted or
 *   expired a new owner starts again at 1. The revision never goes back:
 *   compare `acquiredRevision` values to order owners.
 */
import {
  decodeOwnershipRecord,
  encodeOwnershipRecord,
  MeshMessageError,
  type OwnershipRecord,
  type TracksSummary,
} from '@meshcast/proto';
import type { Bus, KvBucket, KvEntry, KvWatcher } from './bus.ts';
import { BusTimeoutError, BusUnavailableError, KvError, KvKeyExistsError, KvRevisionMismatchError, MeshConfigError, StreamOwnedError } from './errors.ts';
import type { MeshEvents } from './events.ts';
import { KvLease, type LeaseLostReason } from './lease.ts';
import { errMessage, LogOnce, silentLogger, type Logger } from './log.ts';
import { validateNodeId } from './names.ts';
import { PROCESS_BOOT_ID } from './boot-id.ts';
import { decodeStreamToken, encodeStreamToken } from './stream-token.ts';

export interface OwnershipRegistryOptions {
  bus: Bus;
  nodeId: string;
  /** Bucket max age = lease lifetime without renewal, default 10 000 ms. */
  maxAgeMs?: number;
  /** Renewal interval, default 3000 ms (must be < maxAgeMs / 2). */
  renewMs?: number;
  /** Bucket name (default from the bus prefix: `meshcast-streams`). */
  bucket?: string;
  /** Append `ownershipMoved` on takeovers. */
  events?: MeshEvents;
  /** How long `list()` waits for the bucket before it answers from its watch, default 1000 ms. */
  listTimeoutMs?: number;
  logger?: Logger;
  now?: () => number;
  /** This process instance (default PROCESS_BOOT_ID; tests simulate a restart with another). */
  bootId?: string;
  /** How long a record that expired without a release is kept as the last known owner (`lastExpired`), default 0 (not kept). */
  keepExpiredMs?: number;
}

export interface OwnershipInfo {
  app: string;
  stream: string;
  /** `<app>.<stream>` tokens */
  key: string;
  record: OwnershipRecord;
  /** KV revision of the latest write (renewal) — the fencing token. */
  revision: number;
  /** Server time of the latest write, ms. */
  createdAt: number;
  /** `kv`: read from the bucket now; `watch`: the registry's own copy, kept by its watch (the bucket did not answer in time). */
  from: 'kv' | 'watch';
}

export interface OwnerChange {
  /** `owner`: a new owner or a new epoch; `gone`: deleted, purged or expired. */
  kind: 'owner' | 'gone';
  app: string;
  stream: string;
  key: string;
  /** The new record (kind `owner`). */
  record?: OwnershipRecord;
  revision: number;
  previous?: { owner: string; epoch: number };
  reason?: 'deleted' | 'expired';
}

export interface AcquireRecord {
  /** RTMP URL base relays should pull from. */
  rtmp: string;
  tracks?: TracksSummary;
}

export interface OwnershipLease {
  readonly app: string;
  readonly stream: string;
  readonly key: string;
  readonly epoch: number;
  /** The revision our acquiring write got; larger than any earlier owner's. */
  readonly acquiredRevision: number;
  /** Revision of our latest write (renewals move it). */
  readonly revision: number;
  readonly record: OwnershipRecord;
  /** True while held (not lost, not released). */
  readonly held: boolean;
  readonly lostReason: LeaseLostReason | undefined;
  /** Fires once, at once, when the lease is lost (never after `release`). Fence: drop the publisher. */
  onLost(cb: (reason: LeaseLostReason) => void): void;
  /** Replace the tracks summary (CAS write now). */
  updateTracks(tracks: TracksSummary): Promise<void>;
  /** Stop renewing and delete the key if it is still ours. */
  release(): Promise<void>;
}

interface Cached {
  record: OwnershipRecord;
  revision: number;
  createdAt: number;
  /** Whether listeners were told of this owner (a record first seen stale is not). */
  reported: boolean;
}

const MAX_ATTEMPTS = 8;

export class OwnershipRegistry {
  readonly nodeId: string;
  readonly bootId: string;
  readonly maxAgeMs: number;
  readonly renewMs: number;
  readonly #bus: Bus;
  readonly #bucketName: string;
  readonly #log: Logger;
  readonly #once: LogOnce;
  readonly #now: () => number;
  readonly #events: MeshEvents | undefined;
  readonly #listTimeoutMs: number;
  readonly #keepExpiredMs: number;
  #bucket: Promise<KvBucket> | undefined;
  #watcher: KvWatcher | undefined;
  #started: Promise<void> | undefined;
  #sweep: NodeJS.Timeout | undefined;
  readonly #leases = new Map<string, Set<KvLease<OwnershipRecord>>>();
  readonly #cache = new Map<string, Cached>();
  /** Records that expired without a delete (their owner stopped renewing: dead, or only cut off from NATS), and when. */
  readonly #expired = new Map<string, Cached & { expiredAt: number }>();
  readonly #listeners = new Set<(c: OwnerChange) => void>();
  #closed = false;
  #starting = false;

  constructor(opts: OwnershipRegistryOptions) {
    this.nodeId = validateNodeId(opts.nodeId);
    this.bootId = opts.bootId ?? PROCESS_BOOT_ID;
    this.#bus = opts.bus;
    this.maxAgeMs = opts.maxAgeMs ?? 10_000;
    this.renewMs = opts.renewMs ?? 3000;
    if (!(this.renewMs > 0 && this.renewMs * 2 < this.maxAgeMs)) {
      throw new MeshConfigError(`ownership: renewMs (${this.renewMs}) must be > 0 and < maxAgeMs/2 (${this.maxAgeMs})`);
    }
    this.#bucketName = opts.bucket ?? opts.bus.names.streamsBucket;
    this.#log = (opts.logger ?? silentLogger).child({ component: 'ownership', node: this.nodeId });
    this.#once = new LogOnce(this.#log);
    this.#now = opts.now ?? Date.now;
    this.#events = opts.events;
    this.#listTimeoutMs = opts.listTimeoutMs ?? 1000;
    this.#keepExpiredMs = opts.keepExpiredMs ?? 0;
  }

  /**
   * Open the bucket and start the watch (idempotent). Resolves once the
   * bucket is open and the first attempt to start the watch has finished; if
   * that attempt failed (e.g. no JetStream meta leader during a cluster
   * failover) the watch keeps being retried in the background. `acquire`,
   * `lookup` and `list` do not wait for the watch.
   */
  start(): Promise<void> {
    this.#started ??= (async () => {
      await this.#kv();
      this.#sweep ??= setInterval(() => this.#sweepExpired(), Math.max(50, Math.min(1000, Math.floor(this.renewMs / 2)))).unref();
      await this.#tryWatch();
      if (!this.#watcher) void this.#retryWatch();
    })();
    this.#started.catch(() => {
      this.#started = undefined;
    });
    return this.#started;
  }

  async #tryWatch(): Promise<void> {
    if (this.#watcher || this.#closed) return;
    try {
      const b = await this.#kv();
      const w = await b.watch((e) => this.#onEntry(e), { onUntrusted: (key) => this.#onUntrusted(key) });
      if (this.#closed) w.stop();
      else this.#watcher = w;
    } catch (err) {
      this.#log.warn({ err: errMessage(err) }, 'cannot start the ownership watch yet; retrying');
    }
  }

  async #retryWatch(): Promise<void> {
    for (let delay = 250; !this.#watcher && !this.#closed; delay = Math.min(delay * 2, 2000)) {
      await new Promise((r) => setTimeout(r, delay).unref());
      await this.#tryWatch();
    }
  }

  #kv(): Promise<KvBucket> {
    this.#bucket ??= this.#bus.kv(this.#bucketName, { maxAgeMs: this.maxAgeMs, history: 1 });
    this.#bucket.catch(() => {
      this.#bucket = undefined;
    });
    return this.#bucket;
  }

  /**
   * Become the owner of app/stream. `takeover: true` replaces a live owner
   * (new epoch); `false` throws {@link StreamOwnedError} if one exists.
   */
  async acquire(app: string, stream: string, rec: AcquireRecord, opts: { takeover: boolean }): Promise<OwnershipLease> {
    const key = encodeStreamToken(app, stream);
    const b = await this.#kv();
    void this.start().catch(() => undefined); // the watch (fast fencing) is best effort; CAS renewals fence anyway
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const now = Date.now();
      const fresh = (epoch: number): OwnershipRecord => ({
        owner: this.nodeId,
        rtmp: rec.rtmp,
        epoch,
        startedAt: now,
        renewedAt: now,
        tracks: rec.tracks ?? {},
        bootId: this.bootId,
      });
      const sentAt = this.#now();
      try {
        const record = fresh(1);
        // overUntrusted: a forged record (not sealed with the mesh secret) is no owner's; a sealed bus writes over it.
        const rev = await b.create(key, encodeOwnershipRecord(record), { overUntrusted: true });
        return this.#makeLease(b, app, stream, key, record, rev, sentAt);
      } catch (err) {
        if (!(err instanceof KvKeyExistsError)) throw err;
      }
      const cur = await b.get(key);
      if (!cur) continue; // deleted or expired meanwhile: create again
      const old = decodeOwnershipRecord(cur.value);
      // Our node id under another boot id: an earlier process of this node (restarted within the lease) left it.
      const ownStale = !(old instanceof MeshMessageError) && old.owner === this.nodeId && old.bootId !== undefined && old.bootId !== this.bootId;
      const stale = old instanceof MeshMessageError || ownStale || this.#isStale(cur.createdAt);
      if (old instanceof MeshMessageError) {
        this.#once.warn(key, old.message, {}, 'undecodable ownership record; treating it as free');
      }
      if (!stale && !opts.takeover) throw new StreamOwnedError(app, stream, (old as OwnershipRecord).owner);
      const prevEpoch = old instanceof MeshMessageError ? 0 : old.epoch;
      const record = fresh(prevEpoch + 1);
      try {
        const sent = this.#now();
        const rev = await b.update(key, encodeOwnershipRecord(record), cur.revision);
        const lease = this.#makeLease(b, app, stream, key, record, rev, sent);
        if (!(old instanceof MeshMessageError) && this.#events) {
          this.#events
            .append({ type: 'ownershipMoved', at: Date.now(), app, stream, from: old.owner, to: this.nodeId, epoch: record.epoch, revision: rev })
            .catch((e: unknown) => this.#log.debug({ err: errMessage(e) }, 'cannot append ownershipMoved'));
        }
        if (ownStale) this.#log.info({ key, staleBootId: (old as OwnershipRecord).bootId, epoch: record.epoch, revision: rev }, 'took over the stale lease of an earlier process of this node');
        else this.#log.info({ key, from: stale ? undefined : (old as OwnershipRecord).owner, epoch: record.epoch, revision: rev }, 'took over stream ownership');
        return lease;
      } catch (err) {
        if (!(err instanceof KvRevisionMismatchError)) throw err;
      }
    }
    throw new KvError(`could not acquire ${key}: too much contention (${MAX_ATTEMPTS} attempts)`);
  }

  /**
   * The live owner of app/stream, or null (absent, stale or undecodable). Like `list`, a registry whose watch
   * runs answers from the watch's copy when the bucket has not answered within `listTimeoutMs` (its stream
   * leader is being elected after a NATS server died): a new relay can still find the owner meanwhile.
   */
  async lookup(app: string, stream: string): Promise<OwnershipInfo | null> {
    const key = encodeStreamToken(app, stream);
    const read = (async () => {
      const b = await this.#kv();
      const e = await b.get(key);
      return e ? this.#info(e) : null;
    })();
    if (!this.#watcher) return read;
    const got = await this.#bucketOrWatch(read, this.#listTimeoutMs, 'ownership lookup');
    if (got !== 'watch') return got;
    const c = this.#cache.get(key);
    if (!c || !c.reported || this.#isStale(c.createdAt)) return null;
    return { app, stream, key, record: c.record, revision: c.revision, createdAt: c.createdAt, from: 'watch' };
  }

  /** The bucket's answer, or `'watch'` when it did not come within `budget` ms or the bus could not ask. */
  async #bucketOrWatch<T>(read: Promise<T>, budget: number, what: string): Promise<T | 'watch'> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), budget);
    });
    try {
      const got = await Promise.race([read, late]);
      if (got !== 'late') return got;
      read.catch((err: unknown) => this.#log.debug({ err: errMessage(err) }, `late ${what} failed`));
      this.#log.debug({ budgetMs: budget }, `${what}: the bucket did not answer in time; answering from the watch`);
    } catch (err) {
      // Timed out, or the connection is between servers: the watch's copy is the best answer there is.
      if (!(err instanceof BusTimeoutError || err instanceof BusUnavailableError)) throw err;
      this.#log.debug({ err: errMessage(err) }, `${what} failed; answering from the watch`);
    } finally {
      clearTimeout(timer);
    }
    return 'watch';
  }

  /**
   * All live owners, read from the bucket. Reading needs the bucket's stream leader: when a
   * NATS server dies, nats-server takes seconds to elect another, and meanwhile requests time
   * out. So a registry whose watch runs answers from the watch's copy when the bucket has not
   * answered within `timeoutMs` (default `listTimeoutMs`): nothing changes ownership
   * while no leader accepts writes, so that copy is the current state. Records in it still age
   * out at max age. Without a running watch (meshctl's one-shot registry) the timeout is thrown.
   */
  async list(opts: { timeoutMs?: number } = {}): Promise<OwnershipInfo[]> {
    const read = (async () => {
      const b = await this.#kv();
      const out: OwnershipInfo[] = [];
      for (const e of await b.entries()) {
        const i = this.#info(e);
        if (i) out.push(i);
      }
      return out;
    })();
    if (!this.#watcher) return read;
    const got = await this.#bucketOrWatch(read, opts.timeoutMs ?? this.#listTimeoutMs, 'ownership listing');
    return got === 'watch' ? this.#fromWatch() : got;
  }

  #fromWatch(): OwnershipInfo[] {
    const out: OwnershipInfo[] = [];
    for (const [key, c] of this.#cache) {
      if (!c.reported || this.#isStale(c.createdAt)) continue;
      let names: { app: string; stream: string };
      try {
        names = decodeStreamToken(key);
      } catch {
        continue; // logged once by the watch
      }
      out.push({ ...names, key, record: c.record, revision: c.revision, createdAt: c.createdAt, from: 'watch' });
    }
    return out;
  }

  /**
   * The last owner of app/stream whose record expired (not released) within `keepExpiredMs`, as this registry's
   * watch saw it: the owner may only be cut off from NATS and still serve its epoch over RTMP. Forgotten once
   * the key is written or deleted again. Undefined when there is none.
   */
  lastExpired(app: string, stream: string): OwnershipInfo | undefined {
    const key = encodeStreamToken(app, stream);
    // The bucket may drop a record before the next sweep here: age the watch's copies now.
    this.#sweepExpired();
    const c = this.#expired.get(key);
    if (!c || this.#now() - c.expiredAt > this.#keepExpiredMs) return undefined;
    return { app, stream, key, record: c.record, revision: c.revision, createdAt: c.createdAt, from: 'watch' };
  }

  /** Owner changes (new owner / new epoch / gone). Renewals are not reported. Returns an unsubscribe function. */
  watch(cb: (c: OwnerChange) => void): () => void {
    this.#listeners.add(cb);
    void this.#keepStarting();
    return () => this.#listeners.delete(cb);
  }

  /** Retry `start()` in the background until it succeeds (e.g. the bus was down when the node started). */
  async #keepStarting(): Promise<void> {
    if (this.#starting) return;
    this.#starting = true;
    try {
      for (let delay = 250, failures = 0; !this.#closed; delay = Math.min(delay * 2, 5000)) {
        try {
          await this.start();
          return;
        } catch (err) {
          if (failures++ === 0) this.#log.warn({ err: errMessage(err) }, 'ownership registry cannot start yet; retrying');
          await new Promise((r) => setTimeout(r, delay).unref());
        }
      }
    } finally {
      this.#starting = false;
    }
  }

  /** Stop the watch and timers; held leases keep renewing until released. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweep);
    this.#watcher?.stop();
    this.#listeners.clear();
    const all = [...this.#leases.values()].flatMap((s) => [...s]);
    await Promise.all(all.map((l) => l.release()));
  }

  // ------------------------------------------------------------------ internals

  #isStale(createdAt: number): boolean {
    return this.#now() - createdAt > this.maxAgeMs;
  }

  #info(e: KvEntry): OwnershipInfo | null {
    let names: { app: string; stream: string };
    try {
      names = decodeStreamToken(e.key);
    } catch {
      this.#once.warn(e.key, 'bad key', {}, 'ignoring ownership key that is not <app>.<stream>');
      return null;
    }
    const r = decodeOwnershipRecord(e.value);
    if (r instanceof MeshMessageError) {
      this.#once.warn(e.key, r.message, {}, 'ignoring undecodable ownership record');
      return null;
    }
    if (this.#isStale(e.createdAt)) return null;
    return { ...names, key: e.key, record: r, revision: e.revision, createdAt: e.createdAt, from: 'kv' };
  }

  #makeLease(b: KvBucket, app: string, stream: string, key: string, record: OwnershipRecord, rev: number, sentAt: number): OwnershipLease {
    const me = this.nodeId;
    const set = this.#leases.get(key) ?? new Set<KvLease<OwnershipRecord>>();
    this.#leases.set(key, set);
    const lease: KvLease<OwnershipRecord> = new KvLease<OwnershipRecord>({
      bucket: b,
      key,
      value: record,
      revision: rev,
      sentAt,
      renewMs: this.renewMs,
      maxAgeMs: this.maxAgeMs,
      encode: encodeOwnershipRecord,
      renewed: (v) => ({ ...v, renewedAt: Date.now() }),
      isOwn: (raw) => {
        const r = decodeOwnershipRecord(raw);
        return !(r instanceof MeshMessageError) && r.owner === me && r.epoch === record.epoch && r.startedAt === record.startedAt;
      },
      log: this.#log,
      now: this.#now,
      onEnd: () => {
        set.delete(lease);
        if (set.size === 0 && this.#leases.get(key) === set) this.#leases.delete(key);
      },
    });
    set.add(lease);
    return {
      app,
      stream,
      key,
      epoch: record.epoch,
      acquiredRevision: rev,
      get revision() {
        return lease.revision;
      },
      get record() {
        return lease.value;
      },
      get held() {
        return lease.held;
      },
      get lostReason() {
        return lease.lost;
      },
      onLost: (cb) => lease.onLost(cb),
      updateTracks: (tracks) => lease.update((v) => ({ ...v, tracks, renewedAt: Date.now() })),
      release: () => lease.release(),
    };
  }

  #onEntry(e: KvEntry): void {
    if (this.#closed) return;
    for (const l of [...(this.#leases.get(e.key) ?? [])]) l.observe(e);
    const prev = this.#cache.get(e.key);
    if (prev && e.revision <= prev.revision) return;
    this.#expired.delete(e.key);
    if (e.operation !== 'PUT') {
      this.#cache.delete(e.key);
      if (prev?.reported) this.#emitChange(e.key, { kind: 'gone', revision: e.revision, previous: { owner: prev.record.owner, epoch: prev.record.epoch }, reason: 'deleted' });
      return;
    }
    const r = decodeOwnershipRecord(e.value);
    if (r instanceof MeshMessageError) {
      this.#once.warn(e.key, r.message, {}, 'ignoring undecodable ownership record');
      return;
    }
    const stale = this.#isStale(e.createdAt); // e.g. an initial value about to expire, or a backlog after a pause
    // A record first seen stale was never reported: its next (fresh) renewal must be, even with the same owner and epoch.
    this.#cache.set(e.key, { record: r, revision: e.revision, createdAt: e.createdAt, reported: !stale });
    if (stale) return;
    if (!prev || !prev.reported || prev.record.owner !== r.owner || prev.record.epoch !== r.epoch) {
      this.#emitChange(e.key, {
        kind: 'owner',
        record: r,
        revision: e.revision,
        ...(prev ? { previous: { owner: prev.record.owner, epoch: prev.record.epoch } } : {}),
      });
    }
  }

  /**
   * A value that failed verification (sealed bus: written without the mesh secret) replaced a key. It is
   * nobody's record: watchers keep the owner they knew, and a lease of ours on that key writes its record back
   * at once instead of fencing its publisher.
   */
  #onUntrusted(key: string): void {
    if (this.#closed) return;
    const leases = [...(this.#leases.get(key) ?? [])];
    if (leases.length > 0) this.#log.warn({ key }, 'an unverifiable ownership record replaced ours; restoring ours');
    for (const l of leases) l.restoreNow();
  }

  #sweepExpired(): void {
    for (const [key, c] of this.#expired) if (this.#now() - c.expiredAt > this.#keepExpiredMs) this.#expired.delete(key);
    for (const [key, c] of this.#cache) {
      if (!this.#isStale(c.createdAt)) continue;
      this.#cache.delete(key);
      if (c.reported && this.#keepExpiredMs > 0) this.#expired.set(key, { ...c, expiredAt: this.#now() });
      if (c.reported) this.#emitChange(key, { kind: 'gone', revision: c.revision, previous: { owner: c.record.owner, epoch: c.record.epoch }, reason: 'expired' });
    }
  }

  #emitChange(key: string, c: Omit<OwnerChange, 'app' | 'stream' | 'key'>): void {
    let names: { app: string; stream: string };
    try {
      names = decodeStreamToken(key);
    } catch {
      this.#once.warn(key, 'bad key', {}, 'ignoring ownership key that is not <app>.<stream>');
      return;
    }
    const change: OwnerChange = { ...names, key, ...c };
    for (const l of [...this.#listeners]) {
      try {
        l(change);
      } catch (err) {
        this.#log.error({ err: errMessage(err) }, 'ownership listener threw');
      }
    }
  }
}
