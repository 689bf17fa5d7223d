/**
 * The files a VOD app serves, and the one place a client's request name becomes a file.
 *
 * A request names a file relative to the app's root (`apps.<app>.vod.root`): RTMP
 * `mp4:dir/file.mp4`, `flv:file.flv`, `file.flv`, or `file` (FLV assumed, `file.flv`); HTTP the
 * path after the app. `resolve` turns it into a file that is safe to open — a local one under
 * the root, or (with a remote source: the mesh) a copy in this node's cache — or refuses with a
 * {@link VodError}. Every protocol (RTMP VOD, HTTP progressive, HLS VOD) goes through here, so
 * the path rules exist once:
 *
 * - names are checked as text first (`parseVodName`): no `..`, no absolute path, no empty or
 *   hidden (`.`-led) segment, no backslash, `%`, `?`, `#`, `:` or control character (NUL
 *   included) — a name still holding `%` after the HTTP layer decoded it was encoded twice;
 * - then on disk: the file's real path (symlinks resolved) must stay under the root's real path,
 *   and be a regular file;
 * - only `.mp4`/`.m4v` (MP4) and `.flv` (FLV) are served.
 *
 * An app with `vod: {recordings: <live app>}` has no root: its names are streams of the live
 * app (parseRecordingName, after the same text rules), and its files are stitched recordings
 * made in the node's VOD cache (vod-recordings.ts).
 */
import { realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { appConfig, type NodeConfig } from '../config.ts';
import { parseRecordingName, type RecordingsVodSource } from './vod-recordings.ts';

export type VodFormat = 'mp4' | 'flv';

export interface VodFile {
  app: string;
  /** The file relative to the app's root, as checked (`dir/file.mp4`). */
  name: string;
  /** Absolute local path, safe to open (under the root, or in the node's VOD cache). */
  path: string;
  size: number;
  format: VodFormat;
}

export type VodRefusal = 'bad_path' | 'not_found' | 'not_vod_app' | 'unavailable';

/** Why a request gets no file: `bad_path` → 400, `not_found` / `not_vod_app` → 404, `unavailable` (the mesh could not deliver it) → 503. */
export class VodError extends Error {
  override readonly name = 'VodError';
  constructor(
    readonly reason: VodRefusal,
    message: string,
  ) {
    super(message);
  }
}

/** The HTTP status a refusal maps to (one place for the HTTP routes). */
export function vodHttpStatus(reason: VodRefusal): number {
  return reason === 'bad_path' ? 400 : reason === 'unavailable' ? 503 : 404;
}

export interface VodLibrary {
  isVodApp(app: string): boolean;
  /** A request name's checked form, the name the app's play rules see; throws VodError('bad_path'). */
  checkedName(app: string, requestName: string): { name: string; format: VodFormat };
  /** The file a request names; rejects with a {@link VodError}. */
  resolve(app: string, requestName: string): Promise<VodFile>;
}

const EXTENSIONS: Record<string, VodFormat> = { '.mp4': 'mp4', '.m4v': 'mp4', '.flv': 'flv' };

/** A client's request name, checked as text: the relative path it names and the file's format. Throws VodError('bad_path'). */
export function parseVodName(requestName: string): { name: string; format: VodFormat } {
  let rest = requestName;
  let prefix: VodFormat | undefined;
  const m = /^(mp4|flv):/i.exec(rest);
  if (m) {
    prefix = m[1]!.toLowerCase() as VodFormat;
    rest = rest.slice(m[0].length);
  }
  const bad = (why: string): VodError => new VodError('bad_path', `refused VOD path ${JSON.stringify(requestName.slice(0, 200))}: ${why}`);
  if (rest === '') throw bad('empty name');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(rest)) throw bad('control character');
  if (rest.includes('\\')) throw bad('backslash');
  if (rest.includes('%')) throw bad('percent sign (an encoded name)');
  if (/[?#:]/.test(rest)) throw bad('"?", "#" or ":" in the name');
  if (rest.startsWith('/')) throw bad('absolute path');
  const segments = rest.split('/');
  for (const s of segments) {
    if (s === '') throw bad('empty path segment');
    if (s === '.' || s === '..') throw bad('"." or ".." segment');
    if (s.startsWith('.')) throw bad('hidden file or directory');
  }
  const last = segments[segments.length - 1]!;
  const dot = last.lastIndexOf('.');
  const ext = dot > 0 ? last.slice(dot).toLowerCase() : '';
  let format = EXTENSIONS[ext];
  let name = rest;
  if (prefix === 'mp4') {
    if (format === undefined) {
      // FMS-style `mp4:dir/file`: the MP4 file of that name.
      name = `${rest}.mp4`;
      format = 'mp4';
    } else if (format !== 'mp4') throw bad('an mp4: name must name an .mp4 or .m4v file');
  } else if (prefix === 'flv') {
    if (format === undefined) {
      name = `${rest}.flv`;
      format = 'flv';
    } else if (format !== 'flv') throw bad('an flv: name must name an .flv file');
  } else if (format === undefined) {
    // No prefix and no known extension: an FLV file (`file` → `file.flv`), as FMS and crtmpserver do.
    name = `${rest}.flv`;
    format = 'flv';
  }
  return { name, format };
}

/** Where a VOD app's files come from on this node. */
export interface VodAppSource {
  /** Absolute or working-directory-relative root; empty when this node holds none of the app's files (mesh only). */
  root: string;
  /** Files not under the root are looked for elsewhere (the mesh); default true. */
  remote?: boolean;
  /** The live app whose recordings this app serves instead of files (vod-recordings.ts); empty or absent = files. */
  recordings?: string;
}

/**
 * Files this node does not hold: found elsewhere (another node, a store), copied once into the
 * local cache. Rejects with VodError `not_found` (nobody has it) or `unavailable`.
 */
export interface VodRemote {
  fetch(app: string, name: string, format: VodFormat): Promise<{ path: string; size: number }>;
  /** Stops copies in progress and answering other nodes (node stopping). */
  close?(): void;
}

export interface LocalVodLibraryOptions {
  /** The app's VOD settings, or undefined when it is not a VOD app. */
  appSource: (app: string) => VodAppSource | undefined;
  /** Set when the node is in a mesh (see vod-remote.ts). */
  remote?: VodRemote;
  /** The longest stream name (limits.max_stream_name_bytes): a recordings app's names are stream names. */
  maxStreamNameBytes?: number;
}

/** The node's library: the app's root first, then the remote source. */
export class LocalVodLibrary implements VodLibrary {
  /** Real paths of roots, resolved once per root. */
  private readonly realRoots = new Map<string, Promise<string | undefined>>();
  remote: VodRemote | undefined;
  /** Makes the files of apps that serve recordings (set at start when the node has such an app). */
  recordings: RecordingsVodSource | undefined;
  /** Refused requests by reason, for `/metrics`. */
  readonly refusals: Record<VodRefusal, number> = { bad_path: 0, not_found: 0, not_vod_app: 0, unavailable: 0 };

  constructor(private readonly opts: LocalVodLibraryOptions) {
    this.remote = opts.remote;
  }

  isVodApp(app: string): boolean {
    return this.opts.appSource(app) !== undefined;
  }

  /**
   * A request name's checked form for this app, the name its play rules see: parseVodName's for
   * a file app (`mp4:dir/a` → `dir/a.mp4`), parseRecordingName's for a recordings app (`cam1` →
   * `cam1.mp4`). Throws VodError('bad_path').
   */
  checkedName(app: string, requestName: string): { name: string; format: VodFormat } {
    if (this.opts.appSource(app)?.recordings) return { name: parseRecordingName(requestName, this.maxStreamNameBytes).name, format: 'mp4' };
    return parseVodName(requestName);
  }

  private get maxStreamNameBytes(): number {
    return this.opts.maxStreamNameBytes ?? 1024;
  }

  async resolve(app: string, requestName: string): Promise<VodFile> {
    try {
      return await this.find(app, requestName);
    } catch (err) {
      if (err instanceof VodError) this.refusals[err.reason]++;
      throw err;
    }
  }

  private async find(app: string, requestName: string): Promise<VodFile> {
    const source = this.opts.appSource(app);
    if (!source) throw new VodError('not_vod_app', `app ${JSON.stringify(app)} is not a VOD app`);
    if (source.recordings) {
      const named = parseRecordingName(requestName, this.maxStreamNameBytes);
      if (!this.recordings) throw new VodError('unavailable', `VOD app ${JSON.stringify(app)} serves recordings, and this node has no recordings source`);
      const got = await this.recordings.file(app, source.recordings, named);
      return { app, name: named.name, format: 'mp4', path: got.path, size: got.size };
    }
    const { name, format } = parseVodName(requestName);
    const local = await this.localFile(app, name);
    if (local) return local;
    if (!this.remote || source.remote === false) throw new VodError('not_found', `no VOD file ${app}/${name}`);
    const got = await this.remote.fetch(app, name, format);
    return { app, name, format, path: got.path, size: got.size };
  }

  /**
   * The app's file `name` (already checked by parseVodName) under this node's root, or undefined
   * when this node does not hold it. Throws VodError('bad_path') when the real path leaves the root.
   */
  async localFile(app: string, name: string): Promise<VodFile | undefined> {
    const source = this.opts.appSource(app);
    // A recordings app has no root: its files are made here, never copied from another node.
    if (!source || source.root === '' || source.recordings) return undefined;
    const root = await this.realRoot(source.root);
    if (root === undefined) return undefined;
    let real: string;
    try {
      real = await realpath(join(root, name));
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw new VodError('unavailable', `VOD file ${app}/${name}: ${(err as Error).message}`);
    }
    if (!real.startsWith(root.endsWith(sep) ? root : root + sep)) {
      throw new VodError('bad_path', `refused VOD path ${JSON.stringify(name)}: it resolves outside the app's root (a symbolic link)`);
    }
    const st = await stat(real).catch((err: unknown) => {
      if (isMissing(err)) return undefined;
      throw new VodError('unavailable', `VOD file ${app}/${name}: ${(err as Error).message}`);
    });
    if (!st) return undefined;
    if (!st.isFile()) throw new VodError('not_found', `VOD path ${app}/${name} is not a file`);
    return { app, name, path: real, size: st.size, format: parseVodName(name).format };
  }

  close(): void {
    this.remote?.close?.();
  }

  private realRoot(root: string): Promise<string | undefined> {
    let p = this.realRoots.get(root);
    if (!p) {
      // A root that vanished after start serves nothing (and is looked up again next time).
      p = realpath(root).catch(() => {
        this.realRoots.delete(root);
        return undefined;
      });
      this.realRoots.set(root, p);
    }
    return p;
  }
}

/** The node's library from its config (per-app `vod`); the mesh sets `remote` when the node joins one. */
export function vodLibraryFor(cfg: NodeConfig): LocalVodLibrary {
  return new LocalVodLibrary({
    appSource: (app) => {
      const v = appConfig(cfg, app).vod;
      return v ? { root: v.root, remote: v.remote, recordings: v.recordings } : undefined;
    },
    maxStreamNameBytes: cfg.limits.max_stream_name_bytes,
  });
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
