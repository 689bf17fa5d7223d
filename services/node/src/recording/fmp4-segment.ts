/**
 * Recording segments as fragmented MP4 (`record.format: fmp4`): one self-contained file per
 * segment (ftyp + moov, then a moof + mdat per fragment), muxed by mediabunny from the encoded
 * packets (nothing decoded or re-encoded, no boxes written by hand), so ffprobe/ffmpeg or a
 * browser opens any segment alone, and a node killed mid-segment leaves every whole fragment
 * it wrote playable.
 *
 * The segmenter (segmenter.ts) is the same for both formats: it cuts on keyframes and emits
 * each segment as FLV bytes (header, metadata, sequence headers, then frames from a keyframe,
 * timestamps from 0). Fmp4SegmentWriter sits between it and the store: it reads those bytes
 * back as tags and feeds them to the muxer, whose output is what the store appends. So cuts,
 * wall-clock starts (the segment's key), the bounded queue and retention are those of FLV.
 *
 * H.264 and AAC are carried (what the MP4 stitcher carries too); other codecs' frames are left
 * out, and a segment with neither fails like a store failure (logged, tried again later).
 * Composition time offsets (B-frames) are kept: each packet's presentation time is the tag's
 * timestamp plus its composition time.
 *
 * readFmp4Tags is the way back: a segment's samples as FLV tags, so the MP4 stitcher joins FLV
 * and fMP4 segments (a format changed between runs) alike.
 */
import { ALL_FORMATS, AppendOnlyStreamTarget, BufferSource, EncodedAudioPacketSource, EncodedPacket, EncodedPacketSink, EncodedVideoPacketSource, Input, Mp4OutputFormat, Output } from 'mediabunny';
import { classifyAudioTag, classifyVideoTag, FlvDecoder, parseAacAudioSpecificConfig, parseAvcDecoderConfig, type FlvTag } from '@meshcast/proto';
import { RecordingStoreError, type SegmentWriter } from './store.ts';

/** Shortest fragment (s): a fragment ends at the first keyframe after it, so with usual GOPs, one per GOP. */
const FRAGMENT_S = 1;

interface PendingVideo {
  dts: number;
  pts: number;
  key: boolean;
  data: Buffer;
}

function avcConfig(avcc: Buffer): { codec: string; width: number; height: number; nalLengthSize: number; sps: Buffer[]; pps: Buffer[] } {
  const c = parseAvcDecoderConfig(avcc);
  if (c instanceof Error) throw new RecordingStoreError(`fmp4 segment: bad H.264 configuration: ${c.message}`);
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  return { codec: `avc1.${hex(c.profile)}${hex(c.compat)}${hex(c.level)}`, width: c.width, height: c.height, nalLengthSize: c.nalLengthSize, sps: c.sps, pps: c.pps };
}

/** Parameter sets of a configuration that differs from the track's, in band ahead of a keyframe. */
function withParameterSets(avcc: Buffer, data: Buffer): Buffer {
  const c = avcConfig(avcc);
  const parts: Buffer[] = [];
  for (const nal of [...c.sps, ...c.pps]) {
    const len = Buffer.alloc(c.nalLengthSize);
    len.writeUIntBE(nal.length, 0, c.nalLengthSize);
    parts.push(len, nal);
  }
  parts.push(data);
  return Buffer.concat(parts);
}

/**
 * A SegmentWriter that takes the segmenter's FLV bytes and appends fragmented MP4 to `inner`.
 * Bytes written to the store are counted in `bytesOut`.
 */
export class Fmp4SegmentWriter implements SegmentWriter {
  private readonly flv = new FlvDecoder();
  private output: Output | undefined;
  private vsrc: EncodedVideoPacketSource | undefined;
  private asrc: EncodedAudioPacketSource | undefined;
  /** The H.264 configuration the track was declared with, and the latest one seen. */
  private trackAvcc: Buffer | undefined;
  private avcc: Buffer | undefined;
  private asc: Buffer | undefined;
  private aacRate = 44100;
  private firstVideo = true;
  private firstAudio = true;
  /** One video frame held back: its duration is the time to the next. */
  private held: PendingVideo | undefined;
  private frameMs = 33;
  private lastAudioTs = -Infinity;
  /** Muxer output not yet handed to the store (written by the muxer's stream, drained after each call). */
  private out: Buffer[] = [];
  bytesOut = 0;

  /**
   * `startMs`: the segment's wall-clock start, carried in its key and in the file's metadata too:
   * the `©day` tag as an ISO time to the ms (ffprobe's `date`; the plain `date` tag keeps only the day).
   */
  constructor(
    private readonly inner: SegmentWriter,
    private readonly startMs?: number,
  ) {}

  async append(data: Buffer, durationMs: number): Promise<void> {
    const tags = this.flv.push(data);
    if (!Array.isArray(tags)) throw new RecordingStoreError(`fmp4 segment: unreadable frames: ${tags.message}`);
    if (!this.output) this.configure(tags);
    if (!this.output) return; // no sequence header yet: nothing the muxer can take
    if (!this.started) {
      await this.output.start();
      this.started = true;
    }
    for (const t of tags) await this.tag(t);
    await this.flushOut(durationMs);
  }

  private started = false;

  /** Declares the tracks from the segment's head (its sequence headers). */
  private configure(tags: readonly FlvTag[]): void {
    for (const t of tags) {
      if (t.type === 9) {
        const i = classifyVideoTag(t.payload);
        if (!(i instanceof Error) && i.codec === 'avc' && i.isSequenceHeader) this.avcc ??= Buffer.from(t.payload.subarray(i.dataOffset, i.dataOffset + i.dataLength));
      } else if (t.type === 8) {
        const i = classifyAudioTag(t.payload);
        if (!(i instanceof Error) && i.codec === 'aac' && i.isSequenceHeader) this.asc ??= Buffer.from(t.payload.subarray(i.dataOffset, i.dataOffset + i.dataLength));
      }
    }
    if (!this.avcc && !this.asc) {
      if (tags.some((t) => t.type === 8 || t.type === 9)) throw new RecordingStoreError('fmp4 recording carries H.264 video and AAC audio only; this stream has neither (record it as flv)');
      return;
    }
    const writable = new WritableStream<Uint8Array>({
      write: (chunk) => {
        this.out.push(Buffer.from(chunk));
      },
    });
    this.output = new Output({ format: new Mp4OutputFormat({ fastStart: 'fragmented', minimumFragmentDuration: FRAGMENT_S }), target: new AppendOnlyStreamTarget(writable) });
    if (this.startMs !== undefined) this.output.setMetadataTags({ raw: { '©day': new Date(this.startMs).toISOString() } });
    if (this.avcc) {
      this.vsrc = new EncodedVideoPacketSource('avc');
      this.output.addVideoTrack(this.vsrc);
      this.trackAvcc = this.avcc;
    }
    if (this.asc) {
      const a = parseAacAudioSpecificConfig(this.asc);
      if (a instanceof Error) throw new RecordingStoreError(`fmp4 segment: bad AAC configuration: ${a.message}`);
      this.aacRate = a.extensionSampleRate ?? a.sampleRate;
      this.asrc = new EncodedAudioPacketSource('aac');
      this.output.addAudioTrack(this.asrc);
    }
  }

  private async tag(t: FlvTag): Promise<void> {
    if (t.type === 9 && this.vsrc) {
      const i = classifyVideoTag(t.payload);
      if (i instanceof Error || i.codec !== 'avc') return;
      const data = t.payload.subarray(i.dataOffset, i.dataOffset + i.dataLength);
      if (i.isSequenceHeader) {
        this.avcc = Buffer.from(data);
        return;
      }
      if (i.packetType !== 1 || data.length === 0) return;
      if (!this.held && this.firstVideo && !i.isKeyframe) return; // a track starts at a keyframe
      const body = i.isKeyframe && this.avcc && this.trackAvcc && !this.avcc.equals(this.trackAvcc) ? withParameterSets(this.avcc, data) : Buffer.from(data);
      const next: PendingVideo = { dts: t.timestamp, pts: t.timestamp + i.compositionTime, key: i.isKeyframe, data: body };
      if (this.held) {
        this.frameMs = Math.max(1, next.dts - this.held.dts);
        await this.addVideo(this.held);
      }
      this.held = next;
    } else if (t.type === 8 && this.asrc) {
      const i = classifyAudioTag(t.payload);
      if (i instanceof Error || i.codec !== 'aac' || i.isSequenceHeader) return;
      const data = t.payload.subarray(i.dataOffset, i.dataOffset + i.dataLength);
      if (data.length === 0 || t.timestamp <= this.lastAudioTs) return;
      this.lastAudioTs = t.timestamp;
      const meta = this.firstAudio ? this.audioMeta() : undefined;
      this.firstAudio = false;
      await this.asrc.add(new EncodedPacket(Buffer.from(data), 'key', t.timestamp / 1000, 1024 / this.aacRate), meta as never);
    }
  }

  private audioMeta(): unknown {
    const a = parseAacAudioSpecificConfig(this.asc!);
    if (a instanceof Error) return undefined;
    return { decoderConfig: { codec: `mp4a.40.${a.objectType}`, sampleRate: a.sampleRate, numberOfChannels: a.channels, description: this.asc } };
  }

  private async addVideo(v: PendingVideo): Promise<void> {
    let meta: unknown;
    if (this.firstVideo) {
      const c = avcConfig(this.trackAvcc!);
      meta = { decoderConfig: { codec: c.codec, codedWidth: c.width, codedHeight: c.height, description: this.trackAvcc } };
      this.firstVideo = false;
    }
    await this.vsrc!.add(new EncodedPacket(v.data, v.key ? 'key' : 'delta', v.pts / 1000, this.frameMs / 1000), meta as never);
  }

  /**
   * Hands the whole boxes the muxer wrote so far to the store; a box still being written waits
   * for the next call. So what the store holds always ends at a box boundary: an object-store
   * part, or the file of a node killed mid-segment, is a playable fMP4 up to its last fragment.
   */
  private async flushOut(durationMs: number): Promise<void> {
    if (this.out.length === 0) return;
    const data = this.out.length === 1 ? this.out[0]! : Buffer.concat(this.out);
    const whole = wholeBoxes(data);
    this.out = whole < data.length ? [data.subarray(whole)] : [];
    if (whole === 0) return;
    await this.inner.append(data.subarray(0, whole), durationMs);
    this.bytesOut += whole;
  }

  async close(durationMs: number): Promise<void> {
    try {
      if (this.output && this.started) {
        if (this.held) await this.addVideo(this.held);
        this.held = undefined;
        // An audio or video track that never got a packet cannot be finalised: such a segment has no media.
        if ((this.vsrc && this.firstVideo) || (this.asrc && this.firstAudio)) await this.output.cancel();
        else await this.output.finalize();
        // The stream's writes are handed over once the muxer's promise settles.
        await new Promise<void>((r) => setImmediate(r));
        await this.flushOut(durationMs);
      }
    } finally {
      await this.inner.close(durationMs);
    }
  }
}

/** Bytes of `data` that are whole top-level ISO BMFF boxes (32-bit sizes; 64-bit `largesize` too). */
export function wholeBoxes(data: Buffer): number {
  let at = 0;
  while (at + 8 <= data.length) {
    let size = data.readUInt32BE(at);
    if (size === 1) {
      if (at + 16 > data.length) break;
      size = Number(data.readBigUInt64BE(at + 8));
    }
    if (size < 8 || at + size > data.length) break;
    at += size;
  }
  return at;
}

/**
 * A fragmented MP4 segment's samples as FLV tags (sequence headers first, then frames in
 * decode order, timestamps in ms from the file's 0): what the MP4 stitcher reads.
 * mediabunny gives presentation times in decode order; decode times are rebuilt as the sorted
 * presentation times, shifted so that none comes after its presentation time.
 */
export async function readFmp4Tags(data: Buffer): Promise<FlvTag[]> {
  // A file cut short (its writer killed mid-box) is read up to its last whole box.
  const input = new Input({ source: new BufferSource(data.subarray(0, wholeBoxes(data))), formats: ALL_FORMATS });
  try {
    const tags: FlvTag[] = [];
    const tag = (type: number, timestamp: number, payload: Buffer): FlvTag => ({ type, timestamp, streamId: 0, payload }) as FlvTag;
    const v = await input.getPrimaryVideoTrack();
    const media: FlvTag[] = [];
    if (v && v.codec === 'avc') {
      const cfg = await v.getDecoderConfig();
      const avcc = cfg?.description ? Buffer.from(cfg.description as ArrayBuffer) : undefined;
      if (avcc) {
        tags.push(tag(9, 0, Buffer.concat([Buffer.from([0x17, 0, 0, 0, 0]), avcc])));
        const packets: EncodedPacket[] = [];
        for await (const p of new EncodedPacketSink(v).packets()) packets.push(p);
        const pts = packets.map((p) => Math.round(p.timestamp * 1000));
        const sorted = [...pts].sort((a, b) => a - b);
        let shift = 0;
        for (let k = 0; k < pts.length; k++) shift = Math.max(shift, sorted[k]! - pts[k]!);
        packets.forEach((p, k) => {
          const dts = Math.max(0, sorted[k]! - shift);
          const cts = pts[k]! - dts;
          const head = Buffer.from([p.type === 'key' ? 0x17 : 0x27, 1, (cts >> 16) & 0xff, (cts >> 8) & 0xff, cts & 0xff]);
          media.push(tag(9, dts, Buffer.concat([head, Buffer.from(p.data)])));
        });
      }
    }
    const a = await input.getPrimaryAudioTrack();
    if (a && a.codec === 'aac') {
      const cfg = await a.getDecoderConfig();
      const asc = cfg?.description ? Buffer.from(cfg.description as ArrayBuffer) : undefined;
      if (asc) {
        tags.push(tag(8, 0, Buffer.concat([Buffer.from([0xaf, 0]), asc])));
        for await (const p of new EncodedPacketSink(a).packets()) media.push(tag(8, Math.max(0, Math.round(p.timestamp * 1000)), Buffer.concat([Buffer.from([0xaf, 1]), Buffer.from(p.data)])));
      }
    }
    // Stable: each track stays in decode order.
    media.sort((x, y) => x.timestamp - y.timestamp);
    return [...tags, ...media];
  } finally {
    input.dispose();
  }
}
