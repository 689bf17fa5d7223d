/**
 * The servers the benchmark compares, each started as a child process in its own process
 * group on loopback, with its log in a temp dir, and stopped (group-wide) afterwards:
 *  - meshcast: `node --import tsx services/node/src/cli.ts node …`
 *  - nginx-rtmp: Debian nginx + libnginx-mod-rtmp with a generated config (master + 1 worker)
 *  - node-media-server v4: started programmatically by ./nms-server.mjs (RTMP only, no HTTP)
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../load/flv-source.ts';

export type ServerKind = 'meshcast' | 'nginx' | 'nms';
export const SERVER_KINDS: readonly ServerKind[] = ['meshcast', 'nginx', 'nms'];
export const SERVER_LABELS: Record<ServerKind, string> = { meshcast: 'meshcast', nginx: 'nginx-rtmp', nms: 'node-media-server' };

export interface ServerOptions {
  host?: string;
  /** Server log verbosity: 'quiet' (warnings and errors) or 'info'. */
  log?: 'quiet' | 'info';
  /** Keep the temp dir (config, logs) after stop. */
  keepDir?: boolean;
  startTimeoutMs?: number;
  /** meshcast only: extra YAML config text. */
  meshcastConfig?: string;
  /** meshcast only: the node id (default `bench`; several nodes of one mesh need their own). */
  nodeId?: string;
}

/** Every server process we started, so exit/signal handlers can kill them synchronously. */
const LIVE = new Set<ServerHandle>();

export class ServerHandle {
  exitCode: number | null | undefined;
  readonly exited: Promise<number | null>;
  /** meshcast only: its public HTTP port (media, WHEP). */
  httpPort = 0;

  constructor(
    readonly kind: ServerKind,
    readonly proc: ChildProcess,
    readonly host: string,
    readonly rtmpPort: number,
    readonly dir: string,
    readonly logFile: string,
    readonly version: string,
    private readonly keepDir: boolean,
  ) {
    LIVE.add(this);
    this.exited = new Promise((res) =>
      proc.on('exit', (code, sig) => {
        this.exitCode = code ?? (sig ? -1 : null);
        res(this.exitCode);
      }),
    );
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  /** rtmp://host:port/live */
  get appUrl(): string {
    return `rtmp://${this.host}:${this.rtmpPort}/live`;
  }

  logTail(chars = 2000): string {
    try {
      const t = readFileSync(this.logFile, 'utf8');
      return t.slice(-chars);
    } catch {
      return '';
    }
  }

  /** SIGTERM to the process group, SIGKILL after `graceMs`; removes the temp dir. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.exitCode === undefined) {
      signalGroup(this.pid, 'SIGTERM');
      const t = setTimeout(() => signalGroup(this.pid, 'SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(t);
    }
    // Leftovers in the group (e.g. an nginx worker whose master died) go too.
    signalGroup(this.pid, 'SIGKILL');
    LIVE.delete(this);
    if (!this.keepDir) rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous kill of the whole group (for exit handlers). */
  kill(): void {
    signalGroup(this.pid, 'SIGKILL');
    LIVE.delete(this);
    if (!this.keepDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  if (pid <= 0) return;
  try {
    process.kill(-pid, sig);
  } catch {
    /* group already gone */
  }
}

/** Kills every server still running (synchronous; safe in 'exit' handlers). */
export function killAllServers(): void {
  for (const s of [...LIVE]) s.kill();
}

/** An ephemeral TCP port that was free a moment ago on `host`. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
    s.setTimeout(1000, () => {
      s.destroy();
      res(false);
    });
  });
}

async function waitReady(h: ServerHandle, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (h.exitCode !== undefined) throw new Error(`${h.kind} exited with ${h.exitCode} during start-up:\n${h.logTail()}`);
    try {
      if (await check()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) {
      await h.stop(1000);
      throw new Error(`${h.kind} not ready after ${timeoutMs} ms:\n${h.logTail()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function spawnLogged(cmd: string, args: string[], dir: string, env?: NodeJS.ProcessEnv): { proc: ChildProcess; logFile: string } {
  const logFile = join(dir, 'server.log');
  const fd = openSync(logFile, 'a');
  try {
    const proc = spawn(cmd, args, { cwd: dir, detached: true, stdio: ['ignore', fd, fd], env: env ?? process.env });
    return { proc, logFile };
  } finally {
    closeSync(fd);
  }
}

function version(cmd: string, args: string[]): string {
  // nginx -v prints to stderr
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  return text || 'unknown';
}

export async function startMeshcast(o: ServerOptions = {}): Promise<ServerHandle> {
  const host = o.host ?? '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'meshcast-bench-mc-'));
  const rtmpPort = await freePort(host);
  const httpPort = await freePort(host);
  const args = ['--import', 'tsx', join(REPO_ROOT, 'services/node/src/cli.ts'), 'node', '--node-id', o.nodeId ?? 'bench', '--host', host, '--rtmp-port', String(rtmpPort), '--http-port', String(httpPort), '--log-level', o.log === 'info' ? 'info' : 'warn'];
  if (o.meshcastConfig) {
    const file = join(dir, 'config.yaml');
    writeFileSync(file, o.meshcastConfig);
    args.push('--config', file);
  }
  const logFile = join(dir, 'server.log');
  const fd = openSync(logFile, 'a');
  let proc: ChildProcess;
  try {
    proc = spawn(process.execPath, args, { cwd: REPO_ROOT, detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, NODE_NO_WARNINGS: '1' } });
  } finally {
    closeSync(fd);
  }
  let ver = 'meshcast';
  try {
    ver = `meshcast ${(JSON.parse(readFileSync(join(REPO_ROOT, 'services/node/package.json'), 'utf8')) as { version: string }).version} (node ${process.version})`;
  } catch {
    /* keep the name */
  }
  const h = new ServerHandle('meshcast', proc, host, rtmpPort, dir, logFile, ver, o.keepDir ?? false);
  h.httpPort = httpPort;
  await waitReady(
    h,
    async () => {
      const r = await fetch(`http://${host}:${httpPort}/healthz`, { signal: AbortSignal.timeout(1000) });
      return r.ok;
    },
    o.startTimeoutMs ?? 30_000,
  );
  return h;
}

export const NGINX_BIN = '/usr/sbin/nginx';
export const NGINX_RTMP_MODULE = '/usr/lib/nginx/modules/ngx_rtmp_module.so';

/** The nginx.conf the benchmark uses (one worker, RTMP live app, logs in the temp dir). */
export function nginxConfig(dir: string, host: string, port: number, log: 'quiet' | 'info'): string {
  return `# generated by meshcast bench
load_module ${NGINX_RTMP_MODULE};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} ${log === 'info' ? 'info' : 'warn'};

events {
    worker_connections 16384;
}

rtmp {
    ${log === 'info' ? `access_log ${join(dir, 'access.log')};` : 'access_log off;'}
    server {
        listen ${host}:${port};
        chunk_size 4096;
        application live {
            live on;
        }
    }
}
`;
}

export async function startNginx(o: ServerOptions = {}): Promise<ServerHandle> {
  if (!existsSync(NGINX_BIN)) throw new Error(`${NGINX_BIN} not found (apt-get install nginx libnginx-mod-rtmp)`);
  if (!existsSync(NGINX_RTMP_MODULE)) throw new Error(`${NGINX_RTMP_MODULE} not found (apt-get install libnginx-mod-rtmp)`);
  const host = o.host ?? '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'meshcast-bench-nginx-'));
  const port = await freePort(host);
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, nginxConfig(dir, host, port, o.log ?? 'quiet'));
  const { proc, logFile } = spawnLogged(NGINX_BIN, ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], dir);
  const h = new ServerHandle('nginx', proc, host, port, dir, logFile, version(NGINX_BIN, ['-v']).replace(/^nginx version: /, '') + ' + libnginx-mod-rtmp', o.keepDir ?? false);
  await waitReady(h, () => canConnect(host, port), o.startTimeoutMs ?? 15_000);
  return h;
}

export async function startNms(o: ServerOptions = {}): Promise<ServerHandle> {
  const host = o.host ?? '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'meshcast-bench-nms-'));
  const port = await freePort(host);
  const script = join(import.meta.dirname, 'nms-server.mjs');
  const { proc, logFile } = spawnLogged(process.execPath, [script, '--host', host, '--port', String(port), '--dir', dir, '--log', o.log === 'info' ? 'info' : 'warn'], dir);
  let ver = 'node-media-server';
  try {
    ver = `node-media-server ${(JSON.parse(readFileSync(join(REPO_ROOT, 'node_modules/node-media-server/package.json'), 'utf8')) as { version: string }).version} (node ${process.version})`;
  } catch {
    /* keep the name */
  }
  const h = new ServerHandle('nms', proc, host, port, dir, logFile, ver, o.keepDir ?? false);
  await waitReady(h, () => canConnect(host, port), o.startTimeoutMs ?? 20_000);
  return h;
}

export function startServer(kind: ServerKind, o: ServerOptions = {}): Promise<ServerHandle> {
  switch (kind) {
    case 'meshcast':
      return startMeshcast(o);
    case 'nginx':
      return startNginx(o);
    case 'nms':
      return startNms(o);
  }
}
