/**
 * What a well-behaved player does when its node disappears: ask a node's route API where to
 * go, play there, and fall back to the answer's other candidates if the chosen one fails.
 */
import type { NodeProcess } from '../../harness/node-process.ts';
import { RecordingViewer } from './viewer.ts';

interface RouteAnswer {
  node: string;
  rtmp: string;
  next: Array<{ node: string; rtmp: string }>;
  refused: Array<{ node: string; reason: string }>;
}

export interface Rerouted {
  viewer: RecordingViewer;
  node: string;
  askedAt: number;
  answeredAt: number;
  firstFrameAt: number;
  attempts: number;
  refused: string[];
}

export async function rerouteViewer(via: Pick<NodeProcess, 'httpUrl'>, app: string, stream: string, label: string, timeoutMs = 8000): Promise<Rerouted> {
  const askedAt = Date.now();
  const deadline = askedAt + timeoutMs;
  let attempts = 0;
  const refused: string[] = [];
  let lastErr: unknown;
  while (Date.now() < deadline) {
    attempts++;
    let answer: RouteAnswer;
    try {
      const r = await fetch(`${via.httpUrl}/api/v1/route/${encodeURIComponent(app)}/${encodeURIComponent(stream)}`, { signal: AbortSignal.timeout(2000) });
      if (!r.ok) throw new Error(`route answered ${r.status}`);
      answer = (await r.json()) as RouteAnswer;
    } catch (err) {
      lastErr = err;
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    const answeredAt = Date.now();
    for (const x of answer.refused) refused.push(`${x.node} (${x.reason})`);
    for (const c of [answer, ...answer.next]) {
      try {
        const viewer = await RecordingViewer.open(c.rtmp, `${label}${c.node}`, { timeoutMs: 2000 });
        const f = await viewer.waitFrame(() => true, Math.max(500, deadline - Date.now()));
        if (!f) {
          viewer.close();
          continue;
        }
        return { viewer, node: c.node, askedAt, answeredAt, firstFrameAt: f.at, attempts, refused };
      } catch (err) {
        lastErr = err;
        refused.push(`${c.node} (connect: ${(err as Error).message})`);
      }
    }
  }
  throw new Error(`${label}: could not re-route within ${timeoutMs} ms: ${String(lastErr)}`);
}
