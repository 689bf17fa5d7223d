/**
 * A herd of players re-routing at once, run in a worker thread. The drain scenario closes 60
 * viewers together and they all re-route to one node; done in the test's own event loop, their
 * handshakes and GOP bursts stalled it by 40-55 ms (measured with monitorEventLoopDelay), and
 * that stall showed up as an "extra gap" in the arrival times of the viewers the scenario was
 * judging. In a real deployment those players are other machines, so here they get their own
 * event loop: the figures on the judged viewers then measure the node, not the harness.
 */
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { rerouteViewer } from './reroute.ts';

interface RerouteAsk {
  id: number;
  httpUrl: string;
  app: string;
  stream: string;
  label: string;
}
interface RerouteDone {
  id: number;
  /** Ask → first frame on the new node, ms. */
  ms?: number;
  error?: string;
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', (ask: RerouteAsk) => {
    rerouteViewer({ httpUrl: ask.httpUrl }, ask.app, ask.stream, ask.label).then(
      (r) => {
        r.viewer.close();
        port.postMessage({ id: ask.id, ms: r.firstFrameAt - r.askedAt } satisfies RerouteDone);
      },
      (err: unknown) => port.postMessage({ id: ask.id, error: String(err) } satisfies RerouteDone),
    );
  });
}

export class RerouteHerd {
  private readonly worker = new Worker(new URL(import.meta.url));
  private readonly waiting = new Map<number, { resolve: (ms: number) => void; reject: (err: Error) => void }>();
  private nextId = 1;

  constructor() {
    this.worker.on('message', (m: RerouteDone) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.ms !== undefined) w.resolve(m.ms);
      else w.reject(new Error(m.error ?? 'reroute failed'));
    });
    this.worker.on('error', (err) => {
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    });
  }

  /** One player asks `httpUrl`'s route API and plays there; resolves with ask → first frame, ms. */
  reroute(httpUrl: string, app: string, stream: string, label: string): Promise<number> {
    const id = this.nextId++;
    return new Promise<number>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, httpUrl, app, stream, label } satisfies RerouteAsk);
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
