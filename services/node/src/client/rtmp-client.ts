/**
 * The project's RTMP client: publish and play, small and fast. The relay pulls with it,
 * the load tester opens thousands of them, and the tests use it to see exactly what a
 * viewer receives. It follows `NetConnection.Connect.Rejected` redirects (`ex.redirect`).
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import {
  ChunkStreamDecoder,
  ChunkStreamEncoder,
  MessageType,
  RtmpClientHandshake,
  RtmpProtocolError,
  UserControlEvent,
  ackMessage,
  asAmfObject,
  decodeAmf0,
  decodeAmf3Command,
  decodeControl,
  encodeAmf0,
  setChunkSizeMessage,
  userControlMessage,
  windowAckSizeMessage,
  type AmfObject,
  type AmfValue,
  type RtmpMessage,
} from '@meshcast/proto';

export class RtmpClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly info?: AmfObject,
  ) {
    super(message);
    this.name = 'RtmpClientError';
  }
}

export interface RtmpUrl {
  host: string;
  port: number;
  app: string;
  stream: string;
  tcUrl: string;
}

/** `rtmp://host[:port]/app[/stream…][?query]`: the first path segment is the app, the rest is the stream. */
export function parseRtmpUrl(url: string): RtmpUrl {
  const m = /^rtmp:\/\/(\[[^\]]+\]|[^/:]+)(?::(\d+))?\/([^/]*)(?:\/(.*))?$/.exec(url);
  if (!m) throw new RtmpClientError('BAD_URL', `not an rtmp:// URL with an app: ${url}`);
  const host = m[1]!.replace(/^\[|\]$/g, '');
  const port = m[2] ? Number(m[2]) : 1935;
  let app = m[3]!;
  let stream = m[4] ?? '';
  try {
    stream = decodeURIComponent(stream);
    app = decodeURIComponent(app);
  } catch {
    /* keep the raw text: a literal % is allowed in stream keys */
  }
  return { host, port, app, stream, tcUrl: `rtmp://${m[1]}${m[2] ? `:${m[2]}` : ''}/${m[3]}` };
}

export interface RtmpClientOptions {
  timeoutMs?: number;
  complexHandshake?: boolean;
  /** Outgoing chunk size announced after connect (publishers send big frames in few chunks). */
  chunkSize?: number;
  maxRedirects?: number;
  /** Extra properties on the connect command object (e.g. the mesh credential). */
  connectExtras?: Record<string, AmfValue>;
  flashVer?: string;
  localAddress?: string;
  maxMessageLength?: number;
}

type ClientState = 'connecting' | 'connected' | 'playing' | 'publishing' | 'closed';

export interface StatusInfo {
  level: string;
  code: string;
  description: string;
  [k: string]: AmfValue;
}

interface Pending {
  resolve: (v: AmfValue[]) => void;
  reject: (e: Error) => void;
}

export class RtmpClient extends EventEmitter {
  private state: ClientState = 'connecting';
  private socket!: net.Socket;
  private decoder!: ChunkStreamDecoder;
  private encoder = new ChunkStreamEncoder(128);
  private txn = 1;
  private readonly pending = new Map<number, Pending>();
  private statusWaiter: ((s: StatusInfo) => void) | undefined;
  private peerWindow = 0;
  private lastAcked = 0;
  private streamId = 0;
  /** Set by the owner for the hot path: called for every audio, video and data message. */
  onFrame: ((m: RtmpMessage) => void) | undefined;
  bytesIn = 0;
  framesIn = 0;
  readonly url: RtmpUrl;
  private closeReason: string | undefined;

  private constructor(
    url: RtmpUrl,
    private readonly opts: RtmpClientOptions,
  ) {
    super();
    this.url = url;
  }

  /** Connects (handshake + `connect`), following redirects. */
  static async connect(url: string, opts: RtmpClientOptions = {}): Promise<RtmpClient> {
    let target = url;
    const max = opts.maxRedirects ?? 3;
    for (let hop = 0; ; hop++) {
      const client = new RtmpClient(parseRtmpUrl(target), opts);
      try {
        await client.open();
        return client;
      } catch (err) {
        client.close();
        const redirect = err instanceof RtmpClientError ? redirectOf(err.info) : undefined;
        if (redirect && hop < max) {
          // A redirect names the node to use; keep our stream path and query.
          target = joinRedirect(redirect, parseRtmpUrl(target));
          continue;
        }
        throw err;
      }
    }
  }

  get streamName(): string {
    return this.url.stream;
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  private open(): Promise<void> {
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new RtmpClientError('TIMEOUT', `no RTMP connect answer from ${this.url.host}:${this.url.port} in ${timeoutMs} ms`));
        this.close('timeout');
      }, timeoutMs);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        reject(err);
      };
      this.decoder = new ChunkStreamDecoder({ maxMessageLength: this.opts.maxMessageLength ?? 16 * 1024 * 1024 - 1 });
      const hs = new RtmpClientHandshake({ complex: this.opts.complexHandshake ?? false });
      let handshaking = true;
      this.socket = net.connect({ host: this.url.host, port: this.url.port, noDelay: true, ...(this.opts.localAddress ? { localAddress: this.opts.localAddress } : {}) });
      this.socket.on('connect', () => this.socket.write(hs.start()));
      this.socket.on('error', (err) => {
        fail(new RtmpClientError('SOCKET', `${this.url.host}:${this.url.port}: ${err.message}`));
        this.close(err.message);
      });
      this.socket.on('close', () => {
        fail(new RtmpClientError('CLOSED', 'connection closed during connect'));
        this.close('connection closed by server');
      });
      this.socket.on('data', (data: Buffer) => {
        this.bytesIn += data.length;
        if (handshaking) {
          const step = hs.push(data);
          if (step instanceof RtmpProtocolError) {
            fail(step);
            this.close(step.message);
            return;
          }
          for (const b of step.send) this.socket.write(b);
          if (!step.done) return;
          handshaking = false;
          this.sendConnect().then(
            () => {
              clearTimeout(timer);
              this.state = 'connected';
              resolve();
            },
            (err: Error) => {
              fail(err);
              this.close(err.message);
            },
          );
          if (step.rest.length > 0) this.onBytes(step.rest);
          return;
        }
        this.onBytes(data);
      });
    });
  }

  private async sendConnect(): Promise<void> {
    const chunkSize = this.opts.chunkSize ?? 4096;
    const cmd: AmfObject = {
      app: this.url.app,
      type: 'nonprivate',
      flashVer: this.opts.flashVer ?? 'FMLE/3.0 (compatible; meshcast)',
      tcUrl: this.url.tcUrl,
      fpad: false,
      capabilities: 15,
      audioCodecs: 4071,
      videoCodecs: 252,
      videoFunction: 1,
      objectEncoding: 0,
      ...(this.opts.connectExtras ?? {}),
    };
    const reply = this.call('connect', cmd);
    this.send(setChunkSizeMessage(chunkSize));
    this.encoder.setChunkSize(chunkSize);
    const values = await reply;
    const info = asAmfObject(values[3] as AmfValue);
    if (values[0] !== '_result') {
      throw new RtmpClientError(String(info?.code ?? 'NetConnection.Connect.Rejected'), `connect refused: ${String(info?.description ?? info?.code ?? 'no reason')}`, info);
    }
    this.send(windowAckSizeMessage(5_000_000));
  }

  private onBytes(data: Buffer): void {
    const msgs = this.decoder.push(data);
    if (msgs instanceof RtmpProtocolError) {
      this.close(`protocol error from server: ${msgs.message}`);
      return;
    }
    for (const m of msgs) {
      if (this.state === 'closed') return;
      this.onMessage(m);
    }
    if (this.peerWindow > 0) {
      const received = this.decoder.bytesReceived;
      if (received - this.lastAcked >= this.peerWindow) {
        this.lastAcked = received;
        this.send(ackMessage(received % 0x100000000));
      }
    }
  }

  private onMessage(m: RtmpMessage): void {
    switch (m.type) {
      case MessageType.AUDIO:
      case MessageType.VIDEO:
      case MessageType.DATA_AMF0:
        this.framesIn++;
        if (this.onFrame) this.onFrame(m);
        else this.emit('frame', m);
        return;
      case MessageType.COMMAND_AMF0:
      case MessageType.COMMAND_AMF3: {
        const values = m.type === MessageType.COMMAND_AMF3 ? decodeAmf3Command(m.payload) : decodeAmf0(m.payload);
        if (values instanceof Error) {
          this.close(`undecodable command from server: ${values.message}`);
          return;
        }
        this.onCommand(values);
        return;
      }
      case MessageType.WINDOW_ACK_SIZE: {
        const c = decodeControl(m);
        if (!(c instanceof RtmpProtocolError) && c.kind === 'windowAckSize') this.peerWindow = c.size;
        return;
      }
      case MessageType.USER_CONTROL: {
        const c = decodeControl(m);
        if (!(c instanceof RtmpProtocolError) && c.kind === 'userControl') {
          if (c.event === UserControlEvent.PING_REQUEST) this.send(userControlMessage(UserControlEvent.PING_RESPONSE, c.timestamp ?? 0));
          if (c.event === UserControlEvent.STREAM_EOF) this.emit('eof');
        }
        return;
      }
      default:
        return;
    }
  }

  private onCommand(values: AmfValue[]): void {
    const [name, txn] = values;
    if ((name === '_result' || name === '_error') && typeof txn === 'number') {
      const p = this.pending.get(txn);
      if (p) {
        this.pending.delete(txn);
        p.resolve(values);
      }
      return;
    }
    if (name === 'onStatus') {
      const info = asAmfObject(values[3] as AmfValue) as StatusInfo | undefined;
      if (!info) return;
      this.emit('status', info);
      this.statusWaiter?.(info);
      return;
    }
    if (name === 'close' || name === 'disconnect') this.close('server closed the connection');
  }

  private call(name: string, ...args: AmfValue[]): Promise<AmfValue[]> {
    const txn = this.txn++;
    return new Promise((resolve, reject) => {
      this.pending.set(txn, { resolve, reject });
      this.sendCommand(0, [name, txn, ...args]);
    });
  }

  private sendCommand(streamId: number, values: AmfValue[]): void {
    this.send({ csid: streamId === 0 ? 3 : 8, type: MessageType.COMMAND_AMF0, streamId, timestamp: 0, payload: encodeAmf0(values) });
  }

  private send(m: RtmpMessage): void {
    if (this.state === 'closed' || this.socket.destroyed) return;
    this.socket.write(this.encoder.encode(m));
  }

  private waitStatus(ok: (code: string) => boolean, bad: (code: string) => boolean, timeoutMs: number): Promise<StatusInfo> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.statusWaiter = undefined;
        reject(new RtmpClientError('TIMEOUT', `no status answer in ${timeoutMs} ms`));
      }, timeoutMs);
      const onClose = (reason: string): void => {
        clearTimeout(timer);
        this.statusWaiter = undefined;
        reject(new RtmpClientError('CLOSED', `connection closed: ${reason}`));
      };
      this.once('close', onClose);
      this.statusWaiter = (s) => {
        if (ok(s.code)) {
          clearTimeout(timer);
          this.off('close', onClose);
          this.statusWaiter = undefined;
          resolve(s);
        } else if (bad(s.code) || s.level === 'error') {
          clearTimeout(timer);
          this.off('close', onClose);
          this.statusWaiter = undefined;
          reject(new RtmpClientError(s.code, `${s.code}: ${s.description}`, s));
        }
      };
    });
  }

  private async createStream(): Promise<number> {
    const r = await this.call('createStream', null);
    if (r[0] !== '_result' || typeof r[3] !== 'number') throw new RtmpClientError('CREATE_STREAM', 'createStream failed');
    this.streamId = r[3];
    return r[3];
  }

  /**
   * Connects and plays `url`, following redirects at connect or at play (a node that placement
   * says should not serve this viewer answers NetConnection.Connect.Rejected with ex.redirect).
   */
  static async openPlayer(url: string, opts: RtmpClientOptions & { onFrame?: (m: RtmpMessage) => void } = {}): Promise<RtmpClient> {
    return RtmpClient.openFollowing(url, opts, async (client) => {
      if (opts.onFrame) client.onFrame = opts.onFrame;
      await client.play();
    });
  }

  /** Like openPlayer, for publishers: follows a draining or full ingest node's redirect. */
  static async openPublisher(url: string, opts: RtmpClientOptions = {}): Promise<RtmpClient> {
    return RtmpClient.openFollowing(url, opts, (client) => client.publish());
  }

  private static async openFollowing(url: string, opts: RtmpClientOptions, start: (c: RtmpClient) => Promise<unknown>): Promise<RtmpClient> {
    let target = url;
    const max = opts.maxRedirects ?? 3;
    for (let hop = 0; ; hop++) {
      const client = await RtmpClient.connect(target, opts);
      try {
        await start(client);
        return client;
      } catch (err) {
        client.close();
        const redirect = err instanceof RtmpClientError ? redirectOf(err.info) : undefined;
        if (redirect && hop < max) {
          target = joinRedirect(redirect, parseRtmpUrl(target));
          continue;
        }
        throw err;
      }
    }
  }

  /**
   * Plays `stream` (default: the URL's); resolves on NetStream.Play.Start. Frames go to onFrame / 'frame'.
   * `start`: play's start argument (a position in ms in a recorded stream; negative: live or either).
   */
  async play(stream = this.url.stream, timeoutMs = this.opts.timeoutMs ?? 10_000, start = -1000): Promise<StatusInfo> {
    const id = await this.createStream();
    this.send(userControlMessage(UserControlEvent.SET_BUFFER_LENGTH, id, 1000));
    const started = this.waitStatus(
      (c) => c === 'NetStream.Play.Start',
      (c) => (c.startsWith('NetStream.Play.') && c !== 'NetStream.Play.Reset' && c !== 'NetStream.Play.PublishNotify') || c === 'NetConnection.Connect.Rejected',
      timeoutMs,
    );
    this.sendCommand(id, ['play', 0, null, stream, start]);
    const s = await started;
    this.state = 'playing';
    return s;
  }

  /** VOD: asks for a position (ms); resolves on NetStream.Seek.Notify. Frames from the new position follow. */
  async seek(ms: number, timeoutMs = this.opts.timeoutMs ?? 10_000): Promise<StatusInfo> {
    const done = this.waitStatus((c) => c === 'NetStream.Seek.Notify', (c) => c === 'NetStream.Seek.Failed', timeoutMs);
    this.sendCommand(this.streamId, ['seek', 0, null, ms]);
    return done;
  }

  /** VOD: pauses (true) or resumes (false) at `ms`; resolves on NetStream.Pause.Notify / NetStream.Unpause.Notify. */
  async pause(pause: boolean, ms = 0, timeoutMs = this.opts.timeoutMs ?? 10_000): Promise<StatusInfo> {
    const want = pause ? 'NetStream.Pause.Notify' : 'NetStream.Unpause.Notify';
    const done = this.waitStatus((c) => c === want, () => false, timeoutMs);
    this.sendCommand(this.streamId, ['pause', 0, null, pause, ms]);
    return done;
  }

  /** FMS's getStreamLength: the named file's duration in seconds (0 when the server does not know it). */
  async getStreamLength(stream = this.url.stream): Promise<number> {
    const r = await this.call('getStreamLength', null, stream);
    return r[0] === '_result' && typeof r[3] === 'number' ? r[3] : 0;
  }

  /** Publishes `stream` (default: the URL's) live; resolves on NetStream.Publish.Start. */
  async publish(stream = this.url.stream, timeoutMs = this.opts.timeoutMs ?? 10_000): Promise<StatusInfo> {
    this.sendCommand(0, ['releaseStream', this.txn++, null, stream]);
    this.sendCommand(0, ['FCPublish', this.txn++, null, stream]);
    const id = await this.createStream();
    const started = this.waitStatus((c) => c === 'NetStream.Publish.Start', (c) => c.startsWith('NetStream.Publish.'), timeoutMs);
    this.sendCommand(id, ['publish', 0, null, stream, 'live']);
    const s = await started;
    this.state = 'publishing';
    return s;
  }

  sendMetadata(meta: AmfObject): void {
    this.send({ csid: 4, type: MessageType.DATA_AMF0, streamId: this.streamId, timestamp: 0, payload: encodeAmf0(['@setDataFrame', 'onMetaData', meta]) });
  }

  /** Sends one audio (8), video (9) or data (18) message on the published stream. */
  sendMedia(type: 8 | 9 | 18, timestamp: number, payload: Buffer): void {
    this.send({ csid: type === 8 ? 4 : type === 9 ? 6 : 5, type, streamId: this.streamId, timestamp, payload });
  }

  /** Bytes queued in our socket, for publishers that want to pace themselves. */
  get bufferedBytes(): number {
    return this.socket?.writableLength ?? 0;
  }

  close(reason = 'closed by client'): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.closeReason = reason;
    for (const p of this.pending.values()) p.reject(new RtmpClientError('CLOSED', reason));
    this.pending.clear();
    this.socket?.destroy();
    this.emit('close', reason);
  }

  get reason(): string | undefined {
    return this.closeReason;
  }
}

function redirectOf(info: AmfObject | undefined): string | undefined {
  const ex = info ? asAmfObject(info.ex as AmfValue) : undefined;
  const r = ex?.redirect ?? info?.redirect;
  return typeof r === 'string' && r.startsWith('rtmp://') ? r : undefined;
}

function joinRedirect(redirect: string, from: RtmpUrl): string {
  const r = parseRtmpUrl(redirect.includes('/', 'rtmp://'.length) ? redirect : `${redirect}/${from.app}`);
  const stream = r.stream || from.stream;
  return `rtmp://${r.host.includes(':') ? `[${r.host}]` : r.host}:${r.port}/${encodeURIComponent(r.app)}/${encodeURIComponent(stream)}`;
}
