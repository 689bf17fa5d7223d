/**
 * HLS VOD: a VOD file as an HLS playlist of MPEG-TS segments, cut on the fly.
 *
 *   GET /<app>/<dir>/<file>.mp4/index.m3u8   the whole file: #EXT-X-PLAYLIST-TYPE:VOD … #EXT-X-ENDLIST
 *   GET /<app>/<dir>/<file>.mp4/<n>.ts       segment n (the same under an .flv file)
 *
 * vod-http.ts admits the viewer (the app's play rules, once per request) and resolves the file;
 * this module answers the two sub-resources. Segments start on a video keyframe, at the first
 * keyframe at least TARGET_MS after the previous cut, so each one decodes on its own; they are
 * made from the demuxed frames by the project's TS muxer (as live HLS does) when first asked for.
 * Memory is bounded: files are opened through the node's VodMediaPool (shared with RTMP
 * viewers), and SEGMENT_CACHE_BYTES of segments are kept, least recently used dropped first. A segment being made is shared by concurrent requests.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { classifyAudioTag, classifyVideoTag, CodecConfigError, TsMuxer } from '@meshcast/proto';
import type { HttpFeature } from '../http/features.ts';
import type { MediaHost } from '../media/host.ts';
import { FRAME_AUDIO, FRAME_VIDEO } from '../media/frame.ts';
import { renderMediaPlaylist, targetDurationFor, type PlaylistSegment } from '../hls/playlist.ts';
import { VOD_SUB_ROUTES, type VodSubRoute } from './vod-http.ts';
import type { VodFile } from './vod-library.ts';
import { vodMediaPool, VodMediaError, type VodMedia, type VodMediaPool } from './vod-media.ts';

/** Segments are cut at the first keyframe at least this long after the previous cut. */
export const VOD_HLS_TARGET_MS = 4000;
/** Segment bytes kept for later requests (other viewers, seeks back). */
const SEGMENT_CACHE_BYTES = 32 * 1024 * 1024;
const PLAYLIST_TYPE = 'application/vnd.apple.mpegurl';
const SEGMENT_RE = /^(\d{1,9})\.ts$/;

export interface VodSegmentSpan {
  startMs: number;
  /** Where the segment ends (the next cut; the media's end for the last one). */
  endMs: number;
}

/** The cuts of a file: keyframes at least `targetMs` apart; a file without video is cut by time. */
export function planSegments(media: Pick<VodMedia, 'keyframes' | 'durationMs'>, targetMs = VOD_HLS_TARGET_MS): VodSegmentSpan[] {
  const starts: number[] = [];
  if (media.keyframes.length > 0) {
    for (const k of media.keyframes) if (starts.length === 0 || k.timestamp - starts[starts.length - 1]! >= targetMs) starts.push(k.timestamp);
  } else {
    for (let t = 0; t < media.durationMs || t === 0; t += targetMs) starts.push(t);
  }
  return starts.map((startMs, i) => ({ startMs, endMs: i + 1 < starts.length ? starts[i + 1]! : Math.max(media.durationMs, startMs + 1) }));
}

/** Files whose cuts are remembered. */
const PLANNED_FILES = 64;

/** One node's HLS VOD state: each file's cuts and a cache of made segments (files are opened through the node's VodMediaPool). */
export class VodHls {
  private readonly spans = new Map<string, VodSegmentSpan[]>();
  private readonly segments = new Map<string, Buffer>();
  private segmentBytes = 0;
  private readonly building = new Map<string, Promise<Buffer | undefined>>();
  readonly stats = { segmentsMade: 0, segmentHits: 0 };

  constructor(private readonly pool: VodMediaPool) {}

  async playlist(file: VodFile, query: string): Promise<string> {
    const spans = await this.withFile(file, async (media) => {
      tsTracks(media); // a file HLS cannot carry is refused at the playlist, not segment by segment
      return this.spansOf(file, media);
    });
    const segments: PlaylistSegment[] = spans.map((s, seq) => ({ seq, durationMs: s.endMs - s.startMs, discontinuity: false, discontinuitiesBefore: 0 }));
    const suffix = query ? `?${query}` : '';
    const maxMs = Math.max(0, ...segments.map((s) => s.durationMs));
    return renderMediaPlaylist({ targetDurationS: targetDurationFor(VOD_HLS_TARGET_MS / 1000, maxMs), segments, uri: (n) => `${n}.ts${suffix}`, vod: true });
  }

  /** Segment `seq` of the file, or undefined when the file has no such segment. */
  async segment(file: VodFile, seq: number): Promise<Buffer | undefined> {
    const key = `${fileKey(file)}\0${seq}`;
    const cached = this.segments.get(key);
    if (cached) {
      // Most recently used last.
      this.segments.delete(key);
      this.segments.set(key, cached);
      this.stats.segmentHits++;
      return cached;
    }
    let pending = this.building.get(key);
    if (!pending) {
      pending = this.withFile(file, async (media) => {
        const spans = this.spansOf(file, media);
        const span = spans[seq];
        if (!span) return undefined;
        return makeSegment(media, span, seq === spans.length - 1);
      }).finally(() => this.building.delete(key));
      this.building.set(key, pending);
      const data = await pending;
      if (data) this.keep(key, data);
      return data;
    }
    return pending;
  }

  /** Bytes of made segments kept. */
  get cachedBytes(): number {
    return this.segmentBytes;
  }

  close(): void {
    this.spans.clear();
    this.segments.clear();
    this.segmentBytes = 0;
  }

  private spansOf(file: VodFile, media: VodMedia): VodSegmentSpan[] {
    const key = fileKey(file);
    let spans = this.spans.get(key);
    if (!spans) {
      spans = planSegments(media);
      this.spans.set(key, spans);
      if (this.spans.size > PLANNED_FILES) this.spans.delete(this.spans.keys().next().value!);
    }
    return spans;
  }

  private keep(key: string, data: Buffer): void {
    this.stats.segmentsMade++;
    if (data.length > SEGMENT_CACHE_BYTES / 4) return; // one huge segment would empty the cache for nothing
    this.segments.set(key, data);
    this.segmentBytes += data.length;
    for (const [k, v] of this.segments) {
      if (this.segmentBytes <= SEGMENT_CACHE_BYTES) break;
      this.segments.delete(k);
      this.segmentBytes -= v.length;
    }
  }

  private async withFile<T>(file: VodFile, use: (media: VodMedia) => Promise<T>): Promise<T> {
    const media = await this.pool.acquire(file);
    try {
      return await use(media);
    } finally {
      media.close();
    }
  }
}

/** One file version: a replaced file (another size) gets new segments. */
function fileKey(file: VodFile): string {
  return `${file.path}\0${file.size}`;
}

/** The MPEG-TS bytes of one span: PAT/PMT, then the frames from its keyframe up to the next cut. */
export async function makeSegment(media: VodMedia, span: VodSegmentSpan, last: boolean): Promise<Buffer> {
  const { videoCodec, audio } = tsTracks(media);
  const video = videoCodec !== undefined;
  const muxer = new TsMuxer({ ...(videoCodec ? { videoCodec } : {}), audio });
  if (media.videoHeader && video) muxer.pushVideo(span.startMs, media.videoHeader);
  if (media.audioHeader && audio) muxer.pushAudio(span.startMs, media.audioHeader);
  const chunks: Buffer[] = [muxer.startSegment()];
  // Audio is shifted by the reorder delay (vod-media.ts), so the last segment takes what runs past the duration.
  const end = last ? Infinity : span.endMs;
  try {
    for await (const f of media.frames(span.startMs)) {
      if (f.timestamp >= end) break;
      if (f.type === FRAME_VIDEO && video) chunks.push(muxer.pushVideo(f.timestamp, f.payload));
      else if (f.type === FRAME_AUDIO && audio && f.timestamp >= span.startMs) chunks.push(muxer.pushAudio(f.timestamp, f.payload));
    }
  } catch (err) {
    if (err instanceof VodMediaError) throw err;
    // The demuxer or the file failed mid-read (a truncated file, a disk error): the file's fault, not the node's.
    throw new VodMediaError('malformed', `${media.file.app}/${media.file.name}: ${(err as Error).message}`);
  }
  return Buffer.concat(chunks);
}

/** What of a file MPEG-TS carries here: H.264 or HEVC video, AAC audio (an FLV file may hold other codecs; MP4 files are H.264/AAC already). */
function tsTracks(media: VodMedia): { videoCodec: 'avc' | 'hevc' | undefined; audio: boolean } {
  let videoCodec: 'avc' | 'hevc' | undefined;
  if (media.videoHeader) {
    const v = classifyVideoTag(media.videoHeader);
    if (v instanceof CodecConfigError || (v.codec !== 'avc' && v.codec !== 'hevc')) {
      throw new VodMediaError('unsupported', `${media.file.app}/${media.file.name}: its video (${v instanceof CodecConfigError ? v.message : v.codec}) is not carried in HLS by this node (H.264 or HEVC)`);
    }
    videoCodec = v.codec;
  } else if (media.keyframes.length > 0) {
    // Video without a decoder configuration: a codec from before H.264 (Sorenson, VP6, screen video).
    throw new VodMediaError('unsupported', `${media.file.app}/${media.file.name}: its video is not H.264 or HEVC, so it is not carried in HLS by this node`);
  }
  const a = media.audioHeader ? classifyAudioTag(media.audioHeader) : undefined;
  // Audio other than AAC is left out (the pictures still play), as live HLS does.
  const audio = a !== undefined && !(a instanceof CodecConfigError) && a.codec === 'aac';
  if (!videoCodec && !audio) throw new VodMediaError('unsupported', `${media.file.app}/${media.file.name}: no H.264/HEVC video or AAC audio to carry in HLS`);
  return { videoCodec, audio };
}

const services = new WeakMap<MediaHost, VodHls>();

function serviceOf(host: MediaHost): VodHls {
  let s = services.get(host);
  if (!s) {
    s = new VodHls(vodMediaPool(host));
    services.set(host, s);
  }
  return s;
}

/** Playback figures of one node (for metrics and the VOD admin API): files open for viewers, HLS VOD segments made and served from the cache. */
export function vodPlaybackStats(host: MediaHost): { openFiles: number; hlsSegmentsMade: number; hlsSegmentHits: number; hlsCacheBytes: number } {
  const hls = services.get(host);
  return { openFiles: vodMediaPool(host).size, hlsSegmentsMade: hls?.stats.segmentsMade ?? 0, hlsSegmentHits: hls?.stats.segmentHits ?? 0, hlsCacheBytes: hls?.cachedBytes ?? 0 };
}

function queryOf(url: string | undefined): string {
  const q = (url ?? '').indexOf('?');
  return q < 0 ? '' : (url ?? '').slice(q + 1);
}

async function serve(host: MediaHost, req: FastifyRequest, reply: FastifyReply, file: VodFile, sub: string): Promise<boolean> {
  const m = SEGMENT_RE.exec(sub);
  if (sub !== 'index.m3u8' && !m) return false;
  const hls = serviceOf(host);
  try {
    if (!m) {
      const text = await hls.playlist(file, queryOf(req.raw.url));
      void reply.header('Content-Type', PLAYLIST_TYPE).header('Cache-Control', 'max-age=60').send(text);
      return true;
    }
    const data = await hls.segment(file, Number(m[1]));
    if (!data) {
      void reply.code(404).send({ error: `segment ${m[1]} is not in ${file.app}/${file.name}` });
      return true;
    }
    void reply.header('Content-Type', 'video/mp2t').header('Cache-Control', 'max-age=3600').send(data);
    return true;
  } catch (err) {
    if (!(err instanceof VodMediaError)) throw err;
    host.log.warn({ app: file.app, file: file.name, reason: err.reason, err: err.message }, 'HLS VOD: file cannot be played');
    void reply.code(err.reason === 'io' ? 503 : 415).send({ error: err.message });
    return true;
  }
}

export const VOD_HLS_ROUTE: VodSubRoute = { serve: (host, req, reply, file, sub) => serve(host, req, reply, file, sub) };
VOD_SUB_ROUTES.push(VOD_HLS_ROUTE);

/** Registers nothing of its own (vod-http.ts routes the paths here); it drops the node's opened files and segments when the server closes. */
export const VOD_HLS_FEATURE: HttpFeature = {
  name: 'vod-hls',
  surface: 'public',
  register(app, ctx) {
    app.addHook('onClose', async () => {
      services.get(ctx.host)?.close();
      services.delete(ctx.host);
      vodMediaPool(ctx.host).closeIdle();
    });
  },
};
