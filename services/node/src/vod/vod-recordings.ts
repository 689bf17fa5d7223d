/**
 * A VOD app whose files are the recordings of a live app (`apps.<vod app>.vod: {recordings:
 * <live app>}`, docs/vod.md "Recordings as a VOD source").
 *
 * Names (the request name after the app, as every protocol gives it to LocalVodLibrary):
 *
 * - `<stream>.mp4` (RTMP also `mp4:<stream>.mp4`, `mp4:<stream>` and `<stream>`): the stream's
 *   most recent continuous recorded span (spansOf), from its start, for at most
 *   `recording.max_playback_s`;
 * - `<stream>@<YYYYMMDDTHHMMSSZ>.mp4`: from that UTC time, within the span holding it, for at
 *   most `recording.max_playback_s` (`:` is not allowed in a VOD name, hence the basic ISO 8601
 *   form).
 *
 * The name's checked form (`<stream>.mp4`, `<stream>@<time>.mp4`) is what the app's play rules
 * see, as a file's name is for a file app. The path rules of every VOD name apply
 * (parseVodName), the stream part has no `/` and passes the live streams' name check.
 *
 * The MP4 is stitched from the store (RecordingService.mp4, in memory: `max_playback_s` bounds
 * one stitch), written once into the node's VOD cache (vod-cache.ts: bounded, least recently
 * used out, one build per file however many viewers ask), and from there served like any VOD
 * file: RTMP VOD, HTTP with Range and HLS VOD need nothing of their own. With the object store
 * every node reads every recording, so any node serves any recording.
 *
 * A span still being recorded grows: its cache key holds the stitched span's start and length,
 * so a request after the end moved gets a new file (the old one ages out of the cache). Requests
 * within REUSE_MS of a build of the same start reuse that build, so the Range requests of one
 * player, or many viewers arriving together, do not each stitch a slightly longer file.
 */
import { writeFile } from 'node:fs/promises';
import { vodSettings, type NodeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import { checkName } from '../media/host.ts';
import { NothingToStitchError, type StitchedMp4 } from '../recording/mp4.ts';
import { spansOf } from '../recording/retention.ts';
import { RecordingStoreError, type SegmentInfo } from '../recording/store.ts';
import type { VodCache } from './vod-cache.ts';
import { parseVodName, VodError } from './vod-library.ts';

/** The time after `@`: basic ISO 8601 UTC, to the second. */
const STAMP = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;
/** A build of a growing span is reused this long before a request makes a longer one. */
export const REUSE_MS = 5000;

export interface RecordingName {
  /** The checked name: `<stream>.mp4` or `<stream>@<YYYYMMDDTHHMMSSZ>.mp4`. */
  name: string;
  stream: string;
  /** The time asked for (`@…`), ms since the epoch; undefined = the latest span from its start. */
  atMs?: number;
}

/** `20261205T160000Z` ↔ ms since the epoch (undefined for a malformed or impossible time). */
export function parseStamp(stamp: string): number | undefined {
  const m = STAMP.exec(stamp);
  if (!m) return undefined;
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const ms = Date.UTC(y, mo - 1, d, h, mi, s);
  // Date.UTC rolls 20261332 over into January: a time that does not round-trip is refused.
  return formatStamp(ms) === stamp ? ms : undefined;
}

export function formatStamp(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
}

/** A request name of a recordings app, checked as text; throws VodError('bad_path'). */
export function parseRecordingName(requestName: string, maxStreamBytes: number): RecordingName {
  const bad = (why: string): VodError => new VodError('bad_path', `refused recording name ${JSON.stringify(requestName.slice(0, 200))}: ${why}`);
  let rest = requestName;
  if (/^flv:/i.test(rest)) throw bad('a recordings app serves MP4 only (<stream>.mp4)');
  rest = rest.replace(/^mp4:/i, '');
  if (/\.mp4$/i.test(rest)) rest = rest.slice(0, -4);
  else if (/\.(m4v|flv)$/i.test(rest)) throw bad('a recordings app serves MP4 only (<stream>.mp4)');
  // The path rules of every VOD name (traversal, encoded names, hidden files, `:`…).
  parseVodName(`${rest}.mp4`);
  if (rest.includes('/')) throw bad('a recorded stream\'s name has no "/"');
  let stream = rest;
  let atMs: number | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0 && /^\d/.test(rest.slice(at + 1))) {
    atMs = parseStamp(rest.slice(at + 1));
    if (atMs === undefined) throw bad('the time after "@" must be a UTC time YYYYMMDDTHHMMSSZ, e.g. 20261205T160000Z');
    stream = rest.slice(0, at);
  }
  const problem = checkName('stream', stream, maxStreamBytes);
  if (problem) throw bad(problem);
  return { name: atMs === undefined ? `${stream}.mp4` : `${stream}@${formatStamp(atMs)}.mp4`, stream, atMs };
}

/**
 * What a name serves: the latest span from its start, or the span holding `atMs` from `atMs`;
 * at most `maxMs` long. Undefined when there is no such span.
 */
export function recordedWindow(segments: readonly SegmentInfo[], atMs: number | undefined, maxMs: number): { fromMs: number; durationMs: number } | undefined {
  const spans = spansOf(segments);
  const span = atMs === undefined ? spans[spans.length - 1] : spans.find((s) => s.startMs <= atMs && atMs < s.startMs + s.durationMs);
  if (!span) return undefined;
  const fromMs = atMs ?? span.startMs;
  const durationMs = Math.min(maxMs, span.startMs + span.durationMs - fromMs);
  return durationMs > 0 ? { fromMs, durationMs } : undefined;
}

/** What this source needs of the node's RecordingService. */
export interface RecordingsReader {
  segments(app: string, stream: string): Promise<SegmentInfo[]>;
  mp4(app: string, stream: string, fromMs: number, durationMs: number): Promise<StitchedMp4>;
}

export interface RecordingsVodOptions {
  cache: VodCache;
  /** The node's RecordingService (made on first use). */
  reader: () => RecordingsReader;
  /** `recording.max_playback_s` in ms. */
  maxPlaybackMs: number;
  log: Logger;
  now?: () => number;
}

/** Makes and caches the MP4 files of a recordings app's names. */
export class RecordingsVodSource {
  /** Last build per (app, stream, start): its length and when it was made (REUSE_MS). */
  private readonly recent = new Map<string, { durationMs: number; at: number }>();
  private readonly now: () => number;

  constructor(private readonly opts: RecordingsVodOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** The cached MP4 of `name` of VOD app `vodApp`, which serves the recordings of `liveApp`; rejects with VodError. */
  async file(vodApp: string, liveApp: string, name: RecordingName): Promise<{ path: string; size: number }> {
    const reader = this.opts.reader();
    const what = `${liveApp}/${name.stream}`;
    let segments: SegmentInfo[];
    try {
      segments = await reader.segments(liveApp, name.stream);
    } catch (err) {
      throw storeFailure(err, what);
    }
    const window = recordedWindow(segments, name.atMs, this.opts.maxPlaybackMs);
    if (!window) {
      throw new VodError('not_found', name.atMs === undefined ? `no recording of ${what}` : `no recording of ${what} at ${new Date(name.atMs).toISOString()}`);
    }
    const startKey = `${liveApp}\u0000${name.stream}\u0000${window.fromMs}`;
    const last = this.recent.get(startKey);
    const now = this.now();
    if (last && now - last.at < REUSE_MS && last.durationMs <= window.durationMs) window.durationMs = last.durationMs;
    else this.remember(startKey, { durationMs: window.durationMs, at: now });
    // Keyed by the live app: every VOD app of the same recordings shares the file (a file app's names never hold ":").
    return this.opts.cache.get(liveApp, `recording:${startKey}\u0000${window.durationMs}`, '.mp4', async (fill) => {
      let mp4: StitchedMp4;
      try {
        mp4 = await reader.mp4(liveApp, name.stream, window.fromMs, window.durationMs);
      } catch (err) {
        if (err instanceof NothingToStitchError) throw new VodError('not_found', `no recorded media of ${what} from ${new Date(window.fromMs).toISOString()}`);
        throw storeFailure(err, what);
      }
      fill.reserve(mp4.data.length);
      await writeFile(fill.dest, mp4.data, { signal: fill.signal });
      this.opts.log.info({ app: vodApp, recording: what, from: new Date(window.fromMs).toISOString(), durationMs: mp4.durationMs, bytes: mp4.data.length }, 'recording stitched into the VOD cache');
    });
  }

  private remember(key: string, v: { durationMs: number; at: number }): void {
    this.recent.delete(key);
    this.recent.set(key, v);
    // Only the reuse window matters: old entries go, oldest first.
    for (const [k, e] of this.recent) {
      if (this.recent.size <= 1024 && this.now() - e.at < REUSE_MS) break;
      this.recent.delete(k);
    }
  }
}

function storeFailure(err: unknown, what: string): unknown {
  if (err instanceof RecordingStoreError) return new VodError('unavailable', `recording store unavailable for ${what}: ${err.message}`);
  return err;
}

/** True when some app of this config serves recordings (per app, `"*"` or `app_defaults`). */
export function hasRecordingsVodApps(cfg: NodeConfig): boolean {
  return vodSettings(cfg).some(([, v]) => !!(v && v.recordings));
}
