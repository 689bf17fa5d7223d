/**
 * What an unauthenticated RTMP peer can make a real node do is bounded. One node process,
 * ffmpeg publishing live/cam and an RTMP viewer playing it from another address, while raw
 * sockets (the project's own handshake and chunk encoder) send hostile input:
 *  - unfinished large messages on every chunk stream (bytes held per connection);
 *  - an FCPublish whose argument is an AMF0 reference bomb (expanded size);
 *  - a client that never reads while it floods pings (control-message rate, bytes answered);
 *  - a client that connects and then does nothing (idle connection timeout);
 *  - a publisher sending 200,000 undecodable data messages (log amplification), and
 *    metadata that must come back from the API as a small, sanitised copy.
 * Each memory-bound case asserts the node's RSS growth, and every case asserts that the
 * viewer on the other stream never went more than 1 s without a video frame.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import {
  ChunkStreamDecoder,
  ChunkStreamEncoder,
  MessageType,
  RtmpClientHandshake,
  RtmpProtocolError,
  UserControlEvent,
  encodeAmf0,
  setChunkSizeMessage,
  userControlMessage,
  type AmfValue,
  type RtmpMessage,
} from '@meshcast/proto';
import { RtmpClient } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';

const IDLE_TIMEOUT_MS = 2000;
const MiB = 1024 * 1024;

/** Resident memory of the node process, read from /proc so that it works while the node is stalled. */
function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** A raw RTMP client socket: handshake and chunk encoding from @meshcast/proto, nothing else. */
class RawRtmp {
  readonly enc = new ChunkStreamEncoder(128);
  readonly dec = new ChunkStreamDecoder({ maxMessageLength: 16 * MiB - 1 });
  readonly received: RtmpMessage[] = [];
  closedAt: number | undefined;
  private constructor(readonly sock: net.Socket) {}

  static open(host: string, port: number): Promise<RawRtmp> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port, localAddress: '127.0.0.1' });
      const raw = new RawRtmp(sock);
      sock.setMaxListeners(0);
      const hs = new RtmpClientHandshake();
      let done = false;
      sock.on('error', () => undefined);
      sock.on('close', () => {
        raw.closedAt = Date.now();
        if (!done) reject(new Error('closed during handshake'));
      });
      sock.on('connect', () => sock.write(hs.start()));
      sock.on('data', (d: Buffer) => {
        if (!done) {
          const step = hs.push(d);
          if (step instanceof RtmpProtocolError) return reject(step);
          for (const b of step.send) sock.write(b);
          if (!step.done) return;
          done = true;
          resolve(raw);
          if (step.rest.length > 0) raw.onBytes(step.rest);
          return;
        }
        raw.onBytes(d);
      });
    });
  }

  private onBytes(d: Buffer): void {
    const msgs = this.dec.push(d);
    if (!(msgs instanceof RtmpProtocolError)) this.received.push(...msgs);
  }

  write(b: Buffer): boolean {
    if (this.sock.destroyed) return false;
    return this.sock.write(b);
  }

  command(values: AmfValue[], streamId = 0): void {
    this.write(this.enc.encode({ csid: 3, type: MessageType.COMMAND_AMF0, streamId, timestamp: 0, payload: encodeAmf0(values) }));
  }

  /** Sends connect and waits for its answer. */
  async connect(app: string): Promise<void> {
    this.command(['connect', 1, { app, tcUrl: `rtmp://x/${app}`, objectEncoding: 0 }]);
    await waitFor('connect answer', () => this.received.some((m) => m.type === MessageType.COMMAND_AMF0), 5000, 20);
  }

  async closed(timeoutMs: number): Promise<boolean> {
    try {
      await waitFor('socket closed', () => this.closedAt !== undefined, timeoutMs, 50);
      return true;
    } catch {
      return false;
    }
  }

  destroy(): void {
    this.sock.destroy();
  }
}

/** AMF0 strict array: [inner array holding `big`, then `n` references to that inner array]. */
function referenceBomb(big: Buffer, n: number, innerIndex: number): Buffer {
  const head = Buffer.alloc(5);
  head[0] = 0x0a;
  head.writeUInt32BE(n + 1, 1);
  const inner = Buffer.concat([Buffer.from([0x0a, 0, 0, 0, 1]), big]);
  const ref = Buffer.from([0x07, innerIndex >> 8, innerIndex & 0xff]);
  return Buffer.concat([head, inner, ...Array.from({ length: n }, () => ref)]);
}

interface StreamsReply {
  streams: Array<{ app: string; stream: string; live: boolean; metadata: Record<string, unknown> | null }>;
}

describe('RTMP work an unauthenticated peer can cause is bounded', () => {
  let node: NodeProcess;
  let ffmpeg: FfmpegPublisher;
  let viewer: RtmpClient;
  const videoAt: number[] = [];

  /** Longest stretch without a video frame at the viewer between `from` and now. */
  function maxGapSince(from: number): number {
    const now = Date.now();
    const ts = videoAt.filter((t) => t >= from);
    let gap = ts.length > 0 ? ts[0]! - from : now - from;
    for (let i = 1; i < ts.length; i++) gap = Math.max(gap, ts[i]! - ts[i - 1]!);
    if (ts.length > 0) gap = Math.max(gap, now - ts[ts.length - 1]!);
    return gap;
  }

  /** Samples the node's RSS every 50 ms while `fn` runs; returns the peak growth over the baseline. */
  async function rssGrowthDuring(fn: () => Promise<void>): Promise<number> {
    const pid = node.proc.pid!;
    const base = rssOf(pid);
    let peak = base;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, rssOf(pid));
        await sleep(50);
      }
    })();
    try {
      await fn();
    } finally {
      sampling = false;
      await sampler;
    }
    return Math.max(peak, rssOf(pid)) - base;
  }

  before(async () => {
    node = await NodeProcess.start({ config: { limits: { idle_connection_timeout_ms: IDLE_TIMEOUT_MS, max_connections_per_ip: 1000 } } });
    ffmpeg = new FfmpegPublisher(`${node.rtmpUrl}/live/cam`, { width: 320, height: 240, fps: 25, gop: 25, bitrate: '300k' });
    await waitFor('cam live', async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.some((s) => s.stream === 'cam' && s.live), 20_000, 100);
    viewer = await RtmpClient.connect(`${node.rtmpUrl}/live/cam`, { localAddress: '127.0.0.2' });
    viewer.onFrame = (m) => {
      if (m.type === 9) videoAt.push(Date.now());
    };
    await viewer.play();
    await waitFor('viewer frames', () => videoAt.length > 25, 10_000);
  });

  after(async () => {
    viewer?.close();
    await ffmpeg?.stop();
    await node?.stop();
    node?.cleanup();
  });

  test('unfinished large messages on every chunk stream: the connection is closed at the bound, RSS stays flat', async (t) => {
    const from = Date.now();
    const conns: RawRtmp[] = [];
    const growth = await rssGrowthDuring(async () => {
      // 3 connections × 62 chunk streams × the first 1 MiB of an 8 MiB message each.
      const template = new ChunkStreamEncoder(65536).encode({ csid: 3, type: MessageType.VIDEO, streamId: 1, timestamp: 0, payload: Buffer.alloc(8 * MiB - 1, 0x17) });
      const perChunk = 65536 + 1;
      const prefix = template.subarray(0, 12 + 65536 + 15 * perChunk);
      for (let c = 0; c < 3; c++) {
        const raw = await RawRtmp.open(node.host, node.rtmpPort);
        conns.push(raw);
        await raw.connect('live');
        raw.write(raw.enc.encode(setChunkSizeMessage(65536)));
        for (let csid = 2; csid < 64 && raw.closedAt === undefined; csid++) {
          const b = Buffer.from(prefix);
          b[0] = csid; // fmt 0
          for (let i = 0; i < 15; i++) b[12 + 65536 + i * perChunk] = 0xc0 | csid; // fmt 3 continuations
          if (!raw.write(b)) await new Promise((r) => raw.sock.once('drain', r).once('close', r));
        }
      }
      await sleep(1000);
    });
    const closed = conns.filter((c) => c.closedAt !== undefined).length;
    for (const c of conns) c.destroy();
    const gap = maxGapSince(from);
    t.diagnostic(JSON.stringify({ case: 'unfinished messages', growthMB: +(growth / MiB).toFixed(1), closed, maxGapMs: gap }));
    assert.equal(closed, 3, 'every connection that passed the bound was closed');
    assert.ok(growth < 40 * MiB, `RSS grew ${(growth / MiB).toFixed(1)} MiB`);
    assert.ok(gap < 1000, `viewer gap ${gap} ms`);
    assert.match(node.logs(), /PARTIAL_TOO_LARGE/);
  });

  test('FCPublish with an AMF0 reference bomb: refused at decode, no stall', async (t) => {
    const from = Date.now();
    let raw!: RawRtmp;
    let answeredMs = 0;
    const growth = await rssGrowthDuring(async () => {
      raw = await RawRtmp.open(node.host, node.rtmpPort);
      await raw.connect('live');
      raw.sock.pause(); // never reads the echo
      // 64 KiB string referenced 6,000 times: 82 KB on the wire, 393 MB once stringified.
      const big = Buffer.concat([Buffer.from([0x0c, 0, 1, 0, 0]), Buffer.alloc(65536, 0x61)]);
      const payload = Buffer.concat([encodeAmf0(['FCPublish', 0, null]), referenceBomb(big, 6000, 1)]);
      raw.write(raw.enc.encode({ csid: 3, type: MessageType.COMMAND_AMF0, streamId: 0, timestamp: 0, payload }));
      const t0 = Date.now();
      await sleep(50);
      await node.api('/api/v1/node');
      answeredMs = Date.now() - t0 - 50;
      await sleep(1000);
    });
    const closed = raw.closedAt !== undefined;
    raw.destroy();
    const gap = maxGapSince(from);
    t.diagnostic(JSON.stringify({ case: 'FCPublish reference bomb', growthMB: +(growth / MiB).toFixed(1), apiAnswerMs: answeredMs, closed, maxGapMs: gap }));
    assert.ok(closed, 'the connection that sent the bomb was closed');
    assert.ok(growth < 40 * MiB, `RSS grew ${(growth / MiB).toFixed(1)} MiB`);
    assert.ok(gap < 1000, `viewer gap ${gap} ms`);
    assert.match(node.logs(), /AMF_TOO_LARGE/);
  });

  test('echoes of client-supplied names are cut: FCPublish and unknown commands', async () => {
    const raw = await RawRtmp.open(node.host, node.rtmpPort);
    await raw.connect('live');
    const long = 'n'.repeat(60_000);
    raw.command(['FCPublish', 0, null, long]);
    raw.command([long, 7, null]);
    await waitFor('two answers', () => raw.received.filter((m) => m.type === MessageType.COMMAND_AMF0).length >= 3, 5000, 20);
    const answers = raw.received.filter((m) => m.type === MessageType.COMMAND_AMF0).slice(1);
    raw.destroy();
    for (const m of answers) assert.ok(m.payload.length < 1024, `an answer of ${m.payload.length} bytes to a 60 KB name`);
  });

  test('a ping flood from a client that never reads: closed after 500 control messages in a second, RSS flat', async (t) => {
    const from = Date.now();
    let raw!: RawRtmp;
    let answeredBytes = 0;
    const growth = await rssGrowthDuring(async () => {
      raw = await RawRtmp.open(node.host, node.rtmpPort);
      await raw.connect('live');
      const port = raw.sock.localPort;
      raw.sock.pause();
      // 6M pings: 108 MB to read, and 108 MB of answers if every one were answered.
      const ping = raw.enc.encode(userControlMessage(UserControlEvent.PING_REQUEST, 1));
      const pings = Buffer.concat(Array.from({ length: 30_000 }, () => ping));
      for (let i = 0; i < 200; i++) raw.write(pings);
      await waitFor('flooding client closed', async () => {
        const sessions = await node.api<{ sessions: Array<{ remote: string; bytesOut: number }> }>('/api/v1/sessions');
        const mine = sessions.sessions.find((s) => s.remote.endsWith(`:${port}`));
        if (mine) answeredBytes = mine.bytesOut;
        return mine === undefined;
      }, 5000, 50);
      await sleep(500);
    });
    raw.destroy();
    const gap = maxGapSince(from);
    t.diagnostic(JSON.stringify({ case: 'ping flood, never reads', growthMB: +(growth / MiB).toFixed(1), lastSeenAnsweredKB: +(answeredBytes / 1024).toFixed(1), maxGapMs: gap }));
    // 500 answers of 18 bytes and the connect answers: a few KiB, never the megabytes asked for.
    assert.ok(answeredBytes < 64 * 1024, `${(answeredBytes / 1024).toFixed(1)} KiB of answers written to a flooding client`);
    assert.ok(growth < 40 * MiB, `RSS grew ${(growth / MiB).toFixed(1)} MiB`);
    assert.ok(gap < 1000, `viewer gap ${gap} ms`);
    assert.match(node.logs(), /CONTROL_FLOOD/);
  });

  test('pings at a real client\'s rate are all answered and the connection stays', async () => {
    const raw = await RawRtmp.open(node.host, node.rtmpPort);
    await raw.connect('live');
    const ping = (n: number) => raw.enc.encode(userControlMessage(UserControlEvent.PING_REQUEST, n));
    for (let i = 1; i <= 40; i++) {
      raw.write(ping(i));
      await sleep(25);
    }
    const pongs = () => raw.received.filter((m) => m.type === MessageType.USER_CONTROL && m.payload.readUInt16BE(0) === UserControlEvent.PING_RESPONSE);
    await waitFor('40 ping answers', () => pongs().length >= 40, 5000, 20);
    const stamps = pongs().map((m) => m.payload.readUInt32BE(2));
    const open = raw.closedAt === undefined;
    raw.destroy();
    assert.deepEqual(stamps, Array.from({ length: 40 }, (_, i) => i + 1));
    assert.ok(open, 'a client pinging 40 times a second was closed');
  });

  test('a connection that connects and then does nothing is closed after limits.idle_connection_timeout_ms', async (t) => {
    const raw = await RawRtmp.open(node.host, node.rtmpPort);
    await raw.connect('live');
    const connectedAt = Date.now();
    const closed = await raw.closed(IDLE_TIMEOUT_MS + 2500);
    const after = (raw.closedAt ?? Date.now()) - connectedAt;
    raw.destroy();
    t.diagnostic(JSON.stringify({ case: 'idle after connect', closed, afterMs: after }));
    assert.ok(closed, `still open ${after} ms after connect`);
    assert.ok(after >= IDLE_TIMEOUT_MS - 50, `closed after ${after} ms, not before the timeout`);
    assert.match(node.logs(), /neither published nor played within 2000 ms/);
  });

  test('200,000 undecodable data messages from one publisher: a handful of log lines, the publisher closed; metadata kept as a small copy', async (t) => {
    const from = Date.now();
    const raw = await RawRtmp.open(node.host, node.rtmpPort);
    await raw.connect('live');
    raw.command(['createStream', 2, null]);
    await waitFor('createStream', () => raw.received.filter((m) => m.type === MessageType.COMMAND_AMF0).length >= 2, 5000, 20);
    raw.write(raw.enc.encode({ csid: 4, type: MessageType.COMMAND_AMF0, streamId: 1, timestamp: 0, payload: encodeAmf0(['publish', 3, null, 'junk', 'live']) }));
    await waitFor('junk live', async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.some((s) => s.stream === 'junk'), 5000, 50);
    // Metadata with a long string, a nested tree and many keys.
    const meta: Record<string, AmfValue> = { width: 320, height: 240, encoder: 'e'.repeat(100_000), nested: { deep: ['x'.repeat(1000)] } };
    for (let i = 0; i < 500; i++) meta[`k${i}`] = i;
    raw.write(raw.enc.encode({ csid: 4, type: MessageType.DATA_AMF0, streamId: 1, timestamp: 0, payload: encodeAmf0(['@setDataFrame', 'onMetaData', meta]) }));
    const listing = await waitFor('metadata', async () => {
      const l = await node.api<StreamsReply>('/api/v1/streams');
      return l.streams.find((s) => s.stream === 'junk')?.metadata ? l : undefined;
    }, 5000, 50);
    const junk = listing.streams.find((s) => s.stream === 'junk');
    const listingBytes = JSON.stringify(listing).length;
    const logBefore = node.logs().length;
    const bad = raw.enc.encode({ csid: 6, type: MessageType.DATA_AMF0, streamId: 1, timestamp: 0, payload: Buffer.from([0xff]) });
    const burst = Buffer.concat(Array.from({ length: 10_000 }, () => raw.enc.encode({ csid: 6, type: MessageType.DATA_AMF0, streamId: 1, timestamp: 0, payload: Buffer.from([0xff]) })));
    raw.write(bad);
    for (let i = 0; i < 20; i++) raw.write(burst);
    const t0 = Date.now();
    await sleep(300);
    await waitFor('node answers', async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.length > 0, 20_000, 50);
    const closed = await raw.closed(5000);
    await sleep(500);
    const busyMs = Date.now() - t0;
    const logLines = node.logs().slice(logBefore).split('\n').filter((l) => l.includes('undecodable data message')).length;
    const logBytes = node.logs().length - logBefore;
    raw.destroy();
    const gap = maxGapSince(from);
    t.diagnostic(JSON.stringify({ case: 'log amplification', logLines, logKB: Math.round(logBytes / 1024), busyMs, listingBytes, maxGapMs: gap }));
    assert.ok(logLines <= 10, `${logLines} log lines for 200,001 bad data messages`);
    assert.ok(logBytes < 64 * 1024, `${logBytes} log bytes`);
    assert.ok(closed, 'a publisher whose data keeps failing to decode is closed');
    assert.ok(gap < 1000, `viewer gap ${gap} ms`);
    assert.equal(junk?.metadata?.width, 320);
    assert.equal(String(junk?.metadata?.encoder).length, 256, 'long strings are cut');
    assert.equal(junk?.metadata?.nested, undefined, 'nested values are dropped');
    assert.ok(Object.keys(junk?.metadata ?? {}).length <= 64, 'at most 64 keys');
    assert.ok(listingBytes < 16 * 1024, `stream listing of ${listingBytes} bytes`);
  });
});
