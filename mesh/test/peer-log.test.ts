import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PeerLogLimiter } from '../src/peer-log.ts';

test('a peer gets `burst` lines per window; the next written line reports how many were dropped', () => {
  let now = 0;
  const l = new PeerLogLimiter({ intervalMs: 1000, burst: 3, now: () => now });
  const written = Array.from({ length: 200_000 }, () => l.admit('10.0.0.1')).filter((d) => d !== undefined);
  assert.equal(written.length, 3);
  assert.ok(written.every((d) => d.dropped === 0));
  assert.equal(l.pending('10.0.0.1'), 199_997);
  // Another peer is not affected.
  assert.deepEqual(l.admit('10.0.0.2'), { dropped: 0 });
  now = 1000;
  assert.deepEqual(l.admit('10.0.0.1'), { dropped: 199_997 });
  assert.equal(l.pending('10.0.0.1'), 0);
});

test('the peer table is bounded: the least recently seen peer is forgotten', () => {
  const l = new PeerLogLimiter({ intervalMs: 1000, burst: 1, maxPeers: 2, now: () => 0 });
  l.admit('a');
  l.admit('b');
  assert.equal(l.admit('a'), undefined); // a is now the most recent
  l.admit('c'); // forgets b
  assert.deepEqual(l.admit('b'), { dropped: 0 });
  assert.equal(l.admit('c'), undefined);
});
