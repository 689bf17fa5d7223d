/**
 * RecordingService: one per node. It records every stream this node owns whose app has
 * `record` on (a StreamRecorder per stream, started when a publisher that is not a relay
 * attaches to the stream's hub: an RTMP publisher, a promoted standby, a static pull), runs
 * retention over the store, and reads recordings back for the playback API.
 *
 * Ownership is read from the hub itself: the mesh's PublishedStream actor attaches the primary
 * publisher to the hub only on the node that holds the stream's lease, and relays attach as
 * `relay`. So whichever path moves a stream (takeover, owner killed, standby promoted), the
 * new owner's hub sees a new publisher and records a new segment from its first keyframe.
 */
import type { NodeConfig } from '../config.ts';
import { appConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { PublisherHandle, StreamHub } from '../media/stream-hub.ts';
import type { StreamRegistry } from '../media/stream-registry.ts';
import { FailureLogLimiter } from '@meshcast/mesh';
import { natsAuthOptions } from '../auth/nats-auth.ts';
import { LocalDirStore } from './local-store.ts';
import { NatsObjectStore } from './object-store.ts';
import { readFlvTags } from './flv-segment.ts';
import { readFmp4Tags } from './fmp4-segment.ts';
import { segmentsToDelete, type DeleteReason } from './retention.ts';
import { stitchMp4, type SegmentTags, type StitchedMp4 } from './mp4.ts';
import { segmentKey, type RecordingStore, type SegmentInfo, type StoreUsage } from './store.ts';
import { StreamRecorder, type RecorderCounters } from './stream-recorder.ts';

export interface RecordingServiceOptions {
  now?: () => number;
  /** How often retention runs (default: a quarter of the shortest retention, 1 s..60 s). */
  sweepMs?: number;
}

export function storeFor(config: NodeConfig): RecordingStore {
  const r = config.recording;
  const mesh = config.mesh.nats.length > 0;
  if (r.storage === 'object_store' || (r.storage === 'auto' && mesh)) {
    return new NatsObjectStore({
      servers: config.mesh.nats,
      name: config.node_id,
      bucket: `${config.mesh.subject_prefix}-recordings`,
      replicas: Math.max(1, Math.floor(config.mesh.nats_replicas)),
      maxBytes: r.max_bytes,
      flushMs: r.flush_ms,
      auth: natsAuthOptions(config.mesh),
    });
  }
  return new LocalDirStore(r.dir);
}

export class RecordingService {
  readonly store: RecordingStore;
  private readonly recorders = new Map<string, StreamRecorder>();
  readonly counters: RecorderCounters = { bytesWritten: 0, bytesDropped: 0, segmentsWritten: 0, storeErrors: 0 };
  readonly deleted: Record<DeleteReason, number> = { retention: 0, max_bytes: 0 };
  /** What the last retention run saw (metrics read it; scrapes never wait for the store). */
  usage: StoreUsage = { bytes: 0, segments: 0 };
  private readonly sweeper: NodeJS.Timeout | undefined;
  private sweeping = false;
  private readonly sweepFailures = new FailureLogLimiter();
  private closed = false;
  private readonly now: () => number;
  private readonly onOpened = (hub: StreamHub): void => this.watch(hub);

  constructor(
    readonly config: NodeConfig,
    private readonly registry: StreamRegistry,
    private readonly log: Logger,
    opts: RecordingServiceOptions & { store?: RecordingStore } = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.store = opts.store ?? storeFor(config);
    registry.on('opened', this.onOpened);
    for (const hub of registry.list()) this.watch(hub);
    const retentions = this.recordConfigs().map((r) => r.retention_s * 1000);
    if (retentions.length > 0) {
      const every = opts.sweepMs ?? Math.min(60_000, Math.max(1000, Math.min(...retentions) / 4));
      this.sweeper = setInterval(() => void this.sweep(), every);
      this.sweeper.unref();
      this.log.info({ store: this.store.kind, every }, 'recording enabled');
    }
  }

  private recordConfigs(): Array<Exclude<NodeConfig['app_defaults']['record'], false>> {
    const out = [this.config.app_defaults.record, ...Object.values(this.config.apps).map((a) => a.record)];
    return out.filter((r): r is Exclude<typeof r, false | undefined> => r !== false && r !== undefined);
  }

  get recording(): number {
    return this.recorders.size;
  }

  private watch(hub: StreamHub): void {
    hub.on('publish', (p: PublisherHandle) => this.publisherChanged(hub, p));
    hub.on('unpublish', () => void this.stopRecording(hub));
    // A closed hub (node stopping, stream fenced) says idle without unpublishing first.
    hub.on('idle', () => void this.stopRecording(hub));
    if (hub.publisher) this.publisherChanged(hub, hub.publisher);
  }

  private publisherChanged(hub: StreamHub, p: PublisherHandle): void {
    if (this.closed) return;
    const rec = appConfig(this.config, hub.app).record;
    const existing = this.recorders.get(hub.key);
    if (!rec || p.kind === 'relay') {
      // A relay: this node no longer owns the stream (its recorder, if any, stops).
      if (existing) void this.stopRecording(hub);
      return;
    }
    if (existing && existing.hub === hub) {
      existing.newPublisher();
      return;
    }
    // A recorder left on a replaced hub of the same stream ends its segment first.
    if (existing) void this.stopRecording(existing.hub);
    const recorder = new StreamRecorder(
      hub,
      this.store,
      { node: this.config.node_id, format: rec.format, segmentMs: rec.segment_s * 1000, queueBytes: this.config.recording.queue_bytes, now: this.now },
      this.counters,
      this.log.child({ app: hub.app, stream: hub.stream, recording: true }),
    );
    this.recorders.set(hub.key, recorder);
    recorder.start();
  }

  private async stopRecording(hub: StreamHub): Promise<void> {
    const r = this.recorders.get(hub.key);
    if (!r || r.hub !== hub) return;
    this.recorders.delete(hub.key);
    await r.stop();
  }

  /** Keys of segments this node is writing now (retention leaves them alone). */
  private writing(): Set<string> {
    const out = new Set<string>();
    for (const r of this.recorders.values()) {
      const k = r.openSegment;
      if (k) out.add(segmentKey({ ...k, app: r.hub.app, stream: r.hub.stream, node: this.config.node_id, format: r.format }));
    }
    return out;
  }

  /** One retention run: deletes what segmentsToDelete chooses and refreshes the usage figures. */
  async sweep(): Promise<void> {
    if (this.sweeping || this.closed) return;
    this.sweeping = true;
    try {
      const segments = await this.store.list();
      const usage = await this.store.usage();
      const retentionMs = (app: string): number | undefined => {
        const r = appConfig(this.config, app).record;
        return r ? r.retention_s * 1000 : undefined;
      };
      const doomed = segmentsToDelete(segments, { now: this.now(), retentionMs, maxBytes: this.config.recording.max_bytes, usedBytes: usage.bytes, writing: this.writing() });
      for (const { seg, reason } of doomed) {
        try {
          await this.store.delete(seg);
        } catch (err) {
          // Every node sweeps a shared object store: another may have deleted it first.
          this.log.debug({ segment: seg.key, err: (err as Error).message }, 'recording segment not deleted');
          continue;
        }
        this.deleted[reason]++;
        this.log.info({ app: seg.app, stream: seg.stream, start: new Date(seg.startMs).toISOString(), bytes: seg.bytes, reason }, 'recording segment deleted');
      }
      this.usage = doomed.length > 0 ? await this.store.usage() : usage;
      const streak = this.sweepFailures.success();
      if (streak > 0) this.log.info({ failures: streak }, 'recording retention works again');
    } catch (err) {
      const d = this.sweepFailures.failure();
      if (d.level === 'warn') this.log.warn({ err: (err as Error).message, store: this.store.kind, suppressed: d.suppressed }, 'recording retention failed; will retry');
    } finally {
      this.sweeping = false;
    }
  }

  async segments(app: string, stream: string): Promise<SegmentInfo[]> {
    return this.store.list({ app, stream });
  }

  /** One MP4 of the stream's recording from `fromMs` for `durationMs` (see mp4.ts). */
  async mp4(app: string, stream: string, fromMs: number, durationMs: number): Promise<StitchedMp4> {
    const toMs = fromMs + durationMs;
    const all = await this.segments(app, stream);
    // The segment holding the keyframe before fromMs starts before it: take every segment that reaches into the span.
    const used = all.filter((s) => s.startMs < toMs && s.startMs + s.durationMs >= fromMs);
    const parts: SegmentTags[] = [];
    for (const s of used) {
      const data = await this.store.read(s);
      try {
        parts.push({ startMs: s.startMs, tags: s.format === 'fmp4' ? await readFmp4Tags(data) : readFlvTags(data) });
      } catch (err) {
        // One damaged segment leaves a hole, not a failed request.
        this.log.warn({ app, stream, segment: s.key, err: (err as Error).message }, 'recording segment unreadable; skipped');
      }
    }
    return stitchMp4(parts, fromMs, toMs);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.registry.off('opened', this.onOpened);
    await Promise.all([...this.recorders.values()].map((r) => r.stop()));
    this.recorders.clear();
    await this.store.close();
  }
}
