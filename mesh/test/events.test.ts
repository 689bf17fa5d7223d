import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBusNetwork, MeshEvents, type MeshEventRecord } from '../src/index.ts';
import { captureLogger, enc, waitFor } from './helpers.ts';

test('MeshEvents: typed append / read / follow, subjects per type, junk skipped and logged once', async () => {
  const net = new MemoryBusNetwork();
  const cap = captureLogger();
  const a = new MeshEvents(net.connect('a'));
  const busB = net.connect('b');
  const b = new MeshEvents(busB, cap.logger);
  const followed: MeshEventRecord[] = [];
  const f = await b.follow((r) => followed.push(r));
  const s1 = await a.append({ type: 'published', at: 1, app: 'live', stream: '直播 a.b', node: 'n1' });
  await busB.events.append('published', enc('junk'));
  await busB.events.append('published', enc('junk'));
  await a.append({ type: 'relayStarted', at: 2, app: 'live', stream: 'x', node: 'e1', parent: 'n1' });
  const s4 = await a.append({ type: 'unpublished', at: 3, app: 'live', stream: 'x', node: 'n1', reason: 'publisher left' });
  await waitFor(() => followed.length === 3);
  assert.deepStrictEqual(
    followed.map((r) => r.event.type),
    ['published', 'relayStarted', 'unpublished'],
  );
  assert.equal(followed[0]!.subject, 'meshcast.events.published');
  assert.equal(followed[0]!.seq, s1);
  assert.deepStrictEqual(followed[0]!.event, { type: 'published', at: 1, app: 'live', stream: '直播 a.b', node: 'n1' });
  const all = await b.read({ limit: 100 });
  assert.equal(all.length, 3);
  const after = await b.read({ since: s1, limit: 100 });
  assert.deepStrictEqual(after.map((r) => r.event.type), ['relayStarted', 'unpublished']);
  assert.equal(after[after.length - 1]!.seq, s4);
  assert.equal(cap.matching(/ignoring undecodable mesh event/).length, 1);
  // follow from a position replays what came after it
  const replay: string[] = [];
  const f2 = await b.follow((r) => replay.push(r.event.type), { since: s1 });
  await waitFor(() => replay.length === 2);
  assert.deepStrictEqual(replay, ['relayStarted', 'unpublished']);
  // limit counts decoded events: junk in between is skipped and made up for
  const two = await b.read({ since: 0, limit: 2 });
  assert.deepStrictEqual(two.map((r) => r.event.type), ['published', 'relayStarted']);
  const lastTwo = await b.read({ limit: 2 });
  assert.deepStrictEqual(lastTwo.map((r) => r.event.type), ['relayStarted', 'unpublished']);
  await busB.events.append('published', enc('junk'));
  await busB.events.append('published', enc('junk'));
  const lastThree = await b.read({ limit: 3 });
  assert.deepStrictEqual(lastThree.map((r) => r.event.type), ['published', 'relayStarted', 'unpublished']);
  f.stop();
  f2.stop();
  await net.close();
});
