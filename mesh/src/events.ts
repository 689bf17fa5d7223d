/**
 * Typed mesh events on top of the bus's event log (docs/design.md: JetStream
 * stream `MESHCAST_EVENTS`, subjects `<prefix>.events.<type>`, kept 24 h).
 * Payloads are the `MeshEvent` msgpack schema from @meshcast/proto.
 * Entries that do not decode (someone else wrote to the subject) are skipped
 * and logged once per (subject, reason).
 */
import { decodeMeshEvent, encodeMeshEvent, MeshMessageError, type MeshEvent } from '@meshcast/proto';
import { clampLimit, type Bus, type EventFollower, type EventLogEntry, type EventReadOptions } from './bus.ts';
import { LogOnce, silentLogger, type Logger } from './log.ts';

export interface MeshEventRecord {
  /** Log sequence (use as `since` to continue reading). */
  seq: number;
  /** Server time of the append, ms since epoch. */
  time: number;
  subject: string;
  event: MeshEvent;
}

export class MeshEvents {
  readonly #bus: Bus;
  readonly #once: LogOnce;

  constructor(bus: Bus, logger: Logger = silentLogger) {
    this.#bus = bus;
    this.#once = new LogOnce(logger.child({ component: 'mesh-events' }));
  }

  /** Append one event to `<prefix>.events.<event.type>`; returns its sequence. */
  append(event: MeshEvent): Promise<number> {
    return this.#bus.events.append(event.type, encodeMeshEvent(event));
  }

  /**
   * Read back (see EventReadOptions: `since` = after that sequence, else the
   * most recent `limit`). `limit` counts decoded events: undecodable entries
   * are skipped and more are read to make up for them.
   */
  async read(opts: EventReadOptions = {}): Promise<MeshEventRecord[]> {
    const limit = clampLimit(opts.limit);
    const log = this.#bus.events;
    if (opts.since !== undefined) {
      const out: MeshEventRecord[] = [];
      let cursor = opts.since;
      for (let round = 0; round < 20 && out.length < limit; round++) {
        const want = limit - out.length;
        const raw = await log.read({ since: cursor, limit: want });
        for (const e of raw) {
          const r = this.#decode(e);
          if (r) out.push(r);
        }
        if (raw.length < want) break;
        cursor = (raw[raw.length - 1] as EventLogEntry).seq;
      }
      return out;
    }
    let raw = await log.read({ limit });
    let out = this.#decodeAll(raw);
    let first = raw[0]?.seq ?? 0;
    for (let round = 0; round < 20 && out.length < limit && raw.length > 0 && first > 1; round++) {
      const need = limit - out.length;
      const start = Math.max(0, first - 1 - need);
      raw = await log.read({ since: start, limit: first - 1 - start });
      if (raw.length === 0) break;
      out = [...this.#decodeAll(raw.filter((e) => e.seq < first)), ...out];
      first = (raw[0] as EventLogEntry).seq;
    }
    return out.slice(-limit);
  }

  #decodeAll(raw: EventLogEntry[]): MeshEventRecord[] {
    const out: MeshEventRecord[] = [];
    for (const e of raw) {
      const r = this.#decode(e);
      if (r) out.push(r);
    }
    return out;
  }

  /** Live tail of decoded events (optionally from after `since`). */
  follow(cb: (record: MeshEventRecord) => void, opts: { since?: number } = {}): Promise<EventFollower> {
    return this.#bus.events.follow((e) => {
      const r = this.#decode(e);
      if (r) cb(r);
    }, opts);
  }

  #decode(e: EventLogEntry): MeshEventRecord | undefined {
    const ev = decodeMeshEvent(e.data);
    if (ev instanceof MeshMessageError) {
      this.#once.warn(e.subject, ev.message, { seq: e.seq }, 'ignoring undecodable mesh event');
      return undefined;
    }
    return { seq: e.seq, time: e.time, subject: e.subject, event: ev };
  }
}
