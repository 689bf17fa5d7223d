/**
 * PublishedStream: the one actor that decides who publishes a stream key on this node. One per key with a
 * local publisher (primary or standby). It alone takes and keeps the ownership lease (the renewal writes
 * themselves are the lease's), decides takeover, standby and reject, fences the local publisher, and
 * re-announces the stream after a NATS outage. Time comes from an injected clock and a `tick` message
 * (every TICK_MS from the driver), so its tests run on simulated time.
 *
 * States:
 * - `idle`       nobody publishes here yet (the actor was just created).
 * - `claiming`   a local publisher waits for the lease (or, under `standby`, for the live owner's heartbeat).
 * - `owning`     the lease is ours and the local primary's frames reach viewers; a local standby may wait.
 * - `confirming` the process was paused (a timer fired > FREEZE_MS late): frames are held back until a CAS
 *                write confirms the lease is still ours; a failed write fences.
 * - `local`      the mesh is unreachable: the local primary serves viewers on this node without a lease.
 * - `standby`    another node's publisher is primary; the local publisher waits, its frames are dropped.
 * - `released`   no local publisher is left (or it was fenced): the driver forgets the actor.
 *
 * Availability during a NATS outage (exactly what `leaseLost` and `local` do): the local publisher keeps
 * serving this node's viewers. A lease that expires locally while the process ran (renewals unanswered)
 * moves to `local`, not to a fence; on every tick with the bus connected it re-announces (CAS create,
 * jittered backoff on failure). It takes the key only if it is free, stale or our own record; a live
 * record of another node means the stream moved meanwhile (a standby elsewhere was promoted): the local
 * publisher is then evicted. A lease lost within FREEZE_MS of a pause is never kept: that node's view of
 * the mesh is stale, so it fences.
 *
 * Standby across nodes: the owner publishes a liveness heartbeat on `<prefix>.live.<app>.<stream>` every
 * tick (role primary, live = media within `publisher_silence_ms`), and a standby publishes one too (role
 * standby). A standby is promoted when the owner says its publisher is silent or gone, when the ownership
 * record disappears, or when no owner heartbeat arrived for `publisher_silence_ms` while this node's bus
 * is connected (the owner node died or is cut off from NATS). Promotion is a takeover: a new epoch.
 */
import { Backoff, StreamOwnedError, encodeStreamToken, type OwnershipLease } from '@meshcast/mesh';
import { NODE_ID_PATTERN } from '@meshcast/proto';
import type { Logger } from '../log.ts';
import type { PublisherHandle } from '../media/stream-hub.ts';
import type { PublishingStatus } from './publishing-status.ts';

export type DuplicatePolicy = 'standby' | 'takeover' | 'reject';
export type PublishedStateName = 'idle' | 'claiming' | 'owning' | 'confirming' | 'local' | 'standby' | 'released';

/** The driver sends `tick` this often; owners and standbys heartbeat on each one. */
export const TICK_MS = 250;
/** An event-loop gap this long means the process was paused (SIGSTOP, VM freeze): it cannot know what the mesh did meanwhile. */
export const FREEZE_MS = 1500;
/**
 * How long a claim waits for the live owner's heartbeat before it decides the owner's publisher is silent: one
 * heartbeat interval and a margin. Short on purpose: a publisher moving off a paused or dead owner takes over
 * before the relays' stall detection leaves that owner (relay_stall_ms), as it did before standby existed.
 */
export const CLAIM_WAIT_MS = TICK_MS + 100;

/** The liveness heartbeat on `<prefix>.live.<app>.<stream>`. */
export interface LivenessBeat {
  node: string;
  role: 'primary' | 'standby';
  /** Primary: media arrived within publisher_silence_ms. Standby: always true. `false` + `gone`: the publisher left. */
  live: boolean;
  gone?: boolean;
  epoch?: number;
  since: number;
}

/** `<prefix>.live.<app>.<stream>` (stream tokens): the owner's and the standby's liveness heartbeats. */
export function livenessSubject(prefix: string, app: string, stream: string): string {
  return `${prefix}.live.${encodeStreamToken(app, stream)}`;
}

/** A heartbeat from the bus, or undefined when it is not one (someone else wrote to the subject). */
export function decodeLivenessBeat(data: Uint8Array): LivenessBeat | undefined {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(data).toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (typeof o['node'] !== 'string' || !NODE_ID_PATTERN.test(o['node'])) return undefined;
  if (o['role'] !== 'primary' && o['role'] !== 'standby') return undefined;
  if (typeof o['live'] !== 'boolean' || typeof o['since'] !== 'number') return undefined;
  const beat: LivenessBeat = { node: o['node'], role: o['role'], live: o['live'], since: o['since'] };
  if (o['gone'] === true) beat.gone = true;
  if (typeof o['epoch'] === 'number' && Number.isInteger(o['epoch'])) beat.epoch = o['epoch'];
  return beat;
}

export interface Failover {
  at: number;
  from: string | undefined;
  to: string;
  epoch: number | undefined;
  /** `primary silent`, `primary gone`, `owner heartbeat lost`, `ownership record gone`, `takeover`, … */
  reason: string;
}

export type AttachReply = { ok: true; role: 'primary' | 'standby' } | { ok: false; code: string; description: string };

export type PublishedMsg =
  | { type: 'publisherAttached'; publisher: PublisherHandle; reply: (r: AttachReply) => void }
  | { type: 'publisherDetached'; publisher: PublisherHandle }
  | { type: 'leaseAcquired'; attempt: number; lease: OwnershipLease }
  | { type: 'acquireFailed'; attempt: number; err: unknown }
  | { type: 'leaseRenewed'; lease: OwnershipLease }
  /** Renewals went unacknowledged for the lease's lifetime (EXPIRED_LOCALLY). */
  | { type: 'leaseLost'; lease: OwnershipLease; detail: string }
  /** Someone else wrote or deleted the key (CAS_FAILED, SUPERSEDED, DELETED). */
  | { type: 'leaseSuperseded'; lease: OwnershipLease; detail: string }
  | { type: 'peerBeat'; beat: LivenessBeat }
  /** The ownership watch: the record was deleted or expired, or names another owner. */
  | { type: 'ownerChanged'; owner: string | undefined }
  | { type: 'busDown' }
  | { type: 'busUp' }
  | { type: 'clockJump'; pausedMs: number }
  | { type: 'tick' }
  | { type: 'stop' };

/** What the actor does to the world; the driver (NodeMesh) implements it over the hub, the registry and the bus. */
export interface PublishedEffects {
  now(): number;
  busConnected(): boolean;
  acquire(takeover: boolean): Promise<OwnershipLease>;
  /** A CAS write that proves the lease is still ours (after a pause). */
  confirm(lease: OwnershipLease): Promise<void>;
  /** When the local publisher last sent media (ms, the effects' clock). */
  lastMediaAt(p: PublisherHandle): number;
  /** Make `p` the hub's publisher (the current one, if any, is evicted with `reason`); serving the standby empties the standby slot. */
  serve(p: PublisherHandle, reason: string): void;
  /** Keep `p` attached as the standby (frames dropped), or clear the slot. */
  setStandby(p: PublisherHandle | undefined): void;
  evict(p: PublisherHandle, reason: string): void;
  /** Hold the primary's frames back (after a pause, until the lease is confirmed). */
  hold(on: boolean): void;
  beat(b: LivenessBeat): void;
  /** The local primary was fenced and nothing replaces it here: viewers here should follow the new owner. */
  fenced(): void;
  promoted(f: Failover): void;
  published(): void;
  released(lease: OwnershipLease | undefined): void;
}

interface Local {
  p: PublisherHandle;
  since: number;
}
interface Peer {
  node: string;
  since: number;
  seenAt: number;
  live: boolean;
  epoch?: number;
}

export class PublishedStream {
  private stateName: PublishedStateName = 'idle';
  private primary: Local | undefined;
  private standby: Local | undefined;
  /** Waiting for the claim's outcome (reply once). */
  private pendingReply: ((r: AttachReply) => void) | undefined;
  private lease: OwnershipLease | undefined;
  /** The epoch of the lease that expired while the mesh was unreachable (state `local`). */
  private expiredEpoch: number | undefined;
  /** The lease our own takeover write (a new epoch here) is replacing: its loss is that write, not a fence. */
  private replacing: OwnershipLease | undefined;
  private attempt = 0;
  private inFlight = false;
  private claimStartedAt = 0;
  private claimOwner: string | undefined;
  private nextAttemptAt = 0;
  private readonly backoff = new Backoff();
  private lastJumpAt = -Infinity;
  private primarySilent = false;
  private remotePrimary: Peer | undefined;
  private remoteStandby: Peer | undefined;
  private promoteReason = '';

  constructor(
    readonly app: string,
    readonly stream: string,
    private readonly nodeId: string,
    private readonly policy: DuplicatePolicy,
    private readonly silenceMs: number,
    private readonly fx: PublishedEffects,
    private readonly log: Logger,
  ) {}

  get state(): PublishedStateName {
    return this.stateName;
  }

  get epoch(): number | undefined {
    return this.lease?.held ? this.lease.epoch : undefined;
  }

  /**
   * The epoch relay pulls are served for: the lease's, or, publishing locally after that lease expired while
   * the mesh was unreachable, still that lease's. Nodes that lost sight of the record pull this epoch from
   * the last owner they knew (docs/design.md, ownership and availability); a takeover elsewhere ends it here.
   */
  get servedEpoch(): number | undefined {
    return this.epoch ?? (this.stateName === 'local' ? this.expiredEpoch : undefined);
  }

  /** Holds the frames of `p` back? (the hub's input gate) */
  accepts(p: PublisherHandle): boolean {
    return this.primary?.p === p && this.stateName !== 'confirming';
  }

  /** For the stream API: primary and standby (node, since when) and the failovers seen here. */
  status(): Omit<PublishingStatus, 'failovers'> {
    const now = this.fx.now();
    const fresh = (x: Peer | undefined): Peer | undefined => (x && now - x.seenAt <= this.silenceMs * 2 ? x : undefined);
    const rp = fresh(this.remotePrimary);
    const rs = fresh(this.remoteStandby);
    return {
      state: this.stateName,
      epoch: this.epoch ?? null,
      primary: this.primary ? { node: this.nodeId, session: this.primary.p.id, since: this.primary.since, live: !this.primarySilent } : rp ? { node: rp.node, since: rp.since, live: rp.live } : null,
      standby: this.standby ? { node: this.nodeId, session: this.standby.p.id, since: this.standby.since } : rs ? { node: rs.node, since: rs.since } : null,
    };
  }

  /** The node stops: evict nothing (the sessions close with the node), hand back the lease to release. */
  stop(): OwnershipLease | undefined {
    const lease = this.lease;
    this.lease = undefined;
    this.attempt++;
    this.replyOnce({ ok: false, code: 'NetStream.Publish.Failed', description: 'node is stopping' });
    this.to('released');
    return lease;
  }

  handle(msg: PublishedMsg): void {
    if (this.stateName === 'released') {
      if (msg.type === 'publisherAttached') msg.reply({ ok: false, code: 'NetStream.Publish.Failed', description: 'stream is being released; publish again' });
      if (msg.type === 'leaseAcquired') void msg.lease.release();
      return;
    }
    switch (msg.type) {
      case 'publisherAttached':
        return this.onAttach(msg.publisher, msg.reply);
      case 'publisherDetached':
        return this.onDetach(msg.publisher);
      case 'leaseAcquired':
        return this.onAcquired(msg.attempt, msg.lease);
      case 'acquireFailed':
        return this.onAcquireFailed(msg.attempt, msg.err);
      case 'leaseRenewed':
        if (msg.lease === this.lease && this.stateName === 'confirming') {
          this.fx.hold(false);
          this.to('owning');
          this.log.info({ stream: this.key }, 'stream ownership confirmed after the pause');
        }
        return;
      case 'leaseLost':
        if (msg.lease !== this.lease || msg.lease === this.replacing) return;
        this.lease = undefined;
        if (this.stateName === 'confirming' || this.fx.now() - this.lastJumpAt < FREEZE_MS) return this.fence(`ownership lease lost after a pause (${msg.detail})`);
        // Availability: the mesh is unreachable, not taken over (a takeover fails our CAS or shows on the watch).
        this.log.warn({ stream: this.key, detail: msg.detail }, 'ownership lease expired while the mesh was unreachable; publishing locally until it returns');
        this.expiredEpoch = msg.lease.epoch;
        this.nextAttemptAt = this.fx.now();
        this.to('local');
        return;
      case 'leaseSuperseded':
        if (msg.lease !== this.lease || msg.lease === this.replacing) return;
        this.lease = undefined;
        return this.fence(`ownership moved to another node (${msg.detail})`);
      case 'peerBeat':
        return this.onBeat(msg.beat);
      case 'ownerChanged':
        if (this.stateName === 'standby' && msg.owner === undefined) return this.promote('ownership record gone');
        return;
      case 'busDown':
        return;
      case 'busUp':
        // Heartbeats were not delivered meanwhile: judge the owner on fresh ones.
        if (this.remotePrimary) this.remotePrimary.seenAt = this.fx.now();
        this.nextAttemptAt = this.fx.now();
        return;
      case 'clockJump':
        this.lastJumpAt = this.fx.now();
        if (this.remotePrimary) this.remotePrimary.seenAt = this.fx.now();
        if (this.stateName === 'owning' && this.lease) {
          this.log.warn({ stream: this.key, pausedMs: msg.pausedMs }, 'process was paused; re-confirming stream ownership before serving');
          this.to('confirming');
          this.fx.hold(true);
          this.confirm(this.lease);
        }
        return;
      case 'tick':
        return this.onTick();
      case 'stop':
        return this.release(undefined);
    }
  }

  private get key(): string {
    return `${this.app}/${this.stream}`;
  }

  private to(s: PublishedStateName): void {
    if (s !== this.stateName) this.log.debug({ stream: this.key, from: this.stateName, to: s }, 'published stream state');
    this.stateName = s;
  }

  private onAttach(p: PublisherHandle, reply: (r: AttachReply) => void): void {
    const now = this.fx.now();
    switch (this.stateName) {
      case 'idle':
        this.primary = { p, since: now };
        this.pendingReply = reply;
        this.claimStartedAt = now;
        this.claimOwner = undefined;
        this.to('claiming');
        this.acquire(this.policy === 'takeover');
        return;
      case 'claiming':
        // A claim is in flight for the first publisher: this one is a duplicate of a publisher not yet live.
        return reply(this.refusal(`${this.key} is being claimed by another publisher right now; publish again`));
      case 'owning':
      case 'confirming':
      case 'local': {
        const live = this.primary !== undefined && now - this.fx.lastMediaAt(this.primary.p) <= this.silenceMs;
        if (this.policy === 'reject' && live) return reply(this.refusal(`${this.key} is already being published`));
        if (this.policy === 'standby' && live) {
          if (this.standby || this.freshRemoteStandby()) return reply(this.thirdRefusal());
          this.standby = { p, since: now };
          this.fx.setStandby(p);
          this.log.info({ stream: this.key, standby: p.id }, 'second publisher kept as standby');
          return reply({ ok: true, role: 'standby' });
        }
        // takeover, or the current publisher is silent (a half-dead session): the new one takes over at once.
        const reason = live ? 'takeover by a newer publisher' : 'primary silent';
        this.takeLocal(p, reason);
        reply({ ok: true, role: 'primary' });
        return;
      }
      case 'standby':
        return reply(this.thirdRefusal());
    }
  }

  private freshRemoteStandby(): boolean {
    return this.remoteStandby !== undefined && this.fx.now() - this.remoteStandby.seenAt <= this.silenceMs;
  }

  private refusal(description: string): AttachReply {
    return { ok: false, code: 'NetStream.Publish.BadName', description };
  }

  private thirdRefusal(): AttachReply {
    const primary = this.primary ? this.nodeId : this.remotePrimary?.node;
    const standby = this.standby ? this.nodeId : this.remoteStandby?.node;
    return this.refusal(`${this.key} already has a primary publisher (node ${primary ?? '?'}) and a standby (node ${standby ?? '?'}); at most one standby per stream`);
  }

  /** A local publisher replaces the local primary now; the lease moves to a new epoch. */
  private takeLocal(p: PublisherHandle, reason: string): void {
    const old = this.primary;
    if (this.standby?.p === p) this.standby = undefined;
    this.primary = { p, since: this.fx.now() };
    this.primarySilent = false;
    this.fx.serve(p, reason === 'primary silent' ? 'primary went silent; a newer publisher took over' : 'taken over by a newer publisher');
    this.recordFailover(this.nodeId, reason, old ? undefined : this.remotePrimary?.node);
    if (this.stateName === 'confirming') this.fx.hold(false);
    // A new epoch: relays that pulled the old one re-read the owner. The watch may report our write (the old
    // lease superseded) before the write's own answer: that loss is ours, not a fence.
    if (this.lease) {
      this.replacing = this.lease;
      this.acquire(true);
    }
    if (this.stateName !== 'local') this.to('owning');
  }

  private recordFailover(to: string, reason: string, from?: string): void {
    const f: Failover = { at: this.fx.now(), from: from ?? this.nodeId, to, epoch: this.lease?.epoch, reason };
    this.fx.promoted(f);
  }

  private onDetach(p: PublisherHandle): void {
    if (this.standby?.p === p) {
      this.standby = undefined;
      this.fx.setStandby(undefined);
      if (this.stateName === 'standby') this.release(undefined);
      return;
    }
    if (this.primary?.p !== p) return;
    this.primary = undefined;
    if (this.stateName === 'claiming') return this.release(undefined);
    if (this.standby) return this.promote('primary gone');
    this.fx.beat({ node: this.nodeId, role: 'primary', live: false, gone: true, epoch: this.lease?.epoch, since: this.fx.now() });
    this.release(this.lease);
  }

  /** The standby (local) becomes primary: a takeover with a new epoch. */
  private promote(reason: string): void {
    if (!this.standby) return;
    const s = this.standby;
    if (this.primary) {
      // Local primary (silent or gone): switch the hub now, move the lease to a new epoch behind it.
      // The hub clears its standby slot itself when it serves the standby (keeping its warm GOP for viewers).
      this.standby = undefined;
      this.log.info({ stream: this.key, standby: s.p.id, reason }, 'standby promoted');
      this.takeLocal(s.p, reason);
      return;
    }
    if (this.stateName === 'owning' || this.stateName === 'confirming' || this.stateName === 'local') {
      // The local primary left; the lease is ours already.
      // The hub clears its standby slot itself when it serves the standby (keeping its warm GOP for viewers).
      this.standby = undefined;
      this.log.info({ stream: this.key, standby: s.p.id, reason }, 'standby promoted');
      this.takeLocal(s.p, reason);
      return;
    }
    // Remote primary: take the lease over first (a new epoch), then serve.
    if (this.inFlight || !this.fx.busConnected()) return;
    this.promoteReason = reason;
    this.claimStartedAt = this.fx.now();
    this.acquire(true);
  }

  private acquire(takeover: boolean): void {
    const n = ++this.attempt;
    this.inFlight = true;
    this.fx.acquire(takeover).then(
      (lease) => this.handle({ type: 'leaseAcquired', attempt: n, lease }),
      (err: unknown) => this.handle({ type: 'acquireFailed', attempt: n, err }),
    );
  }

  private confirm(lease: OwnershipLease): void {
    this.fx.confirm(lease).then(
      () => this.handle({ type: 'leaseRenewed', lease }),
      // A CAS failure arrives as leaseSuperseded from the lease itself; a bus error is retried on the next tick.
      () => undefined,
    );
  }

  private adopt(lease: OwnershipLease): void {
    this.lease = lease;
    this.expiredEpoch = undefined;
    this.replacing = undefined;
    this.backoff.reset();
  }

  private onAcquired(n: number, lease: OwnershipLease): void {
    if (n !== this.attempt) {
      void lease.release();
      return;
    }
    this.inFlight = false;
    switch (this.stateName) {
      case 'claiming': {
        if (!this.primary) return void lease.release();
        this.adopt(lease);
        this.fx.serve(this.primary.p, 'taken over by a newer publisher');
        if (this.claimOwner) this.recordFailover(this.nodeId, 'primary silent', this.claimOwner);
        this.to('owning');
        this.fx.published();
        this.replyOnce({ ok: true, role: 'primary' });
        return;
      }
      case 'standby': {
        if (!this.standby) return void lease.release();
        const s = this.standby;
        this.standby = undefined;
        this.adopt(lease);
        this.primary = { p: s.p, since: this.fx.now() };
        this.primarySilent = false;
        this.fx.serve(s.p, 'standby promoted');
        this.log.info({ stream: this.key, from: this.remotePrimary?.node, reason: this.promoteReason, epoch: lease.epoch }, 'standby promoted');
        this.recordFailover(this.nodeId, this.promoteReason, this.remotePrimary?.node);
        this.remotePrimary = undefined;
        this.to('owning');
        return;
      }
      case 'local':
        this.adopt(lease);
        this.log.info({ stream: this.key, failedAttempts: this.backoff.failures }, 'mesh back; stream ownership announced');
        this.to('owning');
        return;
      case 'owning':
      case 'confirming':
        // A new epoch after a local takeover/promotion.
        this.adopt(lease);
        return;
      default:
        void lease.release();
    }
  }

  private onAcquireFailed(n: number, err: unknown): void {
    if (n !== this.attempt) return;
    this.inFlight = false;
    this.replacing = undefined;
    const now = this.fx.now();
    if (err instanceof StreamOwnedError) {
      if (err.owner === this.nodeId) {
        // Our own record from before (a previous session here, or before the outage): nobody wrote it since.
        return this.acquire(true);
      }
      switch (this.stateName) {
        case 'claiming':
          if (this.policy === 'reject') {
            this.primary = undefined;
            this.replyOnce({ ok: false, code: 'NetStream.Publish.BadName', description: `${this.key} is already being published on node ${err.owner}` });
            return this.release(undefined);
          }
          // standby: is the owner's publisher live? Wait for its heartbeat (decided on tick).
          this.claimOwner = err.owner;
          return this.decideClaim();
        case 'local':
          if (this.primary) this.fx.evict(this.primary.p, `stream is owned by ${err.owner} in the mesh`);
          this.primary = undefined;
          return this.fence(`stream is owned by ${err.owner} in the mesh`);
        case 'standby':
          this.nextAttemptAt = now + this.backoff.next();
          return;
        default:
          return;
      }
    }
    // The mesh cannot be reached (or the write failed): serve locally and announce later.
    this.nextAttemptAt = now + this.backoff.next();
    switch (this.stateName) {
      case 'claiming':
        if (!this.primary) return this.release(undefined);
        this.log.warn({ stream: this.key, err: String(err) }, 'mesh unavailable; publishing locally without an ownership lease');
        this.fx.serve(this.primary.p, 'taken over by a newer publisher');
        this.to('local');
        this.replyOnce({ ok: true, role: 'primary' });
        return;
      case 'local':
        this.log.debug({ stream: this.key, err: String(err), failures: this.backoff.failures }, 'cannot announce stream ownership yet; will retry');
        return;
      default:
        return;
    }
  }

  /** A claim found another node's live record: standby if its publisher is live, else take over. */
  private decideClaim(): void {
    if (this.stateName !== 'claiming' || !this.primary || !this.claimOwner || this.inFlight) return;
    const now = this.fx.now();
    const rp = this.remotePrimary;
    if (rp && rp.node === this.claimOwner && rp.live && now - rp.seenAt <= this.silenceMs) {
      if (this.freshRemoteStandby() && this.remoteStandby!.node !== this.nodeId) {
        this.primary = undefined;
        this.replyOnce(this.thirdRefusal());
        return this.release(undefined);
      }
      this.standby = this.primary;
      this.primary = undefined;
      this.fx.setStandby(this.standby.p);
      this.log.info({ stream: this.key, owner: rp.node }, 'second publisher kept as standby (the owner node\'s publisher is live)');
      this.to('standby');
      this.replyOnce({ ok: true, role: 'standby' });
      return;
    }
    if ((rp && rp.node === this.claimOwner && !rp.live) || now - this.claimStartedAt >= CLAIM_WAIT_MS) this.acquire(true);
  }

  private replyOnce(r: AttachReply): void {
    const reply = this.pendingReply;
    this.pendingReply = undefined;
    reply?.(r);
  }

  private onBeat(b: LivenessBeat): void {
    if (b.node === this.nodeId) return;
    const now = this.fx.now();
    if (b.role === 'standby') {
      this.remoteStandby = { node: b.node, since: b.since, seenAt: now, live: true };
      return;
    }
    if (b.gone) {
      if (this.remotePrimary?.node === b.node) this.remotePrimary = undefined;
      else if (this.remotePrimary) return;
      this.remotePrimary = { node: b.node, since: b.since, seenAt: now, live: false };
    } else {
      this.remotePrimary = { node: b.node, since: b.since, seenAt: now, live: b.live, ...(b.epoch !== undefined ? { epoch: b.epoch } : {}) };
    }
    if (this.stateName === 'claiming') return this.decideClaim();
    if (this.stateName === 'standby' && !b.live) this.promote(b.gone ? 'primary gone' : 'primary silent');
  }

  private onTick(): void {
    const now = this.fx.now();
    switch (this.stateName) {
      case 'claiming':
        return this.decideClaim();
      case 'owning':
      case 'confirming':
      case 'local': {
        if (this.primary) {
          const silent = now - this.fx.lastMediaAt(this.primary.p) > this.silenceMs;
          if (silent && !this.primarySilent) this.log.info({ stream: this.key, session: this.primary.p.id }, 'primary publisher went silent');
          this.primarySilent = silent;
          if (silent && this.standby && now - this.fx.lastMediaAt(this.standby.p) <= this.silenceMs) return this.promote('primary silent');
        }
        if (this.stateName === 'confirming' && this.lease && now >= this.nextAttemptAt) {
          this.nextAttemptAt = now + this.backoff.next();
          this.confirm(this.lease);
        }
        if (this.stateName === 'local' && !this.inFlight && now >= this.nextAttemptAt && this.fx.busConnected()) this.acquire(false);
        if (this.lease && this.stateName !== 'local') this.fx.beat({ node: this.nodeId, role: 'primary', live: !this.primarySilent, epoch: this.lease.epoch, since: this.primary?.since ?? now });
        return;
      }
      case 'standby': {
        if (!this.standby) return;
        this.fx.beat({ node: this.nodeId, role: 'standby', live: true, since: this.standby.since });
        const rp = this.remotePrimary;
        if (!this.fx.busConnected() || this.inFlight || now < this.nextAttemptAt) return;
        if (!rp || now - rp.seenAt > this.silenceMs) return this.promote('owner heartbeat lost');
        if (!rp.live) return this.promote('primary silent');
        return;
      }
      default:
        return;
    }
  }

  /** The local primary must not be served any more (another node owns the stream, or our view is stale). */
  private fence(reason: string): void {
    this.fx.hold(false);
    if (this.primary) {
      this.log.warn({ stream: this.key, reason }, 'ownership lost; dropping the publisher');
      this.fx.evict(this.primary.p, reason);
      this.primary = undefined;
    }
    if (this.standby) {
      // Another node's publisher is primary now: ours stays the standby.
      this.remotePrimary = undefined;
      this.remotePrimary = { node: '?', since: this.fx.now(), seenAt: this.fx.now(), live: true };
      this.to('standby');
      return;
    }
    this.fx.fenced();
    this.release(undefined);
  }

  private release(lease: OwnershipLease | undefined): void {
    if (this.stateName === 'released') return;
    this.attempt++;
    this.inFlight = false;
    if (this.stateName === 'confirming') this.fx.hold(false);
    this.replyOnce({ ok: false, code: 'NetStream.Publish.Failed', description: `${this.key}: the publisher left before the stream was claimed` });
    this.to('released');
    const held = lease ?? this.lease;
    this.lease = undefined;
    this.fx.released(held);
  }
}
