/**
 * Runs simulation jobs on K forked worker processes (or in this process with K = 0).
 * Scheduling: longest job first, except that a worker prefers a job over the same pool
 * as its previous one (it then reuses the HRW orders it has computed).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { runJob, type Job, type JobOutput } from './jobs.ts';
import type { WorkerMessage } from './worker.ts';

const WORKER = join(import.meta.dirname, 'worker.ts');

export interface PoolCallbacks {
  progress?: (id: string, fraction: number) => void;
  done?: (job: Job, ms: number) => void;
}

export interface JobDone {
  job: Job;
  output: JobOutput;
  ms: number;
}

function pick(queue: Job[], lastKey: string | undefined): Job | undefined {
  if (queue.length === 0) return undefined;
  let idx = lastKey === undefined ? -1 : queue.findIndex((j) => j.poolKey === lastKey);
  if (idx < 0) idx = 0;
  return queue.splice(idx, 1)[0];
}

export async function runJobs(jobs: readonly Job[], workers: number, cb: PoolCallbacks = {}): Promise<JobDone[]> {
  const queue = [...jobs].sort((a, b) => b.cost - a.cost);
  const out: JobDone[] = [];
  if (workers <= 0) {
    let last: string | undefined;
    for (;;) {
      const job = pick(queue, last);
      if (!job) break;
      last = job.poolKey;
      const t0 = performance.now();
      const output = runJob(job, (f) => cb.progress?.(job.id, f));
      const ms = Math.round(performance.now() - t0);
      out.push({ job, output, ms });
      cb.done?.(job, ms);
      // let the progress bar draw
      await new Promise((r) => setImmediate(r));
    }
    return out;
  }

  const procs: ChildProcess[] = [];
  try {
    await Promise.all(
      Array.from({ length: Math.min(workers, queue.length) }, async () => {
        const proc = fork(WORKER, [], {
          execArgv: ['--import', 'tsx', '--max-semi-space-size=32'],
          stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
        });
        procs.push(proc);
        let stderr = '';
        proc.stderr?.on('data', (d: Buffer) => {
          stderr = (stderr + d.toString()).slice(-4000);
        });
        let last: string | undefined;
        let current: Job | undefined;
        await new Promise<void>((resolve, reject) => {
          const next = (): void => {
            current = pick(queue, last);
            if (!current) {
              resolve();
              return;
            }
            last = current.poolKey;
            proc.send({ job: current });
          };
          proc.on('message', (m: WorkerMessage) => {
            if (m.type === 'ready') next();
            else if (m.type === 'progress') cb.progress?.(m.id, m.fraction);
            else if (m.type === 'done' && current) {
              out.push({ job: current, output: m.output, ms: m.ms });
              cb.done?.(current, m.ms);
              next();
            } else if (m.type === 'error') reject(new Error(`job ${m.id} failed: ${m.error}`));
          });
          proc.on('exit', (code, sig) => {
            if (current || queue.length > 0) reject(new Error(`sim worker exited (${code ?? sig})${stderr ? `: ${stderr.trim()}` : ''}`));
          });
        });
        current = undefined;
        proc.disconnect();
      }),
    );
  } finally {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill();
  }
  return out;
}
