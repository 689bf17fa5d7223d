/**
 * Starts meshcast nodes as real child processes on loopback addresses, and stops or kills them.
 * Each node has its public listener (`httpUrl`: media, route API, probes) and its admin
 * listener (`adminUrl`: sessions, kick, drain, mesh API, metrics, dashboard) on the same
 * loopback host, on ports of their own. `api()` and `adminFetch()` talk to the admin listener,
 * with the node's admin token when it has one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { freePort, nextLoopbackHost, waitFor } from './ports.ts';

const REPO = resolve(import.meta.dirname, '../../..');
const CLI = join(REPO, 'services/node/src/cli.ts');

export interface NodeProcessOptions {
  nodeId?: string;
  host?: string;
  config?: Record<string, unknown>;
  args?: string[];
  env?: Record<string, string>;
  /** `admin.token` (passed as MESHCAST_ADMIN_TOKEN: the token is never a flag). */
  adminToken?: string;
}

export class NodeProcess {
  readonly proc: ChildProcess;
  readonly dir: string;
  exitCode: number | null | undefined;
  private readonly exited: Promise<number | null>;

  private constructor(
    readonly nodeId: string,
    readonly host: string,
    readonly rtmpPort: number,
    readonly httpPort: number,
    readonly adminPort: number,
    readonly adminToken: string | undefined,
    dir: string,
    args: string[],
    env: Record<string, string>,
  ) {
    this.dir = dir;
    const log = join(dir, 'node.log');
    writeFileSync(log, '');
    this.proc = spawn(process.execPath, ['--import', 'tsx', CLI, 'node', ...args], {
      cwd: REPO,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: false,
    });
    const chunks: Buffer[] = [];
    this.proc.stdout!.on('data', (d: Buffer) => chunks.push(d));
    this.proc.stderr!.on('data', (d: Buffer) => chunks.push(d));
    this.exited = new Promise((res) =>
      this.proc.on('exit', (code) => {
        this.exitCode = code;
        writeFileSync(log, Buffer.concat(chunks));
        res(code);
      }),
    );
    this.logChunks = chunks;
  }

  private readonly logChunks: Buffer[];

  static async start(opts: NodeProcessOptions = {}): Promise<NodeProcess> {
    const host = opts.host ?? nextLoopbackHost();
    const rtmpPort = await freePort(host);
    const httpPort = await freePort(host);
    const adminPort = await freePort(host);
    const nodeId = opts.nodeId ?? `n${host.split('.').pop()}-${rtmpPort}`;
    const dir = mkdtempSync(join(tmpdir(), `meshcast-${nodeId}-`));
    const args = ['--node-id', nodeId, '--host', host, '--rtmp-port', String(rtmpPort), '--http-port', String(httpPort), '--admin-host', host, '--admin-port', String(adminPort), ...(opts.args ?? [])];
    if (opts.config) {
      const file = join(dir, 'config.yaml');
      writeFileSync(file, stringify(opts.config));
      args.push('--config', file);
    }
    const env: Record<string, string> = { MESHCAST_LOG_LEVEL: 'info', ...(opts.env ?? {}) };
    if (opts.adminToken !== undefined) env['MESHCAST_ADMIN_TOKEN'] = opts.adminToken;
    const node = new NodeProcess(nodeId, host, rtmpPort, httpPort, adminPort, opts.adminToken, dir, args, env);
    try {
      let exited: Error | undefined;
      await waitFor(`node ${nodeId} /healthz`, async () => {
        // A node that died at start is reported at once, not after the whole wait.
        if (node.exitCode !== undefined) {
          exited = new Error(`node ${nodeId} exited with ${node.exitCode}: ${node.logs().slice(-2000)}`);
          return true;
        }
        const r = await fetch(`${node.httpUrl}/healthz`);
        return r.ok;
      }, 20_000, 100);
      if (exited) throw exited;
    } catch (err) {
      await node.kill();
      throw err;
    }
    return node;
  }

  get rtmpUrl(): string {
    return `rtmp://${this.host}:${this.rtmpPort}`;
  }

  get httpUrl(): string {
    return `http://${this.host}:${this.httpPort}`;
  }

  get adminUrl(): string {
    return `http://${this.host}:${this.adminPort}`;
  }

  logs(): string {
    return Buffer.concat(this.logChunks).toString('utf8');
  }

  /** A request to the admin listener, with the node's admin token (if any) as a Bearer header unless `init` sets Authorization. */
  adminFetch(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.adminToken && !headers.has('authorization')) headers.set('authorization', `Bearer ${this.adminToken}`);
    return fetch(`${this.adminUrl}${path}`, { ...init, headers });
  }

  /** JSON from the admin API. */
  async api<T = unknown>(path: string, init?: RequestInit): Promise<T> {
    const r = await this.adminFetch(path, init);
    return (await r.json()) as T;
  }

  /** SIGTERM and wait: the node drains and exits (returns its exit code). */
  async stop(timeoutMs = 15_000): Promise<number | null> {
    if (this.exitCode !== undefined) return this.exitCode;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  async kill(): Promise<void> {
    if (this.exitCode !== undefined) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  signal(sig: NodeJS.Signals): void {
    this.proc.kill(sig);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  readLogFile(): string {
    return readFileSync(join(this.dir, 'node.log'), 'utf8');
  }
}
