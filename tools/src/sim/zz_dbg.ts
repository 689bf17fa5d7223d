import { fullPlan } from './config.ts';
import { runWorld, HrwOrders, makePool } from './engine.ts';
const sc = { ...fullPlan().scenarios.find((s) => s.name === 'headline')!, verifyChecks: 1e9, series: false };
const pool = makePool(sc);
const orders = new HrwOrders(pool, sc.streams);
const r = runWorld(sc, process.argv[2] ?? 'bl-1.1', { orders, pool, realDecisions: false });
console.log(JSON.stringify(r.result.verify), r.result.ramp.relaysTotal);
