/**
 * Typed protocol errors. Decoders return (never throw across their public
 * boundary) one of these so callers can log once and close the connection.
 */
export type ProtocolErrorCode =
  | 'HANDSHAKE_VERSION'
  | 'HANDSHAKE_DIGEST'
  | 'HANDSHAKE_STATE'
  | 'CHUNK_SIZE'
  | 'CHUNK_STREAM_ID'
  | 'CHUNK_HEADER'
  | 'MESSAGE_TOO_LONG'
  | 'MESSAGE_MALFORMED'
  | 'TOO_MANY_CHUNK_STREAMS'
  | 'PARTIAL_TOO_LARGE'
  | 'CONTROL_FLOOD'
  | 'AMF_TRUNCATED'
  | 'AMF_UNKNOWN_MARKER'
  | 'AMF_TOO_DEEP'
  | 'AMF_TOO_LONG'
  | 'AMF_TOO_LARGE'
  | 'AMF_REFERENCE'
  | 'FLV_HEADER'
  | 'FLV_TAG'
  | 'FLV_TOO_LONG'
  | 'CODEC_CONFIG'
  | 'MESH_MESSAGE'
  | 'MPEGTS';

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

export class RtmpProtocolError extends ProtocolError {}
export class AmfError extends ProtocolError {}
export class FlvError extends ProtocolError {}
export class CodecConfigError extends ProtocolError {}
export class MeshMessageError extends ProtocolError {}

export function isProtocolError(v: unknown): v is ProtocolError {
  return v instanceof ProtocolError;
}
