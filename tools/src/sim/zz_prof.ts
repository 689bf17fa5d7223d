import { fullPlan } from './config.ts';
import { treeStats } from './tree.ts';
// 1000 streams with 100 relays each, like round robin at the headline
const alive = new Set(Array.from({ length: 100 }, (_, i) => `node-${String(i).padStart(4, '0')}`));
const streams = Array.from({ length: 200 }, (_, s) => ({ token: `live.ch${s}`, owner: 'ingest-00', relays: [...alive], viewers: [...alive].map(() => 1) }));
let t = performance.now();
treeStats(streams, 8, alive, 3);
console.log('200 trees of 100:', performance.now() - t);
void fullPlan;
