/**
 * VodMedia: one opened VOD file (MP4 or FLV) seen as an RTMP stream would be: a duration, an
 * onMetaData object, the FLV sequence headers, a keyframe index, and frames (FLV tag payloads
 * on one millisecond timeline) read from the keyframe at or before a given time.
 *
 * Nothing loads the whole file: MP4 samples are read through mediabunny's demuxer (its sample
 * tables, then each packet's bytes when it is asked for), FLV files are scanned once for the
 * index and then read as a stream from the keyframe's byte offset with the project's FLV reader.
 *
 * Timeline (MP4): an MP4 sample has a presentation time; FLV and RTMP carry a decode time plus a
 * composition offset. The decode time of the n-th sample in decode order is the n-th smallest
 * presentation time (B-frames are reordered by at most REORDER_WINDOW samples), moved back by
 * the stream's reorder delay (`shift`, measured once at open). So that no timestamp is negative,
 * the whole file is moved forward by that same delay, as ffmpeg does when it writes B-frames to
 * FLV: a tag's timestamp is its decode time + shift, audio and pictures are shown at their
 * presentation time + shift, and the two stay in sync.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { ALL_FORMATS, EncodedPacketSink, FilePathSource, Input, type EncodedPacket, type InputAudioTrack, type InputVideoTrack } from 'mediabunny';
import {
  FlvDecoder,
  FlvError,
  FLV_HEADER_SIZE,
  FLV_TAG_HEADER_SIZE,
  asAmfObject,
  decodeAmf0,
  isAudioSequenceHeader,
  isVideoKeyframe,
  isVideoSequenceHeader,
  parseAacAudioSpecificConfig,
  parseAvcDecoderConfig,
  CodecConfigError,
  type AmfObject,
  type AmfValue,
} from '@meshcast/proto';
import { FRAME_AUDIO, FRAME_VIDEO, MediaFrame } from '../media/frame.ts';
import type { VodFile } from './vod-library.ts';

/** A keyframe of the file: its tag timestamp (ms) and where reading starts for it (byte offset in FLV, decode index in MP4). */
export interface VodKeyframe {
  timestamp: number;
  position: number;
}

export interface VodMedia {
  readonly file: VodFile;
  /** Length of the media (ms): the end of its last sample. */
  readonly durationMs: number;
  /** The onMetaData object to send a player (duration in seconds, width, height, codec ids, …). */
  readonly metadata: AmfObject;
  /** FLV video tag payload of the AVC sequence header (AVCDecoderConfigurationRecord), if the file has video. */
  readonly videoHeader: Buffer | undefined;
  /** FLV audio tag payload of the AAC sequence header (AudioSpecificConfig), if the file has AAC audio. */
  readonly audioHeader: Buffer | undefined;
  /** Video keyframes in time order (empty for an audio-only file). */
  readonly keyframes: readonly VodKeyframe[];
  /**
   * Audio and video frames (no sequence headers, no script data) in timestamp order, starting at
   * the keyframe at or before `fromMs` (the first one when there is none before). Frames are read
   * as they are asked for; `return()` on the iterator releases what it holds.
   */
  frames(fromMs: number): AsyncGenerator<MediaFrame, void, undefined>;
  close(): void;
}

/** Why a file could not be opened as VOD media: not a format or codec this node plays, or unreadable. */
export class VodMediaError extends Error {
  constructor(
    readonly reason: 'unsupported' | 'malformed' | 'io',
    message: string,
  ) {
    super(message);
    this.name = 'VodMediaError';
  }
}

/** The last keyframe at or before `ms`, else the first one (binary search). */
export function keyframeAtOrBefore(keyframes: readonly VodKeyframe[], ms: number): VodKeyframe | undefined {
  let lo = 0;
  let hi = keyframes.length - 1;
  let found: VodKeyframe | undefined = keyframes[0];
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const k = keyframes[mid]!;
    if (k.timestamp <= ms) {
      found = k;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

export async function openVodMedia(file: VodFile): Promise<VodMedia> {
  return file.format === 'flv' ? openFlv(file) : openMp4(file);
}

// ---------------------------------------------------------------------------------------------
// MP4 (mediabunny)

/** Samples a B-frame may be moved by, at most, between decode and presentation order (x264 uses ≤ 4). */
const REORDER_WINDOW = 16;
/** Samples looked at to measure the reorder delay. */
const SHIFT_PROBE_SAMPLES = 300;
/** FLV: AAC, 44 kHz, 16-bit, stereo — the flags FLV requires for AAC whatever the real format. */
const FLV_AAC = 0xaf;
const FLV_AVC_KEY = 0x17;
const FLV_AVC_INTER = 0x27;

const ms = (seconds: number): number => Math.round(seconds * 1000);

function insertSorted(a: number[], v: number): void {
  let i = a.length;
  while (i > 0 && a[i - 1]! > v) i--;
  a.splice(i, 0, v);
}

/** Packets in decode order, each with its decode time: the smallest presentation time not yet taken among the packets up to REORDER_WINDOW ahead. */
async function* withDecodeTimes(packets: AsyncGenerator<EncodedPacket, void, unknown>): AsyncGenerator<{ packet: EncodedPacket; pts: number; dts: number }, void, undefined> {
  const ahead: EncodedPacket[] = [];
  const times: number[] = [];
  let done = false;
  try {
    for (;;) {
      while (!done && ahead.length < REORDER_WINDOW) {
        const r = await packets.next();
        if (r.done) done = true;
        else {
          ahead.push(r.value);
          insertSorted(times, ms(r.value.timestamp));
        }
      }
      const packet = ahead.shift();
      if (!packet) return;
      yield { packet, pts: ms(packet.timestamp), dts: times.shift()! };
    }
  } finally {
    await packets.return(undefined);
  }
}

function bytes(p: EncodedPacket): Buffer {
  return Buffer.from(p.data.buffer, p.data.byteOffset, p.data.byteLength);
}

/** Bytes of an MP4 file mediabunny keeps read (shared by every reader of the opened file). */
const MP4_READ_CACHE_BYTES = 4 * 1024 * 1024;

async function openMp4(file: VodFile): Promise<VodMedia> {
  const input = new Input({ source: new FilePathSource(file.path, { maxCacheSize: MP4_READ_CACHE_BYTES }), formats: ALL_FORMATS });
  try {
    return await Mp4Media.open(file, input);
  } catch (err) {
    input.dispose();
    if (err instanceof VodMediaError) throw err;
    throw new VodMediaError('malformed', `${file.app}/${file.name}: not a playable MP4 (${(err as Error).message})`);
  }
}

class Mp4Media implements VodMedia {
  private constructor(
    readonly file: VodFile,
    private readonly input: Input,
    private readonly video: { track: InputVideoTrack; sink: EncodedPacketSink } | undefined,
    private readonly audio: { track: InputAudioTrack; sink: EncodedPacketSink } | undefined,
    readonly durationMs: number,
    readonly metadata: AmfObject,
    readonly videoHeader: Buffer | undefined,
    readonly audioHeader: Buffer | undefined,
    readonly keyframes: readonly VodKeyframe[],
    /** The reorder delay (ms) added to every timestamp (see the file comment). */
    private readonly shift: number,
  ) {}

  static async open(file: VodFile, input: Input): Promise<Mp4Media> {
    const vt = await input.getPrimaryVideoTrack();
    const at = await input.getPrimaryAudioTrack();
    const name = `${file.app}/${file.name}`;
    if (vt && vt.codec !== 'avc') throw new VodMediaError('unsupported', `${name}: video codec ${vt.codec ?? 'unknown'} is not played by this node (H.264 only)`);
    if (at && at.codec !== 'aac') throw new VodMediaError('unsupported', `${name}: audio codec ${at.codec ?? 'unknown'} is not played by this node (AAC only)`);
    if (!vt && !at) throw new VodMediaError('unsupported', `${name}: no audio or video track`);
    const meta: AmfObject = {};
    let videoHeader: Buffer | undefined;
    let audioHeader: Buffer | undefined;
    let video: { track: InputVideoTrack; sink: EncodedPacketSink } | undefined;
    let audio: { track: InputAudioTrack; sink: EncodedPacketSink } | undefined;
    const keyframes: VodKeyframe[] = [];
    let shift = 0;
    if (vt) {
      const cfg = await vt.getDecoderConfig();
      const avcc = cfg?.description ? Buffer.from(cfg.description instanceof ArrayBuffer ? new Uint8Array(cfg.description) : new Uint8Array(cfg.description.buffer, cfg.description.byteOffset, cfg.description.byteLength)) : undefined;
      if (!avcc) throw new VodMediaError('malformed', `${name}: H.264 track without a decoder configuration (avcC)`);
      const avc = parseAvcDecoderConfig(avcc);
      if (avc instanceof CodecConfigError) throw new VodMediaError('malformed', `${name}: ${avc.message}`);
      videoHeader = Buffer.concat([Buffer.from([FLV_AVC_KEY, 0, 0, 0, 0]), avcc]);
      const sink = new EncodedPacketSink(vt);
      video = { track: vt, sink };
      meta.width = vt.displayWidth;
      meta.height = vt.displayHeight;
      meta.videocodecid = 7;
      const stats = await vt.computePacketStats(100);
      if (stats.averagePacketRate > 0) meta.framerate = Math.round(stats.averagePacketRate * 1000) / 1000;
      for (let k = await sink.getFirstKeyPacket({ metadataOnly: true }); k; k = await sink.getNextKeyPacket(k, { metadataOnly: true })) {
        keyframes.push({ timestamp: ms(k.timestamp), position: k.sequenceNumber });
      }
      let probed = 0;
      for await (const s of withDecodeTimes(sink.packets(undefined, undefined, { metadataOnly: true }))) {
        shift = Math.max(shift, s.dts - s.pts);
        if (++probed >= SHIFT_PROBE_SAMPLES) break;
      }
    }
    if (at) {
      const cfg = await at.getDecoderConfig();
      const d = cfg?.description;
      const asc = d ? Buffer.from(d instanceof ArrayBuffer ? new Uint8Array(d) : new Uint8Array(d.buffer, d.byteOffset, d.byteLength)) : undefined;
      if (!asc) throw new VodMediaError('malformed', `${name}: AAC track without an AudioSpecificConfig`);
      const aac = parseAacAudioSpecificConfig(asc);
      if (aac instanceof CodecConfigError) throw new VodMediaError('malformed', `${name}: ${aac.message}`);
      audioHeader = Buffer.concat([Buffer.from([FLV_AAC, 0]), asc]);
      audio = { track: at, sink: new EncodedPacketSink(at) };
      meta.audiocodecid = 10;
      meta.audiosamplerate = at.sampleRate;
      meta.audiochannels = at.numberOfChannels;
      meta.stereo = at.numberOfChannels > 1;
    }
    // mediabunny ends a track quietly where a file is cut short (a copy still being written, a partial download): refuse it here instead.
    for (const t of [video, audio]) {
      if (t && (await t.sink.getPacket(Infinity, { metadataOnly: true })) && !(await t.sink.getPacket(Infinity))) {
        throw new VodMediaError('malformed', `${name}: the file is cut short (its last ${t === video ? 'video' : 'audio'} samples are missing)`);
      }
    }
    const durationMs = ms(await input.computeDuration());
    const metadata: AmfObject = { duration: durationMs / 1000, ...meta, filesize: file.size };
    return new Mp4Media(file, input, video, audio, durationMs, metadata, videoHeader, audioHeader, keyframes, shift);
  }

  async *frames(fromMs: number): AsyncGenerator<MediaFrame, void, undefined> {
    const from = Math.max(0, fromMs) / 1000;
    let startS = from;
    const streams: AsyncGenerator<MediaFrame, void, undefined>[] = [];
    if (this.video) {
      const sink = this.video.sink;
      const key = (await sink.getKeyPacket(from)) ?? (await sink.getFirstKeyPacket());
      if (key) {
        startS = key.timestamp;
        streams.push(this.videoFrames(sink.packets(key)));
      }
    }
    if (this.audio) {
      const sink = this.audio.sink;
      const first = (await sink.getPacket(startS)) ?? (await sink.getFirstPacket());
      if (first) streams.push(this.audioFrames(sink.packets(first)));
    }
    yield* mergeByTimestamp(streams);
  }

  private async *videoFrames(packets: AsyncGenerator<EncodedPacket, void, unknown>): AsyncGenerator<MediaFrame, void, undefined> {
    for await (const { packet, pts, dts } of withDecodeTimes(packets)) {
      const key = packet.type === 'key';
      // Composition offset (signed 24-bit ms); a file reordered beyond what was measured gets 0 rather than a picture shown before it is decoded.
      const cts = Math.min(0x7fffff, Math.max(0, pts + this.shift - dts));
      const head = Buffer.from([key ? FLV_AVC_KEY : FLV_AVC_INTER, 1, (cts >> 16) & 0xff, (cts >> 8) & 0xff, cts & 0xff]);
      yield new MediaFrame(FRAME_VIDEO, dts, Buffer.concat([head, bytes(packet)]), key, false);
    }
  }

  private async *audioFrames(packets: AsyncGenerator<EncodedPacket, void, unknown>): AsyncGenerator<MediaFrame, void, undefined> {
    try {
      for await (const p of packets) {
        yield new MediaFrame(FRAME_AUDIO, ms(p.timestamp) + this.shift, Buffer.concat([Buffer.from([FLV_AAC, 1]), bytes(p)]), false, false);
      }
    } finally {
      await packets.return(undefined);
    }
  }

  close(): void {
    this.input.dispose();
  }
}

/** Frames of several timestamp-ordered streams, in timestamp order (video first on a tie: a player starts on the keyframe). */
async function* mergeByTimestamp(streams: AsyncGenerator<MediaFrame, void, undefined>[]): AsyncGenerator<MediaFrame, void, undefined> {
  const heads: (MediaFrame | undefined)[] = [];
  try {
    for (const s of streams) heads.push((await s.next()).value ?? undefined);
    for (;;) {
      let pick = -1;
      for (let i = 0; i < heads.length; i++) {
        const h = heads[i];
        if (h && (pick < 0 || h.timestamp < heads[pick]!.timestamp)) pick = i;
      }
      if (pick < 0) return;
      const f = heads[pick]!;
      heads[pick] = (await streams[pick]!.next()).value ?? undefined;
      yield f;
    }
  } finally {
    for (const s of streams) await s.return(undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// FLV (the project's reader)

const FLV_READ_CHUNK = 256 * 1024;
/** What a reader started mid-file is fed first: an FLV header with both tracks and no extra bytes, and PreviousTagSize0. */
const FLV_RESTART = Buffer.concat([Buffer.from([0x46, 0x4c, 0x56, 1, 0x05, 0, 0, 0, FLV_HEADER_SIZE]), Buffer.alloc(4)]);

/** The file from `start` in chunks, by positioned reads: any number of readers share one descriptor. */
async function* readFrom(fh: FileHandle, start: number): AsyncGenerator<Buffer, void, undefined> {
  for (let pos = start; ; ) {
    const buf = Buffer.allocUnsafe(FLV_READ_CHUNK);
    const { bytesRead } = await fh.read(buf, 0, FLV_READ_CHUNK, pos);
    if (bytesRead === 0) return;
    pos += bytesRead;
    yield buf.subarray(0, bytesRead);
  }
}

async function openFlv(file: VodFile): Promise<VodMedia> {
  const name = `${file.app}/${file.name}`;
  const decoder = new FlvDecoder();
  let offset = -1;
  let meta: AmfObject | undefined;
  let videoHeader: Buffer | undefined;
  let audioHeader: Buffer | undefined;
  let lastTs = 0;
  let firstTagOffset = -1;
  const keyframes: VodKeyframe[] = [];
  // One descriptor for the file's life: readers (viewers, seeks) read from it at their offsets, so a
  // file replaced or removed (a cache eviction) meanwhile does not change what they read.
  let fh: FileHandle;
  try {
    fh = await open(file.path, 'r');
  } catch (err) {
    throw new VodMediaError('io', `${name}: ${(err as Error).message}`);
  }
  try {
    for await (const chunk of readFrom(fh, 0)) {
      if (offset < 0) {
        // The header's DataOffset says where PreviousTagSize0 is (the decoder skips to it the same way).
        if (chunk.length < FLV_HEADER_SIZE) throw new VodMediaError('malformed', `${name}: shorter than an FLV header`);
        offset = chunk.readUInt32BE(5) + 4;
        firstTagOffset = offset;
      }
      const tags = decoder.push(chunk);
      if (tags instanceof FlvError) throw new VodMediaError('malformed', `${name}: ${tags.message}`);
      for (const t of tags) {
        const at = offset;
        offset += FLV_TAG_HEADER_SIZE + t.payload.length + 4;
        if (t.type === FRAME_VIDEO) {
          if (isVideoSequenceHeader(t.payload)) videoHeader ??= Buffer.from(t.payload);
          else if (isVideoKeyframe(t.payload)) keyframes.push({ timestamp: t.timestamp, position: at });
        } else if (t.type === FRAME_AUDIO) {
          if (isAudioSequenceHeader(t.payload)) audioHeader ??= Buffer.from(t.payload);
        } else if (meta === undefined) {
          const v = decodeAmf0(t.payload);
          if (!(v instanceof Error) && v[0] === 'onMetaData') meta = asAmfObject(v[1] as AmfValue);
        }
        if (t.type !== 18) lastTs = Math.max(lastTs, t.timestamp);
      }
    }
  } catch (err) {
    await fh.close();
    if (err instanceof VodMediaError) throw err;
    throw new VodMediaError('io', `${name}: ${(err as Error).message}`);
  }
  if (offset < 0 || !decoder.header) {
    await fh.close();
    throw new VodMediaError('malformed', `${name}: not an FLV file`);
  }
  const declared = typeof meta?.duration === 'number' && Number.isFinite(meta.duration) ? Math.round(meta.duration * 1000) : 0;
  const durationMs = Math.max(declared, lastTs);
  const { duration: _d, filesize: _f, ...rest } = meta ?? {};
  const metadata: AmfObject = { ...plainMetadata(rest), duration: durationMs / 1000, filesize: file.size };
  return new FlvMedia(file, fh, durationMs, metadata, videoHeader, audioHeader, keyframes, firstTagOffset);
}

/** The file's own onMetaData minus what it cannot be trusted for here (its keyframe tables describe other offsets). */
function plainMetadata(m: AmfObject): AmfObject {
  const out: AmfObject = {};
  for (const [k, v] of Object.entries(m)) if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') out[k] = v;
  return out;
}

class FlvMedia implements VodMedia {
  constructor(
    readonly file: VodFile,
    private readonly fh: FileHandle,
    readonly durationMs: number,
    readonly metadata: AmfObject,
    readonly videoHeader: Buffer | undefined,
    readonly audioHeader: Buffer | undefined,
    readonly keyframes: readonly VodKeyframe[],
    private readonly firstTagOffset: number,
  ) {}

  async *frames(fromMs: number): AsyncGenerator<MediaFrame, void, undefined> {
    const key = keyframeAtOrBefore(this.keyframes, fromMs);
    // Audio-only: read from the start and skip what comes before the target.
    const start = key?.position ?? this.firstTagOffset;
    const skipBefore = key ? key.timestamp : fromMs;
    const decoder = new FlvDecoder();
    decoder.push(FLV_RESTART);
    for await (const chunk of readFrom(this.fh, start)) {
      const tags = decoder.push(chunk);
      if (tags instanceof FlvError) throw new VodMediaError('malformed', `${this.file.app}/${this.file.name}: ${tags.message}`);
      for (const t of tags) {
        if (t.type === FRAME_VIDEO) {
          if (isVideoSequenceHeader(t.payload)) {
            if (!t.payload.equals(this.videoHeader ?? Buffer.alloc(0))) yield new MediaFrame(FRAME_VIDEO, t.timestamp, t.payload, false, true);
            continue;
          }
          yield new MediaFrame(FRAME_VIDEO, t.timestamp, t.payload, isVideoKeyframe(t.payload), false);
        } else if (t.type === FRAME_AUDIO) {
          if (t.timestamp < skipBefore) continue;
          if (isAudioSequenceHeader(t.payload)) {
            if (!t.payload.equals(this.audioHeader ?? Buffer.alloc(0))) yield new MediaFrame(FRAME_AUDIO, t.timestamp, t.payload, false, true);
            continue;
          }
          yield new MediaFrame(FRAME_AUDIO, t.timestamp, t.payload, false, false);
        }
      }
    }
  }

  close(): void {
    void this.fh.close().catch(() => undefined); // already closed: nothing left to release
  }
}

// ---------------------------------------------------------------------------------------------
// One opened file for all its viewers

/** Opened files kept while no viewer uses them (their index is reused by the next viewer). */
const IDLE_FILES = 8;

interface PoolEntry {
  media: Promise<VodMedia>;
  users: number;
}

/**
 * The node's opened VOD files: every viewer of a file (RTMP players, HLS segment builds) shares
 * one demuxer and index instead of parsing the file again. A file is closed when no one uses it
 * and IDLE_FILES others were used since. A file that fails to open is not remembered.
 */
export class VodMediaPool {
  private readonly entries = new Map<string, PoolEntry>();

  constructor(private readonly open: (file: VodFile) => Promise<VodMedia> = openVodMedia) {}

  /** The opened file; `close()` on what is returned ends this use (the file stays open for others). */
  async acquire(file: VodFile): Promise<VodMedia> {
    // One version of a file: a replaced file (another size) is opened anew.
    const key = `${file.path}\0${file.size}`;
    let entry = this.entries.get(key);
    if (entry) this.entries.delete(key);
    else {
      const media = this.open(file);
      entry = { media, users: 0 };
      const e = entry;
      media.catch(() => {
        if (this.entries.get(key) === e) this.entries.delete(key);
      });
    }
    this.entries.set(key, entry); // most recently used last
    entry.users++;
    let media: VodMedia;
    try {
      media = await entry.media;
    } catch (err) {
      entry.users--;
      throw err;
    }
    this.trim();
    const e = entry;
    let released = false;
    return {
      file: media.file,
      durationMs: media.durationMs,
      metadata: media.metadata,
      videoHeader: media.videoHeader,
      audioHeader: media.audioHeader,
      keyframes: media.keyframes,
      frames: (fromMs) => media.frames(fromMs),
      close: () => {
        if (released) return;
        released = true;
        e.users--;
        this.trim();
      },
    };
  }

  /** Files open now (in use or idle). */
  get size(): number {
    return this.entries.size;
  }

  /** Closes every file no one uses (the node is stopping). */
  closeIdle(): void {
    for (const [k, e] of [...this.entries]) if (e.users === 0) this.drop(k, e);
  }

  private trim(): void {
    let idle = 0;
    for (const e of this.entries.values()) if (e.users === 0) idle++;
    for (const [k, e] of [...this.entries]) {
      if (idle <= IDLE_FILES) return;
      if (e.users === 0) {
        this.drop(k, e);
        idle--;
      }
    }
  }

  private drop(key: string, e: PoolEntry): void {
    this.entries.delete(key);
    void e.media.then(
      (m) => m.close(),
      () => undefined,
    );
  }
}

const pools = new WeakMap<object, VodMediaPool>();

/** The pool of one node (keyed by its MediaHost), made on first use. */
export function vodMediaPool(host: object): VodMediaPool {
  let p = pools.get(host);
  if (!p) {
    p = new VodMediaPool();
    pools.set(host, p);
  }
  return p;
}
