/**
 * The node's one WebRTC UDP port (`webrtc.udp_port`). libdatachannel binds it only when the
 * first WHEP or WHIP peer is made, and a port another process holds then fails every WebRTC
 * request ("Failed to gather local ICE candidates") while the rest of the node looks healthy.
 * So the node binds it once at start and lets go: a taken port stops the start, naming the
 * setting.
 */
import { createSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { settingError, type NodeConfig } from '../config.ts';

/** The address libdatachannel binds: a wildcard `host` lets it bind every interface. */
export function webrtcBindAddress(host: string): string | undefined {
  return host === '0.0.0.0' || host === '::' || host === '' ? undefined : host;
}

/**
 * Rejects with a ConfigError naming `webrtc.udp_port` when the port cannot be bound on `host`.
 * Nodes starting together on one address (tests, `npm run mesh`) probe the same default port for
 * a moment each, so a refusal is tried again a few times before it counts: a port another
 * process really holds stays held.
 */
export async function checkWebrtcUdpPort(cfg: NodeConfig, attempts = 5, retryMs = 40): Promise<void> {
  if (!cfg.webrtc.enabled) return;
  const port = cfg.webrtc.udp_port;
  const address = webrtcBindAddress(cfg.host);
  for (let attempt = 1; ; attempt++) {
    const err = await tryBind(port, address);
    if (!err) return;
    if (attempt >= attempts || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
      throw settingError('webrtc.udp_port', `UDP port ${port} on ${address ?? 'every interface'} cannot be bound: ${err.message} (another process has it; give every node on one address its own port)`);
    }
    await new Promise((r) => setTimeout(r, retryMs));
  }
}

async function tryBind(port: number, address: string | undefined): Promise<Error | undefined> {
  const socket = createSocket({ type: address !== undefined && isIPv6(address) ? 'udp6' : 'udp4', reuseAddr: false });
  const err = await new Promise<Error | undefined>((resolve) => {
    socket.once('error', resolve);
    socket.bind({ port, address: address ?? '0.0.0.0', exclusive: true }, () => resolve(undefined));
  });
  await new Promise<void>((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      // Never bound: nothing to close.
      resolve();
    }
  });
  return err;
}
