import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Socket, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { RtmpProtocolError } from '../src/errors.ts';
import {
  RTMP_HANDSHAKE_SIZE,
  RtmpClientHandshake,
  RtmpServerHandshake,
  type HandshakeStep,
} from '../src/rtmp/handshake.ts';
import { ChunkStreamDecoder, ChunkStreamEncoder, type RtmpMessage } from '../src/rtmp/chunk.ts';
import { MessageType, UserControlEvent, decodeControl } from '../src/rtmp/messages.ts';

const FIXTURES = fileURLToPath(new URL('../../tests/fixtures/rtmp/', import.meta.url));
const FFMPEG = '/usr/bin/ffmpeg';

// ---------------------------------------------------------------------------
// Independent re-statement of the digest scheme (from the description, not the implementation)
// ---------------------------------------------------------------------------
const TAIL = Buffer.from(
  'f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae',
  'hex',
);
const FP_FULL = Buffer.concat([Buffer.from('Genuine Adobe Flash Player 001'), TAIL]);
const FMS_FULL = Buffer.concat([Buffer.from('Genuine Adobe Flash Media Server 001'), TAIL]);

function hmac(key: Buffer, ...parts: Buffer[]): Buffer {
  const h = createHmac('sha256', key);
  for (const p of parts) h.update(p);
  return h.digest();
}

function digestPos(pkt: Buffer, scheme: 0 | 1): number {
  const base = scheme === 0 ? 8 : 772;
  let sum = 0;
  for (let i = 0; i < 4; i++) sum += pkt[base + i]!;
  return (sum % 728) + base + 4;
}

/** Returns the digest if `pkt` (1536 bytes) carries a valid one in `scheme`. */
function digestOf(pkt: Buffer, scheme: 0 | 1, key: Buffer): Buffer | undefined {
  assert.equal(pkt.length, 1536);
  const at = digestPos(pkt, scheme);
  const d = hmac(key, pkt.subarray(0, at), pkt.subarray(at + 32));
  return d.equals(pkt.subarray(at, at + 32)) ? Buffer.from(d) : undefined;
}

function responseOk(pkt: Buffer, fullKey: Buffer, peerDigest: Buffer): boolean {
  return hmac(hmac(fullKey, peerDigest), pkt.subarray(0, 1504)).equals(pkt.subarray(1504));
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/** Deterministic xorshift32 byte source. */
function seeded(seed: number): (n: number) => Buffer {
  let x = seed >>> 0 || 1;
  return (n) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      b[i] = x & 0xff;
    }
    return b;
  };
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function step(r: HandshakeStep | RtmpProtocolError): HandshakeStep {
  if (r instanceof RtmpProtocolError) assert.fail(`unexpected ${r.code}: ${r.message}`);
  return r;
}

function expectError(r: HandshakeStep | RtmpProtocolError, code: string): RtmpProtocolError {
  assert.ok(r instanceof RtmpProtocolError, `expected ${code}, got a step`);
  assert.equal(r.code, code);
  return r;
}

/** Runs a full in-memory handshake; returns everything exchanged. */
function pair(clientOpts: ConstructorParameters<typeof RtmpClientHandshake>[0], serverSeed = 7) {
  const client = new RtmpClientHandshake({ random: seeded(1), ...clientOpts });
  const server = new RtmpServerHandshake({ random: seeded(serverSeed) });
  const c0c1 = client.start();
  const s1step = step(server.push(c0c1));
  assert.equal(s1step.done, false);
  assert.equal(s1step.send.length, 1);
  const s0s1s2 = Buffer.concat(s1step.send);
  assert.equal(s0s1s2.length, 1 + 2 * RTMP_HANDSHAKE_SIZE);
  const cstep = step(client.push(s0s1s2));
  assert.equal(cstep.done, true);
  assert.equal(cstep.rest.length, 0);
  const c2 = Buffer.concat(cstep.send);
  assert.equal(c2.length, RTMP_HANDSHAKE_SIZE);
  const sdone = step(server.push(c2));
  assert.equal(sdone.done, true);
  assert.deepEqual(sdone.send, []);
  return { client, server, c1: c0c1.subarray(1), s1: s0s1s2.subarray(1, 1537), s2: s0s1s2.subarray(1537), c2 };
}

// ---------------------------------------------------------------------------
// in-memory pairs
// ---------------------------------------------------------------------------
describe('handshake pairs', () => {
  test('simple client ↔ server: S2 echoes C1, C2 echoes S1', () => {
    const { client, server, c1, s1, s2, c2 } = pair({});
    assert.equal(server.kind, 'simple');
    assert.equal(client.kind, 'simple');
    assert.equal(c1.readUInt32BE(4), 0, 'simple C1 has a zero field');
    assert.equal(s1.readUInt32BE(4), 0, 'simple S1 has a zero field');
    assert.ok(s2.subarray(8).equals(c1.subarray(8)), 'S2 random echo');
    assert.ok(s2.subarray(0, 4).equals(c1.subarray(0, 4)), 'S2 time = C1 time');
    assert.ok(c2.subarray(8).equals(s1.subarray(8)), 'C2 random echo');
    assert.ok(c2.subarray(0, 4).equals(s1.subarray(0, 4)), 'C2 time = S1 time');
  });

  for (const scheme of [0, 1] as const) {
    test(`complex scheme ${scheme}: server detects it, digests verify independently`, () => {
      const { client, server, c1, s1, s2, c2 } = pair({ complex: true, scheme });
      assert.equal(server.kind, `complex-${scheme}`);
      assert.equal(client.kind, `complex-${scheme}`);
      assert.notEqual(c1.readUInt32BE(4), 0, 'complex C1 carries a version');
      const clientDigest = digestOf(c1, scheme, FP_FULL.subarray(0, 30));
      assert.ok(clientDigest, `C1 digest valid in scheme ${scheme}`);
      assert.equal(digestOf(c1, scheme === 0 ? 1 : 0, FP_FULL.subarray(0, 30)), undefined, 'not valid in the other scheme');
      const serverDigest = digestOf(s1, scheme, FMS_FULL.subarray(0, 36));
      assert.ok(serverDigest, 'S1 digest valid in the same scheme');
      assert.ok(s1[4]! >= 3, 'S1 version byte ≥ 3 (ffmpeg only checks the digest then)');
      assert.ok(responseOk(s2, FMS_FULL, clientDigest), 'S2 = HMAC(HMAC(FMS key, C1 digest), S2[0..1504])');
      assert.ok(responseOk(c2, FP_FULL, serverDigest), 'C2 = HMAC(HMAC(FP key, S1 digest), C2[0..1504])');
    });
  }

  test('complex client tolerates a server that answers simple (S1 without digest)', () => {
    const client = new RtmpClientHandshake({ complex: true, random: seeded(3) });
    const c1 = client.start().subarray(1);
    const s1 = Buffer.concat([Buffer.alloc(8), seeded(4)(1528)]);
    const s1Copy = Buffer.from(s1);
    const r = step(client.push(Buffer.concat([Buffer.from([3]), s1, Buffer.from(c1)])));
    assert.equal(r.done, true);
    assert.equal(client.kind, 'simple');
    const c2 = r.send[0]!;
    assert.ok(c2.subarray(8).equals(s1Copy.subarray(8)), 'C2 echoes S1 like a simple client');
  });

  test('complex client rejects a digest S1 followed by a bogus S2', () => {
    const { s1 } = pair({ complex: true, scheme: 0 });
    // A fresh client (different C1 digest) gets the old S1 (valid server digest) and a random S2.
    const client = new RtmpClientHandshake({ complex: true, random: seeded(99) });
    client.start();
    const r = client.push(Buffer.concat([Buffer.from([3]), s1, seeded(5)(1536)]));
    expectError(r, 'HANDSHAKE_DIGEST');
    // dead afterwards
    assert.equal(client.push(Buffer.alloc(1)), r);
  });

  test('complex client verifies S1 in the other scheme too (nginx-rtmp always answers in scheme 0)', () => {
    // scheme-1 client against a server that answers in scheme 0 with a correct S2
    const client = new RtmpClientHandshake({ complex: true, scheme: 1, random: seeded(11) });
    const c1 = client.start().subarray(1);
    const clientDigest = digestOf(c1, 1, FP_FULL.subarray(0, 30))!;
    const s1 = seeded(12)(1536);
    s1.writeUInt32BE(0x01020304, 4);
    const at = digestPos(s1, 0);
    hmac(FMS_FULL.subarray(0, 36), s1.subarray(0, at), s1.subarray(at + 32)).copy(s1, at);
    const s2 = seeded(13)(1536);
    hmac(hmac(FMS_FULL, clientDigest), s2.subarray(0, 1504)).copy(s2, 1504);
    const r = step(client.push(Buffer.concat([Buffer.from([3]), s1, s2])));
    assert.equal(client.kind, 'complex-0');
    assert.ok(responseOk(r.send[0]!, FP_FULL, s1.subarray(at, at + 32)));
  });

  for (const complex of [false, true]) {
    test(`client (${complex ? 'complex' : 'simple'}) sends C2 as soon as S0+S1 arrive, completes on S2`, () => {
      const client = new RtmpClientHandshake({ complex, random: seeded(31) });
      const s0s1s2 = step(new RtmpServerHandshake({ random: seeded(32) }).push(client.start())).send[0]!;
      const r1 = step(client.push(s0s1s2.subarray(0, 1537)));
      assert.equal(r1.done, false);
      assert.equal(r1.send.length, 1);
      assert.equal(r1.send[0]!.length, 1536);
      assert.equal(client.kind, complex ? 'complex-0' : 'simple');
      const r2 = step(client.push(s0s1s2.subarray(1537)));
      assert.equal(r2.done, true);
      assert.deepEqual(r2.send, []);
    });
  }

  test('nonzero version without a valid digest falls back to simple', () => {
    const c1 = seeded(21)(1536);
    c1.writeUInt32BE(0x09007c02, 4); // looks like Flash, but no digest anywhere
    assert.equal(digestOf(c1, 0, FP_FULL.subarray(0, 30)), undefined);
    assert.equal(digestOf(c1, 1, FP_FULL.subarray(0, 30)), undefined);
    const server = new RtmpServerHandshake({ random: seeded(22) });
    const r = step(server.push(Buffer.concat([Buffer.from([3]), c1])));
    assert.equal(server.kind, 'simple');
    const s2 = r.send[0]!.subarray(1537);
    assert.ok(s2.subarray(8).equals(c1.subarray(8)), 'simple S2 echoes C1');
  });
});

// ---------------------------------------------------------------------------
// errors and state
// ---------------------------------------------------------------------------
describe('handshake errors', () => {
  test('C0 = 6 (RTMPE) is rejected on the first byte with HANDSHAKE_VERSION', () => {
    const server = new RtmpServerHandshake();
    const err = expectError(server.push(Buffer.from([6])), 'HANDSHAKE_VERSION');
    assert.match(err.message, /RTMPE/);
    assert.equal(server.push(Buffer.alloc(1536, 3)), err, 'dead after an error');
    assert.equal(server.kind, undefined);
  });

  for (const v of [0, 1, 2, 4, 8, 9, 0x16, 0x47, 255]) {
    test(`C0 = ${v} → HANDSHAKE_VERSION`, () => {
      expectError(new RtmpServerHandshake().push(Buffer.concat([Buffer.from([v]), Buffer.alloc(1536)])), 'HANDSHAKE_VERSION');
    });
  }

  test('client: S0 ≠ 3 → HANDSHAKE_VERSION; push before start → HANDSHAKE_STATE', () => {
    expectError(new RtmpClientHandshake().push(Buffer.from([3])), 'HANDSHAKE_STATE');
    const c = new RtmpClientHandshake();
    c.start();
    expectError(c.push(Buffer.from([6, 0, 0])), 'HANDSHAKE_VERSION');
    assert.throws(() => c.start());
  });

  test('pushing after completion is HANDSHAKE_STATE', () => {
    const { server, client } = pair({});
    expectError(server.push(Buffer.from([1])), 'HANDSHAKE_STATE');
    expectError(client.push(Buffer.from([1])), 'HANDSHAKE_STATE');
  });

  test('C2 content is not validated, but 1536 bytes are required', () => {
    const server = new RtmpServerHandshake({ random: seeded(1) });
    step(server.push(Buffer.concat([Buffer.from([3]), Buffer.alloc(1536, 0xaa)])));
    const r1 = step(server.push(Buffer.alloc(1535, 0x55)));
    assert.equal(r1.done, false);
    const r2 = step(server.push(Buffer.from([0x55, 0x02, 0x03])));
    assert.equal(r2.done, true);
    assert.deepEqual([...r2.rest], [0x02, 0x03]);
  });
});

// ---------------------------------------------------------------------------
// arbitrary splits
// ---------------------------------------------------------------------------
function splitAt(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(buf.subarray(prev, p));
    prev = p;
  }
  out.push(buf.subarray(prev));
  return out;
}

describe('handshake splits', () => {
  test('server: any split of C0C1+C2+extra gives the same S0S1S2, done once, and rest = extra', () => {
    const c0c1 = readFileSync(FIXTURES + 'ffmpeg-publish-c0c1.bin');
    const c2 = readFileSync(FIXTURES + 'ffmpeg-publish-c2.bin');
    const ref = step(new RtmpServerHandshake({ random: seeded(5) }).push(c0c1)).send[0]!;
    fc.assert(
      fc.property(
        fc.array(fc.nat(), { maxLength: 12 }),
        fc.uint8Array({ maxLength: 300 }),
        (cuts, extraBytes) => {
          const extra = Buffer.from(extraBytes);
          const input = Buffer.concat([c0c1, c2, extra]);
          const server = new RtmpServerHandshake({ random: seeded(5) });
          const sent: Buffer[] = [];
          const rest: Buffer[] = [];
          let doneCount = 0;
          for (const piece of splitAt(input, cuts)) {
            if (doneCount > 0) {
              rest.push(piece);
              continue;
            }
            const r = step(server.push(piece));
            sent.push(...r.send);
            if (r.done) {
              doneCount++;
              rest.push(r.rest);
            } else assert.equal(r.rest.length, 0);
          }
          assert.equal(doneCount, 1);
          assert.equal(server.kind, 'complex-0');
          assert.ok(Buffer.concat(sent).equals(ref));
          assert.ok(Buffer.concat(rest).equals(extra));
        },
      ),
      { numRuns: 200 },
    );
  });

  test('client: any split of S0S1S2+extra completes once with the same C2 and rest', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.array(fc.nat(), { maxLength: 12 }), fc.uint8Array({ maxLength: 100 }), (complex, cuts, extraBytes) => {
        const mk = () => new RtmpClientHandshake({ complex, random: seeded(8) });
        const refClient = mk();
        const s0s1s2 = step(new RtmpServerHandshake({ random: seeded(9) }).push(refClient.start())).send[0]!;
        const refC2 = step(refClient.push(s0s1s2)).send[0]!;
        const client = mk();
        client.start();
        const extra = Buffer.from(extraBytes);
        const sent: Buffer[] = [];
        const rest: Buffer[] = [];
        let done = false;
        for (const piece of splitAt(Buffer.concat([s0s1s2, extra]), cuts)) {
          if (done) {
            rest.push(piece);
            continue;
          }
          const r = step(client.push(piece));
          sent.push(...r.send);
          if (r.done) {
            done = true;
            rest.push(r.rest);
          }
        }
        assert.ok(done);
        assert.equal(client.kind, complex ? 'complex-0' : 'simple');
        assert.ok(Buffer.concat(sent).equals(refC2));
        assert.ok(Buffer.concat(rest).equals(extra));
      }),
      { numRuns: 100 },
    );
  });
});

// ---------------------------------------------------------------------------
// golden bytes and the captured ffmpeg C0C1
// ---------------------------------------------------------------------------
describe('handshake golden bytes', () => {
  test('client C0C1 with injected randomness and clock', () => {
    const simple = new RtmpClientHandshake({ random: seeded(42), now: () => 0x01020304 }).start();
    assert.deepEqual([...simple.subarray(0, 9)], [3, 1, 2, 3, 4, 0, 0, 0, 0]);
    assert.ok(simple.subarray(9).equals(seeded(42)(1528)), 'random part comes from the injected source');
    const complex = new RtmpClientHandshake({ complex: true, random: seeded(42), now: () => 0x01020304 }).start();
    assert.deepEqual([...complex.subarray(0, 9)], [3, 1, 2, 3, 4, 9, 0, 124, 2]);
    assert.equal(sha(complex), '4efa003913295330cef5a8b91326af7e79e3366fef64968c7e014ca6b82c0cf3');
  });

  test('server answer to the captured ffmpeg C0C1 (complex scheme 0) is deterministic', () => {
    const c0c1 = readFileSync(FIXTURES + 'ffmpeg-publish-c0c1.bin');
    const server = new RtmpServerHandshake({ random: seeded(42), now: () => 1000 });
    const out = step(server.push(c0c1)).send[0]!;
    assert.equal(server.kind, 'complex-0');
    assert.deepEqual([...out.subarray(0, 9)], [3, 0, 0, 0x03, 0xe8, 4, 5, 0, 1]);
    assert.equal(sha(out), '9e14768c0ea4f137fc1bd342f0ed3d8ae7f6c79519adb4c96bb09551bb48e563');
  });

  test('captured ffmpeg 5.1 C0C1 is a Flash-style complex handshake, scheme 0', () => {
    const c0c1 = readFileSync(FIXTURES + 'ffmpeg-publish-c0c1.bin');
    assert.equal(c0c1.length, 1537);
    assert.equal(c0c1[0], 3);
    assert.deepEqual([...c0c1.subarray(5, 9)], [9, 0, 124, 2], 'ffmpeg announces Flash Player 9.0.124.2');
    assert.ok(digestOf(c0c1.subarray(1), 0, FP_FULL.subarray(0, 30)));
    const server = new RtmpServerHandshake();
    const r = step(server.push(c0c1));
    assert.equal(server.kind, 'complex-0');
    const s = r.send[0]!;
    const clientDigest = digestOf(c0c1.subarray(1), 0, FP_FULL.subarray(0, 30))!;
    assert.ok(responseOk(s.subarray(1537), FMS_FULL, clientDigest));
    const done = step(server.push(readFileSync(FIXTURES + 'ffmpeg-publish-c2.bin')));
    assert.equal(done.done, true);
  });
});

// ---------------------------------------------------------------------------
// real sockets: ffmpeg as server, ffmpeg as player, nginx-rtmp as server
// ---------------------------------------------------------------------------

/** Buffered reader over a socket. */
class Conn {
  readonly sock: Socket;
  #pending: Buffer[] = [];
  #wake: (() => void) | undefined;
  #closed = false;
  constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      this.#pending.push(d);
      this.#wake?.();
    });
    const close = () => {
      this.#closed = true;
      this.#wake?.();
    };
    sock.on('close', close);
    sock.on('error', close);
  }
  /** Next bytes, or null once closed / after `ms`. */
  async read(ms: number): Promise<Buffer | null> {
    if (this.#pending.length === 0 && !this.#closed) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, ms);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
    if (this.#pending.length === 0) return null;
    const b = Buffer.concat(this.#pending);
    this.#pending = [];
    return b;
  }
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

async function connectRetry(port: number, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(port, '127.0.0.1');
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

interface Spawned {
  child: ChildProcess;
  log: () => string;
  /** Resolves once the process exited and its output pipes are drained. */
  closed: Promise<void>;
}

function spawnLogged(cmd: string, args: string[]): Spawned {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  return { child, log: () => log, closed };
}

/** Kills (by handle) a process this test started, and waits for it. */
async function stop(p: Spawned): Promise<void> {
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await p.closed;
}

// minimal hand-built AMF0 (the AMF codec is not this module's concern)
function amfStr(s: string): Buffer {
  const b = Buffer.from(s);
  const h = Buffer.alloc(3);
  h[0] = 2;
  h.writeUInt16BE(b.length, 1);
  return Buffer.concat([h, b]);
}
function amfNum(n: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeDoubleBE(n, 1);
  return b;
}
function amfObj(o: Record<string, string | number>): Buffer {
  const parts: Buffer[] = [Buffer.from([3])];
  for (const [k, v] of Object.entries(o)) {
    const kl = Buffer.alloc(2);
    kl.writeUInt16BE(Buffer.byteLength(k));
    parts.push(kl, Buffer.from(k), typeof v === 'number' ? amfNum(v) : amfStr(v));
  }
  parts.push(Buffer.from([0, 0, 9]));
  return Buffer.concat(parts);
}
function commandName(m: RtmpMessage): string {
  assert.equal(m.payload[0], 2, 'command starts with an AMF0 string');
  return m.payload.toString('utf8', 3, 3 + m.payload.readUInt16BE(1));
}
function connectCommand(port: number, app: string): RtmpMessage {
  const payload = Buffer.concat([
    amfStr('connect'),
    amfNum(1),
    amfObj({ app, type: 'nonprivate', flashVer: 'FMLE/3.0 (compatible; meshcast)', tcUrl: `rtmp://127.0.0.1:${port}/${app}` }),
  ]);
  return { csid: 3, type: MessageType.COMMAND_AMF0, streamId: 0, timestamp: 0, payload };
}

/** Client handshake over `conn`, then `connect`; returns the server's messages up to and including _result. */
async function handshakeAndConnect(
  conn: Conn,
  client: RtmpClientHandshake,
  port: number,
  app: string,
  mutateC2: (c2: Buffer) => void = () => {},
): Promise<RtmpMessage[]> {
  conn.sock.write(client.start());
  let rest: Buffer | undefined;
  while (rest === undefined) {
    const d = await conn.read(5000);
    assert.ok(d, 'server closed or stalled during the handshake');
    const r = step(client.push(d));
    for (const b of r.send) {
      mutateC2(b);
      conn.sock.write(b);
    }
    if (r.done) rest = r.rest;
  }
  conn.sock.write(new ChunkStreamEncoder(128).encode(connectCommand(port, app)));
  const decoder = new ChunkStreamDecoder();
  const msgs: RtmpMessage[] = [];
  let input: Buffer | null = rest;
  for (;;) {
    const r = decoder.push(input);
    assert.ok(Array.isArray(r), `decode error: ${String(r)}`);
    msgs.push(...r);
    if (msgs.some((m) => m.type === MessageType.COMMAND_AMF0 && commandName(m) === '_result')) return msgs;
    input = await conn.read(5000);
    assert.ok(input, `server closed or stalled after connect; got types ${msgs.map((m) => m.type).join(',')}`);
  }
}

describe('real peers', { timeout: 60_000 }, () => {
  const listenCases = [
    { complex: false, corruptC2: false },
    { complex: true, corruptC2: false },
    // control: proves the "Erroneous C2" check below can fail
    { complex: false, corruptC2: true },
  ];
  for (const { complex, corruptC2 } of listenCases) {
    const name = `RtmpClientHandshake (${complex ? 'complex' : 'simple'}) against ffmpeg -listen${corruptC2 ? ', corrupted C2 is noticed' : ''}`;
    test(name, async () => {
      assert.ok(existsSync(FFMPEG), 'ffmpeg is required');
      const port = await freePort();
      const ff = spawnLogged(FFMPEG, [
        '-hide_banner', '-nostdin', '-loglevel', 'warning', '-listen', '1',
        '-i', `rtmp://127.0.0.1:${port}/live/x`, '-f', 'null', '-',
      ]);
      try {
        const conn = new Conn(await connectRetry(port, 10_000));
        const client = new RtmpClientHandshake({ complex });
        const msgs = await handshakeAndConnect(conn, client, port, 'live', (c2) => {
          if (corruptC2) c2[100] = c2[100]! ^ 1;
        });
        // ffmpeg's server handshake is simple-only; a complex client must fall back.
        assert.equal(client.kind, 'simple');
        const controls = msgs.filter((m) => m.type <= 6).map((m) => decodeControl(m));
        assert.deepEqual(
          controls.map((c) => (c instanceof RtmpProtocolError ? c.code : c.kind)),
          ['windowAckSize', 'setPeerBandwidth', 'userControl', 'setChunkSize'],
        );
        const uc = controls[2];
        assert.ok(uc && !(uc instanceof RtmpProtocolError) && uc.kind === 'userControl');
        assert.equal(uc.event, UserControlEvent.STREAM_BEGIN);
        const result = msgs.find((m) => m.type === MessageType.COMMAND_AMF0)!;
        assert.equal(commandName(result), '_result');
        assert.ok(result.payload.includes('NetConnection.Connect.Success'));
        conn.sock.destroy();
        await stop(ff);
        // ffmpeg compares C2 with its S1 (time and random echo) and warns on mismatch
        if (corruptC2) assert.match(ff.log(), /Erroneous C2 Message random/);
        else assert.doesNotMatch(ff.log(), /Erroneous C2/);
      } finally {
        await stop(ff);
      }
    });
  }

  for (const corrupt of [false, true]) {
    test(`ffmpeg as a player validates our complex S1/S2${corrupt ? ' (corrupted S2 is refused)' : ''}`, async () => {
      const server = createServer();
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const { port } = server.address() as AddressInfo;
      type Outcome = { kind: string | undefined; first: RtmpMessage | undefined; error?: unknown };
      const got = new Promise<Outcome>((resolve) => {
        server.once('connection', (sock: Socket) => {
          const hs = new RtmpServerHandshake();
          const dec = new ChunkStreamDecoder();
          let done = false;
          sock.on('error', () => {});
          sock.on('close', () => resolve({ kind: hs.kind, first: undefined }));
          sock.on('data', (d: Buffer) => {
            try {
              let rest = d;
              if (!done) {
                const r = step(hs.push(d));
                for (const b of r.send) {
                  if (corrupt) b[b.length - 1] = b[b.length - 1]! ^ 0xff; // last byte of the S2 digest
                  sock.write(b);
                }
                if (!r.done) return;
                done = true;
                rest = r.rest;
              }
              const msgs = dec.push(rest);
              if (!Array.isArray(msgs)) throw msgs;
              if (msgs.length > 0) {
                resolve({ kind: hs.kind, first: msgs[0] });
                sock.destroy();
              }
            } catch (error) {
              resolve({ kind: hs.kind, first: undefined, error });
              sock.destroy();
            }
          });
        });
      });
      const ff = spawnLogged(FFMPEG, [
        '-hide_banner', '-nostdin', '-loglevel', 'debug', '-rw_timeout', '5000000',
        '-i', `rtmp://127.0.0.1:${port}/live/x`, '-f', 'null', '-',
      ]);
      try {
        const { kind, first, error } = await got;
        assert.equal(error, undefined);
        assert.equal(kind, 'complex-0', 'ffmpeg sends a scheme-0 digest C1');
        if (corrupt) {
          assert.equal(first, undefined, 'ffmpeg must not proceed after a bad S2');
          await ff.closed;
          assert.match(ff.log(), /Signature mismatch/);
        } else {
          assert.ok(first, 'ffmpeg sent a message after the handshake');
          assert.equal(first.type, MessageType.COMMAND_AMF0);
          assert.equal(first.csid, 3);
          assert.equal(commandName(first), 'connect');
          assert.doesNotMatch(ff.log(), /validating failed|Signature mismatch/);
        }
      } finally {
        await stop(ff);
        server.close();
      }
    });
  }

  const nginxModule = '/usr/lib/nginx/modules/ngx_rtmp_module.so';
  const haveNginx = existsSync('/usr/sbin/nginx') && existsSync(nginxModule);
  for (const scheme of [0, 1] as const) {
    test(
      `RtmpClientHandshake complex scheme ${scheme} against nginx-rtmp (a real digest server)`,
      async () => {
        assert.ok(haveNginx, 'nginx with ngx_rtmp_module is installed (scripts/setup-system.sh installs it)');
        const port = await freePort();
        const dir = mkdtempSync(join(tmpdir(), 'meshcast-nginx-'));
        writeFileSync(
          join(dir, 'nginx.conf'),
          [
            `load_module ${nginxModule};`,
            'daemon off;',
            'master_process off;',
            `pid ${dir}/nginx.pid;`,
            `error_log ${dir}/error.log info;`,
            'events { worker_connections 16; }',
            `rtmp { server { listen 127.0.0.1:${port}; chunk_size 4096; application live { live on; } } }`,
          ].join('\n'),
        );
        const ngx = spawnLogged('/usr/sbin/nginx', ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')]);
        try {
          const conn = new Conn(await connectRetry(port, 10_000));
          const client = new RtmpClientHandshake({ complex: true, scheme });
          const msgs = await handshakeAndConnect(conn, client, port, 'live');
          // nginx-rtmp validates either scheme but always signs S1 in scheme 0
          assert.equal(client.kind, 'complex-0');
          const chunkSize = msgs.map((m) => decodeControl(m)).find((c) => !(c instanceof RtmpProtocolError) && c.kind === 'setChunkSize');
          assert.deepEqual(chunkSize, { kind: 'setChunkSize', size: 4096 });
          const result = msgs.find((m) => m.type === MessageType.COMMAND_AMF0)!;
          assert.ok(result.payload.includes('NetConnection.Connect.Success'));
          conn.sock.destroy();
        } finally {
          await stop(ngx);
          rmSync(dir, { recursive: true, force: true });
        }
      },
    );
  }
});
