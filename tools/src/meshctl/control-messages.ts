/**
 * The operator RPCs a node answers (services/node/src/mesh/node-control.ts):
 * `<prefix>.node.<id>.rpc.kick | .drain | .stats`. msgpack maps with `v: 1` and an `op`
 * naming the message. Encoders add `v`; decoders never throw (they return an Error).
 */
import { Packr, Unpackr } from 'msgpackr';
import { decodePublishingStatus, type PublishingStatus } from '@meshcast/node';

export const CONTROL_SCHEMA_VERSION = 1;
export const CONTROL_VERBS = ['kick', 'drain', 'stats'] as const;
export type ControlVerb = (typeof CONTROL_VERBS)[number];

export interface KickRequest { op: 'kick'; session: string; reason?: string; from?: string; sentAt: number }
export interface KickResult { op: 'kickResult'; node: string; session: string; kicked: boolean }
export interface DrainRequest { op: 'drain'; reason?: string; from?: string; sentAt: number }
export interface DrainResult { op: 'drainResult'; node: string; accepted: boolean; reason?: string }
export interface StatsRequest { op: 'stats'; from?: string; sentAt: number }
export interface StreamStats {
  app: string;
  stream: string;
  live: boolean;
  publisher: string | null;
  viewers: number;
  relayPulls: number;
  /** Primary, standby and failovers as this node sees them (nodes that publish the stream or hold its standby). */
  publishing?: PublishingStatus;
}
export interface StatsResult {
  op: 'statsResult';
  node: string;
  state: string;
  sessions: number;
  viewers: number;
  publishers: number;
  relayPulls: number;
  streams: StreamStats[];
  streamsTotal: number;
  rss: number;
  uptimeMs: number;
  sentAt: number;
}
export type ControlMessage = KickRequest | KickResult | DrainRequest | DrainResult | StatsRequest | StatsResult;

const packr = new Packr({ useRecords: false, moreTypes: false, encodeUndefinedAsNil: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

export function encodeControlMessage(m: ControlMessage): Buffer {
  const out: Record<string, unknown> = { v: CONTROL_SCHEMA_VERSION };
  for (const [k, val] of Object.entries(m)) if (val !== undefined) out[k] = val;
  return packr.pack(out);
}

type Obj = Record<string, unknown>;
const str = (x: unknown, max = 1024): x is string => typeof x === 'string' && x.length <= max;
const num = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x >= 0;

function copyOptStr(o: Obj, out: Obj, ...keys: string[]): boolean {
  for (const k of keys) {
    if (o[k] == null) continue;
    if (!str(o[k])) return false;
    out[k] = o[k];
  }
  return true;
}

/** Decodes any control message; the result's `op` says which. */
export function decodeControlMessage(buf: Uint8Array): ControlMessage | Error {
  if (!(buf instanceof Uint8Array) || buf.length === 0) return new Error('control message: empty payload');
  let raw: unknown;
  try {
    raw = unpackr.unpack(buf);
  } catch (err) {
    return new Error(`control message: not msgpack (${err instanceof Error ? err.message.slice(0, 80) : 'error'})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return new Error('control message: not a map');
  const o = raw as Obj;
  if (o['v'] !== CONTROL_SCHEMA_VERSION) return new Error(`control message: unsupported schema version ${JSON.stringify(o['v'] ?? null)?.slice(0, 20)}`);
  const op = o['op'];
  const bad = (what: string): Error => new Error(`control message ${String(op).slice(0, 20)}: ${what}`);
  switch (op) {
    case 'kick': {
      if (!str(o['session'], 256) || !num(o['sentAt'])) return bad('needs session and sentAt');
      const out: Obj = { op, session: o['session'], sentAt: o['sentAt'] };
      return copyOptStr(o, out, 'reason', 'from') ? (out as unknown as KickRequest) : bad('bad reason/from');
    }
    case 'kickResult':
      if (!str(o['node'], 64) || !str(o['session'], 256) || typeof o['kicked'] !== 'boolean') return bad('needs node, session, kicked');
      return { op, node: o['node'], session: o['session'], kicked: o['kicked'] };
    case 'drain':
    case 'stats': {
      if (!num(o['sentAt'])) return bad('needs sentAt');
      const out: Obj = { op, sentAt: o['sentAt'] };
      return copyOptStr(o, out, ...(op === 'drain' ? ['reason', 'from'] : ['from'])) ? (out as unknown as DrainRequest | StatsRequest) : bad('bad reason/from');
    }
    case 'drainResult': {
      if (!str(o['node'], 64) || typeof o['accepted'] !== 'boolean') return bad('needs node, accepted');
      const out: Obj = { op, node: o['node'], accepted: o['accepted'] };
      return copyOptStr(o, out, 'reason') ? (out as unknown as DrainResult) : bad('bad reason');
    }
    case 'statsResult': {
      if (!str(o['node'], 64) || !str(o['state'], 64) || !Array.isArray(o['streams'])) return bad('needs node, state, streams');
      const out: Obj = { op, node: o['node'], state: o['state'] };
      for (const k of ['sessions', 'viewers', 'publishers', 'relayPulls', 'streamsTotal', 'rss', 'uptimeMs', 'sentAt']) {
        if (!num(o[k])) return bad(`field '${k}' must be a non-negative number`);
        out[k] = o[k];
      }
      const streams: StreamStats[] = [];
      for (const s of o['streams'] as unknown[]) {
        if (s === null || typeof s !== 'object') return bad('streams entries must be maps');
        const e = s as Obj;
        if (!str(e['app']) || !str(e['stream']) || typeof e['live'] !== 'boolean' || !num(e['viewers']) || !num(e['relayPulls'])) return bad('bad stream entry');
        const entry: StreamStats = { app: e['app'], stream: e['stream'], live: e['live'], publisher: str(e['publisher'], 32) ? e['publisher'] : null, viewers: e['viewers'], relayPulls: e['relayPulls'] };
        if (e['publishing'] != null) {
          const p = decodePublishingStatus(e['publishing']);
          if (p instanceof Error) return bad(`publishing of ${e['app']}/${e['stream']}: ${p.message}`);
          entry.publishing = p;
        }
        streams.push(entry);
      }
      out['streams'] = streams;
      return out as unknown as StatsResult;
    }
    default:
      return new Error(`control message: unknown op ${JSON.stringify(op ?? null)?.slice(0, 40)}`);
  }
}
