/**
 * RtmpSession: one RTMP connection, server side. An explicit state machine
 * (handshake → awaiting connect → connected → closed), with the NetStreams it
 * creates (each idle, publishing or playing).
 *
 * Media from a publisher goes straight to its StreamHub; commands are handled one at a
 * time in arrival order through a bounded queue, because admission may wait on the mesh
 * (ownership lease) and a later command must not overtake an earlier one.
 */
import type { Socket } from 'node:net';
import {
  ChunkStreamDecoder,
  ChunkStreamEncoder,
  MessageType,
  RtmpProtocolError,
  RtmpServerHandshake,
  UserControlEvent,
  DEFAULT_AMF_LIMITS,
  asAmfObject,
  decodeAmf0,
  decodeAmf3Command,
  decodeControl,
  encodeAmf0,
  setChunkSizeMessage,
  setPeerBandwidthMessage,
  splitAggregate,
  userControlMessage,
  windowAckSizeMessage,
  ackMessage,
  type AmfLimits,
  type AmfObject,
  type AmfValue,
  type RtmpMessage,
} from '@meshcast/proto';
import type { PeerLogLimiter } from '@meshcast/mesh';
import { FRAME_AUDIO, FRAME_DATA, FRAME_VIDEO, type FrameType, type WireFormat } from '../media/frame.ts';
import { checkName, splitQuery, type MediaHost, type StreamRequest } from '../media/host.ts';
import type { MediaSink, PublisherHandle, StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';
import type { MeshPull } from '../mesh/mesh-credential.ts';
import { newSessionId, type Session, type SessionInfo, type SessionRole } from '../sessions.ts';
import { joinParams } from '../auth/params.ts';
import { VodError } from '../vod/vod-library.ts';
import { vodMediaPool, VodMediaError, type VodMedia } from '../vod/vod-media.ts';
import { VodPlayer, WRITE_BUFFER_BYTES, type VodOutput } from '../vod/vod-player.ts';

type ConnState = 'handshake' | 'awaitConnect' | 'connected' | 'closed';

type NetStream =
  | { kind: 'idle'; id: number }
  | { kind: 'publishing'; id: number; hub: StreamHub | undefined; handle: PublisherHandle; app: string; stream: string; lastMediaAt: number; req: StreamRequest; since: number }
  | { kind: 'playing'; id: number; hub: StreamHub; sink: ViewerSink; app: string; stream: string; req: StreamRequest; since: number }
  /** Playing a file of a VOD app: its own player, no hub. */
  | { kind: 'vod'; id: number; player: VodPlayer; app: string; stream: string; req: StreamRequest; since: number };

/** Messages this actor handles, in order. */
export type RtmpSessionMessage =
  | { type: 'bytes'; data: Buffer }
  | { type: 'timer' }
  | { type: 'kick'; reason: string }
  | { type: 'socketClosed' };

const MAX_QUEUED_COMMANDS = 64;
/**
 * A publisher whose data messages keep failing to decode is broken or hostile: past this many in
 * BAD_DATA_WINDOW_MS it is closed, so that it cannot keep the event loop busy building errors.
 */
const MAX_BAD_DATA_MESSAGES = 100;
const BAD_DATA_WINDOW_MS = 10_000;
/**
 * Protocol control and user control messages (acks, pings, window and buffer sizes) from one
 * peer in CONTROL_WINDOW_MS. Real clients send a few a second (an ack per window, a ping
 * answer, a buffer length); a peer past this floods, and each of its 18-byte pings would cost us
 * a decode and an answer, so it is closed rather than answered or read at line rate.
 */
const MAX_CONTROL_MESSAGES = 500;
const CONTROL_WINDOW_MS = 1000;
/** Events in fixed windows of `windowMs`: `over` is true once more than `max` fell in the current one. */
class WindowedCount {
  private since = 0;
  private count = 0;
  constructor(
    private readonly max: number,
    private readonly windowMs: number,
  ) {}
  over(now: number): boolean {
    if (now - this.since > this.windowMs) {
      this.since = now;
      this.count = 0;
    }
    return ++this.count > this.max;
  }
}

/** Longest client-supplied text echoed back or logged (FCPublish names, unknown command names, tcUrl). */
const MAX_ECHO_CHARS = 256;

/** A client-supplied value as text for an echo or a log line: strings only, cut to MAX_ECHO_CHARS; never String() of a tree. */
function clientText(v: unknown): string {
  if (typeof v !== 'string') return '';
  return v.length > MAX_ECHO_CHARS ? `${v.slice(0, MAX_ECHO_CHARS)}…` : v;
}
const WINDOW_ACK_SIZE = 5_000_000;
const PEER_BANDWIDTH = 5_000_000;

class ViewerSink implements MediaSink {
  readonly format: WireFormat;
  constructor(
    readonly id: string,
    private readonly session: RtmpSession,
    readonly streamId: number,
    chunkSize: number,
  ) {
    this.format = { kind: 'rtmp', chunkSize, streamId };
  }
  bufferedBytes(): number {
    return this.session.socket.writableLength;
  }
  write(buf: Buffer): void {
    this.session.writeMedia(buf);
  }
  evict(reason: string): void {
    this.session.handle({ type: 'kick', reason });
  }
  onPublishStart(): void {
    this.session.sendStatus(this.streamId, 'status', 'NetStream.Play.PublishNotify', 'Stream is now published.');
  }
  onPublishStop(): void {
    this.session.sendStatus(this.streamId, 'status', 'NetStream.Play.UnpublishNotify', 'Stream is now unpublished.');
  }
}

export class RtmpSession implements Session {
  readonly id: string;
  private state: ConnState = 'handshake';
  private readonly handshake = new RtmpServerHandshake();
  private readonly decoder: ChunkStreamDecoder;
  private readonly encoder = new ChunkStreamEncoder(128);
  private readonly streams = new Map<number, NetStream>();
  private nextStreamId = 1;
  private app = '';
  private appParams = new URLSearchParams();
  private objectEncoding = 0;
  private meshPeer: string | undefined;
  /** The stream and ownership epoch the relay's credential names (with `meshPeer`). */
  private meshPull: MeshPull | undefined;
  /** A mesh pull connection has asked to play (its one play). */
  private meshPlayed = false;
  private peerWindow = 0;
  private lastAcked = 0;
  private readonly startedAt = Date.now();
  private bytesOut = 0;
  private commandQueue: RtmpMessage[] = [];
  private commandRunning = false;
  private readonly timer: NodeJS.Timeout;
  private log: Logger;
  private readonly remote: string;
  private readonly amfLimits: AmfLimits;
  /** Last time this connection published, played or had a command in flight (idle_connection_timeout_ms). */
  private lastActiveAt = Date.now();
  /** Reading is paused because the peer does not read our replies (limits.reply_buffer_bytes). */
  private readPaused = false;
  private readonly badData = new WindowedCount(MAX_BAD_DATA_MESSAGES, BAD_DATA_WINDOW_MS);
  private readonly controlMessages = new WindowedCount(MAX_CONTROL_MESSAGES, CONTROL_WINDOW_MS);

  constructor(
    readonly socket: Socket,
    private readonly host: MediaHost,
    private readonly onClosed: (s: RtmpSession) => void,
    /** Shared by every connection of the node: bounds the lines one address's bad input writes. */
    private readonly peerLog?: PeerLogLimiter,
  ) {
    this.id = newSessionId('r');
    this.remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`;
    this.log = host.log.child({ session: this.id, remote: this.remote });
    const lim = host.config.limits;
    this.amfLimits = { ...DEFAULT_AMF_LIMITS, maxExpandedBytes: lim.max_amf_expanded_bytes };
    // Lower until a publish is authorised: before that a peer sends only small commands.
    this.decoder = new ChunkStreamDecoder({
      maxMessageLength: lim.max_message_bytes,
      maxChunkSize: lim.max_chunk_size,
      maxPartialBytes: lim.max_unfinished_message_bytes_unpublished,
    });
    socket.setNoDelay(true);
    socket.on('data', (data: Buffer) => this.handle({ type: 'bytes', data }));
    socket.on('drain', () => {
      this.resumeReading();
      for (const ns of this.streams.values()) if (ns.kind === 'vod') ns.player.handle({ type: 'drained' });
    });
    socket.on('close', () => this.handle({ type: 'socketClosed' }));
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'socket error'));
    this.timer = setInterval(() => this.handle({ type: 'timer' }), 1000);
    this.timer.unref();
  }

  handle(msg: RtmpSessionMessage): void {
    switch (msg.type) {
      case 'bytes':
        this.onBytes(msg.data);
        this.checkReplyBuffer();
        return;
      case 'timer':
        this.onTimer();
        return;
      case 'kick':
        this.close(msg.reason, 'info');
        return;
      case 'socketClosed':
        this.close('peer closed the connection', 'debug');
        return;
    }
  }

  private onBytes(data: Buffer): void {
    switch (this.state) {
      case 'closed':
        return;
      case 'handshake': {
        const step = this.handshake.push(data);
        if (step instanceof RtmpProtocolError) return this.fail(step);
        for (const b of step.send) this.write(b);
        if (!step.done) return;
        this.state = 'awaitConnect';
        this.log.debug({ handshake: this.handshake.kind }, 'handshake complete');
        if (step.rest.length > 0) this.onChunks(step.rest);
        return;
      }
      case 'awaitConnect':
      case 'connected':
        this.onChunks(data);
        return;
    }
  }

  private onChunks(data: Buffer): void {
    const msgs = this.decoder.push(data);
    if (msgs instanceof RtmpProtocolError) return this.fail(msgs);
    for (const m of msgs) {
      if (this.state === 'closed') return;
      this.onMessage(m);
    }
    this.maybeAck();
  }

  private maybeAck(): void {
    if (this.peerWindow <= 0 || this.state === 'closed') return;
    const received = this.decoder.bytesReceived;
    if (received - this.lastAcked >= this.peerWindow) {
      this.lastAcked = received;
      this.sendControl(ackMessage(received % 0x100000000));
    }
  }

  private onMessage(m: RtmpMessage): void {
    switch (m.type) {
      case MessageType.AUDIO:
      case MessageType.VIDEO:
        this.onMedia(m.type === MessageType.AUDIO ? FRAME_AUDIO : FRAME_VIDEO, m);
        return;
      case MessageType.AGGREGATE: {
        const parts = splitAggregate(m);
        if (parts instanceof RtmpProtocolError) return this.fail(parts);
        for (const p of parts) if (p.type === MessageType.AUDIO || p.type === MessageType.VIDEO || p.type === MessageType.DATA_AMF0) this.onMessage(p);
        return;
      }
      case MessageType.DATA_AMF0:
      case MessageType.DATA_AMF3:
        this.onData(m);
        return;
      case MessageType.COMMAND_AMF0:
      case MessageType.COMMAND_AMF3:
        if (this.commandQueue.length >= MAX_QUEUED_COMMANDS) {
          return this.fail(new RtmpProtocolError('MESSAGE_MALFORMED', `more than ${MAX_QUEUED_COMMANDS} commands queued`));
        }
        this.commandQueue.push(m);
        void this.runCommands();
        return;
      case MessageType.SET_CHUNK_SIZE:
      case MessageType.ABORT:
      case MessageType.ACK:
      case MessageType.SET_PEER_BANDWIDTH:
        this.countControl();
        return; // the decoder applies chunk size and abort itself
      case MessageType.WINDOW_ACK_SIZE: {
        if (!this.countControl()) return;
        const c = decodeControl(m);
        if (c instanceof RtmpProtocolError) return this.fail(c);
        if (c.kind === 'windowAckSize') this.peerWindow = c.size;
        return;
      }
      case MessageType.USER_CONTROL: {
        if (!this.countControl()) return;
        const c = decodeControl(m);
        if (c instanceof RtmpProtocolError) return this.fail(c);
        if (c.kind === 'userControl' && c.event === UserControlEvent.PING_REQUEST) {
          this.sendControl(userControlMessage(UserControlEvent.PING_RESPONSE, c.timestamp ?? 0));
        }
        if (c.kind === 'userControl' && c.event === UserControlEvent.SET_BUFFER_LENGTH) {
          // A VOD player sends ahead by the client's buffer length.
          const ns = this.streams.get(c.streamId ?? 0);
          if (ns?.kind === 'vod') ns.player.handle({ type: 'bufferLength', ms: c.bufferLength ?? 0 });
        }
        return;
      }
      default:
        this.log.debug({ type: m.type }, 'ignoring message type');
    }
  }

  /** Counts one control message; false (and the peer closed) once it floods. */
  private countControl(): boolean {
    if (!this.controlMessages.over(Date.now())) return true;
    this.fail(new RtmpProtocolError('CONTROL_FLOOD', `more than ${MAX_CONTROL_MESSAGES} control messages (acks, pings, sizes) in ${CONTROL_WINDOW_MS} ms`));
    return false;
  }

  /**
   * A peer that does not read what we send gets no more answers: past limits.reply_buffer_bytes
   * unread, we stop reading its requests (pings, commands, acks to send) until its socket
   * drains, so replies never pile up in memory. TCP backpressure then slows the peer itself.
   */
  private checkReplyBuffer(): void {
    if (this.state === 'closed' || this.readPaused) return;
    if (this.socket.writableLength > this.host.config.limits.reply_buffer_bytes) {
      this.readPaused = true;
      this.socket.pause();
      this.log.debug({ buffered: this.socket.writableLength }, 'peer is not reading; reading paused');
    }
  }

  private resumeReading(): void {
    if (!this.readPaused || this.state === 'closed') return;
    this.readPaused = false;
    this.socket.resume();
  }

  /** A line caused by this peer's input: at most a few per address per window, then a count of the rest. */
  private peerWarn(fields: Record<string, unknown>, msg: string): void {
    if (!this.peerLog) {
      this.log.warn(fields, msg);
      return;
    }
    const admitted = this.peerLog.admit(this.socket.remoteAddress ?? '?');
    if (admitted === undefined) return;
    this.log.warn(admitted.dropped > 0 ? { ...fields, dropped: admitted.dropped } : fields, admitted.dropped > 0 ? `${msg} (dropped ${admitted.dropped} more)` : msg);
  }

  private onMedia(type: FrameType, m: RtmpMessage): void {
    const ns = this.streams.get(m.streamId);
    if (!ns || ns.kind !== 'publishing' || !ns.hub) return;
    ns.lastMediaAt = Date.now();
    ns.hub.ingest(type, m.timestamp, m.payload, ns.handle);
  }

  private onData(m: RtmpMessage): void {
    const ns = this.streams.get(m.streamId);
    if (!ns || ns.kind !== 'publishing' || !ns.hub) return;
    const values = m.type === MessageType.DATA_AMF3 ? decodeAmf3Command(m.payload, this.amfLimits) : decodeAmf0(m.payload, this.amfLimits);
    if (values instanceof Error) {
      if (this.badData.over(Date.now())) {
        return this.fail(new RtmpProtocolError('MESSAGE_MALFORMED', `more than ${MAX_BAD_DATA_MESSAGES} undecodable data messages in ${BAD_DATA_WINDOW_MS} ms (last: ${values.code})`));
      }
      this.peerWarn({ err: values.message, code: values.code }, 'undecodable data message; dropped');
      return;
    }
    let v = values;
    if (v[0] === '@setDataFrame') v = v.slice(1);
    if (v[0] === 'onMetaData') {
      const meta = asAmfObject(v[1] as AmfValue);
      if (meta) {
        ns.hub.setMetadata(meta, ns.handle);
        return;
      }
    }
    // Other script data (cue points, captions, the load tester's clock) passes through as AMF0.
    ns.hub.ingest(FRAME_DATA, m.timestamp, m.type === MessageType.DATA_AMF0 ? m.payload : encodeAmf0(v, { preserveAvmplus: false }), ns.handle);
  }

  private async runCommands(): Promise<void> {
    if (this.commandRunning) return;
    this.commandRunning = true;
    try {
      while (this.commandQueue.length > 0 && this.state !== 'closed') {
        const m = this.commandQueue.shift()!;
        await this.onCommand(m);
      }
    } catch (err) {
      this.log.error({ err }, 'command handling failed');
      this.close('internal error', 'error');
    } finally {
      this.commandRunning = false;
    }
  }

  private async onCommand(m: RtmpMessage): Promise<void> {
    const values = m.type === MessageType.COMMAND_AMF3 ? decodeAmf3Command(m.payload, this.amfLimits) : decodeAmf0(m.payload, this.amfLimits);
    if (values instanceof Error) return this.fail(new RtmpProtocolError('MESSAGE_MALFORMED', `undecodable command (${values.code}): ${values.message}`));
    const [name, txnRaw, , ...args] = values;
    if (typeof name !== 'string') return this.fail(new RtmpProtocolError('MESSAGE_MALFORMED', 'command without a name'));
    const txn = typeof txnRaw === 'number' ? txnRaw : 0;
    const cmdObj = values[2];
    if (this.state === 'awaitConnect' && name !== 'connect') {
      return this.fail(new RtmpProtocolError('MESSAGE_MALFORMED', `"${clientText(name)}" before connect`));
    }
    switch (name) {
      case 'connect':
        return this.onConnect(txn, asAmfObject(cmdObj as AmfValue));
      case 'createStream':
        return this.onCreateStream(txn);
      case 'releaseStream':
      case 'FCPublish':
      case 'FCSubscribe':
        if (name === 'FCPublish') this.sendCommand(0, ['onFCPublish', 0, null, { code: 'NetStream.Publish.Start', description: clientText(args[0]) }]);
        if (txn > 0) this.sendCommand(0, ['_result', txn, null, undefined]);
        return;
      case 'FCUnpublish':
        this.sendCommand(0, ['onFCUnpublish', 0, null, { code: 'NetStream.Unpublish.Success', description: clientText(args[0]) }]);
        if (txn > 0) this.sendCommand(0, ['_result', txn, null, undefined]);
        return;
      case 'publish':
        return this.onPublish(m.streamId, args[0], args[1]);
      case 'play':
        return this.onPlay(m.streamId, args[0], args[1]);
      case 'play2':
        return;
      case 'deleteStream': {
        const id = typeof args[0] === 'number' ? args[0] : m.streamId;
        this.endStream(id, 'deleteStream');
        this.streams.delete(id);
        return;
      }
      case 'closeStream':
        this.endStream(m.streamId, 'closeStream');
        return;
      case 'getStreamLength':
        return this.onGetStreamLength(txn, args[0]);
      case 'pause':
      case 'pauseRaw':
      case 'seek': {
        // Only a file can be paused or sought; a live stream ignores both, as before.
        const ns = this.streams.get(m.streamId);
        if (ns?.kind !== 'vod') return;
        if (name === 'seek') ns.player.handle({ type: 'seek', ms: typeof args[0] === 'number' && Number.isFinite(args[0]) ? args[0] : 0 });
        else ns.player.handle({ type: 'pause', pause: typeof args[0] === 'boolean' ? args[0] : undefined });
        return;
      }
      case 'receiveAudio':
      case 'receiveVideo':
        return;
      default:
        this.log.debug({ command: clientText(name) }, 'unknown command');
        if (txn > 0) {
          this.sendCommand(0, ['_error', txn, null, { level: 'error', code: 'NetConnection.Call.Failed', description: `Method not found (${clientText(name)}).` }]);
        }
    }
  }

  private onConnect(txn: number, cmd: AmfObject | undefined): void {
    if (this.state !== 'awaitConnect') {
      return this.fail(new RtmpProtocolError('MESSAGE_MALFORMED', 'second connect on one connection'));
    }
    const rawApp = typeof cmd?.app === 'string' ? cmd.app : '';
    const { name, params } = splitQuery(rawApp.replace(/\/+$/, ''));
    const problem = checkName('app', name, this.host.config.limits.max_stream_name_bytes);
    if (problem) {
      this.sendCommand(0, ['_error', txn, null, { level: 'error', code: 'NetConnection.Connect.Rejected', description: problem }]);
      return this.close(`connect rejected: ${problem}`, 'info');
    }
    if (cmd?.meshcast !== undefined) {
      // A peer that presents a mesh credential is a relay; a bad one is refused outright.
      const check = this.host.verifyMeshCredential(cmd.meshcast);
      if (!check.ok) {
        this.sendCommand(0, ['_error', txn, null, { level: 'error', code: 'NetConnection.Connect.Rejected', description: `mesh pull refused: ${check.reason}` }]);
        return this.close(`mesh pull refused: ${check.reason}`, 'info');
      }
      this.meshPeer = check.node;
      this.meshPull = check.pull;
      this.log = this.log.child({ peer: check.node });
    }
    this.app = name;
    this.appParams = params;
    this.objectEncoding = typeof cmd?.objectEncoding === 'number' ? cmd.objectEncoding : 0;
    this.log = this.log.child({ app: name });
    this.state = 'connected';
    this.sendControl(windowAckSizeMessage(WINDOW_ACK_SIZE));
    this.sendControl(setPeerBandwidthMessage(PEER_BANDWIDTH, 2));
    const chunkSize = this.host.config.media.out_chunk_size;
    this.sendControl(setChunkSizeMessage(chunkSize));
    this.encoder.setChunkSize(chunkSize);
    this.sendCommand(0, [
      '_result',
      txn,
      { fmsVer: 'FMS/3,5,7,7009', capabilities: 31, mode: 1 },
      { level: 'status', code: 'NetConnection.Connect.Success', description: 'Connection succeeded.', objectEncoding: this.objectEncoding },
    ]);
    this.lastActiveAt = Date.now();
    this.log.debug({ tcUrl: clientText(cmd?.tcUrl), flashVer: clientText(cmd?.flashVer) }, 'connected');
  }

  private onCreateStream(txn: number): void {
    if (this.streams.size >= 16) {
      this.sendCommand(0, ['_error', txn, null, { level: 'error', code: 'NetConnection.Call.Failed', description: 'too many streams on one connection' }]);
      return;
    }
    const id = this.nextStreamId++;
    this.streams.set(id, { kind: 'idle', id });
    this.sendCommand(0, ['_result', txn, null, id]);
  }

  private request(rawName: unknown): { req: StreamRequest } | { problem: string } {
    if (typeof rawName !== 'string') return { problem: 'stream name missing' };
    const { name, params } = splitQuery(rawName);
    const problem = checkName('stream', name, this.host.config.limits.max_stream_name_bytes);
    if (problem) return { problem };
    // One list, the app's query first: a name in both is a repeat, which the authoriser refuses (auth/params.ts).
    const merged = joinParams(this.appParams, params);
    const req: StreamRequest = { app: this.app, stream: name, params: merged, sessionId: this.id, remote: this.remote, protocol: 'rtmp' };
    if (this.meshPeer) req.meshPeer = this.meshPeer;
    if (this.meshPull) req.meshPull = this.meshPull;
    return { req };
  }

  private async onPublish(streamId: number, rawName: unknown, _type: unknown): Promise<void> {
    const ns = this.streams.get(streamId);
    if (!ns || ns.kind !== 'idle') {
      this.sendStatus(streamId, 'error', 'NetStream.Publish.BadName', 'publish on a stream that was not created or is busy');
      return;
    }
    const r = this.request(rawName);
    if ('problem' in r) {
      this.log.info({ reason: r.problem }, 'publish refused');
      this.sendStatus(streamId, 'error', 'NetStream.Publish.BadName', r.problem);
      return;
    }
    const { app, stream } = r.req;
    const handle: PublisherHandle = {
      id: this.id,
      kind: 'rtmp',
      // Closing ends the stream through endPublish, which detaches only if we are still the hub's publisher.
      evict: (reason) => this.close(`publisher evicted: ${reason}`, 'info'),
    };
    const pending: NetStream = { kind: 'publishing', id: streamId, hub: undefined, handle, app, stream, lastMediaAt: Date.now(), req: r.req, since: Date.now() };
    this.streams.set(streamId, pending);
    const admission = await this.host.admitPublish(r.req, handle);
    if (this.state === 'closed') {
      if (admission.ok) this.host.endPublish(admission.hub, handle);
      return;
    }
    if (!admission.ok) {
      this.streams.set(streamId, { kind: 'idle', id: streamId });
      this.log.info({ stream, code: admission.code, reason: admission.description }, 'publish refused');
      if (admission.redirect) return this.redirect(streamId, admission.redirect, admission.description);
      this.sendStatus(streamId, 'error', admission.code, admission.description);
      return;
    }
    pending.hub = admission.hub;
    pending.lastMediaAt = Date.now();
    // An authorised publisher sends media: it may now hold larger unfinished messages.
    this.decoder.setMaxPartialBytes(this.host.config.limits.max_unfinished_message_bytes);
    this.log = this.log.child({ stream });
    this.sendControl(userControlMessage(UserControlEvent.STREAM_BEGIN, streamId));
    this.sendStatus(streamId, 'status', 'NetStream.Publish.Start', `${app}/${stream} is now published.`);
    this.log.info('publishing');
  }

  private async onPlay(streamId: number, rawName: unknown, start: unknown): Promise<void> {
    const ns = this.streams.get(streamId);
    if (!ns || ns.kind !== 'idle') {
      this.sendStatus(streamId, 'error', 'NetStream.Play.Failed', 'play on a stream that was not created or is busy');
      return;
    }
    const r = this.request(rawName);
    if ('problem' in r) {
      this.sendStatus(streamId, 'error', 'NetStream.Play.StreamNotFound', r.problem);
      return;
    }
    // play(name, start): a start of 0 or more is a position in a recorded stream (-1/-2: live or either, from the beginning here).
    if (this.host.vod?.isVodApp(r.req.app) && !this.meshPeer) return this.onVodPlay(streamId, r.req, typeof start === 'number' && start > 0 && Number.isFinite(start) ? start : 0);
    if (this.meshPeer) {
      // A mesh credential opens one play, of the stream it names, once: a relay pulls each stream on its own connection.
      if (this.meshPlayed) {
        this.log.info({ stream: r.req.stream }, 'second play on a mesh pull connection refused');
        this.sendStatus(streamId, 'error', 'NetStream.Play.Failed', 'a mesh pull connection plays one stream, once');
        return;
      }
      this.meshPlayed = true;
    }
    const admission = await this.host.admitPlay(r.req);
    if (this.state === 'closed') {
      if (admission.ok) this.host.endPlay(admission.hub);
      return;
    }
    if (!admission.ok) {
      if (admission.redirect) return this.redirect(streamId, admission.redirect, admission.description);
      this.log.info({ stream: r.req.stream, code: admission.code, reason: admission.description }, 'play refused');
      this.sendStatus(streamId, 'error', admission.code, admission.description);
      return;
    }
    const hub = admission.hub;
    const sink = new ViewerSink(`${this.id}:${streamId}`, this, streamId, this.host.config.media.out_chunk_size);
    this.streams.set(streamId, { kind: 'playing', id: streamId, hub, sink, app: r.req.app, stream: r.req.stream, req: r.req, since: Date.now() });
    this.log = this.log.child({ stream: r.req.stream });
    this.sendControl(userControlMessage(UserControlEvent.STREAM_BEGIN, streamId));
    this.sendStatus(streamId, 'status', 'NetStream.Play.Reset', `Playing and resetting ${r.req.stream}.`);
    this.sendStatus(streamId, 'status', 'NetStream.Play.Start', `Started playing ${r.req.stream}.`);
    this.write(this.encoder.encode({ csid: 5, type: MessageType.DATA_AMF0, streamId, timestamp: 0, payload: encodeAmf0(['|RtmpSampleAccess', true, true]) }));
    hub.addSink(sink);
    this.log.debug('playing');
  }

  /**
   * A play on a VOD app (`mp4:dir/file.mp4`, `file.flv`, `file`): the app's play rules, then the
   * library's file (refusals as the onStatus codes FMS uses), then a VodPlayer of its own.
   */
  private async onVodPlay(streamId: number, asked: StreamRequest, startMs: number): Promise<void> {
    const named = this.vodRequest(asked);
    if ('code' in named) {
      this.sendStatus(streamId, 'error', named.code, named.description);
      return;
    }
    const req = named.req;
    const refused = await this.host.admitVodPlay(req);
    if (this.state === 'closed') return;
    if (refused) {
      this.log.info({ stream: req.stream, code: refused.code, reason: refused.description }, 'VOD play refused');
      this.sendStatus(streamId, 'error', refused.code, refused.description);
      return;
    }
    const opened = await this.openVod(req.app, asked.stream);
    // The connection may have closed while the file was found and opened.
    if ((this.state as ConnState) === 'closed') {
      if ('media' in opened) opened.media.close();
      return;
    }
    if (!('media' in opened)) {
      this.sendStatus(streamId, 'error', opened.code, opened.description);
      return;
    }
    const ns = this.streams.get(streamId);
    if (!ns || ns.kind !== 'idle') {
      opened.media.close();
      this.sendStatus(streamId, 'error', 'NetStream.Play.Failed', 'play on a stream that was not created or is busy');
      return;
    }
    const out: VodOutput = {
      status: (level, code, description) => this.sendStatus(streamId, level, code, description),
      data: (values) => this.write(this.encoder.encode({ csid: 5, type: MessageType.DATA_AMF0, streamId, timestamp: 0, payload: encodeAmf0(values) })),
      control: (event) =>
        this.sendControl(userControlMessage(event === 'begin' ? UserControlEvent.STREAM_BEGIN : event === 'eof' ? UserControlEvent.STREAM_EOF : UserControlEvent.STREAM_IS_RECORDED, streamId)),
      frame: (f) => this.writeMedia(f.rtmp(this.host.config.media.out_chunk_size, streamId)),
      bufferedBytes: () => this.socket.writableLength,
    };
    this.log = this.log.child({ stream: req.stream });
    // Below the bound past which the session stops reading the peer's commands, so a seek or pause is read while media waits.
    const writeBufferBytes = Math.min(WRITE_BUFFER_BYTES, Math.floor(this.host.config.limits.reply_buffer_bytes / 2));
    const player = new VodPlayer(opened.media, out, this.log, { startMs, writeBufferBytes });
    this.streams.set(streamId, { kind: 'vod', id: streamId, player, app: req.app, stream: req.stream, req, since: Date.now() });
    this.log.info({ file: opened.media.file.name, durationMs: opened.media.durationMs }, 'playing VOD file');
  }

  /**
   * A VOD request under the file's checked name (`mp4:dir/a.mp4` → `dir/a.mp4`), the name the
   * play rules see over every protocol (a signed token, a webhook's stream); or the refusal of a
   * name that is not a safe file name (logged here, once).
   */
  private vodRequest(req: StreamRequest): { req: StreamRequest } | { code: string; description: string } {
    try {
      return { req: { ...req, stream: this.host.vod!.checkedName(req.app, req.stream).name } };
    } catch (err) {
      if (!(err instanceof VodError)) throw err;
      this.peerWarn({ reason: err.message }, 'VOD path refused');
      return { code: 'NetStream.Play.StreamNotFound', description: err.message };
    }
  }

  /** The file a VOD request names, opened; or the onStatus refusal (logged here, once). */
  private async openVod(app: string, name: string): Promise<{ media: VodMedia } | { code: string; description: string }> {
    try {
      const file = await this.host.vod!.resolve(app, name);
      // The node's opened copy of the file, shared with its other viewers; close() ends this viewer's use.
      return { media: await vodMediaPool(this.host).acquire(file) };
    } catch (err) {
      if (err instanceof VodError) {
        const code = err.reason === 'unavailable' ? 'NetStream.Play.Failed' : 'NetStream.Play.StreamNotFound';
        if (err.reason === 'bad_path') this.peerWarn({ reason: err.message }, 'VOD path refused');
        else this.log.info({ reason: err.reason, err: err.message }, 'VOD file not played');
        return { code, description: err.message };
      }
      if (err instanceof VodMediaError) {
        this.log.warn({ reason: err.reason, err: err.message }, 'VOD file cannot be played');
        return { code: 'NetStream.Play.Failed', description: err.message };
      }
      throw err;
    }
  }

  /** FMS's getStreamLength: the file's duration in seconds (0 for a live stream, or a file that cannot be opened). */
  private async onGetStreamLength(txn: number, rawName: unknown): Promise<void> {
    let seconds = 0;
    if (typeof rawName === 'string' && this.host.vod?.isVodApp(this.app)) {
      const r = this.request(rawName);
      const named = 'req' in r ? this.vodRequest(r.req) : undefined;
      const refused = named && 'req' in named ? await this.host.admitVodPlay(named.req) : { description: 'not a VOD file name' };
      if (!refused && 'req' in r) {
        const opened = await this.openVod(this.app, r.req.stream);
        if ('media' in opened) {
          seconds = opened.media.durationMs / 1000;
          opened.media.close();
        }
      }
    }
    if (txn > 0) this.sendCommand(0, ['_result', txn, null, seconds]);
  }

  /**
   * Sends the client elsewhere the way FMS/Wowza/SRS do: NetConnection.Connect.Rejected with
   * ex.redirect (clients that follow it reconnect there), then closes.
   */
  private redirect(streamId: number, url: string, description: string): void {
    this.write(
      this.encoder.encode({
        csid: 5,
        type: MessageType.COMMAND_AMF0,
        streamId,
        timestamp: 0,
        payload: encodeAmf0(['onStatus', 0, null, { level: 'error', code: 'NetConnection.Connect.Rejected', description, ex: { code: 302, redirect: url } }]),
      }),
    );
    this.log.info({ redirect: url }, 'client redirected');
    this.close('redirected', 'debug');
  }

  private endStream(streamId: number, why: string): void {
    const ns = this.streams.get(streamId);
    if (!ns) return;
    switch (ns.kind) {
      case 'idle':
        return;
      case 'publishing':
        if (ns.hub) {
          this.host.endPublish(ns.hub, ns.handle);
          this.host.sessionDone('publish', ns.req, { bytesIn: this.decoder.bytesReceived, bytesOut: this.bytesOut, durationMs: Date.now() - ns.since });
          this.log.info({ why }, 'unpublished');
        }
        break;
      case 'playing':
        ns.hub.removeSink(ns.sink);
        this.host.endPlay(ns.hub);
        this.host.sessionDone('play', ns.req, { bytesIn: this.decoder.bytesReceived, bytesOut: this.bytesOut, durationMs: Date.now() - ns.since });
        break;
      case 'vod':
        ns.player.handle({ type: 'close' });
        this.host.sessionDone('play', ns.req, { bytesIn: this.decoder.bytesReceived, bytesOut: this.bytesOut, durationMs: Date.now() - ns.since });
        break;
    }
    this.streams.set(streamId, { kind: 'idle', id: streamId });
  }

  private onTimer(): void {
    const now = Date.now();
    const lim = this.host.config.limits;
    switch (this.state) {
      case 'handshake':
        if (now - this.startedAt > lim.handshake_timeout_ms) this.close('handshake timeout', 'info');
        return;
      case 'awaitConnect':
        if (now - this.startedAt > lim.first_command_timeout_ms) this.close('no connect command in time', 'info');
        return;
      case 'connected': {
        let active = this.commandRunning;
        for (const ns of this.streams.values()) {
          if (ns.kind === 'publishing' && ns.hub && now - ns.lastMediaAt > lim.idle_publisher_timeout_ms) {
            this.close(`publisher sent no media for ${lim.idle_publisher_timeout_ms} ms`, 'info');
            return;
          }
          if (ns.kind !== 'idle') active = true;
        }
        if (active) this.lastActiveAt = now;
        else if (now - this.lastActiveAt > lim.idle_connection_timeout_ms) {
          this.close(`neither published nor played within ${lim.idle_connection_timeout_ms} ms`, 'info');
        }
        return;
      }
      case 'closed':
        return;
    }
  }

  private fail(err: RtmpProtocolError): void {
    this.peerWarn({ code: err.code, err: err.message }, 'protocol error; closing connection');
    this.close(err.message, 'debug');
  }

  private close(reason: string, level: 'debug' | 'info' | 'error'): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearInterval(this.timer);
    for (const id of [...this.streams.keys()]) this.endStream(id, reason);
    this.streams.clear();
    this.commandQueue = [];
    this.log[level]({ reason }, 'session closed');
    this.socket.destroy();
    this.onClosed(this);
  }

  kick(reason: string): void {
    this.handle({ type: 'kick', reason });
  }

  /** Tells the peer why on each playing stream (a relay fenced off a stale epoch reads the code), then closes. */
  closeWithStatus(code: string, description: string): void {
    if (this.state === 'closed') return;
    for (const ns of this.streams.values()) if (ns.kind === 'playing') this.sendStatus(ns.id, 'error', code, description);
    this.handle({ type: 'kick', reason: description });
  }

  private write(buf: Buffer): void {
    if (this.state === 'closed' || this.socket.destroyed) return;
    this.bytesOut += buf.length;
    this.socket.write(buf);
  }

  writeMedia(buf: Buffer): void {
    this.write(buf);
  }

  private sendControl(m: RtmpMessage): void {
    this.write(this.encoder.encode(m));
  }

  private sendCommand(streamId: number, values: AmfValue[]): void {
    this.write(this.encoder.encode({ csid: 3, type: MessageType.COMMAND_AMF0, streamId, timestamp: 0, payload: encodeAmf0(values) }));
  }

  sendStatus(streamId: number, level: 'status' | 'error' | 'warning', code: string, description: string): void {
    this.write(
      this.encoder.encode({
        csid: 5,
        type: MessageType.COMMAND_AMF0,
        streamId,
        timestamp: 0,
        payload: encodeAmf0(['onStatus', 0, null, { level, code, description, clientid: this.id }]),
      }),
    );
  }

  info(): SessionInfo {
    let role: SessionRole = 'idle';
    let app: string | undefined = this.app || undefined;
    let stream: string | undefined;
    let dropped = 0;
    for (const ns of this.streams.values()) {
      if (ns.kind === 'publishing') {
        role = 'publisher';
        app = ns.app;
        stream = ns.stream;
      } else if (ns.kind === 'playing') {
        role = this.meshPeer ? 'relay-pull' : 'viewer';
        app = ns.app;
        stream = ns.stream;
        dropped += ns.hub.sinkDrops(ns.sink.id);
      } else if (ns.kind === 'vod') {
        role = 'viewer';
        app = ns.app;
        stream = ns.stream;
      }
    }
    return {
      id: this.id,
      protocol: 'rtmp',
      remote: this.remote,
      role,
      app,
      stream,
      startedAt: this.startedAt,
      bytesIn: this.decoder.bytesReceived,
      bytesOut: this.bytesOut,
      droppedFrames: dropped,
    };
  }
}
