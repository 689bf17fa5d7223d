/**
 * Who publishes a stream, as the operator sees it: the primary encoder, the hot standby (node,
 * since when) and the failovers between them, with their reasons.
 *
 * Each node knows only its own part: the node whose `PublishedStream` actor serves the primary
 * knows the primary, the node holding a standby knows the standby, and each node remembers the
 * failovers it carried out. The stream API answers one node's view; `meshctl streams` (stats over
 * NATS) and the dashboard (each peer's local rows) merge every node's view with `mergePublishing`.
 * `decodePublishingStatus` checks a status that came from a peer before it is shown.
 */

export interface PublisherSeat {
  node: string;
  /** When this publisher took the seat (ms since the epoch). */
  since: number;
  /** The primary only: media arrived within `publisher_silence_ms`. */
  live?: boolean;
  /** The session id, when the seat is on the node answering. */
  session?: string;
}

export interface FailoverRecord {
  at: number;
  from: string | null;
  to: string;
  epoch: number | null;
  /** `primary silent`, `primary gone`, `owner heartbeat lost`, `ownership record gone`, `takeover`, … */
  reason: string;
}

/** One node's view of a stream it publishes (or holds the standby of). */
export interface PublishingStatus {
  state: string;
  epoch: number | null;
  primary: PublisherSeat | null;
  standby: PublisherSeat | null;
  failovers: FailoverRecord[];
}

/** The mesh-wide view: the seats as their own nodes report them, every failover once. */
export interface PublishingView {
  primary: PublisherSeat | null;
  standby: PublisherSeat | null;
  failovers: FailoverRecord[];
}

/** A merged view keeps this many failovers (the most recent). */
export const MAX_FAILOVERS_SHOWN = 20;
const MAX_TEXT = 128;

type Obj = Record<string, unknown>;
const isObj = (x: unknown): x is Obj => x !== null && typeof x === 'object' && !Array.isArray(x);
const text = (x: unknown): x is string => typeof x === 'string' && x.length > 0 && x.length <= MAX_TEXT;
const time = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x >= 0;

function decodeSeat(x: unknown): PublisherSeat | null | Error {
  if (x === null || x === undefined) return null;
  if (!isObj(x) || !text(x['node']) || !time(x['since'])) return new Error('a seat needs node and since');
  const seat: PublisherSeat = { node: x['node'], since: x['since'] };
  if (typeof x['live'] === 'boolean') seat.live = x['live'];
  if (text(x['session'])) seat.session = x['session'];
  return seat;
}

/** Checks a status from a peer (stats over NATS, a peer's dashboard rows); never throws. */
export function decodePublishingStatus(x: unknown): PublishingStatus | Error {
  if (!isObj(x)) return new Error('publishing status must be a map');
  if (!text(x['state'])) return new Error('publishing status needs a state');
  const epoch = x['epoch'];
  if (epoch !== null && epoch !== undefined && !(Number.isSafeInteger(epoch) && (epoch as number) >= 0)) return new Error('publishing epoch must be a non-negative integer');
  const primary = decodeSeat(x['primary']);
  if (primary instanceof Error) return new Error(`primary: ${primary.message}`);
  const standby = decodeSeat(x['standby']);
  if (standby instanceof Error) return new Error(`standby: ${standby.message}`);
  const raw = x['failovers'] ?? [];
  if (!Array.isArray(raw) || raw.length > MAX_FAILOVERS_SHOWN * 4) return new Error('failovers must be a short list');
  const failovers: FailoverRecord[] = [];
  for (const f of raw) {
    if (!isObj(f) || !time(f['at']) || !text(f['to']) || !text(f['reason'])) return new Error('a failover needs at, to and reason');
    const from = text(f['from']) ? f['from'] : null;
    const fe = Number.isSafeInteger(f['epoch']) ? (f['epoch'] as number) : null;
    failovers.push({ at: f['at'], from, to: f['to'], epoch: fe, reason: f['reason'] });
  }
  return { state: x['state'], epoch: (epoch as number | null | undefined) ?? null, primary, standby, failovers };
}

/**
 * Merges every node's view of one stream. A seat reported by the node it sits on (it has a session
 * there) wins over a copy heard from a peer's liveness beats; among equals the newer seat wins.
 * Failovers are de-duplicated (the promoting node and the one that lost may both record one) and
 * kept in time order.
 */
export function mergePublishing(views: Iterable<PublishingStatus>): PublishingView {
  let primary: PublisherSeat | null = null;
  let standby: PublisherSeat | null = null;
  const better = (a: PublisherSeat | null, b: PublisherSeat | null): PublisherSeat | null => {
    if (!b) return a;
    if (!a) return b;
    const ownA = a.session !== undefined;
    const ownB = b.session !== undefined;
    if (ownA !== ownB) return ownB ? b : a;
    return b.since > a.since ? b : a;
  };
  const seen = new Map<string, FailoverRecord>();
  for (const v of views) {
    primary = better(primary, v.primary);
    standby = better(standby, v.standby);
    for (const f of v.failovers) {
      // The same promotion seen by two nodes: same target and epoch within a second.
      const key = `${f.to}|${f.epoch ?? ''}|${Math.floor(f.at / 1000)}`;
      if (!seen.has(key)) seen.set(key, f);
    }
  }
  // A standby that is in fact the primary now (promotion reports lag by a beat) is not shown twice.
  if (primary && standby && primary.node === standby.node && primary.session !== undefined && primary.session === standby.session) standby = null;
  const failovers = [...seen.values()].sort((a, b) => a.at - b.at).slice(-MAX_FAILOVERS_SHOWN);
  return { primary, standby, failovers };
}

/**
 * The failovers this node carried out, per stream. It outlives the stream's actor (which goes when
 * the last local publisher does), so a stream whose encoders took turns here shows all its turns.
 * Bounded: `MAX_FAILOVERS_SHOWN` per stream, `maxStreams` streams (the least recently failed over
 * go first), and nothing older than `maxAgeMs`.
 */
export class FailoverHistory {
  private readonly byStream = new Map<string, FailoverRecord[]>();

  constructor(
    private readonly maxStreams = 1000,
    private readonly maxAgeMs = 24 * 3600_000,
  ) {}

  record(key: string, f: FailoverRecord): void {
    const list = this.byStream.get(key) ?? [];
    this.byStream.delete(key); // re-insert: Map order is the eviction order
    list.push(f);
    if (list.length > MAX_FAILOVERS_SHOWN) list.splice(0, list.length - MAX_FAILOVERS_SHOWN);
    this.byStream.set(key, list);
    while (this.byStream.size > this.maxStreams) this.byStream.delete(this.byStream.keys().next().value!);
  }

  of(key: string, now: number): FailoverRecord[] {
    const list = this.byStream.get(key);
    if (!list) return [];
    const fresh = list.filter((f) => now - f.at <= this.maxAgeMs);
    if (fresh.length === 0) this.byStream.delete(key);
    return fresh;
  }
}

/** One line for a table: `edge-1 (live, 2m)`. */
export function describeSeat(seat: PublisherSeat | null, now: number): string {
  if (!seat) return '-';
  const age = Math.max(0, now - seat.since);
  const s = Math.round(age / 1000);
  const ago = s < 90 ? `${s}s` : s < 5400 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
  const live = seat.live === false ? 'silent, ' : '';
  return `${seat.node} (${live}${ago})`;
}
