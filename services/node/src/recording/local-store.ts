/**
 * Recordings in a local directory: `<dir>/<app>/<stream>/<start>_<node>.flv` (or `.mp4`, fMP4), one file per
 * segment, appended as frames are flushed (a node that is killed leaves every byte it wrote, a
 * playable file up to its last whole tag). The embedded default, and the store of a node
 * without NATS. Durations are read from each file's last tag or sample (cached by size).
 */
import { mkdir, open, readdir, rm, stat, type FileHandle } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { lastTagTimestamp, readFlvTags } from './flv-segment.ts';
import { readFmp4Tags } from './fmp4-segment.ts';
import { parseSegmentKey, RecordingStoreError, segmentKey, streamPrefix, type ByteRange, type RecordingStore, type SegmentInfo, type SegmentRef, type SegmentWriter, type StoreUsage } from './store.ts';

const TAIL_BYTES = 64 * 1024;

function storeError(what: string, err: unknown): RecordingStoreError {
  const e = err as NodeJS.ErrnoException;
  return new RecordingStoreError(`${what}: ${e.code ? `${e.code} ` : ''}${e.message ?? String(err)}`, { cause: err });
}

export class LocalDirStore implements RecordingStore {
  readonly kind = 'local' as const;
  /** key → duration read at a size, so an unchanged file is not read again. */
  private readonly durations = new Map<string, { bytes: number; durationMs: number }>();

  constructor(readonly dir: string) {}

  private path(key: string): string {
    return join(this.dir, ...key.split('/'));
  }

  async open(ref: SegmentRef): Promise<SegmentWriter> {
    const key = segmentKey(ref);
    const file = this.path(key);
    let fh: FileHandle;
    try {
      await mkdir(join(this.dir, ...streamPrefix(ref.app, ref.stream).split('/')), { recursive: true });
      fh = await open(file, 'wx');
    } catch (err) {
      throw storeError(`cannot create ${file}`, err);
    }
    let closed = false;
    return {
      append: async (data) => {
        try {
          await fh.write(data);
        } catch (err) {
          throw storeError(`cannot write ${file}`, err);
        }
      },
      close: async () => {
        if (closed) return;
        closed = true;
        await fh.close().catch((err: unknown) => {
          throw storeError(`cannot close ${file}`, err);
        });
      },
    };
  }

  async list(filter?: { app: string; stream: string }): Promise<SegmentInfo[]> {
    const keys: string[] = [];
    try {
      if (filter) {
        const prefix = streamPrefix(filter.app, filter.stream);
        for (const f of await readdirOrEmpty(this.path(prefix))) keys.push(prefix + f);
      } else {
        for (const a of await readdirOrEmpty(this.dir)) for (const s of await readdirOrEmpty(join(this.dir, a))) for (const f of await readdirOrEmpty(join(this.dir, a, s))) keys.push(`${a}/${s}/${f}`);
      }
    } catch (err) {
      throw storeError(`cannot list ${this.dir}`, err);
    }
    const out: SegmentInfo[] = [];
    for (const key of keys) {
      const ref = parseSegmentKey(key);
      if (!ref) continue;
      const info = await this.info(key, ref).catch(() => undefined);
      if (info) out.push(info);
    }
    return out.sort((a, b) => a.startMs - b.startMs);
  }

  private async info(key: string, ref: SegmentRef): Promise<SegmentInfo | undefined> {
    const file = this.path(key);
    const st = await stat(file);
    const known = this.durations.get(key);
    if (known && known.bytes === st.size) return { ...ref, key, bytes: st.size, durationMs: known.durationMs };
    const fh = await open(file, 'r');
    let durationMs = 0;
    try {
      if (ref.format === 'fmp4') {
        // Fragmented MP4: its last sample says (a file cut short: its last whole fragment).
        const tags = await readFmp4Tags(await fh.readFile()).catch(() => []);
        durationMs = tags.length > 0 ? tags[tags.length - 1]!.timestamp : 0;
        this.durations.set(key, { bytes: st.size, durationMs });
        return { ...ref, key, bytes: st.size, durationMs };
      }
      const n = Math.min(st.size, TAIL_BYTES);
      const tail = Buffer.alloc(n);
      await fh.read(tail, 0, n, st.size - n);
      let last = lastTagTimestamp(tail, st.size);
      if (last === undefined && st.size > 0) {
        // Cut short (its writer died mid-tag): the last whole tag says.
        const tags = readFlvTags(await fh.readFile());
        last = tags.length > 0 ? tags[tags.length - 1]!.timestamp : 0;
      }
      durationMs = last ?? 0;
    } finally {
      await fh.close();
    }
    this.durations.set(key, { bytes: st.size, durationMs });
    return { ...ref, key, bytes: st.size, durationMs };
  }

  async read(seg: SegmentInfo, range?: ByteRange): Promise<Buffer> {
    const file = this.path(seg.key);
    try {
      const fh = await open(file, 'r');
      try {
        const size = (await fh.stat()).size;
        const start = range?.start ?? 0;
        const end = Math.min(range?.end ?? size, size);
        const buf = Buffer.alloc(Math.max(0, end - start));
        await fh.read(buf, 0, buf.length, start);
        return buf;
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw storeError(`cannot read ${file}`, err);
    }
  }

  async delete(seg: SegmentInfo): Promise<void> {
    this.durations.delete(seg.key);
    try {
      await rm(this.path(seg.key), { force: true });
    } catch (err) {
      throw storeError(`cannot delete ${this.path(seg.key)}`, err);
    }
  }

  async usage(): Promise<StoreUsage> {
    const segs = await this.list();
    return { bytes: segs.reduce((n, s) => n + s.bytes, 0), segments: segs.length };
  }

  async close(): Promise<void> {}
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((f) => !f.includes(sep));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}
