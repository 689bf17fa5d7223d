/**
 * RTMP message type ids, protocol control messages (types 1–6, spec §5.4 and
 * §6.2 "User Control Messages") and aggregate messages (type 22).
 *
 * Control messages are built on chunk stream 2, message stream 0, timestamp 0.
 */
import { Buffer } from 'node:buffer';
import { RtmpProtocolError } from '../errors.ts';
import type { RtmpMessage } from './chunk.ts';

export const MessageType = {
  SET_CHUNK_SIZE: 1,
  ABORT: 2,
  ACK: 3,
  USER_CONTROL: 4,
  WINDOW_ACK_SIZE: 5,
  SET_PEER_BANDWIDTH: 6,
  AUDIO: 8,
  VIDEO: 9,
  DATA_AMF3: 15,
  SHARED_OBJECT_AMF3: 16,
  COMMAND_AMF3: 17,
  DATA_AMF0: 18,
  SHARED_OBJECT_AMF0: 19,
  COMMAND_AMF0: 20,
  AGGREGATE: 22,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

export const UserControlEvent = {
  STREAM_BEGIN: 0,
  STREAM_EOF: 1,
  STREAM_DRY: 2,
  SET_BUFFER_LENGTH: 3,
  STREAM_IS_RECORDED: 4,
  PING_REQUEST: 6,
  PING_RESPONSE: 7,
} as const;
export type UserControlEvent = (typeof UserControlEvent)[keyof typeof UserControlEvent];

/** Set Peer Bandwidth limit types. */
export const PeerBandwidthLimit = { HARD: 0, SOFT: 1, DYNAMIC: 2 } as const;
export type PeerBandwidthLimit = (typeof PeerBandwidthLimit)[keyof typeof PeerBandwidthLimit];

/** Chunk stream id reserved for protocol control messages. */
export const CONTROL_CSID = 2;

export type ControlMessage =
  | { kind: 'setChunkSize'; size: number }
  | { kind: 'abort'; csid: number }
  | { kind: 'ack'; sequence: number }
  | { kind: 'windowAckSize'; size: number }
  | { kind: 'setPeerBandwidth'; size: number; limitType: PeerBandwidthLimit }
  | {
      kind: 'userControl';
      /** Event type; may be one not listed in UserControlEvent (then only `event` is set). */
      event: number;
      /** STREAM_BEGIN, STREAM_EOF, STREAM_DRY, SET_BUFFER_LENGTH, STREAM_IS_RECORDED. */
      streamId?: number;
      /** SET_BUFFER_LENGTH, in ms. */
      bufferLength?: number;
      /** PING_REQUEST, PING_RESPONSE. */
      timestamp?: number;
    };

function checkU32(name: string, v: number, min = 0): void {
  if (!Number.isInteger(v) || v < min || v > 0xffffffff) throw new RangeError(`${name} must be a uint32 ≥ ${min}, got ${v}`);
}

function control(type: number, payload: Buffer): RtmpMessage {
  return { csid: CONTROL_CSID, type, streamId: 0, timestamp: 0, payload };
}

function u32Message(type: number, v: number): RtmpMessage {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(v, 0);
  return control(type, p);
}

/** Set Chunk Size (type 1); `n` in 1..0x7FFFFFFF. */
export function setChunkSizeMessage(n: number): RtmpMessage {
  if (!Number.isInteger(n) || n < 1 || n > 0x7fffffff) throw new RangeError(`chunk size must be in 1..0x7FFFFFFF, got ${n}`);
  return u32Message(MessageType.SET_CHUNK_SIZE, n);
}

/** Abort Message (type 2) for the partial message on chunk stream `csid`. */
export function abortMessage(csid: number): RtmpMessage {
  checkU32('csid', csid);
  return u32Message(MessageType.ABORT, csid);
}

/** Acknowledgement (type 3): `seq` = bytes received so far (mod 2^32). */
export function ackMessage(seq: number): RtmpMessage {
  return u32Message(MessageType.ACK, seq >>> 0);
}

/** Window Acknowledgement Size (type 5). */
export function windowAckSizeMessage(n: number): RtmpMessage {
  checkU32('window acknowledgement size', n, 1);
  return u32Message(MessageType.WINDOW_ACK_SIZE, n);
}

/** Set Peer Bandwidth (type 6); limitType 0 hard, 1 soft, 2 dynamic. */
export function setPeerBandwidthMessage(n: number, limitType: PeerBandwidthLimit): RtmpMessage {
  checkU32('peer bandwidth', n, 1);
  if (limitType !== 0 && limitType !== 1 && limitType !== 2) throw new RangeError(`limit type must be 0, 1 or 2, got ${String(limitType)}`);
  const p = Buffer.allocUnsafe(5);
  p.writeUInt32BE(n, 0);
  p[4] = limitType;
  return control(MessageType.SET_PEER_BANDWIDTH, p);
}

/**
 * User Control Message (type 4). `a` is the stream id for the stream events,
 * the timestamp for PING_REQUEST/PING_RESPONSE; `b` is the buffer length in ms
 * for SET_BUFFER_LENGTH (required there, ignored elsewhere).
 */
export function userControlMessage(ev: UserControlEvent, a: number, b?: number): RtmpMessage {
  checkU32('user control event data', a);
  if (ev === UserControlEvent.SET_BUFFER_LENGTH) {
    if (b === undefined) throw new RangeError('SET_BUFFER_LENGTH needs a buffer length');
    checkU32('buffer length', b);
    const p = Buffer.allocUnsafe(10);
    p.writeUInt16BE(ev, 0);
    p.writeUInt32BE(a, 2);
    p.writeUInt32BE(b, 6);
    return control(MessageType.USER_CONTROL, p);
  }
  if (!Object.values(UserControlEvent).includes(ev)) throw new RangeError(`unknown user control event ${String(ev)}`);
  const p = Buffer.allocUnsafe(6);
  p.writeUInt16BE(ev, 0);
  p.writeUInt32BE(a, 2);
  return control(MessageType.USER_CONTROL, p);
}

function malformed(what: string, need: number, got: number): RtmpProtocolError {
  return new RtmpProtocolError('MESSAGE_MALFORMED', `${what} payload is ${got} bytes, expected at least ${need}`);
}

/**
 * Decodes a protocol control message (types 1–6). Extra trailing bytes are
 * ignored; short payloads, an unknown peer-bandwidth limit type and non-control
 * types are MESSAGE_MALFORMED. Unknown user control events (e.g. 26/27 SWF
 * verification, 31/32 buffer empty/ready) decode to `{kind:'userControl', event}`.
 */
export function decodeControl(msg: RtmpMessage): ControlMessage | RtmpProtocolError {
  const p = msg.payload;
  switch (msg.type) {
    case MessageType.SET_CHUNK_SIZE:
      if (p.length < 4) return malformed('Set Chunk Size', 4, p.length);
      // Bit 31 must be zero; a set bit makes the value out of range for every consumer.
      return { kind: 'setChunkSize', size: p.readUInt32BE(0) };
    case MessageType.ABORT:
      if (p.length < 4) return malformed('Abort', 4, p.length);
      return { kind: 'abort', csid: p.readUInt32BE(0) };
    case MessageType.ACK:
      if (p.length < 4) return malformed('Acknowledgement', 4, p.length);
      return { kind: 'ack', sequence: p.readUInt32BE(0) };
    case MessageType.WINDOW_ACK_SIZE:
      if (p.length < 4) return malformed('Window Acknowledgement Size', 4, p.length);
      return { kind: 'windowAckSize', size: p.readUInt32BE(0) };
    case MessageType.SET_PEER_BANDWIDTH: {
      if (p.length < 5) return malformed('Set Peer Bandwidth', 5, p.length);
      const limitType = p[4]!;
      if (limitType !== 0 && limitType !== 1 && limitType !== 2) {
        return new RtmpProtocolError('MESSAGE_MALFORMED', `Set Peer Bandwidth limit type ${limitType} is not 0, 1 or 2`);
      }
      return { kind: 'setPeerBandwidth', size: p.readUInt32BE(0), limitType };
    }
    case MessageType.USER_CONTROL: {
      if (p.length < 2) return malformed('User Control', 2, p.length);
      const event = p.readUInt16BE(0);
      switch (event) {
        case UserControlEvent.STREAM_BEGIN:
        case UserControlEvent.STREAM_EOF:
        case UserControlEvent.STREAM_DRY:
        case UserControlEvent.STREAM_IS_RECORDED:
          if (p.length < 6) return malformed(`User Control event ${event}`, 6, p.length);
          return { kind: 'userControl', event, streamId: p.readUInt32BE(2) };
        case UserControlEvent.SET_BUFFER_LENGTH:
          if (p.length < 10) return malformed('User Control SetBufferLength', 10, p.length);
          return { kind: 'userControl', event, streamId: p.readUInt32BE(2), bufferLength: p.readUInt32BE(6) };
        case UserControlEvent.PING_REQUEST:
        case UserControlEvent.PING_RESPONSE:
          if (p.length < 6) return malformed(`User Control event ${event}`, 6, p.length);
          return { kind: 'userControl', event, timestamp: p.readUInt32BE(2) };
        default:
          return { kind: 'userControl', event };
      }
    }
    default:
      return new RtmpProtocolError('MESSAGE_MALFORMED', `message type ${msg.type} is not a protocol control message`);
  }
}

const AGGREGATE_TAG_HEADER = 11;
const AGGREGATE_BACK_POINTER = 4;

/**
 * Splits an Aggregate message (type 22) into its sub-messages. The payload is
 * a sequence of FLV-tag-like records:
 *   type(1) size(3) timestamp(3) timestampExtended(1, high byte) streamId(3, ignored)
 *   body(size) backPointer(4, = 11 + size; not validated, optional after the last one)
 * Sub-message timestamps are rebased: aggregate.timestamp + (sub.ts - first sub.ts)
 * (mod 2^32). csid and message stream id are the aggregate's. Bodies are views
 * of the aggregate payload (no copy). Sub-messages must be audio, video or data
 * (AMF0/AMF3) — anything else, a truncated record or an empty aggregate is
 * MESSAGE_MALFORMED.
 */
export function splitAggregate(msg: RtmpMessage): RtmpMessage[] | RtmpProtocolError {
  if (msg.type !== MessageType.AGGREGATE) {
    return new RtmpProtocolError('MESSAGE_MALFORMED', `message type ${msg.type} is not an aggregate`);
  }
  const p = msg.payload;
  const out: RtmpMessage[] = [];
  let pos = 0;
  let first = 0;
  while (pos < p.length) {
    if (p.length - pos < AGGREGATE_TAG_HEADER) {
      return new RtmpProtocolError('MESSAGE_MALFORMED', `aggregate sub-message header truncated at offset ${pos}`);
    }
    const type = p[pos]!;
    const size = (p[pos + 1]! << 16) | (p[pos + 2]! << 8) | p[pos + 3]!;
    const ts = (((p[pos + 7]! << 24) | (p[pos + 4]! << 16) | (p[pos + 5]! << 8) | p[pos + 6]!) >>> 0);
    if (type !== MessageType.AUDIO && type !== MessageType.VIDEO && type !== MessageType.DATA_AMF0 && type !== MessageType.DATA_AMF3) {
      return new RtmpProtocolError('MESSAGE_MALFORMED', `aggregate sub-message of type ${type} at offset ${pos} (only audio, video, data allowed)`);
    }
    const bodyStart = pos + AGGREGATE_TAG_HEADER;
    const bodyEnd = bodyStart + size;
    if (bodyEnd > p.length) {
      return new RtmpProtocolError('MESSAGE_MALFORMED', `aggregate sub-message body of ${size} bytes at offset ${pos} overruns the ${p.length}-byte aggregate`);
    }
    if (out.length === 0) first = ts;
    out.push({
      csid: msg.csid,
      type,
      streamId: msg.streamId,
      timestamp: (msg.timestamp + ts - first) >>> 0,
      payload: p.subarray(bodyStart, bodyEnd),
    });
    pos = bodyEnd;
    if (p.length - pos < AGGREGATE_BACK_POINTER) {
      if (pos === p.length) break;
      return new RtmpProtocolError('MESSAGE_MALFORMED', `aggregate back pointer truncated at offset ${pos}`);
    }
    pos += AGGREGATE_BACK_POINTER;
  }
  if (out.length === 0) return new RtmpProtocolError('MESSAGE_MALFORMED', 'empty aggregate message');
  return out;
}
