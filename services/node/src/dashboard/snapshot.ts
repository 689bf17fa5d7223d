/**
 * The dashboard's view of the mesh, built on the node that serves the page: the member
 * table, every stream with its owner and relay tree (from the same API routes the page
 * could call itself), and viewers per node (each peer's `/api/v1/dashboard/local`, asked on
 * its public listener with this node's mesh credential: peers cannot reach each other's
 * loopback admin listeners).
 *
 * Mesh routes are called in-process with `inject`, so a node without a mesh (or with its
 * bus down) still answers with what it knows locally.
 */
import type { FastifyInstance } from 'fastify';
import type { HttpFeatureContext } from '../http/features.ts';
import { signCredential } from '../mesh/mesh-credential.ts';
import { isEncoder } from '../media/stream-hub.ts';
import { MESH_CREDENTIAL_HEADER, encodeCredentialHeader } from './peer-credential.ts';
import { decodePublishingStatus, mergePublishing, type PublishingStatus, type PublishingView } from '../mesh/publishing-status.ts';

export interface DashboardNode {
  id: string;
  state: string;
  self: boolean;
  roles: string[];
  http: string | null;
  rtmp: string | null;
  capacity: number;
  viewers: number;
  publishers: number;
  egressBps: number;
  ingressBps: number;
  cpu: number;
  streamsOwned: number;
  relaysHeld: number;
  draining: boolean;
  /** Milliseconds since the node's last heartbeat was sent (its own clock). */
  heartbeatAgeMs: number | null;
}

export interface DashboardRelay {
  node: string;
  parent: string;
  children: number;
}

/** One stream as one node holds it. */
export interface DashboardStreamAtNode {
  /** Where the node gets the stream from: `rtmp` (published here), `relay`, `pull`, or `none` (viewers waiting). */
  source: string;
  live: boolean;
  /** Players on that node (relays pulling from it are not players). */
  viewers: number;
  /** Players by protocol (`hls` counts the stream's running HLS segmenter, not each HLS player). */
  protocols: Record<string, number>;
  bytesOut: number;
  droppedFrames: number;
}

export interface DashboardVideo {
  codec: string | null;
  width: number | null;
  height: number | null;
  fps: number | null;
}

export interface DashboardStream {
  app: string;
  stream: string;
  key: string;
  owner: string | null;
  epoch: number | null;
  startedAt: number | null;
  video: DashboardVideo | null;
  audio: string | null;
  relays: DashboardRelay[];
  nodes: Record<string, DashboardStreamAtNode>;
  viewers: number;
  /** Primary and standby encoder and the failovers, merged from every node's part (null outside a mesh). */
  publishing: PublishingView | null;
}

export interface DashboardSnapshot {
  at: number;
  self: string;
  /** Whether this node is a mesh member (else only local data is shown). */
  mesh: boolean;
  bus: { kind: string; status: string } | null;
  nodes: DashboardNode[];
  streams: DashboardStream[];
  /** Peers whose streams could not be read this time. */
  unreachable: string[];
}

/** Relay trees are read for at most this many streams per snapshot. */
const MAX_TREES = 100;
const PEER_TIMEOUT_MS = 800;

/** One stream as one node has it: what `GET /api/v1/dashboard/local` answers, per stream. */
export interface LocalStreamRow {
  app: string;
  stream: string;
  live: boolean;
  publisher: { kind: string } | null;
  /** Viewer sessions of the stream (relay pulls excluded). */
  viewers: number;
  protocols: Record<string, number>;
  bytesOut: number;
  droppedFrames: number;
  metadata: Record<string, unknown> | null;
  /** This node's part of who publishes the stream (mesh nodes that publish it or hold its standby). */
  publishing: PublishingStatus | null;
}

interface MeshStreamRow {
  app: string;
  stream: string;
  owner?: string;
  epoch?: number;
  startedAt?: number;
  tracks?: { video?: { codec?: string; width?: number; height?: number; fps?: number }; audio?: { codec?: string; sampleRate?: number; channels?: number } };
}

const num = (v: unknown, fallback = 0): number => (typeof v === 'number' && Number.isFinite(v) ? v : fallback);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/** A node's streams with their viewer sessions by protocol (what it serves to peers as `/api/v1/dashboard/local`). */
export function localStreams(ctx: HttpFeatureContext): LocalStreamRow[] {
  const players = new Map<string, Record<string, number>>();
  for (const s of ctx.host.sessions.list()) {
    if (s.role !== 'viewer' || s.app === undefined || s.stream === undefined) continue;
    const key = `${s.app}/${s.stream}`;
    const byProtocol = players.get(key) ?? {};
    byProtocol[s.protocol] = (byProtocol[s.protocol] ?? 0) + 1;
    players.set(key, byProtocol);
  }
  return ctx.registry.list().map((hub) => {
    const protocols = players.get(hub.key) ?? {};
    return {
      app: hub.app,
      stream: hub.stream,
      live: hub.isLive,
      publisher: hub.publisher ? { kind: hub.publisher.kind } : null,
      viewers: Object.values(protocols).reduce((a, b) => a + b, 0),
      protocols,
      bytesOut: hub.stats.bytesOut,
      droppedFrames: hub.stats.droppedFrames,
      metadata: hub.metadata ? { ...hub.metadata } : null,
      publishing: ctx.publishing?.(hub.app, hub.stream) ?? null,
    };
  });
}

export class SnapshotBuilder {
  constructor(
    private readonly app: FastifyInstance,
    private readonly ctx: HttpFeatureContext,
  ) {}

  private async injectJson<T>(url: string): Promise<T | undefined> {
    try {
      const r = await this.app.inject({ method: 'GET', url });
      return r.statusCode === 200 ? (r.json() as T) : undefined;
    } catch {
      return undefined;
    }
  }

  /** This node's streams with their viewer sessions by protocol (served to peers as `/api/v1/dashboard/local`). */
  localStreams(): LocalStreamRow[] {
    return localStreams(this.ctx);
  }

  /** A peer's streams: its `/api/v1/dashboard/local` on its public listener, shown our mesh credential. */
  private async peerStreams(http: string): Promise<LocalStreamRow[] | undefined> {
    const get = async (path: string): Promise<LocalStreamRow[] | undefined | 404> => {
      const { mesh_secret: secret } = this.ctx.host.config.mesh;
      const headers = secret ? { [MESH_CREDENTIAL_HEADER]: encodeCredentialHeader(signCredential(secret, this.ctx.host.config.node_id)) } : undefined;
      const r = await fetch(`${http}${path}`, { headers, signal: AbortSignal.timeout(PEER_TIMEOUT_MS) });
      if (r.status === 404) return 404;
      if (!r.ok) return undefined;
      const body = (await r.json()) as { streams?: LocalStreamRow[] };
      return Array.isArray(body.streams) ? body.streams : undefined;
    };
    try {
      const rows = await get('/api/v1/dashboard/local');
      return rows === 404 ? undefined : rows;
    } catch {
      return undefined;
    }
  }

  async build(): Promise<DashboardSnapshot> {
    const info = this.ctx.nodeInfo();
    const selfId = this.ctx.host.config.node_id;
    const now = Date.now();
    const busInfo = info.bus as { kind?: unknown; status?: unknown } | undefined;
    const bus = busInfo && typeof busInfo.kind === 'string' ? { kind: busInfo.kind, status: String(busInfo.status) } : null;

    const [meshNodes, meshStreams] = await Promise.all([
      this.injectJson<{ nodes: Array<Record<string, unknown>> }>('/api/v1/mesh/nodes'),
      this.injectJson<{ streams: MeshStreamRow[] }>('/api/v1/mesh/streams'),
    ]);
    const mesh = meshNodes !== undefined;

    const nodes: DashboardNode[] = (meshNodes?.nodes ?? []).map((n) => {
      const addresses = (n.addresses ?? {}) as { http?: unknown; rtmp?: unknown };
      return {
        id: String(n.id),
        state: n.draining === true && n.state === 'alive' ? 'draining' : String(n.state),
        self: n.self === true,
        roles: Array.isArray(n.roles) ? n.roles.map(String) : [],
        http: str(addresses.http),
        rtmp: str(addresses.rtmp),
        capacity: num(n.capacity),
        viewers: num(n.viewers),
        publishers: num(n.publishers),
        egressBps: num(n.egressBps),
        ingressBps: num(n.ingressBps),
        cpu: num(n.cpu),
        streamsOwned: num(n.streamsOwned),
        relaysHeld: num(n.relaysHeld),
        draining: n.draining === true,
        heartbeatAgeMs: typeof n.sentAt === 'number' ? Math.max(0, now - n.sentAt) : null,
      };
    });
    if (!nodes.some((n) => n.self)) nodes.unshift(this.selfRow(info, selfId));

    // Each node's own streams: ours directly, peers' over HTTP, in parallel.
    const perNode = new Map<string, LocalStreamRow[]>([[selfId, this.localStreams()]]);
    const unreachable: string[] = [];
    await Promise.all(
      nodes
        .filter((n) => !n.self && n.http && (n.state === 'alive' || n.state === 'suspect' || n.state === 'draining'))
        .map(async (n) => {
          const rows = await this.peerStreams(n.http as string);
          if (rows) perNode.set(n.id, rows);
          else unreachable.push(n.id);
        }),
    );

    const streams = new Map<string, DashboardStream>();
    const entry = (app: string, stream: string): DashboardStream => {
      const key = `${app}/${stream}`;
      let s = streams.get(key);
      if (!s) {
        s = { app, stream, key, owner: null, epoch: null, startedAt: null, video: null, audio: null, relays: [], nodes: {}, viewers: 0, publishing: null };
        streams.set(key, s);
      }
      return s;
    };
    for (const m of meshStreams?.streams ?? []) {
      const s = entry(m.app, m.stream);
      s.owner = m.owner ?? null;
      s.epoch = typeof m.epoch === 'number' ? m.epoch : null;
      s.startedAt = typeof m.startedAt === 'number' ? m.startedAt : null;
      const v = m.tracks?.video;
      if (v?.codec) s.video = { codec: v.codec, width: v.width ?? null, height: v.height ?? null, fps: v.fps ?? null };
      if (m.tracks?.audio?.codec) s.audio = m.tracks.audio.codec;
    }
    const parts = new Map<string, PublishingStatus[]>();
    for (const [nodeId, rows] of perNode) {
      for (const r of rows) {
        // A peer's part is checked before it is shown (it came over HTTP).
        const part = r.publishing ? decodePublishingStatus(r.publishing) : undefined;
        if (part && !(part instanceof Error)) {
          const key = `${r.app}/${r.stream}`;
          parts.set(key, [...(parts.get(key) ?? []), part]);
        }
        // Hubs nobody publishes nor watches are transient; show only what carries media or has players.
        if (!r.live && r.viewers === 0) continue;
        const s = entry(r.app, r.stream);
        const source = r.publisher?.kind ?? 'none';
        s.nodes[nodeId] = { source, live: r.live, viewers: num(r.viewers), protocols: r.protocols ?? {}, bytesOut: num(r.bytesOut), droppedFrames: num(r.droppedFrames) };
        const encoder = source === 'rtmp' || source === 'whip';
        if (encoder && s.owner === null) s.owner = nodeId;
        if (encoder && !s.video && r.metadata) s.video = videoFromMetadata(r.metadata);
        if (encoder && !s.audio && r.metadata) s.audio = audioFromMetadata(r.metadata);
      }
    }

    const list = [...streams.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    if (mesh) {
      await Promise.all(
        list.slice(0, MAX_TREES).map(async (s) => {
          const r = await this.injectJson<{ relays: Array<Record<string, unknown>> }>(
            `/api/v1/mesh/relays/${encodeURIComponent(s.app)}/${encodeURIComponent(s.stream)}`,
          );
          s.relays = (r?.relays ?? []).map((c) => ({ node: String(c.node), parent: String(c.parent), children: num(c.children) }));
        }),
      );
    }
    for (const s of list) {
      for (const at of Object.values(s.nodes)) s.viewers += at.viewers;
      const p = parts.get(s.key);
      if (p) s.publishing = mergePublishing(p);
    }
    return { at: now, self: selfId, mesh, bus, nodes, streams: list, unreachable };
  }

  private selfRow(info: Record<string, unknown>, selfId: string): DashboardNode {
    const viewers = this.ctx.host.sessions.list().filter((s) => s.role === 'viewer').length;
    const publishers = this.ctx.host.sessions.list().filter((s) => s.role === 'publisher').length;
    return {
      id: selfId,
      state: info.state === 'running' ? 'alive' : String(info.state ?? 'alive'),
      self: true,
      roles: this.ctx.host.config.roles,
      http: str(info.http),
      rtmp: str(info.rtmp),
      capacity: this.ctx.host.config.mesh.capacity,
      viewers,
      publishers,
      egressBps: 0,
      ingressBps: 0,
      cpu: 0,
      streamsOwned: this.ctx.registry.list().filter((h) => isEncoder(h.publisher)).length,
      relaysHeld: this.ctx.registry.list().filter((h) => h.publisher?.kind === 'relay').length,
      draining: info.state === 'draining',
      heartbeatAgeMs: null,
    };
  }
}

const VIDEO_CODECS: Record<string, string> = { '7': 'H.264', '12': 'HEVC', avc1: 'H.264', hvc1: 'HEVC', av01: 'AV1', vp09: 'VP9' };
const AUDIO_CODECS: Record<string, string> = { '10': 'AAC', '2': 'MP3', mp4a: 'AAC', Opus: 'Opus', '.mp3': 'MP3' };

function videoFromMetadata(m: Record<string, unknown>): DashboardVideo | null {
  if (m.videocodecid === undefined && m.width === undefined) return null;
  const id = m.videocodecid === undefined ? '' : String(m.videocodecid);
  return {
    codec: VIDEO_CODECS[id] ?? (id || null),
    width: typeof m.width === 'number' ? m.width : null,
    height: typeof m.height === 'number' ? m.height : null,
    fps: typeof m.framerate === 'number' ? m.framerate : null,
  };
}

function audioFromMetadata(m: Record<string, unknown>): string | null {
  if (m.audiocodecid === undefined) return null;
  const id = String(m.audiocodecid);
  return AUDIO_CODECS[id] ?? id;
}
