/**
 * RTMP handshake (C0/C1/C2 ↔ S0/S1/S2), server and client side.
 *
 * Two flavours exist in the wild:
 *
 * - **simple** (RTMP spec 1.0 §5.2): C1/S1 = time(4) zero(4) random(1528);
 *   C2/S2 echo the peer's packet (time, time2, random echo).
 * - **complex / digest** ("Flash 9+" handshake, undocumented by Adobe but used
 *   by Flash Player, FMS, ffmpeg, librtmp, nginx-rtmp, many hardware
 *   encoders): C1/S1 = time(4) version(4, nonzero) followed by two 764-byte
 *   blocks, one of which carries a 32-byte HMAC-SHA256 digest at a position
 *   derived from 4 offset bytes:
 *     - scheme 0: digest block first; offset = (sum of bytes 8..11) % 728 + 12
 *     - scheme 1: key block first;    offset = (sum of bytes 772..775) % 728 + 776
 *   The digest covers the 1504 other bytes of the packet and is keyed with the
 *   first 30 bytes of the player key (C1) or the first 36 bytes of the server
 *   key (S1). S2 (resp. C2) is 1504 random bytes followed by
 *   HMAC(HMAC(full server key, C1 digest), first 1504 bytes) (resp. with the
 *   full player key over the S1 digest).
 *
 * Encrypted RTMPE (C0 = 6, 8 or 9) is not supported and rejected with
 * `HANDSHAKE_VERSION`.
 *
 * Both classes are pure state machines: they never touch a socket. Feed them
 * whatever bytes arrive, in any split; write every Buffer in `send` in order.
 */
import { Buffer } from 'node:buffer';
import { createHmac, randomBytes } from 'node:crypto';
import { RtmpProtocolError } from '../errors.ts';

export const RTMP_HANDSHAKE_SIZE = 1536;
/** The only RTMP version (C0/S0 byte) we speak: plain, unencrypted RTMP. */
export const RTMP_VERSION = 3;

export interface HandshakeStep {
  /** Buffers to write to the peer, in order (possibly none). */
  send: Buffer[];
  /** True once the handshake is complete; switch to the chunk decoder. */
  done: boolean;
  /** Bytes received after the handshake (only non-empty when `done`), to feed the chunk decoder. */
  rest: Buffer;
}

export interface HandshakeOptions {
  /** Source of random bytes (default `crypto.randomBytes`). Inject for deterministic tests. */
  random?: (n: number) => Buffer;
  /**
   * Milliseconds for the 4-byte time field (taken modulo 2^32). The spec lets
   * it be any epoch, including 0, which is the default (keeps `proto` free of
   * clocks).
   */
  now?: () => number;
}

export interface ClientHandshakeOptions extends HandshakeOptions {
  /** Send a digest (Flash-style) C1 instead of a simple one. Default false. */
  complex?: boolean;
  /** Digest position scheme for a complex C1 (default 0, as Flash Player and ffmpeg use). */
  scheme?: 0 | 1;
}

export type HandshakeKind = 'simple' | 'complex-0' | 'complex-1';

const C0C1_SIZE = 1 + RTMP_HANDSHAKE_SIZE;
const S0S1S2_SIZE = 1 + 2 * RTMP_HANDSHAKE_SIZE;
const DIGEST_SIZE = 32;
/** Bytes of C2/S2 covered by their trailing digest. */
const SIGNED_SIZE = RTMP_HANDSHAKE_SIZE - DIGEST_SIZE; // 1504

const KEY_TAIL = Buffer.from([
  0xf0, 0xee, 0xc2, 0x4a, 0x80, 0x68, 0xbe, 0xe8, 0x2e, 0x00, 0xd0, 0xd1, 0x02, 0x9e, 0x7e, 0x57,
  0x6e, 0xec, 0x5d, 0x2d, 0x29, 0x80, 0x6f, 0xab, 0x93, 0xb8, 0xe6, 0x36, 0xcf, 0xeb, 0x31, 0xae,
]);
/** 62-byte Flash Player key; its first 30 bytes key the C1 digest. */
const PLAYER_KEY = Buffer.concat([Buffer.from('Genuine Adobe Flash Player 001', 'latin1'), KEY_TAIL]);
/** 68-byte Flash Media Server key; its first 36 bytes key the S1 digest. */
const SERVER_KEY = Buffer.concat([Buffer.from('Genuine Adobe Flash Media Server 001', 'latin1'), KEY_TAIL]);
const PLAYER_KEY_PART = PLAYER_KEY.subarray(0, 30);
const SERVER_KEY_PART = SERVER_KEY.subarray(0, 36);

/** Version we announce in a complex S1 (FMS 4.5.0.1; ffmpeg only checks the server digest if byte 0 ≥ 3). */
const SERVER_VERSION = [4, 5, 0, 1] as const;
/** Version we announce in a complex C1 (Flash Player 9.0.124.2, as ffmpeg/librtmp do). */
const CLIENT_VERSION = [9, 0, 124, 2] as const;

const EMPTY = Buffer.alloc(0);

function digestOffset(packet: Buffer, scheme: 0 | 1): number {
  const base = scheme === 0 ? 8 : 772;
  const sum = packet[base]! + packet[base + 1]! + packet[base + 2]! + packet[base + 3]!;
  return (sum % 728) + base + 4;
}

/** HMAC-SHA256 of the 1536-byte packet with the 32 digest bytes at `offset` left out. */
function packetDigest(packet: Buffer, offset: number, key: Buffer): Buffer {
  return createHmac('sha256', key)
    .update(packet.subarray(0, offset))
    .update(packet.subarray(offset + DIGEST_SIZE, RTMP_HANDSHAKE_SIZE))
    .digest();
}

/** Returns the digest offset if `packet` carries a valid digest in `scheme`, else -1. */
function findDigest(packet: Buffer, scheme: 0 | 1, key: Buffer): number {
  const offset = digestOffset(packet, scheme);
  const expected = packetDigest(packet, offset, key);
  return expected.equals(packet.subarray(offset, offset + DIGEST_SIZE)) ? offset : -1;
}

/** Writes the digest into `packet` (random bytes already in place); returns its offset. */
function imprintDigest(packet: Buffer, scheme: 0 | 1, key: Buffer): number {
  const offset = digestOffset(packet, scheme);
  packetDigest(packet, offset, key).copy(packet, offset);
  return offset;
}

/** Digest of the first 1504 bytes of C2/S2, keyed by HMAC(fullKey, peerDigest). */
function responseDigest(packet: Buffer, fullKey: Buffer, peerDigest: Buffer): Buffer {
  const key = createHmac('sha256', fullKey).update(peerDigest).digest();
  return createHmac('sha256', key).update(packet.subarray(0, SIGNED_SIZE)).digest();
}

function fillRandom(random: (n: number) => Buffer, target: Buffer): void {
  const bytes = random(target.length);
  if (bytes.length < target.length) {
    throw new RangeError(`handshake random source returned ${bytes.length} bytes, wanted ${target.length}`);
  }
  bytes.copy(target, 0, 0, target.length);
}

function versionError(v: number): RtmpProtocolError {
  let hint = '';
  if (v === 6 || v === 8 || v === 9) hint = ' (encrypted RTMPE is not supported; use plain rtmp://)';
  else if (v === 0x16) hint = ' (looks like a TLS ClientHello; RTMPS must be terminated before this server)';
  else if (v === 0x47 || v === 0x50 || v === 0x48) hint = ' (looks like HTTP, not RTMP)';
  return new RtmpProtocolError('HANDSHAKE_VERSION', `unsupported RTMP version ${v}, only ${RTMP_VERSION} is accepted${hint}`);
}

/**
 * Server side. Feed everything the client sends to `push()`:
 *
 * 1. Buffers C0+C1 (1537 bytes). C0 must be 3 (checked on the first byte).
 * 2. If C1's version field (bytes 4..7) is nonzero, tries to validate a
 *    client digest with scheme 0, then scheme 1. If one validates, answers a
 *    complex S1/S2 in that scheme (`kind` = 'complex-0' / 'complex-1').
 *    Otherwise — simple clients, and clients that put junk in the version
 *    field without a digest — falls back to the simple handshake, like
 *    FMS/nginx-rtmp/SRS do (`kind` = 'simple').
 * 3. Answers S0+S1+S2 as a single Buffer in one step.
 * 4. Waits for C2: exactly 1536 bytes are required but their content is NOT
 *    validated (many clients send garbage there). Only C0+C1 is ever stored;
 *    C2 bytes are counted and discarded.
 * 5. `done` = true; bytes after C2 are returned as `rest`.
 *
 * After an error every further `push()` returns the same error. Pushing after
 * completion is a HANDSHAKE_STATE error.
 */
export class RtmpServerHandshake {
  readonly #random: (n: number) => Buffer;
  readonly #now: () => number;
  #c0c1: Buffer | undefined = Buffer.alloc(C0C1_SIZE);
  #have = 0;
  #c2Left = RTMP_HANDSHAKE_SIZE;
  #state: 'c0c1' | 'c2' | 'done' = 'c0c1';
  #error: RtmpProtocolError | undefined;
  #kind: HandshakeKind | undefined;

  constructor(opts: HandshakeOptions = {}) {
    this.#random = opts.random ?? randomBytes;
    this.#now = opts.now ?? (() => 0);
  }

  /** Which handshake was answered; undefined until C0+C1 has been received. */
  get kind(): HandshakeKind | undefined {
    return this.#kind;
  }

  push(data: Buffer): HandshakeStep | RtmpProtocolError {
    if (this.#error !== undefined) return this.#error;
    if (this.#state === 'done') {
      return this.#fail(new RtmpProtocolError('HANDSHAKE_STATE', 'handshake already complete; feed the chunk decoder'));
    }
    const send: Buffer[] = [];
    let off = 0;
    if (this.#state === 'c0c1') {
      const c0c1 = this.#c0c1!;
      const n = Math.min(C0C1_SIZE - this.#have, data.length);
      data.copy(c0c1, this.#have, 0, n);
      this.#have += n;
      off = n;
      if (this.#have > 0 && c0c1[0] !== RTMP_VERSION) return this.#fail(versionError(c0c1[0]!));
      if (this.#have < C0C1_SIZE) return { send, done: false, rest: EMPTY };
      send.push(this.#answer(c0c1.subarray(1)));
      this.#c0c1 = undefined;
      this.#state = 'c2';
    }
    const n = Math.min(this.#c2Left, data.length - off);
    this.#c2Left -= n;
    off += n;
    if (this.#c2Left > 0) return { send, done: false, rest: EMPTY };
    this.#state = 'done';
    return { send, done: true, rest: off < data.length ? data.subarray(off) : EMPTY };
  }

  #fail(err: RtmpProtocolError): RtmpProtocolError {
    this.#error = err;
    this.#c0c1 = undefined;
    return err;
  }

  #answer(c1: Buffer): Buffer {
    let scheme: 0 | 1 | undefined;
    let clientDigestAt = -1;
    if (c1.readUInt32BE(4) !== 0) {
      for (const s of [0, 1] as const) {
        clientDigestAt = findDigest(c1, s, PLAYER_KEY_PART);
        if (clientDigestAt >= 0) {
          scheme = s;
          break;
        }
      }
    }
    const out = Buffer.allocUnsafe(S0S1S2_SIZE);
    out[0] = RTMP_VERSION;
    const s1 = out.subarray(1, 1 + RTMP_HANDSHAKE_SIZE);
    const s2 = out.subarray(1 + RTMP_HANDSHAKE_SIZE);
    const now = this.#now() >>> 0;
    s1.writeUInt32BE(now, 0);
    if (scheme === undefined) {
      this.#kind = 'simple';
      s1.writeUInt32BE(0, 4);
      fillRandom(this.#random, s1.subarray(8));
      // S2 echoes C1: time, time2 (when we read C1), random echo.
      c1.copy(s2, 0, 0, 4);
      s2.writeUInt32BE(now, 4);
      c1.copy(s2, 8, 8);
    } else {
      this.#kind = scheme === 0 ? 'complex-0' : 'complex-1';
      s1.set(SERVER_VERSION, 4);
      fillRandom(this.#random, s1.subarray(8));
      imprintDigest(s1, scheme, SERVER_KEY_PART);
      fillRandom(this.#random, s2.subarray(0, SIGNED_SIZE));
      const clientDigest = c1.subarray(clientDigestAt, clientDigestAt + DIGEST_SIZE);
      responseDigest(s2, SERVER_KEY, clientDigest).copy(s2, SIGNED_SIZE);
    }
    return out;
  }
}

/**
 * Client side: `start()` returns C0+C1; feed the server's bytes to `push()`.
 * C2 is emitted once S0+S1 are in; the handshake completes with S2.
 *
 * - Simple (default): C2 echoes S1 (time, time2, random echo) — the content
 *   ffmpeg's and the spec's servers check.
 * - Complex (`complex: true`): C1 carries a digest in `scheme` (default 0).
 *   If S1's version field is nonzero, S1's digest is validated (the client's
 *   scheme first, then the other: nginx-rtmp, for instance, always answers in
 *   scheme 0). If it validates, S2 must either carry the right digest or be an
 *   echo of C1 (else HANDSHAKE_DIGEST), and C2 is the digest response. If S1
 *   has no valid digest the server is treated as simple (tolerated).
 *
 * `kind` reports what was completed: 'simple', or 'complex-N' where N is the
 * scheme in which the server's S1 digest validated.
 */
export class RtmpClientHandshake {
  readonly #random: (n: number) => Buffer;
  readonly #now: () => number;
  readonly #complex: boolean;
  readonly #scheme: 0 | 1;
  #c1: Buffer | undefined;
  #clientDigest: Buffer | undefined;
  #serverDigest: Buffer | undefined;
  #buf: Buffer | undefined;
  #have = 0;
  #state: 'idle' | 'wait' | 'done' = 'idle';
  #error: RtmpProtocolError | undefined;
  #kind: HandshakeKind | undefined;

  constructor(opts: ClientHandshakeOptions = {}) {
    this.#random = opts.random ?? randomBytes;
    this.#now = opts.now ?? (() => 0);
    this.#complex = opts.complex ?? false;
    this.#scheme = opts.scheme ?? 0;
  }

  /** The handshake done with the server; undefined until S0+S1 were processed. */
  get kind(): HandshakeKind | undefined {
    return this.#kind;
  }

  /** Returns C0+C1 (1537 bytes) to write first. May be called once. */
  start(): Buffer {
    if (this.#state !== 'idle') throw new Error('RtmpClientHandshake.start() called twice');
    const out = Buffer.allocUnsafe(C0C1_SIZE);
    out[0] = RTMP_VERSION;
    const c1 = out.subarray(1);
    c1.writeUInt32BE(this.#now() >>> 0, 0);
    fillRandom(this.#random, c1.subarray(8));
    if (this.#complex) {
      c1.set(CLIENT_VERSION, 4);
      const at = imprintDigest(c1, this.#scheme, PLAYER_KEY_PART);
      this.#clientDigest = Buffer.from(c1.subarray(at, at + DIGEST_SIZE));
    } else {
      c1.writeUInt32BE(0, 4);
    }
    this.#c1 = Buffer.from(c1);
    this.#buf = Buffer.alloc(S0S1S2_SIZE);
    this.#state = 'wait';
    return out;
  }

  /**
   * Consumes S0S1S2. C2 is emitted as soon as S0+S1 are in (like librtmp; a
   * server may legally hold S2 back until it has C2); the step that completes
   * S2 has `done` = true. Bytes after S2 are returned in `rest`.
   */
  push(data: Buffer): HandshakeStep | RtmpProtocolError {
    if (this.#error !== undefined) return this.#error;
    if (this.#state === 'idle') {
      return this.#fail(new RtmpProtocolError('HANDSHAKE_STATE', 'push() before start()'));
    }
    if (this.#state === 'done') {
      return this.#fail(new RtmpProtocolError('HANDSHAKE_STATE', 'handshake already complete; feed the chunk decoder'));
    }
    const buf = this.#buf!;
    const n = Math.min(S0S1S2_SIZE - this.#have, data.length);
    data.copy(buf, this.#have, 0, n);
    this.#have += n;
    if (this.#have > 0 && buf[0] !== RTMP_VERSION) return this.#fail(versionError(buf[0]!));
    const send: Buffer[] = [];
    if (this.#kind === undefined) {
      if (this.#have < C0C1_SIZE) return { send, done: false, rest: EMPTY };
      send.push(this.#answerS1(buf.subarray(1, C0C1_SIZE)));
    }
    if (this.#have < S0S1S2_SIZE) return { send, done: false, rest: EMPTY };

    if (this.#serverDigest !== undefined) {
      const s2 = buf.subarray(C0C1_SIZE);
      const digestOk = responseDigest(s2, SERVER_KEY, this.#clientDigest!).equals(s2.subarray(SIGNED_SIZE));
      const echoOk = s2.subarray(8).equals(this.#c1!.subarray(8));
      if (!digestOk && !echoOk) {
        return this.#fail(new RtmpProtocolError('HANDSHAKE_DIGEST', 'server S2 carries neither a valid digest nor an echo of C1'));
      }
    }
    this.#state = 'done';
    this.#buf = undefined;
    this.#c1 = undefined;
    return { send, done: true, rest: n < data.length ? data.subarray(n) : EMPTY };
  }

  /** Decides the kind from S1 and builds C2. */
  #answerS1(s1: Buffer): Buffer {
    const c2 = Buffer.allocUnsafe(RTMP_HANDSHAKE_SIZE);
    if (this.#clientDigest !== undefined && s1.readUInt32BE(4) !== 0) {
      const order = this.#scheme === 0 ? ([0, 1] as const) : ([1, 0] as const);
      for (const scheme of order) {
        const at = findDigest(s1, scheme, SERVER_KEY_PART);
        if (at < 0) continue;
        this.#kind = scheme === 0 ? 'complex-0' : 'complex-1';
        this.#serverDigest = Buffer.from(s1.subarray(at, at + DIGEST_SIZE));
        fillRandom(this.#random, c2.subarray(0, SIGNED_SIZE));
        responseDigest(c2, PLAYER_KEY, this.#serverDigest).copy(c2, SIGNED_SIZE);
        return c2;
      }
    }
    this.#kind = 'simple';
    s1.copy(c2, 0, 0, 4);
    c2.writeUInt32BE(this.#now() >>> 0, 4);
    s1.copy(c2, 8, 8);
    return c2;
  }

  #fail(err: RtmpProtocolError): RtmpProtocolError {
    this.#error = err;
    this.#buf = undefined;
    return err;
  }
}
