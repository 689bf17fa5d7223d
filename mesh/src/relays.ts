/**
 * Relay claims and the relay tree (docs/design.md). A playback node that pulls a
 * stream it does not own claims `meshcast-relays/<app>.<stream>.<node>`
 * (value: parent, child count, RTMP address) with the same lease mechanics
 * as ownership (renew by CAS every 3 s, bucket max age 10 s, self-fence when
 * renewals stop being acknowledged). Other relays read the claims to pick
 * their parent with {@link chooseRelayParent}.
 */
import { decodeRelayClaim, encodeRelayClaim, MeshMessageError, type RelayClaim } from '@meshcast/proto';
import type { Bus, KvBucket, KvEntry, KvWatcher } from './bus.ts';
import { KvError, KvKeyExistsError, KvRevisionMismatchError, MeshConfigError } from './errors.ts';
import { hrwScore } from './hash.ts';
import { KvLease, type LeaseLostReason } from './lease.ts';
import { errMessage, LogOnce, silentLogger, type Logger } from './log.ts';
import { validateNodeId } from './names.ts';
import { PROCESS_BOOT_ID } from './boot-id.ts';
import { encodeStreamToken } from './stream-token.ts';

export const DEFAULT_FANOUT = 8;

export interface RelayClaimsOptions {
  bus: Bus;
  nodeId: string;
  /** default 10 000 ms */
  maxAgeMs?: number;
  /** default 3000 ms (< maxAgeMs / 2) */
  renewMs?: number;
  /** Bucket name (default from the bus prefix: `meshcast-relays`). */
  bucket?: string;
  logger?: Logger;
  now?: () => number;
  /** This process instance (default PROCESS_BOOT_ID; tests simulate a restart with another). */
  bootId?: string;
}

export interface RelayClaimInfo {
  app: string;
  stream: string;
  key: string;
  claim: RelayClaim;
  revision: number;
  createdAt: number;
}

export interface RelayLease {
  readonly app: string;
  readonly stream: string;
  readonly key: string;
  readonly claim: RelayClaim;
  readonly revision: number;
  readonly held: boolean;
  readonly lostReason: LeaseLostReason | undefined;
  onLost(cb: (reason: LeaseLostReason) => void): void;
  /** Change parent and/or child count (CAS write now), e.g. after re-parenting. */
  update(patch: { parent?: string; children?: number; rtmp?: string }): Promise<void>;
  release(): Promise<void>;
}

export interface RelayClaimChange {
  kind: 'claimed' | 'released';
  key: string;
  node: string;
  claim?: RelayClaim;
  revision: number;
}

const MAX_ATTEMPTS = 8;

export class RelayClaims {
  readonly nodeId: string;
  readonly bootId: string;
  readonly maxAgeMs: number;
  readonly renewMs: number;
  readonly #bus: Bus;
  readonly #bucketName: string;
  readonly #log: Logger;
  readonly #once: LogOnce;
  readonly #now: () => number;
  #bucket: Promise<KvBucket> | undefined;
  #watcher: KvWatcher | undefined;
  #started: Promise<void> | undefined;
  readonly #leases = new Map<string, Set<KvLease<RelayClaim>>>();
  readonly #watchers = new Set<KvWatcher>();
  #closed = false;

  constructor(opts: RelayClaimsOptions) {
    this.nodeId = validateNodeId(opts.nodeId);
    this.bootId = opts.bootId ?? PROCESS_BOOT_ID;
    this.#bus = opts.bus;
    this.maxAgeMs = opts.maxAgeMs ?? 10_000;
    this.renewMs = opts.renewMs ?? 3000;
    if (!(this.renewMs > 0 && this.renewMs * 2 < this.maxAgeMs)) {
      throw new MeshConfigError(`relays: renewMs (${this.renewMs}) must be > 0 and < maxAgeMs/2 (${this.maxAgeMs})`);
    }
    this.#bucketName = opts.bucket ?? opts.bus.names.relaysBucket;
    this.#log = (opts.logger ?? silentLogger).child({ component: 'relays', node: this.nodeId });
    this.#once = new LogOnce(this.#log);
    this.#now = opts.now ?? Date.now;
  }

  #kv(): Promise<KvBucket> {
    this.#bucket ??= this.#bus.kv(this.#bucketName, { maxAgeMs: this.maxAgeMs, history: 1 });
    this.#bucket.catch(() => {
      this.#bucket = undefined;
    });
    return this.#bucket;
  }

  /**
   * Open the bucket and watch our own keys (to notice foreign writes at
   * once). Idempotent; like OwnershipRegistry.start, a failed watch is
   * retried in the background and `claim` does not wait for it.
   */
  start(): Promise<void> {
    this.#started ??= (async () => {
      await this.#kv();
      await this.#dropStaleOwnClaims();
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
      const w = await b.watch(
        (e) => {
          for (const l of [...(this.#leases.get(e.key) ?? [])]) l.observe(e);
        },
        { key: `*.*.${this.nodeId}`, initial: false },
      );
      if (this.#closed) w.stop();
      else this.#watcher = w;
    } catch (err) {
      this.#log.warn({ err: errMessage(err) }, 'cannot start the relay-claims watch yet; retrying');
    }
  }

  /**
   * Claims under our node id left by an earlier process of this node (another boot id): nobody renews them,
   * yet until they expire other nodes would count them as live children of their parents (the fan-out cap).
   * Deleted at start (CAS on the revision read, so a claim written meanwhile stays).
   */
  async #dropStaleOwnClaims(): Promise<void> {
    try {
      const b = await this.#kv();
      for (const e of await b.entries(`*.*.${this.nodeId}`)) {
        const c = decodeRelayClaim(e.value);
        if (c instanceof MeshMessageError || c.node !== this.nodeId || c.bootId === undefined || c.bootId === this.bootId) continue;
        try {
          await b.delete(e.key, { revision: e.revision });
        } catch (err) {
          if (err instanceof KvRevisionMismatchError) continue; // re-claimed meanwhile by this process
          throw err;
        }
        this.#log.info({ key: e.key, staleBootId: c.bootId }, 'removed a relay claim left by an earlier process of this node');
      }
    } catch (err) {
      // Best effort: list() ignores such claims here, and they expire everywhere after the lease.
      this.#log.warn({ err: errMessage(err) }, 'cannot remove relay claims of an earlier process of this node');
    }
  }

  async #retryWatch(): Promise<void> {
    for (let delay = 250; !this.#watcher && !this.#closed; delay = Math.min(delay * 2, 2000)) {
      await new Promise((r) => setTimeout(r, delay).unref());
      await this.#tryWatch();
    }
  }

  /** Claim (or re-claim) our relay key for app/stream. */
  async claim(app: string, stream: string, c: { parent: string; rtmp: string; children?: number }): Promise<RelayLease> {
    validateNodeId(c.parent);
    const key = `${encodeStreamToken(app, stream)}.${this.nodeId}`;
    const b = await this.#kv();
    void this.start().catch(() => undefined);
    const now = Date.now();
    const claim: RelayClaim = { node: this.nodeId, parent: c.parent, children: c.children ?? 0, rtmp: c.rtmp, claimedAt: now, renewedAt: now, bootId: this.bootId };
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const sentAt = this.#now();
      try {
        // overUntrusted: a forged value at our own key (not sealed with the mesh secret) is written over (sealed-bus.ts).
        const rev = await b.create(key, encodeRelayClaim(claim), { overUntrusted: true });
        return this.#makeLease(b, app, stream, key, claim, rev, sentAt);
      } catch (err) {
        if (!(err instanceof KvKeyExistsError)) throw err;
      }
      // our own key holds a leftover (previous incarnation, or an earlier claim in this process): replace it
      const cur = await b.get(key);
      if (!cur) continue;
      try {
        const rev = await b.update(key, encodeRelayClaim(claim), cur.revision);
        return this.#makeLease(b, app, stream, key, claim, rev, sentAt);
      } catch (err) {
        if (!(err instanceof KvRevisionMismatchError)) throw err;
      }
    }
    throw new KvError(`could not claim ${key}: too much contention`);
  }

  /** Live (non-stale, decodable) claims for a stream. */
  async list(app: string, stream: string): Promise<RelayClaimInfo[]> {
    const b = await this.#kv();
    const out: RelayClaimInfo[] = [];
    for (const e of await b.entries(`${encodeStreamToken(app, stream)}.*`)) {
      const i = this.#info(app, stream, e);
      if (i) out.push(i);
    }
    return out;
  }

  /** Claims of one stream as they come and go (`released` also for deletes; expiry is not reported, re-list). */
  async watchStream(app: string, stream: string, cb: (c: RelayClaimChange) => void): Promise<() => void> {
    const b = await this.#kv();
    const prefix = encodeStreamToken(app, stream);
    const w = await b.watch(
      (e) => {
        const node = e.key.slice(prefix.length + 1);
        if (e.operation !== 'PUT') {
          cb({ kind: 'released', key: e.key, node, revision: e.revision });
          return;
        }
        const i = this.#info(app, stream, e);
        if (i) cb({ kind: 'claimed', key: e.key, node, claim: i.claim, revision: e.revision });
      },
      { key: `${prefix}.*` },
    );
    this.#watchers.add(w);
    return () => {
      w.stop();
      this.#watchers.delete(w);
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#watcher?.stop();
    for (const w of this.#watchers) w.stop();
    this.#watchers.clear();
    const all = [...this.#leases.values()].flatMap((s) => [...s]);
    await Promise.all(all.map((l) => l.release()));
  }

  #info(app: string, stream: string, e: KvEntry): RelayClaimInfo | null {
    const c = decodeRelayClaim(e.value);
    if (c instanceof MeshMessageError) {
      this.#once.warn(e.key, c.message, {}, 'ignoring undecodable relay claim');
      return null;
    }
    if (!e.key.endsWith(`.${c.node}`)) {
      this.#once.warn(e.key, 'node mismatch', { claimed: c.node }, 'ignoring relay claim whose node differs from its key');
      return null;
    }
    if (this.#now() - e.createdAt > this.maxAgeMs) return null;
    // Our node id, another process instance: a claim of an earlier process of this node, not a live relay.
    if (c.node === this.nodeId && c.bootId !== undefined && c.bootId !== this.bootId) return null;
    return { app, stream, key: e.key, claim: c, revision: e.revision, createdAt: e.createdAt };
  }

  #makeLease(b: KvBucket, app: string, stream: string, key: string, claim: RelayClaim, rev: number, sentAt: number): RelayLease {
    const set = this.#leases.get(key) ?? new Set<KvLease<RelayClaim>>();
    this.#leases.set(key, set);
    // a newer claim of the same key in this process supersedes older ones
    for (const old of set) old.lose({ code: 'SUPERSEDED', message: `claim ${key} re-made`, revision: rev });
    const lease: KvLease<RelayClaim> = new KvLease<RelayClaim>({
      bucket: b,
      key,
      value: claim,
      revision: rev,
      sentAt,
      renewMs: this.renewMs,
      maxAgeMs: this.maxAgeMs,
      encode: encodeRelayClaim,
      renewed: (v) => ({ ...v, renewedAt: Date.now() }),
      isOwn: (raw) => {
        const r = decodeRelayClaim(raw);
        return !(r instanceof MeshMessageError) && r.node === claim.node && r.claimedAt === claim.claimedAt;
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
      get claim() {
        return lease.value;
      },
      get revision() {
        return lease.revision;
      },
      get held() {
        return lease.held;
      },
      get lostReason() {
        return lease.lost;
      },
      onLost: (cb) => lease.onLost(cb),
      update: (patch) => {
        if (patch.parent !== undefined) validateNodeId(patch.parent);
        return lease.update((v) => ({ ...v, ...stripUndef(patch), renewedAt: Date.now() }));
      },
      release: () => lease.release(),
    };
  }
}

function stripUndef<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

// ------------------------------------------------------------------ parent choice (pure)

export interface RelayParentInput {
  /** `<app>.<stream>` token. */
  streamToken: string;
  /** The node choosing a parent. */
  selfId: string;
  /** The stream's owner (from the ownership registry). */
  owner: string;
  /** Current claims of the stream (self's own claim may be included; it is ignored as a candidate). */
  claims: readonly Pick<RelayClaim, 'node' | 'parent' | 'children'>[];
  /** Max direct children per node, default 8. */
  fanout?: number;
  /** Nodes currently alive (membership); claims of other nodes are ignored. */
  alive: ReadonlySet<string>;
}

/**
 * Pick the parent a relay should pull from:
 * 1. the owner, while it has fewer than F direct children;
 * 2. else, among live relays of the stream that hang off the owner through
 *    an unbroken chain of live relays, that are neither self nor a
 *    descendant of self (no cycles) and have fewer than F children: the
 *    shallowest level with room first, then the best rendezvous score for
 *    (stream, self, candidate). Filling shallow levels first keeps the tree
 *    depth at ⌈log_F(N)⌉ (≤ 3 up to F + F² + F³ = 584 relays with F = 8);
 *    including self in the score spreads relays that choose at the same
 *    moment from the same snapshot over different parents instead of piling
 *    onto one.
 * Children are counted from the claims' parent pointers (max with the
 * self-reported count). Returns `undefined` when no node qualifies (e.g. the
 * owner is full and every relay is full, orphaned or below self): the caller
 * should then attach to the owner anyway — one relay over F beats no
 * stream — and retry the choice later.
 */
export function chooseRelayParent(input: RelayParentInput): string | undefined {
  const F = input.fanout ?? DEFAULT_FANOUT;
  const { owner, selfId, alive } = input;
  const byNode = new Map<string, Pick<RelayClaim, 'node' | 'parent' | 'children'>>();
  for (const c of input.claims) {
    if (c.node === owner) continue;
    if (c.node !== selfId && !alive.has(c.node)) continue;
    byNode.set(c.node, c);
  }
  // depth of each claim via its parent chain (owner = depth 0); undefined = orphaned or cyclic
  const depth = new Map<string, number | undefined>();
  const depthOf = (node: string, seen: Set<string>): number | undefined => {
    if (node === owner) return 0;
    if (depth.has(node)) return depth.get(node);
    const c = byNode.get(node);
    if (!c || seen.has(node)) return undefined;
    seen.add(node);
    const pd = depthOf(c.parent, seen);
    const d = pd === undefined ? undefined : pd + 1;
    depth.set(node, d);
    return d;
  };
  for (const n of byNode.keys()) depthOf(n, new Set());

  // descendants of self (their chains pass through self)
  const underSelf = (node: string): boolean => {
    const seen = new Set<string>();
    let cur: string | undefined = node;
    while (cur !== undefined && cur !== owner && !seen.has(cur)) {
      if (cur === selfId) return true;
      seen.add(cur);
      cur = byNode.get(cur)?.parent;
    }
    return false;
  };

  const counted = new Map<string, number>();
  for (const c of byNode.values()) {
    if (c.node === selfId) continue; // self is choosing anew
    if (depth.get(c.node) === undefined) continue;
    counted.set(c.parent, (counted.get(c.parent) ?? 0) + 1);
  }
  if ((counted.get(owner) ?? 0) < F) return owner;

  let best: { node: string; depth: number; score: number } | undefined;
  for (const c of byNode.values()) {
    if (c.node === selfId) continue;
    const d = depth.get(c.node);
    if (d === undefined) continue;
    if (underSelf(c.node)) continue;
    const kids = Math.max(counted.get(c.node) ?? 0, c.children);
    if (kids >= F) continue;
    const score = hrwScore(`${input.streamToken}|${selfId}`, c.node, 1);
    if (!best || d < best.depth || (d === best.depth && (score > best.score || (score === best.score && c.node < best.node)))) {
      best = { node: c.node, depth: d, score };
    }
  }
  return best?.node;
}
