/**
 * Which segments retention deletes: those whose last frame is older than their app's
 * `record.retention`, then, while the store holds more than `maxBytes`, the oldest others.
 * Pure (the caller lists, deletes and supplies the clock). Segments being written are never
 * chosen, and segments of apps that no longer record are kept: no rule says when they expire.
 */
import type { SegmentInfo } from './store.ts';

export type DeleteReason = 'retention' | 'max_bytes';

export function segmentsToDelete(
  segments: readonly SegmentInfo[],
  opts: { now: number; retentionMs: (app: string) => number | undefined; maxBytes: number; usedBytes: number; writing: ReadonlySet<string> },
): Array<{ seg: SegmentInfo; reason: DeleteReason }> {
  const out: Array<{ seg: SegmentInfo; reason: DeleteReason }> = [];
  const kept: SegmentInfo[] = [];
  let used = opts.usedBytes;
  for (const seg of segments) {
    const keep = opts.retentionMs(seg.app);
    if (!opts.writing.has(seg.key) && keep !== undefined && seg.startMs + seg.durationMs < opts.now - keep) {
      out.push({ seg, reason: 'retention' });
      used -= seg.bytes;
    } else {
      kept.push(seg);
    }
  }
  for (const seg of [...kept].sort((a, b) => a.startMs - b.startMs)) {
    if (used <= opts.maxBytes) break;
    if (opts.writing.has(seg.key)) continue;
    out.push({ seg, reason: 'max_bytes' });
    used -= seg.bytes;
  }
  return out;
}

/** Time spans covered by segments: neighbours closer than `joinMs` make one span. */
export function spansOf(segments: readonly SegmentInfo[], joinMs = 1500): Array<{ startMs: number; durationMs: number }> {
  const spans: Array<{ startMs: number; endMs: number }> = [];
  for (const s of [...segments].sort((a, b) => a.startMs - b.startMs)) {
    const end = s.startMs + s.durationMs;
    const last = spans[spans.length - 1];
    if (last && s.startMs <= last.endMs + joinMs) last.endMs = Math.max(last.endMs, end);
    else spans.push({ startMs: s.startMs, endMs: end });
  }
  return spans.map((s) => ({ startMs: s.startMs, durationMs: s.endMs - s.startMs }));
}
