/**
 * The dashboard, on the admin listener: a static page at `/` (plain HTML, CSS and ES modules
 * from ./public, no bundler), the players it uses (mpegts.js, hls.js) served from
 * node_modules, and the data it shows: `GET /api/v1/dashboard/snapshot` once, or
 * `GET /api/v1/dashboard/events` as server-sent events, one `snapshot` event a second while
 * anyone is listening. The page plays media from the nodes' public listeners (CORS-open).
 *
 * With `admin.token` set, the page and its assets load without it; the page reads the token
 * from its URL fragment (`/#token=…`, never sent to the server) and sends it as a Bearer
 * header, or as `?access_token=` on the event stream (EventSource cannot set headers).
 *
 * Each node also answers `GET /api/v1/dashboard/local` (its streams, viewers by protocol) on
 * its public listener for its peers' dashboards, to a request carrying a valid mesh credential.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import { SnapshotBuilder, localStreams, type DashboardSnapshot } from './snapshot.ts';
import { MESH_CREDENTIAL_HEADER, decodeCredentialHeader } from './peer-credential.ts';

const PUBLIC_DIR = fileURLToPath(new URL('./public/', import.meta.url));
const resolveFrom = createRequire(import.meta.url);

/** Browser players, resolved from this package's dependencies. */
const VENDOR: Record<string, string> = {
  'mpegts.js': 'mpegts.js/dist/mpegts.js',
  'hls.js': 'hls.js/dist/hls.min.js',
};

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

/**
 * No inline script or style anywhere in the page. Media plays from blob: URLs (MSE), hls.js
 * runs its demuxer in a blob: worker, and the player reads from the nodes' public listeners
 * (this node's included: the admin listener serves no media), so media and connections may go
 * to any http(s) origin.
 */
export const DASHBOARD_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "media-src 'self' blob: http: https:",
  "worker-src 'self' blob:",
  "connect-src 'self' http: https: ws: wss:",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

export const SNAPSHOT_INTERVAL_MS = 1000;
/** An event-stream client whose socket holds more than this is too slow and is dropped. */
const MAX_CLIENT_BACKLOG = 1 << 20;

const assetCache = new Map<string, Buffer>();
function asset(file: string): Buffer {
  let body = assetCache.get(file);
  if (!body) {
    body = readFileSync(file);
    assetCache.set(file, body);
  }
  return body;
}

/** Pushes one snapshot a second to every listening page, building it once for all of them. */
class LiveFeed {
  private readonly clients = new Set<ServerResponse>();
  private timer: NodeJS.Timeout | undefined;
  private building = false;
  private last: DashboardSnapshot | undefined;

  constructor(private readonly builder: SnapshotBuilder) {}

  add(res: ServerResponse): void {
    this.clients.add(res);
    res.on('close', () => this.remove(res));
    if (this.last) this.send(res, this.last);
    if (!this.timer) {
      this.timer = setInterval(() => void this.tick(), SNAPSHOT_INTERVAL_MS);
      this.timer.unref();
    }
    void this.tick();
  }

  private remove(res: ServerResponse): void {
    this.clients.delete(res);
    if (this.clients.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
      this.last = undefined;
    }
  }

  private async tick(): Promise<void> {
    if (this.building || this.clients.size === 0) return;
    this.building = true;
    try {
      const snap = await this.builder.build();
      this.last = snap;
      for (const res of this.clients) this.send(res, snap);
    } catch {
      // The next tick tries again; the page shows its data as stale meanwhile.
    } finally {
      this.building = false;
    }
  }

  private send(res: ServerResponse, snap: DashboardSnapshot): void {
    if (res.writableLength > MAX_CLIENT_BACKLOG) {
      res.destroy();
      return;
    }
    res.write(`event: snapshot\ndata: ${JSON.stringify(snap)}\n\n`);
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const res of this.clients) res.end();
    this.clients.clear();
  }
}

export const dashboardFeature: HttpFeature = {
  name: 'dashboard',
  surface: 'admin',
  register(app: FastifyInstance, ctx: HttpFeatureContext) {
    const builder = new SnapshotBuilder(app, ctx);
    const feed = new LiveFeed(builder);
    app.addHook('onClose', async () => feed.close());

    app.get('/', async (_req, reply) =>
      reply
        .header('Content-Type', TYPES['.html'])
        .header('Content-Security-Policy', DASHBOARD_CSP)
        .header('Cache-Control', 'no-cache')
        .send(asset(join(PUBLIC_DIR, 'index.html'))),
    );

    // Each asset is its own static route, so `/dashboard/<anything else>` still reaches HTTP-FLV.
    for (const name of readdirSync(PUBLIC_DIR)) {
      const type = TYPES[extname(name)];
      if (!type || name === 'index.html') continue;
      const file = join(PUBLIC_DIR, name);
      app.get(`/dashboard/${name}`, async (_req, reply) => reply.header('Content-Type', type).header('Cache-Control', 'no-cache').send(asset(file)));
    }
    for (const [name, spec] of Object.entries(VENDOR)) {
      let file: string;
      try {
        file = resolveFrom.resolve(spec);
      } catch {
        ctx.host.log.warn({ module: spec }, 'dashboard player library not installed; its player is unavailable');
        continue;
      }
      app.get(`/dashboard/vendor/${name}`, async (_req, reply) =>
        reply.header('Content-Type', TYPES['.js']).header('Cache-Control', 'public, max-age=3600').send(asset(file)),
      );
    }

    app.get('/api/v1/dashboard/snapshot', async () => builder.build());

    app.get('/api/v1/dashboard/events', (req, reply) => {
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'Content-Type': 'text/event-stream; charset=utf-8',
        'Cache-Control': 'no-store',
        Connection: 'keep-alive',
        'X-Accel-Buffering': 'no',
      });
      req.raw.socket.setNoDelay(true);
      res.write(`retry: 2000\n\n`);
      feed.add(res);
    });
  },
};

/** What a peer's dashboard reads from this node, on the public listener: its streams with viewers by protocol, for mesh members only. */
export const dashboardPeerFeature: HttpFeature = {
  name: 'dashboard-peer',
  surface: 'public',
  register(app: FastifyInstance, ctx: HttpFeatureContext) {
    app.get('/api/v1/dashboard/local', async (req, reply) => {
      const check = ctx.host.verifyMeshCredential(decodeCredentialHeader(req.headers[MESH_CREDENTIAL_HEADER]));
      if (!check.ok) return reply.code(401).send({ error: `mesh members only: ${check.reason}` });
      return { node: ctx.host.config.node_id, streams: localStreams(ctx) };
    });
  },
};
