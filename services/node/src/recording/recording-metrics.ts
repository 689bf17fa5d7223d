/** Recording figures for `/metrics`, read from the node's RecordingService when scraped (never waiting for the store). */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { HttpFeatureContext } from '../http/features.ts';
import { recordingService } from './recording-feature.ts';

export function registerRecordingMetrics(ctx: HttpFeatureContext, registers: Registry[]): void {
  const s = recordingService(ctx);
  const storeLabel = { store: s.store.kind };
  new Gauge({
    name: 'meshcast_recording_store_bytes',
    help: 'Bytes the recording store holds (the directory\'s segments, or the object-store bucket), as of the last retention run.',
    labelNames: ['store'],
    registers,
    collect() {
      this.set(storeLabel, s.usage.bytes);
    },
  });
  new Gauge({
    name: 'meshcast_recording_store_max_bytes',
    help: 'recording.max_bytes: past it the oldest segments are deleted.',
    labelNames: ['store'],
    registers,
    collect() {
      this.set(storeLabel, s.config.recording.max_bytes);
    },
  });
  new Gauge({ name: 'meshcast_recording_segments', help: 'Segments in the recording store, as of the last retention run.', labelNames: ['store'], registers, collect() {
    this.set(storeLabel, s.usage.segments);
  } });
  new Gauge({ name: 'meshcast_recordings_active', help: 'Streams this node is recording now (it owns them and their app records).', registers, collect() {
    this.set(s.recording);
  } });
  const counter = (name: string, help: string, read: () => number): void => {
    let last = 0;
    new Counter({ name, help, registers, collect() {
      const v = read();
      if (v > last) this.inc(v - last);
      last = v;
    } });
  };
  counter('meshcast_recording_bytes_written_total', 'Bytes of recording segments written to the store by this node.', () => s.counters.bytesWritten);
  counter('meshcast_recording_bytes_dropped_total', 'Bytes not recorded because the store was slow (queue full) or failing.', () => s.counters.bytesDropped);
  counter('meshcast_recording_segments_written_total', 'Recording segments this node finished.', () => s.counters.segmentsWritten);
  counter('meshcast_recording_store_errors_total', 'Recording store operations that failed (full disk, unwritable directory, unreachable object store).', () => s.counters.storeErrors);
  const seen = { retention: 0, max_bytes: 0 };
  new Counter({ name: 'meshcast_recording_segments_deleted_total', help: 'Segments deleted by retention (age) or to stay under recording.max_bytes.', labelNames: ['reason'], registers, collect() {
    for (const r of ['retention', 'max_bytes'] as const) {
      this.inc({ reason: r }, Math.max(0, s.deleted[r] - seen[r]));
      seen[r] = s.deleted[r];
    }
  } });
}
