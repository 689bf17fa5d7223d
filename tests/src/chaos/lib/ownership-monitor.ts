/**
 * "Nothing lost" invariants, polled while a fault is injected:
 *
 * - orphan: the test's publisher is connected (its publish was acknowledged and its socket is
 *   open) but the mesh's ownership record (`/api/v1/mesh/streams`) names no owner, or another
 *   node than the one it publishes to;
 * - dual: two or more nodes report an RTMP publisher for the stream on `/api/v1/streams` at
 *   the same time (each believes it is the source);
 * - stale belief: a node reports an RTMP publisher while the ownership record names another
 *   owner.
 *
 * Each is measured as its longest contiguous stretch (ms); dual owners are also counted in polls
 * (a stretch shorter than the poll interval shows up as one poll and 0 ms). A node that does not answer within
 * the poll timeout (SIGSTOPped, killed) counts as unknown for that round, as does the ownership
 * record when no node can read it (NATS down); unknown rounds neither start nor end a stretch.
 */
import type { NodeProcess } from '../../harness/node-process.ts';

export interface MonitorOptions {
  app: string;
  stream: string;
  nodes: () => readonly NodeProcess[];
  /** Node id the test's publisher is connected to right now, or undefined when none is. */
  publisherOn: () => string | undefined;
  everyMs?: number;
  timeoutMs?: number;
}

export interface MonitorReport {
  rounds: number;
  unknownOwnerRounds: number;
  /** Polls in which two or more nodes reported an RTMP publisher for the stream. */
  dualRounds: number;
  maxOrphanMs: number;
  maxDualMs: number;
  maxStaleBeliefMs: number;
  /** Node ids that were part of the longest dual stretch. */
  dualNodes: string[];
  /** Owner history as seen by the record: owner ids in order of appearance (consecutive duplicates folded). */
  owners: string[];
  /** At the end: the record's owner, and the nodes that believed they own the stream. */
  final: { owner: string | null | undefined; believers: string[]; publisherOn: string | undefined };
}

interface StreamsApi {
  streams: Array<{ app: string; stream: string; publisher: { session: string; kind: string } | null }>;
}
interface OwnersApi {
  streams: Array<{ app: string; stream: string; owner: string; epoch: number; revision: number }>;
}

async function getJson<T>(url: string, timeoutMs: number): Promise<T | undefined> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (!r.ok) return undefined;
    return (await r.json()) as T;
  } catch {
    return undefined;
  }
}

class Stretch {
  since: number | undefined;
  max = 0;
  update(on: boolean | undefined, now: number): boolean {
    if (on === undefined) return false;
    if (on) {
      this.since ??= now;
      const d = now - this.since;
      if (d > this.max) {
        this.max = d;
        return true;
      }
    } else {
      this.since = undefined;
    }
    return false;
  }
}

export class OwnershipMonitor {
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private running = false;
  private loop: Promise<void> | undefined;
  private rounds = 0;
  private unknownOwnerRounds = 0;
  private dualRounds = 0;
  private readonly orphan = new Stretch();
  private readonly dual = new Stretch();
  private readonly stale = new Stretch();
  private dualNodes: string[] = [];
  private readonly owners: string[] = [];
  private last: MonitorReport['final'] = { owner: undefined, believers: [], publisherOn: undefined };

  constructor(private readonly o: MonitorOptions) {}

  start(): this {
    this.running = true;
    this.loop = this.run();
    return this;
  }

  private async run(): Promise<void> {
    const every = this.o.everyMs ?? 150;
    while (this.running) {
      const t0 = Date.now();
      await this.round();
      const wait = Math.max(0, every - (Date.now() - t0));
      await new Promise<void>((r) => {
        this.wake = r;
        this.timer = setTimeout(r, wait);
      });
    }
  }

  async round(): Promise<void> {
    const timeout = this.o.timeoutMs ?? 400;
    const nodes = this.o.nodes().filter((n) => n.exitCode === undefined);
    const pubOn = this.o.publisherOn();
    const answers = await Promise.all(
      nodes.map(async (n) => ({ n, streams: await getJson<StreamsApi>(`${n.adminUrl}/api/v1/streams`, timeout) })),
    );
    const believers = answers
      .filter((a) => a.streams?.streams.some((s) => s.app === this.o.app && s.stream === this.o.stream && s.publisher?.kind === 'rtmp'))
      .map((a) => a.n.nodeId);
    // The ownership record, read through the first node that answers.
    let owner: string | null | undefined;
    for (const a of answers) {
      if (!a.streams) continue;
      const o = await getJson<OwnersApi>(`${a.n.adminUrl}/api/v1/mesh/streams`, timeout);
      if (!o) continue;
      owner = o.streams.find((s) => s.app === this.o.app && s.stream === this.o.stream)?.owner ?? null;
      break;
    }
    const now = Date.now();
    this.rounds++;
    if (owner === undefined) this.unknownOwnerRounds++;
    if (owner && this.owners[this.owners.length - 1] !== owner) this.owners.push(owner);
    const pubStillOn = this.o.publisherOn();
    // Only judge an orphan when the publisher was connected to the same node during the whole round.
    const orphanNow = owner === undefined || pubOn === undefined || pubStillOn !== pubOn ? (pubOn === undefined ? false : undefined) : owner !== pubOn;
    this.orphan.update(orphanNow, now);
    if (believers.length >= 2) this.dualRounds++;
    if (this.dual.update(believers.length >= 2, now)) this.dualNodes = believers;
    this.stale.update(owner === undefined ? undefined : believers.some((b) => b !== owner), now);
    this.last = { owner, believers, publisherOn: pubStillOn };
  }

  async stop(): Promise<MonitorReport> {
    this.running = false;
    clearTimeout(this.timer);
    this.wake?.();
    await this.loop;
    // One last look, so the final state is current.
    await this.round();
    return {
      rounds: this.rounds,
      unknownOwnerRounds: this.unknownOwnerRounds,
      dualRounds: this.dualRounds,
      maxOrphanMs: this.orphan.max,
      maxDualMs: this.dual.max,
      maxStaleBeliefMs: this.stale.max,
      dualNodes: this.dualNodes,
      owners: [...this.owners],
      final: this.last,
    };
  }
}

/** One line for the console and the results table. */
export function describeMonitor(r: MonitorReport): string {
  return `orphan max ${r.maxOrphanMs} ms, dual owners max ${r.maxDualMs} ms${r.dualNodes.length ? ` (${r.dualNodes.join('+')})` : ''} in ${r.dualRounds}/${r.rounds} polls, stale belief max ${r.maxStaleBeliefMs} ms, owners ${r.owners.join('→') || '-'}, ${r.rounds} polls (${r.unknownOwnerRounds} without a readable record)`;
}
