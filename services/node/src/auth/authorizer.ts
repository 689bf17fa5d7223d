/**
 * Publish and play authorisation. The node asks before any publisher is attached or any
 * media reaches a viewer, and tells it when a session that was allowed ends.
 */
import type { StreamRequest } from '../media/host.ts';

export type AuthAction = 'publish' | 'play';

/** `validUntil` (ms): when the credential that allowed it lapses (a signed token's `exp`); absent = it does not. */
export type AuthDecision = { ok: true; validUntil?: number } | { ok: false; reason: string };

export interface SessionSummary {
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
}

export interface Authorizer {
  authorize(action: AuthAction, req: StreamRequest): Promise<AuthDecision>;
  /** A session that was authorised has ended (on_publish_done / on_play_done). */
  done(action: AuthAction, req: StreamRequest, summary: SessionSummary): void;
}

/** A node with no auth configured lets everyone publish and play. */
export const OPEN_ACCESS: Authorizer = {
  authorize: async () => ({ ok: true }),
  done: () => undefined,
};
