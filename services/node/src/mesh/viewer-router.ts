/**
 * ViewerRouter: answers "where should this viewer of this stream go?" on every node, from
 * the same live load table (membership heartbeats), with bounded-load rendezvous hashing.
 * The chosen node has the last word: it is asked (admission RPC) and may refuse, in which
 * case the next candidate is asked.
 */
import {
  BoundedLoadRing,
  BusNoRespondersError,
  BusTimeoutError,
  encodeStreamToken,
  hrwScore,
  type Bus,
  type BusSubscription,
  type Membership,
  type NodeView,
} from '@meshcast/mesh';
import { decodeAdmissionRequest, decodeAdmissionResponse, encodeAdmissionRequest, encodeAdmissionResponse, MeshMessageError, type AdmissionResponse } from '@meshcast/proto';
import type { Logger } from '../log.ts';

export interface RouteCandidate {
  node: string;
  rtmp: string;
  flv: string;
  hls: string;
  /** WebRTC playback (WHEP, POST an SDP offer). */
  whep: string;
  load: number;
  cap: number;
}

export interface RouteAnswer extends RouteCandidate {
  app: string;
  stream: string;
  /** The other candidates in order, for clients that want a fallback. */
  next: RouteCandidate[];
  /** Nodes that refused admission on the way. */
  refused: Array<{ node: string; reason: string }>;
}

export class NoPlaybackCapacityError extends Error {
  readonly code = 'NO_CAPACITY';
}

const ASK_AT_MOST = 4;
const ADMIT_TIMEOUT_MS = 500;

export interface LocalAdmission {
  (): { admitted: boolean; reason?: string; viewers: number; capacity: number };
}

export class ViewerRouter {
  readonly ring: BoundedLoadRing;
  private readonly sub: BusSubscription;
  private readonly unwatch: () => void;
  private seq = 0;

  constructor(
    private readonly nodeId: string,
    private readonly bus: Bus,
    private readonly membership: Membership,
    private readonly localAdmission: LocalAdmission,
    loadFactor: number,
    private readonly log: Logger,
  ) {
    this.ring = new BoundedLoadRing({ c: loadFactor });
    this.ring.updateFromTable(membership.table());
    this.unwatch = membership.onChange(() => this.ring.updateFromTable(membership.table()));
    this.sub = bus.subscribe(bus.names.rpc(nodeId, 'admit'), (msg) => {
      const req = decodeAdmissionRequest(msg.data);
      if (req instanceof MeshMessageError) {
        this.log.debug({ err: req.message }, 'undecodable admission request ignored');
        return;
      }
      const a = this.admitHere();
      const res: AdmissionResponse = { requestId: req.requestId, admitted: a.admitted, viewers: a.viewers, capacity: a.capacity };
      if (a.reason) res.reason = a.reason;
      msg.respond(encodeAdmissionResponse(res));
    });
  }

  /**
   * The chosen node's own check: capacity, and the bounded-load cap computed with its exact
   * viewer count. Routers decide from heartbeats up to a beat old and from their own placements
   * only; without this check a hot stream's spill node overshoots its bound by the arrivals of
   * one heartbeat (the placement simulation measured max/avg 1.28 at c = 1.25, 100 nodes).
   */
  admitHere(): { admitted: boolean; reason?: string; viewers: number; capacity: number } {
    const a = this.localAdmission();
    if (!a.admitted) return a;
    // Cut off from the mesh bus this node cannot get remote streams (nor confirm its own): it stops offering itself.
    if (this.bus.status !== 'connected') return { admitted: false, reason: 'cut off from the mesh bus', viewers: a.viewers, capacity: a.capacity };
    const nodes = this.ring.nodes().filter((n) => n.state === 'alive' && !n.draining && n.weight > 0);
    const self = nodes.find((n) => n.id === this.nodeId);
    if (!self) return a;
    let load = 0;
    let weight = 0;
    for (const n of nodes) {
      load += n.id === this.nodeId ? a.viewers : n.load;
      weight += n.weight;
    }
    const cap = Math.ceil((this.ring.c * (load + 1) * self.weight) / weight);
    if (a.viewers >= cap) return { admitted: false, reason: `over its bound (${a.viewers} ≥ ${cap})`, viewers: a.viewers, capacity: a.capacity };
    return a;
  }

  private urls(view: NodeView, app: string, stream: string): Pick<RouteCandidate, 'rtmp' | 'flv' | 'hls' | 'whep'> {
    const a = encodeURIComponent(app);
    const s = encodeURIComponent(stream);
    const { rtmp, http } = view.heartbeat.addresses;
    return { rtmp: `${rtmp}/${a}/${s}`, flv: `${http}/${a}/${s}.flv`, hls: `${http}/${a}/${s}/index.m3u8`, whep: `${http}/${a}/${s}/whep` };
  }

  /** Candidates in placement order, without side effects (what every node would answer). */
  candidates(app: string, stream: string): RouteCandidate[] {
    const token = encodeStreamToken(app, stream);
    const out: RouteCandidate[] = [];
    for (const r of this.ring.rank(token)) {
      const view = this.membership.get(r.id);
      if (!view) continue;
      out.push({ node: r.id, load: r.load, cap: r.cap, ...this.urls(view, app, stream) });
    }
    return out;
  }

  /** Chooses a node for one viewer: first candidate that admits it; counts the placement. */
  async route(app: string, stream: string): Promise<RouteAnswer> {
    const list = this.candidates(app, stream);
    const refused: RouteAnswer['refused'] = [];
    let overBound: RouteCandidate | undefined;
    for (let i = 0; i < list.length && i < ASK_AT_MOST; i++) {
      const c = list[i]!;
      const verdict = await this.ask(c.node, app, stream);
      if (verdict.admitted) {
        this.ring.recordPlacement(c.node);
        return { app, stream, ...c, next: list.filter((x) => x !== c), refused };
      }
      refused.push({ node: c.node, reason: verdict.reason ?? 'refused' });
      if (!overBound && verdict.reason?.startsWith('over its bound')) overBound = c;
    }
    // Everyone asked is over its bound by its own count (stale tables): take the best one that still has room.
    if (overBound) {
      this.ring.recordPlacement(overBound.node);
      return { app, stream, ...overBound, next: list.filter((x) => x !== overBound), refused };
    }
    throw new NoPlaybackCapacityError(
      list.length === 0 ? 'no playback node is alive with room' : `every candidate refused: ${refused.map((r) => `${r.node} (${r.reason})`).join(', ')}`,
    );
  }

  private async ask(node: string, app: string, stream: string): Promise<{ admitted: boolean; reason?: string }> {
    if (node === this.nodeId) return this.admitHere();
    const requestId = `${this.nodeId}-${++this.seq}`;
    try {
      const data = await this.bus.request(
        this.bus.names.rpc(node, 'admit'),
        encodeAdmissionRequest({ requestId, kind: 'viewer', app, stream, from: this.nodeId, sentAt: Date.now() }),
        { timeoutMs: ADMIT_TIMEOUT_MS },
      );
      const res = decodeAdmissionResponse(data);
      if (res instanceof MeshMessageError) return { admitted: false, reason: `bad admission answer: ${res.message}` };
      return res.admitted ? { admitted: true } : { admitted: false, reason: res.reason ?? 'at capacity' };
    } catch (err) {
      if (err instanceof BusTimeoutError || err instanceof BusNoRespondersError) return { admitted: false, reason: 'no answer' };
      return { admitted: false, reason: err instanceof Error ? err.message : String(err) };
    }
  }

  /** The best other ingest node for a publisher this node will not take (draining or full). */
  bestIngest(app: string, stream: string): NodeView | undefined {
    const token = encodeStreamToken(app, stream);
    let best: NodeView | undefined;
    let bestScore = -Infinity;
    for (const n of this.membership.table()) {
      if (n.self || n.state !== 'alive' || n.heartbeat.draining || !n.heartbeat.roles.includes('ingest')) continue;
      const score = hrwScore(token, n.id, Math.max(1, n.heartbeat.capacity));
      if (score > bestScore) {
        bestScore = score;
        best = n;
      }
    }
    return best;
  }

  stop(): void {
    this.sub.unsubscribe();
    this.unwatch();
  }
}
