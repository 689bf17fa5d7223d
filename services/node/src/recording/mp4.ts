/**
 * Stitches recorded FLV segments into one progressive MP4 (moov first, so a `<video>` tag
 * starts playing before it has the whole file), muxed by mediabunny from the encoded
 * packets: nothing is decoded or re-encoded.
 *
 * - The MP4 starts at the last video keyframe at or before `fromMs` and ends before `toMs`.
 * - Its timeline is wall-clock time since that keyframe: a hole between segments (an owner
 *   failover) stays a hole of the same length, shown as the last picture held.
 * - Segments that overlap (two nodes recorded the same seconds around a failover) are joined at
 *   the first keyframe after what was already taken, so timestamps only grow.
 * - H.264 and AAC are carried (what RTMP encoders send). A segment whose H.264 parameter sets
 *   differ from the first one's gets them in band, ahead of its first keyframe.
 */
import { BufferTarget, EncodedAudioPacketSource, EncodedPacket, EncodedVideoPacketSource, Mp4OutputFormat, Output } from 'mediabunny';
import { classifyAudioTag, classifyVideoTag, parseAacAudioSpecificConfig, parseAvcDecoderConfig, type FlvTag } from '@meshcast/proto';

export interface SegmentTags {
  /** Wall-clock time of the segment's timestamp 0. */
  startMs: number;
  tags: FlvTag[];
}

interface VideoSample {
  dts: number;
  pts: number;
  key: boolean;
  data: Buffer;
  avcc: Buffer;
}

interface AudioSample {
  ts: number;
  data: Buffer;
  asc: Buffer;
}

export class NothingToStitchError extends Error {
  readonly code = 'NOTHING_RECORDED';
}

function avcCodecString(avcc: Buffer): { codec: string; width: number; height: number; nalLengthSize: number; sps: Buffer[]; pps: Buffer[] } {
  const c = parseAvcDecoderConfig(avcc);
  if (c instanceof Error) throw c;
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  return { codec: `avc1.${hex(c.profile)}${hex(c.compat)}${hex(c.level)}`, width: c.width, height: c.height, nalLengthSize: c.nalLengthSize, sps: c.sps, pps: c.pps };
}

function inBandParameterSets(avcc: Buffer, data: Buffer): Buffer {
  const c = avcCodecString(avcc);
  const parts: Buffer[] = [];
  for (const nal of [...c.sps, ...c.pps]) {
    const len = Buffer.alloc(c.nalLengthSize);
    len.writeUIntBE(nal.length, 0, c.nalLengthSize);
    parts.push(len, nal);
  }
  parts.push(data);
  return Buffer.concat(parts);
}

/** Samples of the segments in [fromMs, toMs), on the wall-clock timeline. */
function collect(segments: readonly SegmentTags[], fromMs: number, toMs: number): { video: VideoSample[]; audio: AudioSample[] } {
  let video: VideoSample[] = [];
  let audio: AudioSample[] = [];
  for (const seg of [...segments].sort((a, b) => a.startMs - b.startMs)) {
    let avcc: Buffer | undefined;
    let asc: Buffer | undefined;
    const lastV = video.length > 0 ? video[video.length - 1]!.dts : -Infinity;
    const lastA = audio.length > 0 ? audio[audio.length - 1]!.ts : -Infinity;
    let waitKey = true;
    for (const t of seg.tags) {
      const at = seg.startMs + t.timestamp;
      if (t.type === 9) {
        const info = classifyVideoTag(t.payload);
        if (info instanceof Error || info.codec !== 'avc') continue;
        const data = t.payload.subarray(info.dataOffset, info.dataOffset + info.dataLength);
        if (info.isSequenceHeader) {
          avcc = Buffer.from(data);
          continue;
        }
        if (info.packetType !== 1 || !avcc || data.length === 0) continue;
        if (waitKey && (!info.isKeyframe || at <= lastV)) continue;
        waitKey = false;
        if (at >= toMs) continue;
        // Segments from two nodes' clocks can touch: timestamps keep growing by at least 1 ms.
        const dts = video.length > 0 ? Math.max(at, video[video.length - 1]!.dts + 1) : at;
        video.push({ dts, pts: dts + info.compositionTime, key: info.isKeyframe, data, avcc });
      } else if (t.type === 8) {
        const info = classifyAudioTag(t.payload);
        if (info instanceof Error || info.codec !== 'aac') continue;
        const data = t.payload.subarray(info.dataOffset, info.dataOffset + info.dataLength);
        if (info.isSequenceHeader) {
          asc = Buffer.from(data);
          continue;
        }
        if (!asc || data.length === 0 || at <= lastA || at >= toMs) continue;
        audio.push({ ts: audio.length > 0 ? Math.max(at, audio[audio.length - 1]!.ts + 1) : at, data, asc });
      }
    }
  }
  // Start at the last keyframe at or before fromMs (or the first after it).
  let first = -1;
  for (let i = 0; i < video.length; i++) {
    if (!video[i]!.key) continue;
    if (video[i]!.dts <= fromMs || first < 0) first = i;
    if (video[i]!.dts > fromMs) break;
  }
  if (video.length > 0) {
    video = first < 0 ? [] : video.slice(first);
    const origin = video[0]?.dts ?? fromMs;
    audio = audio.filter((a) => a.ts >= origin);
  } else {
    audio = audio.filter((a) => a.ts >= fromMs);
  }
  return { video, audio };
}

export interface StitchedMp4 {
  data: Buffer;
  /** Wall-clock time of the MP4's time 0. */
  startMs: number;
  durationMs: number;
}

export async function stitchMp4(segments: readonly SegmentTags[], fromMs: number, toMs: number): Promise<StitchedMp4> {
  const { video, audio } = collect(segments, fromMs, toMs);
  if (video.length === 0 && audio.length === 0) throw new NothingToStitchError('no recorded media in that time span');
  const origin = video.length > 0 ? video[0]!.dts : audio[0]!.ts;
  const output = new Output({ format: new Mp4OutputFormat({ fastStart: 'in-memory' }), target: new BufferTarget() });
  const vsrc = video.length > 0 ? new EncodedVideoPacketSource('avc') : undefined;
  const asrc = audio.length > 0 ? new EncodedAudioPacketSource('aac') : undefined;
  if (vsrc) output.addVideoTrack(vsrc);
  if (asrc) output.addAudioTrack(asrc);
  await output.start();

  const firstAvcc = video[0]?.avcc;
  const vcfg = firstAvcc ? avcCodecString(firstAvcc) : undefined;
  let lastFrameMs = 33;
  const videoPackets = video.map((s, i) => {
    const next = video[i + 1];
    if (next) lastFrameMs = Math.max(1, next.dts - s.dts);
    const data = s.key && firstAvcc && !s.avcc.equals(firstAvcc) ? inBandParameterSets(s.avcc, s.data) : s.data;
    return { at: s.dts, packet: new EncodedPacket(data, s.key ? 'key' : 'delta', (s.pts - origin) / 1000, lastFrameMs / 1000) };
  });
  const acfg = audio[0] ? parseAacAudioSpecificConfig(audio[0].asc) : undefined;
  if (acfg instanceof Error) throw acfg;
  const aacRate = acfg?.extensionSampleRate ?? acfg?.sampleRate ?? 44100;
  const audioPackets = audio.map((s) => ({ at: s.ts, packet: new EncodedPacket(s.data, 'key', (s.ts - origin) / 1000, 1024 / aacRate) }));

  let vi = 0;
  let ai = 0;
  while (vi < videoPackets.length || ai < audioPackets.length) {
    const v = videoPackets[vi];
    const a = audioPackets[ai];
    if (v && (!a || v.at <= a.at)) {
      const meta = vi === 0 && vcfg ? { decoderConfig: { codec: vcfg.codec, codedWidth: vcfg.width, codedHeight: vcfg.height, description: firstAvcc } } : undefined;
      await vsrc!.add(v.packet, meta as never);
      vi++;
    } else if (a) {
      const meta = ai === 0 && acfg ? { decoderConfig: { codec: `mp4a.40.${acfg.objectType}`, sampleRate: acfg.sampleRate, numberOfChannels: acfg.channels, description: audio[0]!.asc } } : undefined;
      await asrc!.add(a.packet, meta as never);
      ai++;
    }
  }
  await output.finalize();
  const buf = output.target.buffer;
  if (!buf) throw new Error('the MP4 muxer produced no output');
  const lastV = video[video.length - 1];
  const lastA = audio[audio.length - 1];
  const end = Math.max(lastV ? lastV.dts + lastFrameMs : 0, lastA ? lastA.ts + (1024 * 1000) / aacRate : 0);
  return { data: Buffer.from(buf), startMs: origin, durationMs: Math.round(end - origin) };
}
