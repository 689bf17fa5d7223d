/**
 * Test harness: a TCP proxy in front of one server (a node, nats-server), so a test can break that one link:
 * - `cut()` resets every connection through it and refuses new ones (accepted and destroyed at once: the
 *   client sees its reconnects fail, as with a firewall's RST); `heal()` lets connections through again.
 * - `blackhole()` drops the client side of every current connection while the server side stays open and
 *   silent (no FIN, no RST: the server learns nothing, as when a publisher's uplink dies).
 */
import net from 'node:net';

export class TcpProxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  /** Server sides kept open (and silent) by `blackhole()`, closed with the proxy. */
  private readonly zombies: net.Socket[] = [];
  private isCut = false;
  port = 0;
  /** Connections accepted and passed through / refused while cut. */
  passed = 0;
  refused = 0;

  private constructor(
    readonly host: string,
    readonly targetHost: string,
    readonly targetPort: number,
  ) {
    this.server = net.createServer((client) => {
      if (this.isCut) {
        this.refused++;
        client.on('error', () => undefined);
        client.resetAndDestroy();
        return;
      }
      this.passed++;
      const upstream = net.connect({ host: targetHost, port: targetPort });
      const pair = { client, upstream };
      this.pairs.add(pair);
      client.pipe(upstream);
      upstream.pipe(client);
      const end = (): void => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end);
      upstream.on('error', end);
      client.on('close', end);
      upstream.on('close', end);
    });
  }

  static async start(targetHost: string, targetPort: number, host = '127.0.0.1'): Promise<TcpProxy> {
    const p = new TcpProxy(host, targetHost, targetPort);
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, host, () => resolve());
    });
    const a = p.server.address();
    p.port = typeof a === 'object' && a ? a.port : 0;
    return p;
  }

  /** The proxy as a URL with the given scheme, e.g. `nats://127.0.0.1:4321`. */
  url(scheme = 'nats'): string {
    return `${scheme}://${this.host}:${this.port}`;
  }

  /** An RTMP URL through the proxy, e.g. `rtmp://127.0.0.1:4321/live/x`. */
  rtmpUrl(path: string): string {
    return `${this.url('rtmp')}/${path}`;
  }

  get cutOff(): boolean {
    return this.isCut;
  }

  /** Partition: every current connection is reset on both sides; new ones are refused until `heal()`. */
  cut(): void {
    this.isCut = true;
    for (const pair of [...this.pairs]) {
      this.pairs.delete(pair);
      pair.client.unpipe(pair.upstream);
      pair.upstream.unpipe(pair.client);
      for (const s of [pair.client, pair.upstream]) {
        s.removeAllListeners('close');
        s.removeAllListeners('error');
        s.on('error', () => undefined);
        s.resetAndDestroy();
      }
    }
  }

  heal(): void {
    this.isCut = false;
  }

  /** The client side of every connection dies; the server side stays open and silent. */
  blackhole(): void {
    for (const pair of [...this.pairs]) {
      this.pairs.delete(pair);
      pair.client.unpipe(pair.upstream);
      pair.upstream.unpipe(pair.client);
      pair.upstream.removeAllListeners('close');
      pair.upstream.removeAllListeners('error');
      pair.upstream.on('error', () => undefined);
      pair.upstream.pause();
      this.zombies.push(pair.upstream);
      pair.client.removeAllListeners('close');
      pair.client.removeAllListeners('error');
      pair.client.on('error', () => undefined);
      pair.client.resetAndDestroy();
    }
  }

  async close(): Promise<void> {
    this.cut();
    for (const z of this.zombies.splice(0)) z.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
