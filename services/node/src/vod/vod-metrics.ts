/**
 * VOD figures for `/metrics` and `GET /api/v1/vod` (admin listener): the cache of files copied
 * from other nodes (copies, hits, evictions, bytes) and refused requests, read when asked.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import type { VodCacheStats } from './vod-cache.ts';
import type { LocalVodLibrary, VodRefusal } from './vod-library.ts';
import { MeshVodRemote } from './vod-remote.ts';

/** What the node's VOD library and cache have counted (the cache's figures are absent without VOD apps). */
export function vodStats(ctx: HttpFeatureContext): { refusals: Record<VodRefusal, number>; cache?: VodCacheStats } | undefined {
  const lib = ctx.host.vod as LocalVodLibrary | undefined;
  if (!lib?.refusals) return undefined;
  const remote = lib.remote instanceof MeshVodRemote ? lib.remote : undefined;
  return { refusals: { ...lib.refusals }, cache: remote?.cache.snapshot() };
}

export function registerVodMetrics(ctx: HttpFeatureContext, registers: Registry[]): void {
  const counter = (name: string, help: string, read: (c: VodCacheStats) => number): void => {
    let last = 0;
    new Counter({ name, help, registers, collect() {
      const c = vodStats(ctx)?.cache;
      const v = c ? read(c) : 0;
      if (v > last) this.inc(v - last);
      last = v;
    } });
  };
  counter('meshcast_vod_fetches_total', 'VOD files this node started copying from another node into its cache (one per file per miss, however many viewers wait for it).', (c) => c.fetches);
  counter('meshcast_vod_fetch_failures_total', 'VOD copies from another node that failed.', (c) => c.fetchFailures);
  counter('meshcast_vod_cache_hits_total', 'VOD requests for files not held here answered from the cache (a cached copy, or a copy already under way).', (c) => c.hits);
  counter('meshcast_vod_cache_evictions_total', 'VOD cache files removed to stay under vod.cache_max_bytes.', (c) => c.evictions);
  counter('meshcast_vod_fetched_bytes_total', 'Bytes of VOD files copied into the cache.', (c) => c.fetchedBytes);
  const gauge = (name: string, help: string, read: (c: VodCacheStats) => number): void => {
    new Gauge({ name, help, registers, collect() {
      const c = vodStats(ctx)?.cache;
      this.set(c ? read(c) : 0);
    } });
  };
  gauge('meshcast_vod_cache_bytes', 'Bytes the VOD cache holds (finished copies and room reserved for copies under way).', (c) => c.bytes);
  gauge('meshcast_vod_cache_max_bytes', 'vod.cache_max_bytes.', (c) => c.maxBytes);
  gauge('meshcast_vod_cache_files', 'Files in the VOD cache.', (c) => c.files);
  const seen: Record<string, number> = {};
  new Counter({ name: 'meshcast_vod_refusals_total', help: 'VOD requests refused, by reason (bad_path: a path that would leave the root, or is not a VOD file name).', labelNames: ['reason'], registers, collect() {
    const r = vodStats(ctx)?.refusals;
    if (!r) return;
    for (const [reason, v] of Object.entries(r)) {
      this.inc({ reason }, Math.max(0, v - (seen[reason] ?? 0)));
      seen[reason] = v;
    }
  } });
}

/** `GET /api/v1/vod`: the same figures as JSON (tests and operators). */
export const VOD_ADMIN_FEATURE: HttpFeature = {
  name: 'vod-admin',
  surface: 'admin',
  register(app, ctx) {
    app.get('/api/v1/vod', async () => vodStats(ctx) ?? {});
  },
};
