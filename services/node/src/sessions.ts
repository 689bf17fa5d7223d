/** The node's table of live connections, for the API, metrics and kicks. */
export type SessionProtocol = 'rtmp' | 'http-flv' | 'ws-flv' | 'hls';
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

/** Global and per-address connection caps, shared by every listener of the node. */
export class ConnectionLimiter {
  private total = 0;
  private readonly perIp = new Map<string, number>();

  constructor(
    public maxTotal: number,
    public maxPerIp: number,
  ) {}

  /** Returns undefined when admitted, else the reason for refusing. */
  admit(ip: string): string | undefined {
    if (this.total >= this.maxTotal) return `node connection limit (${this.maxTotal}) reached`;
    const n = this.perIp.get(ip) ?? 0;
    if (n >= this.maxPerIp) return `per-address connection limit (${this.maxPerIp}) reached for ${ip}`;
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
}
