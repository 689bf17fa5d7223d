/**
 * Where recordings live, behind one interface: a local directory (local-store.ts) or the NATS
 * JetStream Object Store (object-store.ts). A stored file is addressed by a key of
 * `/`-separated, percent-encoded parts; recordings name theirs `<app>/<stream>/<start>_<node>.<ext>`
 * (segmentKey), so the start time and the node that recorded a segment need no index. VOD can
 * serve files through the same list/read calls.
 */

/** `flv`: FLV files (flv-segment.ts); `fmp4`: fragmented MP4 files, extension `.mp4` (fmp4-segment.ts). */
export type SegmentFormat = 'flv' | 'fmp4';

/** A segment being or having been recorded: what its key says. */
export interface SegmentRef {
  app: string;
  stream: string;
  /** Wall-clock time of its first frame, ms since the epoch. */
  startMs: number;
  /** The node that recorded it. */
  node: string;
  format: SegmentFormat;
}

export interface SegmentInfo extends SegmentRef {
  key: string;
  bytes: number;
  /** Media time from its first to its last frame. */
  durationMs: number;
}

export interface ByteRange {
  /** First byte, inclusive. */
  start: number;
  /** Last byte, exclusive. */
  end: number;
}

/** One segment being written: bytes are appended in order; `durationMs` is the media time written so far. */
export interface SegmentWriter {
  append(data: Buffer, durationMs: number): Promise<void>;
  close(durationMs: number): Promise<void>;
}

export interface StoreUsage {
  bytes: number;
  segments: number;
}

export interface RecordingStore {
  readonly kind: 'local' | 'object_store';
  open(ref: SegmentRef): Promise<SegmentWriter>;
  /** Segments of one stream (or all), oldest first. Open segments are listed with what they hold so far. */
  list(filter?: { app: string; stream: string }): Promise<SegmentInfo[]>;
  read(seg: SegmentInfo, range?: ByteRange): Promise<Buffer>;
  delete(seg: SegmentInfo): Promise<void>;
  usage(): Promise<StoreUsage>;
  close(): Promise<void>;
}

/** A store operation that failed (disk full, directory not writable, object store unreachable). */
export class RecordingStoreError extends Error {
  readonly code = 'RECORDING_STORE';
}

/** Percent-encoding that leaves no `/` and no `.` (so `..` can never be a path part). */
export function encodePart(s: string): string {
  return encodeURIComponent(s).replace(/\./g, '%2E').replace(/\*/g, '%2A');
}

const EXT: Record<SegmentFormat, string> = { flv: 'flv', fmp4: 'mp4' };
const FORMAT_OF_EXT: Record<string, SegmentFormat> = { flv: 'flv', mp4: 'fmp4' };

/** `2026-12-05T16-20-00.123Z`: the ISO time with `-` for `:`, sortable and legal in every file system. */
function stamp(ms: number): string {
  return new Date(ms).toISOString().replace(/:/g, '-');
}

export function streamPrefix(app: string, stream: string): string {
  return `${encodePart(app)}/${encodePart(stream)}/`;
}

export function segmentKey(ref: SegmentRef): string {
  return `${streamPrefix(ref.app, ref.stream)}${stamp(ref.startMs)}_${encodePart(ref.node)}.${EXT[ref.format]}`;
}

const KEY_RE = /^([^/]+)\/([^/]+)\/(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}Z)_([^/.]+)\.(flv|mp4)$/;

/** The reverse of segmentKey; undefined for any other file. */
export function parseSegmentKey(key: string): SegmentRef | undefined {
  const m = KEY_RE.exec(key);
  if (!m) return undefined;
  const iso = m[3]!.replace(/^(\d{4}-\d\d-\d\dT)(\d\d)-(\d\d)-/, '$1$2:$3:');
  const startMs = Date.parse(iso);
  if (!Number.isFinite(startMs)) return undefined;
  try {
    return { app: decodeURIComponent(m[1]!), stream: decodeURIComponent(m[2]!), startMs, node: decodeURIComponent(m[4]!), format: FORMAT_OF_EXT[m[5]!]! };
  } catch {
    return undefined;
  }
}
