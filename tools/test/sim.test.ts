/**
 * The placement simulation (tools/src/sim): invariants of small runs over the real
 * placement code (BoundedLoadRing / rankPlaybackNodes / hrwScore / chooseRelayParent),
 * determinism, and that the fast replica takes exactly the real code's decisions.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BASE, HrwOrders, Rng, Zipf, buildTree, depthProfile, makePool, quickPlan, runMoves, runWorld, type RunResult, type ScenarioConfig } from '../src/sim/index.ts';

/** Modest scale: 20 nodes, 500 streams, 20k viewers over 200 ticks (100 per tick), fresh gossip. */
const modest: ScenarioConfig = {
  ...BASE,
  name: 'test',
  title: 'test',
  nodes: 20,
  streams: 500,
  viewers: 20_000,
  rampTicks: 200,
  staleK: 0,
  strategies: ['bl-1.25', 'hrw', 'rr', 'll'],
  verifyChecks: 300,
};

function shared(cfg: ScenarioConfig): { orders: HrwOrders; pool: ReturnType<typeof makePool> } {
  const pool = makePool(cfg);
  return { pool, orders: new HrwOrders(pool, cfg.streams) };
}

function strip(r: RunResult): unknown {
  const { ms: _ms, verify: _v, ...rest } = r;
  return rest;
}

describe('placement simulation', () => {
  const ctx = shared(modest);
  const runs = new Map<string, RunResult>();
  const run = (s: string): RunResult => {
    let r = runs.get(s);
    if (!r) {
      r = runWorld(modest, s, ctx).result;
      runs.set(s, r);
    }
    return r;
  };

  it('bounded-load HRW keeps max/avg within c(1+ε) at modest scale, for every c', () => {
    for (const c of [1.1, 1.25, 1.5, 2]) {
      const r = run(`bl-${c}`);
      assert.equal(r.rejected, 0);
      assert.equal(r.ramp.viewers, modest.viewers);
      assert.ok(r.ramp.maxOverAvg <= c * 1.05, `c=${c}: max/avg ${r.ramp.maxOverAvg}`);
      assert.equal(r.verify.mismatches, 0, r.verify.firstMismatch);
      assert.equal(r.verify.pendingMismatches, 0, r.verify.firstMismatch);
      assert.ok(r.verify.checks > 100);
    }
    // without the bound a hot stream fills its node up to capacity (headroom × fair share)
    assert.ok(run('hrw').ramp.maxOverAvg > 2);
  });

  it('round robin and least-loaded spread every stream over many more nodes than HRW', () => {
    const bl = run('bl-1.25').ramp;
    const hrw = run('hrw').ramp;
    for (const s of ['rr', 'll']) {
      const r = run(s).ramp;
      assert.ok(r.relaysPerStream > 4 * bl.relaysPerStream, `${s}: ${r.relaysPerStream} vs ${bl.relaysPerStream}`);
      assert.equal(r.top.relays, modest.nodes);
    }
    assert.ok(hrw.relaysPerStream <= bl.relaysPerStream);
    // bounded-load HRW stays within a small factor of the ideal ceil(v / (1.25 × avg))
    assert.ok(bl.relaysPerStream < 2.5 * bl.idealPerStream, `${bl.relaysPerStream} vs ideal ${bl.idealPerStream}`);
    assert.ok(run('rr').ramp.maxOverAvg < 1.05);
  });

  it('relay trees: origin egress ≤ F per stream, shallow trees', () => {
    for (const s of ['bl-1.25', 'rr']) {
      const t = run(s).ramp.tree;
      assert.ok(t.maxOwnerChildren <= modest.fanout);
      assert.equal(t.fallbacks, 0);
      assert.ok(t.maxDepth <= 2, `${s}: depth ${t.maxDepth}`); // ≤ 20 relays per stream, F = 8
      assert.ok(t.originEgressGbps <= t.noTreeOriginGbps);
    }
    // round robin: a 20-relay stream pulls 8 copies from its origin instead of 20
    const rr = run('rr').ramp.tree;
    assert.ok(rr.originEgressGbps < 0.8 * rr.noTreeOriginGbps);
  });

  it('removing a node: plain HRW moves exactly its viewers; the bound moves only a little more; round robin moves nearly everyone', () => {
    const roomy: ScenarioConfig = { ...modest, headroom: 20 };
    const rc = shared(roomy);
    for (const s of ['hrw', 'bl-100']) {
      const m = runMoves(roomy, s, rc.orders);
      assert.ok(m.remove.onRemoved > 0);
      assert.equal(m.remove.moved, m.remove.onRemoved, `${s}: only the removed node's viewers move`);
      assert.equal(m.add.movedBetweenOld, 0, `${s}: adding a node moves viewers only onto it`);
      // it takes the streams it now wins; with Zipf popularity that is its fair share only on average
      assert.ok(m.add.movedToNew > 0.2 * m.add.fairShare && m.add.movedToNew < 3 * m.add.fairShare, `${s}: ${m.add.movedToNew} vs fair ${m.add.fairShare}`);
    }
    const bl = runMoves(modest, 'bl-1.25', ctx.orders);
    const rr = runMoves(modest, 'rr', ctx.orders);
    assert.ok(bl.remove.moved >= bl.remove.onRemoved);
    assert.ok(bl.remove.moved < 0.5 * rr.remove.moved, `bl ${bl.remove.moved} vs rr ${rr.remove.moved}`);
    assert.ok(rr.remove.moved > 0.8 * rr.remove.total);
  });

  it('is deterministic: same seed, same numbers; another seed, other numbers', () => {
    const cfg: ScenarioConfig = { ...quickPlan(7).scenarios[0]!, moves: false };
    const a = runWorld(cfg, 'bl-1.25', shared(cfg)).result;
    const b = runWorld(cfg, 'bl-1.25', shared(cfg)).result;
    assert.deepEqual(strip(a), strip(b));
    const other = { ...cfg, seed: 8 };
    const c = runWorld(other, 'bl-1.25', shared(other)).result;
    assert.notDeepEqual(strip(a), strip(c));
    const la = runWorld(cfg, 'll', shared(cfg)).result;
    const lb = runWorld(cfg, 'll', shared(cfg)).result;
    assert.deepEqual(strip(la), strip(lb));
  });

  it('the replica takes exactly the decisions of the real BoundedLoadRing (churn, kill, join, stale view)', () => {
    const cfg: ScenarioConfig = { ...quickPlan(3).scenarios[0]!, staleK: 2, moves: false, series: false, loads: false };
    const c = shared(cfg);
    for (const s of ['bl-1.25', 'bl-1.1', 'hrw']) {
      const real = runWorld(cfg, s, { ...c, realDecisions: true }).result;
      assert.ok(real.verify.realDecisions);
      assert.equal(real.verify.checks, real.placements + real.rejected);
      assert.equal(real.verify.mismatches, 0, real.verify.firstMismatch);
      assert.equal(real.verify.pendingMismatches, 0, real.verify.firstMismatch);
      const replica = runWorld(cfg, s, { ...c, realDecisions: false }).result;
      assert.deepEqual(strip(replica), strip(real), s);
      assert.ok(real.churn && real.churn.forcedMoves > 0);
    }
  });

  it('chooseRelayParent fills the shallowest level first, so depths depend only on the start order', () => {
    const mk = (token: string, prefix: string, k: number) => {
      const relays = Array.from({ length: k }, (_, i) => `${prefix}-${i}`);
      return buildTree({ token, owner: `${prefix}-owner`, relays, viewers: [] }, 8, new Set(relays));
    };
    const a = mk('live.a', 'x', 120);
    const b = mk('live.zz', 'node', 120);
    assert.deepEqual(a.depth, b.depth);
    assert.equal(a.ownerChildren, 8);
    assert.deepEqual([...depthProfile(8, 120).subarray(0, 120)], a.depth);
    assert.equal(Math.max(...mk('live.c', 'n', 584).depth), 3);
  });

  it('Zipf sampler and PRNG', () => {
    const z = new Zipf(1000, 1);
    const rng = new Rng(42, 1);
    const counts = new Int32Array(1000);
    for (let i = 0; i < 100_000; i++) counts[z.rank(rng.next())]!++;
    // P(rank 1) = 1/H(1000) ≈ 0.1336
    assert.ok(Math.abs(counts[0]! / 100_000 - 0.1336) < 0.01);
    assert.ok(counts[0]! > 1.7 * counts[1]! && counts[0]! < 2.3 * counts[1]!);
    const r1 = new Rng(5, 2);
    const r2 = new Rng(5, 2);
    for (let i = 0; i < 10; i++) assert.equal(r1.u32(), r2.u32());
    assert.notEqual(new Rng(5, 3).u32(), new Rng(5, 2).u32());
  });
});
