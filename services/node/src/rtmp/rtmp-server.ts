/** The RTMP listener: admits connections against the node's limits and starts a session for each. */
import net from 'node:net';
import { PeerLogLimiter } from '@meshcast/mesh';
import type { MediaHost } from '../media/host.ts';
import type { ConnectionLimiter } from '../sessions.ts';
import { RtmpSession } from './rtmp-session.ts';

const REFUSAL_LOG_MS = 5000;
/** The session's deadline checks are strict (elapsed > limit): wake it just after. */
const DEADLINE_SLACK_MS = 5;

export class RtmpServer {
  private readonly server: net.Server;
  private readonly live = new Set<RtmpSession>();
  /** One per listener: lines caused by one address's bad input, over all its connections. */
  private readonly peerLog = new PeerLogLimiter();

  constructor(
    private readonly host: MediaHost,
    private readonly limiter: ConnectionLimiter,
  ) {
    this.server = net.createServer({ noDelay: true }, (socket) => this.onConnection(socket));
    this.server.on('error', (err) => host.log.error({ err }, 'RTMP listener error'));
  }

  private onConnection(socket: net.Socket): void {
    const ip = socket.remoteAddress ?? 'unknown';
    const refused = this.limiter.admit(ip);
    if (refused) {
      this.logRefusal(ip, refused);
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    const deadlines: NodeJS.Timeout[] = [];
    const session = new RtmpSession(socket, this.host, (s) => {
      for (const t of deadlines) clearTimeout(t);
      this.live.delete(s);
      this.host.sessions.remove(s);
      this.limiter.release(ip);
    }, this.peerLog);
    // The session checks its deadlines on a 1 s tick; these wake it exactly when the handshake
    // and first-command deadlines pass, so a half-open flood is closed on time, not up to 1 s late.
    const lim = this.host.config.limits;
    for (const ms of [lim.handshake_timeout_ms, lim.first_command_timeout_ms]) {
      const t = setTimeout(() => session.handle({ type: 'timer' }), ms + DEADLINE_SLACK_MS);
      t.unref();
      deadlines.push(t);
    }
    this.live.add(session);
    this.host.sessions.add(session);
  }

  private refusalsSinceLog = 0;
  private lastRefusalLog = 0;

  /** A flood must not become a log flood: one line per REFUSAL_LOG_MS, with the count of the rest. */
  private logRefusal(ip: string, reason: string): void {
    const now = Date.now();
    if (now - this.lastRefusalLog < REFUSAL_LOG_MS) {
      this.refusalsSinceLog++;
      return;
    }
    this.host.log.warn({ remote: ip, reason, alsoRefused: this.refusalsSinceLog }, 'RTMP connection refused');
    this.lastRefusalLog = now;
    this.refusalsSinceLog = 0;
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const addr = this.server.address();
        resolve(typeof addr === 'object' && addr ? addr.port : port);
      });
    });
  }

  /** Stops accepting; existing sessions are closed by the node. */
  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  closeSessions(reason: string): void {
    for (const s of [...this.live]) s.kick(reason);
  }

  get sessionCount(): number {
    return this.live.size;
  }
}
