/**
 * VodPlayer with a manual clock and a recorded output: the start sequence, real-time pacing
 * ahead by the client's buffer, back-pressure from unsent bytes, pause/unpause, seek to the
 * keyframe at or before, and the end sequence. The e2e test (tests/src/e2e/vod.test.ts) plays
 * real files to ffmpeg and the project's RTMP client.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { FRAME_AUDIO, FRAME_VIDEO, MediaFrame } from '../src/media/frame.ts';
import { keyframeAtOrBefore, type VodKeyframe, type VodMedia } from '../src/vod/vod-media.ts';
import { VodPlayer, WRITE_BUFFER_BYTES, type Clock, type VodOutput } from '../src/vod/vod-player.ts';

/** 10 s: video every 40 ms (a keyframe every 2 s), audio every 20 ms. */
function fakeMedia(): VodMedia & { closed: boolean } {
  const frames: MediaFrame[] = [];
  for (let t = 0; t < 10_000; t += 20) {
    if (t % 40 === 0) frames.push(new MediaFrame(FRAME_VIDEO, t, Buffer.from([t % 2000 === 0 ? 0x17 : 0x27, 1, 0, 0, 0, 9]), t % 2000 === 0, false));
    frames.push(new MediaFrame(FRAME_AUDIO, t, Buffer.from([0xaf, 1, 5]), false, false));
  }
  const keyframes: VodKeyframe[] = frames.filter((f) => f.isKeyframe).map((f) => ({ timestamp: f.timestamp, position: frames.indexOf(f) }));
  return {
    closed: false,
    file: { app: 'vod', name: 'a.mp4', path: '/nowhere/a.mp4', size: 1, format: 'mp4' },
    durationMs: 10_000,
    metadata: { duration: 10 },
    videoHeader: Buffer.from([0x17, 0, 0, 0, 0, 1]),
    audioHeader: Buffer.from([0xaf, 0, 0x12, 0x10]),
    keyframes,
    async *frames(fromMs: number) {
      const k = keyframeAtOrBefore(keyframes, fromMs)!;
      for (let i = k.position; i < frames.length; i++) yield frames[i]!;
    },
    close() {
      this.closed = true;
    },
  };
}

class ManualClock implements Clock {
  t = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private next = 1;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers.delete(h as number);
  }
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await settle();
      const due = [...this.timers.entries()].filter(([, v]) => v.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = Math.max(this.t, due[1].at);
      due[1].fn();
    }
    this.t = end;
    await settle();
  }
}

/** Lets the reader's promise chain run (each frame is one async step). */
async function settle(): Promise<void> {
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
}

type Out = { kind: 'status' | 'data' | 'control' | 'frame'; code?: string; frame?: MediaFrame };

function recorder(): VodOutput & { log: Out[]; buffered: number } {
  const log: Out[] = [];
  return {
    log,
    buffered: 0,
    status: (_level, code) => void log.push({ kind: 'status', code }),
    data: (values) => void log.push({ kind: 'data', code: String(values[0]) + (values[1] && typeof values[1] === 'object' && 'code' in values[1] ? `:${String(values[1].code)}` : '') }),
    control: (event) => void log.push({ kind: 'control', code: event }),
    frame: (f) => void log.push({ kind: 'frame', frame: f }),
    bufferedBytes() {
      return this.buffered;
    },
  };
}

const framesOf = (log: Out[], from = 0): MediaFrame[] => log.slice(from).flatMap((o) => (o.kind === 'frame' && o.frame ? [o.frame] : []));
const log = pino({ level: 'silent' });

test('start: statuses, metadata, headers, then frames up to the lead; real time releases the rest', async () => {
  const clock = new ManualClock();
  const out = recorder();
  const media = fakeMedia();
  const p = new VodPlayer(media, out, log, { clock });
  await settle();
  assert.deepEqual(
    out.log.slice(0, 6).map((o) => o.code),
    ['recorded', 'begin', 'NetStream.Play.Reset', 'NetStream.Play.Start', '|RtmpSampleAccess', 'onMetaData'],
  );
  const first = framesOf(out.log);
  assert.ok(first[0]!.isSequenceHeader && first[0]!.type === FRAME_VIDEO);
  assert.ok(first[1]!.isSequenceHeader && first[1]!.type === FRAME_AUDIO);
  // Default lead 1 s: nothing past it yet.
  assert.equal(Math.max(...first.map((f) => f.timestamp)), 1000);
  await clock.advance(500);
  assert.equal(Math.max(...framesOf(out.log).map((f) => f.timestamp)), 1500);
  // A client buffer of 3 s: the lead grows to 3.5 s at once.
  p.handle({ type: 'bufferLength', ms: 3000 });
  await settle();
  assert.equal(Math.max(...framesOf(out.log).map((f) => f.timestamp)), 4000);
  p.handle({ type: 'close' });
  assert.ok(media.closed);
});

test('back-pressure: nothing is sent while the socket holds too much; drained resumes', async () => {
  const clock = new ManualClock();
  const out = recorder();
  const p = new VodPlayer(fakeMedia(), out, log, { clock });
  await settle();
  out.buffered = WRITE_BUFFER_BYTES + 1;
  const before = framesOf(out.log).length;
  await clock.advance(2000);
  assert.equal(framesOf(out.log).length, before, 'held while the socket is full');
  out.buffered = 0;
  p.handle({ type: 'drained' });
  await settle();
  assert.equal(Math.max(...framesOf(out.log).map((f) => f.timestamp)), 3000);
  p.handle({ type: 'close' });
});

test('pause holds the position; unpause goes on from the next frame without a burst', async () => {
  const clock = new ManualClock();
  const out = recorder();
  const p = new VodPlayer(fakeMedia(), out, log, { clock });
  await clock.advance(1000);
  p.handle({ type: 'pause', pause: true });
  const at = out.log.length;
  const last = Math.max(...framesOf(out.log).map((f) => f.timestamp));
  await clock.advance(5000);
  assert.deepEqual(out.log.slice(at - 1).map((o) => o.code), ['NetStream.Pause.Notify']);
  p.handle({ type: 'pause', pause: undefined }); // pauseRaw without a flag toggles
  await settle();
  const resumed = framesOf(out.log, at);
  assert.equal(resumed[0]!.timestamp, last + 20, 'the next frame');
  assert.ok(Math.max(...resumed.map((f) => f.timestamp)) <= last + 1000 + 20, 'only the lead, not the paused time');
  p.handle({ type: 'close' });
});

test('seek: Seek.Notify, Play.Start, headers, then the keyframe at or before the target', async () => {
  const clock = new ManualClock();
  const out = recorder();
  const p = new VodPlayer(fakeMedia(), out, log, { clock });
  await clock.advance(300);
  const at = out.log.length;
  p.handle({ type: 'seek', ms: 5300 });
  await settle();
  const after = out.log.slice(at);
  assert.deepEqual(after.slice(0, 4).map((o) => o.code), ['begin', 'NetStream.Seek.Notify', 'NetStream.Play.Start', '|RtmpSampleAccess']);
  const frames = framesOf(after);
  assert.ok(frames[0]!.isSequenceHeader && frames[1]!.isSequenceHeader);
  assert.equal(frames[2]!.timestamp, 4000);
  assert.ok(frames[2]!.isKeyframe);
  // Paced from the keyframe: one lead of media, then real time.
  assert.equal(Math.max(...frames.map((f) => f.timestamp)), 5000);
  p.handle({ type: 'close' });
});

test('end: Play.Complete, StreamEOF and Play.Stop when the last frame is due; a seek after it plays again', async () => {
  const clock = new ManualClock();
  const out = recorder();
  const p = new VodPlayer(fakeMedia(), out, log, { clock, startMs: 8000 });
  await clock.advance(900);
  assert.ok(!out.log.some((o) => o.code === 'NetStream.Play.Stop'), 'not before the media time');
  await clock.advance(1200);
  const codes = out.log.map((o) => o.code);
  const complete = codes.indexOf('onPlayStatus:NetStream.Play.Complete');
  assert.ok(complete > 0);
  assert.deepEqual(codes.slice(complete), ['onPlayStatus:NetStream.Play.Complete', 'eof', 'NetStream.Play.Stop']);
  assert.equal(p.stateKind, 'ended');
  p.handle({ type: 'seek', ms: 0 });
  await settle();
  assert.equal(p.stateKind, 'playing');
  assert.equal(framesOf(out.log).filter((f) => !f.isSequenceHeader).at(-1)!.timestamp, 1000);
  p.handle({ type: 'close' });
});
