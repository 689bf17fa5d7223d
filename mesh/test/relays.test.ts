import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encodeRelayClaim, type RelayClaim } from '@meshcast/proto';
import { chooseRelayParent, encodeStreamToken, MemoryBusNetwork, RelayClaims, StreamNameError, type LeaseLostReason } from '../src/index.ts';
import { captureLogger, enc, sleep, waitFor } from './helpers.ts';

const T = { maxAgeMs: 400, renewMs: 100 };
type Claim = Pick<RelayClaim, 'node' | 'parent' | 'children'>;

function setup(t: TestContext, ids: string[]) {
  const net = new MemoryBusNetwork();
  const nodes = ids.map((id) => {
    const bus = net.connect(id);
    return { id, bus, relays: new RelayClaims({ bus, nodeId: id, ...T }) };
  });
  t.after(async () => {
    await Promise.all(nodes.map((n) => n.relays.close()));
    await net.close();
  });
  return { net, nodes };
}

test('relay claims: claim, list per stream, renew past max age, update, release', async (t) => {
  const { nodes } = setup(t, ['e1', 'e2', 'e3']);
  const [e1, e2, e3] = [nodes[0]!, nodes[1]!, nodes[2]!];
  const l1 = await e1.relays.claim('live', 'cam', { parent: 'o1', rtmp: 'rtmp://e1' });
  const l2 = await e2.relays.claim('live', 'cam', { parent: 'e1', rtmp: 'rtmp://e2' });
  await e3.relays.claim('live', 'other', { parent: 'o1', rtmp: 'rtmp://e3' });
  assert.equal(l1.key, 'live.cam.e1');
  const list = await e3.relays.list('live', 'cam');
  assert.deepStrictEqual(list.map((c) => `${c.claim.node}<-${c.claim.parent}`).sort(), ['e1<-o1', 'e2<-e1']);
  await sleep(T.maxAgeMs * 2);
  assert.ok(l1.held && l2.held);
  assert.equal((await e3.relays.list('live', 'cam')).length, 2, 'renewed claims survive the bucket max age');
  await l1.update({ children: 1 });
  await l2.update({ parent: 'o1' });
  const after = await e3.relays.list('live', 'cam');
  assert.deepStrictEqual(after.map((c) => `${c.claim.node}<-${c.claim.parent}:${c.claim.children}`).sort(), ['e1<-o1:1', 'e2<-o1:0']);
  await l2.release();
  assert.deepStrictEqual((await e3.relays.list('live', 'cam')).map((c) => c.claim.node), ['e1']);
  await assert.rejects(e1.relays.claim('live', 'k'.repeat(1024), { parent: 'o1', rtmp: '' }), StreamNameError);
  await assert.rejects(e1.relays.claim('live', 'cam', { parent: 'bad.id', rtmp: '' }), /node id/);
});

test('relay claims: a partitioned relay fences itself; its claim expires for everyone else; a re-claim supersedes', async (t) => {
  const { net, nodes } = setup(t, ['e1', 'e2']);
  const [e1, e2] = [nodes[0]!, nodes[1]!];
  const l1 = await e1.relays.claim('live', 'cam', { parent: 'o1', rtmp: 'rtmp://e1' });
  let reason: LeaseLostReason | undefined;
  l1.onLost((r) => {
    reason = r;
  });
  net.partition(e1.bus);
  await waitFor(() => reason !== undefined, 2000);
  assert.equal(reason?.code, 'EXPIRED_LOCALLY');
  await waitFor(async () => (await e2.relays.list('live', 'cam')).length === 0, 1000, 'claim expired');
  net.heal(e1.bus);
  const again = await e1.relays.claim('live', 'cam', { parent: 'o1', rtmp: 'rtmp://e1' });
  const dup = await e1.relays.claim('live', 'cam', { parent: 'e2', rtmp: 'rtmp://e1' });
  assert.equal(again.lostReason?.code, 'SUPERSEDED');
  assert.ok(dup.held);
  assert.deepStrictEqual((await e2.relays.list('live', 'cam')).map((c) => c.claim.parent), ['e2']);
});

test('relay claims: garbage and mismatched values are ignored (logged once)', async (t) => {
  const net = new MemoryBusNetwork();
  const bus = net.connect('e1');
  const cap = captureLogger();
  const relays = new RelayClaims({ bus, nodeId: 'e1', logger: cap.logger, ...T });
  t.after(async () => {
    await relays.close();
    await net.close();
  });
  const kv = await bus.kv('meshcast-relays', { maxAgeMs: T.maxAgeMs });
  const tok = encodeStreamToken('live', 'cam');
  await kv.put(`${tok}.x1`, enc('garbage'));
  await kv.put(`${tok}.x2`, encodeRelayClaim({ node: 'someone-else', parent: 'o1', children: 0, rtmp: '', claimedAt: 0, renewedAt: 0 }));
  await kv.put(`${tok}.x3`, encodeRelayClaim({ node: 'x3', parent: 'o1', children: 0, rtmp: '', claimedAt: 0, renewedAt: 0 }));
  assert.deepStrictEqual((await relays.list('live', 'cam')).map((c) => c.claim.node), ['x3']);
  await relays.list('live', 'cam');
  assert.equal(cap.matching(/undecodable relay claim/).length, 1);
  assert.equal(cap.matching(/node differs from its key/).length, 1);
});

test('relay claims: watchStream reports claims and releases', async (t) => {
  const { nodes } = setup(t, ['e1', 'e2']);
  const seen: string[] = [];
  const stop = await nodes[1]!.relays.watchStream('live', 'cam', (c) => seen.push(`${c.kind}:${c.node}`));
  const l = await nodes[0]!.relays.claim('live', 'cam', { parent: 'o1', rtmp: '' });
  await waitFor(() => seen.length === 1);
  await l.release();
  await waitFor(() => seen.length === 2);
  assert.deepStrictEqual(seen, ['claimed:e1', 'released:e1']);
  stop();
});

// ------------------------------------------------------------------ chooseRelayParent (pure)

function childrenOf(claims: Claim[], owner: string): Map<string, number> {
  const m = new Map<string, number>([[owner, 0]]);
  for (const c of claims) m.set(c.parent, (m.get(c.parent) ?? 0) + 1);
  return m;
}
function depthOf(claims: Claim[], owner: string, node: string): number {
  const by = new Map(claims.map((c) => [c.node, c]));
  let d = 0;
  let cur = node;
  const seen = new Set<string>();
  while (cur !== owner) {
    assert.ok(!seen.has(cur), `cycle through ${cur}`);
    seen.add(cur);
    const c = by.get(cur);
    assert.ok(c, `broken chain at ${cur}`);
    cur = c.parent;
    d++;
  }
  return d;
}

test('owner takes the first F children, then relays (example)', () => {
  const claims: Claim[] = [];
  const alive = new Set<string>();
  const parents: string[] = [];
  for (let i = 0; i < 12; i++) {
    const self = `e${i}`;
    const p = chooseRelayParent({ streamToken: 'live.cam', selfId: self, owner: 'origin', claims, alive, fanout: 4 });
    assert.ok(p);
    parents.push(p);
    claims.push({ node: self, parent: p, children: 0 });
    alive.add(self);
  }
  assert.deepStrictEqual(parents.slice(0, 4), ['origin', 'origin', 'origin', 'origin']);
  assert.ok(parents.slice(4).every((p) => ['e0', 'e1', 'e2', 'e3'].includes(p)));
  // dead relays are not candidates, and their children are orphans (not candidates either)
  const deadAlive = new Set([...alive].filter((n) => n !== 'e0'));
  for (let i = 0; i < 20; i++) {
    const p = chooseRelayParent({ streamToken: 'live.cam', selfId: `new${i}`, owner: 'origin', claims, alive: deadAlive, fanout: 4 });
    assert.ok(p && p !== 'e0' && claims.find((c) => c.node === p)?.parent !== 'e0');
  }
  // owner full and every relay self-reports full → undefined (caller attaches to the owner anyway)
  const full: Claim[] = ['a', 'b'].map((n) => ({ node: n, parent: 'origin', children: 2 }));
  assert.equal(chooseRelayParent({ streamToken: 's', selfId: 'me', owner: 'origin', claims: full, alive: new Set(['a', 'b']), fanout: 2 }), undefined);
});

test('sequential joins: never more than F children, depth ≤ 3 up to 500 relays with F = 8, no cycles (property)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 500 }), fc.string({ minLength: 1, maxLength: 10 }), (n, s) => {
      const owner = 'origin';
      const claims: Claim[] = [];
      const alive = new Set<string>();
      for (let i = 0; i < n; i++) {
        const self = `edge-${i}`;
        const p = chooseRelayParent({ streamToken: `live.${s}`, selfId: self, owner, claims, alive });
        assert.ok(p, 'there is always room somewhere when every relay is alive and attached');
        claims.push({ node: self, parent: p, children: 0 });
        alive.add(self);
      }
      for (const [, k] of childrenOf(claims, owner)) assert.ok(k <= 8);
      for (const c of claims) assert.ok(depthOf(claims, owner, c.node) <= 3);
    }),
    { numRuns: 40 },
  );
});

test('churn (joins, deaths, re-parenting): chosen parent always has room, is not self nor below self; no cycles (property)', () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('join' as const) }),
    fc.record({ kind: fc.constant('die' as const), pick: fc.nat() }),
    fc.record({ kind: fc.constant('reparent' as const), pick: fc.nat() }),
  );
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 6 }), fc.array(op, { minLength: 1, maxLength: 150 }), (F, ops) => {
      const owner = 'origin';
      let claims: Claim[] = [];
      const alive = new Set<string>();
      let next = 0;
      const choose = (self: string) => {
        const p = chooseRelayParent({ streamToken: 'live.x', selfId: self, owner, claims, alive, fanout: F });
        if (p === undefined) return owner;
        assert.notEqual(p, self);
        if (p !== owner) {
          // has room (not counting self), is a live relay with an unbroken chain, not below self
          const kids = claims.filter((c) => c.parent === p && c.node !== self && alive.has(c.node)).length;
          assert.ok(kids < F, `parent ${p} has ${kids} children already`);
          assert.ok(alive.has(p));
          let cur: string | undefined = p;
          const seen = new Set<string>();
          while (cur !== owner) {
            assert.notEqual(cur, self, 'chose a descendant of self');
            assert.ok(cur !== undefined && !seen.has(cur));
            seen.add(cur);
            cur = claims.find((c) => c.node === cur)?.parent;
          }
        } else {
          const kids = claims.filter((c) => c.parent === owner && c.node !== self && alive.has(c.node)).length;
          assert.ok(kids < F);
        }
        return p;
      };
      for (const o of ops) {
        if (o.kind === 'join') {
          const self = `e${next++}`;
          const p = choose(self);
          claims.push({ node: self, parent: p, children: 0 });
          alive.add(self);
        } else if (o.kind === 'die' && claims.length > 0) {
          const victim = claims[o.pick % claims.length]!.node;
          alive.delete(victim);
          claims = claims.filter((c) => c.node !== victim);
          // orphans re-parent
          for (const c of claims.filter((x) => x.parent === victim)) c.parent = choose(c.node);
        } else if (o.kind === 'reparent' && claims.length > 0) {
          const c = claims[o.pick % claims.length]!;
          c.parent = choose(c.node);
        }
        for (const c of claims) depthOf(claims, owner, c.node); // throws on a cycle or a broken chain
      }
    }),
    { numRuns: 200 },
  );
});
