/**
 * SwarmWorkers: a ViewerSwarm spread over K child processes (so the load generator can
 * use more than one core). Each worker reports JSON; the parent merges the reports,
 * including each worker's own CPU time, so the generator's cost is always visible.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { FROM_SOURCE, REPO_ROOT, TOOLS_DIST } from './flv-source.ts';
import type { SwarmPartReport } from './stats.ts';
import type { SwarmOptions, SwarmProgress } from './swarm.ts';
import type { WorkerReply, WorkerRequest } from './worker-main.ts';

const WORKER = FROM_SOURCE ? join(import.meta.dirname, 'worker-main.ts') : join(TOOLS_DIST, 'load-worker.mjs');
const LOADER = FROM_SOURCE ? ['--import', 'tsx'] : ['--enable-source-maps'];

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

class WorkerHandle {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private stderr = '';
  exited = false;
  readonly ready: Promise<void>;

  constructor(readonly proc: ChildProcess) {
    let onReady!: () => void;
    let onFail!: (e: Error) => void;
    this.ready = new Promise<void>((res, rej) => {
      onReady = res;
      onFail = rej;
    });
    proc.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    proc.stdout?.resume();
    proc.on('message', (m: WorkerReply) => {
      if (m.id === 0) {
        onReady();
        return;
      }
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new Error(`swarm worker ${proc.pid}: ${m.error}`));
    });
    proc.on('exit', (code, sig) => {
      this.exited = true;
      const err = new Error(`swarm worker ${proc.pid} exited (${code ?? sig})${this.stderr ? `: ${this.stderr.trim()}` : ''}`);
      onFail(err);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  request<T>(cmd: WorkerRequest['cmd'], args?: unknown, timeoutMs = 60_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`swarm worker ${this.proc.pid} is gone`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`swarm worker ${this.proc.pid}: no answer to ${cmd} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(t);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.proc.send({ id, cmd, args } satisfies WorkerRequest);
    });
  }
}

/** Splits `total` into `k` near-equal integer parts. */
export function splitEven(total: number, k: number): number[] {
  const base = Math.floor(total / k);
  return Array.from({ length: k }, (_, i) => base + (i < total % k ? 1 : 0));
}

export function sumProgress(ps: SwarmProgress[]): SwarmProgress {
  const out: SwarmProgress = { requested: 0, started: 0, playing: 0, receiving: 0, failed: 0, settled: 0 };
  for (const p of ps) {
    out.requested += p.requested;
    out.started += p.started;
    out.playing += p.playing;
    out.receiving += p.receiving;
    out.failed += p.failed;
    out.settled += p.settled;
  }
  return out;
}

export class SwarmWorkers {
  private constructor(private readonly workers: WorkerHandle[]) {}

  /** Forks `k` worker processes and waits until they are ready. */
  static async spawn(k: number, opts: { nodeArgs?: string[] } = {}): Promise<SwarmWorkers> {
    const handles: WorkerHandle[] = [];
    for (let i = 0; i < k; i++) {
      const proc = fork(WORKER, [], {
        cwd: REPO_ROOT,
        execArgv: [...LOADER, ...(opts.nodeArgs ?? ['--max-semi-space-size=32'])],
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
        env: { ...process.env, MESHCAST_LOAD_WORKER: String(i) },
      });
      handles.push(new WorkerHandle(proc));
    }
    const sw = new SwarmWorkers(handles);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        Promise.all(handles.map((h) => h.ready)),
        new Promise((_, rej) => {
          timer = setTimeout(() => rej(new Error('swarm workers did not start in 30 s')), 30_000);
        }),
      ]);
    } catch (err) {
      sw.kill();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return sw;
  }

  get size(): number {
    return this.workers.length;
  }

  get pids(): number[] {
    return this.workers.map((w) => w.proc.pid ?? -1);
  }

  /** Starts ramping `opts.viewers` viewers over all workers (viewers and ramp rate split evenly). */
  async start(opts: SwarmOptions): Promise<void> {
    const k = this.workers.length;
    const counts = splitEven(opts.viewers, k);
    const rate = opts.rampPerSecond;
    await Promise.all(
      this.workers.map((w, i) =>
        w.request('start', {
          ...opts,
          viewers: counts[i] ?? 0,
          ...(rate ? { rampPerSecond: rate / k } : {}),
          ...(opts.localAddresses && opts.localAddresses.length >= k ? { localAddresses: opts.localAddresses.filter((_, j) => j % k === i) } : {}),
        } satisfies SwarmOptions),
      ),
    );
  }

  async progress(): Promise<SwarmProgress> {
    return sumProgress(await Promise.all(this.workers.map((w) => w.request<SwarmProgress>('progress'))));
  }

  /** Polls until every viewer is receiving or failed, or `timeoutMs` passes. */
  async whenSettled(timeoutMs: number, onProgress?: (p: SwarmProgress) => void): Promise<SwarmProgress> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const p = await this.progress();
      onProgress?.(p);
      if ((p.started >= p.requested && p.settled >= p.requested) || Date.now() >= deadline) return p;
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** Starts the measurement window in every worker (see ViewerSwarm.mark). */
  async mark(range?: { fromTs: number; toTs: number }): Promise<void> {
    await Promise.all(this.workers.map((w) => w.request('mark', range)));
  }

  /** Ends the wall-clock part of the window in every worker. */
  async end(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.request('end')));
  }

  async report(): Promise<SwarmPartReport[]> {
    return Promise.all(this.workers.map((w) => w.request<SwarmPartReport>('report')));
  }

  /** Closes all viewers (the workers stay up for the next run). */
  async stop(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.request('stop').catch(() => undefined)));
  }

  /** Ends the worker processes. */
  async close(): Promise<void> {
    await this.stop();
    await Promise.all(
      this.workers.map(
        (w) =>
          new Promise<void>((res) => {
            if (w.exited) return res();
            w.proc.once('exit', () => res());
            if (w.proc.connected) w.proc.disconnect();
            setTimeout(() => {
              if (!w.exited) w.proc.kill('SIGKILL');
            }, 3000).unref();
          }),
      ),
    );
  }

  /** Synchronous last-resort kill (process exit handlers). */
  kill(): void {
    for (const w of this.workers) if (!w.exited) w.proc.kill('SIGKILL');
  }
}
