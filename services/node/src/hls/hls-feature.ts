/**
 * HLS on the playback node, on demand:
 *
 *   GET /:app/:stream/index.m3u8   live media playlist; starts (or joins) the stream's segmenter
 *   GET /:app/:stream/<seq>.ts     one MPEG-TS segment from the segmenter's window
 *
 * Stream names are URL-encoded path segments. The first playlist request of a stream is
 * admitted like any viewer (`admitPlay`: authorisation, relay from the owner node) and waits,
 * bounded, for the first segment instead of answering with an empty playlist. Later requests
 * with the same query string (token) join without asking again; a new query string is
 * admitted on its own. Segment URIs carry the playlist's query string, and a segment is only
 * served for a query string that was admitted. The segmenter stops after `hls.idle_timeout_s`
 * without requests.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import { checkName, type Refusal, type StreamRequest } from '../media/host.ts';
import { newSessionId } from '../sessions.ts';
import { HlsStreamSession, type HlsSessionOptions } from './hls-session.ts';

const PLAYLIST_TYPE = 'application/vnd.apple.mpegurl';
const SEGMENT_RE = /^(\d{1,15})\.ts$/;
const MAX_CONTINUATIONS = 4096;

type Opened = { ok: true; session: HlsStreamSession; query: string } | { ok: false; status: number; body: Record<string, unknown>; redirect?: string; retryAfter?: number };

export class HlsService {
  private readonly streams = new Map<string, HlsStreamSession>();
  private readonly starting = new Map<string, Promise<Opened>>();
  /** Numbering of stopped segmenters, so a restarted one continues it (bounded, oldest forgotten first). */
  private readonly continuations = new Map<string, { firstSeq: number; discontinuitiesBefore: number }>();
  private closed = false;

  constructor(
    private readonly ctx: HttpFeatureContext,
    private readonly opts: HlsSessionOptions,
  ) {}

  static fromConfig(ctx: HttpFeatureContext): HlsService {
    const c = ctx.host.config.hls;
    return new HlsService(ctx, {
      targetDurationMs: Math.round(c.target_duration_s * 1000),
      windowLength: c.playlist_length,
      maxBytes: c.max_stream_bytes,
      idleTimeoutMs: Math.round(c.idle_timeout_s * 1000),
    });
  }

  /** The running segmenter of a stream, if any. */
  get(app: string, stream: string): HlsStreamSession | undefined {
    const s = this.streams.get(`${app}/${stream}`);
    return s?.active ? s : undefined;
  }

  /** How long the first playlist request waits for the first segment. */
  get firstSegmentWaitMs(): number {
    return 2 * this.opts.targetDurationMs + 5000;
  }

  async playlist(app: string, stream: string, query: string, remote: { ip: string; port: number }): Promise<Opened & { text?: string }> {
    const opened = await this.open(app, stream, query, remote);
    if (!opened.ok) return opened;
    const session = opened.session;
    const seg = session.segmenter;
    if (seg.listed.length === 0 && !seg.unsupported) await session.serving(() => seg.waitForSegment(this.firstSegmentWaitMs));
    else session.touch();
    if (!session.active) return { ok: false, status: 503, body: { error: 'HLS segmenter stopped' } };
    if (seg.unsupported) return { ok: false, status: 415, body: { error: seg.unsupported } };
    if (seg.listed.length === 0) {
      if (!session.hub.isLive) return { ok: false, status: 404, body: { error: `${app}/${stream} is not being published`, code: 'NetStream.Play.StreamNotFound' } };
      return { ok: false, status: 503, body: { error: `no HLS segment of ${app}/${stream} yet (waiting for a keyframe)` }, retryAfter: Math.ceil(this.opts.targetDurationMs / 1000) };
    }
    const suffix = query ? `?${query}` : '';
    const text = seg.playlist((n) => `${n}.ts${suffix}`);
    session.sent(text.length);
    return { ...opened, text };
  }

  segment(app: string, stream: string, seq: number, query: string): { status: number; data?: Buffer; etag?: string; error?: string; session?: HlsStreamSession } {
    const session = this.get(app, stream);
    if (!session) return { status: 404, error: `no HLS segmenter for ${app}/${stream}: load the playlist first` };
    if (!session.isAdmitted(query)) return { status: 403, error: 'segment request not admitted: use the segment URIs of the playlist' };
    const seg = session.segmenter.segment(seq);
    session.touch();
    if (!seg) return { status: 404, error: `segment ${seq} is not in the window` };
    return { status: 200, data: seg.data, etag: `"${session.generation}-${seq}"`, session };
  }

  private async open(app: string, stream: string, query: string, remote: { ip: string; port: number }): Promise<Opened> {
    if (this.closed) return { ok: false, status: 503, body: { error: 'node is shutting down' } };
    const key = `${app}/${stream}`;
    for (;;) {
      const pending = this.starting.get(key);
      if (pending) {
        const r = await pending;
        if (!r.ok || r.query === query) return r;
        continue;
      }
      const existing = this.streams.get(key);
      if (existing?.active && this.ctx.registry.get(app, stream) !== existing.hub) existing.stop('the stream hub was replaced');
      if (existing?.active) {
        if (existing.isAdmitted(query)) return { ok: true, session: existing, query };
        return this.track(key, this.admitMore(existing, app, stream, query, remote));
      }
      return this.track(key, this.start(key, app, stream, query, remote));
    }
  }

  private async track(key: string, p: Promise<Opened>): Promise<Opened> {
    this.starting.set(key, p);
    try {
      return await p;
    } finally {
      if (this.starting.get(key) === p) this.starting.delete(key);
    }
  }

  private request(app: string, stream: string, query: string, remote: { ip: string; port: number }, sessionId: string): StreamRequest {
    return { app, stream, params: new URLSearchParams(query), sessionId, remote: `${remote.ip}:${remote.port}`, protocol: 'hls' };
  }

  private async start(key: string, app: string, stream: string, query: string, remote: { ip: string; port: number }): Promise<Opened> {
    const { host, limiter } = this.ctx;
    const refused = limiter.admit(remote.ip);
    if (refused) return { ok: false, status: 503, body: { error: refused } };
    const id = newSessionId('h');
    const req = this.request(app, stream, query, remote, id);
    let admission;
    try {
      admission = await host.admitPlay(req);
    } catch (err) {
      limiter.release(remote.ip);
      throw err;
    }
    if (!admission.ok) {
      limiter.release(remote.ip);
      return refusal(admission);
    }
    if (this.closed) {
      limiter.release(remote.ip);
      host.endPlay(admission.hub);
      return { ok: false, status: 503, body: { error: 'node is shutting down' } };
    }
    const session = new HlsStreamSession(id, admission.hub, req, host, { ...this.opts, ...this.continuations.get(key) }, (s) => {
      host.sessions.remove(s);
      limiter.release(remote.ip);
      if (this.streams.get(key) === s) this.streams.delete(key);
      this.continuations.delete(key);
      this.continuations.set(key, s.segmenter.continuation);
      if (this.continuations.size > MAX_CONTINUATIONS) this.continuations.delete(this.continuations.keys().next().value!);
    });
    this.streams.set(key, session);
    host.sessions.add(session);
    session.start();
    return { ok: true, session, query };
  }

  /** A request with a query string (token) not seen for this stream yet: admit it like a viewer. */
  private async admitMore(session: HlsStreamSession, app: string, stream: string, query: string, remote: { ip: string; port: number }): Promise<Opened> {
    const req = this.request(app, stream, query, remote, newSessionId('h'));
    const admission = await this.ctx.host.admitPlay(req);
    if (!admission.ok) return refusal(admission);
    // The segmenter already holds the stream; this admission only vouches for the token.
    this.ctx.host.endPlay(admission.hub);
    if (!session.active) return { ok: false, status: 503, body: { error: 'HLS segmenter stopped' } };
    session.addAdmitted(query, req);
    return { ok: true, session, query };
  }

  close(reason: string): void {
    this.closed = true;
    for (const s of [...this.streams.values()]) s.stop(reason);
  }
}

function refusal(r: Refusal): Opened {
  if (r.redirect && /^https?:\/\//.test(r.redirect)) return { ok: false, status: 302, body: { error: r.description }, redirect: r.redirect };
  const status = r.code.endsWith('StreamNotFound') ? 404 : r.code.endsWith('Unauthorized') ? 403 : /draining/.test(r.description) ? 503 : 403;
  return { ok: false, status, body: { error: r.description, code: r.code } };
}

function queryOf(url: string | undefined): string {
  const q = (url ?? '').indexOf('?');
  return q < 0 ? '' : (url ?? '').slice(q + 1);
}

type HlsRequest = FastifyRequest<{ Params: { app: string; stream: string; file: string } }>;

/** Registers the HLS routes on a scope of the node's HTTP server. */
export function registerHls(app: FastifyInstance, ctx: HttpFeatureContext): HlsService {
  const service = HlsService.fromConfig(ctx);
  app.addHook('onClose', async () => service.close('node shutting down'));

  app.get('/:app/:stream/:file', async (req: HlsRequest, reply: FastifyReply) => {
    const { app: appName, stream, file } = req.params;
    const maxBytes = ctx.host.config.limits.max_stream_name_bytes;
    const problem = checkName('app', appName, maxBytes) ?? checkName('stream', stream, maxBytes);
    if (problem) return reply.code(400).send({ error: problem });
    const query = queryOf(req.raw.url);
    if (file === 'index.m3u8') {
      const remote = { ip: req.socket.remoteAddress ?? 'unknown', port: req.socket.remotePort ?? 0 };
      const r = await service.playlist(appName, stream, query, remote);
      if (!r.ok) {
        if (r.redirect) return reply.redirect(r.redirect, 302);
        if (r.retryAfter) void reply.header('Retry-After', String(r.retryAfter));
        return reply.code(r.status).send(r.body);
      }
      return reply.header('Content-Type', PLAYLIST_TYPE).header('Cache-Control', 'no-cache, no-store').send(r.text);
    }
    const m = SEGMENT_RE.exec(file);
    if (!m) return reply.code(404).send({ error: 'not found' });
    const r = service.segment(appName, stream, Number(m[1]), query);
    if (!r.data) return reply.code(r.status).send({ error: r.error });
    void reply.header('ETag', r.etag).header('Cache-Control', 'no-cache');
    if (req.headers['if-none-match'] === r.etag) return reply.code(304).send();
    r.session?.sent(r.data.length);
    return reply.header('Content-Type', 'video/mp2t').send(r.data);
  });
  return service;
}

export const HLS_FEATURE: HttpFeature = {
  name: 'hls',
  register(app, ctx) {
    registerHls(app, ctx);
  },
};
