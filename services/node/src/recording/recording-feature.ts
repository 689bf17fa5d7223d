/**
 * The playback API for recordings, on the public listener (MediaMTX-style):
 *
 *   GET /api/v1/recordings/:app/:stream                          the recorded time spans
 *   GET /recordings/:app/:stream.mp4?start=<RFC3339>&duration=<s>  one progressive MP4, with Range
 *
 * Both read the node's recording store, so with the object store every node answers for every
 * recording, whichever node made it. The app's play rules apply to both, as to any viewer:
 * `allow_play`, static keys, signed play tokens (for the same app and stream) and the on_play
 * webhook (told `protocol: "recording"`; on_play_done follows each answered request).
 *
 * A `<video>` tag fetches the MP4 in several Range requests; the stitched file is kept for a
 * minute after its last use (bounded in bytes) so they all see the same bytes.
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import type { Authorizer } from '../auth/authorizer.ts';
import { appConfig } from '../config.ts';
import { checkName, type MediaHost, type StreamRequest } from '../media/host.ts';
import type { StreamRegistry } from '../media/stream-registry.ts';
import { newSessionId } from '../sessions.ts';
import { NothingToStitchError, type StitchedMp4 } from './mp4.ts';
import { RecordingService } from './recording-service.ts';
import { RecordingStoreError } from './store.ts';
import { spansOf } from './retention.ts';

const SERVICES = new WeakMap<MediaHost, RecordingService>();

/** The node's recording service, made on first use (by whichever listener registers first). */
export function recordingService(ctx: HttpFeatureContext): RecordingService {
  return recordingServiceOf(ctx.host, ctx.registry);
}

/** The same, for what is not an HTTP feature (a VOD app serving recordings, vod-recordings.ts). */
export function recordingServiceOf(host: MediaHost, registry: StreamRegistry): RecordingService {
  let s = SERVICES.get(host);
  if (!s) {
    s = new RecordingService(host.config, registry, host.log);
    SERVICES.set(host, s);
  }
  return s;
}

function authorizerOf(host: MediaHost): Authorizer {
  const a = (host as MediaHost & { authorizer?: Authorizer }).authorizer;
  if (!a) throw new Error('recordings: the node has no authorizer, so play rules could not be applied');
  return a;
}

const CACHE_MS = 60_000;
const CACHE_BYTES = 256 * 1024 * 1024;

interface Cached {
  mp4: StitchedMp4;
  etag: string;
  usedAt: number;
}

/** Built MP4s by stream and span: Range requests of one player get the same bytes. */
class Mp4Cache {
  private readonly entries = new Map<string, Promise<Cached>>();
  private bytes = 0;

  get(key: string, build: () => Promise<StitchedMp4>): Promise<Cached> {
    this.expire();
    const hit = this.entries.get(key);
    if (hit) {
      void hit.then((c) => (c.usedAt = Date.now())).catch(() => undefined);
      return hit;
    }
    const p = build().then((mp4) => {
      this.bytes += mp4.data.length;
      return { mp4, etag: `"${createHash('sha1').update(mp4.data).digest('hex').slice(0, 20)}"`, usedAt: Date.now() };
    });
    this.entries.set(key, p);
    p.catch(() => this.entries.delete(key));
    return p;
  }

  private expire(): void {
    const now = Date.now();
    for (const [key, p] of this.entries) {
      void p.then((c) => {
        if (now - c.usedAt > CACHE_MS || this.bytes > CACHE_BYTES) {
          if (this.entries.get(key) === p) {
            this.entries.delete(key);
            this.bytes -= c.mp4.data.length;
          }
        }
      }).catch(() => undefined);
    }
  }

  clear(): void {
    this.entries.clear();
    this.bytes = 0;
  }
}

type Refused = { status: number; error: string };

async function authorize(ctx: HttpFeatureContext, authorizer: Authorizer, app: string, stream: string, req: FastifyRequest): Promise<{ sreq: StreamRequest } | Refused> {
  const max = ctx.host.config.limits.max_stream_name_bytes;
  const problem = checkName('app', app, max) ?? checkName('stream', stream, max);
  if (problem) return { status: 400, error: problem };
  if (!appConfig(ctx.host.config, app).allow_play) return { status: 403, error: `playing from app "${app}" is not allowed` };
  const url = req.raw.url ?? '';
  const q = url.indexOf('?');
  const sreq: StreamRequest = {
    app,
    stream,
    params: new URLSearchParams(q < 0 ? '' : url.slice(q + 1)),
    sessionId: newSessionId('r'),
    remote: `${req.socket.remoteAddress ?? 'unknown'}:${req.socket.remotePort ?? 0}`,
    protocol: 'recording',
  };
  const d = await authorizer.authorize('play', sreq);
  if (!d.ok) return { status: 403, error: d.reason };
  return { sreq };
}

/** `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range; anything else is answered whole). */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return 'unsatisfiable';
  return { start, end };
}

function storeFailure(reply: FastifyReply, err: unknown): FastifyReply {
  if (err instanceof RecordingStoreError) return reply.code(503).send({ error: `recording store unavailable: ${err.message}` });
  throw err;
}

export function registerRecordings(app: FastifyInstance, ctx: HttpFeatureContext): RecordingService {
  const service = recordingService(ctx);
  const authorizer = authorizerOf(ctx.host);
  const cache = new Mp4Cache();
  app.addHook('onClose', async () => {
    cache.clear();
    await service.close();
  });

  app.get<{ Params: { app: string; stream: string } }>('/api/v1/recordings/:app/:stream', async (req, reply) => {
    const a = await authorize(ctx, authorizer, req.params.app, req.params.stream, req);
    if ('status' in a) return reply.code(a.status).send({ error: a.error });
    const started = Date.now();
    try {
      const segments = await service.segments(req.params.app, req.params.stream);
      const body = {
        app: req.params.app,
        stream: req.params.stream,
        spans: spansOf(segments).map((s) => ({ start: new Date(s.startMs).toISOString(), duration: s.durationMs / 1000 })),
        segments: segments.map((s) => ({ start: new Date(s.startMs).toISOString(), duration: s.durationMs / 1000, bytes: s.bytes, node: s.node, format: s.format })),
      };
      ctx.host.sessionDone('play', a.sreq, { bytesIn: 0, bytesOut: JSON.stringify(body).length, durationMs: Date.now() - started });
      return reply.header('Cache-Control', 'no-store').send(body);
    } catch (err) {
      return storeFailure(reply, err);
    }
  });

  app.get<{ Params: { app: string; file: string }; Querystring: { start?: string; duration?: string } }>('/recordings/:app/:file', async (req, reply) => {
    const { app: appName, file } = req.params;
    if (!file.endsWith('.mp4')) return reply.code(404).send({ error: 'not found' });
    const stream = file.slice(0, -4);
    const a = await authorize(ctx, authorizer, appName, stream, req);
    if ('status' in a) return reply.code(a.status).send({ error: a.error });
    const startMs = Date.parse(req.query.start ?? '');
    const duration = Number(req.query.duration);
    const maxS = ctx.host.config.recording.max_playback_s;
    if (!Number.isFinite(startMs)) return reply.code(400).send({ error: 'start must be an RFC 3339 time, e.g. 2026-12-05T16:00:00Z' });
    if (!Number.isFinite(duration) || duration <= 0 || duration > maxS) return reply.code(400).send({ error: `duration must be a number of seconds, more than 0 and at most ${maxS} (recording.max_playback_s)` });
    const durationMs = Math.round(duration * 1000);
    const started = Date.now();
    let cached: Cached;
    try {
      cached = await cache.get(`${appName}\u0000${stream}\u0000${startMs}\u0000${durationMs}`, () => service.mp4(appName, stream, startMs, durationMs));
    } catch (err) {
      if (err instanceof NothingToStitchError) return reply.code(404).send({ error: `${appName}/${stream} has no recording between ${new Date(startMs).toISOString()} and ${new Date(startMs + durationMs).toISOString()}` });
      return storeFailure(reply, err);
    }
    const data = cached.mp4.data;
    void reply
      .header('Content-Type', 'video/mp4')
      .header('Accept-Ranges', 'bytes')
      .header('ETag', cached.etag)
      .header('Cache-Control', 'no-cache')
      .header('X-Recording-Start', new Date(cached.mp4.startMs).toISOString());
    const ifRange = req.headers['if-range'];
    const range = ifRange === undefined || ifRange === cached.etag ? parseRange(req.headers.range, data.length) : undefined;
    if (range === 'unsatisfiable') return reply.code(416).header('Content-Range', `bytes */${data.length}`).send();
    const body = range ? data.subarray(range.start, range.end + 1) : data;
    ctx.host.sessionDone('play', a.sreq, { bytesIn: 0, bytesOut: body.length, durationMs: Date.now() - started });
    if (range) return reply.code(206).header('Content-Range', `bytes ${range.start}-${range.end}/${data.length}`).send(body);
    return reply.send(body);
  });
  return service;
}

export const RECORDINGS_FEATURE: HttpFeature = {
  name: 'recordings',
  surface: 'public',
  register(app, ctx) {
    registerRecordings(app, ctx);
  },
};
