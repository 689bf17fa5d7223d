/**
 * RelayActor: one per remote stream watched on this node. It claims the stream's relay key,
 * pulls the stream over RTMP from its parent (the owner, or another relay when the owner's
 * fan-out is full) and republishes it into the local StreamHub, which all local viewers
 * (RTMP, HTTP-FLV, child relays) share.
 *
 * It re-parents without closing viewers when the owner changes, the parent dies or the
 * parent stalls; it lingers after the last viewer leaves, then releases its claim.
 *
 * Epoch fence, child side: each pull names the ownership epoch (owner node + lease epoch) that
 * the owner record showed, signed in the mesh credential. A parent that does not serve that
 * epoch refuses the pull, or closes it later when its own epoch moves, with EPOCH_FENCE_CODE;
 * the relay then re-reads the owner record and pulls again (backing off if refused again),
 * keeping its viewers. When its own pull moves to another epoch it fences its children in turn
 * (`onEpoch`), so no viewer below it gets an older epoch's frames after a newer one's.
 *
 * Cut off from NATS (docs/design.md, ownership and availability): the membership then calls every peer dead
 * and no owner can be read, so neither is asked. A quiet parent is left after `stallMs` and the relay pulls
 * again, directly, from its last parent or the last owner it knew, asking for the same epoch (the parent
 * still fences a wrong one). Viewers that got no media for `graceMs` — with the bus down, or with an owner
 * known but not reachable — are closed so their players re-route; viewers of a stream nobody publishes wait
 * (the ownership watch wakes the relay; it does not poll NATS). A record that expired without a release is
 * still a parent candidate for `graceMs` (OwnershipRegistry.lastExpired): its owner may only be cut off.
 */
import { RtmpClient, RtmpClientError } from '../client/rtmp-client.ts';
import { decodeAmf0, asAmfObject, type AmfValue, type RtmpMessage } from '@meshcast/proto';
import { Backoff, FailureLogLimiter, chooseRelayParent, encodeStreamToken, type BackoffOptions, type Membership, type MeshEvents, type OwnershipRegistry, type RelayClaims, type RelayLease } from '@meshcast/mesh';
import type { Logger } from '../log.ts';
import type { PublisherHandle, StreamHub } from '../media/stream-hub.ts';
import { EPOCH_FENCE_CODE, describeEpoch, sameEpoch, signCredential, type StreamEpoch } from './mesh-credential.ts';

export interface RelayContext {
  nodeId: string;
  selfRtmp: string;
  fanout: number;
  lingerMs: number;
  stallMs: number;
  secret: string;
  ownership: OwnershipRegistry;
  relays: RelayClaims;
  membership: Membership;
  events: MeshEvents;
  log: Logger;
  /** Retry pacing (tests inject their random source); defaults to the shared backoff's. */
  backoff?: BackoffOptions;
  /** This relay now pulls `epoch`: pulls of its children admitted for another epoch must be closed. */
  onEpoch?: (epoch: StreamEpoch) => void;
  /** `mesh.partition_grace_ms`: how long viewers wait for media the mesh cannot confirm before they are closed. */
  graceMs: number;
  /** Whether this node's bus (NATS) is connected: without it, membership and ownership say nothing. */
  busConnected: () => boolean;
  /** The clock (tests inject one); defaults to Date.now. */
  now?: () => number;
}

/** Where a pull goes: a parent node, its RTMP base URL and the ownership epoch asked for. */
interface PullTarget {
  node: string;
  base: string;
  epoch: StreamEpoch;
}

type RelayState =
  | { kind: 'idle' }
  | { kind: 'awaitingOwner' }
  | { kind: 'connecting'; seq: number; since: number }
  | { kind: 'pulling'; parent: string; client: RtmpClient; since: number; epoch: StreamEpoch }
  | { kind: 'backoff'; until: number }
  | { kind: 'stopped' };

export type RelayMessage =
  | { type: 'start' }
  | { type: 'ownerChanged'; owner: StreamEpoch | undefined }
  | { type: 'connected'; seq: number; client: RtmpClient; target: PullTarget; early: RtmpMessage[] }
  /** `fenced`: the parent refused the epoch asked for (it serves another, or none). */
  | { type: 'connectFailed'; seq: number; reason: string; parent?: string; fenced?: boolean }
  /** `fenced`: the parent's EPOCH_FENCE_CODE status (why it stopped serving our epoch), when it sent one before closing. */
  | { type: 'upstreamClosed'; client: RtmpClient; reason: string; fenced: string | undefined }
  | { type: 'tick' }
  /** `lost`: the claim that was lost, or undefined when none could be written as the pull started. */
  | { type: 'reclaimed'; seq: number; lost: RelayLease | undefined; lease: RelayLease | undefined; error?: string }
  | { type: 'evicted'; reason: string }
  /** This node's bus came back: a relay waiting for an owner reads it again (the watch may have missed a change). */
  | { type: 'busUp' }
  | { type: 'busDown' }
  | { type: 'stop'; reason: string };

const TICK_MS = 250;
const AVOID_MS = 5000;
/**
 * Listing the relay claims is only an optimisation (which parent to pull from); nats.js
 * `kv.keys()` can stall for its 30 s idle heartbeat while claims change under it (every relay
 * of a stream rewrites its claim when the owner dies). Past this, pull from the owner.
 */
const LIST_CLAIMS_MS = 500;
/** A parent the membership calls dead is left once no media came from it for this long. */
const DEAD_PARENT_SILENCE_MS = 500;
/** A connect attempt (KV lookups, RTMP connect and play) that has not reported back by then is abandoned. */
const CONNECT_WATCHDOG_MS = 12_000;

export interface RelayStatus {
  app: string;
  stream: string;
  state: RelayState['kind'];
  parent: string | undefined;
  /** The ownership epoch pulled (or last pulled), as `epoch N of node`. */
  epoch: string | undefined;
  upstreams: number;
  lastFrameAgoMs: number | undefined;
  viewers: number;
}

export class RelayActor {
  private state: RelayState = { kind: 'idle' };
  private lease: RelayLease | undefined;
  private attached = false;
  private seq = 0;
  private lastFrameAt = 0;
  private lingerSince: number | undefined;
  private ownerLive = false;
  /** The epoch of the current pull, kept after it ends until another one starts. */
  private lastEpoch: StreamEpoch | undefined;
  private upstreams = 0;
  private readonly avoid = new Map<string, number>();
  private reclaim: { inFlight: boolean; retryAt: number } = { inFlight: false, retryAt: 0 };
  /**
   * Failed pulls (parent unreachable, refused, no address) and failed re-claims are retried after a jittered,
   * growing delay, so the relays of a stream that all lost one parent do not retry it in lockstep, and a parent
   * that keeps refusing is asked less and less often. Their failures are logged at warn once, then rarely.
   */
  private readonly pullRetry: Backoff;
  private readonly pullFailures = new FailureLogLimiter();
  private readonly reclaimRetry: Backoff;
  private readonly reclaimFailures = new FailureLogLimiter();
  private readonly listFailures = new FailureLogLimiter();
  private readonly timer: NodeJS.Timeout;
  private readonly log: Logger;
  private readonly handle_: PublisherHandle;
  private readonly now: () => number;
  /** The last pull that started (parent, address, epoch) and the last owner read: what a relay cut off from NATS pulls again. */
  private lastParent: PullTarget | undefined;
  private lastOwnerTarget: PullTarget | undefined;
  private directAttempts = 0;
  /** Since when this relay's viewers have wanted media (reset while it has none): the start of their wait. */
  private wantedSince: number;
  private waitingLogged = false;
  private expiredOwnerLogged = false;

  constructor(
    readonly hub: StreamHub,
    private readonly ctx: RelayContext,
    private readonly onStopped: (a: RelayActor) => void,
  ) {
    this.log = ctx.log.child({ app: hub.app, stream: hub.stream, component: 'relay' });
    this.now = ctx.now ?? Date.now;
    this.wantedSince = this.now();
    this.pullRetry = new Backoff(ctx.backoff);
    this.reclaimRetry = new Backoff(ctx.backoff);
    this.handle_ = { id: `relay:${ctx.nodeId}`, kind: 'relay', evict: (reason) => this.handle({ type: 'evicted', reason }) };
    this.timer = setInterval(() => this.handle({ type: 'tick' }), TICK_MS);
    this.timer.unref();
  }

  get publisher(): PublisherHandle {
    return this.handle_;
  }

  /** The ownership epoch this relay serves its children: the one it pulls, or last pulled while it re-parents. */
  get epoch(): StreamEpoch | undefined {
    return this.lastEpoch;
  }

  status(): RelayStatus {
    return {
      app: this.hub.app,
      stream: this.hub.stream,
      state: this.state.kind,
      parent: this.state.kind === 'pulling' ? this.state.parent : undefined,
      epoch: this.lastEpoch ? describeEpoch(this.lastEpoch) : undefined,
      upstreams: this.upstreams,
      lastFrameAgoMs: this.lastFrameAt ? this.now() - this.lastFrameAt : undefined,
      viewers: this.hub.sinkCount,
    };
  }

  handle(msg: RelayMessage): void {
    if (this.state.kind === 'stopped') {
      if (msg.type === 'connected') msg.client.close('relay stopped');
      if (msg.type === 'reclaimed') msg.lease?.release().catch((err: unknown) => this.log.debug({ err: String(err) }, 'relay claim release failed'));
      return;
    }
    switch (msg.type) {
      case 'start':
        if (this.state.kind === 'idle') this.connect();
        return;
      case 'ownerChanged': {
        const owner = msg.owner?.owner;
        this.ownerLive = owner !== undefined && owner !== this.ctx.nodeId;
        if (!this.ownerLive) return;
        // Our parent is the old owner, or the owner under another epoch (or we have none): move now. A relay
        // parent re-parents itself, then fences us.
        if (this.state.kind === 'pulling' && this.isOwnerParent() && !sameEpoch(this.state.epoch, msg.owner)) this.reparent('stream owner changed');
        else if (this.state.kind === 'awaitingOwner' || this.state.kind === 'backoff') this.connect();
        // An attempt under way may have looked up the old owner: if it fails, try again at once rather than after the backoff.
        else if (this.state.kind === 'connecting') this.ownerMovedWhileConnecting = true;
        return;
      }
      case 'connected':
        if (this.state.kind !== 'connecting' || msg.seq !== this.state.seq) {
          msg.client.close('superseded');
          return;
        }
        this.onConnected(msg.client, msg.target, msg.early);
        return;
      case 'connectFailed':
        if (this.state.kind !== 'connecting' || msg.seq !== this.state.seq) return;
        // A fenced owner is asked again after the owner record is read again (it may own a newer epoch); a fenced relay parent is avoided.
        if (msg.parent && !(msg.fenced && msg.parent === this.lastOwner)) this.avoid.set(msg.parent, this.now() + AVOID_MS);
        if (msg.reason === 'no owner') {
          // Not a failure: nobody publishes the stream (yet, or any more). The ownership watch wakes us; no polling.
          if (!this.waitingLogged) this.log.info('relay waiting for a publisher of this stream (woken by the ownership watch)');
          else this.log.debug('relay waiting for a stream owner');
          this.waitingLogged = true;
          this.state = { kind: 'awaitingOwner' };
          return;
        }
        if (this.ownerMovedWhileConnecting) {
          this.log.info({ reason: msg.reason, parent: msg.parent }, 'relay upstream connect failed; owner moved meanwhile, retrying at once');
          this.connect();
          return;
        }
        this.retryLater(msg.reason, msg.parent);
        return;
      case 'upstreamClosed':
        if (this.state.kind !== 'pulling' || this.state.client !== msg.client) return;
        // A parent that fenced our epoch is alive and will serve the current one: read the owner again and ask anew.
        if (msg.fenced === undefined) this.avoid.set(this.state.parent, this.now() + AVOID_MS);
        this.reparent(msg.fenced !== undefined ? `parent fenced our epoch: ${msg.fenced}` : `upstream closed: ${msg.reason}`);
        return;
      case 'tick':
        this.onTick();
        return;
      case 'reclaimed':
        this.onReclaimed(msg);
        return;
      case 'evicted':
        // A local publisher took the hub over: this node is now the source.
        this.attached = false;
        this.stop(`local publisher took over (${msg.reason})`);
        return;
      case 'busUp':
        if (this.state.kind === 'awaitingOwner' || this.state.kind === 'backoff') this.connect();
        return;
      case 'busDown':
        if (this.state.kind === 'pulling') this.log.info({ parent: this.state.parent }, 'bus down; keeping the pull from the current parent while its media flows');
        return;
      case 'stop':
        this.stop(msg.reason);
        return;
    }
  }

  private isOwnerParent(): boolean {
    return this.state.kind === 'pulling' && this.lastOwner === this.state.parent;
  }

  private lastOwner: string | undefined;

  private onTick(): void {
    const now = this.now();
    if (this.hub.consumerCount === 0) {
      this.lingerSince ??= now;
      if (now - this.lingerSince >= this.ctx.lingerMs) {
        this.stop('no viewers after linger');
        return;
      }
    } else {
      this.lingerSince = undefined;
    }
    const bus = this.ctx.busConnected();
    if (this.hub.sinkCount === 0) this.wantedSince = now;
    else this.closeStrandedViewers(now, bus);
    switch (this.state.kind) {
      case 'pulling': {
        const silentFor = now - Math.max(this.lastFrameAt, this.state.since);
        const parentView = this.ctx.membership.get(this.state.parent);
        // Membership is the control plane's view: when NATS is unreachable every peer looks dead, so it says
        // nothing then. A parent whose media still arrives is alive; leave it only once it has also gone quiet.
        if (bus && parentView && parentView.state === 'dead' && silentFor > DEAD_PARENT_SILENCE_MS) {
          this.avoid.set(this.state.parent, now + AVOID_MS);
          this.reparent('parent node is dead');
          return;
        }
        // Without the bus nobody can say whether the owner is live: a quiet parent is asked again (directly).
        if ((this.ownerLive || !bus) && silentFor > this.ctx.stallMs) {
          if (bus) this.avoid.set(this.state.parent, now + AVOID_MS);
          this.reparent(`parent stalled (${silentFor} ms without media)`);
          return;
        }
        // Still pulling, but the claim is gone: parent choice elsewhere would no longer count this relay.
        // Or it was never written (the relays bucket had no leader when the pull started): claim now.
        if (bus && !this.lease?.held && !this.reclaim.inFlight && now >= this.reclaim.retryAt) this.claimAgain(this.lease, this.state.parent);
        return;
      }
      case 'backoff':
        if (now >= this.state.until) this.connect();
        return;
      case 'awaitingOwner':
        // Ownership changes arrive on the watch (and a bus reconnect reads the owner again): nothing to poll.
        return;
      case 'connecting':
        // A hung step (a KV call that never answers) must not leave the relay stuck: start over.
        if (now - this.state.since > CONNECT_WATCHDOG_MS) {
          this.logPullFailure(`connect attempt hung for ${now - this.state.since} ms`, undefined, 0);
          this.connect();
        }
        return;
      case 'idle':
      case 'stopped':
        return;
    }
  }

  /**
   * Viewers that got no media for `graceMs` while the mesh cannot confirm the stream (bus down, or an owner
   * known but not reachable) are closed, so their players ask the route API again and go elsewhere. Viewers
   * of a stream nobody publishes (bus up, no owner) keep waiting for it.
   */
  private closeStrandedViewers(now: number, bus: boolean): void {
    if (bus && !this.ownerLive) return;
    const waited = now - Math.max(this.lastFrameAt, this.wantedSince);
    if (waited < this.ctx.graceMs) return;
    const why = bus ? 'the stream owner cannot be reached' : 'this node is cut off from the mesh bus';
    const closed = this.hub.evictViewers(`no media for ${waited} ms: ${why}`);
    this.wantedSince = now;
    this.log.warn({ viewers: closed, waitedMs: waited, graceMs: this.ctx.graceMs, busConnected: bus }, 'closed viewers the relay could not feed; they re-route');
  }

  private claimAgain(lost: RelayLease | undefined, parent: string): void {
    const seq = this.seq;
    this.reclaim.inFlight = true;
    this.ctx.relays.claim(this.hub.app, this.hub.stream, { parent, rtmp: this.ctx.selfRtmp }).then(
      (lease) => this.handle({ type: 'reclaimed', seq, lost, lease }),
      (err: unknown) => this.handle({ type: 'reclaimed', seq, lost, lease: undefined, error: err instanceof Error ? err.message : String(err) }),
    );
  }

  private onReclaimed(msg: Extract<RelayMessage, { type: 'reclaimed' }>): void {
    this.reclaim.inFlight = false;
    if (!msg.lease) {
      this.claimFailed(msg.error, 'relay claim lost; claiming again failed, will retry');
      return;
    }
    this.reclaimRetry.reset();
    const failed = this.reclaimFailures.success();
    // A re-parent since then made (or is making) its own claim: this one is not needed.
    if (this.state.kind !== 'pulling' || msg.seq !== this.seq || this.lease !== msg.lost) {
      msg.lease.release().catch((err: unknown) => this.log.debug({ err: String(err) }, 'relay claim release failed'));
      return;
    }
    this.lease = msg.lease;
    if (msg.lost) this.log.info({ parent: this.state.parent, lostReason: msg.lost.lostReason, failedAttempts: failed }, 'relay claim lost while pulling; claimed again');
    else this.log.info({ parent: this.state.parent, failedAttempts: failed }, 'relay claimed (it could not be written when the pull started)');
  }

  /** A claim write failed: the tick claims again after a jittered, growing delay; warned once, then rarely. */
  private claimFailed(err: string | undefined, what: string): void {
    const delay = this.reclaimRetry.next();
    this.reclaim.retryAt = this.now() + delay;
    const d = this.reclaimFailures.failure();
    if (d.level === 'warn') this.log.warn({ err, retryInMs: delay, failures: d.streak, suppressed: d.suppressed }, what);
    else this.log.debug({ err, retryInMs: delay, failures: d.streak }, what);
  }

  /** A pull attempt failed: wait a jittered, growing delay before the next one. */
  private retryLater(reason: string, parent: string | undefined): void {
    const delay = this.pullRetry.next();
    this.logPullFailure(reason, parent, delay);
    this.state = { kind: 'backoff', until: this.now() + delay };
  }

  private logPullFailure(reason: string, parent: string | undefined, retryInMs: number): void {
    const d = this.pullFailures.failure();
    const fields = { reason, parent, retryInMs, failures: d.streak };
    if (d.level === 'warn') this.log.warn({ ...fields, suppressed: d.suppressed }, 'relay upstream connect failed; retrying');
    else this.log.debug(fields, 'relay upstream connect failed; retrying');
  }

  private reparent(reason: string): void {
    if (this.state.kind === 'pulling') {
      const c = this.state.client;
      this.log.info({ parent: this.state.parent, reason }, 'relay re-parenting');
      c.removeAllListeners('close');
      c.close(reason);
    }
    this.connect();
  }

  private ownerMovedWhileConnecting = false;

  private connect(): void {
    this.ownerMovedWhileConnecting = false;
    const seq = ++this.seq;
    this.state = { kind: 'connecting', seq, since: this.now() };
    void this.openUpstream(seq).then(
      (r) => this.handle(r),
      (err: unknown) => this.handle({ type: 'connectFailed', seq, reason: err instanceof Error ? err.message : String(err) }),
    );
  }

  /** Chooses a parent, claims our relay key, and opens the pull. Runs outside the actor; reports back by message. */
  private async openUpstream(seq: number): Promise<RelayMessage> {
    const { app, stream } = this.hub;
    if (!this.ctx.busConnected()) return this.pullDirect(seq);
    let info = await this.ctx.ownership.lookup(app, stream);
    if (!info) {
      // No record: nobody publishes it, or its owner is cut off from NATS and its record expired. The latter
      // is still tried for graceMs (the owner fences a wrong epoch; its viewers and ours keep the stream).
      const expired = this.ctx.ownership.lastExpired(app, stream);
      if (expired && expired.record.owner !== this.ctx.nodeId) {
        if (!this.expiredOwnerLogged) this.log.info({ owner: expired.record.owner, epoch: expired.record.epoch }, 'ownership record expired; pulling from the last known owner');
        this.expiredOwnerLogged = true;
        info = expired;
      }
    }
    if (!info || info.record.owner === this.ctx.nodeId) {
      this.ownerLive = false;
      return { type: 'connectFailed', seq, reason: 'no owner' };
    }
    this.ownerLive = true;
    const owner = info.record.owner;
    this.lastOwner = owner;
    const epoch: StreamEpoch = { owner, epoch: info.record.epoch };
    this.lastOwnerTarget = { node: owner, base: info.record.rtmp, epoch };
    const claims = await withTimeout(this.ctx.relays.list(app, stream), LIST_CLAIMS_MS).then(
      (list) => {
        this.listFailures.success();
        return list;
      },
      (err: unknown) => {
        const d = this.listFailures.failure();
        const fields = { err: err instanceof Error ? err.message : String(err), failures: d.streak };
        if (d.level === 'warn') this.log.warn({ ...fields, suppressed: d.suppressed }, 'cannot list relay claims in time; pulling from the owner');
        else this.log.debug(fields, 'cannot list relay claims in time; pulling from the owner');
        return [];
      },
    );
    const now = this.now();
    const alive = new Set<string>();
    for (const id of this.ctx.membership.aliveIds()) if ((this.avoid.get(id) ?? 0) < now) alive.add(id);
    // A live claim of a node not heard from yet (this node just started) counts too: leaving it out would
    // undercount its parent's children and attach this relay above the fan-out cap. Suspect and dead nodes do not.
    for (const c of claims) if (this.ctx.membership.get(c.claim.node) === undefined && (this.avoid.get(c.claim.node) ?? 0) < now) alive.add(c.claim.node);
    const parent =
      chooseRelayParent({ streamToken: encodeStreamToken(app, stream), selfId: this.ctx.nodeId, owner, claims: claims.map((c) => c.claim), fanout: this.ctx.fanout, alive }) ?? owner;
    const base = parent === owner ? info.record.rtmp : claims.find((c) => c.claim.node === parent)?.claim.rtmp;
    if (!base) return { type: 'connectFailed', seq, reason: `no address for parent ${parent}`, parent };
    // The claim only tells other relays where they may pull from; viewers must not wait for it. While the
    // relays bucket has no leader (seconds after a NATS server died) pull anyway; the tick claims later.
    try {
      if (this.lease?.held) await this.lease.update({ parent });
      else this.lease = await this.ctx.relays.claim(app, stream, { parent, rtmp: this.ctx.selfRtmp });
    } catch (err) {
      if (!this.lease?.held) this.lease = undefined;
      this.claimFailed(err instanceof Error ? err.message : String(err), 'cannot write the relay claim; pulling anyway, claiming later');
    }
    return this.pull(seq, { node: parent, base, epoch });
  }

  /**
   * Cut off from NATS: no owner to read, no claim to write. Pull again from the last parent, else the last owner
   * this relay read (alternating when both fail), asking for the epoch it pulled from them.
   */
  private async pullDirect(seq: number): Promise<RelayMessage> {
    const expired = this.ctx.ownership.lastExpired(this.hub.app, this.hub.stream);
    const fromWatch: PullTarget | undefined =
      expired && expired.record.owner !== this.ctx.nodeId ? { node: expired.record.owner, base: expired.record.rtmp, epoch: { owner: expired.record.owner, epoch: expired.record.epoch } } : undefined;
    const targets: PullTarget[] = [];
    for (const t of [this.lastParent, this.lastOwnerTarget, fromWatch]) {
      if (t && !targets.some((x) => x.node === t.node && sameEpoch(x.epoch, t.epoch))) targets.push(t);
    }
    if (targets.length === 0) return { type: 'connectFailed', seq, reason: 'cut off from the mesh bus and no parent known yet' };
    const target = targets[this.directAttempts++ % targets.length]!;
    return this.pull(seq, target);
  }

  /** Opens the RTMP pull from one parent, for one epoch (signed in the mesh credential). */
  private async pull(seq: number, target: PullTarget): Promise<RelayMessage> {
    const { app, stream } = this.hub;
    const parent = target.node;
    const url = `${target.base}/${encodeURIComponent(app)}/${encodeURIComponent(stream)}`;
    // The credential names the parent it is for (`to`) and the epoch asked for.
    const pullFor = { app, stream, ...target.epoch, to: parent };
    let client: RtmpClient;
    try {
      client = await RtmpClient.connect(url, {
        timeoutMs: 3000,
        connectExtras: { meshcast: { ...signCredential(this.ctx.secret, this.ctx.nodeId, pullFor) } },
      });
    } catch (err) {
      // Unreachable, or refused ("mesh pull refused: …"): avoid this parent for a while and back off.
      return { type: 'connectFailed', seq, reason: err instanceof Error ? err.message : String(err), parent };
    }
    // The parent sends headers and its GOP right after Play.Start, before play() resolves: keep them.
    const early: RtmpMessage[] = [];
    client.onFrame = (m) => early.push(m);
    try {
      await client.play(stream, 3000);
    } catch (err) {
      client.close();
      const fenced = err instanceof RtmpClientError && err.code === EPOCH_FENCE_CODE;
      return { type: 'connectFailed', seq, reason: err instanceof Error ? err.message : String(err), parent, fenced };
    }
    return { type: 'connected', seq, client, target, early };
  }

  private onConnected(client: RtmpClient, target: PullTarget, early: RtmpMessage[]): void {
    const { node: parent, epoch } = target;
    this.upstreams++;
    this.pullRetry.reset();
    this.directAttempts = 0;
    this.lastParent = target;
    const failedAttempts = this.pullFailures.success();
    this.state = { kind: 'pulling', parent, client, since: this.now(), epoch };
    const previous = this.lastEpoch;
    this.lastEpoch = epoch;
    // Children admitted for another epoch (or before this relay knew one) must not get this one's frames after theirs.
    this.ctx.onEpoch?.(epoch);
    if (!this.attached) {
      this.hub.attachPublisher(this.handle_);
      this.attached = true;
    } else {
      this.hub.restartSession(this.handle_);
    }
    for (const m of early) this.onFrame(m);
    client.onFrame = (m) => this.onFrame(m);
    let fenced: string | undefined;
    client.on('status', (s: { code?: unknown; description?: unknown }) => {
      if (s.code === EPOCH_FENCE_CODE) fenced = String(s.description ?? s.code);
    });
    client.once('close', (reason: string) => this.handle({ type: 'upstreamClosed', client, reason, fenced }));
    this.log.info(
      { parent, epoch: describeEpoch(epoch), ...(previous && !sameEpoch(previous, epoch) ? { previousEpoch: describeEpoch(previous) } : {}), ...(failedAttempts > 0 ? { failedAttempts } : {}) },
      'relay pulling',
    );
    this.ctx.events
      .append({ type: 'relayStarted', at: this.now(), app: this.hub.app, stream: this.hub.stream, node: this.ctx.nodeId, parent })
      .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append relayStarted'));
  }

  private onFrame(m: RtmpMessage): void {
    this.lastFrameAt = this.now();
    if (m.type === 18) {
      const values = decodeAmf0(m.payload);
      if (values instanceof Error) return;
      if (values[0] === '|RtmpSampleAccess') return;
      if (values[0] === 'onMetaData') {
        const meta = asAmfObject(values[1] as AmfValue);
        if (meta) this.hub.setMetadata(meta);
        return;
      }
      this.hub.ingest(18, m.timestamp, m.payload);
      return;
    }
    if (m.type === 8 || m.type === 9) this.hub.ingest(m.type, m.timestamp, m.payload);
  }

  private stop(reason: string): void {
    if (this.state.kind === 'stopped') return;
    const prev = this.state;
    this.state = { kind: 'stopped' };
    clearInterval(this.timer);
    if (prev.kind === 'pulling') {
      prev.client.removeAllListeners('close');
      prev.client.close(reason);
    }
    if (this.attached) {
      this.attached = false;
      this.hub.detachPublisher(this.handle_);
    }
    const lease = this.lease;
    this.lease = undefined;
    lease?.release().catch((err: unknown) => this.log.debug({ err: String(err) }, 'relay claim release failed'));
    this.log.info({ reason }, 'relay stopped');
    this.ctx.events
      .append({ type: 'relayStopped', at: this.now(), app: this.hub.app, stream: this.hub.stream, node: this.ctx.nodeId, reason })
      .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append relayStopped'));
    this.onStopped(this);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    t.unref();
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (err: unknown) => {
        clearTimeout(t);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
