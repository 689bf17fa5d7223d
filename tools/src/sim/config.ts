/**
 * Scenario and strategy definitions for the placement simulation (`npm run sim`).
 * Times are in ticks; one tick = one heartbeat interval (1 s in the design).
 */

export type StrategySpec =
  /** bounded-load weighted HRW: the real `BoundedLoadRing` / `rankPlaybackNodes` with factor c */
  | { kind: 'bl'; c: number; admitBound?: boolean }
  /** plain weighted HRW without the bound: the real `rankPlaybackNodes` with c = ∞ (only full nodes are skipped) */
  | { kind: 'hrw' }
  /** (smooth weighted) round robin over the nodes in the table, skipping full / suspect ones */
  | { kind: 'rr' }
  /** least loaded (viewers / capacity) by the same stale view + own pending placements */
  | { kind: 'll' };

export function strategyName(s: StrategySpec): string {
  switch (s.kind) {
    case 'bl':
      return `bl-${s.c}${s.admitBound ? '+adm' : ''}`;
    default:
      return s.kind;
  }
}

export function strategyLabel(s: StrategySpec): string {
  switch (s.kind) {
    case 'bl':
      return s.admitBound ? `what-if: bounded-load HRW c=${s.c} + node enforces its bound at admission` : `bounded-load HRW c=${s.c}`;
    case 'hrw':
      return 'plain HRW (no bound)';
    case 'rr':
      return 'round robin';
    case 'll':
      return 'least loaded (stale)';
  }
}

export function parseStrategy(name: string): StrategySpec {
  const m = /^bl-(\d+(?:\.\d+)?)(\+adm)?$/.exec(name);
  if (m) {
    const c = Number(m[1]);
    if (!(c > 1)) throw new Error(`strategy ${name}: c must be > 1`);
    return m[2] ? { kind: 'bl', c, admitBound: true } : { kind: 'bl', c };
  }
  if (name === 'hrw' || name === 'rr' || name === 'll') return { kind: name };
  throw new Error(`unknown strategy ${name} (bl-<c>, bl-<c>+adm, hrw, rr, ll)`);
}

export interface ScenarioConfig {
  /** short id, used in job names and JSON */
  name: string;
  title: string;
  /** playback nodes at the start */
  nodes: number;
  /** 'uniform': all nodes the same capacity; 'mixed': sizes 1/2/4 (50 % / 30 % / 20 %) */
  weights: 'uniform' | 'mixed';
  streams: number;
  /** Zipf exponent of stream popularity */
  zipfS: number;
  /** concurrent viewers at the end of the ramp */
  viewers: number;
  /** the viewers arrive evenly over this many ticks */
  rampTicks: number;
  /** capacity of a node = headroom × its fair share of `viewers` (capacity is also the HRW weight) */
  headroom: number;
  /** routers see load K heartbeats late (0 = the heartbeat of the previous tick) */
  staleK: number;
  /** ticks of churn after the ramp (0 = none): departures and as many arrivals, one failure, one join */
  churnTicks: number;
  /** mean viewer lifetime in ticks during churn (departures per tick = viewers / lifetime) */
  lifetimeTicks: number;
  /** churn tick at which one node is killed (< 0: none) */
  failAt: number;
  /** churn tick at which one node joins (< 0: none) */
  joinAt: number;
  /** a router asks at most this many candidates for admission (services/node ViewerRouter: 4; 0 = all) */
  askAtMost: number;
  /** relay tree fan-out F */
  fanout: number;
  bitrateMbps: number;
  seed: number;
  strategies: string[];
  /** compute "viewers moved per node change" by replaying the ramp without one node / with one more */
  moves: boolean;
  /** strategies whose every decision is taken from the real BoundedLoadRing of every router */
  realDecisions: string[];
  /** other bl/hrw runs: shadow-check about this many decisions against the real ring */
  verifyChecks: number;
  /** record max/avg per tick */
  series: boolean;
  /** keep the sorted normalised node loads at the end of the ramp */
  loads: boolean;
}

export const BASE: Omit<ScenarioConfig, 'name' | 'title' | 'nodes' | 'strategies'> = {
  weights: 'uniform',
  streams: 10_000,
  zipfS: 1,
  viewers: 1_000_000,
  rampTicks: 600,
  headroom: 2.5,
  staleK: 1,
  churnTicks: 0,
  lifetimeTicks: 600,
  failAt: -1,
  joinAt: -1,
  askAtMost: 4,
  fanout: 8,
  bitrateMbps: 3,
  seed: 1,
  moves: false,
  realDecisions: [],
  verifyChecks: 2000,
  series: false,
  loads: false,
};

export const ALL_STRATEGIES = ['bl-1.1', 'bl-1.25', 'bl-1.5', 'bl-2', 'hrw', 'rr', 'll', 'bl-1.25+adm'];
export const CORE_STRATEGIES = ['bl-1.25', 'hrw', 'rr', 'll', 'bl-1.25+adm'];

export interface Plan {
  scenarios: ScenarioConfig[];
  /** node counts of the sweep, in the order shown (the sweep scenarios are named `sweep-<n>`) */
  sweep: number[];
}

/** The full run: headline (100 nodes, 1M viewers), heterogeneous, node-count sweep, stale gossip / flash crowd. */
export function fullPlan(seed = 1): Plan {
  const sweep = [10, 30, 100, 300, 1000];
  const scenarios: ScenarioConfig[] = [
    {
      ...BASE,
      seed,
      name: 'headline',
      title: '100 nodes, 10k streams (Zipf 1), 1M viewers over 10 min, K=1; then 2 min churn: 1 node killed, 1 joins',
      nodes: 100,
      churnTicks: 120,
      failAt: 20,
      joinAt: 60,
      strategies: ALL_STRATEGIES,
      moves: true,
      series: true,
      loads: true,
    },
    {
      ...BASE,
      seed,
      name: 'hetero',
      title: '100 nodes of capacity 1×/2×/4× (50/30/20 %), 1M viewers, K=1; churn as headline (the joining node is 2×)',
      nodes: 100,
      weights: 'mixed',
      churnTicks: 120,
      failAt: 20,
      joinAt: 60,
      strategies: ALL_STRATEGIES,
      moves: true,
      loads: true,
    },
    ...sweep
      .filter((n) => n !== 100)
      .map(
        (n): ScenarioConfig => ({
          ...BASE,
          seed,
          name: `sweep-${n}`,
          title: `${n} nodes, 1M viewers over 10 min, K=1`,
          nodes: n,
          strategies: CORE_STRATEGIES,
          verifyChecks: n >= 1000 ? 300 : 1000,
        }),
      ),
  ];
  for (const ramp of [600, 60]) {
    for (const k of [0, 1, 2, 5]) {
      if (ramp === 600 && k === 1) continue; // = headline
      scenarios.push({
        ...BASE,
        seed,
        name: `stale-k${k}-r${ramp}`,
        title: `100 nodes, 1M viewers over ${ramp} s, load seen K=${k} heartbeats late`,
        nodes: 100,
        staleK: k,
        rampTicks: ramp,
        strategies: ['bl-1.25', 'll', 'bl-1.25+adm'],
        verifyChecks: 1000,
      });
    }
  }
  return { scenarios, sweep };
}

/** CI-sized: the same shapes, small enough for a unit test. */
export function quickPlan(seed = 1): Plan {
  const q = { ...BASE, seed, streams: 500, viewers: 20_000, rampTicks: 40, verifyChecks: 500 };
  const sweep = [10, 20, 40];
  const scenarios: ScenarioConfig[] = [
    {
      ...q,
      name: 'headline',
      title: '20 nodes, 500 streams, 20k viewers over 40 ticks, K=1; 20 ticks churn',
      nodes: 20,
      churnTicks: 20,
      lifetimeTicks: 100,
      failAt: 5,
      joinAt: 10,
      strategies: ALL_STRATEGIES,
      moves: true,
      realDecisions: ['bl-1.25', 'hrw'],
      series: true,
      loads: true,
    },
    {
      ...q,
      name: 'hetero',
      title: '20 nodes 1×/2×/4×, 20k viewers',
      nodes: 20,
      weights: 'mixed',
      churnTicks: 20,
      lifetimeTicks: 100,
      failAt: 5,
      joinAt: 10,
      strategies: CORE_STRATEGIES,
      moves: true,
      loads: true,
    },
    ...sweep
      .filter((n) => n !== 20)
      .map((n): ScenarioConfig => ({ ...q, name: `sweep-${n}`, title: `${n} nodes, 20k viewers`, nodes: n, strategies: CORE_STRATEGIES })),
    { ...q, name: 'stale-k2-r40', title: '20 nodes, K=2', nodes: 20, staleK: 2, strategies: ['bl-1.25', 'll', 'bl-1.25+adm'] },
  ];
  return { scenarios, sweep };
}
