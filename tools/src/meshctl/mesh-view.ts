/**
 * What meshctl reads from a running mesh, as a passive observer on the bus: heartbeats
 * (the same live table every node holds), the ownership and relay KV buckets, node RPCs.
 */
import { readFileSync } from 'node:fs';
import {
  OwnershipRegistry,
  RelayClaims,
  SealedBus,
  connectNatsBus,
  type Bus,
  type NatsBusOptions,
  type NodeView,
  type OwnershipInfo,
  type RelayClaimInfo,
} from '@meshcast/mesh';
import { mergePublishing, type PublishingStatus, type PublishingView } from '@meshcast/node';
import { decodeBye, decodeHeartbeat, MeshMessageError, type Bye, type Heartbeat } from '@meshcast/proto';
import { decodeControlMessage, encodeControlMessage, type ControlMessage, type StatsResult } from './control-messages.ts';

/** An error meant for the operator: printed as is, exit code 1. */
export class MeshctlError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** The name meshctl uses on the bus (connection name, `from` of requests); a valid node id. */
export const MESHCTL_ID = 'meshctl';

export interface ConnectOptions {
  servers: string[];
  prefix: string;
  /** Give up on the first connection after this long (default 3000 ms). */
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  auth?: Pick<NatsBusOptions, 'user' | 'pass' | 'token' | 'nkeySeed' | 'credsFile' | 'tls'>;
  /** The nodes' mesh secret: everything meshctl reads is verified with it and every request sealed (sealed-bus.ts). */
  meshSecret: string;
}

/**
 * The mesh secret, from `--mesh-secret-file` or MESHCAST_MESH_SECRET (never a flag value: command lines are
 * visible to every user of the host). Without it meshctl can neither trust what it reads nor be heard.
 */
export function meshSecret(env: NodeJS.ProcessEnv, file: string | undefined): string {
  if (file) {
    let s: string;
    try {
      s = readFileSync(file, 'utf8').trim();
    } catch (err) {
      throw new MeshctlError(`meshctl: cannot read --mesh-secret-file ${file}: ${(err as Error).message}`, 2);
    }
    if (!s) throw new MeshctlError(`meshctl: --mesh-secret-file ${file} is empty`, 2);
    return s;
  }
  const s = env['MESHCAST_MESH_SECRET'];
  if (!s) throw new MeshctlError('meshctl: no mesh secret: set MESHCAST_MESH_SECRET (the nodes\' mesh.mesh_secret) or pass --mesh-secret-file FILE; mesh messages are verified with it', 2);
  return s;
}

/** NATS credentials from the same environment variables the node reads. */
export function natsAuthFromEnv(env: NodeJS.ProcessEnv): NonNullable<ConnectOptions['auth']> {
  const a: NonNullable<ConnectOptions['auth']> = {};
  if (env['MESHCAST_NATS_USER']) a.user = env['MESHCAST_NATS_USER'];
  if (env['MESHCAST_NATS_PASS']) a.pass = env['MESHCAST_NATS_PASS'];
  if (env['MESHCAST_NATS_TOKEN']) a.token = env['MESHCAST_NATS_TOKEN'];
  if (env['MESHCAST_NATS_NKEY_SEED']) a.nkeySeed = env['MESHCAST_NATS_NKEY_SEED'];
  if (env['MESHCAST_NATS_CREDS']) a.credsFile = env['MESHCAST_NATS_CREDS'];
  if (env['MESHCAST_NATS_CA']) a.tls = { caFile: env['MESHCAST_NATS_CA'] };
  return a;
}

export async function connectMesh(o: ConnectOptions): Promise<Bus> {
  const timeoutMs = o.connectTimeoutMs ?? 3000;
  const where = o.servers.join(',');
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  const connecting = connectNatsBus({
    servers: o.servers,
    name: `${MESHCTL_ID}-${process.pid}`,
    prefix: o.prefix,
    requestTimeoutMs: o.requestTimeoutMs ?? 2000,
    reconnectTimeWaitMs: 500,
    ...(o.auth ?? {}),
  });
  try {
    return await Promise.race([
      connecting.then((b) => new SealedBus(b, { secret: o.meshSecret })),
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => {
          timedOut = true;
          rej(new Error(`no answer within ${timeoutMs} ms`));
        }, timeoutMs);
      }),
    ]);
  } catch (err) {
    if (timedOut) void connecting.then((b) => b.close()).catch(() => undefined);
    const why = err instanceof Error ? err.message.replace(/^cannot connect to NATS \S+: /, '') : String(err);
    throw new MeshctlError(
      `meshctl: cannot reach NATS at ${where}: ${why}\n` +
        `  Is nats-server running there? Point meshctl at it with --nats nats://host:4222 or MESHCAST_NATS.`,
    );
  } finally {
    clearTimeout(timer);
  }
}

export interface ObservedMesh {
  /** Nodes heard during the window (state 'alive'), sorted by id; a node that said bye is left out. */
  views: NodeView[];
  /** Nodes that said bye during the window. */
  left: Map<string, Bye>;
  waitedMs: number;
}

/** Listens to heartbeats (and byes) for `waitMs` and returns the live table, like a node's membership. */
export async function observeMesh(bus: Bus, waitMs: number): Promise<ObservedMesh> {
  const seen = new Map<string, NodeView>();
  const left = new Map<string, Bye>();
  const hb = bus.subscribe(bus.names.heartbeatAll, (m) => {
    const h = decodeHeartbeat(m.data);
    if (h instanceof MeshMessageError || m.subject !== bus.names.heartbeat(h.node)) return;
    const bye = left.get(h.node);
    if (bye && bye.startedAt === h.startedAt) return; // late heartbeat of an incarnation that left
    const now = Date.now();
    const prev = seen.get(h.node);
    if (prev && (prev.heartbeat.startedAt > h.startedAt || (prev.heartbeat.startedAt === h.startedAt && prev.heartbeat.seq > h.seq))) return;
    seen.set(h.node, { id: h.node, state: 'alive', self: false, heartbeat: h, lastSeenAt: now, firstSeenAt: prev?.firstSeenAt ?? now });
  });
  const bye = bus.subscribe(bus.names.byeAll, (m) => {
    const b = decodeBye(m.data);
    if (b instanceof MeshMessageError) return;
    left.set(b.node, b);
    if (seen.get(b.node)?.heartbeat.startedAt === b.startedAt) seen.delete(b.node);
  });
  await new Promise((r) => setTimeout(r, waitMs));
  hb.unsubscribe();
  bye.unsubscribe();
  return { views: [...seen.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)), left, waitedMs: waitMs };
}

/** One control RPC; BusNoRespondersError / BusTimeoutError pass through. */
export async function controlRequest(bus: Bus, node: string, verb: 'kick' | 'drain' | 'stats', msg: ControlMessage, timeoutMs: number): Promise<ControlMessage> {
  const data = await bus.request(bus.names.rpc(node, verb), encodeControlMessage(msg), { timeoutMs });
  const res = decodeControlMessage(data);
  if (res instanceof Error) throw new MeshctlError(`meshctl: node ${node} answered ${verb} with an undecodable reply: ${res.message}`);
  return res;
}

/** A node's viewers per stream, from its stats RPC (every mesh node answers it). Undefined when it does not answer in time. */
export async function nodeStats(bus: Bus, view: NodeView, timeoutMs: number): Promise<StatsResult | undefined> {
  try {
    const r = await controlRequest(bus, view.id, 'stats', { op: 'stats', from: MESHCTL_ID, sentAt: Date.now() }, timeoutMs);
    return r.op === 'statsResult' ? r : undefined;
  } catch {
    // No responders, a timeout or an undecodable reply: the node is shown without stats.
    return undefined;
  }
}

/** Stats of every node in parallel (missing = no answer). */
export async function allStats(bus: Bus, views: NodeView[], timeoutMs: number): Promise<Map<string, StatsResult>> {
  const out = new Map<string, StatsResult>();
  await Promise.all(
    views.map(async (v) => {
      const s = await nodeStats(bus, v, timeoutMs);
      if (s) out.set(v.id, s);
    }),
  );
  return out;
}

/** Viewers of one stream per node, from the stats of every node that answered. */
export function viewersOf(stats: Map<string, StatsResult>, app: string, stream: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const [node, s] of stats) {
    const e = s.streams.find((x) => x.app === app && x.stream === stream);
    out.set(node, e?.viewers ?? 0);
  }
  return out;
}

/** Primary, standby and failovers of a stream, merged from every node that reported a part of it. */
export function publishingOf(stats: Map<string, StatsResult>, app: string, stream: string): PublishingView {
  const views: PublishingStatus[] = [];
  for (const s of stats.values()) {
    const e = s.streams.find((x) => x.app === app && x.stream === stream);
    if (e?.publishing) views.push(e.publishing);
  }
  return mergePublishing(views);
}

export interface Registries {
  ownership: OwnershipRegistry;
  relays: RelayClaims;
  close(): Promise<void>;
}

/**
 * Read-only use of the ownership and relay registries. Staleness is judged with the
 * buckets' real max age (the nodes' lease_ms), so a record the nodes consider expired is not listed.
 */
export async function openRegistries(bus: Bus): Promise<Registries> {
  const [sb, rb] = await Promise.all([bus.kv(bus.names.streamsBucket, { maxAgeMs: 10_000 }), bus.kv(bus.names.relaysBucket, { maxAgeMs: 10_000 })]);
  const lease = (ms: number): { maxAgeMs: number; renewMs: number } => (ms >= 8 ? { maxAgeMs: ms, renewMs: Math.floor(ms / 4) } : { maxAgeMs: 10_000, renewMs: 3000 });
  const ownership = new OwnershipRegistry({ bus, nodeId: MESHCTL_ID, ...lease(sb.maxAgeMs) });
  const relays = new RelayClaims({ bus, nodeId: MESHCTL_ID, ...lease(rb.maxAgeMs) });
  return {
    ownership,
    relays,
    async close() {
      await Promise.allSettled([ownership.close(), relays.close()]);
    },
  };
}

export type { OwnershipInfo, RelayClaimInfo, Heartbeat };
