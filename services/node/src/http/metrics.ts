/**
 * Prometheus `/metrics` (on the admin listener): one prom-client Registry per node (several
 * nodes can share a process in tests), labelled with the node id, followed by prom-client's
 * default process metrics (event-loop lag, CPU, memory, GC, handles) under their standard
 * names (`process_*`, `nodejs_*`), so stock Node.js dashboards and alerts work unchanged; only
 * meshcast's own metrics carry the `meshcast_` prefix. The process metrics describe the
 * process, so one registry per process collects them, unlabelled, whatever the number of
 * nodes in it: prom-client starts an event-loop monitor and a GC observer per collection
 * that it never stops.
 *
 * Nothing here runs per frame. Gauges and counters are brought up to date when scraped,
 * from what the node already counts: the session table, each hub's stats, the limiter and
 * the node summary. Counters built from hub stats stay monotonic across streams that come
 * and go: a hub's final stats are added to a retired total when the registry drops it.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { FastifyInstance } from 'fastify';
import { isEncoder, type StreamHub } from '../media/stream-hub.ts';
import type { SessionInfo, SessionProtocol, SessionRole } from '../sessions.ts';
import type { HttpFeature, HttpFeatureContext } from './features.ts';
import { registerRecordingMetrics } from '../recording/recording-metrics.ts';
import { registerVodMetrics } from '../vod/vod-metrics.ts';

const PROTOCOLS: readonly SessionProtocol[] = ['rtmp', 'http-flv', 'ws-flv', 'hls', 'whep', 'whip'];
const ROLES: readonly SessionRole[] = ['idle', 'publisher', 'viewer', 'relay-pull'];
const BUS_STATUSES = ['connected', 'disconnected', 'reconnecting', 'closed'] as const;
const NODE_STATES = ['created', 'running', 'draining', 'stopped'] as const;
const STREAM_SOURCES = ['rtmp', 'whip', 'relay', 'pull', 'none'] as const;

type HubTotals = { framesIn: number; bytesIn: number; bytesOut: number; droppedFrames: number; evictedSinks: number };

export interface NodeMetrics {
  readonly registry: Registry;
  /** Brings every gauge and counter up to date (the route calls it before each scrape). */
  refresh(): void;
  /** The exposition text, refreshed: the node's metrics, then the process's. */
  scrape(): Promise<string>;
  close(): void;
}

let processRegistry: Registry | undefined;
/** The process's default metrics, collected once per process. */
export function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

export function createNodeMetrics(ctx: HttpFeatureContext): NodeMetrics {
  const { host, registry: streams, limiter } = ctx;
  const registry = new Registry();
  registry.setDefaultLabels({ node: host.config.node_id });
  const registers = [registry];
  registerRecordingMetrics(ctx, registers);
  registerVodMetrics(ctx, registers);

  const connections = new Gauge({ name: 'meshcast_connections', help: 'Open sessions by protocol and role (idle = handshaking or not yet publishing/playing).', labelNames: ['protocol', 'role'], registers });
  const admitted = new Gauge({ name: 'meshcast_connections_admitted', help: 'Connections holding a slot in the node-wide connection limit.', registers });
  const connectionLimit = new Gauge({ name: 'meshcast_connections_limit', help: 'The node-wide connection limit.', registers });
  const publishers = new Gauge({ name: 'meshcast_publishers', help: 'Publishing sessions by protocol.', labelNames: ['protocol'], registers });
  const viewers = new Gauge({ name: 'meshcast_viewers', help: 'Viewer sessions by protocol; hls counts streams being segmented for HLS players, not each player (other nodes\' relays are in meshcast_relay_pulls).', labelNames: ['protocol'], registers });
  const relayPulls = new Gauge({ name: 'meshcast_relay_pulls', help: 'Other nodes\' relays pulling a stream from this node (its child relays).', registers });
  const streamsGauge = new Gauge({ name: 'meshcast_streams', help: 'Streams present on this node by where their media comes from (none = viewers waiting).', labelNames: ['source'], registers });
  const hubSinks = new Gauge({ name: 'meshcast_stream_sinks', help: 'Sinks attached to all stream hubs (viewers and child relays).', registers });

  const framesIn = new Counter({ name: 'meshcast_frames_in_total', help: 'Media and data frames received from publishers and relays.', registers });
  const mediaIn = new Counter({ name: 'meshcast_media_bytes_in_total', help: 'Media payload bytes received from publishers and relays.', registers });
  const mediaOut = new Counter({ name: 'meshcast_media_bytes_out_total', help: 'Media bytes written to viewers and child relays (FLV/RTMP framing included).', registers });
  const dropped = new Counter({ name: 'meshcast_dropped_frames_total', help: 'Frames not sent to viewers that had fallen behind.', registers });
  const evicted = new Counter({ name: 'meshcast_evicted_viewers_total', help: 'Viewers closed for staying behind longer than viewer_max_lag_ms.', registers });
  const sessionBytes = new Counter({
    name: 'meshcast_session_bytes_total',
    help: 'Bytes on the wire by direction and protocol, sampled per scrape from open sessions (a closing session\'s last bytes since the previous scrape are not counted).',
    labelNames: ['direction', 'protocol'],
    registers,
  });

  const relaysHeld = new Gauge({ name: 'meshcast_relays_held', help: 'Relays of remote streams this node runs.', registers });
  const leasesHeld = new Gauge({ name: 'meshcast_leases_held', help: 'Stream ownership leases this node holds.', registers });
  const ownershipChanges = new Counter({ name: 'meshcast_ownership_changes_total', help: 'Streams this node took ownership of (acquired) or gave up (released), counted as RTMP publishers attach and leave.', labelNames: ['change'], registers });
  const busStatus = new Gauge({ name: 'meshcast_bus_status', help: '1 for the mesh bus\'s current status, 0 for the others.', labelNames: ['kind', 'status'], registers });
  const nodeState = new Gauge({ name: 'meshcast_node_state', help: '1 for the node\'s current state, 0 for the others.', labelNames: ['state'], registers });
  const info = new Gauge({ name: 'meshcast_node_info', help: 'Constant 1, labelled with the node\'s roles.', labelNames: ['roles'], registers });
  info.set({ roles: host.config.roles.join(',') }, 1);

  // Series that exist from the first scrape, at zero.
  ownershipChanges.inc({ change: 'acquired' }, 0);
  ownershipChanges.inc({ change: 'released' }, 0);
  for (const p of PROTOCOLS) {
    sessionBytes.inc({ direction: 'in', protocol: p }, 0);
    sessionBytes.inc({ direction: 'out', protocol: p }, 0);
  }

  // Hub stats of streams that have closed, so totals never go down.
  const retired: HubTotals = { framesIn: 0, bytesIn: 0, bytesOut: 0, droppedFrames: 0, evictedSinks: 0 };
  // What each counter last reported, to increment by the difference.
  const reported: HubTotals = { framesIn: 0, bytesIn: 0, bytesOut: 0, droppedFrames: 0, evictedSinks: 0 };
  // Bytes of open sessions as of the previous scrape.
  const lastSessionBytes = new Map<string, { in: number; out: number }>();

  const watched = new WeakSet<StreamHub>();
  const watchHub = (hub: StreamHub): void => {
    if (watched.has(hub)) return;
    watched.add(hub);
    hub.on('publish', (p: { kind: string }) => {
      if (isEncoder(p)) ownershipChanges.inc({ change: 'acquired' });
    });
    hub.on('unpublish', (p: { kind: string }) => {
      if (isEncoder(p)) ownershipChanges.inc({ change: 'released' });
    });
  };
  const onOpened = (hub: StreamHub): void => watchHub(hub);
  const onClosed = (hub: StreamHub): void => {
    retired.framesIn += hub.stats.framesIn;
    retired.bytesIn += hub.stats.bytesIn;
    retired.bytesOut += hub.stats.bytesOut;
    retired.droppedFrames += hub.stats.droppedFrames;
    retired.evictedSinks += hub.stats.evictedSinks;
  };
  for (const hub of streams.list()) watchHub(hub);
  streams.on('opened', onOpened);
  streams.on('closed', onClosed);

  const advance = (counter: Counter, key: keyof HubTotals, total: number): void => {
    const delta = total - reported[key];
    if (delta > 0) {
      counter.inc(delta);
      reported[key] = total;
    }
  };

  function refreshSessions(list: SessionInfo[]): void {
    connections.reset();
    for (const p of PROTOCOLS) {
      for (const r of ROLES) connections.set({ protocol: p, role: r }, 0);
      publishers.set({ protocol: p }, 0);
      viewers.set({ protocol: p }, 0);
    }
    let pulls = 0;
    const seen = new Set<string>();
    for (const s of list) {
      connections.inc({ protocol: s.protocol, role: s.role });
      if (s.role === 'publisher') publishers.inc({ protocol: s.protocol });
      else if (s.role === 'viewer') viewers.inc({ protocol: s.protocol });
      else if (s.role === 'relay-pull') pulls++;
      seen.add(s.id);
      const last = lastSessionBytes.get(s.id) ?? { in: 0, out: 0 };
      if (s.bytesIn > last.in) sessionBytes.inc({ direction: 'in', protocol: s.protocol }, s.bytesIn - last.in);
      if (s.bytesOut > last.out) sessionBytes.inc({ direction: 'out', protocol: s.protocol }, s.bytesOut - last.out);
      lastSessionBytes.set(s.id, { in: Math.max(last.in, s.bytesIn), out: Math.max(last.out, s.bytesOut) });
    }
    for (const id of lastSessionBytes.keys()) if (!seen.has(id)) lastSessionBytes.delete(id);
    relayPulls.set(pulls);
  }

  function refreshHubs(): void {
    const totals: HubTotals = { ...retired };
    const bySource: Record<(typeof STREAM_SOURCES)[number], number> = { rtmp: 0, whip: 0, relay: 0, pull: 0, none: 0 };
    let sinks = 0;
    for (const hub of streams.list()) {
      totals.framesIn += hub.stats.framesIn;
      totals.bytesIn += hub.stats.bytesIn;
      totals.bytesOut += hub.stats.bytesOut;
      totals.droppedFrames += hub.stats.droppedFrames;
      totals.evictedSinks += hub.stats.evictedSinks;
      bySource[hub.publisher?.kind ?? 'none']++;
      sinks += hub.sinkCount;
    }
    for (const src of STREAM_SOURCES) streamsGauge.set({ source: src }, bySource[src]);
    hubSinks.set(sinks);
    advance(framesIn, 'framesIn', totals.framesIn);
    advance(mediaIn, 'bytesIn', totals.bytesIn);
    advance(mediaOut, 'bytesOut', totals.bytesOut);
    advance(dropped, 'droppedFrames', totals.droppedFrames);
    advance(evicted, 'evictedSinks', totals.evictedSinks);
    if (!hasMeshSummary) relaysHeld.set(bySource.relay);
  }

  let hasMeshSummary = false;
  function refreshNode(): void {
    const summary = ctx.nodeInfo();
    const state = typeof summary.state === 'string' ? summary.state : 'running';
    for (const s of NODE_STATES) nodeState.set({ state: s }, s === state ? 1 : 0);
    hasMeshSummary = typeof summary.relays === 'number';
    if (typeof summary.relays === 'number') relaysHeld.set(summary.relays);
    leasesHeld.set(typeof summary.leases === 'number' ? summary.leases : 0);
    const bus = summary.bus as { kind?: unknown; status?: unknown } | undefined;
    busStatus.reset();
    if (bus && typeof bus.kind === 'string') {
      for (const s of BUS_STATUSES) busStatus.set({ kind: bus.kind, status: s }, s === bus.status ? 1 : 0);
    }
  }

  function refresh(): void {
    admitted.set(limiter.connections);
    connectionLimit.set(limiter.maxTotal);
    refreshSessions(host.sessions.list());
    refreshNode();
    refreshHubs();
  }

  return {
    registry,
    refresh,
    async scrape() {
      refresh();
      const [own, proc] = await Promise.all([registry.metrics(), processMetrics().metrics()]);
      return `${own}${own.endsWith('\n') ? '' : '\n'}${proc}`;
    },
    close() {
      streams.off('opened', onOpened);
      streams.off('closed', onClosed);
      registry.clear();
    },
  };
}

/** `GET /metrics` in the Prometheus text format. */
export const metricsFeature: HttpFeature = {
  name: 'metrics',
  surface: 'admin',
  register(app: FastifyInstance, ctx: HttpFeatureContext) {
    const metrics = createNodeMetrics(ctx);
    app.addHook('onClose', async () => metrics.close());
    app.get('/metrics', async (_req, reply) => {
      const text = await metrics.scrape();
      return reply.header('Content-Type', metrics.registry.contentType).header('Cache-Control', 'no-store').send(text);
    });
  },
};
