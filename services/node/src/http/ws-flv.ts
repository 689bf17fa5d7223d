/**
 * WebSocket-FLV (what mpegts.js and flv.js play): `GET /ws/:app/:stream.flv` upgraded to a
 * WebSocket. The first binary message is the FLV file header; every later one is one of the
 * hub's batches of FLV tags. Frames a server sends are unmasked, so a batch's WebSocket frame
 * is the same bytes for every viewer: the hub builds it once (wire format `ws-flv`) and each
 * session writes that Buffer to its socket.
 *
 * The upgrade is taken from the HTTP server's `upgrade` event for paths under `/ws/` ending
 * in `.flv`; admission (authorisation, relay from the owner) happens before the 101, so a
 * refusal is a plain HTTP status. A client that hangs up while admission is pending is noticed
 * (its socket is read meanwhile) and everything admitted for it is released when admission ends.
 * From the client, pings are answered, a close is echoed and data frames are ignored (bounded).
 * Replies respect `limits.reply_buffer_bytes`: a client that does not read gets no more pongs,
 * and its socket is not read until what is queued drains.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { encodeFlvHeader } from '@meshcast/proto';
import type { FastifyInstance } from 'fastify';
import { wsBinaryFrame, type WireFormat } from '../media/frame.ts';
import { checkName, type MediaHost, type StreamRequest } from '../media/host.ts';
import type { MediaSink, StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';
import { newSessionId, type Session, type SessionInfo } from '../sessions.ts';
import type { HttpFeature, HttpFeatureContext } from './features.ts';
import { checkUpgrade, closeFrame, controlFrame, httpErrorResponse, upgradeResponse, WsClose, WsFrameReader, WsOpcode } from './ws-protocol.ts';

type State = 'streaming' | 'closed';

/** Bytes a client may send before the 101 (it should send none; a frame header at most by mistake). */
const EARLY_BYTES = 1024;

export class WsFlvSession implements Session, MediaSink {
  readonly format: WireFormat = { kind: 'ws-flv' };
  private state: State = 'streaming';
  private bytesOut = 0;
  private bytesIn = 0;
  private readonly startedAt = Date.now();
  private readonly log: Logger;
  private readonly reader: WsFrameReader;
  /** Pings left unanswered because the client was not reading. */
  private unanswered = 0;
  private readingHeld = false;

  constructor(
    readonly id: string,
    private readonly socket: Socket,
    private readonly hub: StreamHub,
    private readonly req: StreamRequest,
    private readonly host: MediaHost,
    private readonly onClosed: (s: WsFlvSession) => void,
  ) {
    this.log = host.log.child({ session: id, app: req.app, stream: req.stream, remote: req.remote });
    this.reader = new WsFrameReader({
      ping: (payload) => this.reply(controlFrame(WsOpcode.PONG, payload)),
      close: (code, reason) => this.close(`client closed the WebSocket (${code}${reason ? ` ${reason}` : ''})`, code),
      error: (code, message) => this.close(`WebSocket protocol error: ${message}`, code),
    });
  }

  /** Sends the 101 and the FLV header, then joins the hub. `head` is what the client sent after its request. */
  start(accept: string, head: Buffer): void {
    this.socket.setNoDelay(true);
    this.socket.on('close', () => this.close('peer closed the connection'));
    // The upgraded socket is half-open capable: a client that ends its side is gone.
    this.socket.on('end', () => this.close('peer ended the connection'));
    this.socket.on('error', (err) => this.log.debug({ err: err.message }, 'socket error'));
    this.socket.on('data', (d: Buffer) => this.onData(d));
    this.write(upgradeResponse(accept));
    this.write(wsBinaryFrame([encodeFlvHeader({ audio: true, video: true })]));
    if (head.length > 0) this.onData(head);
    if (this.state === 'closed') return;
    this.hub.addSink(this);
    this.log.debug('WebSocket-FLV viewer started');
  }

  private onData(d: Buffer): void {
    this.bytesIn += d.length;
    this.reader.push(d);
  }

  bufferedBytes(): number {
    return this.socket.writableLength;
  }

  /**
   * A control reply (pong). Past the reply bound it is not sent (RFC 6455 §5.5.3 lets a pong
   * answer only the latest ping), and the client's further frames are left unread until the
   * socket drains: its pings then wait in its own send buffer, not in our memory.
   */
  private reply(frame: Buffer): void {
    const bound = this.host.config.limits.reply_buffer_bytes;
    if (this.socket.writableLength > bound) {
      this.unanswered++;
      this.holdReading();
      return;
    }
    this.write(frame);
    if (this.socket.writableLength > bound) this.holdReading();
  }

  private holdReading(): void {
    // Without a pending 'drain' (bound below the socket's own high-water mark) nothing would resume us.
    if (this.readingHeld || this.state === 'closed' || !this.socket.writableNeedDrain) return;
    this.readingHeld = true;
    this.socket.pause();
    this.socket.once('drain', () => {
      this.readingHeld = false;
      if (this.state !== 'closed') this.socket.resume();
    });
  }

  write(buf: Buffer): void {
    if (this.state === 'closed' || this.socket.destroyed) return;
    this.bytesOut += buf.length;
    this.socket.write(buf);
  }

  evict(reason: string): void {
    this.close(reason, WsClose.POLICY);
  }

  kick(reason: string): void {
    this.close(reason, WsClose.GOING_AWAY);
  }

  private close(reason: string, code: number = WsClose.NORMAL): void {
    if (this.state === 'closed') return;
    // Our close frame must follow whole frames only: everything queued was written as whole frames.
    if (!this.socket.destroyed) this.socket.write(closeFrame(code, reason));
    this.state = 'closed';
    this.hub.removeSink(this);
    this.host.endPlay(this.hub);
    this.host.sessionDone('play', this.req, { bytesIn: this.bytesIn, bytesOut: this.bytesOut, durationMs: Date.now() - this.startedAt });
    this.log.debug({ reason, code, unansweredPings: this.unanswered }, 'WebSocket-FLV viewer closed');
    if (!this.socket.destroyed) this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onClosed(this);
  }

  info(): SessionInfo {
    return {
      id: this.id,
      protocol: 'ws-flv',
      remote: this.req.remote,
      role: 'viewer',
      app: this.req.app,
      stream: this.req.stream,
      startedAt: this.startedAt,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      droppedFrames: this.hub.sinkDrops(this.id),
    };
  }
}

/** `/ws/<app>/<stream>.flv[?query]` → decoded names, or undefined when the path is not ours. */
export function parseWsFlvPath(url: string | undefined): { app: string; stream: string; query: string } | { error: string } | undefined {
  if (!url?.startsWith('/ws/')) return undefined;
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const parts = path.split('/');
  if (parts.length !== 4 || !parts[3]!.endsWith('.flv')) return undefined;
  try {
    return { app: decodeURIComponent(parts[2]!), stream: decodeURIComponent(parts[3]!.slice(0, -4)), query: q < 0 ? '' : url.slice(q + 1) };
  } catch {
    return { error: 'malformed percent-encoding in the path' };
  }
}

function reject(socket: Socket, status: number, body: Record<string, unknown>, headers?: Record<string, string>): void {
  if (!socket.destroyed) socket.end(httpErrorResponse(status, body, headers));
  setTimeout(() => socket.destroy(), 1000).unref();
}

export function registerWsFlv(app: FastifyInstance, ctx: HttpFeatureContext): void {
  const { host, limiter } = ctx;
  const server = app.server;
  const sessions = new Set<WsFlvSession>();
  const handshaking = new Set<Socket>();
  let closing = false;

  async function handle(req: IncomingMessage, socket: Socket, head: Buffer, target: { app: string; stream: string; query: string }): Promise<void> {
    const check = checkUpgrade(req);
    if (!check.ok) return reject(socket, check.status, { error: check.message }, check.headers);
    const maxBytes = host.config.limits.max_stream_name_bytes;
    const problem = checkName('app', target.app, maxBytes) ?? checkName('stream', target.stream, maxBytes);
    if (problem) return reject(socket, 400, { error: problem });
    const remoteIp = socket.remoteAddress ?? 'unknown';
    const refused = limiter.admit(remoteIp);
    if (refused) return reject(socket, 503, { error: refused });
    const id = newSessionId('w');
    const sreq: StreamRequest = {
      app: target.app,
      stream: target.stream,
      params: new URLSearchParams(target.query),
      sessionId: id,
      remote: `${remoteIp}:${socket.remotePort ?? 0}`,
      protocol: 'ws-flv',
    };
    handshaking.add(socket);
    // Read the socket while admission is pending, so a client that hangs up is noticed. A client
    // may not send frames before the 101: anything beyond a frame header's worth is refused.
    let gone = false;
    let early: Buffer = head;
    const onEarly = (d: Buffer): void => {
      early = Buffer.concat([early, d]);
      if (early.length > EARLY_BYTES) socket.destroy();
    };
    const onGone = (): void => {
      gone = true;
    };
    socket.on('data', onEarly);
    socket.on('end', onGone);
    socket.on('close', onGone);
    let admission;
    try {
      admission = await host.admitPlay(sreq);
    } catch (err) {
      limiter.release(remoteIp);
      host.log.warn({ err: String(err), app: sreq.app, stream: sreq.stream }, 'WebSocket-FLV admission failed');
      return reject(socket, 500, { error: 'admission failed' });
    } finally {
      handshaking.delete(socket);
      socket.off('data', onEarly);
      socket.off('end', onGone);
      socket.off('close', onGone);
    }
    if (!admission.ok) {
      limiter.release(remoteIp);
      if (gone) return void socket.destroy();
      const status = admission.code.endsWith('StreamNotFound') ? 404 : /draining/.test(admission.description) ? 503 : 403;
      return reject(socket, status, { error: admission.description, code: admission.code });
    }
    if (gone || socket.destroyed || closing) {
      // Admitted for a client that is no longer there: undo the admission (relay reference,
      // limiter slot) and close the play the authoriser allowed, so on_play_done goes out.
      limiter.release(remoteIp);
      host.endPlay(admission.hub);
      host.sessionDone('play', sreq, { bytesIn: 0, bytesOut: 0, durationMs: 0 });
      if (!socket.destroyed && !gone) reject(socket, 503, { error: 'node is shutting down' });
      else socket.destroy();
      return;
    }
    const session = new WsFlvSession(id, socket, admission.hub, sreq, host, (s) => {
      sessions.delete(s);
      host.sessions.remove(s);
      limiter.release(remoteIp);
    });
    sessions.add(session);
    host.sessions.add(session);
    session.start(check.accept, early);
  }

  const onUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    const target = parseWsFlvPath(req.url);
    if (target === undefined) {
      // Not ours. With no other upgrade handler nobody would answer: say so and close.
      if (server.listenerCount('upgrade') === 1) reject(socket, 404, { error: 'not found' });
      return;
    }
    socket.on('error', () => undefined);
    if (closing) return reject(socket, 503, { error: 'node is shutting down' });
    if ('error' in target) return reject(socket, 400, { error: target.error });
    handle(req, socket, head, target).catch((err: unknown) => {
      host.log.warn({ err: String(err) }, 'WebSocket-FLV upgrade failed');
      socket.destroy();
    });
  };
  server.on('upgrade', onUpgrade);

  // A plain GET of a WebSocket-FLV URL: point the client at the upgrade. (Other paths under
  // /ws/ fall through to the other routes: an app may be called "ws".)
  app.get('/ws/:app/:name.flv', async (_req, reply) => {
    return reply.code(426).header('Upgrade', 'websocket').header('Connection', 'Upgrade').send({ error: 'this URL is a WebSocket (Upgrade: websocket)' });
  });

  app.addHook('onClose', async () => {
    closing = true;
    server.off('upgrade', onUpgrade);
    for (const s of [...sessions]) s.kick('node shutting down');
    for (const s of handshaking) s.destroy();
  });
}

export const WS_FLV_FEATURE: HttpFeature = {
  name: 'ws-flv',
  surface: 'public',
  register(app, ctx) {
    registerWsFlv(app, ctx);
  },
};
