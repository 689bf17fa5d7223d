/**
 * WebSocket-FLV with real peers: ffmpeg publishes to a node process; the `ws` package (an
 * independent RFC 6455 client) plays /ws/live/<stream>.flv and decodes the FLV with the
 * project's decoder; raw sockets check the protocol edges (ping, close, unmasked frames,
 * data floods, bad versions) and that a stalled viewer is dropped without hurting others.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import WebSocket from 'ws';
import { FlvDecoder, type FlvTag } from '@meshcast/proto';
import { RtmpClient } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';

interface StreamsReply {
  streams: Array<{ stream: string; live: boolean; evictedViewers: number; droppedFrames: number }>;
}
interface SessionsReply {
  sessions: Array<{ id: string; protocol: string; role: string; stream?: string; bytesOut: number }>;
}

async function waitLive(node: NodeProcess, stream: string): Promise<void> {
  await waitFor(`${stream} live`, async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.some((s) => s.stream === stream && s.live), 20_000, 100);
}

interface WsViewer {
  ws: WebSocket;
  messages: Buffer[];
  tags: FlvTag[];
  opened: Promise<void>;
  closed: Promise<{ code: number; reason: string }>;
}

function wsViewer(url: string): WsViewer {
  const ws = new WebSocket(url);
  const messages: Buffer[] = [];
  const tags: FlvTag[] = [];
  const dec = new FlvDecoder();
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    assert.ok(isBinary, 'binary messages only');
    messages.push(data);
    const r = dec.push(data);
    if (!Array.isArray(r)) throw r;
    tags.push(...r);
  });
  const opened = new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  return { ws, messages, tags, opened, closed };
}

/** Splits FLV tag bytes into tags; throws unless the buffer is a whole number of tags. */
function wholeTags(buf: Buffer): number {
  let off = 0;
  let n = 0;
  while (off < buf.length) {
    assert.ok(off + 11 <= buf.length, 'tag header inside the message');
    const size = buf.readUIntBE(off + 1, 3);
    off += 11 + size + 4;
    n++;
  }
  assert.equal(off, buf.length, 'message ends on a tag boundary');
  return n;
}

// --- a raw RFC 6455 client, to send what well-behaved clients never do -------------------

function maskedFrame(opcode: number, payload: Buffer, fin = true): Buffer {
  const mask = randomBytes(4);
  const len = payload.length;
  const head = len < 126 ? Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | len]) : len <= 0xffff ? Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | 126, len >> 8, len & 0xff]) : (() => {
    const h = Buffer.alloc(10);
    h[0] = (fin ? 0x80 : 0) | opcode;
    h[1] = 0x80 | 127;
    h.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    h.writeUInt32BE(len >>> 0, 6);
    return h;
  })();
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i]! ^= mask[i & 3]!;
  return Buffer.concat([head, mask, body]);
}

interface ServerFrame {
  opcode: number;
  payload: Buffer;
}

interface RawWs {
  socket: net.Socket;
  status: number;
  headers: string;
  frames: ServerFrame[];
  ended: Promise<void>;
}

async function rawWs(node: NodeProcess, path: string, extraHeaders: Record<string, string> = {}): Promise<RawWs> {
  const socket = net.connect({ host: node.host, port: node.httpPort });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const headers = {
    Host: `${node.host}:${node.httpPort}`,
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
    'Sec-WebSocket-Version': '13',
    ...extraHeaders,
  };
  socket.write(`GET ${path} HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`);
  const raw: RawWs = { socket, status: 0, headers: '', frames: [], ended: new Promise((r) => socket.once('close', () => r())) };
  let buf = Buffer.alloc(0);
  let headDone = false;
  await new Promise<void>((resolve) => {
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!headDone) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        raw.headers = buf.toString('latin1', 0, end);
        raw.status = Number(raw.headers.split(' ')[1]);
        buf = buf.subarray(end + 4);
        headDone = true;
        resolve();
      }
      for (;;) {
        if (buf.length < 2) break;
        let len = buf[1]! & 0x7f;
        let off = 2;
        if (len === 126) {
          if (buf.length < 4) break;
          len = buf.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (buf.length < 10) break;
          len = buf.readUInt32BE(2) * 2 ** 32 + buf.readUInt32BE(6);
          off = 10;
        }
        assert.equal(buf[1]! & 0x80, 0, 'server frames are unmasked');
        if (buf.length < off + len) break;
        raw.frames.push({ opcode: buf[0]! & 0x0f, payload: buf.subarray(off, off + len) });
        buf = buf.subarray(off + len);
      }
    });
    socket.once('close', () => resolve());
  });
  return raw;
}

function closeCode(f: ServerFrame | undefined): number | undefined {
  return f && f.opcode === 8 && f.payload.length >= 2 ? f.payload.readUInt16BE(0) : undefined;
}

describe('WebSocket-FLV from a node process, ffmpeg publishing', () => {
  let node: NodeProcess;
  let pub: FfmpegPublisher;
  let url: string;

  before(async () => {
    node = await NodeProcess.start({
      config: {
        media: { viewer_max_lag_ms: 3000, viewer_queue_bytes: 1 << 20 },
        apps: { strict: { play_not_found: 'reject' } },
      },
    });
    pub = new FfmpegPublisher(`${node.rtmpUrl}/live/s`, { width: 640, height: 360, fps: 30, gop: 30 });
    await waitLive(node, 's');
    url = `ws://${node.host}:${node.httpPort}/ws/live/s.flv`;
  });

  after(async () => {
    await pub?.stop();
    const code = await node?.stop();
    assert.equal(code, 0, 'node exits 0 on SIGTERM');
    node?.cleanup();
  });

  test('the FLV header comes first, then metadata, the AVC and AAC sequence headers and a keyframe; timestamps never go back', async () => {
    const v = wsViewer(url);
    await v.opened;
    await waitFor('2 s of media', () => v.tags.filter((t) => t.type === 9).length >= 60, 10_000);
    v.ws.close(1000, 'done');
    await v.closed;
    const first = v.messages[0]!;
    assert.equal(first.length, 13, 'the FLV file header is its own message');
    assert.equal(first.toString('latin1', 0, 3), 'FLV');
    assert.equal(first[4], 0x05, 'audio and video flags');
    for (const m of v.messages.slice(1)) assert.ok(wholeTags(m) >= 1);
    const video = v.tags.filter((t) => t.type === 9);
    assert.deepEqual([video[0]!.payload[0], video[0]!.payload[1]], [0x17, 0], 'AVC sequence header first');
    assert.deepEqual([video[1]!.payload[0], video[1]!.payload[1]], [0x17, 1], 'then a keyframe');
    const audio = v.tags.filter((t) => t.type === 8);
    assert.deepEqual([audio[0]!.payload[0]! >> 4, audio[0]!.payload[1]], [10, 0], 'AAC sequence header first');
    assert.equal(v.tags[0]!.type, 18, 'onMetaData first');
    const media = v.tags.filter((t) => t.type !== 18);
    for (let i = 1; i < media.length; i++) assert.ok(media[i]!.timestamp >= media[i - 1]!.timestamp, `timestamp ${media[i]!.timestamp} after ${media[i - 1]!.timestamp}`);
    const span = media.at(-1)!.timestamp - media[0]!.timestamp;
    assert.ok(span >= 1500, `${span} ms of media`);
  });

  test('two viewers get byte-identical messages for the same batches (one serialisation, many sockets)', async () => {
    const a = wsViewer(url);
    const b = wsViewer(url);
    await Promise.all([a.opened, b.opened]);
    await waitFor('both live', () => a.messages.length > 40 && b.messages.length > 40, 10_000);
    a.ws.close();
    b.ws.close();
    // Past their starts, both see the same stream of batches.
    const tail = b.messages.slice(10, 30);
    const at = a.messages.findIndex((m) => m.equals(tail[0]!));
    assert.ok(at >= 0, 'a batch of b is in a');
    tail.forEach((m, i) => assert.ok(m.equals(a.messages[at + i]!), `batch ${i} identical`));
  });

  test('ping is answered with the same payload; the viewer is a ws-flv session until it closes; the close is echoed', async () => {
    const v = wsViewer(url);
    await v.opened;
    const pong = new Promise<Buffer>((resolve) => v.ws.once('pong', resolve));
    v.ws.ping(Buffer.from('are you there'));
    assert.equal((await pong).toString(), 'are you there');
    const mine = async (): Promise<SessionsReply['sessions']> => (await node.api<SessionsReply>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'ws-flv');
    await waitFor('session listed', async () => (await mine()).length === 1, 5000);
    const s = (await mine())[0]!;
    assert.equal(s.role, 'viewer');
    assert.equal(s.stream, 's');
    v.ws.close(4001, 'bye now');
    const closed = await v.closed;
    assert.equal(closed.code, 4001, 'the server echoes the close code');
    await waitFor('session gone', async () => (await mine()).length === 0, 5000);
  });

  test('refusals are plain HTTP answers: 404 unknown stream, 426 without an upgrade, 426 for another WebSocket version', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`ws://${node.host}:${node.httpPort}/ws/strict/nobody.flv`);
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => reject(new Error('opened')));
      ws.on('error', () => undefined);
    });
    assert.equal(status, 404);
    const plain = await fetch(`${node.httpUrl}/ws/live/s.flv`);
    assert.equal(plain.status, 426);
    assert.equal(plain.headers.get('upgrade'), 'websocket');
    const v8 = await rawWs(node, '/ws/live/s.flv', { 'Sec-WebSocket-Version': '8' });
    assert.equal(v8.status, 426);
    assert.match(v8.headers, /Sec-WebSocket-Version: 13/i);
    v8.socket.destroy();
    const badKey = await rawWs(node, '/ws/live/s.flv', { 'Sec-WebSocket-Key': 'short' });
    assert.equal(badKey.status, 400);
    badKey.socket.destroy();
    const left = (await node.api<SessionsReply>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'ws-flv');
    assert.equal(left.length, 0, 'refused upgrades leave no session');
  });

  test('protocol violations close only that connection: unmasked frame → 1002, data flood → 1008; a raw ping gets a pong', async () => {
    const watcher = wsViewer(url);
    await watcher.opened;

    const pinger = await rawWs(node, '/ws/live/s.flv');
    assert.equal(pinger.status, 101);
    assert.match(pinger.headers, /Sec-WebSocket-Accept: /i);
    pinger.socket.write(maskedFrame(9, Buffer.from('raw')));
    await waitFor('pong', () => pinger.frames.some((f) => f.opcode === 10 && f.payload.toString() === 'raw'), 5000);
    // A fragmented data message (ignored) with a ping between its fragments, sent a byte at a time.
    const bytes = Buffer.concat([
      maskedFrame(2, Buffer.alloc(300, 1), false),
      maskedFrame(9, Buffer.from('split')),
      maskedFrame(0, Buffer.alloc(70_000, 2), true),
      maskedFrame(9, Buffer.from('after')),
    ]);
    for (let i = 0; i < 400; i++) pinger.socket.write(bytes.subarray(i, i + 1));
    pinger.socket.write(bytes.subarray(400));
    await waitFor('pongs', () => ['split', 'after'].every((p) => pinger.frames.some((f) => f.opcode === 10 && f.payload.toString() === p)), 5000);
    pinger.socket.write(maskedFrame(8, Buffer.from([0x03, 0xe8])));
    await pinger.ended;
    assert.equal(closeCode(pinger.frames.find((f) => f.opcode === 8)), 1000);

    const unmasked = await rawWs(node, '/ws/live/s.flv');
    assert.equal(unmasked.status, 101);
    unmasked.socket.write(Buffer.from([0x82, 0x03, 1, 2, 3]));
    await unmasked.ended;
    assert.equal(closeCode(unmasked.frames.find((f) => f.opcode === 8)), 1002);

    const flood = await rawWs(node, '/ws/live/s.flv');
    assert.equal(flood.status, 101);
    const chunk = maskedFrame(2, Buffer.alloc(64 * 1024, 7));
    for (let i = 0; i < 20 && !flood.socket.destroyed; i++) flood.socket.write(chunk);
    await flood.ended;
    assert.equal(closeCode(flood.frames.find((f) => f.opcode === 8)), 1008);

    const before_ = watcher.tags.length;
    await sleep(500);
    assert.ok(watcher.tags.length > before_, 'the other viewer keeps receiving');
    watcher.ws.close();
  });

  test('a stalled WebSocket viewer is dropped after the lag limit; a healthy one keeps playing', async () => {
    const pubc = await RtmpClient.connect(`${node.rtmpUrl}/live/heavy`);
    await pubc.publish();
    pubc.sendMedia(9, 0, Buffer.from([0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 0]));
    let n = 0;
    const big = Buffer.alloc(80_000, 0x55);
    const feeder = setInterval(() => {
      const head = Buffer.from([n % 30 === 0 ? 0x17 : 0x27, 1, 0, 0, 0]);
      pubc.sendMedia(9, n * 33, Buffer.concat([head, big]));
      n++;
    }, 33);
    try {
      await waitLive(node, 'heavy');
      const healthy = wsViewer(`ws://${node.host}:${node.httpPort}/ws/live/heavy.flv`);
      await healthy.opened;
      const stalled = await rawWs(node, '/ws/live/heavy.flv');
      assert.equal(stalled.status, 101);
      stalled.socket.pause();
      const viewers = async (): Promise<number> => (await node.api<SessionsReply>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'ws-flv' && s.stream === 'heavy').length;
      await waitFor('both attached', async () => (await viewers()) === 2, 5000);
      await waitFor('stalled viewer dropped', async () => (await viewers()) === 1, 30_000, 250);
      const heavy = (await node.api<StreamsReply>('/api/v1/streams')).streams.find((s) => s.stream === 'heavy')!;
      assert.ok(heavy.droppedFrames > 0, 'drops counted');
      assert.equal(heavy.evictedViewers, 1);
      const count = healthy.tags.length;
      await sleep(500);
      assert.ok(healthy.tags.length > count, 'the healthy viewer keeps receiving');
      healthy.ws.close();
      stalled.socket.destroy();
    } finally {
      clearInterval(feeder);
      pubc.close();
    }
  });
});
