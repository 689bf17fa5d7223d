/**
 * Test harness: real nats-server processes with JetStream.
 *
 * - `startNatsServer()` — one server on an ephemeral client port (`-p -1`,
 *   port read from the `--ports_file_dir` file), a random monitoring port
 *   (`-m -1`), its own JetStream store dir in a fresh temp dir. Resolves when
 *   the client port accepts connections and JetStream reports ready.
 *   `stop()` terminates it and removes the dir; `kill()` SIGKILLs it.
 * - `startNatsCluster(3)` — a JetStream cluster on loopback with full-mesh
 *   routes (cluster ports are picked up front: JetStream clustering needs
 *   configured routes); resolves once every server sees the same metadata
 *   leader and a cluster of the requested size.
 *
 * Works with nats-server 2.9 (Debian) and newer. Binary: `$NATS_SERVER_BIN`
 * or `nats-server` on PATH. Every server started here is killed if the test
 * process exits without stopping it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface JszMeta {
  name?: string;
  leader?: string;
  cluster_size?: number;
}

export interface Jsz {
  server_id: string;
  config?: { store_dir?: string };
  meta_cluster?: JszMeta;
  streams?: number;
  account_details?: {
    name: string;
    stream_detail?: { name: string; config?: Record<string, unknown>; cluster?: { leader?: string; replicas?: { name: string; current: boolean }[] } }[];
  }[];
}

export interface NatsServer {
  readonly name: string;
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  /** `http://127.0.0.1:<port>` */
  readonly monitorUrl: string;
  /** `nats://127.0.0.1:<port>` when clustered */
  readonly clusterUrl: string | undefined;
  readonly pid: number;
  readonly dir: string;
  /** True until the process exited. */
  readonly running: boolean;
  /** Last lines of the server's output (for failure messages). */
  logs(): string;
  /** `GET /jsz` with query, e.g. `accounts=true&streams=true&config=true`. */
  jsz(query?: string): Promise<Jsz>;
  /** Send a signal (default SIGKILL) and wait for the process to exit. Keeps the dir. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Terminate (SIGTERM, then SIGKILL after 5 s) and remove the temp dir. Idempotent. */
  stop(): Promise<void>;
}

export interface StartNatsOptions {
  /** default true */
  jetstream?: boolean;
  /** server name (`-n`), default `nats-<random>` */
  name?: string;
  /** more command line arguments */
  args?: string[];
  /** default 10 000 ms */
  readyTimeoutMs?: number;
  /** Fixed client port instead of an ephemeral one (e.g. to restart a killed server where clients expect it). */
  port?: number;
  /**
   * Reuse this dir (JetStream store + ports file) instead of a fresh temp dir:
   * `startNatsServer({ port: old.port, dir: old.dir })` after `old.kill()`
   * restarts a server with its data. The new handle's stop() removes the dir.
   */
  dir?: string;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of live) {
      try {
        p.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export function natsServerBin(): string {
  return process.env['NATS_SERVER_BIN'] ?? 'nats-server';
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (bind to 0, read, close). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
    s.setTimeout(500, () => {
      s.destroy();
      resolve(false);
    });
  });
}

interface PortsFile {
  nats?: string[];
  monitoring?: string[];
  cluster?: string[];
}

/** The server writes `<exe>_<pid>.ports`; match the pid so a killed predecessor's file is not picked up. */
async function readPortsFile(dir: string, pid: number | undefined): Promise<PortsFile | undefined> {
  const file = (await readdir(dir)).find((f) => f.endsWith(`_${pid}.ports`));
  if (!file) return undefined;
  try {
    return JSON.parse(await readFile(join(dir, file), 'utf8')) as PortsFile;
  } catch {
    return undefined; // being written
  }
}

async function launch(
  name: string,
  args: string[],
  dir: string,
  readyTimeoutMs: number,
  jetstream: boolean,
  clusterUrl: string | undefined,
): Promise<NatsServer> {
  installExitHook();
  const child = spawn(natsServerBin(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let out = '';
  const keep = (b: Buffer) => {
    out = (out + b.toString('utf8')).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let running = true;
  let spawnError: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    child.on('exit', () => {
      running = false;
      live.delete(child);
      resolve();
    });
    child.on('error', (err) => {
      spawnError = err;
      running = false;
      live.delete(child);
      resolve();
    });
  });

  const t0 = Date.now();
  let ports: PortsFile | undefined;
  for (;;) {
    if (!running) throw new Error(`nats-server ${name} exited during startup${spawnError ? `: ${spawnError.message}` : ''}\n${out}`);
    ports = await readPortsFile(dir, child.pid);
    if (ports?.nats?.[0] && ports.monitoring?.[0]) break;
    if (Date.now() - t0 > readyTimeoutMs) {
      child.kill('SIGKILL');
      throw new Error(`nats-server ${name} did not write its ports file within ${readyTimeoutMs} ms\n${out}`);
    }
    await sleep(20);
  }
  const url = (ports.nats as string[])[0] as string;
  const port = Number(new URL(url).port);
  const monitorUrl = (ports.monitoring as string[])[0] as string;

  let stopped = false;
  const server: NatsServer = {
    name,
    url,
    port,
    monitorUrl,
    clusterUrl,
    pid: child.pid ?? -1,
    dir,
    get running() {
      return running;
    },
    logs: () => out,
    async jsz(query = '') {
      const r = await fetch(`${monitorUrl}/jsz${query ? `?${query}` : ''}`, { signal: AbortSignal.timeout(2000) });
      return (await r.json()) as Jsz;
    },
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (running) child.kill(signal);
      await exited;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (running) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };

  // ready: client port accepts connections, and JetStream is enabled
  for (;;) {
    if (!running) throw new Error(`nats-server ${name} exited during startup\n${out}`);
    if (await canConnect(port)) {
      if (!jetstream) break;
      try {
        const j = await server.jsz();
        if (j.config) break;
      } catch {
        // monitor not up yet
      }
    }
    if (Date.now() - t0 > readyTimeoutMs) {
      await server.stop();
      throw new Error(`nats-server ${name} not ready within ${readyTimeoutMs} ms\n${out}`);
    }
    await sleep(20);
  }
  return server;
}

/** Start one nats-server (JetStream on by default) on ephemeral loopback ports. */
export async function startNatsServer(opts: StartNatsOptions = {}): Promise<NatsServer> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'meshcast-nats-')));
  const name = opts.name ?? `nats-${Math.random().toString(36).slice(2, 8)}`;
  const jetstream = opts.jetstream ?? true;
  const args = ['-a', '127.0.0.1', '-p', String(opts.port ?? -1), '-m', '-1', '--ports_file_dir', dir, '-n', name];
  if (jetstream) args.push('-js', '-sd', join(dir, 'js'));
  args.push(...(opts.args ?? []));
  try {
    return await launch(name, args, dir, opts.readyTimeoutMs ?? 10_000, jetstream, undefined);
  } catch (err) {
    if (!opts.dir) await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

export interface NatsCluster {
  readonly servers: NatsServer[];
  /** Client URLs of every server (pass all of them to the client). */
  readonly urls: string[];
  readonly name: string;
  /** Resolves with the meta leader's name once every running server agrees on one and sees the full cluster. */
  waitForJetStreamLeader(timeoutMs?: number): Promise<string>;
  /** Stop every server and remove their dirs. */
  stop(): Promise<void>;
}

/** Start an n-server JetStream cluster on loopback (full-mesh routes). */
export async function startNatsCluster(size = 3, opts: { readyTimeoutMs?: number; args?: string[] } = {}): Promise<NatsCluster> {
  const clusterName = `mc-${Math.random().toString(36).slice(2, 8)}`;
  const clusterPorts: number[] = [];
  while (clusterPorts.length < size) {
    const p = await freePort();
    if (!clusterPorts.includes(p)) clusterPorts.push(p);
  }
  const servers: NatsServer[] = [];
  const cluster: NatsCluster = {
    servers,
    get urls() {
      return servers.map((s) => s.url);
    },
    name: clusterName,
    async waitForJetStreamLeader(timeoutMs = 15_000) {
      const t0 = Date.now();
      let last = '';
      for (;;) {
        const up = servers.filter((s) => s.running);
        try {
          const metas = await Promise.all(up.map(async (s) => (await s.jsz()).meta_cluster));
          const leaders = new Set(metas.map((m) => m?.leader ?? ''));
          last = JSON.stringify(metas);
          const leader = metas[0]?.leader;
          if (leader && leaders.size === 1 && metas.every((m) => (m?.cluster_size ?? 0) >= size)) return leader;
        } catch (err) {
          last = String(err);
        }
        if (Date.now() - t0 > timeoutMs) throw new Error(`JetStream cluster has no agreed leader after ${timeoutMs} ms: ${last}`);
        await sleep(50);
      }
    },
    async stop() {
      await Promise.all(servers.map((s) => s.stop()));
    },
  };
  try {
    const starts = clusterPorts.map(async (cport, i) => {
      const dir = await mkdtemp(join(tmpdir(), 'meshcast-nats-'));
      const name = `${clusterName}-s${i + 1}`;
      const routes = clusterPorts.filter((p) => p !== cport).map((p) => `nats://127.0.0.1:${p}`);
      const curl = `nats://127.0.0.1:${cport}`;
      const args = [
        '-a', '127.0.0.1', '-p', '-1', '-m', '-1', '--ports_file_dir', dir, '-n', name,
        '-js', '-sd', join(dir, 'js'),
        '--cluster_name', clusterName, '--cluster', curl, '--routes', routes.join(','),
        ...(opts.args ?? []),
      ];
      try {
        return await launch(name, args, dir, opts.readyTimeoutMs ?? 15_000, true, curl);
      } catch (err) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
    });
    const settled = await Promise.allSettled(starts);
    for (const s of settled) if (s.status === 'fulfilled') servers.push(s.value);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    await cluster.waitForJetStreamLeader(opts.readyTimeoutMs ?? 15_000);
    return cluster;
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}
