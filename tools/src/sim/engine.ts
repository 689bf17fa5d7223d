/**
 * The placement simulation engine: one "world" per (scenario, strategy), driven tick by
 * tick (one tick = one heartbeat). No sockets, no clock; typed arrays throughout.
 *
 * Model
 * - Every playback node is also a router: a viewer asks a uniformly random live node
 *   "which node?" (DNS / L4 in front of the pool). Each router has its OWN placement
 *   table, exactly like the real `BoundedLoadRing` of each node: the gossiped load of
 *   every node plus the placements this router made since that node's last heartbeat.
 * - Gossip: the table used during tick t holds each node's viewer count at the end of
 *   tick t-1-K (K = `staleK`). Pending placements follow the real ring: each router
 *   keeps the times of its placements per node; a newer heartbeat absorbs as many of
 *   the oldest as the node's viewer count rose; the rest expire after `pendingTtlMs`
 *   (checked when the router ranks). Simulated time is tick × 1000 ms. All strategies
 *   see the same view (the baselines use the same loads: view + own pending).
 * - The chosen node admits or refuses: it refuses when its TRUE load is at capacity, or
 *   when it is dead (killed but not yet suspected); the router then tries the next
 *   candidate of the same strategy.
 * - A killed node keeps being advertised (with its last heartbeat) until it is suspect,
 *   3 ticks after its last heartbeat was seen; it leaves the table 2 ticks later. Its
 *   viewers reconnect at once, each through a random live router.
 * - bounded-load HRW: decisions come from a fast exact replica of `rankPlaybackNodes`
 *   (cached per-stream HRW order computed with the real `hrwScore`, incremental L and
 *   Σw per router). Real `BoundedLoadRing`s shadow some routers and every so many of
 *   their decisions are re-taken with the real `rank()` and compared; for the strategies
 *   listed in `realDecisions`, EVERY router has a real ring and every decision is the
 *   real ring's (the replica is then only checked against it).
 */
import { BoundedLoadRing, hrwScore, type RingNodeInput } from '@meshcast/mesh';
import { parseStrategy, strategyName, type ScenarioConfig, type StrategySpec } from './config.ts';
import { Rng, Zipf } from './rng.ts';
import { treeStats, type TreeStats } from './tree.ts';

const NEVER = Number.POSITIVE_INFINITY;
const BEFORE_START = -1e9;

/** RNG lanes: independent sequences so arrivals are identical whatever the strategy. */
const LANE_ARRIVALS = 1;
const LANE_DEPART = 2;
const LANE_RECONNECT = 3;
const LANE_RR = 4;
const LANE_SIZES = 6;
const LANE_VICTIM = 7;

export function streamToken(s: number): string {
  return `live.ch${String(s).padStart(5, '0')}`;
}

export function nodeId(i: number): string {
  return `node-${String(i).padStart(4, '0')}`;
}

/** Node sizes (1, 2, 4) and capacities of a scenario; slot `nodes` is the spare (joining) node. */
export interface Pool {
  ids: string[];
  size: Int32Array;
  capacity: Int32Array;
  /** the node killed in churn / removed in the moves replay */
  victim: number;
  /** slot of the node that joins in churn / is added in the moves replay */
  spare: number;
}

export function makePool(cfg: ScenarioConfig): Pool {
  const M = cfg.nodes + 1;
  const size = new Int32Array(M);
  const rng = new Rng(cfg.seed, LANE_SIZES);
  for (let i = 0; i < cfg.nodes; i++) {
    if (cfg.weights === 'uniform') size[i] = 1;
    else {
      const u = rng.next();
      size[i] = u < 0.5 ? 1 : u < 0.8 ? 2 : 4;
    }
  }
  size[cfg.nodes] = cfg.weights === 'uniform' ? 1 : 2;
  let units = 0;
  for (let i = 0; i < cfg.nodes; i++) units += size[i] as number;
  const unit = (cfg.headroom * cfg.viewers) / units;
  const capacity = new Int32Array(M);
  for (let i = 0; i < M; i++) capacity[i] = Math.max(1, Math.ceil(unit * (size[i] as number)));
  const ids = Array.from({ length: M }, (_, i) => nodeId(i));
  const victim = new Rng(cfg.seed, LANE_VICTIM).int(cfg.nodes);
  return { ids, size, capacity, victim, spare: cfg.nodes };
}

/**
 * Per-stream HRW order of all node slots (best `hrwScore` first, ties by id — the order
 * `rankPlaybackNodes` uses), computed lazily with the real `hrwScore`. Shared by all runs
 * over the same pool.
 */
export class HrwOrders {
  readonly order: Uint16Array;
  readonly ready: Uint8Array;
  computed = 0;
  readonly #scores: Float64Array;
  readonly #idx: number[];

  constructor(
    readonly pool: Pool,
    readonly streams: number,
  ) {
    const M = pool.ids.length;
    if (M > 65535) throw new Error('too many nodes for Uint16 orders');
    this.order = new Uint16Array(streams * M);
    this.ready = new Uint8Array(streams);
    this.#scores = new Float64Array(M);
    this.#idx = Array.from({ length: M }, (_, i) => i);
  }

  ensure(s: number): void {
    if (this.ready[s]) return;
    const { ids, capacity } = this.pool;
    const M = ids.length;
    const tok = streamToken(s);
    const sc = this.#scores;
    for (let i = 0; i < M; i++) sc[i] = hrwScore(tok, ids[i] as string, capacity[i] as number);
    const idx = this.#idx;
    for (let i = 0; i < M; i++) idx[i] = i;
    idx.sort((a, b) => {
      const d = (sc[b] as number) - (sc[a] as number);
      if (d !== 0) return d;
      const ia = ids[a] as string;
      const ib = ids[b] as string;
      return ia < ib ? -1 : ia > ib ? 1 : 0;
    });
    const base = s * M;
    for (let j = 0; j < M; j++) this.order[base + j] = idx[j] as number;
    this.ready[s] = 1;
    this.computed++;
  }
}

export interface Snapshot {
  tick: number;
  viewers: number;
  nodes: number;
  /** max over live nodes of (load/capacity) / (total load / total capacity) */
  maxOverAvg: number;
  minOverAvg: number;
  /** same, 99th percentile node */
  p99OverAvg: number;
  /** streams with at least one viewer */
  streamsWatched: number;
  /** Σ over streams of distinct serving nodes (= relays = inter-node copies of streams) */
  relaysTotal: number;
  /** Σ over streams of ceil(viewers / (1.25 × average load per node)) */
  idealTotal: number;
  relaysPerStream: number;
  idealPerStream: number;
  /** viewer-weighted mean of the number of nodes serving the viewer's stream */
  relaysViewerWeighted: number;
  top: { viewers: number; relays: number; ideal: number };
  /** cross-node traffic: relaysTotal × bitrate */
  crossNodeGbps: number;
  tree: TreeStats;
  /** normalised loads of the live nodes (load/capacity ÷ average), sorted descending (only with `loads`) */
  loads?: number[];
}

export interface ChurnStats {
  victim: string;
  /** viewers on the killed node: they must move, under every strategy */
  forcedMoves: number;
  /** reconnects that no node admitted (also counted in RunResult.rejected) */
  reconnectRejected: number;
  /** max/avg over the ticks after the kill */
  peakMaxOverAvgAfterFail: number;
  relaysBeforeFail: number;
  relaysAfterFail: number;
  joined: string;
  /** the joined node at the end of churn: its load, its fair share (L·w/W) and its bound */
  joinedLoad: number;
  joinedFairShare: number;
  /** max load the joined node reached, relative to its fair share at that moment */
  joinedPeakOverFair: number;
}

export interface VerifyStats {
  /** decisions re-taken with the real BoundedLoadRing and compared */
  checks: number;
  /** decisions that differed */
  mismatches: number;
  /** pending-placement counts that differed (compared for every node at each check) */
  pendingMismatches: number;
  /** true when every decision of this run came from the real rings */
  realDecisions: boolean;
  firstMismatch?: string;
}

export interface RunResult {
  scenario: string;
  strategy: string;
  ramp: Snapshot;
  end?: Snapshot;
  churn?: ChurnStats;
  /** max/avg at the end of every tick */
  series?: number[];
  verify: VerifyStats;
  /** placements (arrivals and reconnects) that no asked node admitted */
  rejected: number;
  /** what-if +adm: placements admitted over the bound after every asked node refused */
  forcedOverBound: number;
  /** what-if +adm: refusals "over my bound" (extra admission round trips) */
  boundRefusals: number;
  placements: number;
  ms: number;
}

export interface RunOptions {
  /** ramp only (no churn), for the moves replay */
  rampOnly?: boolean;
  /** pool variant: slot never present ('remove'), spare present from the start ('add') */
  variant?: 'base' | 'remove' | 'add';
  /** routers: the initial nodes without the victim instead of every live node */
  fixedRouters?: boolean;
  /** one router only (a node that is never removed): with staleK 0 its table is exact */
  singleRouter?: boolean;
  /** force real decisions on/off (default from the config) */
  realDecisions?: boolean;
  /** skip snapshots (moves replay) */
  noSnapshots?: boolean;
  onProgress?: (fraction: number) => void;
  orders?: HrwOrders;
  pool?: Pool;
}

export interface RawRun {
  result: RunResult;
  /** final node of every viewer (-1 none), in arrival order */
  viewerNode: Int32Array;
  viewerCount: number;
}

/** Run one strategy through one scenario. */
export function runWorld(cfg: ScenarioConfig, strategyStr: string, opts: RunOptions = {}): RawRun {
  return new World(cfg, parseStrategy(strategyStr), opts).run();
}

class World {
  readonly t0 = performance.now();
  readonly M: number;
  readonly pool: Pool;
  readonly orders: HrwOrders;
  readonly zipf: Zipf;
  readonly w: Float64Array;
  readonly cap: Int32Array;
  readonly joinTick: Float64Array;
  readonly failTick: Float64Array;
  // per-tick table view
  readonly inTable: Uint8Array;
  readonly stAlive: Uint8Array;
  readonly view: Int32Array;
  readonly hbId: Float64Array;
  readonly frozen: Int32Array;
  readonly hist: Int32Array[];
  // truth
  readonly load: Int32Array;
  readonly present: Uint8Array;
  // routers
  /** visible pending placements of router r on node i: pend[r*M+i] (= length of the stamp list) */
  readonly pend: Int32Array;
  /** per router: node → times (ms) of placements not yet absorbed or expired, oldest first */
  readonly placed: Map<number, number[]>[];
  readonly pruneTick: Float64Array;
  readonly prevView: Int32Array;
  readonly prevInTable: Uint8Array;
  readonly hbChanged: Uint8Array;
  readonly ttlMs: number;
  nowMs = 0;
  Lbase = 0;
  Wbase = 0;
  readonly Lr: Float64Array;
  readonly Wr: Float64Array;
  routers: number[] = [];
  readonly rrPtr: Int32Array;
  rrSched: Int32Array = new Int32Array(0);
  rrKey = '';
  llSorted: number[] = [];
  readonly rings = new Map<number, BoundedLoadRing>();
  ringInputs: RingNodeInput[] = [];
  readonly verify: VerifyStats;
  verifyEvery = 1;
  shadowCount = 0;
  readonly real: boolean;
  // streams
  readonly sn: Int32Array;
  readonly snFirst: Int32Array;
  readonly relays: Int32Array;
  readonly sv: Int32Array;
  seq = 0;
  // viewers
  vStream: Int32Array;
  vNode: Int32Array;
  vCount = 0;
  alive: Int32Array;
  aliveN = 0;
  rejected = 0;
  placements = 0;
  forcedOverBound = 0;
  boundRefusals = 0;
  readonly c: number;
  readonly askAtMost: number;
  /** what-if: the node refuses above its own bound (strategy `bl-<c>+adm`) */
  boundAtAdmission = false;
  readonly refused: number[] = [];
  t = 0;

  constructor(
    readonly cfg: ScenarioConfig,
    readonly strat: StrategySpec,
    readonly opts: RunOptions,
  ) {
    this.pool = opts.pool ?? makePool(cfg);
    this.orders = opts.orders ?? new HrwOrders(this.pool, cfg.streams);
    const M = (this.M = this.pool.ids.length);
    this.zipf = new Zipf(cfg.streams, cfg.zipfS);
    this.cap = this.pool.capacity;
    this.w = Float64Array.from(this.cap);
    this.c = strat.kind === 'bl' ? strat.c : Number.POSITIVE_INFINITY;
    this.askAtMost = cfg.askAtMost > 0 ? cfg.askAtMost : Number.POSITIVE_INFINITY;
    this.boundAtAdmission = strat.kind === 'bl' && strat.admitBound === true;
    // what-if: a refusal "over my bound" does not use up the router's 4 asks
    if (this.boundAtAdmission) this.askAtMost = Number.POSITIVE_INFINITY;
    this.joinTick = new Float64Array(M).fill(BEFORE_START);
    this.failTick = new Float64Array(M).fill(NEVER);
    const variant = opts.variant ?? 'base';
    const { victim, spare } = this.pool;
    const churnStart = cfg.rampTicks;
    if (variant === 'remove') this.joinTick[victim] = NEVER;
    if (variant === 'add') this.joinTick[spare] = BEFORE_START;
    else if (!opts.rampOnly && cfg.churnTicks > 0 && cfg.joinAt >= 0) this.joinTick[spare] = churnStart + cfg.joinAt;
    else this.joinTick[spare] = NEVER;
    if (!opts.rampOnly && cfg.churnTicks > 0 && cfg.failAt >= 0 && variant === 'base') this.failTick[victim] = churnStart + cfg.failAt;

    this.inTable = new Uint8Array(M);
    this.stAlive = new Uint8Array(M);
    this.view = new Int32Array(M);
    this.hbId = new Float64Array(M).fill(Number.NaN);
    this.frozen = new Int32Array(M);
    this.hist = Array.from({ length: cfg.staleK + 2 }, () => new Int32Array(M));
    this.load = new Int32Array(M);
    this.present = new Uint8Array(M);
    this.pend = new Int32Array(M * M);
    this.placed = Array.from({ length: M }, () => new Map<number, number[]>());
    this.pruneTick = new Float64Array(M).fill(Number.NaN);
    this.prevView = new Int32Array(M);
    this.prevInTable = new Uint8Array(M);
    this.hbChanged = new Uint8Array(M);
    this.ttlMs = new BoundedLoadRing().pendingTtlMs;
    this.Lr = new Float64Array(M);
    this.Wr = new Float64Array(M);
    this.rrPtr = new Int32Array(M);
    const rr = new Rng(cfg.seed, LANE_RR);
    for (let r = 0; r < M; r++) this.rrPtr[r] = rr.int(1 << 30);

    this.sn = new Int32Array(cfg.streams * M);
    this.snFirst = new Int32Array(cfg.streams * M);
    this.relays = new Int32Array(cfg.streams);
    this.sv = new Int32Array(cfg.streams);
    const expect = cfg.viewers + (opts.rampOnly ? 0 : Math.ceil((cfg.churnTicks * cfg.viewers) / Math.max(1, cfg.lifetimeTicks))) + 16;
    this.vStream = new Int32Array(expect);
    this.vNode = new Int32Array(expect);
    this.alive = new Int32Array(expect);

    const name = strategyName(strat);
    const verifiable = strat.kind === 'bl' || strat.kind === 'hrw';
    this.real = verifiable && (opts.realDecisions ?? cfg.realDecisions.includes(name));
    this.verify = { checks: 0, mismatches: 0, pendingMismatches: 0, realDecisions: this.real };
    if (verifiable) {
      if (this.real) {
        this.shadowCount = M;
        this.verifyEvery = 1;
      } else if (cfg.verifyChecks > 0) {
        this.shadowCount = Math.min(cfg.nodes, 4);
        // arrivals through the shadow routers ≈ total × shadow/nodes
        const total = cfg.viewers + (opts.rampOnly ? 0 : cfg.churnTicks * Math.floor(cfg.viewers / Math.max(1, cfg.lifetimeTicks)));
        const through = (total * this.shadowCount) / cfg.nodes;
        this.verifyEvery = Math.max(1, Math.floor(through / cfg.verifyChecks));
      }
      for (let r = 0; r < this.shadowCount; r++) this.rings.set(r, new BoundedLoadRing({ c: this.c, now: () => this.nowMs }));
    }
  }

  // ---------------------------------------------------------------- tick structure

  run(): RawRun {
    const cfg = this.cfg;
    const rampOnly = this.opts.rampOnly || cfg.churnTicks <= 0;
    const total = cfg.rampTicks + (rampOnly ? 0 : cfg.churnTicks);
    const arrivals = new Rng(cfg.seed, LANE_ARRIVALS);
    const depart = new Rng(cfg.seed, LANE_DEPART);
    const reconnect = new Rng(cfg.seed, LANE_RECONNECT);
    const series: number[] = [];
    let ramp: Snapshot | undefined;
    let churn: ChurnStats | undefined;
    const { victim, spare } = this.pool;
    const perTickChurn = Math.floor(cfg.viewers / Math.max(1, cfg.lifetimeTicks));
    let peakAfterFail = 0;
    let joinedPeak = 0;
    let relaysBeforeFail = 0;
    let forced = 0;
    let reconnectRejected = 0;
    let lastProgress = -1;

    for (let t = 0; t < total; t++) {
      this.t = t;
      // node events at the start of the tick
      for (let i = 0; i < this.M; i++) {
        const was = this.present[i];
        const now = this.joinTick[i] as number <= t && t < (this.failTick[i] as number) ? 1 : 0;
        if (was && !now) this.frozen[i] = this.load[i] as number;
        this.present[i] = now;
      }
      this.refreshView(t);

      if (t >= cfg.rampTicks) {
        // churn: departures, then as many new viewers
        for (let k = 0; k < perTickChurn && this.aliveN > 0; k++) this.depart(depart.int(this.aliveN));
        if (t === this.failTick[victim]) {
          relaysBeforeFail = sum(this.relays);
          const moved: number[] = [];
          for (let p = 0; p < this.aliveN; p++) {
            const v = this.alive[p] as number;
            if (this.vNode[v] === victim) moved.push(v);
          }
          forced = moved.length;
          for (const v of moved) this.unassign(v);
          for (const v of moved) {
            const r = this.pickRouter(reconnect.next());
            if (this.place(v, this.vStream[v] as number, r) < 0) {
              reconnectRejected++;
              this.rejected++;
            }
          }
        }
        for (let k = 0; k < perTickChurn; k++) this.arrive(arrivals);
      } else {
        const n = Math.floor((cfg.viewers * (t + 1)) / cfg.rampTicks) - Math.floor((cfg.viewers * t) / cfg.rampTicks);
        for (let k = 0; k < n; k++) this.arrive(arrivals);
      }

      // end of tick: heartbeat snapshot
      this.hist[t % this.hist.length]!.set(this.load);
      if (cfg.series || t >= (this.failTick[victim] as number)) {
        const m = this.maxOverAvg();
        if (cfg.series) series.push(round4(m));
        if (t >= (this.failTick[victim] as number)) peakAfterFail = Math.max(peakAfterFail, m);
      }
      if (this.present[spare] && t >= (this.joinTick[spare] as number) && !rampOnly) {
        const fair = this.fairShare(spare);
        if (fair > 0) joinedPeak = Math.max(joinedPeak, (this.load[spare] as number) / fair);
      }
      if (t === cfg.rampTicks - 1 && !this.opts.noSnapshots) ramp = this.snapshot(t, Boolean(cfg.loads));
      const f = Math.floor(((t + 1) / total) * 50);
      if (f !== lastProgress) {
        lastProgress = f;
        this.opts.onProgress?.((t + 1) / total);
      }
    }

    let end: Snapshot | undefined;
    if (!rampOnly && !this.opts.noSnapshots) {
      end = this.snapshot(total - 1, false);
      churn = {
        victim: this.pool.ids[victim] as string,
        forcedMoves: forced,
        reconnectRejected,
        peakMaxOverAvgAfterFail: round4(peakAfterFail),
        relaysBeforeFail,
        relaysAfterFail: end.relaysTotal,
        joined: this.pool.ids[spare] as string,
        joinedLoad: this.load[spare] as number,
        joinedFairShare: Math.round(this.fairShare(spare)),
        joinedPeakOverFair: round4(joinedPeak),
      };
    }
    const empty = emptySnapshot();
    const result: RunResult = {
      scenario: cfg.name,
      strategy: strategyName(this.strat),
      ramp: ramp ?? empty,
      ...(end ? { end } : {}),
      ...(churn ? { churn } : {}),
      ...(cfg.series ? { series } : {}),
      verify: this.verify,
      rejected: this.rejected,
      forcedOverBound: this.forcedOverBound,
      boundRefusals: this.boundRefusals,
      placements: this.placements,
      ms: Math.round(performance.now() - this.t0),
    };
    return { result, viewerNode: this.vNode, viewerCount: this.vCount };
  }

  /** Build the routers' table for tick t, then let each router absorb / drop its pending placements (the real ring's `update`). */
  refreshView(t: number): void {
    const { M, cfg } = this;
    const K = cfg.staleK;
    const s = t - 1 - K;
    this.nowMs = t * 1000;
    let membershipChanged = false;
    this.prevView.set(this.view);
    this.prevInTable.set(this.inTable);
    for (let i = 0; i < M; i++) {
      const jt = this.joinTick[i] as number;
      const ft = this.failTick[i] as number;
      let inTable = 0;
      let alive = 0;
      let hb = Number.NaN;
      let v = 0;
      if (jt === NEVER || (jt > BEFORE_START && s < jt)) {
        // not joined yet, or its first heartbeat not seen yet
      } else if (ft !== NEVER && t >= ft + K + 5) {
        // declared dead: out of the table
      } else {
        inTable = 1;
        alive = ft !== NEVER && t >= ft + K + 3 ? 0 : 1;
        const used = Math.min(s, ft - 1);
        if (used < 0) {
          hb = -1;
          v = 0;
        } else if (used === ft - 1 && s >= ft - 1) {
          hb = used;
          v = this.frozen[i] as number;
        } else {
          hb = used;
          v = this.hist[used % this.hist.length]![i] as number;
        }
      }
      if (inTable !== this.inTable[i] || alive !== this.stAlive[i]) membershipChanged = true;
      this.hbChanged[i] = inTable && this.prevInTable[i] && !Object.is(hb, this.hbId[i]) ? 1 : 0;
      this.inTable[i] = inTable;
      this.stAlive[i] = alive;
      this.view[i] = v;
      this.hbId[i] = inTable ? hb : Number.NaN;
    }
    // each router's pending placements (BoundedLoadRing.update)
    for (let r = 0; r < M; r++) {
      const map = this.placed[r] as Map<number, number[]>;
      if (map.size === 0) continue;
      const ro = r * M;
      for (const [i, list] of map) {
        if (!this.inTable[i] || !this.prevInTable[i]) {
          map.delete(i);
          this.pend[ro + i] = 0;
          continue;
        }
        if (this.hbChanged[i]) {
          const arrived = Math.max(0, (this.view[i] as number) - (this.prevView[i] as number));
          if (arrived > 0) list.splice(0, Math.min(arrived, list.length));
          if (list.length === 0) map.delete(i);
          this.pend[ro + i] = list.length;
        }
      }
    }

    // base L and W (no pending); routers recompute theirs when they first rank in this tick
    let L = 0;
    let W = 0;
    for (let i = 0; i < M; i++) {
      if (this.inTable[i] && this.stAlive[i] && (this.view[i] as number) < (this.cap[i] as number)) {
        L += this.view[i] as number;
        W += this.w[i] as number;
      }
    }
    this.Lbase = L;
    this.Wbase = W;
    // routers
    this.routers = [];
    if (this.opts.singleRouter) this.routers.push(this.pool.victim === 0 ? 1 : 0);
    else if (this.opts.fixedRouters) {
      for (let i = 0; i < cfg.nodes; i++) if (i !== this.pool.victim) this.routers.push(i);
    } else for (let i = 0; i < M; i++) if (this.present[i]) this.routers.push(i);
    // real rings (shadow routers)
    if (this.rings.size > 0) {
      const inputs: RingNodeInput[] = [];
      for (let i = 0; i < M; i++) {
        if (!this.inTable[i]) continue;
        inputs.push({
          id: this.pool.ids[i] as string,
          capacity: this.cap[i] as number,
          viewers: this.view[i] as number,
          state: this.stAlive[i] ? 'alive' : 'suspect',
          draining: false,
          heartbeatId: String(this.hbId[i]),
        });
      }
      this.ringInputs = inputs;
      for (const ring of this.rings.values()) ring.update(inputs);
    }
    // strategy-specific per-tick structures
    if (this.strat.kind === 'rr' && membershipChanged) this.buildRoundRobin();
    if (this.strat.kind === 'll') {
      const list: number[] = [];
      for (let i = 0; i < M; i++) if (this.inTable[i] && this.stAlive[i] && (this.view[i] as number) < (this.cap[i] as number)) list.push(i);
      const vw = this.view;
      const w = this.w;
      list.sort((a, b) => (vw[a] as number) / (w[a] as number) - (vw[b] as number) / (w[b] as number) || a - b);
      this.llSorted = list;
    }
  }

  /** Smooth weighted round robin (nginx) over the nodes in the table, by size. */
  buildRoundRobin(): void {
    const nodes: number[] = [];
    for (let i = 0; i < this.M; i++) if (this.inTable[i]) nodes.push(i);
    const key = nodes.join(',');
    if (key === this.rrKey) return;
    this.rrKey = key;
    const wts = nodes.map((i) => this.pool.size[i] as number);
    const total = wts.reduce((a, b) => a + b, 0);
    const cur = new Float64Array(nodes.length);
    const sched = new Int32Array(total);
    for (let k = 0; k < total; k++) {
      let best = 0;
      for (let j = 0; j < nodes.length; j++) {
        cur[j] = (cur[j] as number) + (wts[j] as number);
        if ((cur[j] as number) > (cur[best] as number)) best = j;
      }
      cur[best] = (cur[best] as number) - total;
      sched[k] = nodes[best] as number;
    }
    this.rrSched = sched;
  }

  pickRouter(u: number): number {
    const rs = this.routers;
    return rs[Math.floor(u * rs.length)] as number;
  }

  // ---------------------------------------------------------------- viewers

  arrive(rng: Rng): void {
    const s = this.zipf.rank(rng.next());
    const r = this.pickRouter(rng.next());
    const v = this.vCount++;
    if (v >= this.vStream.length) this.grow();
    this.vStream[v] = s;
    this.vNode[v] = -1;
    this.alive[this.aliveN++] = v;
    this.sv[s] = (this.sv[s] as number) + 1;
    if (this.place(v, s, r) < 0) this.rejected++;
  }

  grow(): void {
    const n = this.vStream.length * 2;
    const g = (a: Int32Array) => {
      const b = new Int32Array(n);
      b.set(a);
      return b;
    };
    this.vStream = g(this.vStream);
    this.vNode = g(this.vNode);
    this.alive = g(this.alive);
  }

  depart(p: number): void {
    const v = this.alive[p] as number;
    this.alive[p] = this.alive[--this.aliveN] as number;
    this.unassign(v);
    const s = this.vStream[v] as number;
    this.sv[s] = (this.sv[s] as number) - 1;
  }

  unassign(v: number): void {
    const i = this.vNode[v] as number;
    if (i < 0) return;
    const s = this.vStream[v] as number;
    this.load[i] = (this.load[i] as number) - 1;
    const k = s * this.M + i;
    const left = (this.sn[k] as number) - 1;
    this.sn[k] = left;
    if (left === 0) this.relays[s] = (this.relays[s] as number) - 1;
    this.vNode[v] = -1;
  }

  /**
   * The chosen node's admission (services/node: refuses at capacity or when dead). With the
   * what-if `+adm` strategy it also refuses at its own bound, computed from its table with
   * its EXACT load: ceil(c·(L+1)·w/W).
   */
  admits(i: number): boolean {
    if (this.present[i] !== 1) return false;
    const ld = this.load[i] as number;
    if (ld >= (this.cap[i] as number)) return false;
    if (!this.boundAtAdmission) return true;
    const v = this.view[i] as number;
    const counted = this.inTable[i] && this.stAlive[i] && v < (this.cap[i] as number);
    const L = this.Lbase - (counted ? v : 0) + ld;
    const W = this.Wbase + (counted ? 0 : (this.w[i] as number));
    if (ld < Math.ceil((this.c * (L + 1) * (this.w[i] as number)) / W)) return true;
    this.boundRefusals++;
    return false;
  }

  /** Ask router r where viewer v (of stream s) goes; assign it. Returns the node or -1. */
  place(v: number, s: number, r: number): number {
    this.beginRank(r);
    let i: number;
    switch (this.strat.kind) {
      case 'bl':
      case 'hrw':
        i = this.placeHrw(s, r);
        if (i < 0 && this.boundAtAdmission) {
          // every node asked was at its bound: ask again, admitting up to capacity
          this.boundAtAdmission = false;
          i = this.placeHrw(s, r);
          this.boundAtAdmission = true;
          if (i >= 0) this.forcedOverBound++;
        }
        break;
      case 'rr':
        i = this.placeRoundRobin(r);
        break;
      case 'll':
        i = this.placeLeastLoaded(r);
        break;
    }
    if (i < 0) return -1;
    this.placements++;
    this.record(r, i);
    this.load[i] = (this.load[i] as number) + 1;
    this.vNode[v] = i;
    const k = s * this.M + i;
    const had = this.sn[k] as number;
    this.sn[k] = had + 1;
    if (had === 0) {
      this.relays[s] = (this.relays[s] as number) + 1;
      this.snFirst[k] = this.seq;
    }
    this.seq++;
    return i;
  }

  /**
   * Router r is about to rank (the real ring's `nodes()` → `pending()` for every node):
   * drop its placements older than the TTL; on its first rank in a tick, recompute its
   * L (Σ eligible load incl. pending) and Σw from the base table.
   */
  beginRank(r: number): void {
    if (this.pruneTick[r] === this.t) return;
    this.pruneTick[r] = this.t;
    const { M } = this;
    const ro = r * M;
    const cutoff = this.nowMs - this.ttlMs;
    const map = this.placed[r] as Map<number, number[]>;
    let L = this.Lbase;
    let W = this.Wbase;
    for (const [i, list] of map) {
      let expired = 0;
      while (expired < list.length && (list[expired] as number) < cutoff) expired++;
      if (expired > 0) list.splice(0, expired);
      const p = list.length;
      this.pend[ro + i] = p;
      if (p === 0) {
        map.delete(i);
        continue;
      }
      const v = this.view[i] as number;
      if (this.inTable[i] && this.stAlive[i] && v < (this.cap[i] as number)) {
        if (v + p >= (this.cap[i] as number)) {
          L -= v;
          W -= this.w[i] as number;
        } else L += p;
      }
    }
    this.Lr[r] = L;
    this.Wr[r] = W;
    // keep the shadow ring's lazy expiry in step (it prunes whenever it ranks)
    this.rings.get(r)?.nodes();
  }

  /** Count a placement in router r's table (the real ring's `recordPlacement`), keeping L and W exact. */
  record(r: number, i: number): void {
    const k = r * this.M + i;
    const before = (this.view[i] as number) + (this.pend[k] as number);
    this.pend[k] = (this.pend[k] as number) + 1;
    const map = this.placed[r] as Map<number, number[]>;
    const list = map.get(i);
    if (list) list.push(this.nowMs);
    else map.set(i, [this.nowMs]);
    if (before + 1 >= (this.cap[i] as number)) {
      // now full: leaves the eligible set
      this.Lr[r] = (this.Lr[r] as number) - before;
      this.Wr[r] = (this.Wr[r] as number) - (this.w[i] as number);
    } else this.Lr[r] = (this.Lr[r] as number) + 1;
    this.rings.get(r)?.recordPlacement(this.pool.ids[i] as string);
  }

  eligible(ro: number, i: number): boolean {
    return this.inTable[i] === 1 && this.stAlive[i] === 1 && (this.view[i] as number) + (this.pend[ro + i] as number) < (this.cap[i] as number);
  }

  /** Exact replica of rankPlaybackNodes + the router's admission walk, on the cached HRW order. */
  fastHrw(s: number, r: number): number {
    const { M, view, pend, w, c } = this;
    this.orders.ensure(s);
    const order = this.orders.order;
    const base = s * M;
    const ro = r * M;
    const L = this.Lr[r] as number;
    const W = this.Wr[r] as number;
    const bounded = Number.isFinite(c);
    let asks = this.askAtMost;
    for (let pass = 0; pass < (bounded ? 2 : 1); pass++) {
      for (let j = 0; j < M; j++) {
        const i = order[base + j] as number;
        if (!this.eligible(ro, i)) continue;
        if (bounded) {
          const over = (view[i] as number) + (pend[ro + i] as number) >= Math.ceil((c * (L + 1) * (w[i] as number)) / W);
          if (over !== (pass === 1)) continue;
        }
        if (this.admits(i)) return i;
        if (--asks === 0) return -1;
      }
    }
    return -1;
  }

  /** The real code: ring.rank(stream), then the admission walk over the ranked list. */
  realHrw(s: number, r: number): number {
    const ring = this.rings.get(r);
    if (!ring) throw new Error('no ring');
    let asks = this.askAtMost;
    for (const n of ring.rank(streamToken(s))) {
      const i = this.slotOf(n.id);
      if (this.admits(i)) return i;
      if (--asks === 0) return -1;
    }
    return -1;
  }

  #slot = new Map<string, number>();
  slotOf(id: string): number {
    if (this.#slot.size === 0) this.pool.ids.forEach((x, i) => this.#slot.set(x, i));
    const i = this.#slot.get(id);
    if (i === undefined) throw new Error(`unknown node ${id}`);
    return i;
  }

  #sinceCheck = 0;
  placeHrw(s: number, r: number): number {
    const fast = this.fastHrw(s, r);
    if (r < this.shadowCount && this.rings.has(r)) {
      if (++this.#sinceCheck >= this.verifyEvery) {
        this.#sinceCheck = 0;
        const real = this.realHrw(s, r);
        this.verify.checks++;
        const ring = this.rings.get(r) as BoundedLoadRing;
        const ro = r * this.M;
        for (let i = 0; i < this.M; i++) {
          if (!this.inTable[i]) continue;
          const rp = ring.pending(this.pool.ids[i] as string);
          if (rp !== this.pend[ro + i]) {
            this.verify.pendingMismatches++;
            this.verify.firstMismatch ??= `tick ${this.t} router ${this.pool.ids[r]} node ${this.pool.ids[i]}: real pending ${rp} vs replica ${this.pend[ro + i]}`;
          }
        }
        if (real !== fast) {
          this.verify.mismatches++;
          this.verify.firstMismatch ??= `tick ${this.t} stream ${streamToken(s)} router ${this.pool.ids[r]}: real ${real < 0 ? '-' : this.pool.ids[real]} vs replica ${fast < 0 ? '-' : this.pool.ids[fast]}`;
        }
        if (this.real) return real;
      }
    }
    return fast;
  }

  placeRoundRobin(r: number): number {
    const sched = this.rrSched;
    const n = sched.length;
    if (n === 0) return -1;
    const ro = r * this.M;
    let p = (this.rrPtr[r] as number) % n;
    let asks = this.askAtMost;
    for (let k = 0; k < n; k++, p = (p + 1) % n) {
      const i = sched[p] as number;
      if (!this.eligible(ro, i)) continue;
      if (this.admits(i)) {
        this.rrPtr[r] = (p + 1) % n;
        return i;
      }
      if (--asks === 0) break;
    }
    this.rrPtr[r] = (p + 1) % n;
    return -1;
  }

  placeLeastLoaded(r: number): number {
    const { view, pend, w } = this;
    const ro = r * this.M;
    const refused = this.refused;
    refused.length = 0;
    for (;;) {
      let best = -1;
      let bestVal = Number.POSITIVE_INFINITY;
      for (const i of this.llSorted) {
        const v0 = (view[i] as number) / (w[i] as number);
        if (v0 > bestVal) break;
        if (!this.eligible(ro, i) || (refused.length > 0 && refused.includes(i))) continue;
        const val = ((view[i] as number) + (pend[ro + i] as number)) / (w[i] as number);
        if (val < bestVal || (val === bestVal && i < best)) {
          best = i;
          bestVal = val;
        }
      }
      if (best < 0) return -1;
      if (this.admits(best)) return best;
      refused.push(best);
      if (refused.length >= this.askAtMost) return -1;
    }
  }

  // ---------------------------------------------------------------- metrics

  totals(): { L: number; W: number; n: number } {
    let L = 0;
    let W = 0;
    let n = 0;
    for (let i = 0; i < this.M; i++) {
      if (!this.present[i]) continue;
      L += this.load[i] as number;
      W += this.w[i] as number;
      n++;
    }
    return { L, W, n };
  }

  fairShare(i: number): number {
    const { L, W } = this.totals();
    return W > 0 ? (L * (this.w[i] as number)) / W : 0;
  }

  maxOverAvg(): number {
    const { L, W } = this.totals();
    if (L === 0) return 0;
    let m = 0;
    for (let i = 0; i < this.M; i++) {
      if (!this.present[i]) continue;
      m = Math.max(m, (this.load[i] as number) / (this.w[i] as number));
    }
    return m / (L / W);
  }

  snapshot(tick: number, withLoads: boolean): Snapshot {
    const cfg = this.cfg;
    const { L, W, n } = this.totals();
    const norm: number[] = [];
    for (let i = 0; i < this.M; i++) if (this.present[i]) norm.push(L > 0 ? (this.load[i] as number) / (this.w[i] as number) / (L / W) : 0);
    norm.sort((a, b) => b - a);
    const capRef = (1.25 * L) / Math.max(1, n);
    let watched = 0;
    let relaysTotal = 0;
    let idealTotal = 0;
    let vw = 0;
    let top = { viewers: 0, relays: 0, ideal: 0 };
    for (let s = 0; s < cfg.streams; s++) {
      const v = this.sv[s] as number;
      const k = this.relays[s] as number;
      if (k === 0) continue;
      watched++;
      relaysTotal += k;
      const ideal = Math.ceil(v / capRef);
      idealTotal += ideal;
      vw += v * k;
      if (v > top.viewers) top = { viewers: v, relays: k, ideal };
    }
    const served = L;
    const tree = this.trees();
    const snap: Snapshot = {
      tick,
      viewers: served,
      nodes: n,
      maxOverAvg: round4(norm[0] ?? 0),
      minOverAvg: round4(norm[norm.length - 1] ?? 0),
      p99OverAvg: round4(norm[Math.floor(norm.length * 0.01)] ?? 0),
      streamsWatched: watched,
      relaysTotal,
      idealTotal,
      relaysPerStream: round4(relaysTotal / Math.max(1, watched)),
      idealPerStream: round4(idealTotal / Math.max(1, watched)),
      relaysViewerWeighted: round4(vw / Math.max(1, served)),
      top,
      crossNodeGbps: round4((relaysTotal * cfg.bitrateMbps) / 1000),
      tree,
    };
    if (withLoads) snap.loads = norm.map(round4);
    return snap;
  }

  /** Relay tree of every watched stream, built with the real chooseRelayParent in the order the relays started. */
  trees(): TreeStats {
    const cfg = this.cfg;
    const M = this.M;
    const alive = new Set<string>();
    for (let i = 0; i < M; i++) if (this.present[i]) alive.add(this.pool.ids[i] as string);
    const perStream: { token: string; owner: string; relays: string[]; viewers: number[] }[] = [];
    for (let s = 0; s < cfg.streams; s++) {
      if ((this.relays[s] as number) === 0) continue;
      const nodes: number[] = [];
      const base = s * M;
      for (let i = 0; i < M; i++) if ((this.sn[base + i] as number) > 0) nodes.push(i);
      nodes.sort((a, b) => (this.snFirst[base + a] as number) - (this.snFirst[base + b] as number));
      perStream.push({
        token: streamToken(s),
        // the publisher's ingest node: a separate ingest pool of 16 nodes
        owner: `ingest-${String(s % 16).padStart(2, '0')}`,
        relays: nodes.map((i) => this.pool.ids[i] as string),
        viewers: nodes.map((i) => this.sn[base + i] as number),
      });
    }
    return treeStats(perStream, cfg.fanout, alive, cfg.bitrateMbps);
  }
}

function sum(a: Int32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] as number;
  return s;
}

export function round4(x: number): number {
  return Math.round(x * 10000) / 10000;
}

function emptySnapshot(): Snapshot {
  return {
    tick: 0,
    viewers: 0,
    nodes: 0,
    maxOverAvg: 0,
    minOverAvg: 0,
    p99OverAvg: 0,
    streamsWatched: 0,
    relaysTotal: 0,
    idealTotal: 0,
    relaysPerStream: 0,
    idealPerStream: 0,
    relaysViewerWeighted: 0,
    top: { viewers: 0, relays: 0, ideal: 0 },
    crossNodeGbps: 0,
    tree: { streams: 0, originEgressGbps: 0, noTreeOriginGbps: 0, maxOwnerChildren: 0, maxDepth: 0, meanViewerDepth: 0, depthHistogram: [], fallbacks: 0 },
  };
}

// ---------------------------------------------------------------- moves

export interface MovesResult {
  scenario: string;
  strategy: string;
  remove: { node: string; onRemoved: number; moved: number; extra: number; total: number };
  add: { node: string; movedToNew: number; fairShare: number; movedBetweenOld: number; total: number };
  ms: number;
}

/**
 * Viewers moved per node change, as a property of the placement function: place the same
 * arrival sequence (ramp only) with exact information — one router, load table K=0, so
 * the router's table plus its pending placements is the true load — on the pool, on the
 * pool without one node, and on the pool with one more node, and compare where each
 * viewer lands. (In the live runs nobody moves unless their node dies; see ChurnStats.)
 */
export function runMoves(cfg: ScenarioConfig, strategy: string, orders: HrwOrders, onProgress?: (f: number) => void): MovesResult {
  const t0 = performance.now();
  const pool = orders.pool;
  const exact: ScenarioConfig = { ...cfg, staleK: 0, series: false, loads: false, verifyChecks: 0, realDecisions: [] };
  cfg = exact;
  const common: RunOptions = { rampOnly: true, singleRouter: true, noSnapshots: true, realDecisions: false, orders, pool };
  const base = runWorld(cfg, strategy, { ...common, variant: 'base', onProgress: (f) => onProgress?.(f / 3) });
  const rem = runWorld(cfg, strategy, { ...common, variant: 'remove', onProgress: (f) => onProgress?.((1 + f) / 3) });
  const add = runWorld(cfg, strategy, { ...common, variant: 'add', onProgress: (f) => onProgress?.((2 + f) / 3) });
  const n = Math.min(base.viewerCount, rem.viewerCount, add.viewerCount);
  let onRemoved = 0;
  let movedRem = 0;
  let toNew = 0;
  let between = 0;
  let served = 0;
  for (let v = 0; v < n; v++) {
    const b = base.viewerNode[v] as number;
    if (b >= 0) served++;
    if (b === pool.victim) onRemoved++;
    if (rem.viewerNode[v] !== b) movedRem++;
    const a = add.viewerNode[v] as number;
    if (a !== b) {
      if (a === pool.spare) toNew++;
      else between++;
    }
  }
  let W = 0;
  for (let i = 0; i < cfg.nodes; i++) W += pool.capacity[i] as number;
  const wNew = pool.capacity[pool.spare] as number;
  return {
    scenario: cfg.name,
    strategy,
    remove: { node: pool.ids[pool.victim] as string, onRemoved, moved: movedRem, extra: movedRem - onRemoved, total: served },
    add: { node: pool.ids[pool.spare] as string, movedToNew: toNew, fairShare: Math.round((served * wNew) / (W + wNew)), movedBetweenOld: between, total: served },
    ms: Math.round(performance.now() - t0),
  };
}
