/**
 * The node's cache of VOD files copied from elsewhere (another node of the mesh): one directory
 * (`vod.cache_dir`), bounded in bytes (`vod.cache_max_bytes`), least recently used first out.
 *
 * One copy per file per node: concurrent requests for a file that is being copied wait for that
 * copy (single-flight) instead of starting their own. Room is made before a copy starts (the
 * copier tells its size through `reserve`), so the directory never holds more than the bound,
 * partial copies included.
 *
 * A file removed while a viewer reads it stays readable through the viewer's open descriptor
 * (POSIX unlink semantics); a later request copies it again.
 *
 * Files are named by a hash of app and name, so nothing a client sends becomes a path here.
 * The cache starts empty: its files from an earlier run are removed (a copy is never trusted
 * across restarts, and what the origin holds may have changed).
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Logger } from '../log.ts';
import { VodError } from './vod-library.ts';

const CACHE_FILE = /^[0-9a-f]{40}-\d+\.(mp4|m4v|flv)(\.part)?$/;

export interface VodCacheStats {
  /** Copies started (one per file per miss, however many requests wait for it). */
  fetches: number;
  /** Copies that failed. */
  fetchFailures: number;
  /** Requests answered from the cache without a copy of their own (a cached file, or one being copied). */
  hits: number;
  /** Of the hits: requests that waited for a copy another request started. */
  sharedFetches: number;
  evictions: number;
  /** Bytes copied into the cache. */
  fetchedBytes: number;
  /** Bytes the cache holds now (finished files and room reserved for copies in progress). */
  bytes: number;
  files: number;
  maxBytes: number;
}

/** What a copier gets: where to write, room to reserve once it knows the size, and a signal to stop. */
export interface CacheFill {
  /** Write the file here; the cache moves it into place when the copy resolves. */
  dest: string;
  /** Makes room for `size` bytes (evicting the least recently used files); throws VodError('unavailable') when the file is larger than the cache. */
  reserve(size: number): void;
  signal: AbortSignal;
}

interface Entry {
  path: string;
  size: number;
}

interface Flight {
  promise: Promise<Entry>;
  reserved: number;
}

export class VodCache {
  /** Finished files, least recently used first (Map order; a use moves the key to the end). */
  private readonly entries = new Map<string, Entry>();
  private readonly flights = new Map<string, Flight>();
  private readonly aborter = new AbortController();
  private readonly dir: string;
  private held = 0;
  /** Each copy gets its own file name, so removing an evicted copy never races with a new copy of the same file. */
  private seq = 0;
  readonly stats: Omit<VodCacheStats, 'bytes' | 'files' | 'maxBytes'> = { fetches: 0, fetchFailures: 0, hits: 0, sharedFetches: 0, evictions: 0, fetchedBytes: 0 };

  constructor(
    dir: string,
    readonly maxBytes: number,
    private readonly log: Logger,
  ) {
    this.dir = resolve(dir);
  }

  /**
   * Removes cache files an earlier run left (only names this cache makes). The directory itself
   * is made by the first copy: a node whose VOD apps never copy anything leaves no trace.
   */
  async start(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const f of names) if (CACHE_FILE.test(f)) await rm(join(this.dir, f), { force: true });
  }

  snapshot(): VodCacheStats {
    return { ...this.stats, bytes: this.held, files: this.entries.size, maxBytes: this.maxBytes };
  }

  /**
   * The cached copy of `app`/`name`, made by `fill` on a miss. Requests that arrive while a copy
   * is under way share it; a failed copy is not remembered (the next request tries again).
   */
  async get(app: string, name: string, ext: string, fill: (f: CacheFill) => Promise<void>): Promise<Entry> {
    const key = createHash('sha256').update(`${app}\u0000${name}`).digest('hex').slice(0, 40);
    const hit = this.entries.get(key);
    if (hit) {
      // Removed behind our back (an operator cleaning the directory): copy it again.
      const st = await stat(hit.path).catch(() => undefined);
      if (st?.size === hit.size && this.entries.get(key) === hit) {
        this.entries.delete(key);
        this.entries.set(key, hit);
        this.stats.hits++;
        return hit;
      }
      this.drop(key);
    }
    const flying = this.flights.get(key);
    if (flying) {
      this.stats.hits++;
      this.stats.sharedFetches++;
      return flying.promise;
    }
    const path = join(this.dir, `${key}-${++this.seq}${ext}`);
    const flight: Flight = { promise: undefined as unknown as Promise<Entry>, reserved: 0 };
    this.stats.fetches++;
    flight.promise = (async () => {
      const dest = `${path}.part`;
      try {
        await mkdir(this.dir, { recursive: true });
        await fill({
          dest,
          signal: this.aborter.signal,
          reserve: (size) => {
            if (size > this.maxBytes) throw new VodError('unavailable', `VOD file ${app}/${name} (${size} bytes) is larger than the cache (vod.cache_max_bytes ${this.maxBytes})`);
            this.held += size - flight.reserved;
            flight.reserved = size;
            this.evictFor(key);
            if (this.held > this.maxBytes) {
              this.held -= flight.reserved;
              flight.reserved = 0;
              throw new VodError('unavailable', `VOD cache is full of copies in progress; ${app}/${name} (${size} bytes) is not copied now (vod.cache_max_bytes ${this.maxBytes})`);
            }
          },
        });
        const size = (await stat(dest)).size;
        await rename(dest, path);
        this.held += size - flight.reserved;
        flight.reserved = 0;
        const entry = { path, size };
        this.entries.set(key, entry);
        this.stats.fetchedBytes += size;
        this.evictFor(key);
        return entry;
      } catch (err) {
        this.held -= flight.reserved;
        flight.reserved = 0;
        this.stats.fetchFailures++;
        await rm(dest, { force: true }).catch(() => undefined);
        throw err;
      } finally {
        this.flights.delete(key);
      }
    })();
    this.flights.set(key, flight);
    return flight.promise;
  }

  /** Stops copies in progress (node stopping). */
  close(): void {
    this.aborter.abort(new VodError('unavailable', 'node stopping'));
  }

  /** Evicts least recently used finished files (never `keep`) until the cache is within its bound. */
  private evictFor(keep: string): void {
    for (const [key] of this.entries) {
      if (this.held <= this.maxBytes) return;
      if (key === keep) continue;
      this.drop(key);
      this.stats.evictions++;
    }
    // Only when a copy turned out larger than it said: the next copies make the room back.
    if (this.held > this.maxBytes) this.log.warn({ held: this.held, maxBytes: this.maxBytes, copies: this.flights.size }, 'VOD cache over its bound while copies are in progress (vod.cache_max_bytes)');
  }

  private drop(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    this.held -= e.size;
    rm(e.path, { force: true }).catch((err: unknown) => this.log.warn({ err: String(err), path: e.path }, 'could not remove an evicted VOD cache file'));
  }
}
