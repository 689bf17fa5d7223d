import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FailoverHistory, MAX_FAILOVERS_SHOWN, decodePublishingStatus, describeSeat, mergePublishing, type PublishingStatus } from '../src/mesh/publishing-status.ts';

const status = (over: Partial<PublishingStatus>): PublishingStatus => ({ state: 'owning', epoch: 3, primary: null, standby: null, failovers: [], ...over });

test('decode: a status from a peer is checked field by field; junk is an error, never a throw', () => {
  const good = status({ primary: { node: 'A', since: 10, live: true, session: 'r1' }, standby: { node: 'B', since: 20 }, failovers: [{ at: 5, from: 'B', to: 'A', epoch: 3, reason: 'primary gone' }] });
  assert.deepEqual(decodePublishingStatus(JSON.parse(JSON.stringify(good))), good);
  const bad: unknown[] = [
    null,
    'x',
    [],
    { epoch: 1 },
    status({ epoch: -1 }),
    status({ epoch: 1.5 }),
    { ...status({}), primary: { node: '', since: 1 } },
    { ...status({}), standby: { node: 'B' } },
    { ...status({}), failovers: [{ at: 1, to: 'A' }] },
    { ...status({}), failovers: 'many' },
    { ...status({}), failovers: Array.from({ length: 1000 }, () => ({ at: 1, to: 'A', reason: 'r' })) },
    { ...status({}), primary: { node: 'x'.repeat(500), since: 1 } },
  ];
  for (const b of bad) assert.ok(decodePublishingStatus(b) instanceof Error, JSON.stringify(b)?.slice(0, 80));
});

test('merge: each seat as its own node reports it wins over a copy heard from beats; failovers once each, in time order', () => {
  const onA = status({ primary: { node: 'A', since: 100, live: true, session: 'rA' }, standby: { node: 'B', since: 150 }, failovers: [{ at: 2000, from: 'B', to: 'A', epoch: 4, reason: 'primary silent' }] });
  const onB = status({ state: 'standby', primary: { node: 'A', since: 90, live: true }, standby: { node: 'B', since: 160, session: 'rB' }, failovers: [{ at: 1000, from: 'A', to: 'B', epoch: 3, reason: 'primary gone' }, { at: 2100, from: 'B', to: 'A', epoch: 4, reason: 'primary silent' }] });
  const v = mergePublishing([onB, onA]);
  assert.deepEqual(v.primary, { node: 'A', since: 100, live: true, session: 'rA' });
  assert.deepEqual(v.standby, { node: 'B', since: 160, session: 'rB' });
  assert.deepEqual(
    v.failovers.map((f) => [f.to, f.epoch, f.reason]),
    [
      ['B', 3, 'primary gone'],
      ['A', 4, 'primary silent'],
    ],
  );
  assert.deepEqual(mergePublishing([]), { primary: null, standby: null, failovers: [] });
});

test('failover history: outlives the actor, keeps the last ones per stream, forgets the least recent streams and old entries', () => {
  const h = new FailoverHistory(2, 1000);
  for (let i = 0; i < MAX_FAILOVERS_SHOWN + 5; i++) h.record('live/a', { at: i, from: 'A', to: 'B', epoch: i, reason: `r${i}` });
  const a = h.of('live/a', 100);
  assert.equal(a.length, MAX_FAILOVERS_SHOWN);
  assert.equal(a[0]!.reason, 'r5', 'the oldest went first');
  h.record('live/b', { at: 50, from: null, to: 'A', epoch: null, reason: 'takeover' });
  h.record('live/a', { at: 60, from: 'B', to: 'A', epoch: 99, reason: 'again' });
  h.record('live/c', { at: 70, from: null, to: 'A', epoch: null, reason: 'takeover' });
  assert.deepEqual(h.of('live/b', 100), [], 'b was the least recently failed over of three with room for two');
  assert.equal(h.of('live/c', 100).length, 1);
  assert.equal(h.of('live/a', 100).length, MAX_FAILOVERS_SHOWN);
  assert.deepEqual(h.of('live/c', 70 + 1001), [], 'older than maxAgeMs');
});

test('describeSeat: node, silent or not, how long', () => {
  assert.equal(describeSeat(null, 0), '-');
  assert.equal(describeSeat({ node: 'A', since: 0, live: true }, 12_000), 'A (12s)');
  assert.equal(describeSeat({ node: 'B', since: 0, live: false }, 600_000), 'B (silent, 10m)');
  assert.equal(describeSeat({ node: 'C', since: 0 }, 3 * 3600_000), 'C (3h)');
});
