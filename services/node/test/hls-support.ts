/**
 * Media for the HLS tests: short real H.264/AAC (FLV) and HEVC (mp4 → Enhanced RTMP 'hvc1'
 * tags) clips made with ffmpeg once per run, turned into hub frames or published live, in a
 * loop, with the project's RTMP client.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FlvDecoder, isAudioSequenceHeader, isVideoKeyframe, isVideoSequenceHeader } from '@meshcast/proto';
import { RtmpClient } from '../src/client/rtmp-client.ts';
import { FRAME_AUDIO, FRAME_VIDEO, MediaFrame } from '../src/media/frame.ts';

export interface Tag {
  type: 8 | 9;
  timestamp: number;
  payload: Buffer;
}

/** A clip: sequence headers, then the coded frames of `periodMs` of media (loopable). */
export interface Clip {
  headers: Tag[];
  frames: Tag[];
  periodMs: number;
}

const dir = mkdtempSync(join(tmpdir(), 'meshcast-hls-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function ffmpeg(args: string[]): void {
  execFileSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-y', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
}

const cache = new Map<string, Clip>();

/** H.264 + AAC, `fps` frames a second, a keyframe every `gop` frames, no B-frames. */
export function avcClip(o: { seconds?: number; fps?: number; gop?: number; size?: string } = {}): Clip {
  const seconds = o.seconds ?? 4;
  const fps = o.fps ?? 10;
  const gop = o.gop ?? fps;
  const size = o.size ?? '320x240';
  const key = `avc-${seconds}-${fps}-${gop}-${size}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const file = join(dir, `${key}.flv`);
  ffmpeg([
    '-f', 'lavfi', '-i', `testsrc=size=${size}:rate=${fps}`,
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100',
    '-t', String(seconds),
    '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-bf', '0', '-g', String(gop), '-keyint_min', String(gop), '-sc_threshold', '0',
    '-c:a', 'aac', '-ar', '44100', '-ac', '2', '-b:a', '32k',
    '-f', 'flv', file,
  ]);
  const tags = new FlvDecoder().push(readFileSync(file));
  if (!Array.isArray(tags)) throw tags;
  const periodMs = seconds * 1000;
  const headers: Tag[] = [];
  const frames: Tag[] = [];
  for (const t of tags) {
    if (t.type !== 8 && t.type !== 9) continue;
    const tag: Tag = { type: t.type, timestamp: t.timestamp, payload: t.payload };
    if (t.type === 9 ? isVideoSequenceHeader(t.payload) : isAudioSequenceHeader(t.payload)) headers.push(tag);
    else if (t.type === 9 && t.payload[1] !== 1) continue; // end of sequence
    else if (t.timestamp < periodMs) frames.push(tag);
  }
  const clip = { headers, frames, periodMs };
  cache.set(key, clip);
  return clip;
}

const exVideo = (frameType: number, packetType: number, ...rest: Buffer[]): Buffer => Buffer.concat([Buffer.from([0x80 | (frameType << 4) | packetType]), ...rest]);
const HVC1 = Buffer.from('hvc1');

/** HEVC (video only), as Enhanced RTMP 'hvc1' tags. */
export function hevcClip(o: { seconds?: number; fps?: number; gop?: number } = {}): Clip {
  const seconds = o.seconds ?? 4;
  const fps = o.fps ?? 10;
  const gop = o.gop ?? fps;
  const key = `hevc-${seconds}-${fps}-${gop}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const file = join(dir, `${key}.mp4`);
  ffmpeg([
    '-f', 'lavfi', '-i', `testsrc=size=320x240:rate=${fps}`, '-t', String(seconds),
    '-c:v', 'libx265', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-x265-params', `keyint=${gop}:min-keyint=${gop}:bframes=0:scenecut=0:log-level=error`,
    '-tag:v', 'hvc1', '-f', 'mp4', file,
  ]);
  const track = readMp4(readFileSync(file));
  const headers: Tag[] = [{ type: 9, timestamp: 0, payload: exVideo(1, 0, HVC1, track.hvcC) }];
  const frames: Tag[] = track.samples.map((s) => ({ type: 9 as const, timestamp: s.time, payload: exVideo(s.key ? 1 : 2, 3, HVC1, s.data) }));
  const clip = { headers, frames, periodMs: seconds * 1000 };
  cache.set(key, clip);
  return clip;
}

/** Just enough ISO-BMFF for one video track's samples (stsd/hvcC, stsz, stco, stsc, stts, stss). */
function readMp4(file: Buffer): { hvcC: Buffer; samples: Array<{ data: Buffer; time: number; key: boolean }> } {
  const boxes = new Map<string, Buffer>();
  const walk = (buf: Buffer): void => {
    let off = 0;
    while (off + 8 <= buf.length) {
      const size = buf.readUInt32BE(off);
      const type = buf.toString('latin1', off + 4, off + 8);
      if (size < 8 || off + size > buf.length) throw new Error(`bad mp4 box ${type}`);
      const body = buf.subarray(off + 8, off + size);
      boxes.set(type, body);
      if (['moov', 'trak', 'mdia', 'minf', 'stbl'].includes(type)) walk(body);
      off += size;
    }
  };
  walk(file);
  const need = (t: string): Buffer => {
    const b = boxes.get(t);
    if (!b) throw new Error(`no ${t} box`);
    return b;
  };
  const stsd = need('stsd');
  const at = stsd.indexOf('hvcC', 0, 'latin1');
  const hvcC = stsd.subarray(at + 4, at - 4 + stsd.readUInt32BE(at - 4));
  const timescale = need('mdhd').readUInt32BE(12);
  const stsz = need('stsz');
  const count = stsz.readUInt32BE(8);
  const fixed = stsz.readUInt32BE(4);
  const sizes = Array.from({ length: count }, (_, i) => (fixed === 0 ? stsz.readUInt32BE(12 + 4 * i) : fixed));
  const stco = need('stco');
  const chunks = Array.from({ length: stco.readUInt32BE(4) }, (_, i) => stco.readUInt32BE(8 + 4 * i));
  const stsc = need('stsc');
  const stscEntries = Array.from({ length: stsc.readUInt32BE(4) }, (_, i) => ({ first: stsc.readUInt32BE(8 + 12 * i), per: stsc.readUInt32BE(12 + 12 * i) }));
  const stts = need('stts');
  const deltas: number[] = [];
  for (let i = 0; i < stts.readUInt32BE(4); i++) for (let k = 0; k < stts.readUInt32BE(8 + 8 * i); k++) deltas.push(stts.readUInt32BE(12 + 8 * i));
  const stss = boxes.get('stss');
  const keys = stss ? new Set(Array.from({ length: stss.readUInt32BE(4) }, (_, i) => stss.readUInt32BE(8 + 4 * i) - 1)) : undefined;
  const samples: Array<{ data: Buffer; time: number; key: boolean }> = [];
  let sample = 0;
  let time = 0;
  for (let c = 0; c < chunks.length; c++) {
    const entry = [...stscEntries].reverse().find((e) => e.first <= c + 1)!;
    let off = chunks[c]!;
    for (let k = 0; k < entry.per && sample < count; k++, sample++) {
      const size = sizes[sample]!;
      samples.push({ data: file.subarray(off, off + size), time: Math.round((time * 1000) / timescale), key: keys ? keys.has(sample) : true });
      off += size;
      time += deltas[sample] ?? 0;
    }
  }
  return { hvcC, samples };
}

export function toFrame(t: Tag, timestamp = t.timestamp): MediaFrame {
  if (t.type === FRAME_VIDEO) {
    const seq = isVideoSequenceHeader(t.payload);
    return new MediaFrame(FRAME_VIDEO, timestamp, t.payload, !seq && isVideoKeyframe(t.payload), seq);
  }
  return new MediaFrame(FRAME_AUDIO, timestamp, t.payload, false, isAudioSequenceHeader(t.payload));
}

/** The clip as hub frames: headers at `startTs`, then `loops` passes of its frames. */
export function clipFrames(clip: Clip, loops: number, startTs = 0): MediaFrame[] {
  const out = clip.headers.map((h) => toFrame(h, startTs));
  for (let i = 0; i < loops; i++) for (const f of clip.frames) out.push(toFrame(f, startTs + i * clip.periodMs + f.timestamp));
  return out;
}

/** Publishes the clip in a loop at its real pace (a live source), with the project's RTMP client. */
export async function publishClip(url: string, clip: Clip): Promise<{ client: RtmpClient; stop: () => void }> {
  const client = await RtmpClient.openPublisher(url);
  for (const h of clip.headers) client.sendMedia(h.type, 0, h.payload);
  const t0 = Date.now();
  let i = 0;
  const timer = setInterval(() => {
    const now = Date.now() - t0;
    for (;;) {
      const loop = Math.floor(i / clip.frames.length);
      const f = clip.frames[i % clip.frames.length]!;
      const ts = loop * clip.periodMs + f.timestamp;
      if (ts > now) break;
      client.sendMedia(f.type, ts, f.payload);
      i++;
    }
  }, 10);
  client.once('close', () => clearInterval(timer));
  return {
    client,
    stop: () => {
      clearInterval(timer);
      client.close();
    },
  };
}

/** A TS segment's first video access unit: is it a keyframe (random_access_indicator on the first video PES)? */
export function firstVideoPesIsRandomAccess(ts: Buffer): boolean | undefined {
  for (let at = 0; at + 188 <= ts.length; at += 188) {
    const pid = ((ts[at + 1]! & 0x1f) << 8) | ts[at + 2]!;
    const pusi = (ts[at + 1]! & 0x40) !== 0;
    if (pid !== 0x100 || !pusi) continue;
    const afc = (ts[at + 3]! >>> 4) & 3;
    if (!(afc & 2) || ts[at + 4] === 0) return false;
    return (ts[at + 5]! & 0x40) !== 0;
  }
  return undefined;
}
