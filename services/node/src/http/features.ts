/**
 * HTTP features beyond HTTP-FLV and the core API (HLS, WebSocket-FLV, metrics, dashboard, …).
 * Each registers its own routes; the node passes them what they may use.
 */
import type { FastifyInstance } from 'fastify';
import type { MediaHost } from '../media/host.ts';
import type { StreamRegistry } from '../media/stream-registry.ts';
import type { ConnectionLimiter } from '../sessions.ts';
import { metricsFeature } from './metrics.ts';
import { dashboardFeature, dashboardPeerFeature } from '../dashboard/dashboard.ts';
import { HLS_FEATURE } from '../hls/hls-feature.ts';
import { WS_FLV_FEATURE } from './ws-flv.ts';
import type { PublishingStatus } from '../mesh/publishing-status.ts';
import type { VodLibrary } from '../vod/vod-library.ts';
import { RECORDINGS_FEATURE } from '../recording/recording-feature.ts';
import { WHEP_FEATURE } from '../webrtc/whep-feature.ts';
import { WHIP_FEATURE } from '../webrtc/whip-feature.ts';
import { VOD_HLS_FEATURE } from '../vod/vod-hls.ts';
import { VOD_HTTP_FEATURE } from '../vod/vod-http.ts';
import { VOD_ADMIN_FEATURE } from '../vod/vod-metrics.ts';

export interface HttpFeatureContext {
  host: MediaHost;
  registry: StreamRegistry;
  limiter: ConnectionLimiter;
  /** The node's own summary (id, roles, addresses, load, mesh status). */
  nodeInfo: () => Record<string, unknown>;
  /** Primary, standby and failovers of a stream published here (mesh nodes only). */
  publishing?: (app: string, stream: string) => PublishingStatus | undefined;
  /** The node's VOD library (the same as `host.vod`). */
  vod?: VodLibrary;
}

export interface HttpFeature {
  readonly name: string;
  /** Which listener serves it: `public` (media, to anyone) or `admin` (the operator's, see http-server.ts; the default, so nothing is public by accident). */
  readonly surface?: 'public' | 'admin';
  register(app: FastifyInstance, ctx: HttpFeatureContext): void | Promise<void>;
}

/** The features every node serves, in registration order. */
export const HTTP_FEATURES: HttpFeature[] = [metricsFeature, dashboardFeature, dashboardPeerFeature, { ...HLS_FEATURE, surface: 'public' }, WS_FLV_FEATURE, RECORDINGS_FEATURE, WHEP_FEATURE, WHIP_FEATURE, VOD_HTTP_FEATURE, VOD_ADMIN_FEATURE, VOD_HLS_FEATURE];
