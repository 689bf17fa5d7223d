/**
 * Viewer worker processes for meshcast-load: each runs one LoadPart. The parent talks to it
 * over the IPC channel ({ id, cmd, args } → { id, ok, result | error }); a worker exits when
 * its parent disconnects, so it never outlives the run.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FROM_SOURCE, REPO_ROOT, TOOLS_DIST } from '../load/index.ts';
import { LoadPart, type PartPlan, type PartProgress, type PartReport } from './part.ts';

type Cmd = 'start' | 'progress' | 'mark' | 'end' | 'report' | 'stop';
interface Request {
  id: number;
  cmd: Cmd;
  args?: unknown;
}
type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

/** The same surface for a LoadPart in this process and one in a worker. */
export interface PartHandle {
  start(plan: PartPlan): Promise<void>;
  progress(): Promise<PartProgress>;
  mark(ranges?: Record<number, { fromTs: number; toTs: number }>): Promise<void>;
  end(): Promise<void>;
  report(): Promise<PartReport>;
  stop(): Promise<void>;
  close(): Promise<void>;
  kill(): void;
}

export class LocalPart implements PartHandle {
  private part: LoadPart | undefined;
  async start(plan: PartPlan): Promise<void> {
    this.part = new LoadPart(plan);
    this.part.start();
  }
  async progress(): Promise<PartProgress> {
    return this.part!.progress();
  }
  async mark(ranges?: Record<number, { fromTs: number; toTs: number }>): Promise<void> {
    this.part?.mark(ranges);
  }
  async end(): Promise<void> {
    this.part?.end();
  }
  async report(): Promise<PartReport> {
    return this.part!.report();
  }
  async stop(): Promise<void> {
    this.part?.stop();
  }
  async close(): Promise<void> {
    this.part?.stop();
    await this.part?.closed();
  }
  kill(): void {
    this.part?.stop();
  }
}

export class WorkerPart implements PartHandle {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private stderr = '';
  private exited = false;
  private readonly proc: ChildProcess;
  readonly ready: Promise<void>;

  constructor(index: number) {
    // From the build, this module is inside dist/meshcast-load.mjs: fork its own bundle instead.
    const [script, loader] = FROM_SOURCE ? [fileURLToPath(import.meta.url), ['--import', 'tsx']] : [join(TOOLS_DIST, 'load-cli-worker.mjs'), ['--enable-source-maps']];
    this.proc = fork(script, [], {
      cwd: REPO_ROOT,
      execArgv: [...loader, '--max-semi-space-size=32'],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      env: { ...process.env, MESHCAST_LOAD_CLI_WORKER: String(index) },
    });
    let ready!: () => void;
    let failed!: (e: Error) => void;
    this.ready = new Promise((res, rej) => {
      ready = res;
      failed = rej;
    });
    this.proc.stderr?.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.proc.on('message', (m: Reply) => {
      if (m.id === 0) return ready();
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new Error(`load worker ${this.proc.pid}: ${m.error}`));
    });
    this.proc.on('exit', (code, sig) => {
      this.exited = true;
      const err = new Error(`load worker ${this.proc.pid} exited (${code ?? sig})${this.stderr ? `: ${this.stderr.trim()}` : ''}`);
      failed(err);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  private request<T>(cmd: Cmd, args?: unknown, timeoutMs = 60_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`load worker ${this.proc.pid} is gone`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`load worker ${this.proc.pid}: no answer to ${cmd} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => (clearTimeout(t), resolve(v as T)),
        reject: (e) => (clearTimeout(t), reject(e)),
      });
      this.proc.send({ id, cmd, args } satisfies Request);
    });
  }

  start(plan: PartPlan): Promise<void> {
    return this.request('start', plan);
  }
  progress(): Promise<PartProgress> {
    return this.request('progress');
  }
  mark(ranges?: Record<number, { fromTs: number; toTs: number }>): Promise<void> {
    return this.request('mark', ranges);
  }
  end(): Promise<void> {
    return this.request('end');
  }
  report(): Promise<PartReport> {
    return this.request('report');
  }
  async stop(): Promise<void> {
    await this.request('stop').catch(() => undefined);
  }
  async close(): Promise<void> {
    await this.stop();
    if (this.exited) return;
    await new Promise<void>((res) => {
      this.proc.once('exit', () => res());
      if (this.proc.connected) this.proc.disconnect();
      setTimeout(() => this.kill(), 3000).unref();
    });
  }
  kill(): void {
    if (!this.exited) this.proc.kill('SIGKILL');
  }
}

// ------------------------------------------------------------------ worker side

if (process.env['MESHCAST_LOAD_CLI_WORKER'] !== undefined && process.send) {
  let part: LoadPart | undefined;
  const handle = async (req: Request): Promise<unknown> => {
    switch (req.cmd) {
      case 'start':
        part?.stop();
        part = new LoadPart(req.args as PartPlan);
        part.start();
        return true;
      case 'progress':
        return part?.progress();
      case 'mark':
        part?.mark(req.args as Record<number, { fromTs: number; toTs: number }> | undefined);
        return true;
      case 'end':
        part?.end();
        return true;
      case 'report':
        if (!part) throw new Error('no load running');
        return part.report();
      case 'stop':
        part?.stop();
        await part?.closed();
        return true;
    }
  };
  process.on('message', (req: Request) => {
    handle(req).then(
      (result) => process.send?.({ id: req.id, ok: true, result } satisfies Reply),
      (err: unknown) => process.send?.({ id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) } satisfies Reply),
    );
  });
  process.on('SIGINT', () => undefined); // Ctrl-C reaches the group; the parent decides when we stop
  process.on('disconnect', () => {
    part?.stop();
    process.exit(0);
  });
  process.send({ id: 0, ok: true, result: 'ready' } satisfies Reply);
}
