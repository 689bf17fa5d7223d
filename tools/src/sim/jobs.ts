/**
 * Jobs of a simulation plan: one per (scenario, strategy) run, one per (scenario,
 * strategy) moves replay. Jobs are independent and deterministic, so they can run in any
 * order on any worker process; a worker keeps the per-stream HRW orders of the last pool
 * it used (computing them costs streams × nodes real `hrwScore` calls).
 */
import type { Plan, ScenarioConfig } from './config.ts';
import { HrwOrders, makePool, runMoves, runWorld, type MovesResult, type RunResult } from './engine.ts';

export interface Job {
  id: string;
  kind: 'run' | 'moves';
  cfg: ScenarioConfig;
  strategy: string;
  /** rough cost estimate (for longest-first scheduling and the progress bar) */
  cost: number;
  /** jobs with the same key share the HRW orders */
  poolKey: string;
}

export type JobOutput = { kind: 'run'; run: RunResult } | { kind: 'moves'; moves: MovesResult };

export function poolKey(cfg: ScenarioConfig): string {
  return [cfg.nodes, cfg.weights, cfg.streams, cfg.seed, cfg.headroom, cfg.viewers].join(':');
}

/** Microseconds per placement, roughly, on this kind of machine. */
function perArrivalUs(cfg: ScenarioConfig, strategy: string): number {
  const n = cfg.nodes;
  const base = strategy === 'rr' || strategy === 'll' ? 2.5 : 1.2;
  let us = base * (1 + n / 200);
  if (strategy.endsWith('+adm')) us *= 1 + n / 100;
  if (cfg.realDecisions.includes(strategy)) us += 1.1 * n;
  return us;
}

export function planJobs(plan: Plan): Job[] {
  const jobs: Job[] = [];
  for (const cfg of plan.scenarios) {
    const arrivals = cfg.viewers + (cfg.churnTicks > 0 ? cfg.churnTicks * Math.floor(cfg.viewers / cfg.lifetimeTicks) : 0);
    for (const strategy of cfg.strategies) {
      const us = perArrivalUs(cfg, strategy);
      // + relay trees and orders
      const fixed = 400 + cfg.streams * cfg.nodes * 0.0015;
      jobs.push({ id: `${cfg.name}/${strategy}`, kind: 'run', cfg, strategy, cost: (arrivals * us) / 1000 + fixed, poolKey: poolKey(cfg) });
      if (cfg.moves && !strategy.endsWith('+adm')) {
        const real = { ...cfg, realDecisions: [] };
        jobs.push({ id: `${cfg.name}/${strategy}/moves`, kind: 'moves', cfg, strategy, cost: (3 * cfg.viewers * perArrivalUs(real, strategy)) / 1000, poolKey: poolKey(cfg) });
      }
    }
  }
  return jobs;
}

/** Per-process cache of the last pool's HRW orders. */
let cached: { key: string; orders: HrwOrders } | undefined;

export function ordersFor(cfg: ScenarioConfig): HrwOrders {
  const key = poolKey(cfg);
  if (cached?.key !== key) cached = { key, orders: new HrwOrders(makePool(cfg), cfg.streams) };
  return cached.orders;
}

export function runJob(job: Job, onProgress?: (fraction: number) => void): JobOutput {
  const orders = ordersFor(job.cfg);
  if (job.kind === 'moves') return { kind: 'moves', moves: runMoves(job.cfg, job.strategy, orders, onProgress) };
  return { kind: 'run', run: runWorld(job.cfg, job.strategy, { orders, pool: orders.pool, onProgress }).result };
}
