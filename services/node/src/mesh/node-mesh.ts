/**
 * NodeMesh: what turns a lone MediaNode into a mesh member. It announces the node
 * (membership + load), takes ownership leases for streams published here (fencing the
 * publisher when a lease is lost), and runs a RelayActor for every remote stream watched
 * here. Over NATS when configured, else over an in-process bus with the same semantics.
 */
import type { FastifyInstance } from 'fastify';
import {
  Membership,
  MemoryBusNetwork,
  MeshEvents,
  OwnershipRegistry,
  RelayClaims,
  SealedBus,
  StreamTokenError,
  StreamNameError,
  connectNatsBus,
  encodeStreamToken,
  type Bus,
  type BusSubscription,
  type OwnershipLease,
} from '@meshcast/mesh';
import { appConfig, type NodeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { PlayAdmission, PublishAdmission, Refusal, StreamRequest } from '../media/host.ts';
import type { PublisherHandle, StreamHub } from '../media/stream-hub.ts';
import type { MediaNode, MeshBinding } from '../media-node.ts';
import { RelayActor } from './relay-actor.ts';
import { FREEZE_MS, PublishedStream, TICK_MS, decodeLivenessBeat, livenessSubject, type AttachReply, type PublishedEffects } from './published-stream.ts';
import { RelayPullFence } from './relay-pull-fence.ts';
import { epochRefusal, sameEpoch, type StreamEpoch } from './mesh-credential.ts';
import { startNodeControl, type NodeControl } from './node-control.ts';
import { FailoverHistory, type PublishingStatus } from './publishing-status.ts';
import { natsAuthOptions } from '../auth/nats-auth.ts';
import { NoPlaybackCapacityError, ViewerRouter } from './viewer-router.ts';

/** The bus every embedded node of this process shares (tests run many nodes in one process). */
let processNetwork: MemoryBusNetwork | undefined;
export function embeddedNetwork(): MemoryBusNetwork {
  return (processNetwork ??= new MemoryBusNetwork());
}


export class NodeMesh implements MeshBinding {
  /** One PublishedStream actor per stream key with a publisher (primary or standby) on this node. */
  private readonly published = new Map<string, PublishedStream>();
  private readonly failoverHistory = new FailoverHistory();
  private readonly relays = new Map<string, RelayActor>();
  private unwatchOwners: (() => void) | undefined;
  private readonly log: Logger;
  private stopped = false;
  readonly router: ViewerRouter;
  /** Operator RPCs (kick, drain, stats) for meshctl. */
  private control: NodeControl | undefined;
  private lastTickAt = Date.now();
  private readonly tickTimer: NodeJS.Timeout;
  private unwatchBus: (() => void) | undefined;
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
    this.tickTimer = setInterval(() => this.tick(), TICK_MS);
    this.tickTimer.unref();
    this.unwatchBus = bus.onStatus((status) => {
      const msg = status === 'connected' ? ({ type: 'busUp' } as const) : ({ type: 'busDown' } as const);
      for (const a of [...this.published.values()]) a.handle(msg);
      for (const r of [...this.relays.values()]) r.handle(msg);
    });
  }

  static async start(node: MediaNode, network?: MemoryBusNetwork): Promise<NodeMesh> {
    const cfg = node.config;
    const m = cfg.mesh;
    const log = node.log;
    const bus =
      m.nats.length > 0
        ? // Everything this node says or reads on NATS is sealed with the mesh secret (sealed-bus.ts); the in-process bus has no outsiders.
          new SealedBus(await connectNatsBus({ servers: m.nats, name: cfg.node_id, prefix: m.subject_prefix, logger: log, pingIntervalMs: 5000, replicas: Math.max(1, Math.floor(m.nats_replicas)), ...natsAuthOptions(m) }), { secret: m.mesh_secret, logger: log })
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
    // keepExpiredMs: an owner cut off from NATS stays a parent candidate that long after its record expired (relay-actor.ts).
    const ownership = new OwnershipRegistry({ bus, nodeId: cfg.node_id, maxAgeMs: m.lease_ms, renewMs: m.renew_ms, keepExpiredMs: m.partition_grace_ms, events, logger: log });
    const relayClaims = new RelayClaims({ bus, nodeId: cfg.node_id, maxAgeMs: m.lease_ms, renewMs: m.renew_ms, logger: log });
    const mesh = new NodeMesh(node, cfg, bus, membership, ownership, relayClaims, events, log);
    await membership.start();
    // meshctl drain takes the node's one drain path (the admin API's POST /api/v1/drain takes it too).
    mesh.control = startNodeControl({ bus, nodeId: cfg.node_id, node, log, drain: (reason) => node.drain(reason), publishing: (app, stream) => mesh.publishedStatus(app, stream) });
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
    try {
      encodeStreamToken(req.app, req.stream);
    } catch (err) {
      if (err instanceof StreamNameError || err instanceof StreamTokenError) return { ok: false, code: 'NetStream.Publish.BadName', description: err.message };
      throw err;
    }
    const actor = this.publishedStream(hub);
    const reply = await new Promise<AttachReply>((resolve) => actor.handle({ type: 'publisherAttached', publisher, reply: resolve }));
    if (!reply.ok) return { ok: false, code: reply.code, description: reply.description };
    return { ok: true, hub, ...(reply.role === 'standby' ? { standby: true } : {}) };
  }

  /** The stream's PublishedStream actor, created with its liveness subscription on first use. */
  private publishedStream(hub: StreamHub): PublishedStream {
    const existing = this.published.get(hub.key);
    if (existing && existing.state !== 'released') return existing;
    const app = appConfig(this.cfg, hub.app);
    const subject = livenessSubject(this.bus.names.prefix, hub.app, hub.stream);
    let lastEpoch: number | undefined;
    const fx: PublishedEffects = {
      now: () => Date.now(),
      busConnected: () => this.bus.status === 'connected',
      acquire: async (takeover) => {
        const lease = await this.ownership.acquire(hub.app, hub.stream, { rtmp: this.selfRtmp }, { takeover });
        lease.onLost((reason) => {
          if (reason.code === 'EXPIRED_LOCALLY') actor.handle({ type: 'leaseLost', lease, detail: reason.message });
          else actor.handle({ type: 'leaseSuperseded', lease, detail: `${reason.code}: ${reason.message}` });
        });
        return lease;
      },
      confirm: (lease) => lease.updateTracks(lease.record.tracks),
      lastMediaAt: (p) => hub.lastMediaAt(p),
      serve: (p, reason) => {
        if (hub.publisher !== p) hub.attachPublisher(p, reason);
        hub.inputGate = gate;
      },
      setStandby: (p) => hub.setStandby(p),
      evict: (p, reason) => {
        // Relays pulling the epoch we no longer serve stop at once, not only new viewers.
        this.fenceRelayPullsOf(hub.app, hub.stream, undefined, reason);
        p.evict(reason);
      },
      hold: () => undefined,
      beat: (b) => {
        if (this.bus.status !== 'connected') return;
        if (b.epoch !== undefined && b.epoch !== lastEpoch) {
          // Relays admitted for an earlier epoch (of this node or another) pull again, asking for this one.
          lastEpoch = b.epoch;
          this.fenceRelayPullsOf(hub.app, hub.stream, { owner: this.cfg.node_id, epoch: b.epoch }, 'new ownership lease here');
        }
        try {
          this.bus.publish(subject, Buffer.from(JSON.stringify(b)));
        } catch (err) {
          this.log.debug({ err: String(err), stream: hub.key }, 'cannot publish the liveness heartbeat');
        }
      },
      fenced: () => {
        if (hub.inputGate === gate) hub.inputGate = undefined;
        // Viewers here stay: play the stream from whoever owns it now (the watch may not report it, e.g. after a pause).
        setImmediate(() => {
          if (!this.stopped && !hub.isLive && hub.sinkCount > 0) this.ensureRelay(hub).handle({ type: 'start' });
        });
      },
      promoted: (f) => {
        this.failoverHistory.record(hub.key, { at: f.at, from: f.from ?? null, to: f.to, epoch: f.epoch ?? null, reason: f.reason });
        this.events
          .append({ type: 'standbyPromoted', at: f.at, app: hub.app, stream: hub.stream, to: f.to, reason: f.reason, ...(f.from ? { from: f.from } : {}), ...(f.epoch !== undefined ? { epoch: f.epoch } : {}) })
          .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append standbyPromoted'));
      },
      published: () => {
        this.events
          .append({ type: 'published', at: Date.now(), app: hub.app, stream: hub.stream, node: this.cfg.node_id })
          .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append published'));
      },
      released: (lease) => {
        sub?.unsubscribe();
        if (hub.inputGate === gate) hub.inputGate = undefined;
        if (this.published.get(hub.key) === actor) this.published.delete(hub.key);
        if (!lease) return;
        lease.release().catch((err: unknown) => this.log.debug({ err: String(err) }, 'lease release failed'));
        this.events
          .append({ type: 'unpublished', at: Date.now(), app: hub.app, stream: hub.stream, node: this.cfg.node_id })
          .catch((err: unknown) => this.log.debug({ err: String(err) }, 'cannot append unpublished'));
      },
    };
    const actor = new PublishedStream(hub.app, hub.stream, this.cfg.node_id, app.duplicate_publish, app.publisher_silence_ms, fx, this.log);
    // The hub asks on every published frame: that is how a pause is noticed before the timer runs (after SIGCONT
    // the event loop handles socket data first), and how frames are held back until the lease is re-confirmed.
    const gate = (): boolean => {
      const p = hub.publisher;
      if (!p || p.kind === 'relay') return true;
      this.checkPaused();
      return actor.accepts(p);
    };
    let sub: BusSubscription | undefined;
    try {
      sub = this.bus.subscribe(subject, (m) => {
        const beat = decodeLivenessBeat(m.data);
        if (beat) actor.handle({ type: 'peerBeat', beat });
        else this.log.debug({ subject }, 'undecodable liveness heartbeat; dropped');
      });
    } catch (err) {
      this.log.warn({ err: String(err), stream: hub.key }, 'cannot follow the owner\'s liveness heartbeat; a standby here is promoted when the ownership record goes');
    }
    this.published.set(hub.key, actor);
    return actor;
  }

  /**
   * Notices that the process was paused, either on the tick or on the first published frame after the pause
   * (after SIGCONT the event loop handles socket data before timers). Each PublishedStream then re-confirms its
   * lease by a CAS write before its publisher's frames flow again.
   */
  private checkPaused(): void {
    const now = Date.now();
    const gap = now - this.lastTickAt;
    this.lastTickAt = now;
    if (gap <= FREEZE_MS) return;
    this.log.warn({ pausedMs: gap, streams: this.published.size }, 'process was paused; re-confirming stream ownership before serving');
    for (const a of [...this.published.values()]) a.handle({ type: 'clockJump', pausedMs: gap });
  }

  private tick(): void {
    this.checkPaused();
    for (const a of [...this.published.values()]) a.handle({ type: 'tick' });
  }

  releasePublish(hub: StreamHub, publisher: PublisherHandle): void {
    this.published.get(hub.key)?.handle({ type: 'publisherDetached', publisher });
  }

  /** The PublishedStream actors of this node (the stream API shows primary, standby and failovers). */
  publishedStatus(app: string, stream: string): PublishingStatus | undefined {
    const key = `${app}/${stream}`;
    const failovers = this.failoverHistory.of(key, Date.now());
    const actor = this.published.get(key);
    if (actor) return { ...actor.status(), failovers };
    // The encoders left this node, but what happened here is still part of the stream's story.
    return failovers.length ? { state: 'released', epoch: null, primary: null, standby: null, failovers } : undefined;
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
      const actor = this.published.get(hub.key);
      const epoch = actor?.accepts(publisher) ? actor.servedEpoch : undefined;
      return epoch !== undefined ? { owner: this.cfg.node_id, epoch } : undefined;
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
        graceMs: this.cfg.mesh.partition_grace_ms,
        busConnected: () => this.bus.status === 'connected',
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
      leases: [...this.published.values()].filter((a) => a.epoch !== undefined).length,
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
      const kind = file.endsWith('.flv') ? 'flv' : file.endsWith('.m3u8') ? 'hls' : file.endsWith('.whep') ? 'whep' : undefined;
      if (!kind) return reply.code(404).send({ error: 'play URLs end in .flv, .m3u8 or .whep' });
      const stream = file.slice(0, kind === 'flv' ? -4 : -5); // '.m3u8' and '.whep' are both 5 characters
      try {
        const r = await this.router.route(appName, stream);
        const q = (req.raw.url ?? '').split('?')[1];
        const target = kind === 'flv' ? r.flv : kind === 'whep' ? r.whep : r.hls;
        // WHEP is a POST of an offer: 307 keeps the method and body (a 302 may turn it into a GET).
        return reply.redirect(q ? `${target}?${q}` : target, kind === 'whep' ? 307 : 302);
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
    clearInterval(this.tickTimer);
    this.unwatchBus?.();
    for (const r of [...this.relays.values()]) r.handle({ type: 'stop', reason: 'node stopping' });
    this.unwatchOwners?.();
    this.control?.stop();
    this.router.stop();
    const leases: OwnershipLease[] = [];
    for (const a of [...this.published.values()]) {
      const l = a.stop();
      if (l) leases.push(l);
    }
    this.published.clear();
    await Promise.allSettled(leases.map((l) => l.release()));
    await this.membership.stop({ bye: true, reason: 'drain' }).catch(() => undefined);
    await Promise.allSettled([this.ownership.close(), this.relayClaims.close()]);
    await this.bus.close().catch(() => undefined);
  }
}
