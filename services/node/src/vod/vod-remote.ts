/**
 * VOD files across the mesh (the FMS edge's `<Mode>remote</Mode>` without a static route): a
 * node asked for a file it does not hold finds the node that does and copies the file once into
 * its cache (vod-cache.ts), from which it serves every viewer.
 *
 * - Finding: a request on `<prefix>.vod.locate` ({app, name}) over the mesh bus (sealed with the
 *   mesh secret on NATS). Every node subscribes; a node whose root holds the file answers with
 *   its public HTTP address and the file's size; the others stay silent, so the first answer
 *   wins and no answer within `vod.locate_timeout_ms` means nobody holds it.
 * - Copying: one HTTP GET of the file from that node's public listener (bytes never ride the
 *   bus), authenticated with a mesh pull credential (mesh-credential.ts) for that file and that
 *   node, single use, in the `X-Meshcast-Vod-Pull` header. The holder serves it from its root
 *   only (never from its own cache or onward from the mesh, so a copy cannot loop), without the
 *   app's viewer rules: the asking node applied them to its viewer. A copy that receives no
 *   bytes for `vod.fetch_timeout_ms` is abandoned.
 */
import { open } from 'node:fs/promises';
import { extname } from 'node:path';
import { BusNoRespondersError, BusTimeoutError, type Bus, type BusSubscription } from '@meshcast/mesh';
import { settingError, type NodeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { CredentialCheck } from '../mesh/mesh-credential.ts';
import { signCredential } from '../mesh/mesh-credential.ts';
import { VodCache, type CacheFill } from './vod-cache.ts';
import { parseVodName, VodError, type LocalVodLibrary, type VodFormat, type VodRemote } from './vod-library.ts';

export const VOD_PULL_HEADER = 'x-meshcast-vod-pull';
/**
 * The owner a VOD pull credential names: no node id has a colon, so the credential can never
 * pass for a relay's pull of a live stream's epoch.
 */
const VOD_PULL_OWNER = ':vod';

interface LocateRequest {
  app: string;
  name: string;
}

export interface LocateAnswer {
  node: string;
  /** The holder's public HTTP base URL. */
  url: string;
  size: number;
}

/** The header value: a pull credential for `app`/`name` on node `to`. */
export function vodPullHeader(secret: string, self: string, app: string, name: string, to: string): string {
  const c = signCredential(secret, self, { app, stream: name, owner: VOD_PULL_OWNER, epoch: 0, to });
  return Buffer.from(JSON.stringify(c)).toString('base64url');
}

/** Whether a request's VOD pull header is a valid, unused credential for this file on this node (`verify` is host.verifyMeshCredential). */
export function checkVodPull(verify: (value: unknown) => CredentialCheck, header: string | string[] | undefined, app: string, name: string): CredentialCheck {
  const v = Array.isArray(header) ? header[0] : header;
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(v ?? '', 'base64url').toString('utf8'));
  } catch {
    return { ok: false, reason: 'malformed VOD pull credential' };
  }
  const check = verify(value);
  if (!check.ok) return check;
  const p = check.pull;
  if (!p || p.owner !== VOD_PULL_OWNER || p.app !== app || p.stream !== name) return { ok: false, reason: `mesh credential is not a VOD pull of ${app}/${name}` };
  return check;
}

export interface MeshVodRemoteOptions {
  bus: Bus;
  config: NodeConfig;
  library: LocalVodLibrary;
  cache: VodCache;
  /** This node's public HTTP base URL (known once the listener is up). */
  selfUrl: () => string;
  log: Logger;
}

export class MeshVodRemote implements VodRemote {
  private sub: BusSubscription | undefined;
  private readonly subject: string;
  private readonly log: Logger;

  constructor(private readonly opts: MeshVodRemoteOptions) {
    this.subject = `${opts.bus.names.prefix}.vod.locate`;
    this.log = opts.log.child({ component: 'vod' });
  }

  /** Answers other nodes' locate requests for files under this node's roots. */
  start(): void {
    this.sub = this.opts.bus.subscribe(this.subject, (msg) => {
      void this.answer(msg.data)
        .then((a) => {
          if (a) msg.respond(Buffer.from(JSON.stringify(a)));
        })
        .catch((err: unknown) => this.log.warn({ err: String(err) }, 'VOD locate request not answered'));
    });
  }

  /** The cache's figures (metrics, the admin API). */
  get cache(): VodCache {
    return this.opts.cache;
  }

  close(): void {
    this.sub?.unsubscribe();
    this.sub = undefined;
    this.opts.cache.close();
  }

  private async answer(data: Uint8Array): Promise<LocateAnswer | undefined> {
    let req: LocateRequest;
    try {
      req = JSON.parse(Buffer.from(data).toString('utf8')) as LocateRequest;
    } catch {
      return undefined;
    }
    if (typeof req?.app !== 'string' || typeof req.name !== 'string' || !this.opts.library.isVodApp(req.app)) return undefined;
    try {
      // The name comes from a peer: it is checked as a client's would be (and must already be in its checked form).
      if (parseVodName(req.name).name !== req.name) return undefined;
      const f = await this.opts.library.localFile(req.app, req.name);
      return f && { node: this.opts.config.node_id, url: this.opts.selfUrl(), size: f.size };
    } catch (err) {
      if (err instanceof VodError) return undefined;
      throw err;
    }
  }

  /** The node that holds `app`/`name`; VodError not_found when none answers in time. */
  async locate(app: string, name: string): Promise<LocateAnswer> {
    const timeoutMs = this.opts.config.vod.locate_timeout_ms;
    let raw: Uint8Array;
    try {
      raw = await this.opts.bus.request(this.subject, Buffer.from(JSON.stringify({ app, name } satisfies LocateRequest)), { timeoutMs });
    } catch (err) {
      if (err instanceof BusTimeoutError || err instanceof BusNoRespondersError) throw new VodError('not_found', `no node of the mesh holds VOD file ${app}/${name} (asked for ${timeoutMs} ms)`);
      throw new VodError('unavailable', `VOD file ${app}/${name}: the mesh could not be asked: ${(err as Error).message}`);
    }
    const a = JSON.parse(Buffer.from(raw).toString('utf8')) as Partial<LocateAnswer>;
    if (typeof a.node !== 'string' || typeof a.url !== 'string' || typeof a.size !== 'number' || !/^https?:\/\//.test(a.url)) {
      throw new VodError('unavailable', `VOD file ${app}/${name}: a malformed locate answer`);
    }
    return a as LocateAnswer;
  }

  async fetch(app: string, name: string, _format: VodFormat): Promise<{ path: string; size: number }> {
    return this.opts.cache.get(app, name, extname(name).toLowerCase(), async (fill) => {
      const at = await this.locate(app, name);
      fill.reserve(at.size);
      await this.copy(at, app, name, fill);
    });
  }

  private async copy(at: LocateAnswer, app: string, name: string, fill: CacheFill): Promise<void> {
    const url = `${at.url}/${encodeURIComponent(app)}/${name.split('/').map(encodeURIComponent).join('/')}`;
    const cfg = this.opts.config;
    const idleMs = cfg.vod.fetch_timeout_ms;
    const ac = new AbortController();
    const onAbort = (): void => ac.abort(fill.signal.reason);
    fill.signal.addEventListener('abort', onAbort);
    let idle: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => ac.abort(new VodError('unavailable', `copy of VOD file ${app}/${name} from node ${at.node} received nothing for ${idleMs} ms (vod.fetch_timeout_ms)`)), idleMs);
    };
    const fail = (why: string): VodError => new VodError('unavailable', `copy of VOD file ${app}/${name} from node ${at.node} (${url}) failed: ${why}`);
    const started = Date.now();
    arm();
    const out = await open(fill.dest, 'w');
    let got = 0;
    try {
      let res: Response;
      try {
        res = await fetch(url, { headers: { [VOD_PULL_HEADER]: vodPullHeader(cfg.mesh.mesh_secret, cfg.node_id, app, name, at.node) }, signal: ac.signal, redirect: 'error' });
      } catch (err) {
        throw ac.signal.reason instanceof VodError ? ac.signal.reason : fail((err as Error).message);
      }
      if (res.status !== 200 || !res.body) {
        const text = await res.text().catch(() => '');
        throw fail(`HTTP ${res.status} ${text.slice(0, 200)}`);
      }
      try {
        for await (const chunk of res.body) {
          arm();
          got += chunk.byteLength;
          if (got > at.size) throw fail(`more than the ${at.size} bytes the node announced`);
          await out.write(chunk);
        }
      } catch (err) {
        if (err instanceof VodError) throw err;
        throw ac.signal.reason instanceof VodError ? ac.signal.reason : fail((err as Error).message);
      }
      if (got !== at.size) throw fail(`got ${got} of ${at.size} bytes`);
      this.log.info({ app, file: name, from: at.node, bytes: got, ms: Date.now() - started }, 'VOD file copied into the cache');
    } finally {
      clearTimeout(idle);
      fill.signal.removeEventListener('abort', onAbort);
      await out.close();
    }
  }
}

/** True when some app of this config may be a VOD app (per app, `"*"` or `app_defaults`). */
export function hasVodApps(cfg: NodeConfig): boolean {
  return cfg.app_defaults.vod !== false || Object.values(cfg.apps).some((a) => a.vod);
}

/**
 * Gives the node's library the mesh as its remote source (and answers other nodes' locate
 * requests), when the node has VOD apps. The cache directory is made (and emptied) here: a
 * directory that cannot be made fails the start, naming `vod.cache_dir`.
 */
export async function joinVodMesh(opts: { bus: Bus; config: NodeConfig; library: LocalVodLibrary; selfUrl: () => string; log: Logger }): Promise<MeshVodRemote | undefined> {
  const cfg = opts.config;
  if (!hasVodApps(cfg)) return undefined;
  const cache = new VodCache(cfg.vod.cache_dir, cfg.vod.cache_max_bytes, opts.log);
  try {
    await cache.start();
  } catch (err) {
    throw settingError('vod.cache_dir', `${JSON.stringify(cfg.vod.cache_dir)} cannot be used: ${(err as Error).message}`);
  }
  const remote = new MeshVodRemote({ ...opts, cache });
  remote.start();
  opts.library.remote = remote;
  return remote;
}
