/**
 * What WebRTC needs from the machine, checked when the node starts (while `webrtc.enabled`), so a
 * missing piece stops the start with one line naming its setting instead of failing later:
 *
 * - `webrtc.udp_port`: libdatachannel binds it only when the first WHEP or WHIP peer is made,
 *   and a port another process holds then fails every WebRTC request ("Failed to gather local
 *   ICE candidates") while the rest of the node looks healthy. The node binds it once and lets go.
 * - `webrtc.ffmpeg`: WebRTC has no AAC and RTMP/HLS no Opus, so audio crosses over through an
 *   ffmpeg child (AAC→Opus for WHEP viewers, Opus→AAC for WHIP publishes). Without it, or
 *   without its libopus encoder, viewers would get video and silence.
 */
import { execFile } from 'node:child_process';
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

/** Both checks, at start. */
export async function checkWebrtcAtStart(cfg: NodeConfig): Promise<void> {
  if (!cfg.webrtc.enabled) return;
  await checkWebrtcUdpPort(cfg);
  await checkWebrtcFfmpeg(cfg.webrtc.ffmpeg);
}

/** Encoders the audio crossings use: libopus (AAC→Opus) and aac (Opus→AAC). */
const NEEDED_ENCODERS = ['libopus', 'aac'] as const;
/** One look per command per process: in-process test meshes start many nodes. */
const ffmpegChecks = new Map<string, Promise<void>>();

/** Rejects with a ConfigError naming `webrtc.ffmpeg` when the command cannot run or lacks an encoder. */
export function checkWebrtcFfmpeg(command: string): Promise<void> {
  let p = ffmpegChecks.get(command);
  if (!p) {
    p = listEncoders(command).then((encoders) => {
      const missing = NEEDED_ENCODERS.filter((e) => !encoders.has(e));
      if (missing.length > 0) throw settingError('webrtc.ffmpeg', `${JSON.stringify(command)} has no ${missing.join(' or ')} encoder, which WebRTC audio needs (Debian's ffmpeg has both); or turn WebRTC off (webrtc.enabled: false)`);
    });
    // A failed look is not remembered: the operator may install ffmpeg and start again in-process (tests).
    p.catch(() => ffmpegChecks.delete(command));
    ffmpegChecks.set(command, p);
  }
  return p;
}

function listEncoders(command: string): Promise<Set<string>> {
  return new Promise((resolve, reject) => {
    execFile(command, ['-hide_banner', '-encoders'], { timeout: 10_000, maxBuffer: 4 * 1024 * 1024 }, (err, stdout) => {
      if (err) {
        const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : err.message.split('\n')[0];
        reject(settingError('webrtc.ffmpeg', `${JSON.stringify(command)} cannot be run (${why}); WebRTC audio needs ffmpeg (Debian: apt-get install ffmpeg), or turn WebRTC off (webrtc.enabled: false)`));
        return;
      }
      // Lines like " A....D libopus              libopus Opus (codec opus)".
      const names = new Set<string>();
      for (const line of stdout.split('\n')) {
        const m = /^\s*[VAS][.A-Z]{5}\s+(\S+)/.exec(line);
        if (m) names.add(m[1]!);
      }
      resolve(names);
    });
  });
}
