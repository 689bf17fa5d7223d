/**
 * The RTMP session's reply-buffer bound (`limits.reply_buffer_bytes`), on a stand-in socket
 * whose peer never reads: over a real socket the kernel's buffers take megabytes before the
 * bound is reached, and a ping flood that large is closed as CONTROL_FLOOD first (see
 * tests/src/e2e/rtmp-bounds.test.ts). Here every byte the session writes stays unread until
 * the test lets the peer read.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { ChunkStreamDecoder, ChunkStreamEncoder, MessageType, RtmpClientHandshake, RtmpProtocolError, UserControlEvent, userControlMessage, type RtmpMessage } from '@meshcast/proto';
import { loadConfig } from '../src/config.ts';
import type { MediaHost } from '../src/media/host.ts';
import { RtmpSession } from '../src/rtmp/rtmp-session.ts';
import { quietLog } from './support.ts';

const REPLY_BUFFER = 1024;
/** Lets the streams deliver what was pushed (data and drain events come on later ticks). */
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A socket whose peer reads nothing until `read()`; what the session wrote is in `written`. */
class UnreadPeerSocket extends Duplex {
  readonly written: Buffer[] = [];
  private readonly pending: Array<() => void> = [];
  readonly remoteAddress = '127.0.0.9';
  readonly remotePort = 50_000;
  constructor() {
    super({ writableHighWaterMark: 512 });
  }
  override _read(): void {}
  /** Everything the session wrote, read by the peer or not. */
  override write(chunk: Buffer): boolean {
    this.written.push(chunk);
    return super.write(chunk);
  }
  override _write(_chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.pending.push(done);
  }
  setNoDelay(): this {
    return this;
  }
  /** The peer reads everything written so far. */
  read_(): void {
    // A completed write starts the next buffered one at once, which lands in `pending` again.
    while (this.pending.length > 0) this.pending.shift()!();
  }
}

test('a peer that does not read our replies: past limits.reply_buffer_bytes the session stops reading, and reads again once it drains', async () => {
  const config = loadConfig({ inline: { limits: { reply_buffer_bytes: REPLY_BUFFER } } });
  const host = { config, log: quietLog } as unknown as MediaHost;
  const sock = new UnreadPeerSocket();
  const session = new RtmpSession(sock as unknown as Socket, host, () => undefined);
  const pongs = (): number[] => {
    const dec = new ChunkStreamDecoder({ maxMessageLength: 1 << 20 });
    const all = Buffer.concat(sock.written);
    const msgs = dec.push(all.subarray(1 + 1536 + 1536)) as RtmpMessage[] | RtmpProtocolError;
    assert.ok(!(msgs instanceof RtmpProtocolError), String(msgs));
    return msgs.filter((m) => m.type === MessageType.USER_CONTROL && m.payload.readUInt16BE(0) === UserControlEvent.PING_RESPONSE).map((m) => m.payload.readUInt32BE(2));
  };
  try {
    // Handshake: C0C1, the session's S0S1S2 (the peer reads those), C2.
    const hs = new RtmpClientHandshake();
    sock.push(hs.start());
    await tick();
    const s012 = Buffer.concat(sock.written);
    sock.read_();
    const step = hs.push(s012);
    assert.ok(!(step instanceof RtmpProtocolError) && step.done, 'handshake completes');
    for (const b of step.send) sock.push(b);
    await tick();

    // 300 pings (answers of 7 bytes once their chunk header compresses: 2.1 KB) while the peer reads nothing: reading pauses past 1 KiB unread.
    const enc = new ChunkStreamEncoder(128);
    const pings = (from: number, n: number): Buffer => Buffer.concat(Array.from({ length: n }, (_, i) => enc.encode(userControlMessage(UserControlEvent.PING_REQUEST, from + i))));
    sock.push(pings(1, 300));
    await tick();
    assert.ok(sock.writableLength > REPLY_BUFFER, `unread ${sock.writableLength}`);
    assert.ok(sock.isPaused(), 'the session stopped reading');
    const answered = pongs().length;
    assert.equal(answered, 300);

    // More pings arrive: none is read, so none is answered.
    sock.push(pings(301, 100));
    await tick();
    assert.equal(pongs().length, answered, 'no answers while paused');

    // The peer reads: the socket drains, the session reads again and answers the rest, in order.
    sock.read_();
    await tick();
    assert.equal(sock.isPaused(), false, 'reading again after the drain');
    assert.deepEqual(pongs(), Array.from({ length: 400 }, (_, i) => i + 1));
  } finally {
    session.handle({ type: 'kick', reason: 'test over' });
  }
});
