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
  | { type: 'connected'; seq: number; client: RtmpClient; parent: string; epoch: StreamEpoch; early: RtmpMessage[] }
  /** `fenced`: the parent refused the epoch asked for (it serves another, or none). */
  | { type: 'connectFailed'; seq: number; reason: string; parent?: string; fenced?: boolean }
  /** `fenced`: the parent's EPOCH_FENCE_CODE status (why it stopped serving our epoch), when it sent one before closing. */
  | { type: 'upstreamClosed'; client: RtmpClient; reason: string; fenced: string | undefined }
  | { type: 'tick' }
  | { type: 'reclaimed'; seq: number; lost: RelayLease; lease: RelayLease | undefined; error?: string }
  | { type: 'evicted'; reason: string }
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

  constructor(
    readonly hub: StreamHub,
    private readonly ctx: RelayContext,
    private readonly onStopped: (a: RelayActor) => void,
  ) {
    this.log = ctx.log.child({ app: hub.app, stream: hub.stream, component: 'relay' });
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
      lastFrameAgoMs: this.lastFrameAt ? Date.now() - this.lastFrameAt : undefined,
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
        this.onConnected(msg.client, msg.parent, msg.epoch, msg.early);
        return;
      case 'connectFailed':
        if (this.state.kind !== 'connecting' || msg.seq !== this.state.seq) return;
        // A fenced owner is asked again after the owner record is read again (it may own a newer epoch); a fenced relay parent is avoided.
        if (msg.parent && !(msg.fenced && msg.parent === this.lastOwner)) this.avoid.set(msg.parent, Date.now() + AVOID_MS);
        if (msg.reason === 'no owner') {
          // Not a failure: nobody publishes the stream (yet, or any more). The ownership watch wakes us.
          if (this.state.kind === 'connecting') this.log.debug('relay waiting for a stream owner');
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
        if (msg.fenced === undefined) this.avoid.set(this.state.parent, Date.now() + AVOID_MS);
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
    const now = Date.now();
    if (this.hub.consumerCount === 0) {
      this.lingerSince ??= now;
      if (now - this.lingerSince >= this.ctx.lingerMs) {
        this.stop('no viewers after linger');
        return;
      }
    } else {
      this.lingerSince = undefined;
    }
    switch (this.state.kind) {
      case 'pulling': {
        const silentFor = now - Math.max(this.lastFrameAt, this.state.since);
        const parentView = this.ctx.membership.get(this.state.parent);
        // Membership is the control plane's view: when NATS is unreachable every peer looks dead. A parent whose
        // media still arrives is alive; leave it only once it has also gone quiet.
        if (parentView && parentView.state === 'dead' && silentFor > DEAD_PARENT_SILENCE_MS) {
          this.avoid.set(this.state.parent, now + AVOID_MS);
          this.reparent('parent node is dead');
          return;
        }
        if (this.ownerLive && silentFor > this.ctx.stallMs) {
          this.avoid.set(this.state.parent, now + AVOID_MS);
          this.reparent(`parent stalled (${silentFor} ms without media)`);
          return;
        }
        // Still pulling, but the claim is gone: parent choice elsewhere would no longer count this relay.
        if (this.lease && !this.lease.held && !this.reclaim.inFlight && now >= this.reclaim.retryAt) this.claimAgain(this.lease, this.state.parent);
        return;
      }
      case 'backoff':
        if (now >= this.state.until) this.connect();
        return;
      case 'awaitingOwner':
        // Ownership changes arrive on the watch; this poll only covers a missed one.
        if (now % 2000 < TICK_MS) this.connect();
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

  private claimAgain(lost: RelayLease, parent: string): void {
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
      const delay = this.reclaimRetry.next();
      this.reclaim.retryAt = Date.now() + delay;
      const d = this.reclaimFailures.failure();
      if (d.level === 'warn') this.log.warn({ err: msg.error, retryInMs: delay, failures: d.streak, suppressed: d.suppressed }, 'relay claim lost; claiming again failed, will retry');
      else this.log.debug({ err: msg.error, retryInMs: delay, failures: d.streak }, 'relay claim lost; claiming again failed, will retry');
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
    this.log.info({ parent: this.state.parent, lostReason: msg.lost.lostReason, failedAttempts: failed }, 'relay claim lost while pulling; claimed again');
  }

  /** A pull attempt failed: wait a jittered, growing delay before the next one. */
  private retryLater(reason: string, parent: string | undefined): void {
    const delay = this.pullRetry.next();
    this.logPullFailure(reason, parent, delay);
    this.state = { kind: 'backoff', until: Date.now() + delay };
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
    this.state = { kind: 'connecting', seq, since: Date.now() };
    void this.openUpstream(seq).then(
      (r) => this.handle(r),
      (err: unknown) => this.handle({ type: 'connectFailed', seq, reason: err instanceof Error ? err.message : String(err) }),
    );
  }

  /** Chooses a parent, claims our relay key, and opens the pull. Runs outside the actor; reports back by message. */
  private async openUpstream(seq: number): Promise<RelayMessage> {
    const { app, stream } = this.hub;
    const info = await this.ctx.ownership.lookup(app, stream);
    if (!info || info.record.owner === this.ctx.nodeId) {
      this.ownerLive = false;
      return { type: 'connectFailed', seq, reason: 'no owner' };
    }
    this.ownerLive = true;
    const owner = info.record.owner;
    this.lastOwner = owner;
    const epoch: StreamEpoch = { owner, epoch: info.record.epoch };
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
    const now = Date.now();
    const alive = new Set<string>();
    for (const id of this.ctx.membership.aliveIds()) if ((this.avoid.get(id) ?? 0) < now) alive.add(id);
    // A live claim of a node not heard from yet (this node just started) counts too: leaving it out would
    // undercount its parent's children and attach this relay above the fan-out cap. Suspect and dead nodes do not.
    for (const c of claims) if (this.ctx.membership.get(c.claim.node) === undefined && (this.avoid.get(c.claim.node) ?? 0) < now) alive.add(c.claim.node);
    const parent =
      chooseRelayParent({ streamToken: encodeStreamToken(app, stream), selfId: this.ctx.nodeId, owner, claims: claims.map((c) => c.claim), fanout: this.ctx.fanout, alive }) ?? owner;
    const base = parent === owner ? info.record.rtmp : claims.find((c) => c.claim.node === parent)?.claim.rtmp;
    if (!base) return { type: 'connectFailed', seq, reason: `no address for parent ${parent}`, parent };
    if (this.lease?.held) await this.lease.update({ parent });
    else this.lease = await this.ctx.relays.claim(app, stream, { parent, rtmp: this.ctx.selfRtmp });
    const url = `${base}/${encodeURIComponent(app)}/${encodeURIComponent(stream)}`;
    let client: RtmpClient;
    try {
      client = await RtmpClient.connect(url, {
        timeoutMs: 3000,
        connectExtras: { meshcast: { ...signCredential(this.ctx.secret, this.ctx.nodeId, { app, stream, ...epoch, to: parent }) } },
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
    return { type: 'connected', seq, client, parent, epoch, early };
  }

  private onConnected(client: RtmpClient, parent: string, epoch: StreamEpoch, early: RtmpMessage[]): void {
    this.upstreams++;
    this.pullRetry.reset();
    const failedAttempts = this.pullFailures.success();
    this.state = { kind: 'pulling', parent, client, since: Date.now(), epoch };
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
      .append({ type: 'relayStarted', at: Date.now(), app: this.hub.app, stream: this.hub.stream, node: this.ctx.nodeId, parent })
      .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append relayStarted'));
  }

  private onFrame(m: RtmpMessage): void {
    this.lastFrameAt = Date.now();
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
      .append({ type: 'relayStopped', at: Date.now(), app: this.hub.app, stream: this.hub.stream, node: this.ctx.nodeId, reason })
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
