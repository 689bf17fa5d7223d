/**
 * The epoch fence on the media path, parent side. Every relay pull this node admits is
 * recorded with the ownership epoch it asked for; when the epoch this node serves for the
 * stream changes (its lease was lost or superseded, a new lease was taken, or its own relay
 * now pulls another epoch), the pulls admitted for any other epoch are closed at once, with
 * a status that tells the child relay to re-read the owner rather than treat this node as dead.
 */
import type { Logger } from '../log.ts';
import type { SessionTable } from '../sessions.ts';
import { describeEpoch, EPOCH_FENCE_CODE, sameEpoch, type StreamEpoch } from './mesh-credential.ts';

export class RelayPullFence {
  /** Stream → session id → the epoch that session's pull was admitted for. */
  private readonly pulls = new Map<string, Map<string, StreamEpoch>>();

  constructor(
    private readonly sessions: SessionTable,
    private readonly log: Logger,
  ) {}

  private static key(app: string, stream: string): string {
    return `${app}\n${stream}`;
  }

  /** A pull of app/stream for `epoch` was admitted on session `sessionId`. */
  admitted(app: string, stream: string, sessionId: string, epoch: StreamEpoch): void {
    const key = RelayPullFence.key(app, stream);
    let m = this.pulls.get(key);
    if (!m) this.pulls.set(key, (m = new Map()));
    // Sessions that ended since are forgotten here (the table only holds open sessions).
    for (const id of m.keys()) if (!this.sessions.get(id)) m.delete(id);
    m.set(sessionId, epoch);
  }

  /**
   * Closes every pull of app/stream admitted for an epoch other than `keep` (all of them when
   * `keep` is undefined: this node serves no epoch of the stream any more). Returns how many.
   */
  fence(app: string, stream: string, keep: StreamEpoch | undefined, why: string): number {
    const key = RelayPullFence.key(app, stream);
    const m = this.pulls.get(key);
    if (!m) return 0;
    let closed = 0;
    for (const [id, epoch] of [...m]) {
      if (sameEpoch(epoch, keep)) continue;
      m.delete(id);
      const s = this.sessions.get(id);
      if (!s) continue;
      const description = `stale epoch: ${app}/${stream} at ${describeEpoch(epoch)} is no longer served here (${why}${keep ? `; now ${describeEpoch(keep)}` : ''})`;
      if (s.closeWithStatus) s.closeWithStatus(EPOCH_FENCE_CODE, description);
      else s.kick(description);
      closed++;
    }
    if (m.size === 0) this.pulls.delete(key);
    if (closed > 0) this.log.info({ app, stream, closed, keep, why }, 'closed relay pulls of another epoch');
    return closed;
  }
}
