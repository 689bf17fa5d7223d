/**
 * Recordings in the NATS JetStream Object Store (bucket `<subject_prefix>-recordings`, replicas
 * `mesh.nats_replicas`, max_bytes `recording.max_bytes`): any node lists and serves any
 * recording, and the files outlive the node that made them. An object cannot be appended to,
 * so a segment is stored as parts `<segment key>/<part>_<end ms>`, one per `flushMs` of media:
 * a node that dies loses at most the part it was filling. Reading a segment joins its parts. A
 * finished segment's parts are then joined into one object (consolidate).
 *
 * The store opens its own NATS connection, so large uploads never queue behind the mesh's
 * heartbeats and leases; it is connected on first use and again after a failure.
 */
import { connect, credsAuthenticator, nkeyAuthenticator, type Authenticator, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { Objm, StorageType, type ObjectStore } from '@nats-io/obj';
import { readFileSync } from 'node:fs';
import type { NatsAuthOptions } from '../auth/nats-auth.ts';
import { parseSegmentKey, RecordingStoreError, segmentKey, streamPrefix, type ByteRange, type RecordingStore, type SegmentInfo, type SegmentRef, type SegmentWriter, type StoreUsage } from './store.ts';

export interface ObjectStoreOptions {
  servers: string[];
  name: string;
  bucket: string;
  replicas: number;
  maxBytes: number;
  flushMs: number;
  auth: NatsAuthOptions;
  /** JetStream request timeout. */
  timeoutMs?: number;
  now?: () => number;
}

const PART_RE = /^(.*)\/(\d{6})_(\d+)$/;
/** The part index of a consolidated segment. */
const WHOLE = 999999;
/** Larger segments stay in parts (consolidating reads them all into memory). */
const MAX_WHOLE_BYTES = 256 * 1024 * 1024;

/** What a segment reads as: its whole object if it has one, else its parts in order. */
function visible(parts: Part[]): Part[] {
  const whole = parts.find((p) => p.index === WHOLE);
  return whole ? [whole] : parts;
}

function storeError(what: string, err: unknown): RecordingStoreError {
  return new RecordingStoreError(`${what}: ${(err as Error).message ?? String(err)}`, { cause: err });
}

interface Part {
  name: string;
  index: number;
  endMs: number;
  size: number;
}

export class NatsObjectStore implements RecordingStore {
  readonly kind = 'object_store' as const;
  private nc: NatsConnection | undefined;
  private bucket: Promise<ObjectStore> | undefined;
  private closed = false;
  private readonly now: () => number;

  constructor(private readonly opts: ObjectStoreOptions) {
    this.now = opts.now ?? Date.now;
  }

  private store(): Promise<ObjectStore> {
    if (this.closed) return Promise.reject(new RecordingStoreError('the recording store is closed'));
    this.bucket ??= this.connect().catch((err: unknown) => {
      this.bucket = undefined;
      throw storeError(`object store ${this.opts.bucket} unreachable`, err);
    });
    return this.bucket;
  }

  private async connect(): Promise<ObjectStore> {
    if (!this.nc || this.nc.isClosed()) {
      const a = this.opts.auth;
      const authenticator: Authenticator[] = [];
      if (a.credsFile) authenticator.push(credsAuthenticator(readFileSync(a.credsFile)));
      if (a.nkeySeed || a.nkeyFile) authenticator.push(nkeyAuthenticator(new TextEncoder().encode(a.nkeySeed ?? readFileSync(a.nkeyFile!, 'utf8').trim())));
      const co: NodeConnectionOptions = { servers: this.opts.servers, name: `${this.opts.name}-recordings`, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 1000, timeout: this.opts.timeoutMs ?? 5000 };
      if (a.user !== undefined) co.user = a.user;
      if (a.pass !== undefined) co.pass = a.pass;
      if (a.token !== undefined) co.token = a.token;
      if (a.tls !== undefined) co.tls = a.tls;
      if (authenticator.length > 0) co.authenticator = authenticator.length === 1 ? authenticator[0]! : authenticator;
      this.nc = await connect(co);
    }
    const objm = new Objm(this.nc);
    try {
      return await objm.create(this.opts.bucket, { replicas: this.opts.replicas, max_bytes: this.opts.maxBytes, storage: StorageType.File, description: 'meshcast recordings' });
    } catch (err) {
      // The bucket exists with other settings (another node's, or this node's before a change): use it as it is.
      return objm.open(this.opts.bucket).catch(() => Promise.reject(err as Error));
    }
  }

  private async op<T>(what: string, f: (os: ObjectStore) => Promise<T>): Promise<T> {
    const os = await this.store();
    try {
      return await f(os);
    } catch (err) {
      throw storeError(what, err);
    }
  }

  async open(ref: SegmentRef): Promise<SegmentWriter> {
    const key = segmentKey(ref);
    await this.store();
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let lastPut = this.now();
    let index = 0;
    const put = async (durationMs: number): Promise<void> => {
      if (pendingBytes === 0) return;
      const data = Buffer.concat(pending, pendingBytes);
      const name = `${key}/${String(index).padStart(6, '0')}_${Math.max(0, Math.round(durationMs))}`;
      await this.op(`cannot store ${name}`, (os) => os.putBlob({ name }, data));
      index++;
      pending = [];
      pendingBytes = 0;
      lastPut = this.now();
    };
    return {
      append: async (data, durationMs) => {
        pending.push(data);
        pendingBytes += data.length;
        if (this.now() - lastPut >= this.opts.flushMs) await put(durationMs);
      },
      close: async (durationMs) => {
        await put(durationMs);
        if (index > 1) await this.consolidate(key, durationMs);
      },
    };
  }

  /**
   * A finished segment's parts become one object (`<key>/999999_<end>`), so the bucket holds about
   * one object per segment, not one per flush: listing stays cheap over a long retention. Until
   * the parts are deleted the whole object hides them; a node dying in between leaves both, which
   * reads the same and is deleted together.
   */
  private async consolidate(key: string, durationMs: number): Promise<void> {
    const parts = (await this.parts(`${key}/`)).get(key) ?? [];
    if (parts.length < 2 || parts.some((p) => p.index === WHOLE) || parts.reduce((n, p) => n + p.size, 0) > MAX_WHOLE_BYTES) return;
    const data: Buffer[] = [];
    for (const p of parts) {
      const blob = await this.op(`cannot read ${p.name}`, (os) => os.getBlob(p.name));
      if (!blob) return;
      data.push(Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength));
    }
    const name = `${key}/${WHOLE}_${Math.max(0, Math.round(durationMs))}`;
    await this.op(`cannot store ${name}`, (os) => os.putBlob({ name }, Buffer.concat(data)));
    for (const p of parts) await this.op(`cannot delete ${p.name}`, (os) => os.delete(p.name));
  }

  private async parts(prefix: string): Promise<Map<string, Part[]>> {
    const infos = await this.op('cannot list recordings', (os) => os.list());
    const out = new Map<string, Part[]>();
    for (const i of infos) {
      if (i.deleted || !i.name.startsWith(prefix)) continue;
      const m = PART_RE.exec(i.name);
      if (!m) continue;
      const list = out.get(m[1]!) ?? [];
      list.push({ name: i.name, index: Number(m[2]), endMs: Number(m[3]), size: i.size });
      out.set(m[1]!, list);
    }
    for (const list of out.values()) list.sort((a, b) => a.index - b.index);
    return out;
  }

  async list(filter?: { app: string; stream: string }): Promise<SegmentInfo[]> {
    const groups = await this.parts(filter ? streamPrefix(filter.app, filter.stream) : '');
    const out: SegmentInfo[] = [];
    for (const [key, all] of groups) {
      const parts = visible(all);
      const ref = parseSegmentKey(key);
      if (!ref) continue;
      out.push({ ...ref, key, bytes: parts.reduce((n, p) => n + p.size, 0), durationMs: parts[parts.length - 1]!.endMs });
    }
    return out.sort((a, b) => a.startMs - b.startMs);
  }

  async read(seg: SegmentInfo, range?: ByteRange): Promise<Buffer> {
    const parts = visible((await this.parts(`${seg.key}/`)).get(seg.key) ?? []);
    const start = range?.start ?? 0;
    const end = range?.end ?? Number.MAX_SAFE_INTEGER;
    const out: Buffer[] = [];
    let at = 0;
    for (const p of parts) {
      const from = at;
      at += p.size;
      if (at <= start || from >= end) continue;
      const blob = await this.op(`cannot read ${p.name}`, (os) => os.getBlob(p.name));
      if (!blob) throw new RecordingStoreError(`${p.name} vanished while being read`);
      const b = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
      out.push(b.subarray(Math.max(0, start - from), Math.min(b.length, end - from)));
    }
    return Buffer.concat(out);
  }

  async delete(seg: SegmentInfo): Promise<void> {
    const parts = (await this.parts(`${seg.key}/`)).get(seg.key) ?? [];
    for (const p of parts) await this.op(`cannot delete ${p.name}`, (os) => os.delete(p.name));
  }

  async usage(): Promise<StoreUsage> {
    const segs = await this.list();
    const status = await this.op('cannot read the bucket status', (os) => os.status());
    return { bytes: status.size, segments: segs.length };
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.nc?.drain().catch(() => undefined);
  }
}
