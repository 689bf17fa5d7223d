/**
 * Operator RPCs a node answers over the bus (what `meshctl` calls), next to the admission RPC.
 * msgpack maps with `v: 1` like every mesh message; `op` names the message:
 *
 * | subject                        | request                        | reply |
 * |--------------------------------|--------------------------------|-------|
 * | `<prefix>.node.<id>.rpc.kick`  | `{ op: 'kick', session, … }`   | `{ op: 'kickResult', node, session, kicked }` |
 * | `<prefix>.node.<id>.rpc.drain` | `{ op: 'drain', reason?, … }`  | `{ op: 'drainResult', node, accepted }`, then the node drains (stops admitting, `bye`, exits 0) |
 * | `<prefix>.node.<id>.rpc.stats` | `{ op: 'stats', … }`           | `{ op: 'statsResult', node, state, sessions, viewers, publishers, relayPulls, streams: [{ app, stream, live, publisher, viewers, relayPulls, publishing? }], streamsTotal, rss, uptimeMs, sentAt }` |
 *
 * The full codec (every field checked, used by `meshctl` and `meshctl decode`) is in
 * tools/src/meshctl/control-messages.ts. Wiring, once the mesh bus exists (e.g. end of `NodeMesh.start`):
 *   `const control = startNodeControl({ bus, nodeId: cfg.node_id, node, log })` … `control.stop()` before the bus closes.
 * A second call for the same bus returns the first handle.
 */
import { Packr, Unpackr } from 'msgpackr';
import type { Bus, BusSubscription } from '@meshcast/mesh';
import type { Logger } from '../log.ts';
import type { SessionInfo } from '../sessions.ts';
import type { PublishingStatus } from './publishing-status.ts';

/** What node-control needs of the node (MediaNode has all of it). */
export interface ControlledNode {
  readonly sessions: { get(id: string): { kick(reason: string): void } | undefined; list(): SessionInfo[] };
  readonly registry: { list(): Array<{ app: string; stream: string; isLive: boolean; publisher: { kind: string } | undefined | null }> };
  nodeInfo(): Record<string, unknown>;
  stop(reason?: string): Promise<void>;
}

export interface NodeControlOptions {
  bus: Bus;
  nodeId: string;
  node: ControlledNode;
  log: Logger;
  /** Starts the graceful stop. Default: the process's SIGTERM path (run-node drains, exits 0) if one is installed, else `node.stop()`. */
  drain?: (reason: string) => void;
  /** Primary, standby and failovers of a stream this node publishes or holds the standby of. */
  publishing?: (app: string, stream: string) => PublishingStatus | undefined;
}

export interface NodeControl {
  stop(): void;
}

const MAX_STATS_STREAMS = 1000;
const packr = new Packr({ useRecords: false, moreTypes: false, encodeUndefinedAsNil: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false });
const running = new WeakMap<Bus, NodeControl>();

function readRequest(data: Uint8Array, op: string): Record<string, unknown> | undefined {
  try {
    const o: unknown = unpackr.unpack(data);
    if (o === null || typeof o !== 'object' || Array.isArray(o)) return undefined;
    const m = o as Record<string, unknown>;
    return m['v'] === 1 && m['op'] === op ? m : undefined;
  } catch {
    return undefined;
  }
}
const text = (x: unknown): string | undefined => (typeof x === 'string' && x.length <= 1024 ? x : undefined);

export function startNodeControl(opts: NodeControlOptions): NodeControl {
  const existing = running.get(opts.bus);
  if (existing) return existing;
  const { bus, nodeId, node } = opts;
  const log = opts.log.child({ component: 'node-control' });
  const drain =
    opts.drain ??
    ((reason: string) => {
      if (process.listenerCount('SIGTERM') > 0) process.emit('SIGTERM', 'SIGTERM');
      else void node.stop(reason);
    });
  let draining = false;
  const subs: BusSubscription[] = [];
  const on = (op: string, handle: (req: Record<string, unknown>) => Record<string, unknown>): void => {
    subs.push(
      bus.subscribe(bus.names.rpc(nodeId, op), (msg) => {
        const req = readRequest(msg.data, op);
        if (!req) return void log.debug({ op }, 'undecodable control request ignored');
        try {
          msg.respond(packr.pack({ v: 1, ...handle(req) }));
        } catch (err) {
          log.warn({ op, err: String(err) }, 'control request failed');
        }
      }),
    );
  };

  on('kick', (req) => {
    const id = text(req['session']) ?? '';
    const s = node.sessions.get(id);
    if (s) {
      log.info({ session: id, from: text(req['from']) }, 'session kicked over the mesh');
      s.kick(text(req['reason']) ?? 'kicked by an operator');
    }
    return { op: 'kickResult', node: nodeId, session: id, kicked: Boolean(s) };
  });

  on('drain', (req) => {
    if (!draining) {
      draining = true;
      const reason = text(req['reason']) ?? 'drain requested by an operator';
      log.info({ from: text(req['from']), reason }, 'drain requested over the mesh');
      setTimeout(() => drain(reason), 50).unref(); // answer first: the drain closes the bus
    }
    return { op: 'drainResult', node: nodeId, accepted: true };
  });

  on('stats', () => {
    type S = { app: string; stream: string; live: boolean; publisher: string | null; viewers: number; relayPulls: number; publishing?: PublishingStatus };
    const per = new Map<string, S>();
    for (const h of node.registry.list()) {
      const e: S = { app: h.app, stream: h.stream, live: h.isLive, publisher: h.publisher?.kind ?? null, viewers: 0, relayPulls: 0 };
      const publishing = opts.publishing?.(h.app, h.stream);
      if (publishing) e.publishing = publishing;
      per.set(`${h.app}/${h.stream}`, e);
    }
    const count = { viewer: 0, publisher: 0, 'relay-pull': 0, idle: 0 };
    const sessions = node.sessions.list();
    for (const s of sessions) {
      count[s.role]++;
      if (s.app === undefined || s.stream === undefined || (s.role !== 'viewer' && s.role !== 'relay-pull')) continue;
      const key = `${s.app}/${s.stream}`;
      let e = per.get(key);
      if (!e) per.set(key, (e = { app: s.app, stream: s.stream, live: false, publisher: null, viewers: 0, relayPulls: 0 }));
      if (s.role === 'viewer') e.viewers++;
      else e.relayPulls++;
    }
    const streams = [...per.values()].sort((a, b) => b.viewers + b.relayPulls - (a.viewers + a.relayPulls));
    const state = node.nodeInfo()['state'];
    return {
      op: 'statsResult',
      node: nodeId,
      state: typeof state === 'string' ? state : 'unknown',
      sessions: sessions.length,
      viewers: count.viewer,
      publishers: count.publisher,
      relayPulls: count['relay-pull'],
      streams: streams.slice(0, MAX_STATS_STREAMS),
      streamsTotal: streams.length,
      rss: process.memoryUsage.rss(),
      uptimeMs: Math.round(process.uptime() * 1000),
      sentAt: Date.now(),
    };
  });

  const handle: NodeControl = {
    stop() {
      for (const s of subs.splice(0)) s.unsubscribe();
      running.delete(bus);
    },
  };
  running.set(bus, handle);
  return handle;
}
