import { startNatsCluster } from './src/harness/nats.ts';
import { connectNatsBus } from '@meshcast/mesh';
import pino from 'pino';
const log = pino({ level: 'debug' });
const cluster = await startNatsCluster(3);
const t00 = Date.now();
console.log('leader', await cluster.waitForJetStreamLeader());
const p = 'fo' + Math.random().toString(36).slice(2, 5);
const setup = await connectNatsBus({ servers: cluster.urls, name: 'setup', prefix: p, replicas: 3 });
const kv0 = await setup.kv(`${p}-streams`, { maxAgeMs: 10000 });
await kv0.put('x', new Uint8Array([1]));
const j = await cluster.servers[0]!.jsz('accounts=true&streams=true');
const s = (j.account_details ?? []).flatMap((a) => a.stream_detail ?? []).find((x) => x.name === `KV_${p}-streams`);
console.log('stream', JSON.stringify(s?.cluster));
const victim = cluster.servers.find((x) => x.name === s?.cluster?.leader)!;
const other = cluster.servers.find((x) => x !== victim)!;
const ob = await connectNatsBus({ servers: [victim.url], name: 'owner', prefix: p, replicas: 3, reconnectTimeWaitMs: 250, logger: log });
ob.onStatus((st) => console.log(Date.now() - t0, 'owner status', st));
const wb = await connectNatsBus({ servers: [other.url], name: 'w', prefix: p, replicas: 3 });
const okv = await ob.kv(`${p}-streams`, { maxAgeMs: 10000 });
const wkv = await wb.kv(`${p}-streams`, { maxAgeMs: 10000 });
let t0 = Date.now();
await victim.kill('SIGKILL');
t0 = Date.now();
let okW = 0, okO = 0;
while (Date.now() - t0 < 15000 && (!okW || !okO)) {
  if (!okW) { try { await wkv.put('w', new Uint8Array([1]), { timeoutMs: 1000 }); okW = Date.now() - t0; console.log('watcher put ok', okW); } catch (e) { console.log(Date.now() - t0, 'w err', (e as Error).message); } }
  if (!okO) { try { await okv.put('o', new Uint8Array([1]), { timeoutMs: 1000 }); okO = Date.now() - t0; console.log('owner put ok', okO); } catch (e) { console.log(Date.now() - t0, 'o err', (e as Error).message); } }
  await new Promise((r) => setTimeout(r, 200));
}
const j2 = await other.jsz('accounts=true&streams=true');
console.log(JSON.stringify((j2.account_details ?? []).flatMap((a) => a.stream_detail ?? []).find((x) => x.name === `KV_${p}-streams`)?.cluster));
await ob.close(); await wb.close(); await setup.close(); await cluster.stop();
