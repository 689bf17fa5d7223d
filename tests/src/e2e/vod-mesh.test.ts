/**
 * VOD across the mesh, with real peers: a nats-server and two node processes. ffmpeg makes an
 * 8 s MP4 (H.264 + AAC) in node A's root only; node B has the VOD app with no root at all
 * (`vod: {root: ""}`: every file comes from the mesh).
 *
 * - ffprobe and ffmpeg read the MP4 over HTTP from B, end to end with the right duration; B
 *   copied it from A once (meshcast_vod_fetches_total); a Range request returns 206 with the
 *   file's bytes; signed play tokens apply on B (for the file's name) while A serves B's copy.
 * - Two concurrent viewers on B of a file B does not hold — ffmpeg over HTTP and ffmpeg over RTMP
 *   (`mp4:dir/clip2.mp4`) — both decode it end to end, and B fetched it exactly once.
 * - Path safety: traversal, encoded and double-encoded traversal, backslashes, NUL, absolute
 *   paths, a symlink out of the root, hidden files: 400 over HTTP on both nodes (never the
 *   file), StreamNotFound over RTMP; each refusal logged with its session.
 * - B's cache stays under vod.cache_max_bytes: the least recently used copy is evicted.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RtmpClient } from '@meshcast/node/client';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { run } from '../harness/ffmpeg.ts';
import { waitFor } from '../harness/ports.ts';
import { mintToken } from '../../../services/node/src/auth/token.ts';

const DURATION_S = 8;
const FPS = 25;
const MESH = { mesh_secret: 'e2e-vod-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500 };
const TOKEN_SECRET = 'e2e-vod-token';
/** B's cache bound; the LRU files are sized against it. */
const CACHE_MAX = 8 * 1024 * 1024;
const LRU_FILE = 3.5 * 1024 * 1024;

const tmp = mkdtempSync(join(tmpdir(), 'meshcast-vod-mesh-'));
const rootA = join(tmp, 'rootA');

/** The media time ffmpeg reached decoding `url` to its end, its picture count and its errors. */
async function decodeToEnd(url: string): Promise<{ code: number | null; seconds: number; frames: number; errors: string }> {
  const r = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-stats', '-rw_timeout', '15000000', '-i', url, '-f', 'null', '-'], 90_000);
  const time = [...r.stderr.matchAll(/time=(\d+):(\d+):([\d.]+)/g)].pop();
  const frames = [...r.stderr.matchAll(/frame=\s*(\d+)/g)].pop();
  const errors = r.stderr
    .split(/\r|\n/)
    .filter((l) => l.trim() !== '' && !/^frame=/.test(l.trim()))
    .join('\n');
  return { code: r.code, seconds: time ? Number(time[1]) * 3600 + Number(time[2]) * 60 + Number(time[3]) : 0, frames: frames ? Number(frames[1]) : 0, errors };
}

/** A request with the path sent as written (no normalisation of `..`, `%2e` or `//`). */
function rawGet(base: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: Number(u.port), path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** The sum of a metric's samples. */
function metric(text: string, name: string, having = ''): number {
  let sum = 0;
  for (const line of text.split('\n')) if ((line.startsWith(`${name}{`) || line.startsWith(`${name} `)) && line.includes(having)) sum += Number(line.split(' ').pop());
  return sum;
}

interface VodApi {
  refusals: Record<string, number>;
  cache: { fetches: number; hits: number; sharedFetches: number; evictions: number; bytes: number; files: number; maxBytes: number };
}

describe('VOD across the mesh: a file on node A played from node B', () => {
  let nats: NatsServer;
  let a: NodeProcess;
  let b: NodeProcess;
  const fetches = async (n: NodeProcess): Promise<number> => metric(await (await n.adminFetch('/metrics')).text(), 'meshcast_vod_fetches_total');

  before(async () => {
    mkdirSync(join(rootA, 'dir'), { recursive: true });
    const mp4 = join(rootA, 'dir', 'clip.mp4');
    const made = await run(
      'ffmpeg',
      [
        ...['-v', 'error', '-f', 'lavfi', '-i', `testsrc=size=320x180:rate=${FPS}`, '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100'],
        ...['-t', String(DURATION_S), '-c:v', 'libx264', '-preset', 'ultrafast', '-g', String(2 * FPS), '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-b:a', '64k', '-movflags', '+faststart', '-y', mp4],
      ],
      60_000,
    );
    assert.equal(made.code, 0, made.stderr);
    copyFileSync(mp4, join(rootA, 'dir', 'clip2.mp4'));
    for (const n of [1, 2, 3]) writeFileSync(join(rootA, `big${n}.mp4`), randomBytes(LRU_FILE));
    writeFileSync(join(tmp, 'secret.mp4'), 'secret');
    writeFileSync(join(rootA, '.hidden.mp4'), 'hidden');
    symlinkSync(join(tmp, 'secret.mp4'), join(rootA, 'escape.mp4'));

    nats = await startNatsServer();
    const auth = { token_secret: TOKEN_SECRET, apps: { vodsec: { play: { tokens: true } } } };
    const common = { mesh: { ...MESH, nats: [nats.url] }, auth };
    [a, b] = await Promise.all([
      NodeProcess.start({ nodeId: 'VA', config: { ...common, apps: { vod: { vod: { root: rootA } }, vodsec: { vod: { root: rootA } } }, vod: { cache_dir: join(tmp, 'cacheA') } } }),
      NodeProcess.start({ nodeId: 'VB', config: { ...common, apps: { vod: { vod: { root: '' } }, vodsec: { vod: { root: '' } } }, vod: { cache_dir: join(tmp, 'cacheB'), cache_max_bytes: CACHE_MAX } } }),
    ]);
    await waitFor('mesh of 2', async () => (await b.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length >= 2, 15_000, 100);
  });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    a?.cleanup();
    b?.cleanup();
    await nats?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('ffprobe and ffmpeg read the MP4 over HTTP from B, which copied it from A once; Range; play tokens', async () => {
    const url = `${b.httpUrl}/vod/dir/clip.mp4`;
    const probe = await run('ffprobe', ['-v', 'error', '-show_entries', 'format=duration:stream=codec_name', '-of', 'json', url], 30_000);
    assert.equal(probe.code, 0, probe.stderr);
    const info = JSON.parse(probe.stdout) as { format: { duration: string }; streams: Array<{ codec_name: string }> };
    assert.ok(Math.abs(Number(info.format.duration) - DURATION_S) <= 0.2, `duration ${info.format.duration}`);
    assert.deepEqual(info.streams.map((s) => s.codec_name).sort(), ['aac', 'h264']);
    const d = await decodeToEnd(url);
    assert.equal(d.code, 0, d.errors);
    assert.equal(d.errors, '', 'decodes without errors');
    assert.ok(Math.abs(d.seconds - DURATION_S) <= 0.3, `decoded ${d.seconds} s`);
    assert.ok(Math.abs(d.frames - DURATION_S * FPS) <= 2, `decoded ${d.frames} pictures`);
    assert.equal(await fetches(b), 1, 'B copied the file from A once for ffprobe and ffmpeg');
    assert.equal(await fetches(a), 0, 'A holds it');

    const file = readFileSync(join(rootA, 'dir', 'clip.mp4'));
    const start = Math.floor(file.length / 3);
    const r = await rawGet(b.httpUrl, '/vod/dir/clip.mp4', { Range: `bytes=${start}-${start + 9999}` });
    assert.equal(r.status, 206);
    assert.equal(r.headers['content-range'], `bytes ${start}-${start + 9999}/${file.length}`);
    assert.equal(r.headers['content-type'], 'video/mp4');
    assert.ok(r.body.equals(file.subarray(start, start + 10_000)), 'the range holds the file\'s bytes');
    assert.equal((await rawGet(b.httpUrl, '/vod/dir/clip.mp4', { Range: `bytes=${file.length}-` })).status, 416);

    // vodsec needs a signed play token for the file's name, on the node the viewer asks.
    assert.equal((await rawGet(b.httpUrl, '/vodsec/dir/clip.mp4')).status, 403);
    const wrong = mintToken({ secret: TOKEN_SECRET, action: 'play', app: 'vodsec', stream: 'dir/clip2.mp4', ttlSeconds: 600 }).query;
    assert.equal((await rawGet(b.httpUrl, `/vodsec/dir/clip.mp4?${wrong}`)).status, 403);
    const token = mintToken({ secret: TOKEN_SECRET, action: 'play', app: 'vodsec', stream: 'dir/clip.mp4', ttlSeconds: 600 }).query;
    const ok = await rawGet(b.httpUrl, `/vodsec/dir/clip.mp4?${token}`);
    assert.equal(ok.status, 200);
    assert.ok(ok.body.equals(file));
  });

  test('two concurrent viewers on B (ffmpeg over HTTP and over RTMP) decode a file B does not hold; B fetched it exactly once', async () => {
    const before = await fetches(b);
    const [overHttp, overRtmp] = await Promise.all([decodeToEnd(`${b.httpUrl}/vod/dir/clip2.mp4`), decodeToEnd(`${b.rtmpUrl}/vod/mp4:dir/clip2.mp4`)]);
    for (const [what, d] of [['HTTP', overHttp], ['RTMP', overRtmp]] as const) {
      assert.equal(d.code, 0, `${what}: ${d.errors}`);
      assert.equal(d.errors, '', `${what} decodes without errors`);
      assert.ok(Math.abs(d.seconds - DURATION_S) <= 0.5, `${what} decoded ${d.seconds} s`);
      assert.ok(Math.abs(d.frames - DURATION_S * FPS) <= FPS / 2, `${what} decoded ${d.frames} pictures`);
    }
    const after = await fetches(b);
    assert.equal(after - before, 1, 'one fetch for two viewers');
    const api = await b.api<VodApi>('/api/v1/vod');
    console.log(`# vod-mesh e2e: two viewers on B, fetches ${after - before}; cache ${JSON.stringify(api.cache)}`);
    assert.ok(api.cache.hits >= 1, 'the second viewer was served from the cache (or joined the copy)');
  });

  test('path safety: every escape is refused with a 4xx over HTTP and StreamNotFound over RTMP, and logged', async () => {
    const attempts = [
      '/vod/../secret.mp4',
      '/vod/dir/../../secret.mp4',
      '/vod/%2e%2e/secret.mp4',
      '/vod/%2e%2e%2fsecret.mp4',
      '/vod/dir%2f..%2f..%2fsecret.mp4',
      '/vod/%252e%252e%252fsecret.mp4',
      '/vod/..%5csecret.mp4',
      '/vod/dir%5c..%5c..%5csecret.mp4',
      '/vod/secret%00.mp4',
      `/vod/${encodeURIComponent(join(tmp, 'secret.mp4'))}`,
      `/vod/${join(tmp, 'secret.mp4')}`,
      '/vod/escape.mp4',
      '/vod/.hidden.mp4',
    ];
    for (const p of attempts) {
      for (const node of [a, b]) {
        const r = await rawGet(node.httpUrl, p);
        assert.ok(r.status >= 400 && r.status < 500, `${p} on ${node.nodeId}: ${r.status}`);
        assert.ok(!['secret', 'hidden'].includes(r.body.toString()), `${p} on ${node.nodeId} gave the file`);
      }
      assert.equal((await rawGet(a.httpUrl, p)).status, 400, `${p} on A (which holds the root) is a bad path`);
    }
    assert.ok(a.logs().includes('VOD request refused'), 'refusals are logged');
    assert.match(a.logs(), /"session":"v[^"]*".*VOD request refused|VOD request refused.*"session":"v/);
    const refusals = metric(await (await a.adminFetch('/metrics')).text(), 'meshcast_vod_refusals_total', 'reason="bad_path"');
    assert.ok(refusals >= 1, 'the symlink escape is counted');

    for (const name of ['mp4:../rootA/dir/clip.mp4', 'mp4:dir/../../secret.mp4', 'mp4:%2e%2e/secret.mp4', `mp4:${join(tmp, 'secret.mp4')}`, 'escape.mp4', 'flv:dir\\..\\..\\secret']) {
      const client = await RtmpClient.connect(`${b.rtmpUrl}/vod/x`);
      try {
        await assert.rejects(client.play(name), /NetStream\.Play\.StreamNotFound/, name);
      } finally {
        client.close();
      }
    }
    assert.match(b.logs(), /VOD path refused/);
  });

  test('B\'s cache stays under vod.cache_max_bytes: the least recently used copy goes, and comes back on the next request', async () => {
    const s0 = await b.api<VodApi>('/api/v1/vod');
    for (const n of [1, 2, 3]) {
      const r = await rawGet(b.httpUrl, `/vod/big${n}.mp4`);
      assert.equal(r.status, 200);
      assert.ok(r.body.equals(readFileSync(join(rootA, `big${n}.mp4`))));
      const s = await b.api<VodApi>('/api/v1/vod');
      assert.ok(s.cache.bytes <= CACHE_MAX, `cache holds ${s.cache.bytes} bytes`);
    }
    const s1 = await b.api<VodApi>('/api/v1/vod');
    assert.equal(s1.cache.fetches - s0.cache.fetches, 3);
    assert.ok(s1.cache.evictions > s0.cache.evictions, 'copies were evicted');
    const onDisk = readdirSync(join(tmp, 'cacheB'));
    assert.equal(onDisk.length, s1.cache.files, `the directory holds the cached files only (${onDisk.join(', ')})`);
    // big1 was used least recently: evicted (big2 and big3 fill the cache); asking again copies it again.
    assert.equal((await rawGet(b.httpUrl, '/vod/big1.mp4')).status, 200);
    const s2 = await b.api<VodApi>('/api/v1/vod');
    assert.equal(s2.cache.fetches - s1.cache.fetches, 1);
    assert.ok(s2.cache.bytes <= CACHE_MAX);
  });
});
