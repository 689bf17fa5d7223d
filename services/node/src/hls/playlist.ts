/**
 * Live media playlist writer (RFC 8216 §4). Pure: segments in, text out.
 *
 * - `#EXT-X-VERSION:3`: decimal `#EXTINF` durations.
 * - `#EXT-X-TARGETDURATION`: an integer no segment's duration exceeds once rounded
 *   (§4.3.3.1); the caller passes one that never decreases over the stream's life.
 * - `#EXT-X-MEDIA-SEQUENCE`: the first listed segment's sequence number.
 * - `#EXT-X-DISCONTINUITY-SEQUENCE`: how many discontinuity tags have left the playlist
 *   (§6.2.1: the server increments it when it removes one), written when not 0.
 * - No `#EXT-X-ENDLIST`: the stream is live, a publisher may come back. A file's playlist
 *   (`vod`, HLS VOD) is whole instead: `#EXT-X-PLAYLIST-TYPE:VOD` and `#EXT-X-ENDLIST`.
 */

export interface PlaylistSegment {
  /** Media sequence number. */
  seq: number;
  durationMs: number;
  /** An `#EXT-X-DISCONTINUITY` tag goes before this segment (new publisher, new codec config, gap). */
  discontinuity: boolean;
  /** Discontinuity tags on all segments before this one, listed or not. */
  discontinuitiesBefore: number;
}

export interface PlaylistInput {
  targetDurationS: number;
  segments: readonly PlaylistSegment[];
  /** URI of a segment, relative to the playlist (default `<seq>.ts`). */
  uri?: (seq: number) => string;
  /** A whole file (HLS VOD): every segment is listed and the list ends. */
  vod?: boolean;
}

export function renderMediaPlaylist(input: PlaylistInput): string {
  const segs = input.segments;
  const uri = input.uri ?? ((seq: number) => `${seq}.ts`);
  const first = segs[0];
  const lines = ['#EXTM3U', '#EXT-X-VERSION:3', `#EXT-X-TARGETDURATION:${Math.max(1, Math.ceil(input.targetDurationS))}`, `#EXT-X-MEDIA-SEQUENCE:${first?.seq ?? 0}`];
  if (input.vod) lines.push('#EXT-X-PLAYLIST-TYPE:VOD');
  if (first && first.discontinuitiesBefore > 0) lines.push(`#EXT-X-DISCONTINUITY-SEQUENCE:${first.discontinuitiesBefore}`);
  for (const s of segs) {
    if (s.discontinuity) lines.push('#EXT-X-DISCONTINUITY');
    lines.push(`#EXTINF:${(s.durationMs / 1000).toFixed(3)},`, uri(s.seq));
  }
  if (input.vod) lines.push('#EXT-X-ENDLIST');
  return `${lines.join('\n')}\n`;
}

/** The smallest integer target duration that covers `maxDurationMs` (and at least the configured target). */
export function targetDurationFor(configuredS: number, maxDurationMs: number): number {
  return Math.max(1, Math.ceil(configuredS), Math.ceil(maxDurationMs / 1000));
}
