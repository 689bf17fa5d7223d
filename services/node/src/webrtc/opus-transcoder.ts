/**
 * OpusTranscoder: a stream's AAC as Opus for its WebRTC viewers on this node (WebRTC has no AAC).
 * One per stream per node, running only while it has a listener: the first WHEP viewer starts a
 * managed ffmpeg child (FLV audio in on stdin, Ogg Opus out on stdout, 48 kHz stereo, 20 ms
 * frames), every viewer of the stream shares its packets, and the last one leaving stops it.
 *
 * Cost: one ffmpeg process per transcoded stream (measured in tests/src/e2e/whep.test.ts and
 * documented in docs/webrtc.md). A child that dies is logged once and not restarted: its viewers
 * keep their video; the next viewer to arrive after all have left starts a new one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { encodeFlvHeader, OggOpusReader } from '@meshcast/proto';
import { FRAME_AUDIO, type MediaFrame } from '../media/frame.ts';
import type { StreamHub } from '../media/stream-hub.ts';
import type { Logger } from '../log.ts';

/** Opus packet duration (ffmpeg's -frame_duration) in 48 kHz samples: what each packet advances the RTP clock. */
export const OPUS_FRAME_SAMPLES = 960;

export type OpusListener = (packet: Buffer) => void;

const FFMPEG_ARGS = [
  '-hide_banner', '-loglevel', 'error', '-nostdin',
  // Start at once on the first frames: the input is known to be FLV with AAC.
  '-fflags', 'nobuffer', '-probesize', '4096', '-analyzeduration', '0',
  '-f', 'flv', '-i', 'pipe:0',
  '-vn', '-c:a', 'libopus', '-b:a', '64k', '-ar', '48000', '-ac', '2',
  '-application', 'lowdelay', '-frame_duration', '20',
  // An Ogg page per packet: nothing waits in ffmpeg's muxer.
  '-page_duration', '20000', '-flush_packets', '1',
  '-f', 'ogg', 'pipe:1',
];

export class OpusTranscoder {
  private readonly listeners = new Set<OpusListener>();
  private child: ChildProcess | undefined;
  private reader = new OggOpusReader();
  private readonly onFrames = (frames: readonly MediaFrame[]): void => this.feed(frames);

  constructor(
    private readonly hub: StreamHub,
    private readonly log: Logger,
    private readonly onIdle: (t: OpusTranscoder) => void,
    private readonly command = 'ffmpeg',
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get listenerCount(): number {
    return this.listeners.size;
  }

  add(l: OpusListener): void {
    this.listeners.add(l);
    if (!this.child) this.start();
  }

  remove(l: OpusListener): void {
    if (!this.listeners.delete(l) || this.listeners.size > 0) return;
    this.stop('the last WebRTC viewer left');
    this.onIdle(this);
  }

  private start(): void {
    const child = spawn(this.command, FFMPEG_ARGS, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    this.reader = new OggOpusReader();
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 2000) stderr += d.toString();
    });
    child.stdout!.on('data', (d: Buffer) => {
      for (const p of this.reader.push(d)) for (const l of this.listeners) l(p);
    });
    // A write after the child died fails here, once; the exit handler reports why.
    child.stdin!.on('error', () => undefined);
    child.on('error', (err) => this.log.error({ err: err.message, stream: this.hub.key }, 'the AAC→Opus transcoder could not start; WebRTC viewers get video only'));
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.hub.removeFrameListener(this.onFrames);
      this.log.warn({ code, signal, stream: this.hub.key, stderr: stderr.trim().slice(0, 500) }, 'the AAC→Opus transcoder exited; WebRTC viewers of this stream keep video only');
    });
    // The stream's audio header and the frames of its current GOP first, then live frames.
    child.stdin!.write(encodeFlvHeader({ audio: true, video: false }));
    this.feed(this.hub.snapshot().filter((f) => f.isSequenceHeader));
    this.hub.addFrameListener(this.onFrames);
    this.log.debug({ pid: child.pid, stream: this.hub.key }, 'AAC→Opus transcoder started');
  }

  private feed(frames: readonly MediaFrame[]): void {
    const stdin = this.child?.stdin;
    if (!stdin || stdin.destroyed) return;
    for (const f of frames) if (f.type === FRAME_AUDIO) stdin.write(f.flv());
  }

  stop(reason: string): void {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    this.hub.removeFrameListener(this.onFrames);
    child.stdin!.destroy();
    child.kill('SIGKILL');
    this.log.debug({ reason, stream: this.hub.key }, 'AAC→Opus transcoder stopped');
  }
}
