/**
 * HttpFlvSession: one HTTP-FLV viewer. After the response head it takes the raw socket
 * and writes the hub's shared batches: each batch is already one complete HTTP chunk
 * (`size CRLF tags CRLF`), so chunked framing costs nothing per viewer.
 */
import type { Socket } from 'node:net';
import { encodeFlvHeader } from '@meshcast/proto';
import { httpChunk, type WireFormat } from '../media/frame.ts';
import type { MediaHost, StreamRequest } from '../media/host.ts';
import type { MediaSink, StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';
import type { Session, SessionInfo } from '../sessions.ts';

type State = 'streaming' | 'closed';

export class HttpFlvSession implements Session, MediaSink {
  readonly format: WireFormat = { kind: 'flv-chunked' };
  private state: State = 'streaming';
  private bytesOut = 0;
  private readonly startedAt = Date.now();
  private readonly log: Logger;

  constructor(
    readonly id: string,
    private readonly socket: Socket,
    private readonly hub: StreamHub,
    private readonly req: StreamRequest,
    private readonly host: MediaHost,
    private readonly onClosed: (s: HttpFlvSession) => void,
  ) {
    this.log = host.log.child({ session: id, app: req.app, stream: req.stream, remote: req.remote });
  }

  start(extraHeaders: Record<string, string>): void {
    const head = [
      'HTTP/1.1 200 OK',
      'Content-Type: video/x-flv',
      'Transfer-Encoding: chunked',
      'Connection: close',
      'Cache-Control: no-cache, no-store',
      ...Object.entries(extraHeaders).map(([k, v]) => `${k}: ${v}`),
      '',
      '',
    ].join('\r\n');
    this.socket.setNoDelay(true);
    this.socket.on('close', () => this.close('peer closed the connection'));
    this.socket.on('error', (err) => this.log.debug({ err: err.message }, 'socket error'));
    // Whatever the viewer sends after its request is ignored, but must not pile up.
    this.socket.on('data', () => undefined);
    this.write(Buffer.from(head, 'latin1'));
    this.write(httpChunk([encodeFlvHeader({ audio: true, video: true })]));
    this.hub.addSink(this);
    this.log.debug('HTTP-FLV viewer started');
  }

  bufferedBytes(): number {
    return this.socket.writableLength;
  }

  write(buf: Buffer): void {
    if (this.state === 'closed' || this.socket.destroyed) return;
    this.bytesOut += buf.length;
    this.socket.write(buf);
  }

  evict(reason: string): void {
    this.close(reason);
  }

  kick(reason: string): void {
    this.close(reason);
  }

  private close(reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.hub.removeSink(this);
    this.host.endPlay(this.hub);
    this.host.sessionDone('play', this.req, { bytesIn: 0, bytesOut: this.bytesOut, durationMs: Date.now() - this.startedAt });
    this.log.debug({ reason }, 'HTTP-FLV viewer closed');
    // End the chunked body properly when we are the ones closing.
    if (!this.socket.destroyed) this.socket.end('0\r\n\r\n');
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onClosed(this);
  }

  info(): SessionInfo {
    return {
      id: this.id,
      protocol: 'http-flv',
      remote: this.req.remote,
      role: 'viewer',
      app: this.req.app,
      stream: this.req.stream,
      startedAt: this.startedAt,
      bytesIn: 0,
      bytesOut: this.bytesOut,
      droppedFrames: this.hub.sinkDrops(this.id),
    };
  }
}
