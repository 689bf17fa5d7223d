/**
 * The media the load tools publish: an FLV file made once with ffmpeg (a synthetic
 * test pattern, H.264 High + AAC, fixed GOP), cached on disk and loaded into memory as
 * tags the publisher can loop forever.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  FlvDecoder,
  FlvError,
  asAmfObject,
  decodeAmf0,
  isAudioSequenceHeader,
  isVideoKeyframe,
  isVideoSequenceHeader,
  type AmfObject,
  type AmfValue,
  type FlvTag,
} from '@meshcast/proto';

/**
 * Whether the tools run from their TypeScript sources (tests, development: through tsx) or
 * from the production build (tools/dist/*.mjs, where every module of an entry point shares
 * the bundle's import.meta). Child processes follow suit: sources fork sources through tsx,
 * the build forks built entry points.
 */
export const FROM_SOURCE = import.meta.url.endsWith('.ts');
/** Repository root (tools/src/load → ../../.., or tools/dist → ../..). */
export const REPO_ROOT = resolve(import.meta.dirname, FROM_SOURCE ? '../../..' : '../..');
/** Where `npm run build` puts the tools' entry points. */
export const TOOLS_DIST = join(REPO_ROOT, 'tools/dist');
/** Default cache directory for generated media (git-ignored). */
export const DEFAULT_CACHE_DIR = join(REPO_ROOT, 'bench-results/.cache');

export interface TestMediaSpec {
  width: number;
  height: number;
  fps: number;
  /** Video bitrate in kbit/s. */
  videoKbps: number;
  /** Audio bitrate in kbit/s. */
  audioKbps: number;
  /** Keyframe interval in seconds. */
  gopSeconds: number;
  /** Clip length in seconds (the publisher loops it). */
  seconds: number;
  /** x264 profile. */
  profile: 'baseline' | 'main' | 'high';
  /** false: no B-frames (x264 -bf 0), as WebRTC needs; default: x264's choice for the profile. */
  bFrames?: false;
}

/** The benchmark's stream: 720p30, ~2 Mbit/s H.264 High + 128 kbit/s AAC, keyframe every 2 s, 10 s loop. */
export const BENCH_MEDIA: TestMediaSpec = { width: 1280, height: 720, fps: 30, videoKbps: 2000, audioKbps: 128, gopSeconds: 2, seconds: 10, profile: 'high' };
/** A small, quick-to-encode stream for tests. */
export const TEST_MEDIA: TestMediaSpec = { width: 640, height: 360, fps: 30, videoKbps: 600, audioKbps: 64, gopSeconds: 1, seconds: 3, profile: 'high' };

export function mediaFileName(s: TestMediaSpec): string {
  return `testsrc-${s.width}x${s.height}p${s.fps}-${s.profile}${s.bFrames === false ? '-nobf' : ''}-${s.videoKbps}k-a${s.audioKbps}k-g${s.gopSeconds}s-${s.seconds}s.flv`;
}

/**
 * Returns the path of the FLV for `spec`, encoding it with ffmpeg on first use
 * (testsrc2 with light temporal noise so the encoder actually spends its bitrate).
 */
export async function ensureTestMedia(spec: TestMediaSpec = BENCH_MEDIA, cacheDir = DEFAULT_CACHE_DIR, timeoutMs = 180_000): Promise<string> {
  const file = join(cacheDir, mediaFileName(spec));
  if (existsSync(file)) return file;
  mkdirSync(cacheDir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  const gop = Math.round(spec.fps * spec.gopSeconds);
  const kbps = spec.videoKbps;
  const args = [
    '-hide_banner', '-loglevel', 'error', '-nostdin', '-y',
    '-f', 'lavfi', '-i', `testsrc2=size=${spec.width}x${spec.height}:rate=${spec.fps},noise=alls=12:allf=t`,
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-t', String(spec.seconds),
    '-c:v', 'libx264', '-profile:v', spec.profile, '-preset', 'veryfast', '-pix_fmt', 'yuv420p',
    '-g', String(gop), '-keyint_min', String(gop), '-sc_threshold', '0',
    ...(spec.bFrames === false ? ['-bf', '0'] : []),
    '-b:v', `${kbps}k`, '-maxrate', `${kbps}k`, '-bufsize', `${kbps * 2}k`,
    '-c:a', 'aac', '-b:a', `${spec.audioKbps}k`, '-ar', '48000', '-ac', '2',
    '-f', 'flv', tmp,
  ];
  await new Promise<void>((res, rej) => {
    const p = spawn('ffmpeg', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => {
      if (err.length < 8000) err += d.toString();
    });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => {
      clearTimeout(t);
      rej(new Error(`cannot run ffmpeg: ${e.message}`));
    });
    p.on('exit', (code, sig) => {
      clearTimeout(t);
      if (code === 0) res();
      else rej(new Error(`ffmpeg failed (${code ?? sig}): ${err.trim()}`));
    });
  }).catch((e: unknown) => {
    rmSync(tmp, { force: true });
    throw e;
  });
  renameSync(tmp, file);
  return file;
}

export interface FlvSource {
  file: string;
  /** onMetaData object (without the `@setDataFrame` wrapper); undefined if the file has none. */
  metadata: AmfObject | undefined;
  videoSequenceHeader: Buffer | undefined;
  audioSequenceHeader: Buffer | undefined;
  /** Audio and video tags in file order, sequence headers removed; timestamps start at 0. */
  tags: FlvTag[];
  /** Length of one loop in ms: the next loop's timestamps are shifted by this much. */
  loopDurationMs: number;
  /** Audio+video payload bytes of one loop (what a viewer should receive per loop). */
  loopPayloadBytes: number;
  videoFrames: number;
  keyframes: number;
}

/** Reads and indexes an FLV file so it can be looped. Throws on malformed files or files without video. */
export function loadFlvSource(file: string): FlvSource {
  const data = readFileSync(file);
  const dec = new FlvDecoder();
  const all = dec.push(data);
  if (all instanceof FlvError) throw new Error(`${file}: ${all.message}`);
  let metadata: AmfObject | undefined;
  let vsh: Buffer | undefined;
  let ash: Buffer | undefined;
  const tags: FlvTag[] = [];
  for (const t of all) {
    if (t.type === 18) {
      const v = decodeAmf0(t.payload);
      if (v instanceof Error) continue;
      const vals: AmfValue[] = v[0] === '@setDataFrame' ? v.slice(1) : v;
      if (vals[0] === 'onMetaData' && !metadata) metadata = asAmfObject(vals[1] as AmfValue);
      continue;
    }
    if (t.type === 9 && isVideoSequenceHeader(t.payload)) {
      vsh ??= t.payload;
      continue;
    }
    if (t.type === 8 && isAudioSequenceHeader(t.payload)) {
      ash ??= t.payload;
      continue;
    }
    if (t.type === 8 || t.type === 9) tags.push(t);
  }
  const videos = tags.filter((t) => t.type === 9);
  if (videos.length < 2) throw new Error(`${file}: needs at least two video frames`);
  const first = tags[0]!.timestamp;
  for (const t of tags) t.timestamp -= first;
  const lastV = videos[videos.length - 1]!.timestamp;
  const vDur = Math.max(1, Math.round(lastV / (videos.length - 1)));
  const audios = tags.filter((t) => t.type === 8);
  let loopDurationMs = lastV + vDur;
  if (audios.length >= 2) {
    const lastA = audios[audios.length - 1]!.timestamp;
    const aDur = Math.max(1, Math.round(lastA / (audios.length - 1)));
    loopDurationMs = Math.max(loopDurationMs, lastA + aDur);
  }
  let bytes = 0;
  for (const t of tags) bytes += t.payload.length;
  return {
    file,
    metadata,
    videoSequenceHeader: vsh,
    audioSequenceHeader: ash,
    tags,
    loopDurationMs,
    loopPayloadBytes: bytes,
    videoFrames: videos.length,
    keyframes: videos.filter((t) => isVideoKeyframe(t.payload)).length,
  };
}

/** Average audio+video payload bitrate of a source, bits per second. */
export function sourceBitrate(s: FlvSource): number {
  return (s.loopPayloadBytes * 8 * 1000) / s.loopDurationMs;
}

/**
 * Audio+video payload bytes a looping publisher of `s` sends for media timestamps in
 * (fromTs, toTs] (loop n's timestamps are shifted by n × loopDurationMs).
 */
export function payloadBytesInRange(s: FlvSource, fromTs: number, toTs: number): number {
  if (!(toTs > fromTs)) return 0;
  const L = s.loopDurationMs;
  let total = 0;
  const firstLoop = Math.max(0, Math.floor(fromTs / L));
  const lastLoop = Math.floor(toTs / L);
  for (let loop = firstLoop; loop <= lastLoop; loop++) {
    const base = loop * L;
    if (base > toTs) break;
    if (base + L <= fromTs) continue;
    if (base > fromTs && base + L <= toTs) {
      total += s.loopPayloadBytes;
      continue;
    }
    for (const t of s.tags) {
      const ts = base + t.timestamp;
      if (ts > fromTs && ts <= toTs) total += t.payload.length;
    }
  }
  return total;
}
