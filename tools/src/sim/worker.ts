/**
 * A simulation worker process (forked by the pool in pool.ts with an IPC channel).
 * Receives { job } messages, answers { type: 'progress' | 'done' | 'error', id, … };
 * exits when the parent disconnects, so it never outlives the run.
 */
import { runJob, type Job, type JobOutput } from './jobs.ts';

export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'progress'; id: string; fraction: number }
  | { type: 'done'; id: string; output: JobOutput; ms: number }
  | { type: 'error'; id: string; error: string };

function send(m: WorkerMessage): void {
  process.send?.(m);
}

process.on('message', (m: { job: Job }) => {
  const { job } = m;
  const t0 = performance.now();
  try {
    let last = 0;
    const output = runJob(job, (fraction) => {
      const now = performance.now();
      if (now - last > 200) {
        last = now;
        send({ type: 'progress', id: job.id, fraction });
      }
    });
    send({ type: 'done', id: job.id, output, ms: Math.round(performance.now() - t0) });
  } catch (err) {
    send({ type: 'error', id: job.id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  }
});
process.on('disconnect', () => process.exit(0));
send({ type: 'ready' });
