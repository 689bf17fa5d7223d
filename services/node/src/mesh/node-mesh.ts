/**
 * NodeMesh: what turns a lone MediaNode into a mesh member. It announces the node
 * (membership + load), takes ownership leases for streams published here (fencing the
 * publisher when a lease is lost), and runs a RelayActor for every remote stream watched
 * here. Over NATS when configured, else over an in-process bus with the same semantics.
 */
import type { FastifyInstance } from 'fastify';
import {
  BusNoRespondersError,
  BusTimeoutError,
  BusUnavailableError,
  Membership,
  MemoryBusNetwork,
  MeshEvents,
  OwnershipRegistry,
  RelayClaims,
  StreamOwnedError,
  StreamTokenError,
  StreamNameError,
  Backoff,
  FailureLogLimiter,
  connectNatsBus,
  encodeStreamToken,
  type Bus,
  type OwnershipLease,
} from '@meshcast/mesh';
import { appConfig, type NodeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { PlayAdmission, PublishAdmission, Refusal, StreamRequest } from '../media/host.ts';
import type { PublisherHandle, StreamHub } from '../media/stream-hub.ts';
import type { MediaNode, MeshBinding } from '../media-node.ts';
import { RelayActor } from './relay-actor.ts';
import { RelayPullFence } from './relay-pull-fence.ts';
import { epochRefusal, sameEpoch, type StreamEpoch } from './mesh-credential.ts';
import { startNodeControl, type NodeControl } from './node-control.ts';
import { natsAuthOptions } from '../auth/nats-auth.ts';
import { NoPlaybackCapacityError, ViewerRouter } from './viewer-router.ts';

/** The bus every embedded node of this process shares (tests run many nodes in one process). */
let processNetwork: MemoryBusNetwork | undefined;
export function embeddedNetwork(): MemoryBusNetwork {
  return (processNetwork ??= new MemoryBusNetwork());
}

interface HeldLease {
  lease: OwnershipLease;
  publisher: PublisherHandle;
}

/** The mesh cannot be reached right now (closed, reconnecting, or not answering): publish locally and announce later. */
function meshUnreachable(err: unknown): boolean {
  return err instanceof BusUnavailableError || err instanceof BusTimeoutError || err instanceof BusNoRespondersError;
}

/** An event-loop gap this long means the process was paused (SIGSTOP, VM freeze): it cannot know what the mesh did meanwhile. */
const FREEZE_MS = 1500;
/** While the bus is down, a stream waiting to be announced checks for it this often (a local check, not a retry). */
const BUS_WAIT_MS = 500;

export class NodeMesh implements MeshBinding {
  private readonly leases = new Map<string, HeldLease>();
  private readonly relays = new Map<string, RelayActor>();
  private unwatchOwners: (() => void) | undefined;
  private readonly log: Logger;
  private stopped = false;
  readonly router: ViewerRouter;
  /** Operator RPCs (kick, drain, stats) for meshctl. */
  private control: NodeControl | undefined;
  private lastTickAt = Date.now();
  private lastFreezeEndedAt = 0;
  private readonly freezeTimer: NodeJS.Timeout;
  /** Publishers whose ownership is being re-confirmed after a pause: their frames are held back meanwhile. */
  private readonly unconfirmed = new Set<string>();
  /** The relay pulls this node serves, by the epoch each was admitted for (the epoch fence, parent side). */
  private readonly pullFence: RelayPullFence;

  private constructor(
    private readonly node: MediaNode,
    private readonly cfg: NodeConfig,
    readonly bus: Bus,
    readonly membership: Membership,
    readonly ownership: OwnershipRegistry,
    readonly relayClaims: RelayClaims,
    readonly events: MeshEvents,
    log: Logger,
  ) {
    this.log = log.child({ component: 'mesh' });
    this.router = new ViewerRouter(cfg.node_id, bus, membership, () => node.admitViewerHere(), cfg.mesh.placement_load_factor, this.log);
    this.pullFence = new RelayPullFence(node.sessions, this.log);
    this.freezeTimer = setInterval(() => this.checkPaused(), 250);
    this.freezeTimer.unref();
  }

  static async start(node: MediaNode, network?: MemoryBusNetwork): Promise<NodeMesh> {
    const cfg = node.config;
    const m = cfg.mesh;
    const log = node.log;
    const bus =
      m.nats.length > 0
        ? await connectNatsBus({ servers: m.nats, name: cfg.node_id, prefix: m.subject_prefix, logger: log, pingIntervalMs: 5000, replicas: Math.max(1, Math.floor(m.nats_replicas)), ...natsAuthOptions(m) })
        : (network ?? embeddedNetwork()).connect(cfg.node_id);
    const events = new MeshEvents(bus, log);
    const selfRtmp = `rtmp://${cfg.public_host}:${node.rtmpPort}`;
    const membership = new Membership({
      bus,
      self: { id: cfg.node_id, roles: cfg.roles, addresses: { rtmp: selfRtmp, http: `http://${cfg.public_host}:${node.httpPort}` }, capacity: m.capacity },
      load: () => node.loadSample(),
      heartbeatMs: m.heartbeat_ms,
      suspectMs: m.suspect_ms,
      deadMs: m.dead_ms,
      events,
      logger: log,
    });
    const ownership = new OwnershipRegistry({ bus, nodeId: cfg.node_id, maxAgeMs: m.lease_ms, renewMs: m.renew_ms, events, logger: log });
    const relayClaims = new RelayClaims({ bus, nodeId: cfg.node_id, maxAgeMs: m.lease_ms, renewMs: m.renew_ms, logger: log });
    const mesh = new NodeMesh(node, cfg, bus, membership, ownership, relayClaims, events, log);
    await membership.start();
    // meshctl drain takes the node's one drain path (the admin API's POST /api/v1/drain takes it too).
    mesh.control = startNodeControl({ bus, nodeId: cfg.node_id, node, log, drain: (reason) => node.drain(reason) });
    // KV may be briefly unavailable (NATS restarting): the node still serves local streams meanwhile.
    await Promise.all([ownership.start(), relayClaims.start()]).catch((err: unknown) => log.warn({ err: String(err) }, 'mesh registries not ready yet; will retry on use'));
    mesh.unwatchOwners = ownership.watch((c) => mesh.onOwnerChange(c.app, c.stream, c.kind === 'owner' && c.record ? { owner: c.record.owner, epoch: c.record.epoch } : undefined));
    return mesh;
  }

  get selfRtmp(): string {
    return `rtmp://${this.cfg.public_host}:${this.node.rtmpPort}`;
  }

  private onOwnerChange(app: string, stream: string, epoch: StreamEpoch | undefined): void {
    const hub = this.node.registry.get(app, stream);
    if (!hub) return;
    const owner = epoch?.owner;
    const relay = this.relays.get(hub.key);
    if (relay) {
      relay.handle({ type: 'ownerChanged', owner: epoch });
      return;
    }
    // Viewers waiting here for a stream that just appeared elsewhere: start pulling it.
    if (owner && owner !== this.cfg.node_id && !hub.isLive && hub.sinkCount > 0) this.ensureRelay(hub).handle({ type: 'start' });
  }

  async claimPublish(req: StreamRequest, hub: StreamHub, publisher: PublisherHandle): Promise<PublishAdmission> {
    const app = appConfig(this.cfg, req.app);
    try {
      encodeStreamToken(req.app, req.stream);
    } catch (err) {
      if (err instanceof StreamNameError || err instanceof StreamTokenError) return { ok: false, code: 'NetStream.Publish.BadName', description: err.message };
      throw err;
    }
    let lease: OwnershipLease;
    try {
      lease = await this.ownership.acquire(req.app, req.stream, { rtmp: this.selfRtmp }, { takeover: app.duplicate_publish !== 'reject' });
    } catch (err) {
      if (err instanceof StreamOwnedError) {
        return { ok: false, code: 'NetStream.Publish.BadName', description: `${req.app}/${req.stream} is already being published on node ${err.owner}` };
      }
      if (meshUnreachable(err)) {
        // Cut off from the mesh (bus down, or NATS not answering before the client notices): publish locally
        // (viewers here keep working) and announce when the bus returns.
        this.log.warn({ app: req.app, stream: req.stream, err: String(err) }, 'mesh unavailable; publishing locally without an ownership lease');
        this.retryAnnounce(req, hub, publisher, { takeover: app.duplicate_publish !== 'reject' });
        return { ok: true, hub };
      }
      throw err;
    }
    this.holdLease(hub, publisher, lease);
    this.events
      .append({ type: 'published', at: Date.now(), app: req.app, stream: req.stream, node: this.cfg.node_id })
      .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append published'));
    return { ok: true, hub };
  }

  /**
   * Notices that the process was paused, either on the timer or on the first published frame after the pause
   * (after SIGCONT the event loop handles socket data before timers). Every held lease is then re-confirmed by a
   * CAS write before its publisher's frames flow again: another node may have taken the stream over meanwhile,
   * and frames that waited in our socket during the pause must not be served by a stale owner.
   */
  private checkPaused(): void {
    const now = Date.now();
    if (now - this.lastTickAt > FREEZE_MS) {
      this.lastFreezeEndedAt = now;
      this.log.warn({ pausedMs: now - this.lastTickAt, leases: this.leases.size }, 'process was paused; re-confirming stream ownership before serving');
      for (const held of this.leases.values()) this.reconfirm(held);
    }
    this.lastTickAt = now;
  }

  private reconfirm(held: HeldLease): void {
    const id = held.publisher.id;
    if (this.unconfirmed.has(id)) return;
    this.unconfirmed.add(id);
    const retry = new Backoff();
    const attempt = (): void => {
      if (this.stopped || !held.lease.held || this.leases.get(id) !== held) {
        this.unconfirmed.delete(id);
        return;
      }
      held.lease.updateTracks(held.lease.record.tracks).then(
        () => {
          this.unconfirmed.delete(id);
          this.log.info({ stream: held.lease.key }, 'stream ownership confirmed after the pause');
        },
        // A CAS failure loses the lease (onLost fences the publisher); a bus error is retried, jittered so the
        // streams of a node that woke up do not all retry in lockstep.
        () => setTimeout(attempt, retry.next()).unref(),
      );
    };
    attempt();
  }

  private holdLease(hub: StreamHub, publisher: PublisherHandle, lease: OwnershipLease): void {
    const held: HeldLease = { lease, publisher };
    this.leases.set(publisher.id, held);
    // Relays admitted for an earlier epoch (of this node or another) pull again, asking for this one.
    this.fenceRelayPullsOf(hub.app, hub.stream, { owner: this.cfg.node_id, epoch: lease.epoch }, 'new ownership lease here');
    const gate = (): boolean => {
      if (hub.publisher !== publisher) return true;
      this.checkPaused();
      return !this.unconfirmed.has(publisher.id);
    };
    hub.inputGate = gate;
    lease.onLost((reason) => {
      if (this.leases.get(publisher.id) === held) this.leases.delete(publisher.id);
      this.unconfirmed.delete(publisher.id);
      if (hub.publisher !== publisher) return;
      if (reason.code === 'EXPIRED_LOCALLY' && !this.wasPaused() && !this.stopped) {
        // Renewals went unanswered while this process ran and the publisher kept sending here: the mesh is
        // unreachable, not taken over (a takeover would have failed our CAS or shown on the watch). Keep serving
        // locally and announce again when the mesh answers; a record written meanwhile by another node wins.
        this.log.warn({ app: hub.app, stream: hub.stream, detail: reason.message }, 'ownership lease expired while the mesh was unreachable; publishing locally until it returns');
        this.retryAnnounce({ app: hub.app, stream: hub.stream }, hub, publisher, { takeover: false });
        return;
      }
      // Fence: another node owns the stream now (or we could not renew, or were paused); never serve it as a stale owner.
      this.log.warn({ app: hub.app, stream: hub.stream, reason: reason.code, detail: reason.message }, 'ownership lease lost; dropping the publisher');
      this.fenceRelayPullsOf(hub.app, hub.stream, undefined, `ownership lease lost (${reason.code})`);
      publisher.evict(`ownership lease lost (${reason.code})`);
      if (hub.inputGate === gate) hub.inputGate = undefined;
      // Viewers here stay: play the stream from whoever owns it now (the watch may not report it, e.g. after a pause).
      if (!this.stopped && !hub.isLive && hub.sinkCount > 0) this.ensureRelay(hub).handle({ type: 'start' });
    });
  }

  /** True while the process is (or just was) paused: its view of the mesh is stale, so it must fence rather than carry on. */
  private wasPaused(): boolean {
    const now = Date.now();
    return now - this.lastTickAt > FREEZE_MS || now - this.lastFreezeEndedAt < FREEZE_MS;
  }

  /**
   * Announce a stream published here without a lease, once the mesh answers. `takeover: false` (re-announcing after
   * a lease expired during an outage) only takes a free or stale record, or our own: a live record of another node
   * means the stream moved meanwhile, and the local publisher is fenced. One attempt at a time.
   */
  private retryAnnounce(req: Pick<StreamRequest, 'app' | 'stream'>, hub: StreamHub, publisher: PublisherHandle, opts: { takeover: boolean }): void {
    // Failed announces back off with jitter (the nodes that lost NATS together do not retry together); waiting
    // for the bus to come back is only a local check.
    const retry = new Backoff();
    const failures = new FailureLogLimiter();
    const later = (ms: number): void => void setTimeout(tick, ms).unref();
    const tick = (): void => {
      if (this.stopped || hub.publisher !== publisher) return;
      if (this.bus.status !== 'connected') return later(BUS_WAIT_MS);
      const attempt = (takeover: boolean): Promise<OwnershipLease> => this.ownership.acquire(req.app, req.stream, { rtmp: this.selfRtmp }, { takeover });
      attempt(opts.takeover)
        .catch((err: unknown) => {
          // Our own record from before the outage, not yet stale: nobody wrote the key since, so taking it is safe.
          if (err instanceof StreamOwnedError && err.owner === this.cfg.node_id) return attempt(true);
          throw err;
        })
        .then(
          (lease) => {
            if (hub.publisher !== publisher || this.stopped) {
              void lease.release();
              return;
            }
            this.log.info({ app: req.app, stream: req.stream, failedAttempts: failures.success() }, 'mesh back; stream ownership announced');
            this.holdLease(hub, publisher, lease);
          },
          (err: unknown) => {
            if (err instanceof StreamOwnedError) {
              if (hub.publisher === publisher) publisher.evict(`stream is owned by ${err.owner} in the mesh`);
              return;
            }
            const delay = retry.next();
            const d = failures.failure();
            const fields = { app: req.app, stream: req.stream, err: String(err), retryInMs: delay, failures: d.streak };
            if (d.level === 'warn') this.log.warn({ ...fields, suppressed: d.suppressed }, 'cannot announce stream ownership yet; will retry');
            else this.log.debug(fields, 'cannot announce stream ownership yet; will retry');
            later(delay);
          },
        );
    };
    later(BUS_WAIT_MS);
  }

  releasePublish(hub: StreamHub, publisher: PublisherHandle): void {
    this.unconfirmed.delete(publisher.id);
    const held = this.leases.get(publisher.id);
    if (!held) return;
    this.leases.delete(publisher.id);
    held.lease.release().catch((err: unknown) => this.log.debug({ err: String(err) }, 'lease release failed'));
    this.events
      .append({ type: 'unpublished', at: Date.now(), app: hub.app, stream: hub.stream, node: this.cfg.node_id })
      .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append unpublished'));
  }

  async resolvePlay(req: StreamRequest, hub: StreamHub): Promise<PlayAdmission> {
    if (hub.isLive) return { ok: true, hub };
    try {
      encodeStreamToken(req.app, req.stream);
    } catch (err) {
      if (err instanceof StreamNameError || err instanceof StreamTokenError) return { ok: false, code: 'NetStream.Play.StreamNotFound', description: err.message };
      throw err;
    }
    const app = appConfig(this.cfg, req.app);
    if (app.play_not_found === 'reject' && !this.relays.has(hub.key)) {
      const owner = await this.ownership.lookup(req.app, req.stream).catch(() => null);
      if (!owner) {
        if (hub.idle) hub.emit('idle');
        return { ok: false, code: 'NetStream.Play.StreamNotFound', description: `${req.app}/${req.stream} is not being published anywhere in the mesh` };
      }
    }
    this.ensureRelay(hub).handle({ type: 'start' });
    return { ok: true, hub };
  }

  /**
   * The ownership epoch this node serves for a stream: its own lease's when a publisher here owns it,
   * else the epoch its relay pulls (or last pulled). Undefined when it serves none it could vouch for.
   */
  private servingEpoch(hub: StreamHub): StreamEpoch | undefined {
    const publisher = hub.publisher;
    if (publisher && publisher.kind !== 'relay') {
      const held = this.leases.get(publisher.id);
      return held?.lease.held ? { owner: this.cfg.node_id, epoch: held.lease.epoch } : undefined;
    }
    return this.relays.get(hub.key)?.epoch;
  }

  /**
   * The epoch fence, parent side: a relay's pull is served only if this node owns the epoch the relay
   * asks for, or relays that same epoch. A relay here that has not pulled any epoch yet takes the pull
   * and fences it once its own pull shows which epoch it serves.
   */
  admitRelayPull(req: StreamRequest): Refusal | undefined {
    const pull = req.meshPull;
    if (!pull) return epochRefusal(this.cfg.node_id, req.app, req.stream, { kind: 'no-epoch' });
    if (pull.app !== req.app || pull.stream !== req.stream) return epochRefusal(this.cfg.node_id, req.app, req.stream, { kind: 'other-stream', asked: pull });
    const asked: StreamEpoch = { owner: pull.owner, epoch: pull.epoch };
    const hub = this.node.registry.get(req.app, req.stream);
    const serving = hub ? this.servingEpoch(hub) : undefined;
    const provisional = serving === undefined && hub !== undefined && pull.owner !== this.cfg.node_id && this.relays.has(hub.key);
    if (!sameEpoch(serving, asked) && !provisional) {
      return epochRefusal(this.cfg.node_id, req.app, req.stream, serving ? { kind: 'other-epoch', asked, serving } : { kind: 'not-serving', asked });
    }
    this.pullFence.admitted(req.app, req.stream, req.sessionId, asked);
    return undefined;
  }

  /**
   * Closes at once the relay pulls of app/stream admitted for any epoch other than `keep` (all of them
   * when `keep` is undefined). The ownership code calls it when this node's lease is lost or superseded
   * and when it takes a new one; the relay actor calls it when its own pull moves to another epoch.
   */
  fenceRelayPullsOf(app: string, stream: string, keep: StreamEpoch | undefined, why: string): number {
    return this.pullFence.fence(app, stream, keep, why);
  }

  /** Where placement wants this viewer, when configured to redirect and that is another node (else undefined: serve here). */
  async redirectPlay(req: StreamRequest): Promise<string | undefined> {
    if (!this.cfg.mesh.rtmp_redirect || req.protocol !== 'rtmp' || req.meshPeer) return undefined;
    try {
      const r = await this.router.route(req.app, req.stream);
      if (r.node === this.cfg.node_id) return undefined;
      const q = req.params.toString();
      return q ? `${r.rtmp}?${q}` : r.rtmp;
    } catch (err) {
      if (err instanceof NoPlaybackCapacityError) return undefined;
      throw err;
    }
  }

  /** A better ingest node for a publisher this node will not take, as an RTMP URL. */
  redirectPublish(req: StreamRequest): string | undefined {
    const n = this.router.bestIngest(req.app, req.stream);
    if (!n) return undefined;
    return `${n.heartbeat.addresses.rtmp}/${encodeURIComponent(req.app)}/${encodeURIComponent(req.stream)}`;
  }

  private ensureRelay(hub: StreamHub): RelayActor {
    let relay = this.relays.get(hub.key);
    if (relay) return relay;
    relay = new RelayActor(
      hub,
      {
        nodeId: this.cfg.node_id,
        selfRtmp: this.selfRtmp,
        fanout: this.cfg.mesh.relay_fanout,
        lingerMs: this.cfg.mesh.relay_linger_ms,
        stallMs: this.cfg.mesh.relay_stall_ms,
        secret: this.cfg.mesh.mesh_secret,
        ownership: this.ownership,
        relays: this.relayClaims,
        membership: this.membership,
        events: this.events,
        log: this.log,
        onEpoch: (epoch) => this.fenceRelayPullsOf(hub.app, hub.stream, epoch, 'this relay now pulls another epoch'),
      },
      (a) => {
        if (this.relays.get(hub.key) === a) this.relays.delete(hub.key);
      },
    );
    this.relays.set(hub.key, relay);
    return relay;
  }

  playEnded(_hub: StreamHub): void {
    // Relays notice an empty hub on their own tick and linger before releasing.
  }

  relayStatus(): ReturnType<RelayActor['status']>[] {
    return [...this.relays.values()].map((r) => r.status());
  }

  nodeInfo(): Record<string, unknown> {
    return {
      bus: { kind: this.cfg.mesh.nats.length > 0 ? 'nats' : 'embedded', status: this.bus.status },
      leases: this.leases.size,
      relays: this.relays.size,
    };
  }

  /** The route API, on both listeners (viewers ask the public one; operators and tools may ask either). */
  private registerRouteApi(app: FastifyInstance): void {
    app.get<{ Params: { app: string; stream: string } }>('/api/v1/route/:app/:stream', async (req, reply) => {
      try {
        const r = await this.router.route(req.params.app, req.params.stream);
        return r;
      } catch (err) {
        if (err instanceof NoPlaybackCapacityError) return reply.code(503).send({ error: err.message });
        if (err instanceof StreamNameError || err instanceof StreamTokenError) return reply.code(400).send({ error: err.message });
        throw err;
      }
    });
  }

  /** Anyone's: the route API and `/play` redirects. */
  registerPublicRoutes(app: FastifyInstance): void {
    this.registerRouteApi(app);
    app.get<{ Params: { app: string; file: string } }>('/play/:app/:file', async (req, reply) => {
      const { app: appName, file } = req.params;
      const kind = file.endsWith('.flv') ? 'flv' : file.endsWith('.m3u8') ? 'hls' : undefined;
      if (!kind) return reply.code(404).send({ error: 'play URLs end in .flv or .m3u8' });
      const stream = file.slice(0, kind === 'flv' ? -4 : -5);
      try {
        const r = await this.router.route(appName, stream);
        const q = (req.raw.url ?? '').split('?')[1];
        const target = kind === 'flv' ? r.flv : r.hls;
        return reply.redirect(q ? `${target}?${q}` : target, 302);
      } catch (err) {
        if (err instanceof NoPlaybackCapacityError) return reply.code(503).send({ error: err.message });
        if (err instanceof StreamNameError || err instanceof StreamTokenError) return reply.code(400).send({ error: err.message });
        throw err;
      }
    });
  }

  /** The operator's (admin listener): relays here, the member table, owners, relay trees. */
  registerAdminRoutes(app: FastifyInstance): void {
    this.registerRouteApi(app);
    app.get('/api/v1/relays', async () => ({ relays: this.relayStatus() }));
    app.get('/api/v1/mesh/nodes', async () => ({
      nodes: this.membership.table().map((n) => ({ id: n.id, state: n.state, self: n.self, ...n.heartbeat })),
    }));
    app.get('/api/v1/mesh/streams', async () => ({
      streams: (await this.ownership.list()).map((o) => ({ app: o.app, stream: o.stream, ...o.record, revision: o.revision, from: o.from })),
    }));
    app.get<{ Params: { app: string; stream: string } }>('/api/v1/mesh/relays/:app/:stream', async (req) => ({
      relays: (await this.relayClaims.list(req.params.app, req.params.stream)).map((r) => ({ ...r.claim, revision: r.revision })),
    }));
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.freezeTimer);
    for (const r of [...this.relays.values()]) r.handle({ type: 'stop', reason: 'node stopping' });
    this.unwatchOwners?.();
    this.control?.stop();
    this.router.stop();
    const leases = [...this.leases.values()];
    this.leases.clear();
    await Promise.allSettled(leases.map((l) => l.lease.release()));
    await this.membership.stop({ bye: true, reason: 'drain' }).catch(() => undefined);
    await Promise.allSettled([this.ownership.close(), this.relayClaims.close()]);
    await this.bus.close().catch(() => undefined);
  }
}
