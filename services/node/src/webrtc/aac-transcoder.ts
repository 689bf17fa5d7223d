/**
 * AacTranscoder: a WHIP publisher's Opus as AAC, for the stream's RTMP, HTTP-FLV, HLS and relay
 * consumers (FLV and MPEG-TS carry no Opus here). One managed ffmpeg child per WHIP publish:
 * Ogg Opus in on stdin (one page per RTP packet, granule positions from the RTP clock, so lost
 * packets stay gaps in time and `aresample=async` fills them with silence), ADTS AAC out on
 * stdout (48 kHz stereo, 128 kbit/s). Each AAC frame's time is its sample position: 1024 samples
 * after the one before, from the first packet's time on the publisher's timeline.
 *
 * A child that dies or cannot start is logged once and not restarted: the stream goes on with
 * video only until the publisher publishes again.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { AdtsReader, OggOpusWriter, adtsAudioSpecificConfig, opusPacketSamples, type AdtsFrame } from '@meshcast/proto';
import type { Logger } from '../log.ts';

/** Samples per AAC-LC frame. */
const AAC_FRAME_SAMPLES = 1024;

const FFMPEG_ARGS = [
  '-hide_banner', '-loglevel', 'error', '-nostdin',
  // Start at once: the input is known to be Ogg Opus.
  '-fflags', 'nobuffer', '-probesize', '32', '-analyzeduration', '0',
  '-f', 'ogg', '-i', 'pipe:0',
  '-vn', '-af', 'aresample=async=1:first_pts=0',
  '-c:a', 'aac', '-b:a', '128k', '-ar', '48000', '-ac', '2',
  '-f', 'adts', '-flush_packets', '1', 'pipe:1',
];

export interface AacOutput {
  /** The stream's AudioSpecificConfig: sent once, before the first frame (at its time), and again if it changes. */
  config(asc: Buffer, ms: number): void;
  /** One raw AAC frame at `ms` on the publisher's timeline. */
  frame(ms: number, data: Buffer): void;
}

export class AacTranscoder {
  private child: ChildProcess | undefined;
  private readonly writer = new OggOpusWriter();
  private readonly reader = new AdtsReader();
  private firstRtp: number | undefined;
  private lastRtp = 0;
  private extRtp = 0;
  private baseMs = 0;
  private samplesOut = 0;
  private asc: Buffer | undefined;
  private stopped = false;
  /** Bytes written to the child not yet taken by it: bounded, so a stuck child cannot grow our memory. */
  private static readonly MAX_PENDING = 1024 * 1024;

  constructor(
    private readonly out: AacOutput,
    private readonly log: Logger,
    private readonly command = 'ffmpeg',
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** One Opus RTP payload with its RTP timestamp (48 kHz) and its time on the publisher's timeline (ms, used for the first). */
  push(packet: Buffer, rtpTimestamp: number, ms: number): void {
    if (this.stopped || packet.length === 0) return;
    if (!this.child) this.start();
    const stdin = this.child?.stdin;
    if (!stdin || stdin.destroyed) return;
    if (this.firstRtp === undefined) {
      this.firstRtp = rtpTimestamp;
      this.lastRtp = rtpTimestamp;
      this.baseMs = ms;
    }
    const delta = (rtpTimestamp - this.lastRtp) | 0;
    this.lastRtp = rtpTimestamp;
    this.extRtp += delta;
    if (this.extRtp < 0) return; // before the first packet: a late, reordered one
    if (stdin.writableLength > AacTranscoder.MAX_PENDING) return; // the child is not keeping up: drop, aresample fills the hole
    try {
      stdin.write(this.writer.packet(packet, BigInt(this.extRtp + opusPacketSamples(packet))));
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'an Opus packet could not be passed to the transcoder');
    }
  }

  private start(): void {
    const child = spawn(this.command, FFMPEG_ARGS, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 2000) stderr += d.toString();
    });
    child.stdout!.on('data', (d: Buffer) => {
      if (this.stopped) return; // output still in the pipe of a child being killed
      for (const f of this.reader.push(d)) this.frame(f);
    });
    // A write after the child died fails here, once; the exit handler reports why.
    child.stdin!.on('error', () => undefined);
    child.on('error', (err) => {
      if (this.child === child) this.child = undefined;
      this.stopped = true;
      this.log.error({ err: err.message }, 'the Opus→AAC transcoder could not start; the stream has no audio for RTMP/HLS viewers');
    });
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.stopped = true;
      this.log.warn({ code, signal, stderr: stderr.trim().slice(0, 500) }, 'the Opus→AAC transcoder exited; the stream goes on without audio');
    });
    child.stdin!.write(this.writer.headers());
    this.log.debug({ pid: child.pid }, 'Opus→AAC transcoder started');
  }

  private frame(f: AdtsFrame): void {
    const ms = this.baseMs + Math.round((this.samplesOut * 1000) / f.sampleRate);
    const asc = adtsAudioSpecificConfig(f);
    if (!this.asc || !this.asc.equals(asc)) {
      this.asc = asc;
      this.out.config(asc, ms);
    }
    this.samplesOut += AAC_FRAME_SAMPLES;
    this.out.frame(ms, f.data);
  }

  stop(reason: string): void {
    this.stopped = true;
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    child.stdin!.destroy();
    child.kill('SIGKILL');
    this.log.debug({ reason }, 'Opus→AAC transcoder stopped');
  }
}

