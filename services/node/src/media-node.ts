/**
 * MediaNode: the root of one meshcast node. It owns the listeners, the stream registry and
 * the session table, and decides admission (roles, per-app policy, takeover). The mesh
 * binding, when present, adds ownership leases and relays behind the same admission calls.
 */
import type { FastifyInstance } from 'fastify';
import type { LoadSample } from '@meshcast/mesh';
import { appConfig, type NodeConfig } from './config.ts';
import type { Logger } from './log.ts';
import type { MediaHost, PlayAdmission, PublishAdmission, Refusal, StreamRequest } from './media/host.ts';
import { StreamRegistry } from './media/stream-registry.ts';
import { isEncoder, type PublisherHandle, type StreamHub } from './media/stream-hub.ts';
import { RtmpServer } from './rtmp/rtmp-server.ts';
import { vodLibraryFor, type LocalVodLibrary } from './vod/vod-library.ts';
import { checkWebrtcAtStart } from './webrtc/start-checks.ts';
import { buildAdminServer, buildHttpServer, type HttpApiExtras, type Readiness } from './http/http-server.ts';
import { ConnectionLimiter, SessionTable } from './sessions.ts';
import { NonceMemory, verifyCredential, type CredentialCheck } from './mesh/mesh-credential.ts';
import { OPEN_ACCESS, type Authorizer } from './auth/authorizer.ts';
import { startStaticRelays, type StaticRelayLink } from './relay/static-relay.ts';
import type { PublishingStatus } from './mesh/publishing-status.ts';

/** Hooks the mesh layer plugs into; a lone node runs without them. */
export interface MeshBinding {
  /** Called before a publisher is attached: acquire (or take over) the stream's ownership lease. */
  claimPublish(req: StreamRequest, hub: StreamHub, publisher: PublisherHandle): Promise<PublishAdmission>;
  releasePublish(hub: StreamHub, publisher: PublisherHandle): void;
  /** Called for a play of a stream not published here: start or join a relay, or refuse/redirect. */
  resolvePlay(req: StreamRequest, hub: StreamHub): Promise<PlayAdmission>;
  /** A relay's pull (`req.meshPeer`): refused unless this node serves the ownership epoch it names (`req.meshPull`). */
  admitRelayPull?(req: StreamRequest): Refusal | undefined;
  playEnded(hub: StreamHub): void;
  /** The stream's publishing state here: primary, standby (node, since when), failovers (the stream API). */
  publishedStatus?(app: string, stream: string): PublishingStatus | undefined;
  /** Routes for anyone on the public listener (the route API, `/play` redirects). */
  registerPublicRoutes?(app: FastifyInstance): void;
  /** Routes for the operator on the admin listener (the mesh API). */
  registerAdminRoutes?(app: FastifyInstance): void;
  nodeInfo?(): Record<string, unknown>;
  /** A better ingest node (RTMP URL) for a publisher this node will not take. */
  redirectPublish?(req: StreamRequest): string | undefined;
  /** The node placement chose for this viewer, when the node is configured to redirect there. */
  redirectPlay?(req: StreamRequest): Promise<string | undefined>;
  stop(): Promise<void>;
}

type NodeState = 'created' | 'running' | 'draining' | 'stopped';

export class MediaNode implements MediaHost {
  readonly sessions = new SessionTable();
  readonly registry: StreamRegistry;
  readonly limiter: ConnectionLimiter;
  private readonly rtmp: RtmpServer;
  private http: FastifyInstance | undefined;
  private admin: FastifyInstance | undefined;
  private state: NodeState = 'created';
  private mesh: MeshBinding | undefined;
  private staticRelays: StaticRelayLink[] = [];
  /** Replaced when auth is configured (static keys, signed tokens, webhooks). */
  authorizer: Authorizer = OPEN_ACCESS;
  /** VOD apps' files; the mesh gives it a remote source when the node joins one. */
  readonly vod: LocalVodLibrary;
  rtmpPort = 0;
  httpPort = 0;
  adminPort = 0;

  constructor(
    readonly config: NodeConfig,
    readonly log: Logger,
  ) {
    const m = config.media;
    this.registry = new StreamRegistry(
      { gopCache: m.gop_cache, gopCacheMaxBytes: m.gop_cache_max_bytes, flushMs: m.flush_ms, sinkQueueBytes: m.viewer_queue_bytes, maxLagMs: m.viewer_max_lag_ms },
      log,
    );
    this.limiter = new ConnectionLimiter(config.limits.max_connections, config.limits.max_connections_per_ip);
    this.rtmp = new RtmpServer(this, this.limiter);
    this.vod = vodLibraryFor(config);
  }

  attachMesh(mesh: MeshBinding): void {
    this.mesh = mesh;
  }

  get running(): boolean {
    return this.state === 'running';
  }

  /** The admin listener's base URL (kick, drain, sessions, mesh API, metrics, dashboard). */
  get adminUrl(): string {
    const h = this.config.admin.host;
    return `http://${h.includes(':') ? `[${h}]` : h}:${this.adminPort}`;
  }

  /**
   * Listens on RTMP, then lets the mesh join (it needs our RTMP address), then serves HTTP
   * (public and admin) with the mesh's routes in place.
   */
  async start(opts: { beforeHttp?: () => Promise<void> } = {}): Promise<void> {
    const cfg = this.config;
    await checkWebrtcAtStart(cfg);
    this.rtmpPort = await this.rtmp.listen(cfg.rtmp_port, cfg.host);
    this.httpPort = cfg.http_port;
    this.state = 'running';
    await opts.beforeHttp?.();
    const extras: HttpApiExtras = {
      registerPublic: (app) => this.mesh?.registerPublicRoutes?.(app),
      registerAdmin: (app) => this.mesh?.registerAdminRoutes?.(app),
      nodeInfo: () => this.nodeInfo(),
      publishing: (app, stream) => this.mesh?.publishedStatus?.(app, stream),
      readiness: () => this.readiness(),
      drain: (reason) => this.drain(reason),
    };
    this.http = buildHttpServer(this, this.registry, this.limiter, extras);
    await this.http.listen({ port: cfg.http_port, host: cfg.host });
    const addr = this.http.server.address();
    this.httpPort = typeof addr === 'object' && addr ? addr.port : cfg.http_port;
    this.admin = buildAdminServer(this, this.registry, this.limiter, extras);
    await this.admin.listen({ port: cfg.admin.port, host: cfg.admin.host });
    const adminAddr = this.admin.server.address();
    this.adminPort = typeof adminAddr === 'object' && adminAddr ? adminAddr.port : cfg.admin.port;
    this.staticRelays = startStaticRelays(cfg.static_relays, this);
    this.log.info(
      { rtmp: `rtmp://${cfg.public_host}:${this.rtmpPort}`, http: `http://${cfg.public_host}:${this.httpPort}`, admin: this.adminUrl, adminToken: cfg.admin.token !== '', roles: cfg.roles },
      'node started',
    );
  }

  private lastLoad = { at: Date.now(), bytesOut: 0, bytesIn: 0, cpu: process.cpuUsage() };

  /** What the node reports in its heartbeat: the live load that placement balances on. */
  loadSample(): LoadSample {
    let viewers = 0;
    let publishers = 0;
    let bytesOut = 0;
    let bytesIn = 0;
    for (const s of this.sessions.list()) {
      if (s.role === 'viewer') viewers++;
      else if (s.role === 'publisher') publishers++;
      bytesOut += s.bytesOut;
      bytesIn += s.bytesIn;
    }
    const now = Date.now();
    const dt = Math.max(1, now - this.lastLoad.at) / 1000;
    const cpu = process.cpuUsage(this.lastLoad.cpu);
    const sample: LoadSample = {
      viewers,
      publishers,
      egressBps: Math.max(0, Math.round(((bytesOut - this.lastLoad.bytesOut) * 8) / dt)),
      ingressBps: Math.max(0, Math.round(((bytesIn - this.lastLoad.bytesIn) * 8) / dt)),
      cpu: (cpu.user + cpu.system) / 1e6 / dt,
      streamsOwned: this.registry.list().filter((h) => isEncoder(h.publisher)).length,
      relaysHeld: this.registry.list().filter((h) => h.publisher?.kind === 'relay').length,
      draining: this.state !== 'running',
    };
    this.lastLoad = { at: now, bytesOut, bytesIn, cpu: process.cpuUsage() };
    return sample;
  }

  nodeInfo(): Record<string, unknown> {
    return {
      node: this.config.node_id,
      state: this.state,
      roles: this.config.roles,
      rtmp: `rtmp://${this.config.public_host}:${this.rtmpPort}`,
      http: `http://${this.config.public_host}:${this.httpPort}`,
      sessions: this.sessions.size,
      streams: this.registry.list().length,
      rss: process.memoryUsage().rss,
      uptimeMs: Math.round(process.uptime() * 1000),
      staticRelays: this.staticRelays.map((r) => r.status()),
      ...(this.mesh?.nodeInfo?.() ?? {}),
    };
  }

  /**
   * Whether this node should be sent new work (`/readyz`): not while draining, and not while a
   * NATS mesh node has lost its bus (it cannot take leases, route, or relay). A lone node and
   * an embedded-bus node depend on nothing else.
   */
  readiness(): Readiness {
    if (this.state !== 'running') return { ready: false, state: this.state, reason: this.state === 'created' ? 'starting' : 'draining' };
    const bus = this.mesh?.nodeInfo?.().bus as { kind?: unknown; status?: unknown } | undefined;
    if (bus && typeof bus.kind === 'string') {
      const b = { kind: bus.kind, status: String(bus.status) };
      if (b.kind === 'nats' && b.status !== 'connected') return { ready: false, state: this.state, bus: b, reason: `mesh bus (NATS) is ${b.status}` };
      return { ready: true, state: this.state, bus: b };
    }
    return { ready: true, state: this.state };
  }

  /**
   * Starts a graceful drain: the process's SIGTERM path (run-node stops the node, waits for
   * webhooks, exits 0) when one is installed, else `stop()`. The admin API's drain and
   * `meshctl drain` (node-control) take this same path. Returns at once.
   */
  drain(reason: string): void {
    if (this.state !== 'running') return;
    this.log.info({ reason }, 'drain requested');
    if (process.listenerCount('SIGTERM') > 0) process.emit('SIGTERM', 'SIGTERM');
    else void this.stop(reason);
  }

  /** Whether one more viewer fits on this node (the admission placement asks for). */
  admitViewerHere(): { admitted: boolean; reason?: string; viewers: number; capacity: number } {
    const capacity = this.config.mesh.capacity;
    const viewers = this.sessions.list().filter((s) => s.role === 'viewer').length;
    if (this.state !== 'running') return { admitted: false, reason: 'draining', viewers, capacity };
    if (!this.config.roles.includes('playback')) return { admitted: false, reason: 'not a playback node', viewers, capacity };
    if (viewers >= capacity) return { admitted: false, reason: 'at capacity', viewers, capacity };
    return { admitted: true, viewers, capacity };
  }

  async admitPublish(req: StreamRequest, publisher: PublisherHandle): Promise<PublishAdmission> {
    const publishers = this.registry.list().filter((h) => isEncoder(h.publisher)).length;
    if (this.state !== 'running' || publishers >= this.config.limits.max_publishers) {
      const why = this.state !== 'running' ? 'node is draining' : `node is full (${publishers} publishers)`;
      const redirect = this.mesh?.redirectPublish?.(req);
      if (redirect) return { ok: false, code: 'NetConnection.Connect.Rejected', description: `${why}; publish to ${redirect}`, redirect };
      return { ok: false, code: 'NetStream.Publish.Denied', description: why };
    }
    if (!this.config.roles.includes('ingest')) {
      return { ok: false, code: 'NetStream.Publish.Denied', description: 'this node does not take publishers (playback-only)' };
    }
    const app = appConfig(this.config, req.app);
    if (!app.allow_publish) return { ok: false, code: 'NetStream.Publish.Denied', description: `publishing to app "${req.app}" is not allowed` };
    const auth = await this.authorizer.authorize('publish', req);
    if (!auth.ok) return { ok: false, code: 'NetStream.Publish.Unauthorized', description: auth.reason };
    const hub = this.registry.open(req.app, req.stream);
    if (!this.mesh) {
      if (isEncoder(hub.publisher) && app.duplicate_publish === 'reject') {
        return { ok: false, code: 'NetStream.Publish.BadName', description: `${req.app}/${req.stream} is already being published` };
      }
      hub.attachPublisher(publisher);
      return { ok: true, hub };
    }
    // The stream's PublishedStream actor decides primary, standby or refusal, and attaches the publisher itself.
    const claimed = await this.mesh.claimPublish(req, hub, publisher);
    if (!claimed.ok) {
      // A refused publish (reject policy, a third encoder) leaves no stream entry behind: the registry drops an idle
      // hub. A hub whose only publisher is a waiting standby is not idle (the standby is not the hub's publisher).
      if (hub.idle && !hub.standby) hub.emit('idle');
      return claimed;
    }
    if (this.state !== 'running') {
      this.endPublish(hub, publisher);
      return { ok: false, code: 'NetStream.Publish.Denied', description: 'node is draining' };
    }
    return claimed;
  }

  endPublish(hub: StreamHub, publisher: PublisherHandle): void {
    if (hub.publisher !== publisher && hub.standby !== publisher) return;
    hub.detachPublisher(publisher);
    this.mesh?.releasePublish(hub, publisher);
  }

  async admitPlay(req: StreamRequest): Promise<PlayAdmission> {
    if (this.state !== 'running') return { ok: false, code: 'NetStream.Play.Failed', description: 'node is draining' };
    // Ingest-only nodes still serve other nodes' relays: that is how a stream leaves its owner.
    if (!this.config.roles.includes('playback') && !req.meshPeer) {
      return { ok: false, code: 'NetStream.Play.Failed', description: 'this node does not serve viewers (ingest-only)' };
    }
    const app = appConfig(this.config, req.app);
    if (!app.allow_play) return { ok: false, code: 'NetStream.Play.Failed', description: `playing from app "${req.app}" is not allowed` };
    // The epoch fence: a relay's pull is served only if this node owns or relays the epoch it expects.
    const fenced = req.meshPeer ? this.mesh?.admitRelayPull?.(req) : undefined;
    if (fenced) return fenced;
    // Relays between nodes are authorised by the mesh credential, not by viewer auth.
    if (!req.meshPeer) {
      const auth = await this.authorizer.authorize('play', req);
      if (!auth.ok) return { ok: false, code: 'NetStream.Play.Unauthorized', description: auth.reason };
    }
    const redirect = await this.mesh?.redirectPlay?.(req);
    if (redirect) return { ok: false, code: 'NetConnection.Connect.Rejected', description: `play ${req.app}/${req.stream} on ${redirect}`, redirect };
    const existing = this.registry.get(req.app, req.stream);
    if (existing?.isLive && existing.publisher?.kind !== 'relay') return { ok: true, hub: existing };
    const hub = existing ?? this.registry.open(req.app, req.stream);
    if (this.mesh) return this.mesh.resolvePlay(req, hub);
    if (!hub.isLive && app.play_not_found === 'reject') {
      if (hub.idle) hub.emit('idle');
      return { ok: false, code: 'NetStream.Play.StreamNotFound', description: `${req.app}/${req.stream} is not being published` };
    }
    return { ok: true, hub };
  }

  /**
   * A VOD file's play rules, the same as a live stream's without the stream part: refused while
   * draining, on a node that serves no viewers, in an app that forbids playing, or by auth.
   */
  async admitVodPlay(req: StreamRequest): Promise<Refusal | undefined> {
    if (this.state !== 'running') return { ok: false, code: 'NetStream.Play.Failed', description: 'node is draining' };
    if (!this.config.roles.includes('playback')) return { ok: false, code: 'NetStream.Play.Failed', description: 'this node does not serve viewers (ingest-only)' };
    if (!appConfig(this.config, req.app).allow_play) return { ok: false, code: 'NetStream.Play.Failed', description: `playing from app "${req.app}" is not allowed` };
    const auth = await this.authorizer.authorize('play', req);
    if (!auth.ok) return { ok: false, code: 'NetStream.Play.Unauthorized', description: auth.reason };
    return undefined;
  }

  endPlay(hub: StreamHub): void {
    this.mesh?.playEnded(hub);
  }

  sessionDone(action: 'publish' | 'play', req: StreamRequest, summary: { bytesIn: number; bytesOut: number; durationMs: number }): void {
    if (req.meshPeer) return;
    this.authorizer.done(action, req, summary);
  }

  verifyMeshCredential(value: unknown): CredentialCheck {
    return verifyCredential(this.config.mesh.mesh_secret, value, { self: this.config.node_id, nonces: this.pullNonces });
  }

  /** Pull credentials used here (each is single use, remembered until it expires). */
  private readonly pullNonces = new NonceMemory();

  /** Graceful stop: refuse new work, close sessions, leave the mesh, close listeners. */
  async stop(reason = 'node shutting down'): Promise<void> {
    if (this.state === 'stopped' || this.state === 'draining') return;
    this.state = 'draining';
    this.log.info({ reason }, 'node stopping');
    for (const r of this.staticRelays) r.stop();
    const rtmpClosed = this.rtmp.stop();
    this.rtmp.closeSessions(reason);
    for (const s of this.sessions.all()) s.kick(reason);
    this.registry.closeAll(reason);
    this.vod.close();
    await this.mesh?.stop();
    await Promise.all([rtmpClosed, this.http?.close(), this.admin?.close()]);
    this.state = 'stopped';
    this.log.info('node stopped');
  }
}
