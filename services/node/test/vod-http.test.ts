/**
 * VOD over HTTP on in-process nodes sharing an in-process bus: progressive GET/HEAD with Range,
 * the mesh copy into the playback node's cache (one copy for concurrent viewers, LRU eviction),
 * VOD pulls refused without a valid mesh credential, path safety over HTTP, play keys.
 * (The same over real NATS and node processes, with ffmpeg decoding: tests/src/e2e/vod-mesh.test.ts.)
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, writeFile, symlink, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import { inProcessNode } from './support.ts';
import { vodPullHeader, VOD_PULL_HEADER } from '../src/vod/vod-remote.ts';

let base: string;
let a: MediaNode;
let b: MediaNode;
const files: Record<string, Buffer> = {};

/** A raw request: the path is sent as written (no normalisation of `..` or `%2e`). */
function get(node: MediaNode, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: node.config.public_host, port: node.httpPort, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

async function vodStats(node: MediaNode): Promise<{ refusals: Record<string, number>; cache: { fetches: number; hits: number; sharedFetches: number; evictions: number; bytes: number; files: number } }> {
  const r = await fetch(`${node.adminUrl}/api/v1/vod`);
  return (await r.json()) as never;
}

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'vodhttp-'));
  const rootA = join(base, 'rootA');
  await mkdir(join(rootA, 'dir', 'sub'), { recursive: true });
  await mkdir(join(base, 'rootB'));
  for (const [name, size] of [['dir/file.mp4', 300_000], ['clip.flv', 1000], ['a.mp4', 450_000], ['b.mp4', 450_000], ['c.mp4', 450_000], ['dir/sub/deep.m4v', 5000]] as const) {
    files[name] = randomBytes(size);
    await writeFile(join(rootA, name), files[name]);
  }
  await writeFile(join(base, 'secret.mp4'), 'secret');
  await writeFile(join(rootA, '.hidden.mp4'), 'hidden');
  await symlink(join(base, 'secret.mp4'), join(rootA, 'escape.mp4'));
  const net = new MemoryBusNetwork();
  const auth = { apps: { vod: { play: { keys: ['k1'] } } } };
  a = await inProcessNode(net, 'vod-a', { apps: { vod: { vod: { root: rootA } } }, auth, vod: { cache_dir: join(base, 'cacheA') } });
  b = await inProcessNode(net, 'vod-b', { apps: { vod: { vod: { root: join(base, 'rootB') } } }, auth, vod: { cache_dir: join(base, 'cacheB'), cache_max_bytes: 1024 * 1024 } });
});

after(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await rm(base, { recursive: true, force: true });
});

test('progressive GET and HEAD on the node that holds the file: whole, Range 206, 416, content types', async () => {
  const whole = await get(a, '/vod/dir/file.mp4?key=k1');
  assert.equal(whole.status, 200);
  assert.equal(whole.headers['content-type'], 'video/mp4');
  assert.equal(whole.headers['accept-ranges'], 'bytes');
  assert.ok(whole.body.equals(files['dir/file.mp4']!));
  const part = await get(a, '/vod/dir/file.mp4?key=k1', { Range: 'bytes=1000-1999' });
  assert.equal(part.status, 206);
  assert.equal(part.headers['content-range'], 'bytes 1000-1999/300000');
  assert.ok(part.body.equals(files['dir/file.mp4']!.subarray(1000, 2000)));
  const tail = await get(a, '/vod/dir/file.mp4?key=k1', { Range: 'bytes=-10' });
  assert.equal(tail.status, 206);
  assert.ok(tail.body.equals(files['dir/file.mp4']!.subarray(-10)));
  const past = await get(a, '/vod/dir/file.mp4?key=k1', { Range: 'bytes=300000-' });
  assert.equal(past.status, 416);
  assert.equal(past.headers['content-range'], 'bytes */300000');
  const head = await get(a, '/vod/dir/file.mp4?key=k1', {}, 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-length'], '300000');
  assert.equal(head.body.length, 0);
  // A VOD app's .flv path is the file, not a live HTTP-FLV stream.
  const flv = await get(a, '/vod/clip.flv?key=k1');
  assert.equal(flv.status, 200);
  assert.equal(flv.headers['content-type'], 'video/x-flv');
  assert.ok(flv.body.equals(files['clip.flv']!));
  const deep = await get(a, '/vod/dir/sub/deep.m4v?key=k1');
  assert.equal(deep.status, 200);
  assert.ok(deep.body.equals(files['dir/sub/deep.m4v']!));
  assert.equal((await get(a, '/vod/dir/file.mp4')).status, 403, 'the app\'s play keys apply');
  assert.equal((await get(a, '/vod/dir/nothere.mp4?key=k1')).status, 404);
});

test('a node without the file copies it once for two concurrent viewers and serves both (and Range) from its cache', async () => {
  const before = (await vodStats(b)).cache;
  const [v1, v2] = await Promise.all([get(b, '/vod/dir/file.mp4?key=k1'), get(b, '/vod/dir/file.mp4?key=k1')]);
  assert.equal(v1.status, 200);
  assert.equal(v2.status, 200);
  assert.ok(v1.body.equals(files['dir/file.mp4']!));
  assert.ok(v2.body.equals(files['dir/file.mp4']!));
  const r = await get(b, '/vod/dir/file.mp4?key=k1', { Range: 'bytes=5-104' });
  assert.equal(r.status, 206);
  assert.ok(r.body.equals(files['dir/file.mp4']!.subarray(5, 105)));
  const after = (await vodStats(b)).cache;
  assert.equal(after.fetches - before.fetches, 1, 'one copy for all three requests');
  assert.equal(after.hits - before.hits, 2);
  assert.equal(after.sharedFetches - before.sharedFetches, 1, 'the second concurrent viewer waited for the first one\'s copy (single-flight)');
  const metrics = await (await fetch(`${b.adminUrl}/metrics`)).text();
  assert.match(metrics, /meshcast_vod_fetches_total\{[^}]*\} [1-9]/);
  assert.equal((await get(b, '/vod/missing.mp4?key=k1')).status, 404, 'nobody holds it');
});

test('the cache stays under vod.cache_max_bytes: the least recently used file goes, and is copied again when asked', async () => {
  const s0 = (await vodStats(b)).cache;
  for (const f of ['a.mp4', 'b.mp4', 'c.mp4']) {
    const r = await get(b, `/vod/${f}?key=k1`);
    assert.equal(r.status, 200);
    assert.ok(r.body.equals(files[f]!));
    const s = (await vodStats(b)).cache;
    assert.ok(s.bytes <= 1024 * 1024, `cache ${s.bytes} bytes`);
  }
  const s1 = (await vodStats(b)).cache;
  assert.equal(s1.fetches - s0.fetches, 3);
  assert.ok(s1.evictions - s0.evictions >= 2, 'a.mp4 and the earlier file were evicted');
  const onDisk = (await readdir(join(base, 'cacheB'))).length;
  assert.equal(onDisk, s1.files);
  assert.equal((await get(b, '/vod/a.mp4?key=k1')).status, 200);
  assert.equal((await vodStats(b)).cache.fetches - s1.fetches, 1, 'the evicted file is copied again');
});

test('VOD pulls need a valid mesh pull credential for that file and node', async () => {
  assert.equal((await get(a, '/vod/dir/file.mp4', { [VOD_PULL_HEADER]: 'bm9wZQ' })).status, 403);
  const wrongSecret = vodPullHeader('other-secret', 'vod-b', 'vod', 'dir/file.mp4', 'vod-a');
  assert.equal((await get(a, '/vod/dir/file.mp4', { [VOD_PULL_HEADER]: wrongSecret })).status, 403);
  const otherFile = vodPullHeader('test-secret', 'vod-b', 'vod', 'clip.flv', 'vod-a');
  assert.equal((await get(a, '/vod/dir/file.mp4', { [VOD_PULL_HEADER]: otherFile })).status, 403);
  const good = vodPullHeader('test-secret', 'vod-b', 'vod', 'dir/file.mp4', 'vod-a');
  assert.equal((await get(a, '/vod/dir/file.mp4', { [VOD_PULL_HEADER]: good })).status, 200);
  assert.equal((await get(a, '/vod/dir/file.mp4', { [VOD_PULL_HEADER]: good })).status, 403, 'single use');
});

test('path safety over HTTP: traversal, encoded and double-encoded traversal, backslash, NUL, absolute, symlink escape, hidden: 400, never the file', async () => {
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
    '/vod/%2fetc%2fpasswd.mp4',
    '/vod//etc/file.mp4',
    '/vod/escape.mp4',
    '/vod/.hidden.mp4',
  ];
  const before = (await vodStats(a)).refusals.bad_path ?? 0;
  for (const p of attempts) {
    for (const node of [a, b]) {
      const r = await get(node, `${p}?key=k1`);
      assert.ok(r.status >= 400 && r.status < 500, `${p} on ${node.config.node_id}: ${r.status}`);
      assert.notEqual(r.body.toString(), 'secret');
      assert.notEqual(r.body.toString(), 'hidden');
    }
    assert.equal((await get(a, `${p}?key=k1`)).status, 400, `${p} is refused as a bad path`);
  }
  assert.ok(((await vodStats(a)).refusals.bad_path ?? 0) - before >= 1, 'the symlink escape is counted by the library');
});
