/** `meshcast-load` options: parsing, defaults, bounds and the loopback-only rule. */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';

export const MAX_VIEWERS = 20_000;
export const MAX_DURATION_S = 3600;
export const MAX_STREAMS = 1000;
export const MAX_PUBLISHERS = 200;

export type Protocol = 'rtmp' | 'http-flv' | 'whep';

export interface LoadOptions {
  /** `--vod URL`: N viewers of one VOD file (vod-swarm.ts) instead of a published stream. */
  vod: string | undefined;
  /** Publish URL (rtmp://host:port/app/stream); names the app and stream. */
  url: string | undefined;
  /** Where viewers play when not routed (rtmp://… or http://…/app/stream.flv). */
  playUrl: string | undefined;
  route: string | undefined;
  app: string;
  stream: string;
  viewers: number;
  durationS: number;
  publishers: number;
  streams: number;
  zipf: number;
  protocol: Protocol;
  rampPerSecond: number;
  workers: number;
  media: string;
  timeoutMs: number;
  json: boolean;
  quiet: boolean;
  force: boolean;
  allowRemote: boolean;
}

export class UsageError extends Error {}

export const USAGE = `usage: meshcast-load --url rtmp://HOST:PORT/APP/STREAM [options]

Publishes a looping test stream (with wall-clock stamps) and opens N viewers against a
meshcast node or mesh; reports time to first frame, glass-to-glass latency, delivered vs
expected bytes, missing frames and failures by cause.

  --url URL          where the publishers publish: rtmp://host:port/app/stream
  --vod URL          instead: N viewers of one VOD file, over RTMP (rtmp://host:port/vod/mp4:dir/file.mp4;
                     played in real time, looping at the end) or progressive HTTP
                     (http://host:port/vod/dir/file.mp4; downloaded again and again);
                     with --viewers, --duration, --ramp, --timeout, --json, --quiet
  --viewers N        viewers to open (default 10; more than ${MAX_VIEWERS} needs --force)
  --duration S       measurement window once the viewers are up, seconds (default 10; > ${MAX_DURATION_S} needs --force)
  --publishers M     own publishers, one per stream (default: one per stream; 0 = the stream is
                     published by someone else, e.g. ffmpeg)
  --streams K        spread the viewers over K streams STREAM-1 … STREAM-K (default 1)
  --zipf S           Zipf popularity exponent over the K streams (default 1; 0 = even)
  --protocol P       rtmp (default), http-flv or whep (WebRTC: libdatachannel peers, H.264 + Opus;
                     bytes are RTP payload, counted by arrival time)
  --play-url URL     where viewers play when that is not --url, e.g. an edge node:
                     rtmp://127.0.0.21:1935/live/x, http://127.0.0.21:8080/live/x.flv or
                     http://127.0.0.21:8080/live/x/whep
                     (the app and stream names are taken from --url when given)
  --route URL        route-aware: ask this node's /api/v1/route for every viewer and follow it
                     (e.g. http://127.0.0.21:8080)
  --ramp R           new viewers per second (default 200; 0 = all at once)
  --workers W        viewer processes (default: one per 2000 viewers, at most cpus - 1; 0 = this process)
  --media M          small (640x360, 600 kbit/s; default), 720p (2 Mbit/s) or a path to an .flv file
                     (with --protocol whep, small and 720p are encoded without B-frames)
  --timeout MS       connect + play timeout per viewer (default 10000)
  --json             print one JSON report on stdout (progress still goes to stderr)
  --quiet            no progress output
  --force            allow more than ${MAX_VIEWERS} viewers or longer than ${MAX_DURATION_S} s
  --allow-remote     allow targets outside 127.0.0.0/8 and ::1 (the default refuses them)

exit status: 0 every viewer played; 1 some failed or got no video; 2 bad options or refused.
`;

function int(v: string | undefined, name: string, def: number, min: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min} (got ${JSON.stringify(v)})`);
  return n;
}

function real(v: string | undefined, name: string, def: number, min: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new UsageError(`--${name} must be a number >= ${min} (got ${JSON.stringify(v)})`);
  return n;
}

/** app and stream from rtmp://h/app/stream or http://h/app/stream.flv. */
export function namesFromUrl(url: string): { app: string; stream: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(`not a URL: ${url}`);
  }
  const parts = u.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts.length < 2) throw new UsageError(`${url}: expected …/app/stream`);
  // A WHEP URL names the stream before its last segment: /app/stream/whep.
  if (parts[parts.length - 1] === 'whep' && /^https?:$/.test(u.protocol)) parts.pop();
  if (parts.length < 2) throw new UsageError(`${url}: expected …/app/stream`);
  const stream = parts[parts.length - 1]!.replace(/\.flv$/, '');
  return { app: parts.slice(0, -1).join('/'), stream };
}

export function parseLoadArgs(argv: string[]): LoadOptions | 'help' {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        url: { type: 'string' },
        vod: { type: 'string' },
        'play-url': { type: 'string' },
        route: { type: 'string' },
        viewers: { type: 'string', short: 'n' },
        duration: { type: 'string', short: 'd' },
        publishers: { type: 'string' },
        streams: { type: 'string' },
        zipf: { type: 'string' },
        protocol: { type: 'string' },
        ramp: { type: 'string' },
        workers: { type: 'string' },
        media: { type: 'string' },
        timeout: { type: 'string' },
        json: { type: 'boolean' },
        quiet: { type: 'boolean', short: 'q' },
        force: { type: 'boolean' },
        'allow-remote': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values['help']) return 'help';
  const url = values['url'] as string | undefined;
  const playUrl = values['play-url'] as string | undefined;
  const route = values['route'] as string | undefined;
  const vod = values['vod'] as string | undefined;
  if (vod !== undefined && !/^(rtmp|https?):\/\/[^/]+\/[^/]+\/./.test(vod)) throw new UsageError(`--vod must be rtmp://host:port/app/<file> or http://host:port/app/<file> (got ${vod})`);
  if (vod !== undefined && (url || playUrl || route || values['protocol'])) throw new UsageError('--vod plays a file: it takes no --url, --play-url, --route or --protocol (the URL says rtmp or http)');
  if (!url && !playUrl && !vod) throw new UsageError('--url is required (or --play-url with --publishers 0, or --vod)');
  if (url && !/^rtmp:\/\//.test(url)) throw new UsageError(`--url must be an rtmp:// URL (got ${url})`);
  const { app, stream } = vod ? { app: '', stream: '' } : namesFromUrl((url ?? playUrl)!);
  const protocol = ((values['protocol'] as string | undefined) ?? 'rtmp') as Protocol;
  if (protocol !== 'rtmp' && protocol !== 'http-flv' && protocol !== 'whep') throw new UsageError('--protocol is rtmp, http-flv or whep');
  if (playUrl) {
    const want = { rtmp: /^rtmp:\/\//, 'http-flv': /^https?:\/\/.*\.flv(\?|$)/, whep: /^https?:\/\/.*\/whep(\?|$)/ }[protocol];
    const what = { rtmp: 'an rtmp:// URL', 'http-flv': 'an http://…/app/stream.flv URL', whep: 'an http://…/app/stream/whep URL' }[protocol];
    if (!want.test(playUrl)) throw new UsageError(`--play-url must be ${what} for --protocol ${protocol}`);
  }
  if (route && !/^https?:\/\//.test(route)) throw new UsageError('--route is the base URL of a node, e.g. http://127.0.0.21:8080');
  if (protocol === 'http-flv' && !playUrl && !route) throw new UsageError('--protocol http-flv needs --play-url http://host:port/app/stream.flv or --route http://node:port');
  if (protocol === 'whep' && !playUrl && !route) throw new UsageError('--protocol whep needs --play-url http://host:port/app/stream/whep or --route http://node:port');
  const force = Boolean(values['force']);
  const viewers = int(values['viewers'] as string | undefined, 'viewers', 10, 1);
  const durationS = real(values['duration'] as string | undefined, 'duration', 10, 1);
  const streams = int(values['streams'] as string | undefined, 'streams', 1, 1);
  const publishers = int(values['publishers'] as string | undefined, 'publishers', url ? streams : 0, 0);
  if (!force) {
    if (viewers > MAX_VIEWERS) throw new UsageError(`refusing ${viewers} viewers: more than ${MAX_VIEWERS} needs --force`);
    if (durationS > MAX_DURATION_S) throw new UsageError(`refusing a ${durationS} s run: longer than ${MAX_DURATION_S} s needs --force`);
    if (streams > MAX_STREAMS) throw new UsageError(`refusing ${streams} streams: more than ${MAX_STREAMS} needs --force`);
    if (publishers > MAX_PUBLISHERS) throw new UsageError(`refusing ${publishers} publishers: more than ${MAX_PUBLISHERS} needs --force`);
  }
  if (publishers > streams) throw new UsageError(`--publishers ${publishers} is more than --streams ${streams} (one publisher per stream)`);
  if (publishers > 0 && !url) throw new UsageError('publishers need --url rtmp://host:port/app/stream to publish to');
  const defaultWorkers = viewers <= 2000 ? 0 : Math.max(1, Math.min(Math.max(1, cpus().length - 1), Math.ceil(viewers / 2000)));
  return {
    vod,
    url,
    playUrl,
    route: route?.replace(/\/+$/, ''),
    app,
    stream,
    viewers,
    durationS,
    publishers,
    streams,
    zipf: real(values['zipf'] as string | undefined, 'zipf', 1, 0),
    protocol,
    rampPerSecond: real(values['ramp'] as string | undefined, 'ramp', 200, 0),
    workers: int(values['workers'] as string | undefined, 'workers', defaultWorkers, 0),
    media: (values['media'] as string | undefined) ?? 'small',
    timeoutMs: int(values['timeout'] as string | undefined, 'timeout', 10_000, 100),
    json: Boolean(values['json']),
    quiet: Boolean(values['quiet']),
    force,
    allowRemote: Boolean(values['allow-remote']),
  };
}

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
export function isLoopbackAddress(addr: string): boolean {
  const a = addr.replace(/^\[|\]$/g, '').toLowerCase();
  if (isIP(a) === 4) return a.startsWith('127.');
  if (isIP(a) === 6) return a === '::1' || a === '0:0:0:0:0:0:0:1' || /^::ffff:127\./.test(a);
  return false;
}

/** Every address `host` resolves to is loopback (names are resolved; 'localhost' counts). */
export async function isLoopbackHost(host: string): Promise<boolean> {
  const h = host.replace(/^\[|\]$/g, '');
  if (isIP(h)) return isLoopbackAddress(h);
  if (h.toLowerCase() === 'localhost') return true;
  try {
    const addrs = await lookup(h, { all: true });
    return addrs.length > 0 && addrs.every((a) => isLoopbackAddress(a.address));
  } catch {
    return false;
  }
}

/** Refuses (UsageError) any target URL outside loopback, unless allowed. */
export async function checkTargets(urls: Array<string | undefined>, allowRemote: boolean): Promise<void> {
  if (allowRemote) return;
  for (const u of urls) {
    if (!u) continue;
    const host = new URL(u).hostname;
    if (!(await isLoopbackHost(host))) {
      throw new UsageError(`refusing to load ${host}: not a loopback address (127.0.0.0/8, ::1). This tool generates heavy traffic; pass --allow-remote to target another machine you operate.`);
    }
  }
}
