import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BusNoRespondersError,
  BusTimeoutError,
  BusUnavailableError,
  KvKeyExistsError,
  KvRevisionMismatchError,
  MemoryBusNetwork,
  subjectMatches,
  type BusStatus,
  type KvEntry,
} from '../src/index.ts';
import { captureLogger, dec, enc, sleep, waitFor } from './helpers.ts';

test('subject matching follows NATS wildcard rules', () => {
  assert.ok(subjectMatches('a.b.c', 'a.b.c'));
  assert.ok(subjectMatches('a.*.c', 'a.b.c'));
  assert.ok(!subjectMatches('a.*', 'a.b.c'));
  assert.ok(subjectMatches('a.>', 'a.b.c'));
  assert.ok(subjectMatches('a.>', 'a.b'));
  assert.ok(!subjectMatches('a.>', 'a'));
  assert.ok(subjectMatches('>', 'a'));
  assert.ok(!subjectMatches('a.b', 'a.b.c'));
  assert.ok(!subjectMatches('a.b.c', 'a.b'));
  assert.ok(subjectMatches('*.*.hb', 'x.y.hb'));
});

test('publish/subscribe: wildcards, order, unsubscribe, throwing handlers isolated', async () => {
  const cap = captureLogger();
  const net = new MemoryBusNetwork({ logger: cap.logger });
  const a = net.connect('a');
  const b = net.connect('b');
  const star: string[] = [];
  const gt: string[] = [];
  const exact: string[] = [];
  b.subscribe('meshcast.node.*.hb', (m) => star.push(`${m.subject}:${dec(m.data)}`));
  b.subscribe('meshcast.>', (m) => gt.push(m.subject));
  const s = b.subscribe('meshcast.node.n1.hb', (m) => exact.push(dec(m.data)));
  b.subscribe('meshcast.node.n1.hb', () => {
    throw new Error('boom');
  });
  for (let i = 0; i < 5; i++) a.publish('meshcast.node.n1.hb', enc(String(i)));
  a.publish('meshcast.node.n1.rpc.admit', enc('x'));
  a.publish('other.subject', enc('x'));
  await waitFor(() => gt.length === 6);
  assert.deepStrictEqual(exact, ['0', '1', '2', '3', '4']);
  assert.deepStrictEqual(star, ['0', '1', '2', '3', '4'].map((i) => `meshcast.node.n1.hb:${i}`));
  assert.ok(!gt.includes('other.subject'));
  assert.ok(cap.matching(/bus handler threw/).length >= 1, 'throwing handler is logged');
  s.unsubscribe();
  a.publish('meshcast.node.n1.hb', enc('5'));
  await waitFor(() => gt.length === 7);
  assert.equal(exact.length, 5);
  assert.throws(() => a.publish('bad subject', enc('x')));
  assert.throws(() => a.publish('a.*.b', enc('x')));
  await net.close();
});

test('request/reply: answer, timeout, no responders', async () => {
  const net = new MemoryBusNetwork();
  const a = net.connect('a');
  const b = net.connect('b');
  b.subscribe('meshcast.node.b.rpc.echo', (m) => m.respond(enc(`echo:${dec(m.data)}`)));
  b.subscribe('meshcast.node.b.rpc.silent', () => undefined);
  assert.equal(dec(await a.request('meshcast.node.b.rpc.echo', enc('hi'), { timeoutMs: 500 })), 'echo:hi');
  await assert.rejects(a.request('meshcast.node.b.rpc.silent', enc('x'), { timeoutMs: 50 }), BusTimeoutError);
  await assert.rejects(a.request('meshcast.node.zz.rpc.echo', enc('x'), { timeoutMs: 500 }), BusNoRespondersError);
  await net.close();
});

test('KV: create-if-absent, CAS update, delete by revision, keys/entries, revisions increase', async () => {
  const net = new MemoryBusNetwork();
  const a = await net.connect('a').kv('t', { maxAgeMs: 0 });
  const b = await net.connect('b').kv('t', { maxAgeMs: 0 });
  const r1 = await a.create('live.s1', enc('v1'));
  await assert.rejects(b.create('live.s1', enc('other')), KvKeyExistsError);
  const got = await b.get('live.s1');
  assert.equal(got?.revision, r1);
  assert.equal(dec(got?.value ?? new Uint8Array()), 'v1');
  const r2 = await b.update('live.s1', enc('v2'), r1);
  assert.ok(r2 > r1);
  await assert.rejects(a.update('live.s1', enc('v3'), r1), KvRevisionMismatchError);
  await assert.rejects(a.delete('live.s1', { revision: r1 }), KvRevisionMismatchError);
  const r3 = await a.create('live.s2', enc('x'));
  assert.ok(r3 > r2, 'revisions are bucket-wide');
  await a.put('other.s3', enc('y'));
  assert.deepStrictEqual((await a.keys()).sort(), ['live.s1', 'live.s2', 'other.s3']);
  assert.deepStrictEqual((await a.keys('live.*')).sort(), ['live.s1', 'live.s2']);
  assert.deepStrictEqual((await a.entries('other.>')).map((e) => e.key), ['other.s3']);
  await a.delete('live.s1', { revision: r2 });
  assert.equal(await b.get('live.s1'), null);
  assert.deepStrictEqual((await a.keys('live.*')).sort(), ['live.s2']);
  // create after delete succeeds
  const r4 = await b.create('live.s1', enc('again'));
  assert.ok(r4 > r3);
  await a.purge('live.s2');
  assert.equal(await a.get('live.s2'), null);
  await assert.rejects(a.get('bad key'));
  await net.close();
});

test('KV max age: values vanish without a watch notification; create works again, old CAS fails', async () => {
  let now = 1_000_000;
  const net = new MemoryBusNetwork({ now: () => now });
  const kv = await net.connect('a').kv('leases', { maxAgeMs: 1000 });
  assert.equal(kv.maxAgeMs, 1000);
  const seen: KvEntry[] = [];
  const w = await kv.watch((e) => seen.push(e));
  const r1 = await kv.create('k', enc('1'));
  await waitFor(() => seen.length === 1);
  now += 999;
  assert.ok(await kv.get('k'), 'still there just before max age');
  now += 1;
  assert.equal(await kv.get('k'), null, 'gone at max age');
  assert.deepStrictEqual(await kv.keys(), []);
  await sleep(20);
  assert.equal(seen.length, 1, 'expiry produced no watch event (like NATS 2.9)');
  await assert.rejects(kv.update('k', enc('2'), r1), KvRevisionMismatchError);
  const r2 = await kv.create('k', enc('3'));
  assert.ok(r2 > r1);
  w.stop();
  await net.close();
});

test('KV watch: initial values, updates, deletes, filter, stop', async () => {
  const net = new MemoryBusNetwork();
  const kv = await net.connect('a').kv('w', { maxAgeMs: 0 });
  await kv.put('a.x', enc('1'));
  await kv.put('b.y', enc('2'));
  const all: string[] = [];
  const onlyA: string[] = [];
  const updatesOnly: string[] = [];
  const w1 = await kv.watch((e) => all.push(`${e.operation}:${e.key}:${dec(e.value)}`));
  const w2 = await kv.watch((e) => onlyA.push(`${e.operation}:${e.key}`), { key: 'a.*' });
  const w3 = await kv.watch((e) => updatesOnly.push(e.key), { initial: false });
  await kv.put('a.x', enc('3'));
  await kv.delete('b.y');
  await waitFor(() => all.length === 4);
  assert.deepStrictEqual(all, ['PUT:a.x:1', 'PUT:b.y:2', 'PUT:a.x:3', 'DEL:b.y:']);
  assert.deepStrictEqual(onlyA, ['PUT:a.x', 'PUT:a.x']);
  assert.deepStrictEqual(updatesOnly, ['a.x', 'b.y']);
  w1.stop();
  w2.stop();
  w3.stop();
  await kv.put('a.x', enc('4'));
  await sleep(20);
  assert.equal(all.length, 4);
  await net.close();
});

test('partition: status events, traffic cut both ways, KV rejects, watches catch up on heal', async () => {
  const net = new MemoryBusNetwork();
  const a = net.connect('a');
  const b = net.connect('b');
  const statuses: BusStatus[] = [];
  b.onStatus((s) => statuses.push(s));
  const gotB: string[] = [];
  const gotA: string[] = [];
  b.subscribe('meshcast.t', (m) => gotB.push(dec(m.data)));
  a.subscribe('meshcast.t', (m) => gotA.push(dec(m.data)));
  const kvA = await a.kv('p', { maxAgeMs: 0 });
  const kvB = await b.kv('p', { maxAgeMs: 0 });
  const watched: string[] = [];
  await kvB.watch((e) => watched.push(`${e.key}=${dec(e.value)}`));
  net.partition(b);
  assert.equal(b.status, 'reconnecting');
  assert.deepStrictEqual(statuses, ['disconnected', 'reconnecting']);
  a.publish('meshcast.t', enc('from-a'));
  b.publish('meshcast.t', enc('from-b'));
  await kvA.put('k1', enc('1'));
  await kvA.put('k1', enc('2'));
  await kvA.put('k2', enc('x'));
  await assert.rejects(kvB.get('k1'), BusUnavailableError);
  await assert.rejects(kvB.put('k1', enc('no')), BusUnavailableError);
  await assert.rejects(b.request('meshcast.t', enc('x')), BusUnavailableError);
  await assert.rejects(b.events.append('x', enc('x')), BusUnavailableError);
  await sleep(20);
  assert.deepStrictEqual(gotB, []);
  assert.deepStrictEqual(gotA, ['from-a']);
  assert.deepStrictEqual(watched, []);
  net.heal(b);
  assert.equal(b.status, 'connected');
  assert.deepStrictEqual(statuses, ['disconnected', 'reconnecting', 'connected']);
  await waitFor(() => watched.length === 2);
  assert.deepStrictEqual(watched, ['k1=2', 'k2=x'], 'latest value of each changed key, in revision order');
  b.publish('meshcast.t', enc('after'));
  await waitFor(() => gotA.length === 2 && gotB.length === 1);
  await b.close();
  assert.equal(b.status, 'closed');
  assert.throws(() => b.publish('meshcast.t', enc('x')), BusUnavailableError);
  await net.close();
});

test('event log: append, read (latest / since / limit), follow, bounded ring, catch-up after heal', async () => {
  const net = new MemoryBusNetwork({ eventsCapacity: 50 });
  const a = net.connect('a');
  const b = net.connect('b');
  const followed: number[] = [];
  await b.events.follow((e) => followed.push(e.seq));
  const seqs: number[] = [];
  for (let i = 0; i < 10; i++) seqs.push(await a.events.append(`test.e${i}`, enc(String(i))));
  assert.deepStrictEqual(seqs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  const latest = await b.events.read({ limit: 3 });
  assert.deepStrictEqual(latest.map((e) => dec(e.data)), ['7', '8', '9']);
  assert.equal(latest[0]?.subject, 'meshcast.events.test.e7');
  const since = await b.events.read({ since: 4, limit: 2 });
  assert.deepStrictEqual(since.map((e) => e.seq), [5, 6]);
  await waitFor(() => followed.length === 10);
  net.partition(b);
  for (let i = 0; i < 5; i++) await a.events.append('x', enc('p'));
  await sleep(10);
  assert.equal(followed.length, 10);
  net.heal(b);
  await waitFor(() => followed.length === 15);
  assert.deepStrictEqual(followed, Array.from({ length: 15 }, (_, i) => i + 1));
  for (let i = 0; i < 100; i++) await a.events.append('x', enc('fill'));
  const all = await a.events.read({ limit: 1000 });
  assert.equal(all.length, 50, 'ring is bounded');
  assert.equal(all[all.length - 1]?.seq, 115);
  await assert.rejects(a.events.append('bad subject', enc('x')));
  await net.close();
});
