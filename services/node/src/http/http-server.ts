/**
 * The node's two HTTP listeners. Fastify owns routing and JSON; the media response takes the
 * raw socket so batches are written untouched.
 *
 * - The public listener (`http_port`) serves media (HTTP-FLV here, WS-FLV and HLS as
 *   features), the route API and `/play` redirects (the mesh's), and the health probes, to
 *   anyone, with `Access-Control-Allow-Origin: *`.
 * - The admin listener (`admin.host:admin.port`, loopback by default) serves everything that
 *   reads sessions or changes state: the node/stream/session API, kick, drain, the mesh API,
 *   metrics and the dashboard. It sends no CORS headers and checks every request (admin-guard.ts).
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { MediaHost } from '../media/host.ts';
import { checkName } from '../media/host.ts';
import type { StreamRegistry } from '../media/stream-registry.ts';
import { newSessionId, type ConnectionLimiter } from '../sessions.ts';
import { HttpFlvSession } from './http-flv-session.ts';
import { HTTP_FEATURES, type HttpFeatureContext } from './features.ts';
import { serveVodHttp } from '../vod/vod-http.ts';
import { checkAdminRequest } from './admin-guard.ts';
import type { PublishingStatus } from '../mesh/publishing-status.ts';

/** What `/readyz` reports: whether this node should get new work, and why not. */
export interface Readiness {
  ready: boolean;
  state: string;
  /** The mesh bus, when the node has one. */
  bus?: { kind: string; status: string };
  reason?: string;
}

export interface HttpApiExtras {
  /** Extra routes (the mesh's) registered by the node on each listener. */
  registerPublic?: (app: FastifyInstance) => void;
  registerAdmin?: (app: FastifyInstance) => void;
  nodeInfo: () => Record<string, unknown>;
  /** Primary, standby and failovers of a stream published here (undefined when nobody publishes it here). */
  publishing?: (app: string, stream: string) => PublishingStatus | undefined;
  readiness: () => Readiness;
  /** Starts the node's graceful drain (the same path as SIGTERM and `meshctl drain`). */
  drain: (reason: string) => void;
}

const CORS = { 'Access-Control-Allow-Origin': '*' };

/** Liveness and readiness, on both listeners. */
function registerProbes(app: FastifyInstance, host: MediaHost, extras: HttpApiExtras): void {
  app.get('/healthz', async () => ({ ok: true, node: host.config.node_id }));
  app.get('/readyz', async (_req, reply) => {
    const r = extras.readiness();
    return reply.code(r.ready ? 200 : 503).header('Cache-Control', 'no-store').send({ node: host.config.node_id, ...r });
  });
}

/** The public listener: media, route API, `/play`, probes. */
export function buildHttpServer(host: MediaHost, registry: StreamRegistry, limiter: ConnectionLimiter, extras: HttpApiExtras): FastifyInstance {
  const app = Fastify({ logger: false, forceCloseConnections: true });

  app.addHook('onRequest', async (_req, reply) => {
    void reply.headers(CORS);
  });
  // Everything here is a GET anyone may make; a preflight for anything else is answered with GETs only.
  app.options('*', async (_req, reply) => {
    void reply.headers({ 'Access-Control-Allow-Methods': 'GET, OPTIONS', 'Access-Control-Allow-Headers': '*' }).code(204).send();
  });

  registerProbes(app, host, extras);
  app.get<{ Params: { app: string; file: string } }>('/:app/:file', (req, reply) => playFlv(req, reply));
  extras.registerPublic?.(app);
  registerFeatures(app, 'public', { host, registry, limiter, nodeInfo: extras.nodeInfo, publishing: extras.publishing, vod: host.vod });

  async function playFlv(req: FastifyRequest<{ Params: { app: string; file: string } }>, reply: FastifyReply): Promise<void> {
    const { app: appName, file } = req.params;
    // A VOD app's paths are files (`/vod/clip.flv` is the file, not a live stream).
    if (host.vod?.isVodApp(appName)) return void (await serveVodHttp(host, req, reply, appName, file));
    if (!file.endsWith('.flv')) {
      return void reply.code(404).send({ error: 'not found' });
    }
    const stream = file.slice(0, -4);
    const maxBytes = host.config.limits.max_stream_name_bytes;
    const problem = checkName('app', appName, maxBytes) ?? checkName('stream', stream, maxBytes);
    if (problem) return void reply.code(400).send({ error: problem });
    const remoteIp = req.socket.remoteAddress ?? 'unknown';
    const refused = limiter.admit(remoteIp);
    if (refused) return void reply.code(503).send({ error: refused });
    const id = newSessionId('f');
    const params = new URLSearchParams((req.raw.url ?? '').split('?')[1] ?? '');
    const sreq = { app: appName, stream, params, sessionId: id, remote: `${remoteIp}:${req.socket.remotePort ?? 0}`, protocol: 'http-flv' as const };
    // A viewer may hang up while admission is pending (a slow on_play hook, a relay starting):
    // whatever admission then grants is released here, not left to a session nobody will close.
    const socket = req.raw.socket;
    let gone = false;
    const onGone = (): void => {
      gone = true;
    };
    socket.once('close', onGone);
    let admission;
    try {
      admission = await host.admitPlay(sreq);
    } catch (err) {
      limiter.release(remoteIp);
      throw err;
    } finally {
      socket.off('close', onGone);
    }
    if (!admission.ok) {
      limiter.release(remoteIp);
      if (admission.redirect) return void reply.redirect(admission.redirect, 302);
      const status = admission.code.endsWith('StreamNotFound') ? 404 : 403;
      return void reply.code(status).send({ error: admission.description, code: admission.code });
    }
    if (gone || socket.destroyed) {
      limiter.release(remoteIp);
      host.endPlay(admission.hub);
      // The play was allowed (on_play said yes): its end is told like any other.
      host.sessionDone('play', sreq, { bytesIn: 0, bytesOut: 0, durationMs: 0 });
      reply.hijack();
      socket.destroy();
      return;
    }
    reply.hijack();
    const session = new HttpFlvSession(id, req.raw.socket, admission.hub, sreq, host, (s) => {
      host.sessions.remove(s);
      limiter.release(remoteIp);
    });
    host.sessions.add(session);
    session.start(CORS);
  }

  return app;
}

/** The admin listener: the operator's API, metrics and dashboard, behind admin-guard's checks. */
export function buildAdminServer(host: MediaHost, registry: StreamRegistry, limiter: ConnectionLimiter, extras: HttpApiExtras): FastifyInstance {
  const app = Fastify({ logger: false, forceCloseConnections: true });
  const token = host.config.admin.token;

  app.addHook('onRequest', async (req, reply) => {
    const refused = checkAdminRequest({ method: req.method, url: req.raw.url ?? '/', headers: req.headers }, token);
    if (refused) return reply.code(refused.status).header('Cache-Control', 'no-store').send({ error: refused.error });
  });

  registerProbes(app, host, extras);

  app.get('/api/v1/node', async () => extras.nodeInfo());

  app.get('/api/v1/streams', async () => ({
    streams: registry.list().map((hub) => ({
      app: hub.app,
      stream: hub.stream,
      live: hub.isLive,
      publisher: hub.publisher ? { session: hub.publisher.id, kind: hub.publisher.kind } : null,
      publishing: extras.publishing?.(hub.app, hub.stream) ?? null,
      viewers: hub.sinkCount,
      framesIn: hub.stats.framesIn,
      bytesIn: hub.stats.bytesIn,
      bytesOut: hub.stats.bytesOut,
      droppedFrames: hub.stats.droppedFrames,
      bFrames: hub.bFrames,
      evictedViewers: hub.stats.evictedSinks,
      publishedAt: hub.stats.publishedAt ?? null,
      metadata: hub.metadata ? plainMetadata(hub.metadata) : null,
    })),
  }));

  app.get('/api/v1/sessions', async () => ({ sessions: host.sessions.list() }));

  app.delete<{ Params: { id: string } }>('/api/v1/sessions/:id', async (req, reply) => {
    const s = host.sessions.get(req.params.id);
    if (!s) return reply.code(404).send({ error: 'no such session', id: req.params.id });
    s.kick('kicked through the admin API');
    return { kicked: req.params.id };
  });

  app.post('/api/v1/drain', async (_req, reply) => {
    const before = extras.readiness().state;
    // Answer first: the drain closes this listener.
    if (before === 'running') setTimeout(() => extras.drain('drain requested through the admin API'), 50).unref();
    return reply.code(202).send({ node: host.config.node_id, draining: true, state: before === 'running' ? 'draining' : before });
  });

  extras.registerAdmin?.(app);
  registerFeatures(app, 'admin', { host, registry, limiter, nodeInfo: extras.nodeInfo, publishing: extras.publishing, vod: host.vod });
  return app;
}

function registerFeatures(app: FastifyInstance, surface: 'public' | 'admin', ctx: HttpFeatureContext): void {
  for (const feature of HTTP_FEATURES) {
    if ((feature.surface ?? 'admin') !== surface) continue;
    void app.register(async (scoped) => feature.register(scoped, ctx));
  }
}

/** Metadata as JSON-friendly values (AMF dates and buffers become strings). */
function plainMetadata(meta: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(meta)) {
    if (v === null || typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') out[k] = v;
    else out[k] = String(v);
  }
  return out;
}
