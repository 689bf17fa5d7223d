/**
 * Membership and load gossip (docs/design.md): every node publishes a heartbeat
 * on `<prefix>.node.<id>.hb` every second and listens to everybody's, so each
 * node holds the same live table of nodes, their state and their load.
 *
 * States, judged by the LOCAL receive time of a node's last heartbeat (no
 * cross-node clock comparison): `alive` → `suspect` after `suspectMs`
 * (3 s) of silence → `dead` after `deadMs` (5 s). A heartbeat brings a
 * suspect node back to `alive`, a dead one back as a fresh `joined`. A `bye`
 * (`<prefix>.node.<id>.bye`, sent by `stop()`) removes the node at once, and
 * late heartbeats of that incarnation are ignored. Dead nodes stay in the
 * table (state `dead`) for `forgetMs` (60 s), then disappear.
 *
 * Events log (when `events` is given), each appended by exactly one node in
 * the normal case:
 * - `nodeJoined`: by the node itself, on start and when its bus connection
 *   returns after an outage long enough for peers to have declared it dead;
 * - `nodeLeft`: by the node itself, in `stop()`;
 * - `nodeDead`: by the live node with the lowest id (byte order) in the
 *   observer's table. During a partition both sides may report (at most one
 *   report per side); while our own bus is down, or within `deadMs` of it
 *   coming back (our table is stale then), we report nothing.
 *
 * Payloads that fail to decode, or whose node id differs from the subject's,
 * are ignored and logged once per (peer, reason).
 */
import {
  decodeBye,
  decodeHeartbeat,
  encodeBye,
  encodeHeartbeat,
  MeshMessageError,
  type Heartbeat,
  type NodeAddresses,
  type NodeRole,
} from '@meshcast/proto';
import type { Bus, BusMessage, BusStatus, BusSubscription } from './bus.ts';
import { MeshConfigError } from './errors.ts';
import type { MeshEvents } from './events.ts';
import { errMessage, LogOnce, silentLogger, type Logger } from './log.ts';
import { validateNodeId } from './names.ts';

export type NodeState = 'alive' | 'suspect' | 'dead';

export interface NodeView {
  id: string;
  state: NodeState;
  /** True for this node's own entry. */
  self: boolean;
  /** The latest heartbeat (for self: the latest one we sent). */
  heartbeat: Heartbeat;
  /** Local time (ms) we last heard from it. */
  lastSeenAt: number;
  /** Local time (ms) this incarnation first appeared in our table. */
  firstSeenAt: number;
}

export type MembershipChangeKind = 'joined' | 'updated' | 'suspect' | 'alive' | 'dead' | 'left';

export interface MembershipChange {
  kind: MembershipChangeKind;
  node: NodeView;
}

/** What the node reports about itself in each heartbeat. */
export type LoadSample = Pick<Heartbeat, 'viewers' | 'publishers' | 'egressBps' | 'ingressBps' | 'cpu' | 'streamsOwned' | 'relaysHeld' | 'draining'> & {
  placementsSinceLastHb?: number;
  /** Overrides `self.capacity` when present. */
  capacity?: number;
};

export interface MembershipOptions {
  bus: Bus;
  self: { id: string; roles: NodeRole[]; addresses: NodeAddresses; capacity: number };
  /** Called before every heartbeat. */
  load: () => LoadSample;
  /** default 1000 */
  heartbeatMs?: number;
  /** default 3000 */
  suspectMs?: number;
  /** default 5000 */
  deadMs?: number;
  /** How long dead nodes stay listed, default 60 000. */
  forgetMs?: number;
  /** Append nodeJoined/nodeLeft/nodeDead here. */
  events?: MeshEvents;
  logger?: Logger;
  /** Clock (tests). */
  now?: () => number;
}

const ZERO_LOAD: LoadSample = {
  viewers: 0,
  publishers: 0,
  egressBps: 0,
  ingressBps: 0,
  cpu: 0,
  streamsOwned: 0,
  relaysHeld: 0,
  draining: false,
};

interface Entry {
  view: NodeView;
}

export class Membership {
  readonly id: string;
  readonly #bus: Bus;
  readonly #opts: MembershipOptions;
  readonly #log: Logger;
  readonly #once: LogOnce;
  readonly #now: () => number;
  readonly heartbeatMs: number;
  readonly suspectMs: number;
  readonly deadMs: number;
  readonly forgetMs: number;
  readonly startedAt: number;
  readonly #table = new Map<string, Entry>();
  /** node → startedAt of the incarnation that said bye, and when */
  readonly #tombstones = new Map<string, { startedAt: number; at: number }>();
  readonly #listeners = new Set<(c: MembershipChange) => void>();
  #subs: BusSubscription[] = [];
  #hbTimer: NodeJS.Timeout | undefined;
  #checkTimer: NodeJS.Timeout | undefined;
  #unStatus: (() => void) | undefined;
  #seq = 0;
  #lastLoad: LoadSample = ZERO_LOAD;
  #running = false;
  #disconnectedAt: number | undefined;
  /** no nodeDead reports before this local time (our view is stale after an outage) */
  #reportDeathsAfter = 0;

  constructor(opts: MembershipOptions) {
    this.id = validateNodeId(opts.self.id);
    this.#bus = opts.bus;
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.suspectMs = opts.suspectMs ?? 3000;
    this.deadMs = opts.deadMs ?? 5000;
    this.forgetMs = opts.forgetMs ?? 60_000;
    if (!(this.heartbeatMs > 0 && this.suspectMs > this.heartbeatMs && this.deadMs > this.suspectMs)) {
      throw new MeshConfigError(
        `membership timings must satisfy 0 < heartbeatMs < suspectMs < deadMs (got ${this.heartbeatMs}/${this.suspectMs}/${this.deadMs})`,
      );
    }
    this.startedAt = this.#now();
    this.#log = (opts.logger ?? silentLogger).child({ component: 'membership', node: this.id });
    this.#once = new LogOnce(this.#log);
  }

  /** Subscribe, send the first heartbeat, start timers, append `nodeJoined`. */
  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    const names = this.#bus.names;
    this.#subs.push(this.#bus.subscribe(names.heartbeatAll, (m) => this.#onHeartbeat(m)));
    this.#subs.push(this.#bus.subscribe(names.byeAll, (m) => this.#onBye(m)));
    this.#unStatus = this.#bus.onStatus((s) => this.#onBusStatus(s));
    this.#sendHeartbeat();
    this.#hbTimer = setInterval(() => this.#sendHeartbeat(), this.heartbeatMs).unref();
    const tick = Math.max(5, Math.min(this.heartbeatMs, Math.floor(this.suspectMs / 4)));
    this.#checkTimer = setInterval(() => this.#check(), tick).unref();
    this.#reportDeathsAfter = this.#now() + this.deadMs;
    await this.#appendJoined();
  }

  /**
   * Leave: append `nodeLeft`, publish `bye` (peers drop us at once), stop
   * timers and subscriptions. With `{ bye: false }` we just go silent (peers
   * will declare us dead) — useful in tests.
   */
  async stop(opts: { bye?: boolean; reason?: string } = {}): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearInterval(this.#hbTimer);
    clearInterval(this.#checkTimer);
    this.#unStatus?.();
    if (opts.bye !== false) {
      const ev = this.#opts.events;
      if (ev) {
        await ev
          .append({ type: 'nodeLeft', at: Date.now(), node: this.id, ...(opts.reason ? { reason: opts.reason } : {}) })
          .catch((err: unknown) => this.#log.debug({ err: errMessage(err) }, 'cannot append nodeLeft'));
      }
      try {
        this.#bus.publish(
          this.#bus.names.bye(this.id),
          encodeBye({ node: this.id, startedAt: this.startedAt, seq: this.#seq, sentAt: Date.now(), ...(opts.reason ? { reason: opts.reason } : {}) }),
        );
      } catch (err) {
        this.#log.debug({ err: errMessage(err) }, 'cannot publish bye');
      }
    }
    for (const s of this.#subs) s.unsubscribe();
    this.#subs = [];
  }

  /** Every known node (self included), sorted by id. Same content on every node, up to timing. */
  table(): NodeView[] {
    return [...this.#table.values()].map((e) => ({ ...e.view })).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** One node's view, or undefined. */
  get(id: string): NodeView | undefined {
    const e = this.#table.get(id);
    return e ? { ...e.view } : undefined;
  }

  /** Ids of nodes in state `alive` (self included). */
  aliveIds(): Set<string> {
    const s = new Set<string>();
    for (const e of this.#table.values()) if (e.view.state === 'alive') s.add(e.view.id);
    return s;
  }

  /** Subscribe to changes; returns the unsubscribe function. */
  onChange(cb: (c: MembershipChange) => void): () => void {
    this.#listeners.add(cb);
    return () => this.#listeners.delete(cb);
  }

  // ------------------------------------------------------------------ internals

  #emit(kind: MembershipChangeKind, view: NodeView): void {
    const c: MembershipChange = { kind, node: { ...view } };
    for (const l of [...this.#listeners]) {
      try {
        l(c);
      } catch (err) {
        this.#log.error({ err: errMessage(err) }, 'membership listener threw');
      }
    }
  }

  #sample(): LoadSample {
    try {
      this.#lastLoad = this.#opts.load();
    } catch (err) {
      this.#log.warn({ err: errMessage(err) }, 'load callback threw; reusing the previous sample');
    }
    return this.#lastLoad;
  }

  #sendHeartbeat(): void {
    if (!this.#running) return;
    const l = this.#sample();
    const s = this.#opts.self;
    const hb: Heartbeat = {
      node: this.id,
      roles: [...s.roles],
      addresses: { ...s.addresses },
      startedAt: this.startedAt,
      capacity: Math.max(0, Math.floor(l.capacity ?? s.capacity)),
      viewers: nat(l.viewers),
      publishers: nat(l.publishers),
      egressBps: nonNeg(l.egressBps),
      ingressBps: nonNeg(l.ingressBps),
      cpu: nonNeg(l.cpu),
      streamsOwned: nat(l.streamsOwned),
      relaysHeld: nat(l.relaysHeld),
      draining: l.draining === true,
      placementsSinceLastHb: nat(l.placementsSinceLastHb ?? 0),
      seq: ++this.#seq,
      sentAt: Date.now(),
    };
    const now = this.#now();
    const existing = this.#table.get(this.id);
    if (!existing) {
      const view: NodeView = { id: this.id, state: 'alive', self: true, heartbeat: hb, lastSeenAt: now, firstSeenAt: now };
      this.#table.set(this.id, { view });
      this.#emit('joined', view);
    } else {
      existing.view.heartbeat = hb;
      existing.view.lastSeenAt = now;
      this.#emit('updated', existing.view);
    }
    try {
      this.#bus.publish(this.#bus.names.heartbeat(this.id), encodeHeartbeat(hb));
    } catch (err) {
      this.#log.debug({ err: errMessage(err) }, 'cannot publish heartbeat');
    }
  }

  #peerOf(subject: string): string {
    // <prefix>.node.<peer>.hb|bye
    const toks = subject.split('.');
    return toks[toks.length - 2] ?? '?';
  }

  #onHeartbeat(m: BusMessage): void {
    const peer = this.#peerOf(m.subject);
    const hb = decodeHeartbeat(m.data);
    if (hb instanceof MeshMessageError) {
      this.#once.warn(peer, hb.message, { subject: m.subject }, 'ignoring undecodable heartbeat');
      return;
    }
    if (hb.node !== peer) {
      this.#once.warn(peer, 'node id mismatch', { subject: m.subject, claimed: hb.node }, 'ignoring heartbeat whose node id differs from its subject');
      return;
    }
    if (hb.node === this.id) {
      if (hb.startedAt !== this.startedAt) {
        this.#once.warn(peer, 'duplicate node id', { otherStartedAt: hb.startedAt }, 'another process is using our node id');
      }
      return;
    }
    const tomb = this.#tombstones.get(hb.node);
    if (tomb && tomb.startedAt >= hb.startedAt) return; // late heartbeat of an incarnation that said bye
    const now = this.#now();
    const e = this.#table.get(hb.node);
    if (!e || e.view.state === 'dead' || hb.startedAt > e.view.heartbeat.startedAt) {
      const view: NodeView = { id: hb.node, state: 'alive', self: false, heartbeat: hb, lastSeenAt: now, firstSeenAt: now };
      this.#table.set(hb.node, { view });
      this.#emit('joined', view);
      return;
    }
    if (hb.startedAt < e.view.heartbeat.startedAt || hb.seq <= e.view.heartbeat.seq) return; // stale or duplicate
    e.view.heartbeat = hb;
    e.view.lastSeenAt = now;
    if (e.view.state === 'suspect') {
      e.view.state = 'alive';
      this.#emit('alive', e.view);
    } else {
      this.#emit('updated', e.view);
    }
  }

  #onBye(m: BusMessage): void {
    const peer = this.#peerOf(m.subject);
    const bye = decodeBye(m.data);
    if (bye instanceof MeshMessageError) {
      this.#once.warn(peer, bye.message, { subject: m.subject }, 'ignoring undecodable bye');
      return;
    }
    if (bye.node !== peer) {
      this.#once.warn(peer, 'node id mismatch', { subject: m.subject, claimed: bye.node }, 'ignoring bye whose node id differs from its subject');
      return;
    }
    if (bye.node === this.id) return;
    this.#tombstones.set(bye.node, { startedAt: bye.startedAt, at: this.#now() });
    const e = this.#table.get(bye.node);
    if (e && e.view.heartbeat.startedAt <= bye.startedAt) {
      this.#table.delete(bye.node);
      this.#log.info({ peer: bye.node, reason: bye.reason }, 'node left');
      this.#emit('left', e.view);
    }
  }

  #onBusStatus(s: BusStatus): void {
    const now = this.#now();
    if (s === 'connected') {
      const outage = this.#disconnectedAt === undefined ? 0 : now - this.#disconnectedAt;
      this.#disconnectedAt = undefined;
      this.#reportDeathsAfter = now + this.deadMs;
      this.#sendHeartbeat();
      if (outage >= this.deadMs) void this.#appendJoined();
    } else if (this.#disconnectedAt === undefined && s !== 'closed') {
      this.#disconnectedAt = now;
    }
  }

  async #appendJoined(): Promise<void> {
    const ev = this.#opts.events;
    if (!ev) return;
    try {
      await ev.append({ type: 'nodeJoined', at: Date.now(), node: this.id, roles: [...this.#opts.self.roles] });
    } catch (err) {
      this.#log.debug({ err: errMessage(err) }, 'cannot append nodeJoined');
    }
  }

  #check(): void {
    const now = this.#now();
    const died: NodeView[] = [];
    for (const [id, e] of this.#table) {
      if (e.view.self) continue;
      const silent = now - e.view.lastSeenAt;
      if (e.view.state === 'dead') {
        if (silent >= this.forgetMs) this.#table.delete(id);
        continue;
      }
      if (silent >= this.deadMs) {
        e.view.state = 'dead';
        this.#log.warn({ peer: id, silentMs: silent }, 'node dead');
        this.#emit('dead', e.view);
        died.push(e.view);
      } else if (silent >= this.suspectMs && e.view.state === 'alive') {
        e.view.state = 'suspect';
        this.#emit('suspect', e.view);
      }
    }
    for (const [id, t] of this.#tombstones) if (now - t.at > this.forgetMs) this.#tombstones.delete(id);
    if (died.length > 0) this.#reportDeaths(died, now);
  }

  /** The lowest live id in our table appends nodeDead (see module doc). */
  #reportDeaths(died: NodeView[], now: number): void {
    const ev = this.#opts.events;
    if (!ev || this.#bus.status !== 'connected' || now < this.#reportDeathsAfter) return;
    const alive = [...this.aliveIds()].sort();
    if (alive[0] !== this.id) return;
    for (const d of died) {
      ev.append({ type: 'nodeDead', at: Date.now(), node: d.id, lastSeenAt: Date.now() - (now - d.lastSeenAt), reportedBy: this.id }).catch(
        (err: unknown) => this.#log.debug({ err: errMessage(err) }, 'cannot append nodeDead'),
      );
    }
  }
}

function nat(x: number): number {
  return Number.isFinite(x) && x > 0 ? Math.floor(x) : 0;
}
function nonNeg(x: number): number {
  return Number.isFinite(x) && x > 0 ? x : 0;
}
