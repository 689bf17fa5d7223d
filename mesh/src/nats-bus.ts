/**
 * The bus over NATS (nats.js v3 modular API): core pub/sub and request/reply,
 * JetStream KV buckets for leases, a JetStream stream for the event log.
 * Semantics: see bus.ts. Works on nats-server 2.9 (bucket `max_age` does
 * lease expiry; no per-key TTL or delete markers on expiry) and newer.
 */
import { readFileSync } from 'node:fs';
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  ClosedConnectionError,
  DrainingConnectionError,
  RequestError,
  TimeoutError,
  NoRespondersError,
  type Authenticator,
  type NatsConnection,
  type NodeConnectionOptions,
  type Status,
} from '@nats-io/transport-node';
import {
  jetstream,
  jetstreamManager,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { Kvm, KvWatchInclude, type KV } from '@nats-io/kv';
import type {
  Bus,
  BusHandler,
  BusStatus,
  BusSubscription,
  EventFollower,
  EventLog,
  EventLogEntry,
  EventReadOptions,
  KvBucket,
  KvBucketOptions,
  KvEntry,
  KvWatcher,
  KvWatchOptions,
  KvWriteOptions,
  RequestOptions,
} from './bus.ts';
import { clampLimit, isValidKvFilter, isValidKvKey, isValidPublishSubject, isValidSubscribeSubject } from './bus.ts';
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

export interface NatsBusOptions {
  /** `nats://host:4222` URLs or `host:port`; more than one for a cluster. */
  servers: string | string[];
  /** Connection name, shown by `nats server report connections`; use the node id. */
  name: string;
  /** Subject prefix (default `meshcast`). */
  prefix?: string;
  user?: string;
  pass?: string;
  token?: string;
  /** NKey seed (`SU...`) as a string. */
  nkeySeed?: string;
  /** File holding an NKey seed. */
  nkeyFile?: string;
  /** Decentralised-auth `.creds` file (JWT + seed). */
  credsFile?: string;
  /** Passed through to nats.js (caFile, certFile, keyFile, handshakeFirst, ...). */
  tls?: NodeConnectionOptions['tls'];
  /** Client PING interval, default 5000 ms: a node cut off from NATS notices within ~pingInterval × (maxPingOut + 1). */
  pingIntervalMs?: number;
  /** default 2 */
  maxPingOut?: number;
  /** Delay between reconnect attempts, default 1000 ms (reconnects forever). */
  reconnectTimeWaitMs?: number;
  /** Timeout of requests and JetStream API calls, default 2000 ms. */
  requestTimeoutMs?: number;
  /** Replicas of KV buckets and the event stream (default 1; use 3 on a 3-server cluster). */
  replicas?: number;
  /** Event stream max age, default 24 h. */
  eventsMaxAgeMs?: number;
  /** Event stream max messages, default 100 000 (oldest discarded). */
  eventsMaxMsgs?: number;
  /** Keep retrying the first connection instead of failing (default false). */
  waitOnFirstConnect?: boolean;
  logger?: Logger;
}

/** Connect to NATS and return a {@link Bus}. Rejects when the first connection fails (unless `waitOnFirstConnect`). */
export async function connectNatsBus(opts: NatsBusOptions): Promise<Bus> {
  const names = meshNames(opts.prefix);
  const log = (opts.logger ?? silentLogger).child({ bus: opts.name });
  const authenticator: Authenticator[] = [];
  if (opts.credsFile) authenticator.push(credsAuthenticator(readFileSync(opts.credsFile)));
  if (opts.nkeySeed || opts.nkeyFile) {
    const seed = opts.nkeySeed ?? readFileSync(opts.nkeyFile as string, 'utf8').trim();
    authenticator.push(nkeyAuthenticator(new TextEncoder().encode(seed)));
  }
  const co: NodeConnectionOptions = {
    servers: opts.servers,
    name: opts.name,
    pingInterval: opts.pingIntervalMs ?? 5000,
    maxPingOut: opts.maxPingOut ?? 2,
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: opts.reconnectTimeWaitMs ?? 1000,
    reconnectJitter: 200,
    timeout: Math.max(opts.requestTimeoutMs ?? 2000, 2000),
    waitOnFirstConnect: opts.waitOnFirstConnect ?? false,
  };
  if (opts.user !== undefined) co.user = opts.user;
  if (opts.pass !== undefined) co.pass = opts.pass;
  if (opts.token !== undefined) co.token = opts.token;
  if (opts.tls !== undefined) co.tls = opts.tls;
  if (authenticator.length === 1) co.authenticator = authenticator[0] as Authenticator;
  else if (authenticator.length > 1) co.authenticator = authenticator;
  let nc: NatsConnection;
  try {
    nc = await connect(co);
  } catch (err) {
    throw new BusUnavailableError(`cannot connect to NATS ${String(opts.servers)}: ${errMessage(err)}`, { cause: err });
  }
  log.info({ server: nc.getServer() }, 'connected to NATS');
  return new NatsBus(nc, opts, names, log);
}

class NatsBus implements Bus {
  #status: BusStatus = 'connected';
  readonly #listeners = new Set<(s: BusStatus) => void>();
  readonly js: JetStreamClient;
  #jsm: Promise<JetStreamManager> | undefined;
  readonly events: EventLog;
  readonly timeoutMs: number;
  readonly replicas: number;
  readonly #buckets = new Map<string, Promise<NatsKvBucket>>();

  constructor(
    readonly nc: NatsConnection,
    readonly opts: NatsBusOptions,
    readonly names: MeshNames,
    readonly log: Logger,
  ) {
    this.timeoutMs = opts.requestTimeoutMs ?? 2000;
    this.replicas = opts.replicas ?? 1;
    this.js = jetstream(nc, { timeout: this.timeoutMs });
    this.events = new NatsEventLog(this);
    void this.#watchStatus();
    void nc.closed().then((err) => {
      if (err) log.warn({ err: errMessage(err) }, 'NATS connection closed with error');
      this.#setStatus('closed');
    });
  }

  get name(): string {
    return this.opts.name;
  }
  get status(): BusStatus {
    return this.#status;
  }

  jsm(): Promise<JetStreamManager> {
    this.#jsm ??= jetstreamManager(this.nc, { timeout: this.timeoutMs, checkAPI: false });
    return this.#jsm;
  }

  async #watchStatus(): Promise<void> {
    const loggedErrors = new Set<string>();
    try {
      for await (const s of this.nc.status() as AsyncIterable<Status>) {
        switch (s.type) {
          case 'disconnect':
            this.log.warn({ server: s.server }, 'NATS disconnected');
            this.#setStatus('disconnected');
            break;
          case 'reconnecting':
            if (this.#status !== 'reconnecting') this.#setStatus('reconnecting');
            break;
          case 'reconnect':
            this.log.info({ server: s.server }, 'NATS reconnected');
            this.#setStatus('connected');
            break;
          case 'staleConnection':
            this.log.warn('NATS connection stale (no PONG); reconnecting');
            break;
          case 'error': {
            const m = errMessage(s.error);
            if (!loggedErrors.has(m) && loggedErrors.size < 100) {
              loggedErrors.add(m);
              this.log.warn({ err: m }, 'NATS server error');
            }
            break;
          }
          case 'close':
            this.#setStatus('closed');
            break;
          default:
            break;
        }
      }
    } catch (err) {
      this.log.warn({ err: errMessage(err) }, 'NATS status iterator ended');
    }
  }

  #setStatus(s: BusStatus): void {
    if (this.#status === s || this.#status === 'closed') return;
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
    if (this.#status === 'closed' || this.nc.isClosed()) throw new BusUnavailableError('bus closed');
    if (this.#status !== 'connected') throw new BusUnavailableError(`bus ${this.#status}`);
  }

  publish(subject: string, data: Uint8Array): void {
    if (!isValidPublishSubject(subject)) throw new MeshConfigError(`invalid publish subject ${JSON.stringify(subject)}`);
    try {
      this.nc.publish(subject, data);
    } catch (err) {
      throw mapErr(err, subject, this.timeoutMs);
    }
  }

  subscribe(subject: string, handler: BusHandler): BusSubscription {
    if (!isValidSubscribeSubject(subject)) throw new MeshConfigError(`invalid subscribe subject ${JSON.stringify(subject)}`);
    let sub;
    try {
      sub = this.nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err) {
            this.log.warn({ subject, err: errMessage(err) }, 'subscription error');
            return;
          }
          try {
            handler({
              subject: msg.subject,
              data: msg.data,
              ...(msg.reply ? { reply: msg.reply } : {}),
              respond: (d: Uint8Array) => {
                if (!msg.reply || this.nc.isClosed()) return false;
                try {
                  return msg.respond(d);
                } catch {
                  return false;
                }
              },
            });
          } catch (e) {
            this.log.error({ subject: msg.subject, err: errMessage(e) }, 'bus handler threw');
          }
        },
      });
    } catch (err) {
      throw mapErr(err, subject, this.timeoutMs);
    }
    return { subject, unsubscribe: () => sub.unsubscribe() };
  }

  async request(subject: string, data: Uint8Array, opts: RequestOptions = {}): Promise<Uint8Array> {
    if (!isValidPublishSubject(subject)) throw new MeshConfigError(`invalid request subject ${JSON.stringify(subject)}`);
    this.assertUp();
    const timeout = opts.timeoutMs ?? this.timeoutMs;
    try {
      const m = await this.nc.request(subject, data, { timeout });
      return m.data;
    } catch (err) {
      throw mapErr(err, subject, timeout);
    }
  }

  kv(bucket: string, opts: KvBucketOptions): Promise<KvBucket> {
    if (!/^[-\w]+$/.test(bucket)) return Promise.reject(new MeshConfigError(`invalid bucket name ${JSON.stringify(bucket)}`));
    try {
      this.assertUp();
    } catch (err) {
      return Promise.reject(err);
    }
    let p = this.#buckets.get(bucket);
    if (!p) {
      p = this.#openBucket(bucket, opts);
      this.#buckets.set(bucket, p);
      p.catch(() => this.#buckets.delete(bucket));
    }
    return p;
  }

  async #openBucket(bucket: string, opts: KvBucketOptions): Promise<NatsKvBucket> {
    const kvm = new Kvm(this.js);
    let kv: KV;
    try {
      kv = await kvm.create(bucket, {
        history: Math.max(1, opts.history ?? 1),
        ttl: Math.max(0, opts.maxAgeMs),
        replicas: opts.replicas ?? this.replicas,
        storage: StorageType.File,
        timeout: this.timeoutMs,
      });
    } catch (err) {
      throw mapErr(err, `KV ${bucket}`, this.timeoutMs);
    }
    let maxAgeMs = opts.maxAgeMs;
    try {
      const st = await kv.status();
      maxAgeMs = st.ttl;
      if (st.ttl !== opts.maxAgeMs) {
        this.log.warn(
          { bucket, wantMaxAgeMs: opts.maxAgeMs, haveMaxAgeMs: st.ttl },
          'KV bucket already exists with a different max age; using the existing one',
        );
      }
    } catch (err) {
      this.log.warn({ bucket, err: errMessage(err) }, 'cannot read KV bucket status');
    }
    return new NatsKvBucket(this, bucket, kv, maxAgeMs);
  }

  /** Drain (flush pending publishes) when connected, else close at once; never waits more than 2 s. */
  async close(): Promise<void> {
    if (this.nc.isClosed()) {
      this.#setStatus('closed');
      return;
    }
    if (this.#status === 'connected') {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, 2000);
      });
      await Promise.race([this.nc.drain().catch(() => undefined), timeout]);
      clearTimeout(timer);
    }
    if (!this.nc.isClosed()) await this.nc.close().catch(() => undefined);
    this.#setStatus('closed');
  }
}

function isWrongLastSeq(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

function mapErr(err: unknown, what: string, timeoutMs: number): Error {
  if (err instanceof ClosedConnectionError || err instanceof DrainingConnectionError) {
    return new BusUnavailableError(`bus closed (${what})`, { cause: err });
  }
  if (err instanceof TimeoutError || (err instanceof RequestError && err.cause instanceof TimeoutError)) {
    return new BusTimeoutError(what, timeoutMs, { cause: err });
  }
  if (err instanceof NoRespondersError || (err instanceof RequestError && err.isNoResponders())) {
    return new BusNoRespondersError(what, { cause: err });
  }
  if (err instanceof Error && /timeout/i.test(err.message)) return new BusTimeoutError(what, timeoutMs, { cause: err });
  if (err instanceof Error && /no responders/i.test(err.message)) return new BusNoRespondersError(what, { cause: err });
  return new KvError(`${what}: ${errMessage(err)}`, { cause: err });
}

class NatsKvBucket implements KvBucket {
  constructor(
    private readonly bus: NatsBus,
    readonly name: string,
    private readonly kv: KV,
    readonly maxAgeMs: number,
  ) {}

  #check(key: string): void {
    if (!isValidKvKey(key)) throw new KvError(`invalid key: ${key}`);
    this.bus.assertUp();
  }

  #timeout(o?: KvWriteOptions): number {
    return o?.timeoutMs ?? this.bus.timeoutMs;
  }

  async create(key: string, value: Uint8Array, o?: KvWriteOptions): Promise<number> {
    this.#check(key);
    try {
      // kv.create() has no timeout parameter; the JetStream context's timeout applies
      return await this.kv.create(key, value);
    } catch (err) {
      if (isWrongLastSeq(err)) throw new KvKeyExistsError(this.name, key, { cause: err });
      throw mapErr(err, `KV ${this.name} create ${key}`, this.#timeout(o));
    }
  }

  async update(key: string, value: Uint8Array, revision: number, o?: KvWriteOptions): Promise<number> {
    this.#check(key);
    if (!Number.isSafeInteger(revision) || revision <= 0) throw new KvRevisionMismatchError(this.name, key, revision);
    try {
      return await this.kv.update(key, value, revision, this.#timeout(o));
    } catch (err) {
      if (isWrongLastSeq(err)) throw new KvRevisionMismatchError(this.name, key, revision, { cause: err });
      throw mapErr(err, `KV ${this.name} update ${key}`, this.#timeout(o));
    }
  }

  async put(key: string, value: Uint8Array, o?: KvWriteOptions): Promise<number> {
    this.#check(key);
    try {
      return await this.kv.put(key, value, { timeout: this.#timeout(o) });
    } catch (err) {
      throw mapErr(err, `KV ${this.name} put ${key}`, this.#timeout(o));
    }
  }

  async get(key: string): Promise<KvEntry | null> {
    this.#check(key);
    try {
      const e = await this.kv.get(key);
      if (!e || e.operation !== 'PUT') return null;
      return toEntry(this.name, e);
    } catch (err) {
      throw mapErr(err, `KV ${this.name} get ${key}`, this.bus.timeoutMs);
    }
  }

  async #remove(key: string, purge: boolean, o: { revision?: number } & KvWriteOptions): Promise<void> {
    this.#check(key);
    try {
      const opts = o.revision !== undefined ? { previousSeq: o.revision } : {};
      if (purge) await this.kv.purge(key, opts);
      else await this.kv.delete(key, opts);
    } catch (err) {
      if (isWrongLastSeq(err)) throw new KvRevisionMismatchError(this.name, key, o.revision ?? 0, { cause: err });
      throw mapErr(err, `KV ${this.name} delete ${key}`, this.#timeout(o));
    }
  }

  delete(key: string, o: { revision?: number } & KvWriteOptions = {}): Promise<void> {
    return this.#remove(key, false, o);
  }

  purge(key: string, o: { revision?: number } & KvWriteOptions = {}): Promise<void> {
    return this.#remove(key, true, o);
  }

  async keys(filter = '>'): Promise<string[]> {
    if (!isValidKvFilter(filter)) throw new KvError(`invalid key filter: ${filter}`);
    this.bus.assertUp();
    try {
      // One stream-info request with a subject filter, not nats.js kv.keys(): that one reads the
      // keys through an ordered consumer which, while records are rewritten or a cluster member
      // is down, can wait out its 30 s idle timeout before it ends (measured by the chaos suite).
      const jsm = await this.bus.jsm();
      const prefix = `$KV.${this.name}.`;
      const info = await jsm.streams.info(`KV_${this.name}`, { subjects_filter: `${prefix}${filter}` });
      const subjects = Object.keys(info.state.subjects ?? {}).map((s) => s.slice(prefix.length));
      // The last message of a deleted key is its delete marker: keep only keys with a live value.
      const live = await Promise.all(subjects.map(async (k) => ((await this.get(k)) ? k : undefined)));
      return live.filter((k): k is string => k !== undefined).sort();
    } catch (err) {
      throw mapErr(err, `KV ${this.name} keys`, this.bus.timeoutMs);
    }
  }

  async entries(filter = '>'): Promise<KvEntry[]> {
    const keys = await this.keys(filter);
    const got = await Promise.all(keys.map((k) => this.get(k)));
    return got.filter((e): e is KvEntry => e !== null).sort((a, b) => a.revision - b.revision);
  }

  async watch(cb: (entry: KvEntry) => void, opts: KvWatchOptions = {}): Promise<KvWatcher> {
    const filter = opts.key ?? '>';
    if (!isValidKvFilter(filter)) throw new KvError(`invalid key filter: ${filter}`);
    this.bus.assertUp();
    let it;
    try {
      it = await this.kv.watch({
        key: filter,
        include: opts.initial === false ? KvWatchInclude.UpdatesOnly : KvWatchInclude.LastValue,
      });
    } catch (err) {
      throw mapErr(err, `KV ${this.name} watch`, this.bus.timeoutMs);
    }
    let stopped = false;
    void (async () => {
      try {
        for await (const e of it) {
          if (stopped) break;
          try {
            cb(toEntry(this.name, e));
          } catch (err) {
            this.bus.log.error({ bucket: this.name, err: errMessage(err) }, 'KV watch callback threw');
          }
        }
      } catch (err) {
        if (!stopped) this.bus.log.warn({ bucket: this.name, err: errMessage(err) }, 'KV watch ended');
      }
    })();
    return {
      stop: () => {
        stopped = true;
        it.stop();
      },
    };
  }
}

function toEntry(bucket: string, e: { key: string; value: Uint8Array; revision: number; created: Date; operation: 'PUT' | 'DEL' | 'PURGE' }): KvEntry {
  return { bucket, key: e.key, value: e.value, revision: e.revision, createdAt: e.created.getTime(), operation: e.operation };
}

class NatsEventLog implements EventLog {
  #ready: Promise<void> | undefined;
  constructor(private readonly bus: NatsBus) {}

  get stream(): string {
    return this.bus.names.eventsStream;
  }

  /** Create the stream on first use (idempotent; concurrent creators with the same config are fine). */
  #ensure(): Promise<void> {
    this.#ready ??= (async () => {
      const jsm = await this.bus.jsm();
      try {
        await jsm.streams.info(this.stream);
        return;
      } catch (err) {
        if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) && !/stream not found/i.test(errMessage(err))) {
          throw err;
        }
      }
      try {
        await jsm.streams.add({
          name: this.stream,
          subjects: [this.bus.names.eventsAll],
          retention: RetentionPolicy.Limits,
          storage: StorageType.File,
          discard: DiscardPolicy.Old,
          max_age: (this.bus.opts.eventsMaxAgeMs ?? 24 * 3600_000) * 1_000_000,
          max_msgs: this.bus.opts.eventsMaxMsgs ?? 100_000,
          num_replicas: this.bus.replicas,
        });
      } catch (err) {
        // a concurrent creator won
        await jsm.streams.info(this.stream).catch(() => {
          throw err;
        });
      }
    })();
    this.#ready.catch(() => {
      this.#ready = undefined;
    });
    return this.#ready;
  }

  async append(suffix: string, data: Uint8Array): Promise<number> {
    const subject = `${this.bus.names.eventsBase}.${suffix}`;
    if (!isValidPublishSubject(subject)) throw new MeshConfigError(`invalid event subject ${JSON.stringify(subject)}`);
    this.bus.assertUp();
    try {
      await this.#ensure();
      const ack = await this.bus.js.publish(subject, data, { timeout: this.bus.timeoutMs });
      return ack.seq;
    } catch (err) {
      throw mapErr(err, `event append ${subject}`, this.bus.timeoutMs);
    }
  }

  async read(opts: EventReadOptions = {}): Promise<EventLogEntry[]> {
    this.bus.assertUp();
    const limit = clampLimit(opts.limit);
    try {
      await this.#ensure();
      const jsm = await this.bus.jsm();
      const st = (await jsm.streams.info(this.stream)).state;
      if (st.messages === 0) return [];
      const start = opts.since === undefined ? Math.max(st.first_seq, st.last_seq - limit + 1) : Math.max(st.first_seq, opts.since + 1);
      if (start > st.last_seq) return [];
      const want = Math.min(limit, st.last_seq - start + 1);
      const c = await this.bus.js.consumers.get(this.stream, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start });
      const out: EventLogEntry[] = [];
      const it = await c.fetch({ max_messages: want, expires: Math.max(1000, this.bus.timeoutMs) });
      for await (const m of it) {
        out.push({ seq: m.seq, subject: m.subject, data: m.data, time: Math.floor(m.info.timestampNanos / 1_000_000) });
        if (out.length >= want || m.seq >= st.last_seq || m.info.pending === 0) break;
      }
      await c.delete().catch(() => undefined);
      return out;
    } catch (err) {
      throw mapErr(err, 'event read', this.bus.timeoutMs);
    }
  }

  async follow(cb: (entry: EventLogEntry) => void, opts: { since?: number } = {}): Promise<EventFollower> {
    this.bus.assertUp();
    let it;
    try {
      await this.#ensure();
      const c = await this.bus.js.consumers.get(
        this.stream,
        opts.since !== undefined
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: opts.since + 1 }
          : { deliver_policy: DeliverPolicy.New },
      );
      it = await c.consume({
        callback: (m) => {
          try {
            cb({ seq: m.seq, subject: m.subject, data: m.data, time: Math.floor(m.info.timestampNanos / 1_000_000) });
          } catch (err) {
            this.bus.log.error({ err: errMessage(err) }, 'event follow callback threw');
          }
        },
      });
    } catch (err) {
      throw mapErr(err, 'event follow', this.bus.timeoutMs);
    }
    return {
      stop: () => {
        void it.close().catch(() => undefined);
      },
    };
  }
}
