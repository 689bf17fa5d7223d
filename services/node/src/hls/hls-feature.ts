/**
 * HLS on the playback node, on demand:
 *
 *   GET /:app/:stream/index.m3u8   live media playlist; starts (or joins) the stream's segmenter
 *   GET /:app/:stream/<seq>.ts     one MPEG-TS segment from the segmenter's window
 *
 * Stream names are URL-encoded path segments. The first playlist request of a stream is
 * admitted like any viewer (`admitPlay`: authorisation, relay from the owner node) and waits,
 * bounded, for the first segment instead of answering with an empty playlist. Each viewer
 * (stream and query string: its token, key, or whatever the webhook reads) is admitted on its
 * own, once, and remembered in HlsAdmissions: later requests with the same query string need
 * no new admission until its token expires (checked on every request), it goes idle, or it is
 * forgotten to make room (then it is simply admitted again). An admission under way is shared
 * only by requests with the same query string. Segment URIs carry the playlist's query
 * string. The segmenter stops after `hls.idle_timeout_s` without requests.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import { checkName, type Refusal, type StreamRequest } from '../media/host.ts';
import { newSessionId } from '../sessions.ts';
import type { StreamHub } from '../media/stream-hub.ts';
import { HlsAdmissions, type AdmittedViewer } from './hls-admissions.ts';
import { HlsStreamSession, type HlsSessionOptions } from './hls-session.ts';
import { serveVodHttp } from '../vod/vod-http.ts';

const PLAYLIST_TYPE = 'application/vnd.apple.mpegurl';
const SEGMENT_RE = /^(\d{1,15})\.ts$/;
const MAX_CONTINUATIONS = 4096;

type Opened = { ok: true; session: HlsStreamSession; viewer: AdmittedViewer } | { ok: false; status: number; body: Record<string, unknown>; redirect?: string; retryAfter?: number };

export interface HlsServiceOptions extends HlsSessionOptions {
  /** Memory for remembering admitted viewers (HlsAdmissions). */
  admissionBytes: number;
}

export class HlsService {
  private readonly streams = new Map<string, HlsStreamSession>();
  /** Admissions under way, one per stream and query string: a result is only ever handed to requests with the same credential. */
  private readonly pending = new Map<string, Promise<Opened>>();
  readonly admissions: HlsAdmissions;
  private readonly sweeper: NodeJS.Timeout;
  /** Numbering of stopped segmenters, so a restarted one continues it (bounded, oldest forgotten first). */
  private readonly continuations = new Map<string, { firstSeq: number; discontinuitiesBefore: number }>();
  private closed = false;

  constructor(
    private readonly ctx: HttpFeatureContext,
    private readonly opts: HlsServiceOptions,
  ) {
    this.admissions = new HlsAdmissions({ maxBytes: opts.admissionBytes, idleMs: opts.idleTimeoutMs }, (v) => {
      // The viewer's play has ended: the same notification an HTTP-FLV viewer's close sends.
      ctx.host.sessionDone('play', v.req, { bytesIn: 0, bytesOut: v.bytesOut, durationMs: v.lastSeen - v.admittedAt });
    });
    this.sweeper = setInterval(() => this.admissions.sweep(), Math.max(50, Math.min(1000, opts.idleTimeoutMs / 4)));
    this.sweeper.unref();
  }

  static fromConfig(ctx: HttpFeatureContext): HlsService {
    const c = ctx.host.config.hls;
    return new HlsService(ctx, {
      targetDurationMs: Math.round(c.target_duration_s * 1000),
      windowLength: c.playlist_length,
      maxBytes: c.max_stream_bytes,
      idleTimeoutMs: Math.round(c.idle_timeout_s * 1000),
      admissionBytes: c.admission_cache_bytes,
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
    opened.viewer.bytesOut += text.length;
    return { ...opened, text };
  }

  /**
   * One segment, for a viewer whose admission stands. A credential not admitted (or no longer:
   * expired, idle, or forgotten to make room) is admitted again here, as a playlist request
   * would be, so a forgotten viewer is asked again rather than locked out.
   */
  async segment(app: string, stream: string, seq: number, query: string, remote: { ip: string; port: number }): Promise<{ status: number; data?: Buffer; etag?: string; error?: string; session?: HlsStreamSession }> {
    if (!this.get(app, stream)) return { status: 404, error: `no HLS segmenter for ${app}/${stream}: load the playlist first` };
    const opened = await this.open(app, stream, query, remote);
    if (!opened.ok) return { status: opened.status, error: String(opened.body.error ?? 'segment request not admitted') };
    const session = opened.session;
    const seg = session.segmenter.segment(seq);
    session.touch();
    if (!seg) return { status: 404, error: `segment ${seq} is not in the window` };
    opened.viewer.bytesOut += seg.data.length;
    return { status: 200, data: seg.data, etag: `"${session.generation}-${seq}"`, session };
  }

  /** The stream's segmenter, if it runs on the stream's current hub (one on a replaced hub is stopped). */
  private running(key: string, app: string, stream: string): HlsStreamSession | undefined {
    const existing = this.streams.get(key);
    if (existing?.active && this.ctx.registry.get(app, stream) !== existing.hub) existing.stop('the stream hub was replaced');
    return existing?.active ? existing : undefined;
  }

  private async open(app: string, stream: string, query: string, remote: { ip: string; port: number }): Promise<Opened> {
    if (this.closed) return { ok: false, status: 503, body: { error: 'node is shutting down' } };
    const key = `${app}/${stream}`;
    const session = this.running(key, app, stream);
    // Checked on every request: a lapsed token is not found here and goes through admission again.
    const viewer = session ? this.admissions.lookup(key, query) : undefined;
    if (session && viewer) return { ok: true, session, viewer };
    const flight = `${key}?${query}`;
    let p = this.pending.get(flight);
    if (!p) {
      p = this.admit(key, app, stream, query, remote).finally(() => this.pending.delete(flight));
      this.pending.set(flight, p);
    }
    return p;
  }

  private request(app: string, stream: string, query: string, remote: { ip: string; port: number }, sessionId: string): StreamRequest {
    return { app, stream, params: new URLSearchParams(query), sessionId, remote: `${remote.ip}:${remote.port}`, protocol: 'hls' };
  }

  /** Admits one credential for a stream like any viewer; starts the stream's segmenter if none runs. */
  private async admit(key: string, app: string, stream: string, query: string, remote: { ip: string; port: number }): Promise<Opened> {
    const { host, limiter } = this.ctx;
    // An admission under way holds a connection slot of the address asking: a flood of new
    // query strings (each one a webhook call) is bounded like connections are. A segmenter it
    // starts keeps the slot.
    const refused = limiter.admit(remote.ip);
    if (refused) return { ok: false, status: 503, body: { error: refused } };
    const req = this.request(app, stream, query, remote, newSessionId('h'));
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
      host.sessionDone('play', req, { bytesIn: 0, bytesOut: 0, durationMs: 0 });
      return { ok: false, status: 503, body: { error: 'node is shutting down' } };
    }
    let session = this.running(key, app, stream);
    if (session && session.hub === admission.hub) {
      // The segmenter already holds the stream; this admission only vouches for the viewer.
      host.endPlay(admission.hub);
      limiter.release(remote.ip);
    } else {
      session?.stop('the stream hub was replaced');
      session = this.startSegmenter(key, req, admission.hub, remote.ip);
    }
    const viewer = this.admissions.add(key, query, req);
    return { ok: true, session, viewer };
  }

  private startSegmenter(key: string, req: StreamRequest, hub: StreamHub, ip: string): HlsStreamSession {
    const { host, limiter } = this.ctx;
    const session = new HlsStreamSession(req.sessionId, hub, req, host, { ...this.opts, ...this.continuations.get(key) }, (s) => {
      host.sessions.remove(s);
      limiter.release(ip);
      if (this.streams.get(key) === s) this.streams.delete(key);
      this.admissions.endStream(key);
      this.continuations.delete(key);
      this.continuations.set(key, s.segmenter.continuation);
      if (this.continuations.size > MAX_CONTINUATIONS) this.continuations.delete(this.continuations.keys().next().value!);
    });
    this.streams.set(key, session);
    host.sessions.add(session);
    session.start();
    return session;
  }

  close(reason: string): void {
    this.closed = true;
    clearInterval(this.sweeper);
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
    // A VOD app's paths are files and their sub-resources (vod-http.ts), not live streams.
    if (ctx.host.vod?.isVodApp(appName)) return serveVodHttp(ctx.host, req, reply, appName, `${stream}/${file}`);
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
    const r = await service.segment(appName, stream, Number(m[1]), query, { ip: req.socket.remoteAddress ?? 'unknown', port: req.socket.remotePort ?? 0 });
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
