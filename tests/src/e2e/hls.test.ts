/**
 * HLS with real peers: ffmpeg publishes to a node process; ffprobe and ffmpeg read the live
 * playlist; segments are checked with ffprobe; the segmenter's idle stop is seen through the
 * sessions API; and a second node over a real nats-server serves HLS of a stream it relays.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher, ffmpegDecode, ffprobe, run } from '../harness/ffmpeg.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { sleep, waitFor } from '../harness/ports.ts';

interface StreamsReply {
  streams: Array<{ app: string; stream: string; live: boolean; publisher: { kind: string } | null }>;
}
interface SessionsReply {
  sessions: Array<{ id: string; protocol: string; role: string; stream?: string; bytesOut: number }>;
}

const TARGET_S = 2;
const GOP_S = 1;

async function waitLive(node: NodeProcess, stream: string): Promise<void> {
  await waitFor(`${stream} live`, async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.some((s) => s.stream === stream && s.live), 20_000, 100);
}

function parsePlaylist(text: string): { target: number; sequence: number; durations: number[]; uris: string[] } {
  const target = Number(/#EXT-X-TARGETDURATION:(\d+)/.exec(text)?.[1]);
  const sequence = Number(/#EXT-X-MEDIA-SEQUENCE:(\d+)/.exec(text)?.[1]);
  const durations = [...text.matchAll(/#EXTINF:([\d.]+),/g)].map((m) => Number(m[1]));
  const uris = text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
  return { target, sequence, durations, uris };
}

const tmp = mkdtempSync(join(tmpdir(), 'meshcast-hls-e2e-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** ffprobe of a fetched segment's video frames. */
async function segmentFrames(url: string, name: string): Promise<Array<{ key_frame: number; pict_type: string }>> {
  const r = await fetch(url);
  assert.equal(r.status, 200, url);
  const file = join(tmp, name);
  writeFileSync(file, Buffer.from(await r.arrayBuffer()));
  const p = await run('ffprobe', ['-v', 'error', '-select_streams', 'v', '-show_frames', '-show_entries', 'frame=key_frame,pict_type', '-of', 'json', file], 20_000);
  assert.equal(p.code, 0, p.stderr);
  return (JSON.parse(p.stdout) as { frames: Array<{ key_frame: number; pict_type: string }> }).frames;
}

describe('HLS from a node process, ffmpeg publishing', () => {
  let node: NodeProcess;
  let pub: FfmpegPublisher;
  let playlistUrl: string;

  before(async () => {
    node = await NodeProcess.start({ config: { hls: { target_duration_s: TARGET_S, playlist_length: 6, idle_timeout_s: 3 } } });
    pub = new FfmpegPublisher(`${node.rtmpUrl}/live/s`, { width: 640, height: 360, fps: 30, gop: 30 * GOP_S });
    await waitLive(node, 's');
    playlistUrl = `${node.httpUrl}/live/s/index.m3u8`;
  });

  after(async () => {
    await pub?.stop();
    const code = await node?.stop();
    assert.equal(code, 0, 'node exits 0 on SIGTERM');
    node?.cleanup();
  });

  test('ffprobe of the playlist sees H.264 640x360 and AAC 44.1 kHz', async () => {
    const probe = await ffprobe(playlistUrl);
    const v = probe.streams.find((s) => s.codec_type === 'video');
    const a = probe.streams.find((s) => s.codec_type === 'audio');
    assert.equal(v?.codec_name, 'h264');
    assert.equal(v?.width, 640);
    assert.equal(v?.height, 360);
    assert.equal(a?.codec_name, 'aac');
    assert.equal(a?.sample_rate, '44100');
  });

  test('ffmpeg decodes 6 s of the live playlist without errors', async () => {
    const r = await ffmpegDecode(playlistUrl, 6, 60_000);
    assert.equal(r.code, 0, r.errors);
    assert.equal(r.errors, '', 'no decoder or demuxer errors');
    assert.ok(r.frames >= 150, `decoded ${r.frames} frames`);
  });

  test('the playlist lists real durations within target + one GOP, and a target that covers them', async () => {
    const text = await waitFor('a full window', async () => {
      const t = await (await fetch(playlistUrl)).text();
      return parsePlaylist(t).durations.length >= 4 ? t : undefined;
    }, 30_000, 500);
    assert.match(text, /^#EXTM3U\n#EXT-X-VERSION:3\n/);
    assert.ok(!/#EXT-X-ENDLIST/.test(text));
    const p = parsePlaylist(text);
    assert.ok(p.durations.length <= 6);
    for (const d of p.durations) assert.ok(d >= TARGET_S - 0.05 && d <= TARGET_S + GOP_S + 0.05, `segment of ${d} s`);
    assert.equal(p.target, Math.max(TARGET_S, Math.ceil(Math.max(...p.durations) - 1e-9)));
    assert.equal(p.uris.length, p.durations.length);
    assert.deepEqual(
      p.uris,
      p.durations.map((_, i) => `${p.sequence + i}.ts`),
    );
    // New segments are appended (polling, as a player does, keeps the segmenter running).
    for (let i = 0; i < 5; i++) {
      await sleep(1000);
      assert.equal((await fetch(playlistUrl)).status, 200);
    }
    const later = parsePlaylist(await (await fetch(playlistUrl)).text());
    assert.ok(later.sequence + later.uris.length > p.sequence + p.uris.length, 'new segments appended');
  });

  test('every listed segment starts with an IDR frame (ffprobe -show_frames)', async () => {
    const p = await waitFor('two segments', async () => {
      const x = parsePlaylist(await (await fetch(playlistUrl)).text());
      return x.uris.length >= 2 ? x : undefined;
    }, 20_000, 500);
    for (const uri of p.uris) {
      const frames = await segmentFrames(`${node.httpUrl}/live/s/${uri}`, `s-${uri}`);
      assert.ok(frames.length >= 30 * TARGET_S - 1, `${uri}: ${frames.length} video frames`);
      assert.equal(frames[0]!.key_frame, 1, `${uri} starts with a keyframe`);
      assert.equal(frames[0]!.pict_type, 'I');
    }
  });

  test('the segmenter is one "hls" session; it stops after the idle timeout and the next request starts it again', async () => {
    const sessions = async (): Promise<SessionsReply['sessions']> => (await node.api<SessionsReply>('/api/v1/sessions')).sessions.filter((s) => s.protocol === 'hls' && s.stream === 's');
    assert.equal((await fetch(playlistUrl)).status, 200);
    const before_ = await sessions();
    assert.equal(before_.length, 1);
    assert.equal(before_[0]!.role, 'viewer');
    assert.ok(before_[0]!.bytesOut > 0, 'served bytes are counted');
    const t0 = Date.now();
    await waitFor('segmenter stopped', async () => (await sessions()).length === 0, 10_000, 200);
    const took = Date.now() - t0;
    assert.ok(took >= 2000 && took <= 6000, `stopped ${took} ms after the last request (idle timeout 3 s)`);
    assert.ok(/HLS segmenter stopped/.test(node.logs()));
    const restarted = await fetch(playlistUrl);
    assert.equal(restarted.status, 200);
    assert.ok(parsePlaylist(await restarted.text()).sequence > 0, 'media sequence continues across the restart');
    const again = await sessions();
    assert.equal(again.length, 1);
    assert.notEqual(again[0]!.id, before_[0]!.id);
  });

  test('a stream nobody publishes is a 404 (app that rejects unknown streams)', async () => {
    const other = await NodeProcess.start({ config: { apps: { '*': { play_not_found: 'reject' } } } });
    try {
      const r = await fetch(`${other.httpUrl}/live/nobody/index.m3u8`);
      assert.equal(r.status, 404);
      assert.equal((await other.api<SessionsReply>('/api/v1/sessions')).sessions.length, 0);
    } finally {
      await other.stop();
      other.cleanup();
    }
  });
});

describe('HLS of a relayed stream, two node processes over real NATS', () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  let pub: FfmpegPublisher | undefined;

  before(async () => {
    nats = await startNatsServer();
  });

  after(async () => {
    await pub?.stop();
    for (const n of nodes) {
      await n.stop();
      n.cleanup();
    }
    await nats?.stop();
  });

  test('publish to node A, play HLS from node B: B relays the stream and segments it', async () => {
    const mesh = { nats: [nats.url], mesh_secret: 'hls-e2e', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, relay_linger_ms: 2000 };
    const a = await NodeProcess.start({ nodeId: 'hlsa', config: { mesh } });
    nodes.push(a);
    const b = await NodeProcess.start({ nodeId: 'hlsb', config: { mesh, hls: { target_duration_s: 2, idle_timeout_s: 3 } } });
    nodes.push(b);
    pub = new FfmpegPublisher(`${a.rtmpUrl}/live/far`, { width: 426, height: 240, fps: 25, gop: 25 });
    await waitLive(a, 'far');
    const url = `${b.httpUrl}/live/far/index.m3u8`;
    const probe = await waitFor('HLS on B', async () => ffprobe(url, 30_000), 40_000, 500);
    const v = probe.streams.find((s) => s.codec_type === 'video');
    assert.equal(v?.codec_name, 'h264');
    assert.equal(v?.width, 426);
    assert.ok(probe.streams.some((s) => s.codec_name === 'aac'));
    const streams = await b.api<StreamsReply>('/api/v1/streams');
    assert.equal(streams.streams.find((s) => s.stream === 'far')?.publisher?.kind, 'relay', 'B pulls the stream from A');
    const sessionsB = await b.api<SessionsReply>('/api/v1/sessions');
    assert.equal(sessionsB.sessions.filter((s) => s.protocol === 'hls' && s.stream === 'far').length, 1);
    const r = await ffmpegDecode(url, 4, 60_000);
    assert.equal(r.code, 0, r.errors);
    assert.equal(r.errors, '');
    // Without requests the segmenter stops, and then the relay lets go after its linger.
    await waitFor('relay released on B', async () => {
      const s = await b.api<StreamsReply>('/api/v1/streams');
      return !s.streams.some((x) => x.stream === 'far');
    }, 20_000, 250);
  });
});
