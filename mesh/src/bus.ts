/**
 * The control-plane bus: one interface, two implementations with the same
 * semantics — NATS (`connectNatsBus`) and in-process (`MemoryBusNetwork`).
 *
 * Semantics both implementations follow:
 * - publish/subscribe with NATS subject rules (`.`-separated tokens, `*`
 *   matches one token, `>` one or more trailing tokens); delivery is
 *   asynchronous and in publish order per publisher; a throwing handler is
 *   logged and does not affect other handlers. Publishing while disconnected
 *   may drop the message (memory always drops it).
 * - request/reply with a timeout: `BusTimeoutError`,
 *   `BusNoRespondersError`, `BusUnavailableError` (see errors.ts).
 * - KV buckets with a bucket-wide max age (JetStream `max_age`; there is no
 *   per-key TTL on NATS 2.9). A value older than the max age disappears
 *   **without** a delete notification on watches (2.9 does not write a
 *   marker). Code above the bus therefore judges liveness by the entry's
 *   `createdAt` (server time of the last write) and re-reads, never by
 *   waiting for a delete.
 * - Revisions are the bucket's stream sequence: strictly increasing across
 *   all keys of the bucket, so a later write always has a larger revision.
 * - While disconnected, KV operations and event appends reject at once with
 *   `BusUnavailableError`; watches and follows pause and, after the
 *   connection returns, deliver what they missed (for KV: the latest entry
 *   of every key changed meanwhile, as history=1 keeps only that).
 */
import type { MeshNames } from './names.ts';

export type BusStatus = 'connected' | 'disconnected' | 'reconnecting' | 'closed';

export interface BusMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  /** Set for requests. */
  readonly reply?: string;
  /** Answer a request; false when the message has no reply subject or the bus is down. */
  respond(data: Uint8Array): boolean;
}

export type BusHandler = (msg: BusMessage) => void;

export interface BusSubscription {
  readonly subject: string;
  unsubscribe(): void;
}

export interface RequestOptions {
  /** default 2000 */
  timeoutMs?: number;
}

export interface KvBucketOptions {
  /** Bucket-wide max age of every value (and delete marker), ms. 0 = forever. */
  maxAgeMs: number;
  /** Values kept per key (default 1). */
  history?: number;
  /** NATS only: stream replicas; defaults to the bus's `replicas` option. */
  replicas?: number;
}

export type KvOperation = 'PUT' | 'DEL' | 'PURGE';

export interface KvEntry {
  readonly bucket: string;
  readonly key: string;
  readonly value: Uint8Array;
  /** The bucket-wide sequence of this write; the fencing token. */
  readonly revision: number;
  /** Server time of the write, ms since epoch. */
  readonly createdAt: number;
  readonly operation: KvOperation;
}

export interface KvWatchOptions {
  /** Key filter with `*`/`>` wildcards; default `>` (all keys). */
  key?: string;
  /** Deliver the current entry of every matching key first (default true). */
  initial?: boolean;
  /** Sealed buses only (sealed-bus.ts): told of a PUT whose value failed verification, which is not delivered. */
  onUntrusted?: (key: string, revision: number) => void;
}

export interface KvWatcher {
  stop(): void;
}

export interface KvWriteOptions {
  /** Per-call timeout (NATS); default the bus's request timeout. */
  timeoutMs?: number;
  /**
   * Sealed buses only (sealed-bus.ts): when `create` finds the key, or `update` the wrong revision,
   * because its latest value is unverifiable (forged), write over that value. A lease holder restores its record so.
   */
  overUntrusted?: boolean;
}

export interface KvBucket {
  readonly name: string;
  /** The max age the bucket actually has (may differ from what was asked if it already existed). */
  readonly maxAgeMs: number;
  /** Create if absent (absent includes deleted and expired); `KvKeyExistsError` otherwise. Returns the revision. */
  create(key: string, value: Uint8Array, opts?: KvWriteOptions): Promise<number>;
  /** Compare-and-set on the key's latest revision; `KvRevisionMismatchError` otherwise. */
  update(key: string, value: Uint8Array, revision: number, opts?: KvWriteOptions): Promise<number>;
  /** Unconditional write. */
  put(key: string, value: Uint8Array, opts?: KvWriteOptions): Promise<number>;
  /** Latest live value, or null (absent, deleted, purged or expired). */
  get(key: string): Promise<KvEntry | null>;
  /** Writes a delete marker; with `revision`, only if the key is at that revision. */
  delete(key: string, opts?: { revision?: number } & KvWriteOptions): Promise<void>;
  /** Removes the key and its history (leaves one purge marker). */
  purge(key: string, opts?: { revision?: number } & KvWriteOptions): Promise<void>;
  /** Keys with a live value, optionally filtered (`*`/`>`). */
  keys(filter?: string): Promise<string[]>;
  /** Live entries, optionally filtered. */
  entries(filter?: string): Promise<KvEntry[]>;
  /** Calls `cb` for every PUT/DEL/PURGE in revision order (but not for expiry: see module doc). */
  watch(cb: (entry: KvEntry) => void, opts?: KvWatchOptions): Promise<KvWatcher>;
}

export interface EventLogEntry {
  /** Position in the log, strictly increasing. */
  readonly seq: number;
  /** Full subject, `<prefix>.events.<suffix>`. */
  readonly subject: string;
  readonly data: Uint8Array;
  /** Server time of the append, ms since epoch. */
  readonly time: number;
}

export interface EventReadOptions {
  /** Return entries with `seq > since`; without it, the most recent `limit` entries. */
  since?: number;
  /** Max entries (default 100, max 10 000). */
  limit?: number;
}

export interface EventFollower {
  stop(): void;
}

export interface EventLog {
  /**
   * Append to `<prefix>.events.<suffix>` (JetStream stream `MESHCAST_EVENTS`,
   * kept 24 h; memory: a bounded ring). Returns the sequence.
   */
  append(suffix: string, data: Uint8Array): Promise<number>;
  read(opts?: EventReadOptions): Promise<EventLogEntry[]>;
  /** Live tail: entries appended after the call (or after `since`), in order. */
  follow(cb: (entry: EventLogEntry) => void, opts?: { since?: number }): Promise<EventFollower>;
}

export interface Bus {
  /** Connection name (the node id, usually). */
  readonly name: string;
  readonly names: MeshNames;
  readonly status: BusStatus;
  /** Status changes; returns an unsubscribe function. */
  onStatus(cb: (status: BusStatus) => void): () => void;
  publish(subject: string, data: Uint8Array): void;
  subscribe(subject: string, handler: BusHandler): BusSubscription;
  request(subject: string, data: Uint8Array, opts?: RequestOptions): Promise<Uint8Array>;
  kv(bucket: string, opts: KvBucketOptions): Promise<KvBucket>;
  readonly events: EventLog;
  close(): Promise<void>;
}

const TOKEN_OK = /^[^\s.*>]+$/;

/** True when `subject` (no wildcards) matches `pattern` (may contain `*` / `>`). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    const pt = p[i];
    if (pt === '>') return s.length > i;
    if (i >= s.length) return false;
    if (pt !== '*' && pt !== s[i]) return false;
  }
  return p.length === s.length;
}

/** A subject you can publish to: non-empty tokens, no wildcards, no whitespace. */
export function isValidPublishSubject(subject: string): boolean {
  if (typeof subject !== 'string' || subject.length === 0) return false;
  return subject.split('.').every((t) => TOKEN_OK.test(t));
}

/** A subscription subject: like a publish subject, but `*` tokens and a final `>` are allowed. */
export function isValidSubscribeSubject(subject: string): boolean {
  if (typeof subject !== 'string' || subject.length === 0) return false;
  const toks = subject.split('.');
  return toks.every((t, i) => t === '*' || (t === '>' && i === toks.length - 1) || TOKEN_OK.test(t));
}

const KV_KEY = /^[-/=.\w]+$/;
export function isValidKvKey(key: string): boolean {
  return typeof key === 'string' && KV_KEY.test(key) && !key.startsWith('.') && !key.endsWith('.') && !key.includes('..');
}
export function isValidKvFilter(filter: string): boolean {
  if (typeof filter !== 'string' || filter.length === 0) return false;
  const toks = filter.split('.');
  return toks.every((t, i) => t === '*' || (t === '>' && i === toks.length - 1) || /^[-/=\w]+$/.test(t));
}

/** Clamp an event-log read limit to 1..10 000 (default 100). */
export function clampLimit(limit: number | undefined): number {
  if (limit === undefined) return 100;
  if (!Number.isFinite(limit) || limit < 1) return 1;
  return Math.min(10_000, Math.floor(limit));
}
