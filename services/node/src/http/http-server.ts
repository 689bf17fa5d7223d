/**
 * The node's HTTP face: HTTP-FLV playback, the JSON API and health. Fastify owns routing
 * and JSON; the media response takes the raw socket so batches are written untouched.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { MediaHost } from '../media/host.ts';
import { checkName } from '../media/host.ts';
import type { StreamRegistry } from '../media/stream-registry.ts';
import { newSessionId, type ConnectionLimiter } from '../sessions.ts';
import { HttpFlvSession } from './http-flv-session.ts';
import { HTTP_FEATURES } from './features.ts';

export interface HttpApiExtras {
  /** Extra routes (mesh, placement, metrics, dashboard) registered by the node. */
  register?: (app: FastifyInstance) => void;
  nodeInfo: () => Record<string, unknown>;
}

const CORS = { 'Access-Control-Allow-Origin': '*' };

export function buildHttpServer(host: MediaHost, registry: StreamRegistry, limiter: ConnectionLimiter, extras: HttpApiExtras): FastifyInstance {
  const app = Fastify({ logger: false, forceCloseConnections: true });

  app.addHook('onRequest', async (_req, reply) => {
    void reply.headers(CORS);
  });
  app.options('*', async (_req, reply) => {
    void reply.headers({ 'Access-Control-Allow-Methods': 'GET, DELETE, POST, OPTIONS', 'Access-Control-Allow-Headers': '*' }).code(204).send();
  });

  app.get('/healthz', async () => ({ ok: true, node: host.config.node_id }));

  app.get('/api/v1/node', async () => extras.nodeInfo());

  app.get('/api/v1/streams', async () => ({
    streams: registry.list().map((hub) => ({
      app: hub.app,
      stream: hub.stream,
      live: hub.isLive,
      publisher: hub.publisher ? { session: hub.publisher.id, kind: hub.publisher.kind } : null,
      viewers: hub.sinkCount,
      framesIn: hub.stats.framesIn,
      bytesIn: hub.stats.bytesIn,
      bytesOut: hub.stats.bytesOut,
      droppedFrames: hub.stats.droppedFrames,
      evictedViewers: hub.stats.evictedSinks,
      publishedAt: hub.stats.publishedAt ?? null,
      metadata: hub.metadata ? plainMetadata(hub.metadata) : null,
    })),
  }));

  app.get('/api/v1/sessions', async () => ({ sessions: host.sessions.list() }));

  app.delete<{ Params: { id: string } }>('/api/v1/sessions/:id', async (req, reply) => {
    const s = host.sessions.get(req.params.id);
    if (!s) return reply.code(404).send({ error: 'no such session', id: req.params.id });
    s.kick('kicked through the API');
    return { kicked: req.params.id };
  });

  app.get<{ Params: { app: string; file: string } }>('/:app/:file', (req, reply) => playFlv(req, reply));

  extras.register?.(app);
  for (const feature of HTTP_FEATURES) {
    void app.register(async (scoped) => feature.register(scoped, { host, registry, limiter, nodeInfo: extras.nodeInfo }));
  }

  async function playFlv(req: FastifyRequest<{ Params: { app: string; file: string } }>, reply: FastifyReply): Promise<void> {
    const { app: appName, file } = req.params;
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
    const admission = await host.admitPlay(sreq);
    if (!admission.ok) {
      limiter.release(remoteIp);
      if (admission.redirect) return void reply.redirect(admission.redirect, 302);
      const status = admission.code.endsWith('StreamNotFound') ? 404 : 403;
      return void reply.code(status).send({ error: admission.description, code: admission.code });
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

/** Metadata as JSON-friendly values (AMF dates and buffers become strings). */
function plainMetadata(meta: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(meta)) {
    if (v === null || typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') out[k] = v;
    else out[k] = String(v);
  }
  return out;
}
