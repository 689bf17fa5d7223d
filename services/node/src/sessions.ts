/** The node's table of live connections, for the API, metrics and kicks. */
export type SessionProtocol = 'rtmp' | 'http-flv' | 'ws-flv' | 'hls' | 'whep' | 'whip';
export type SessionRole = 'idle' | 'publisher' | 'viewer' | 'relay-pull';

export interface SessionInfo {
  id: string;
  protocol: SessionProtocol;
  remote: string;
  role: SessionRole;
  app: string | undefined;
  stream: string | undefined;
  startedAt: number;
  bytesIn: number;
  bytesOut: number;
  droppedFrames: number;
}

export interface Session {
  readonly id: string;
  info(): SessionInfo;
  kick(reason: string): void;
  /** Ends the session with a status its peer can read before the close (RTMP onStatus on its playing streams). */
  closeWithStatus?(code: string, description: string): void;
}

let counter = 0;
/** Session ids are short, unique within a node's lifetime, and safe in logs, URLs and subjects. */
export function newSessionId(prefix: string): string {
  counter = (counter + 1) % 0x7fffffff;
  return `${prefix}${Date.now().toString(36)}${counter.toString(36)}`;
}

export class SessionTable {
  private readonly byId = new Map<string, Session>();

  add(s: Session): void {
    this.byId.set(s.id, s);
  }

  remove(s: Session): void {
    if (this.byId.get(s.id) === s) this.byId.delete(s.id);
  }

  get(id: string): Session | undefined {
    return this.byId.get(id);
  }

  get size(): number {
    return this.byId.size;
  }

  list(): SessionInfo[] {
    return [...this.byId.values()].map((s) => s.info());
  }

  all(): Session[] {
    return [...this.byId.values()];
  }
}

/** The limiter's settings, as in the config's `limits:` section. */
export interface ConnectionLimits {
  max_connections: number;
  max_connections_per_ip: number;
  /** New connections per second per address (0 = unlimited). */
  connection_rate_per_ip?: number;
  /** Token bucket size: connections one address may open in a burst. */
  connection_burst_per_ip?: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

const SWEEP_EVERY_MS = 10_000;

/**
 * Global and per-address connection caps, and a per-address connection rate (token bucket),
 * shared by every listener of the node. Settings can change while running (SIGHUP): caps
 * apply to the next connection, existing connections are never dropped.
 */
export class ConnectionLimiter {
  private total = 0;
  private readonly perIp = new Map<string, number>();
  private readonly buckets = new Map<string, Bucket>();
  private lastSweep = 0;
  /** Connections refused since start, by cause. */
  readonly refused = { total: 0, perIp: 0, rate: 0 };
  ratePerIp = 0;
  burstPerIp = 20;

  constructor(
    public maxTotal: number,
    public maxPerIp: number,
    ratePerIp = 0,
    burstPerIp = 20,
    private readonly now: () => number = Date.now,
  ) {
    this.ratePerIp = ratePerIp;
    this.burstPerIp = burstPerIp;
  }

  configure(l: ConnectionLimits): void {
    this.maxTotal = l.max_connections;
    this.maxPerIp = l.max_connections_per_ip;
    this.ratePerIp = l.connection_rate_per_ip ?? 0;
    this.burstPerIp = l.connection_burst_per_ip ?? 20;
    if (this.ratePerIp <= 0) this.buckets.clear();
  }

  /** Takes one token from the address's bucket; false when it is empty. */
  private takeToken(ip: string): boolean {
    if (this.ratePerIp <= 0) return true;
    const now = this.now();
    const burst = Math.max(1, this.burstPerIp);
    if (now - this.lastSweep >= SWEEP_EVERY_MS) this.sweep(now, burst);
    let b = this.buckets.get(ip);
    if (!b) {
      b = { tokens: burst, at: now };
      this.buckets.set(ip, b);
    } else {
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) * this.ratePerIp) / 1000);
      b.at = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Forgets buckets that have refilled: the table holds only addresses that connected lately. */
  private sweep(now: number, burst: number): void {
    this.lastSweep = now;
    for (const [ip, b] of this.buckets) {
      if (b.tokens + ((now - b.at) * this.ratePerIp) / 1000 >= burst) this.buckets.delete(ip);
    }
  }

  /** Returns undefined when admitted, else the reason for refusing. Every attempt counts against the rate. */
  admit(ip: string): string | undefined {
    if (!this.takeToken(ip)) {
      this.refused.rate++;
      return `connection rate limit (${this.ratePerIp}/s, burst ${this.burstPerIp}) exceeded for ${ip}`;
    }
    if (this.total >= this.maxTotal) {
      this.refused.total++;
      return `node connection limit (${this.maxTotal}) reached`;
    }
    const n = this.perIp.get(ip) ?? 0;
    if (n >= this.maxPerIp) {
      this.refused.perIp++;
      return `per-address connection limit (${this.maxPerIp}) reached for ${ip}`;
    }
    this.total++;
    this.perIp.set(ip, n + 1);
    return undefined;
  }

  release(ip: string): void {
    this.total--;
    const n = (this.perIp.get(ip) ?? 1) - 1;
    if (n <= 0) this.perIp.delete(ip);
    else this.perIp.set(ip, n);
  }

  get connections(): number {
    return this.total;
  }

  connectionsFrom(ip: string): number {
    return this.perIp.get(ip) ?? 0;
  }

  /** Addresses with a rate bucket (bounded by the sweep). */
  get trackedAddresses(): number {
    return this.buckets.size;
  }
}
