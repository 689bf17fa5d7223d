/**
 * Stream keys are user input (docs/design.md): app and stream names are encoded
 * into tokens that are safe both as NATS subject tokens and as JetStream KV
 * key tokens, reversibly, and readable in `nats kv ls`.
 *
 * Encoding of one name:
 * - `[A-Za-z0-9_-]` are kept as is;
 * - every other character is written as its UTF-8 bytes, each as `=XX`
 *   (two UPPERCASE hex digits) — `.` → `=2E`, space → `=20`, `直` → `=E7=9B=B4`,
 *   `=` itself → `=3D`;
 * - the empty name is the token `=` (a lone `=` cannot occur otherwise).
 *
 * So a token only ever contains `[A-Za-z0-9_=-]`: never `.`, `*`, `>`,
 * whitespace or anything a KV key (`[-/_=.a-zA-Z0-9]`) rejects. Tokens are
 * canonical: `decodeNameToken` rejects anything `encodeNameToken` would not
 * produce (lowercase hex, escaped plain characters, invalid UTF-8), so
 * distinct names always map to distinct tokens and back.
 *
 * Limit: a token may be at most {@link MAX_STREAM_TOKEN_BYTES} (240) bytes.
 * The longest subject built from stream tokens is the relay-claim key
 * `$KV.meshcast-relays.<app>.<stream>.<node>` and it travels in the NATS
 * protocol control line together with a reply subject; the server's default
 * `max_control_line` is 4 KB and a client exceeding it is disconnected
 * (taking every stream of that node with it). 2 × 240 + overhead stays
 * well below 1 KB. Non-ASCII names cost 3 bytes per UTF-8 byte, so about
 * 26 CJK characters or 240 ASCII characters fit.
 */
import { StreamNameError, StreamTokenError } from './errors.ts';

export const MAX_STREAM_TOKEN_BYTES = 240;

const KEEP = /^[A-Za-z0-9_-]$/;
const TOKEN_SHAPE = /^(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+$/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const encoder = new TextEncoder();
const HEX = '0123456789ABCDEF';

/** Encode one name (an app or a stream name) to a single subject/KV token. */
export function encodeNameToken(name: string, what = 'name'): string {
  if (typeof name !== 'string') throw new StreamNameError(`${what} must be a string`);
  if (name.length === 0) return '=';
  if (LONE_SURROGATE.test(name)) throw new StreamNameError(`${what} is not well-formed Unicode (lone surrogate)`);
  let out = '';
  for (const ch of name) {
    if (KEEP.test(ch)) {
      out += ch;
    } else {
      for (const b of encoder.encode(ch)) out += '=' + HEX[b >> 4] + HEX[b & 15];
    }
    if (out.length > MAX_STREAM_TOKEN_BYTES) break;
  }
  if (out.length > MAX_STREAM_TOKEN_BYTES) {
    throw new StreamNameError(
      `${what} is too long: its subject-safe encoding exceeds ${MAX_STREAM_TOKEN_BYTES} bytes ` +
        `(ASCII letters/digits/-/_ count 1 byte, every other UTF-8 byte 3); ` +
        `the limit keeps NATS subjects and KV keys far below the server's control-line limit`,
    );
  }
  return out;
}

/** Inverse of {@link encodeNameToken}; throws StreamTokenError for non-canonical input. */
export function decodeNameToken(token: string): string {
  if (token === '=') return '';
  if (typeof token !== 'string' || token.length > MAX_STREAM_TOKEN_BYTES || !TOKEN_SHAPE.test(token)) {
    throw new StreamTokenError(`not a stream token: ${JSON.stringify(String(token)).slice(0, 80)}`);
  }
  const bytes: number[] = [];
  for (let i = 0; i < token.length; ) {
    if (token[i] === '=') {
      bytes.push(parseInt(token.slice(i + 1, i + 3), 16));
      i += 3;
    } else {
      bytes.push(token.charCodeAt(i));
      i += 1;
    }
  }
  let name: string;
  try {
    name = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Uint8Array.from(bytes));
  } catch {
    throw new StreamTokenError(`stream token is not valid UTF-8: ${token.slice(0, 80)}`);
  }
  if (encodeNameToken(name) !== token) throw new StreamTokenError(`stream token is not canonical: ${token.slice(0, 80)}`);
  return name;
}

/**
 * `<app>.<stream>` — the KV key in `meshcast-streams` and the stream part of
 * relay keys. Throws {@link StreamNameError} (code `STREAM_NAME`) when a
 * name cannot be encoded.
 */
export function encodeStreamToken(app: string, stream: string): string {
  return `${encodeNameToken(app, 'app name')}.${encodeNameToken(stream, 'stream name')}`;
}

/** Inverse of {@link encodeStreamToken}. Throws {@link StreamTokenError}. */
export function decodeStreamToken(token: string): { app: string; stream: string } {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 2) throw new StreamTokenError(`not an <app>.<stream> token: ${JSON.stringify(String(token)).slice(0, 80)}`);
  return { app: decodeNameToken(parts[0] as string), stream: decodeNameToken(parts[1] as string) };
}
