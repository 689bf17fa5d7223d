/**
 * Placement of viewers on playback nodes (docs/design.md): bounded-load weighted
 * rendezvous hashing. Pure — no I/O, no clock — and deterministic: every node
 * computes the same ranking from the same table.
 *
 * For a stream, each eligible node gets the weighted HRW score
 * `-wᵢ / ln(hash01(stream|node))` (wᵢ = advertised capacity), and a cap
 * `ceil(c · (L + 1) · wᵢ / Σw)` where L is the total load (viewers) of the
 * eligible nodes and c = 1.25 by default. The ranking is:
 * 1. nodes whose load is below their cap, best score first;
 * 2. then nodes at/over their cap, best score first (marked `overCap`) —
 *    only useful as fallbacks when everybody above refuses admission.
 * Nodes that are suspect, dead, draining, full (load ≥ capacity, or flagged
 * full) or have weight 0 are excluded entirely.
 *
 * Because Σ caps ≥ c·(L+1) > L, at least one eligible node is always below
 * its cap, so the first candidate never exceeds its bound.
 */
import { hrwScore } from './hash.ts';
import type { NodeState, NodeView } from './membership.ts';

export interface PlacementNode {
  id: string;
  /** Capacity (max viewers); the HRW weight. */
  weight: number;
  /** Current load in viewers (plus placements not yet reflected in a heartbeat). */
  load: number;
  state: NodeState;
  draining: boolean;
  full: boolean;
}

export interface RankedNode {
  id: string;
  score: number;
  cap: number;
  load: number;
  weight: number;
  overCap: boolean;
}

export interface RankOptions {
  /** Bounded-load factor, > 1 (default 1.25). */
  c?: number;
}

export const DEFAULT_LOAD_FACTOR = 1.25;

export function isEligible(n: PlacementNode): boolean {
  return n.state === 'alive' && !n.draining && !n.full && n.weight > 0 && n.load < n.weight;
}

/** Rank playback nodes for a stream (see module doc). */
export function rankPlaybackNodes(streamToken: string, nodes: readonly PlacementNode[], opts: RankOptions = {}): RankedNode[] {
  const c = opts.c ?? DEFAULT_LOAD_FACTOR;
  const eligible = nodes.filter(isEligible);
  if (eligible.length === 0) return [];
  let L = 0;
  let W = 0;
  for (const n of eligible) {
    L += Math.max(0, n.load);
    W += n.weight;
  }
  const ranked = eligible.map((n): RankedNode => {
    const cap = Math.ceil((c * (L + 1) * n.weight) / W);
    return { id: n.id, score: hrwScore(streamToken, n.id, n.weight), cap, load: n.load, weight: n.weight, overCap: n.load >= cap };
  });
  ranked.sort((a, b) => {
    if (a.overCap !== b.overCap) return a.overCap ? 1 : -1;
    if (a.score !== b.score) return b.score - a.score;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  });
  return ranked;
}

/** Input to {@link BoundedLoadRing.update}. */
export interface RingNodeInput {
  id: string;
  capacity: number;
  viewers: number;
  state: NodeState;
  draining: boolean;
  /** Identifies the heartbeat the numbers come from; a new value resets this node's placement count. */
  heartbeatId: string;
}

/** Playback nodes of a membership table as ring input. */
export function ringNodesFromTable(table: readonly NodeView[]): RingNodeInput[] {
  return table
    .filter((n) => n.heartbeat.roles.includes('playback'))
    .map((n) => ({
      id: n.id,
      capacity: n.heartbeat.capacity,
      viewers: n.heartbeat.viewers,
      state: n.state,
      draining: n.heartbeat.draining,
      heartbeatId: `${n.heartbeat.startedAt}:${n.heartbeat.seq}`,
    }));
}

/**
 * The live placement table of one node. Load of a node = viewers from its
 * last heartbeat + placements THIS node made to it that the heartbeats have
 * not yet shown, so a burst of requests between two heartbeats spreads across
 * nodes instead of piling onto the top-ranked one.
 *
 * A newer heartbeat absorbs pending placements by the rise in its viewer count
 * (those viewers have arrived); placements it does not explain stay counted —
 * a heartbeat sent while routed viewers are still connecting must not make
 * this node forget them — until they are `pendingTtlMs` old (viewers that
 * never came). Resetting the count on every heartbeat instead would let a
 * burst longer than one heartbeat interval overshoot the cap.
 */
export class BoundedLoadRing {
  readonly c: number;
  readonly pendingTtlMs: number;
  #nodes = new Map<string, RingNodeInput>();
  /** Per node: times of placements not yet absorbed, oldest first. */
  readonly #placed = new Map<string, number[]>();
  #placedSinceTake = 0;
  readonly #now: () => number;

  constructor(opts: RankOptions & { pendingTtlMs?: number; now?: () => number } = {}) {
    this.c = opts.c ?? DEFAULT_LOAD_FACTOR;
    this.pendingTtlMs = opts.pendingTtlMs ?? 5000;
    this.#now = opts.now ?? Date.now;
  }

  /** Replace the table (call on every membership change). */
  update(nodes: readonly RingNodeInput[]): void {
    const next = new Map<string, RingNodeInput>();
    for (const n of nodes) {
      const prev = this.#nodes.get(n.id);
      const placed = this.#placed.get(n.id);
      if (placed && prev && prev.heartbeatId !== n.heartbeatId) {
        const arrived = Math.max(0, n.viewers - prev.viewers);
        placed.splice(0, Math.min(arrived, placed.length));
      } else if (placed && !prev) {
        this.#placed.delete(n.id);
      }
      next.set(n.id, n);
    }
    for (const id of this.#placed.keys()) if (!next.has(id)) this.#placed.delete(id);
    this.#nodes = next;
  }

  /** Convenience: `update(ringNodesFromTable(table))`. */
  updateFromTable(table: readonly NodeView[]): void {
    this.update(ringNodesFromTable(table));
  }

  /** Placements made to `id` that its heartbeats have not shown yet (and are younger than the TTL). */
  pending(id: string): number {
    const placed = this.#placed.get(id);
    if (!placed) return 0;
    const cutoff = this.#now() - this.pendingTtlMs;
    let expired = 0;
    while (expired < placed.length && placed[expired]! < cutoff) expired++;
    if (expired > 0) placed.splice(0, expired);
    return placed.length;
  }

  nodes(): PlacementNode[] {
    return [...this.#nodes.values()].map((n) => {
      const load = n.viewers + this.pending(n.id);
      return { id: n.id, weight: n.capacity, load, state: n.state, draining: n.draining, full: load >= n.capacity };
    });
  }

  /** Ranked candidates for a stream (no side effect). */
  rank(streamToken: string): RankedNode[] {
    return rankPlaybackNodes(streamToken, this.nodes(), { c: this.c });
  }

  /** Rank, take the first candidate and count the placement. */
  place(streamToken: string): RankedNode | undefined {
    const first = this.rank(streamToken)[0];
    if (first) this.recordPlacement(first.id);
    return first;
  }

  /** Count a placement decided elsewhere (e.g. after the first candidate refused and the second admitted). */
  recordPlacement(id: string): void {
    const placed = this.#placed.get(id);
    if (placed) placed.push(this.#now());
    else this.#placed.set(id, [this.#now()]);
    this.#placedSinceTake++;
  }

  /** Placements made since the previous call (for the heartbeat's `placementsSinceLastHb`). */
  takePlacementCount(): number {
    const n = this.#placedSinceTake;
    this.#placedSinceTake = 0;
    return n;
  }
}
