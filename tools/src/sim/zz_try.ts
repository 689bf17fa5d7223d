import { quickPlan, fullPlan } from './config.ts';
import { runWorld, runMoves, HrwOrders, makePool } from './engine.ts';
const which = process.argv[2] ?? 'quick';
const plan = which === 'quick' ? quickPlan() : fullPlan();
const sc = plan.scenarios.find((s) => s.name === (process.argv[3] ?? 'headline'))!;
const strategies = process.argv[4] ? process.argv[4].split(',') : sc.strategies;
const pool = makePool(sc);
const orders = new HrwOrders(pool, sc.streams);
for (const st of strategies) {
  const t = performance.now();
  const r = runWorld(sc, st, { orders, pool, realDecisions: process.argv[5] === 'real' });
  const { series, ...rest } = r.result;
  const { loads, ...ramp } = rest.ramp;
  console.log(st, Math.round(performance.now() - t), 'ms', JSON.stringify({ ...rest, ramp, end: rest.end ? { ...rest.end, loads: undefined } : undefined }));
}
if (process.argv[6] === 'moves') for (const st of strategies) console.log(JSON.stringify(runMoves(sc, st, orders)));
