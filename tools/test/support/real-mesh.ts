/**
 * Real peers for the tools' tests: one nats-server with JetStream, and `meshcast node` processes
 * started through the real CLI (`services/node/src/cli.ts node …`), each with its public port and
 * its admin listener on its own loopback address. The tools package cannot use the tests
 * package's harness (tests depends on tools), so this is the small version of it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const REPO = resolve(import.meta.dirname, '../../..');
const CLI = join(REPO, 'services/node/src/cli.ts');

/** An ephemeral TCP port that was free a moment ago on `host`. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.once('error', rej);
    srv.listen(0, host, () => {
      const a = srv.address();
      srv.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** Polls `fn` until it returns a truthy value; throws naming `what` (and the last error) when the time is up. */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 10_000, everyMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function output(p: ChildProcess): () => string {
  let log = '';
  const keep = (d: Buffer): void => {
    log = (log + d.toString()).slice(-20_000);
  };
  p.stdout?.on('data', keep);
  p.stderr?.on('data', keep);
  return () => log;
}

export class NatsServer {
  private constructor(
    readonly url: string,
    private readonly proc: ChildProcess,
    private readonly dir: string,
    private readonly exited: Promise<void>,
  ) {}

  /** nats-server (`$NATS_SERVER_BIN` or on PATH) with JetStream, on 127.0.0.1 and an ephemeral port. */
  static async start(): Promise<NatsServer> {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'tools-nats-'));
    const proc = spawn(process.env['NATS_SERVER_BIN'] ?? 'nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    const log = output(proc);
    let gone: string | undefined;
    const exited = new Promise<void>((r) => {
      proc.once('error', (err) => {
        gone = err.message;
        r();
      });
      proc.once('exit', (code) => {
        gone ??= `exit code ${code}`;
        r();
      });
    });
    const s = new NatsServer(`nats://127.0.0.1:${port}`, proc, dir, exited);
    await waitFor('nats-server ready', () => {
      if (gone) throw new Error(`nats-server exited during startup (${gone}): ${log()}`);
      return log().includes('Server is ready');
    }, 15_000).catch(async (err: unknown) => {
      await s.stop();
      throw err;
    });
    return s;
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface NodeOptions {
  id: string;
  /** Loopback address the node binds (public and admin listeners). */
  host: string;
  roles: string;
  /** Written to a config file (YAML is a superset of JSON). */
  config: Record<string, unknown>;
}

/** `meshcast node` as a child process, through the real CLI. */
export class MeshcastNode {
  exitCode: number | null | undefined;
  readonly exited: Promise<number | null>;
  readonly log: () => string;

  private constructor(
    readonly id: string,
    readonly host: string,
    readonly rtmpPort: number,
    readonly httpPort: number,
    readonly adminPort: number,
    private readonly dir: string,
    readonly proc: ChildProcess,
  ) {
    this.log = output(proc);
    this.exited = new Promise((r) => proc.on('exit', (c) => r((this.exitCode = c))));
  }

  static async start(o: NodeOptions): Promise<MeshcastNode> {
    const [rtmpPort, httpPort, adminPort] = [await freePort(o.host), await freePort(o.host), await freePort(o.host)];
    const dir = mkdtempSync(join(tmpdir(), `tools-node-${o.id}-`));
    writeFileSync(join(dir, 'config.yaml'), JSON.stringify(o.config));
    const args = [
      '--import', 'tsx', CLI, 'node',
      '--node-id', o.id, '--host', o.host, '--roles', o.roles,
      '--rtmp-port', String(rtmpPort), '--http-port', String(httpPort),
      '--admin-host', o.host, '--admin-port', String(adminPort),
      '--config', join(dir, 'config.yaml'), '--log-level', 'warn',
    ];
    const n = new MeshcastNode(o.id, o.host, rtmpPort, httpPort, adminPort, dir, spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }));
    await waitFor(`${o.id} /healthz`, async () => {
      if (n.exitCode !== undefined) throw new Error(`${o.id} exited with ${n.exitCode}: ${n.log()}`);
      return (await fetch(`${n.http}/healthz`)).ok;
    }, 30_000, 100).catch(async (err: unknown) => {
      await n.kill();
      throw err;
    });
    return n;
  }

  get rtmp(): string {
    return `rtmp://${this.host}:${this.rtmpPort}`;
  }

  /** The public listener: media, route API, health. */
  get http(): string {
    return `http://${this.host}:${this.httpPort}`;
  }

  /** The admin listener: the operator's API. */
  get admin(): string {
    return `http://${this.host}:${this.adminPort}`;
  }

  /** GET on the admin API, parsed. */
  async api<T>(path: string): Promise<T> {
    const r = await fetch(`${this.admin}${path}`);
    if (!r.ok) throw new Error(`${this.id} ${path}: HTTP ${r.status}`);
    return (await r.json()) as T;
  }

  async kill(): Promise<void> {
    if (this.exitCode === undefined) this.proc.kill('SIGKILL');
    await this.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }
}
