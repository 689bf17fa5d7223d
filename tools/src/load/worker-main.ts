/**
 * Entry point of a swarm worker process (forked by SwarmWorkers with an IPC channel).
 * Requests: { id, cmd: 'start' | 'progress' | 'settle' | 'mark' | 'end' | 'report' | 'stop', args? };
 * replies: { id, ok: true, result } or { id, ok: false, error }.
 * The worker exits when its parent disconnects, so it never outlives the benchmark.
 */
import { ViewerSwarm, type SwarmOptions } from './swarm.ts';

export interface WorkerRequest {
  id: number;
  cmd: 'start' | 'progress' | 'settle' | 'mark' | 'end' | 'report' | 'stop';
  args?: unknown;
}

export type WorkerReply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

let swarm: ViewerSwarm | undefined;

async function handle(req: WorkerRequest): Promise<unknown> {
  switch (req.cmd) {
    case 'start': {
      swarm?.stop();
      swarm = new ViewerSwarm(req.args as SwarmOptions);
      swarm.start();
      return swarm.progress();
    }
    case 'progress':
      return swarm?.progress();
    case 'settle':
      return swarm?.whenSettled(Number(req.args ?? 0));
    case 'mark':
      swarm?.mark(req.args as { fromTs: number; toTs: number } | undefined);
      return true;
    case 'end':
      swarm?.end();
      return true;
    case 'report':
      if (!swarm) throw new Error('no swarm running');
      return swarm.report();
    case 'stop':
      swarm?.stop();
      swarm = undefined;
      return true;
  }
}

if (process.send) {
  process.on('message', (req: WorkerRequest) => {
    handle(req).then(
      (result) => process.send?.({ id: req.id, ok: true, result } satisfies WorkerReply),
      (err: unknown) => process.send?.({ id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) } satisfies WorkerReply),
    );
  });
  // Ctrl-C reaches the whole process group: the parent decides when we stop (it disconnects).
  process.on('SIGINT', () => undefined);
  process.on('disconnect', () => {
    swarm?.stop();
    process.exit(0);
  });
  process.send({ id: 0, ok: true, result: 'ready' } satisfies WorkerReply);
}
