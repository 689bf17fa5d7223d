/**
 * In-process bus ("embedded mode", docs/design.md): a `MemoryBusNetwork` plays the
 * NATS server, every `connect(name)` is one node's connection. Same
 * semantics as the NATS bus (see bus.ts), including KV max-age expiry that
 * does NOT notify watches, and partitions for tests:
 * `partition(bus)` cuts one connection off (status `disconnected` then
 * `reconnecting`; its publishes and deliveries to it are dropped; KV and
 * event-log calls reject with `BusUnavailableError`; watches pause), and
 * `heal(bus)` reconnects it (status `connected`; paused watches and follows
 * deliver what they missed).
 */
import { randomUUID } from 'node:crypto';
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
  KvOperation,
  KvWatcher,
  KvWatchOptions,
  RequestOptions,
} from './bus.ts';
import { clampLimit, isValidKvFilter, isValidKvKey, isValidPublishSubject, isValidSubscribeSubject, subjectMatches } from './bus.ts';
import {
  BusNoRespondersError,
  BusTimeoutError,
  BusUnavailableError,
  KvError,
  KvKeyExistsError,
  KvRevisionMismatchError,
  MeshConfigError,
} from './errors.ts';
import { errMessage, silentLogger, type Logger } from './log.ts';
import { meshNames, type MeshNames } from './names.ts';

export interface MemoryBusNetworkOptions {
  /** Subject prefix shared by every connection (default `meshcast`). */
  prefix?: string;
  logger?: Logger;
  /** Clock for KV timestamps and expiry (tests may fake it). Default Date.now. */
  now?: () => number;
  /** Event log ring size (default 10 000). */
  eventsCapacity?: number;
  /** Event log max age (default 24 h). */
  eventsMaxAgeMs?: number;
}

interface Sub {
  conn: MemoryBus;
  pattern: string;
  handler: BusHandler;
  closed: boolean;
}

interface StoredKv {
  key: string;
  value: Uint8Array;
  revision: number;
  createdAt: number;
  operation: KvOperation;
}

interface MemWatcher {
  conn: MemoryBus;
  filter: string;
  cb: (e: KvEntry) => void;
  lastRev: number;
  stopped: boolean;
}

class MemoryKvStore {
  seq = 0;
  readonly entries = new Map<string, StoredKv>();
  readonly watchers = new Set<MemWatcher>();
  constructor(
    readonly name: string,
    readonly maxAgeMs: number,
    readonly history: number,
    private readonly now: () => number,
  ) {}

  /** Latest stored record of `key` (including delete markers) unless expired. */
  latest(key: string): StoredKv | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (this.maxAgeMs > 0 && this.now() - e.createdAt >= this.maxAgeMs) {
      this.entries.delete(key);
      return undefined;
    }
    return e;
  }

  all(): StoredKv[] {
    const out: StoredKv[] = [];
    for (const k of [...this.entries.keys()]) {
      const e = this.latest(k);
      if (e) out.push(e);
    }
    return out.sort((a, b) => a.revision - b.revision);
  }

  write(key: string, value: Uint8Array, operation: KvOperation): StoredKv {
    const e: StoredKv = { key, value, revision: ++this.seq, createdAt: this.now(), operation };
    this.entries.set(key, e);
    return e;
  }

  toEntry(e: StoredKv): KvEntry {
    return { bucket: this.name, key: e.key, value: e.value.slice(), revision: e.revision, createdAt: e.createdAt, operation: e.operation };
  }
}

interface MemFollower {
  conn: MemoryBus;
  cb: (e: EventLogEntry) => void;
  lastSeq: number;
  stopped: boolean;
}

class MemoryEventStore {
  seq = 0;
  ring: EventLogEntry[] = [];
  readonly followers = new Set<MemFollower>();
  constructor(
    private readonly capacity: number,
    private readonly maxAgeMs: number,
    private readonly now: () => number,
  ) {}

  trim(): void {
    const cutoff = this.now() - this.maxAgeMs;
    let drop = 0;
    while (drop < this.ring.length && (this.ring.length - drop > this.capacity || (this.ring[drop] as EventLogEntry).time < cutoff)) drop++;
    if (drop > 0) this.ring = this.ring.slice(drop);
  }

  append(subject: string, data: Uint8Array): EventLogEntry {
    const e: EventLogEntry = { seq: ++this.seq, subject, data: data.slice(), time: this.now() };
    this.ring.push(e);
    this.trim();
    return e;
  }

  after(seq: number): EventLogEntry[] {
    this.trim();
    return this.ring.filter((e) => e.seq > seq);
  }
}

export class MemoryBusNetwork {
  readonly prefix: string;
  readonly log: Logger;
  readonly now: () => number;
  readonly #conns = new Set<MemoryBus>();
  readonly #subs = new Set<Sub>();
  readonly #kv = new Map<string, MemoryKvStore>();
  readonly events: MemoryEventStore;
  #queue: (() => void)[] = [];
  #scheduled = false;

  constructor(opts: MemoryBusNetworkOptions = {}) {
    this.prefix = meshNames(opts.prefix).prefix;
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
    this.events = new MemoryEventStore(opts.eventsCapacity ?? 10_000, opts.eventsMaxAgeMs ?? 24 * 3600_000, this.now);
  }

  /** A new connection (one node). */
  connect(name: string): Bus {
    const b = new MemoryBus(this, name);
    this.#conns.add(b);
    return b;
  }

  /** Cut a connection off from the network (tests). */
  partition(bus: Bus): void {
    this.#own(bus).setPartitioned(true);
  }

  /** Reconnect a partitioned connection (tests). */
  heal(bus: Bus): void {
    const b = this.#own(bus);
    b.setPartitioned(false);
    // catch up paused KV watches and event follows
    for (const store of this.#kv.values()) {
      for (const w of store.watchers) {
        if (w.conn !== b || w.stopped) continue;
        for (const e of store.all()) {
          if (e.revision > w.lastRev && subjectMatches(w.filter, e.key)) this.#deliverKv(store, w, e);
        }
      }
    }
    for (const f of this.events.followers) {
      if (f.conn !== b || f.stopped) continue;
      for (const e of this.events.after(f.lastSeq)) this.#deliverEvent(f, e);
    }
  }

  /** Close every connection. */
  async close(): Promise<void> {
    await Promise.all([...this.#conns].map((c) => c.close()));
  }

  #own(bus: Bus): MemoryBus {
    if (!(bus instanceof MemoryBus) || !this.#conns.has(bus)) throw new MeshConfigError('bus does not belong to this network');
    return bus;
  }

  // ------------------------------------------------------------ internals used by MemoryBus

  enqueue(fn: () => void): void {
    this.#queue.push(fn);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.#drain());
    }
  }

  #drain(): void {
    this.#scheduled = false;
    const q = this.#queue;
    this.#queue = [];
    for (const fn of q) {
      try {
        fn();
      } catch (err) {
        this.log.error({ err: errMessage(err) }, 'memory bus: handler threw');
      }
    }
  }

  removeConn(b: MemoryBus): void {
    this.#conns.delete(b);
    for (const s of this.#subs) if (s.conn === b) this.removeSub(s);
    for (const store of this.#kv.values()) for (const w of store.watchers) if (w.conn === b) store.watchers.delete(w);
    for (const f of this.events.followers) if (f.conn === b) this.events.followers.delete(f);
  }

  addSub(s: Sub): void {
    this.#subs.add(s);
  }
  removeSub(s: Sub): void {
    s.closed = true;
    this.#subs.delete(s);
  }

  route(from: MemoryBus, subject: string, data: Uint8Array, reply?: string): number {
    if (!from.connected) return 0;
    let n = 0;
    for (const s of this.#subs) {
      if (s.closed || !s.conn.connected || !subjectMatches(s.pattern, subject)) continue;
      n++;
      const copy = data.slice();
      const responder = s.conn;
      const msg: BusMessage = {
        subject,
        data: copy,
        ...(reply !== undefined ? { reply } : {}),
        respond: (d: Uint8Array) => {
          if (reply === undefined || !responder.connected) return false;
          this.route(responder, reply, d);
          return true;
        },
      };
      this.enqueue(() => {
        if (s.closed || !s.conn.connected) return;
        try {
          s.handler(msg);
        } catch (err) {
          s.conn.log.error({ subject, err: errMessage(err) }, 'bus handler threw');
        }
      });
    }
    return n;
  }

  kvStore(name: string, opts: KvBucketOptions): MemoryKvStore {
    let s = this.#kv.get(name);
    if (!s) {
      s = new MemoryKvStore(name, Math.max(0, opts.maxAgeMs), Math.max(1, opts.history ?? 1), this.now);
      this.#kv.set(name, s);
    }
    return s;
  }

  notifyKv(store: MemoryKvStore, e: StoredKv): void {
    for (const w of store.watchers) {
      if (!w.stopped && w.conn.connected && subjectMatches(w.filter, e.key)) this.#deliverKv(store, w, e);
    }
  }

  #deliverKv(store: MemoryKvStore, w: MemWatcher, e: StoredKv): void {
    w.lastRev = Math.max(w.lastRev, e.revision);
    const entry = store.toEntry(e);
    this.enqueue(() => {
      if (!w.stopped) w.cb(entry);
    });
  }

  notifyEvent(e: EventLogEntry): void {
    for (const f of this.events.followers) if (!f.stopped && f.conn.connected) this.#deliverEvent(f, e);
  }

  #deliverEvent(f: MemFollower, e: EventLogEntry): void {
    if (e.seq <= f.lastSeq) return;
    f.lastSeq = e.seq;
    const copy = { ...e, data: e.data.slice() };
    this.enqueue(() => {
      if (!f.stopped) f.cb(copy);
    });
  }
}

class MemoryBus implements Bus {
  readonly names: MeshNames;
  readonly log: Logger;
  #status: BusStatus = 'connected';
  readonly #listeners = new Set<(s: BusStatus) => void>();
  readonly events: EventLog;

  constructor(
    private readonly net: MemoryBusNetwork,
    readonly name: string,
  ) {
    this.names = meshNames(net.prefix);
    this.log = net.log.child({ bus: name });
    this.events = new MemoryEventLog(net, this);
  }

  get status(): BusStatus {
    return this.#status;
  }
  get connected(): boolean {
    return this.#status === 'connected';
  }

  setPartitioned(p: boolean): void {
    if (this.#status === 'closed') return;
    if (p && this.#status === 'connected') {
      this.#setStatus('disconnected');
      this.#setStatus('reconnecting');
    } else if (!p && this.#status !== 'connected') {
      this.#setStatus('connected');
    }
  }

  #setStatus(s: BusStatus): void {
    this.#status = s;
    for (const l of [...this.#listeners]) {
      try {
        l(s);
      } catch (err) {
        this.log.error({ err: errMessage(err) }, 'status listener threw');
      }
    }
  }

  onStatus(cb: (status: BusStatus) => void): () => void {
    this.#listeners.add(cb);
    return () => this.#listeners.delete(cb);
  }

  assertUp(): void {
    if (this.#status === 'closed') throw new BusUnavailableError('bus closed');
    if (this.#status !== 'connected') throw new BusUnavailableError(`bus ${this.#status}`);
  }

  publish(subject: string, data: Uint8Array): void {
    if (!isValidPublishSubject(subject)) throw new MeshConfigError(`invalid publish subject ${JSON.stringify(subject)}`);
    if (this.#status === 'closed') throw new BusUnavailableError('bus closed');
    this.net.route(this, subject, data);
  }

  subscribe(subject: string, handler: BusHandler): BusSubscription {
    if (!isValidSubscribeSubject(subject)) throw new MeshConfigError(`invalid subscribe subject ${JSON.stringify(subject)}`);
    if (this.#status === 'closed') throw new BusUnavailableError('bus closed');
    const s: Sub = { conn: this, pattern: subject, handler, closed: false };
    this.net.addSub(s);
    return { subject, unsubscribe: () => this.net.removeSub(s) };
  }

  request(subject: string, data: Uint8Array, opts: RequestOptions = {}): Promise<Uint8Array> {
    const timeoutMs = opts.timeoutMs ?? 2000;
    try {
      if (!isValidPublishSubject(subject)) throw new MeshConfigError(`invalid request subject ${JSON.stringify(subject)}`);
      this.assertUp();
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<Uint8Array>((resolve, reject) => {
      const inbox = `_INBOX.${randomUUID().replace(/-/g, '')}`;
      let done = false;
      const sub = this.subscribe(inbox, (m) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        sub.unsubscribe();
        resolve(m.data);
      });
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        sub.unsubscribe();
        reject(new BusTimeoutError(subject, timeoutMs));
      }, timeoutMs);
      const n = this.net.route(this, subject, data, inbox);
      if (n === 0) {
        done = true;
        clearTimeout(timer);
        sub.unsubscribe();
        // NATS reports no-responders asynchronously too
        setImmediate(() => reject(new BusNoRespondersError(subject)));
      }
    });
  }

  async kv(bucket: string, opts: KvBucketOptions): Promise<KvBucket> {
    if (!/^[-\w]+$/.test(bucket)) throw new MeshConfigError(`invalid bucket name ${JSON.stringify(bucket)}`);
    this.assertUp();
    return new MemoryKvBucket(this.net, this, this.net.kvStore(bucket, opts));
  }

  async close(): Promise<void> {
    if (this.#status === 'closed') return;
    this.#setStatus('closed');
    this.net.removeConn(this);
    this.#listeners.clear();
  }
}

class MemoryKvBucket implements KvBucket {
  constructor(
    private readonly net: MemoryBusNetwork,
    private readonly conn: MemoryBus,
    private readonly store: MemoryKvStore,
  ) {}

  get name(): string {
    return this.store.name;
  }
  get maxAgeMs(): number {
    return this.store.maxAgeMs;
  }

  #check(key: string): void {
    if (!isValidKvKey(key)) throw new KvError(`invalid key: ${key}`);
    this.conn.assertUp();
  }

  #commit(key: string, value: Uint8Array, op: KvOperation): number {
    const e = this.store.write(key, value.slice(), op);
    this.net.notifyKv(this.store, e);
    return e.revision;
  }

  async create(key: string, value: Uint8Array): Promise<number> {
    this.#check(key);
    const cur = this.store.latest(key);
    if (cur && cur.operation === 'PUT') throw new KvKeyExistsError(this.name, key);
    return this.#commit(key, value, 'PUT');
  }

  async update(key: string, value: Uint8Array, revision: number): Promise<number> {
    this.#check(key);
    const cur = this.store.latest(key);
    if (!cur || cur.revision !== revision) throw new KvRevisionMismatchError(this.name, key, revision);
    return this.#commit(key, value, 'PUT');
  }

  async put(key: string, value: Uint8Array): Promise<number> {
    this.#check(key);
    return this.#commit(key, value, 'PUT');
  }

  async get(key: string): Promise<KvEntry | null> {
    this.#check(key);
    const cur = this.store.latest(key);
    return cur && cur.operation === 'PUT' ? this.store.toEntry(cur) : null;
  }

  async #remove(key: string, op: 'DEL' | 'PURGE', revision?: number): Promise<void> {
    this.#check(key);
    if (revision !== undefined) {
      const cur = this.store.latest(key);
      if (!cur || cur.revision !== revision) throw new KvRevisionMismatchError(this.name, key, revision);
    }
    this.#commit(key, new Uint8Array(0), op);
  }

  delete(key: string, opts: { revision?: number } = {}): Promise<void> {
    return this.#remove(key, 'DEL', opts.revision);
  }

  purge(key: string, opts: { revision?: number } = {}): Promise<void> {
    return this.#remove(key, 'PURGE', opts.revision);
  }

  async keys(filter = '>'): Promise<string[]> {
    return (await this.entries(filter)).map((e) => e.key);
  }

  async entries(filter = '>'): Promise<KvEntry[]> {
    if (!isValidKvFilter(filter)) throw new KvError(`invalid key filter: ${filter}`);
    this.conn.assertUp();
    return this.store
      .all()
      .filter((e) => e.operation === 'PUT' && subjectMatches(filter, e.key))
      .map((e) => this.store.toEntry(e));
  }

  async watch(cb: (entry: KvEntry) => void, opts: KvWatchOptions = {}): Promise<KvWatcher> {
    const filter = opts.key ?? '>';
    if (!isValidKvFilter(filter)) throw new KvError(`invalid key filter: ${filter}`);
    this.conn.assertUp();
    const w: MemWatcher = { conn: this.conn, filter, cb, lastRev: this.store.seq, stopped: false };
    if (opts.initial !== false) {
      w.lastRev = 0;
      for (const e of this.store.all()) {
        if (subjectMatches(filter, e.key)) {
          w.lastRev = e.revision;
          const entry = this.store.toEntry(e);
          this.net.enqueue(() => {
            if (!w.stopped) cb(entry);
          });
        }
      }
      w.lastRev = this.store.seq;
    }
    this.store.watchers.add(w);
    return {
      stop: () => {
        w.stopped = true;
        this.store.watchers.delete(w);
      },
    };
  }
}

class MemoryEventLog implements EventLog {
  constructor(
    private readonly net: MemoryBusNetwork,
    private readonly conn: MemoryBus,
  ) {}

  async append(suffix: string, data: Uint8Array): Promise<number> {
    const subject = `${this.conn.names.eventsBase}.${suffix}`;
    if (!isValidPublishSubject(subject)) throw new MeshConfigError(`invalid event subject ${JSON.stringify(subject)}`);
    this.conn.assertUp();
    const e = this.net.events.append(subject, data);
    this.net.notifyEvent(e);
    return e.seq;
  }

  async read(opts: EventReadOptions = {}): Promise<EventLogEntry[]> {
    this.conn.assertUp();
    const limit = clampLimit(opts.limit);
    const all = this.net.events.after(opts.since ?? 0);
    const picked = opts.since === undefined ? all.slice(-limit) : all.slice(0, limit);
    return picked.map((e) => ({ ...e, data: e.data.slice() }));
  }

  async follow(cb: (entry: EventLogEntry) => void, opts: { since?: number } = {}): Promise<EventFollower> {
    this.conn.assertUp();
    const f: MemFollower = { conn: this.conn, cb, lastSeq: opts.since ?? this.net.events.seq, stopped: false };
    this.net.events.followers.add(f);
    if (opts.since !== undefined) for (const e of this.net.events.after(opts.since)) this.#deliver(f, e);
    return {
      stop: () => {
        f.stopped = true;
        this.net.events.followers.delete(f);
      },
    };
  }

  #deliver(f: MemFollower, e: EventLogEntry): void {
    f.lastSeq = Math.max(f.lastSeq, e.seq);
    const copy = { ...e, data: e.data.slice() };
    this.net.enqueue(() => {
      if (!f.stopped) f.cb(copy);
    });
  }
}
