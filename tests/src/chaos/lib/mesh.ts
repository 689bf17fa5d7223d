/**
 * Start and tear down a mesh for one chaos scenario: NATS (one server or a 3-server JetStream
 * cluster), node processes with given timings, synthetic publishers, and small probes
 * (API with a timeout, open descriptors and RSS of a node process).
 */
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSyntheticPublisher, type SyntheticPublisher } from '@meshcast/node/client';
import { startNatsCluster, startNatsServer, type NatsCluster, type NatsServer } from '../../harness/nats.ts';
import { NodeProcess } from '../../harness/node-process.ts';
import { waitFor } from '../../harness/ports.ts';

/** Production defaults (docs/design.md): heartbeat 1 s, suspect 3 s, dead 5 s, lease 10 s, renew 3 s. */
export const PRODUCTION_TIMINGS = {
  heartbeat_ms: 1000,
  suspect_ms: 3000,
  dead_ms: 5000,
  lease_ms: 10_000,
  renew_ms: 3000,
  relay_linger_ms: 10_000,
  relay_stall_ms: 2000,
};

/** The shorter timings of the mesh e2e test. */
export const FAST_TIMINGS = {
  heartbeat_ms: 500,
  suspect_ms: 1500,
  dead_ms: 2500,
  lease_ms: 4000,
  renew_ms: 1000,
  relay_linger_ms: 2000,
  relay_stall_ms: 1500,
};

export type MeshTimings = typeof PRODUCTION_TIMINGS;

export function describeTimings(t: MeshTimings, extra: Record<string, number | string> = {}): string {
  const base = `heartbeat ${t.heartbeat_ms} ms, suspect ${t.suspect_ms} ms, dead ${t.dead_ms} ms, lease ${t.lease_ms} ms, renew ${t.renew_ms} ms, relay stall ${t.relay_stall_ms} ms`;
  const more = Object.entries(extra).map(([k, v]) => `${k} ${v}`);
  const kind = t.lease_ms === PRODUCTION_TIMINGS.lease_ms && t.heartbeat_ms === PRODUCTION_TIMINGS.heartbeat_ms ? 'production defaults' : 'shortened';
  return [`${kind}: ${base}`, ...more].join('; ');
}

export interface MeshOptions {
  timings: MeshTimings;
  /** Start a 3-server JetStream cluster instead of one server. */
  cluster?: boolean;
  /** Extra `mesh:` keys for every node. */
  mesh?: Record<string, unknown>;
  /** Extra top-level config for every node. */
  config?: Record<string, unknown>;
}

export class ChaosMesh {
  readonly nodes: NodeProcess[] = [];
  readonly pubs: SyntheticPublisher[] = [];
  private readonly closers: Array<() => void> = [];
  nats: NatsServer | undefined;
  cluster: NatsCluster | undefined;

  private constructor(readonly opts: MeshOptions) {}

  static async start(opts: MeshOptions): Promise<ChaosMesh> {
    const m = new ChaosMesh(opts);
    if (opts.cluster) m.cluster = await startNatsCluster(3);
    else m.nats = await startNatsServer();
    return m;
  }

  get natsUrls(): string[] {
    return this.cluster ? this.cluster.urls : [this.nats!.url];
  }

  async node(id: string, extra: { mesh?: Record<string, unknown>; config?: Record<string, unknown>; roles?: string; env?: Record<string, string> } = {}): Promise<NodeProcess> {
    const n = await NodeProcess.start({
      nodeId: id,
      config: {
        ...(this.opts.config ?? {}),
        ...(extra.config ?? {}),
        mesh: { mesh_secret: 'chaos-secret', ...this.opts.timings, nats: this.natsUrls, ...(this.opts.mesh ?? {}), ...(extra.mesh ?? {}) },
      },
      ...(extra.roles ? { args: ['--roles', extra.roles] } : {}),
      ...(extra.env ? { env: extra.env } : {}),
    });
    this.nodes.push(n);
    return n;
  }

  /** Start several nodes at once (their startups overlap). */
  async startNodes(ids: string[], extra: Parameters<ChaosMesh['node']>[1] = {}): Promise<NodeProcess[]> {
    return Promise.all(ids.map((id) => this.node(id, extra)));
  }

  async meshSize(n: NodeProcess, size: number, timeoutMs = 20_000): Promise<void> {
    await waitFor(`${n.nodeId} sees ${size} alive nodes`, async () => {
      const r = await api<{ nodes: Array<{ state: string }> }>(n, '/api/v1/mesh/nodes');
      return (r?.nodes.filter((x) => x.state === 'alive').length ?? 0) >= size;
    }, timeoutMs, 100);
  }

  async publish(url: string, firstFrame = 0): Promise<SyntheticPublisher> {
    const p = await startSyntheticPublisher(url, { firstFrame, timeoutMs: 5000 });
    this.pubs.push(p);
    return p;
  }

  onClose(fn: () => void): void {
    this.closers.push(fn);
  }

  /** Keep every node's log under `dir` (written at stop). */
  keepLogsIn: string | undefined = process.env['CHAOS_LOG_DIR'];

  async stop(): Promise<void> {
    for (const p of this.pubs) p.stop();
    for (const c of this.closers.splice(0)) {
      try {
        c();
      } catch {
        // best effort
      }
    }
    // SIGKILL also ends a SIGSTOPped process.
    await Promise.all(this.nodes.map(async (n) => (n.exitCode === undefined ? n.kill() : undefined)));
    if (this.keepLogsIn) {
      mkdirSync(this.keepLogsIn, { recursive: true });
      for (const n of this.nodes) writeFileSync(join(this.keepLogsIn, `${n.nodeId}.log`), n.logs());
    }
    for (const n of this.nodes) n.cleanup();
    if (this.cluster) {
      for (const s of this.cluster.servers) if (s.running) process.kill(s.pid, 'SIGCONT');
      await this.cluster.stop();
    }
    if (this.nats) {
      if (this.nats.running) process.kill(this.nats.pid, 'SIGCONT');
      await this.nats.stop();
    }
  }
}

/** GET a node's API with a timeout; undefined when it does not answer (stopped, killed, error status). */
export async function api<T>(n: NodeProcess, path: string, timeoutMs = 1000): Promise<T | undefined> {
  try {
    const r = await fetch(`${n.adminUrl}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
    if (!r.ok) return undefined;
    return (await r.json()) as T;
  } catch {
    return undefined;
  }
}

/** Like `api` but also returns the HTTP status (for route answers that may be 503). */
export async function apiStatus<T>(n: NodeProcess, path: string, timeoutMs = 1000): Promise<{ status: number; body: T | undefined }> {
  try {
    const r = await fetch(`${n.adminUrl}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = (await r.json().catch(() => undefined)) as T | undefined;
    return { status: r.status, body };
  } catch {
    return { status: 0, body: undefined };
  }
}

/** Open file descriptors of a process (`ls /proc/<pid>/fd | wc -l`). */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Open sockets of a process (fds that are sockets). */
export function socketCount(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

/** Resident set size of a process in bytes (from /proc/<pid>/status). */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** Which NATS server (by name) holds the connection named `connName` (a node id), via /connz. */
export async function natsServerOf(servers: readonly NatsServer[], connName: string): Promise<NatsServer | undefined> {
  for (const s of servers) {
    if (!s.running) continue;
    try {
      const r = await fetch(`${s.monitorUrl}/connz?limit=1024`, { signal: AbortSignal.timeout(1000) });
      const j = (await r.json()) as { connections?: Array<{ name?: string }> };
      if (j.connections?.some((c) => c.name === connName)) return s;
    } catch {
      // not answering
    }
  }
  return undefined;
}
