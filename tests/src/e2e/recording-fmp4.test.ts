/**
 * fMP4 recording (`record.format: fmp4`) across an owner kill, with real peers: a nats-server
 * (the segments live in its JetStream Object Store), ingest nodes A and B as processes, two
 * real ffmpeg encoders with B-frames on one key (E1 → A primary, E2 → B standby) and an RTMP
 * viewer on B.
 *
 * ~16 s are recorded; A is SIGKILLed in the middle and B's promoted standby records on. Every
 * stored segment is an fMP4 file that ffprobe reads alone (H.264 + AAC, growing timestamps,
 * composition offsets kept), the killed owner's last one included. B lists the spans and
 * serves one stitched MP4 that ffmpeg decodes end to end with the recording's duration and no
 * hole longer than the viewer's gap (+ the store's flush interval); a Range request gets 206
 * with the right bytes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RtmpClient } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher, run } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { NatsObjectStore } from '../../../services/node/src/recording/object-store.ts';

const MESH = { mesh_secret: 'e2e-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };
const APPS = { live: { record: { format: 'fmp4', segment_s: 4, retention: '1h' } } };
const FLUSH_MS = 1000;
const ENCODER = { width: 320, height: 180, fps: 25, gop: 25, bitrate: '300k', bframes: 2 };

interface Listing {
  spans: Array<{ start: string; duration: number }>;
  segments: Array<{ start: string; duration: number; bytes: number; node: string; format: string }>;
}

interface Packet {
  pts_time: string;
  dts_time: string;
}

async function videoPackets(file: string): Promise<Array<{ pts: number; dts: number }>> {
  const r = await run('ffprobe', ['-v', 'error', '-select_streams', 'v', '-show_entries', 'packet=pts_time,dts_time', '-of', 'json', file], 20_000);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { packets: Packet[] }).packets.map((p) => ({ pts: Number(p.pts_time), dts: Number(p.dts_time) }));
}

async function decodesCleanly(file: string): Promise<void> {
  const d = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-i', file, '-f', 'null', '-'], 60_000);
  assert.equal(d.code, 0, d.stderr);
  assert.equal(d.stderr.trim(), '', `ffmpeg decodes ${file} without errors: ${d.stderr.slice(0, 300)}`);
}

describe('fMP4 recording across an owner kill', () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  const encoders: FfmpegPublisher[] = [];
  let dir: string;
  let a: NodeProcess;
  let b: NodeProcess;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rec-fmp4-e2e-'));
    nats = await startNatsServer();
    const start = (id: string): Promise<NodeProcess> => NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats.url] }, apps: APPS, recording: { flush_ms: FLUSH_MS, max_bytes: 256 * 1024 * 1024 } } });
    [a, b] = await Promise.all([start('FA'), start('FB')]);
    nodes.push(a, b);
    await waitFor('mesh of 2', async () => (await b.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length >= 2, 15_000, 100);
  });

  after(async () => {
    for (const e of encoders) await e.stop();
    await Promise.all(nodes.map((n) => n.kill()));
    for (const n of nodes) n.cleanup();
    rmSync(dir, { recursive: true, force: true });
    await nats?.stop();
  });

  test('16 s with the owner killed in the middle: fMP4 segments play alone; one MP4 plays end to end; Range', async () => {
    const e1 = new FfmpegPublisher(`${a.rtmpUrl}/live/frec`, ENCODER);
    encoders.push(e1);
    await waitFor('A owns live/frec', async () => (await a.api<{ streams: Array<{ stream: string; publisher: unknown }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'frec')?.publisher, 20_000, 100);
    const e2 = new FfmpegPublisher(`${b.rtmpUrl}/live/frec`, ENCODER);
    encoders.push(e2);
    const video: number[] = [];
    const viewer = await RtmpClient.openPlayer(`${b.rtmpUrl}/live/frec`, {
      onFrame: (m: RtmpMessage) => {
        if (m.type === 9 && m.payload[1] === 1) video.push(Date.now());
      },
    });

    await sleep(8_000);
    const killedAt = Date.now();
    await a.kill();
    await sleep(9_000);
    for (const e of [e1, e2]) await e.stop();
    viewer.close();
    const seen = video.filter((t) => t >= killedAt - 2000);
    let viewerGap = 0;
    for (let i = 1; i < seen.length; i++) viewerGap = Math.max(viewerGap, seen[i]! - seen[i - 1]!);

    // Settled: B's last segment is closed and stored (two listings a flush apart agree).
    let previous = '';
    const listing = await waitFor('the recording listed on B, settled', async () => {
      const l = (await (await fetch(`${b.httpUrl}/api/v1/recordings/live/frec`)).json()) as Listing;
      const same = JSON.stringify(l) === previous;
      previous = JSON.stringify(l);
      return same && l.segments.some((s) => s.node === 'FB') && l.segments.length >= 4 ? l : undefined;
    }, 20_000, FLUSH_MS + 200);
    assert.deepEqual([...new Set(listing.segments.map((s) => s.node))].sort(), ['FA', 'FB'], 'segments from the killed owner and from the promoted standby');
    assert.ok(listing.segments.every((s) => s.format === 'fmp4'), 'every segment is fMP4');
    assert.ok(listing.spans.length >= 1);
    const segs = listing.segments.map((s) => ({ ...s, startMs: Date.parse(s.start) }));
    const first = segs[0]!.startMs;
    const end = Math.max(...segs.map((s) => s.startMs + s.duration * 1000));
    console.log(`# recording fmp4 e2e: ${segs.length} segments (${segs.filter((s) => s.node === 'FA').length} by FA), ${((end - first) / 1000).toFixed(1)} s, ${segs.reduce((n, s) => n + s.bytes, 0)} bytes; viewer's longest gap ${viewerGap} ms`);
    assert.ok((end - first) / 1000 > 13, `about 16 s recorded (${(end - first) / 1000} s)`);

    // Each stored segment (the killed owner's unfinished one too) is an fMP4 file ffprobe reads alone.
    const store = new NatsObjectStore({ servers: [nats.url], name: 'e2e-reader', bucket: 'meshcast-recordings', replicas: 1, maxBytes: 10 * 1024 ** 3, flushMs: 1000, auth: {} });
    try {
      const stored = await store.list({ app: 'live', stream: 'frec' });
      assert.equal(stored.length, listing.segments.length);
      for (const [i, seg] of stored.entries()) {
        assert.match(seg.key, /\.mp4$/);
        const f = join(dir, `seg${i}.mp4`);
        const data = await store.read(seg);
        writeFileSync(f, data);
        assert.equal(data.subarray(4, 8).toString('latin1'), 'ftyp');
        assert.ok(data.includes('moof'), 'fragmented');
        await decodesCleanly(f);
        const codecs = (await run('ffprobe', ['-v', 'error', '-show_entries', 'stream=codec_name', '-of', 'csv=p=0', f], 20_000)).stdout.trim().split('\n').sort();
        assert.deepEqual(codecs, ['aac', 'h264'], `segment ${i} codecs`);
        const pk = await videoPackets(f);
        // A segment ended by the encoder's stop can be a few frames long.
        assert.ok(pk.length >= 1, `segment ${i}: ${pk.length} frames`);
        for (let k = 1; k < pk.length; k++) assert.ok(pk[k]!.dts > pk[k - 1]!.dts, `segment ${i}: dts ${pk[k - 1]!.dts} then ${pk[k]!.dts}`);
        if (pk.length > 10) assert.ok(pk.some((p) => p.pts !== p.dts), `segment ${i}: B-frame composition offsets kept`);
      }
    } finally {
      await store.close();
    }

    // One MP4 through the playback API.
    const url = `${b.httpUrl}/recordings/live/frec.mp4?start=${encodeURIComponent(new Date(first).toISOString())}&duration=60`;
    const res = await fetch(url);
    assert.equal(res.status, 200, await res.clone().text().catch(() => ''));
    assert.equal(res.headers.get('content-type'), 'video/mp4');
    const mp4 = Buffer.from(await res.arrayBuffer());
    const file = join(dir, 'frec.mp4');
    writeFileSync(file, mp4);
    assert.ok(mp4.indexOf('moov') < mp4.indexOf('mdat'), 'progressive: moov before mdat');
    const probe = await run('ffprobe', ['-v', 'error', '-show_entries', 'format=duration:stream=codec_name', '-of', 'json', file], 20_000);
    const p = JSON.parse(probe.stdout) as { format: { duration: string }; streams: Array<{ codec_name: string }> };
    assert.deepEqual(p.streams.map((s) => s.codec_name).sort(), ['aac', 'h264']);
    const duration = Number(p.format.duration);
    assert.ok(Math.abs(duration - (end - first) / 1000) < 2.5, `MP4 lasts ${duration} s, the recording ${(end - first) / 1000} s`);
    await decodesCleanly(file);
    const pk = await videoPackets(file);
    let maxStep = 0;
    for (let i = 1; i < pk.length; i++) {
      assert.ok(pk[i]!.dts > pk[i - 1]!.dts, `dts ${pk[i - 1]!.dts} then ${pk[i]!.dts}`);
      maxStep = Math.max(maxStep, (pk[i]!.dts - pk[i - 1]!.dts) * 1000);
    }
    assert.ok(pk.some((x) => x.pts !== x.dts), 'B-frames kept in the stitched MP4');
    console.log(`# recording fmp4 e2e: MP4 ${mp4.length} bytes, ${duration} s, ${pk.length} video frames, longest video step ${Math.round(maxStep)} ms`);
    assert.ok(maxStep <= viewerGap + FLUSH_MS + 500, `longest step ${maxStep} ms ≤ viewer gap ${viewerGap} ms + flush ${FLUSH_MS} ms`);

    const r = await fetch(url, { headers: { Range: 'bytes=500-1499' } });
    assert.equal(r.status, 206);
    assert.equal(r.headers.get('content-range'), `bytes 500-1499/${mp4.length}`);
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), mp4.subarray(500, 1500));
  });
});
