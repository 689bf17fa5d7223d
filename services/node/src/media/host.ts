/**
 * What a connection (RTMP session, HTTP-FLV viewer) needs from its node: admission of
 * publishers and viewers. The node decides roles, authorisation, takeover and (in a mesh)
 * ownership leases and relays; sessions only speak their protocol.
 */
import type { NodeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { SessionTable } from '../sessions.ts';
import type { PublisherHandle, StreamHub } from './stream-hub.ts';
import type { CredentialCheck, MeshPull } from '../mesh/mesh-credential.ts';
import type { VodLibrary } from '../vod/vod-library.ts';

export interface StreamRequest {
  app: string;
  stream: string;
  /** Query parameters from the app and stream name (`live?x=1`, `key?token=…`). */
  params: URLSearchParams;
  sessionId: string;
  remote: string;
  /** `recording`: a request of the recordings playback API (recording-feature.ts); `vod`: a VOD file over HTTP (vod-http.ts). */
  protocol: 'rtmp' | 'http-flv' | 'ws-flv' | 'hls' | 'recording' | 'whep' | 'whip' | 'vod';
  /** Set when the connection proved (mesh credential) that it is another node's relay pulling. */
  meshPeer?: string;
  /** Set by authorisation: when the credential that admitted this request lapses (a signed token's `exp`), in ms. */
  authorizedUntil?: number;
  /** With `meshPeer`: the stream and ownership epoch the relay expects (signed in its credential). */
  meshPull?: MeshPull;
}

export type Refusal = {
  ok: false;
  /** An onStatus code, e.g. NetStream.Publish.BadName. */
  code: string;
  description: string;
  /** Where the client should go instead (RTMP redirect / HTTP 302). */
  redirect?: string;
};

/** `standby`: kept connected as the stream's standby publisher (its frames are not served until it is promoted). */
export type PublishAdmission = { ok: true; hub: StreamHub; standby?: boolean } | Refusal;
export type PlayAdmission = { ok: true; hub: StreamHub } | Refusal;

export interface MediaHost {
  readonly config: NodeConfig;
  readonly log: Logger;
  readonly sessions: SessionTable;
  /** Attaches `publisher` to the stream's hub when admitted. */
  admitPublish(req: StreamRequest, publisher: PublisherHandle): Promise<PublishAdmission>;
  endPublish(hub: StreamHub, publisher: PublisherHandle): void;
  /** Returns the hub the viewer should attach to (local, relayed, or awaited). */
  admitPlay(req: StreamRequest): Promise<PlayAdmission>;
  /** The play rules for a file of a VOD app (no hub, no relay): undefined when admitted. */
  admitVodPlay(req: StreamRequest): Promise<Refusal | undefined>;
  endPlay(hub: StreamHub): void;
  /** An admitted publish or play has ended (webhooks, accounting). */
  sessionDone(action: 'publish' | 'play', req: StreamRequest, summary: { bytesIn: number; bytesOut: number; durationMs: number }): void;
  verifyMeshCredential(value: unknown): CredentialCheck;
  /** The files of VOD apps (per-app `vod`); resolve a client's request name through it (vod/vod-library.ts). */
  readonly vod?: VodLibrary;
}

export function splitQuery(name: string): { name: string; params: URLSearchParams } {
  const q = name.indexOf('?');
  if (q < 0) return { name, params: new URLSearchParams() };
  return { name: name.slice(0, q), params: new URLSearchParams(name.slice(q + 1)) };
}

export class StreamNameError extends Error {
  readonly code = 'BAD_STREAM_NAME';
}

/** Validates an app or stream name from a client; subject safety is the mesh's job, this keeps names sane. */
export function checkName(kind: 'app' | 'stream', name: string, maxBytes: number): string | undefined {
  if (name.length === 0) return `${kind} name is empty`;
  if (Buffer.byteLength(name) > maxBytes) return `${kind} name is longer than ${maxBytes} bytes`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return `${kind} name contains control characters`;
  if (kind === 'app' && name.includes('/')) return 'app name contains "/"';
  return undefined;
}
