/**
 * The server side of RFC 6455 that a media push needs: the opening handshake, unmasked
 * frames to the client, and a reader for what the client sends (ping → pong, close → close,
 * data ignored). The reader buffers at most one frame header and one control payload
 * (≤ 125 bytes); data frame payloads are skipped as they stream past, up to a total bound.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export const WsOpcode = { CONTINUATION: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 } as const;

/** Close codes (RFC 6455 §7.4.1). */
export const WsClose = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
} as const;

export function acceptKey(key: string): string {
  return createHash('sha1').update(key + WS_GUID).digest('base64');
}

export type HandshakeCheck = { ok: true; accept: string } | { ok: false; status: number; message: string; headers?: Record<string, string> };

function hasToken(header: string | string[] | undefined, token: string): boolean {
  const v = Array.isArray(header) ? header.join(',') : (header ?? '');
  return v
    .split(',')
    .map((t) => t.trim().toLowerCase())
    .includes(token);
}

/** Validates a client's opening handshake (§4.2.1). */
export function checkUpgrade(req: IncomingMessage): HandshakeCheck {
  if (req.method !== 'GET') return { ok: false, status: 405, message: 'WebSocket upgrade needs GET' };
  if (!hasToken(req.headers.upgrade, 'websocket')) return { ok: false, status: 400, message: 'Upgrade: websocket expected' };
  if (!hasToken(req.headers.connection, 'upgrade')) return { ok: false, status: 400, message: 'Connection: Upgrade expected' };
  const version = req.headers['sec-websocket-version'];
  if (version !== '13') return { ok: false, status: 426, message: 'only WebSocket version 13 is supported', headers: { 'Sec-WebSocket-Version': '13' } };
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || !/^[A-Za-z0-9+/]{22}==$/.test(key.trim())) return { ok: false, status: 400, message: 'invalid Sec-WebSocket-Key' };
  return { ok: true, accept: acceptKey(key.trim()) };
}

/** The 101 response head (no subprotocol, no extensions). */
export function upgradeResponse(accept: string): Buffer {
  return Buffer.from(['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Accept: ${accept}`, '', ''].join('\r\n'), 'latin1');
}

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 426: 'Upgrade Required', 500: 'Internal Server Error', 503: 'Service Unavailable' };

/** A complete HTTP error response for a refused upgrade (the connection closes after it). */
export function httpErrorResponse(status: number, body: Record<string, unknown>, headers: Record<string, string> = {}): Buffer {
  const json = JSON.stringify(body);
  const lines = [
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}`,
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(json)}`,
    'Connection: close',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    '',
    json,
  ];
  return Buffer.from(lines.join('\r\n'), 'utf8');
}

/** An unmasked control frame (payload ≤ 125 bytes). */
export function controlFrame(opcode: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const p = payload.length > 125 ? payload.subarray(0, 125) : payload;
  const out = Buffer.allocUnsafe(2 + p.length);
  out[0] = 0x80 | opcode;
  out[1] = p.length;
  p.copy(out, 2);
  return out;
}

export function closeFrame(code: number, reason = ''): Buffer {
  let r = Buffer.from(reason, 'utf8');
  // 125 bytes of payload: 2 for the code, at most 123 of reason (a character cut in two is dropped).
  if (r.length > 123) r = Buffer.from(r.subarray(0, 123).toString('utf8').replace(/\uFFFD+$/u, ''), 'utf8');
  const p = Buffer.allocUnsafe(2 + r.length);
  p.writeUInt16BE(code, 0);
  r.copy(p, 2);
  return controlFrame(WsOpcode.CLOSE, p);
}

function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

export interface WsReaderEvents {
  ping(payload: Buffer): void;
  pong?(payload: Buffer): void;
  /** The client closed; `code` is what to echo in our close frame. */
  close(code: number, reason: string): void;
  /** The client broke the protocol or a bound: close with `code`. */
  error(code: number, message: string): void;
}

const enum ReadState {
  Header,
  Control,
  SkipData,
  Done,
}

/** Parses client → server frames (which must be masked, §5.1). */
export class WsFrameReader {
  private state = ReadState.Header;
  private buf: Buffer = Buffer.alloc(0);
  private opcode = 0;
  private mask: Buffer = Buffer.alloc(4);
  private payloadLeft = 0;
  private dataBytes = 0;
  private fragmented = false;

  constructor(
    private readonly on: WsReaderEvents,
    /** Total data-frame payload bytes a client may send (all ignored) before it is closed. */
    private readonly maxDataBytes = 1 << 20,
  ) {}

  get done(): boolean {
    return this.state === ReadState.Done;
  }

  push(chunk: Buffer): void {
    let data = chunk;
    while (data.length > 0 && this.state !== ReadState.Done) {
      if (this.state === ReadState.SkipData) {
        const n = Math.min(this.payloadLeft, data.length);
        this.payloadLeft -= n;
        data = data.subarray(n);
        if (this.payloadLeft === 0) this.state = ReadState.Header;
        continue;
      }
      this.buf = this.buf.length === 0 ? data : Buffer.concat([this.buf, data]);
      data = Buffer.alloc(0);
      const rest = this.state === ReadState.Header ? this.header() : this.control();
      if (rest === undefined) return; // need more bytes; buf holds them (bounded: header ≤ 14, control ≤ 125)
      data = rest;
    }
  }

  private fail(code: number, message: string): undefined {
    this.state = ReadState.Done;
    this.buf = Buffer.alloc(0);
    this.on.error(code, message);
    return undefined;
  }

  /** Consumes a frame header from `buf`; returns the bytes after it, or undefined when incomplete or failed. */
  private header(): Buffer | undefined {
    const b = this.buf;
    if (b.length < 2) return undefined;
    const b0 = b[0]!;
    const b1 = b[1]!;
    const fin = (b0 & 0x80) !== 0;
    if (b0 & 0x70) return this.fail(WsClose.PROTOCOL_ERROR, 'reserved bits set (no extension was negotiated)');
    const opcode = b0 & 0x0f;
    if (!(b1 & 0x80)) return this.fail(WsClose.PROTOCOL_ERROR, 'client frames must be masked');
    let len = b1 & 0x7f;
    let off = 2;
    if (len === 126) {
      if (b.length < 4) return undefined;
      len = b.readUInt16BE(2);
      off = 4;
    } else if (len === 127) {
      if (b.length < 10) return undefined;
      const hi = b.readUInt32BE(2);
      if (hi > 0x1fffff) return this.fail(WsClose.TOO_BIG, 'frame length out of range');
      len = hi * 2 ** 32 + b.readUInt32BE(6);
      off = 10;
    }
    if (b.length < off + 4) return undefined;
    this.mask = Buffer.from(b.subarray(off, off + 4));
    off += 4;
    const control = opcode >= 8;
    if (control) {
      if (opcode > WsOpcode.PONG) return this.fail(WsClose.PROTOCOL_ERROR, `unknown opcode ${opcode}`);
      if (!fin) return this.fail(WsClose.PROTOCOL_ERROR, 'fragmented control frame');
      if (len > 125) return this.fail(WsClose.PROTOCOL_ERROR, 'control frame longer than 125 bytes');
    } else {
      if (opcode > WsOpcode.BINARY) return this.fail(WsClose.PROTOCOL_ERROR, `unknown opcode ${opcode}`);
      if (opcode === WsOpcode.CONTINUATION ? !this.fragmented : this.fragmented) {
        return this.fail(WsClose.PROTOCOL_ERROR, opcode === WsOpcode.CONTINUATION ? 'continuation without a message' : 'new message inside a fragmented one');
      }
      this.fragmented = !fin;
      this.dataBytes += len;
      if (this.dataBytes > this.maxDataBytes) return this.fail(WsClose.POLICY, 'this endpoint does not take data from the client');
    }
    this.opcode = opcode;
    this.payloadLeft = len;
    const rest = b.subarray(off);
    this.buf = Buffer.alloc(0);
    if (control) {
      this.state = ReadState.Control;
      return this.control(rest);
    }
    this.state = len > 0 ? ReadState.SkipData : ReadState.Header;
    return rest;
  }

  /** Collects a control frame's payload and acts on it. */
  private control(more?: Buffer): Buffer | undefined {
    if (more !== undefined) this.buf = more;
    const b = this.buf;
    if (b.length < this.payloadLeft) return undefined;
    const payload = Buffer.from(b.subarray(0, this.payloadLeft));
    const rest = b.subarray(this.payloadLeft);
    for (let i = 0; i < payload.length; i++) payload[i]! ^= this.mask[i & 3]!;
    this.buf = Buffer.alloc(0);
    this.state = ReadState.Header;
    switch (this.opcode) {
      case WsOpcode.PING:
        this.on.ping(payload);
        break;
      case WsOpcode.PONG:
        this.on.pong?.(payload);
        break;
      case WsOpcode.CLOSE: {
        this.state = ReadState.Done;
        if (payload.length === 0) {
          this.on.close(WsClose.NORMAL, '');
        } else if (payload.length === 1) {
          this.on.error(WsClose.PROTOCOL_ERROR, 'close frame with a 1-byte payload');
        } else {
          const code = payload.readUInt16BE(0);
          if (!validCloseCode(code)) this.on.error(WsClose.PROTOCOL_ERROR, `invalid close code ${code}`);
          else this.on.close(code, payload.toString('utf8', 2));
        }
        return undefined;
      }
    }
    return rest;
  }
}
