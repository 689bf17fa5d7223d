/**
 * HLS admission is per viewer (stream and query string) and re-checked: HlsAdmissions on its
 * own with a test clock, then nodes in this process with a real RTMP publisher, HTTP requests
 * from fetch, ffprobe as a player and a webhook server in this test.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import type { StreamRequest } from '../src/media/host.ts';
import { mintToken } from '../src/auth/token.ts';
import { HlsAdmissions, type AdmissionEnd, type AdmittedViewer } from '../src/hls/hls-admissions.ts';
import { inProcessNode, sleep } from './support.ts';
import { avcClip, publishClip } from './hls-support.ts';

const SECRET = 'hls-admission-secret';
let nodes: MediaNode[] = [];
const cleanups: Array<() => void | Promise<void>> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  await Promise.all(nodes.map((n) => n.stop()));
  nodes = [];
});

async function node(inline: Record<string, unknown>): Promise<MediaNode> {
  const n = await inProcessNode(new MemoryBusNetwork(), 'h1', { hls: { target_duration_s: 1, playlist_length: 4, idle_timeout_s: 30 }, ...inline });
  nodes.push(n);
  return n;
}

const http_ = (n: MediaNode, path: string): string => `http://${n.config.public_host}:${n.httpPort}${path}`;
const rtmp = (n: MediaNode, path: string): string => `rtmp://${n.config.public_host}:${n.rtmpPort}/${path}`;
const uris = (text: string): string[] => text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
const playToken = (stream: string, ttlSeconds: number, now = Date.now()): string => mintToken({ secret: SECRET, action: 'play', app: 'live', stream, ttlSeconds, now }).query;

function ffprobeCodecs(url: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile('ffprobe', ['-v', 'error', '-show_streams', '-of', 'json', url], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`ffprobe ${url}: ${err.message} ${stderr}`));
      resolve((JSON.parse(stdout) as { streams: Array<{ codec_name: string }> }).streams.map((s) => s.codec_name).sort());
    });
  });
}

/** A webhook receiver: on_play answers as `who` asks (`deny-slow`: 403 after 1.5 s), counts each path. */
async function hookServer(): Promise<{ base: string; calls: Array<{ path: string; params: Record<string, string> }>; close: () => Promise<void> }> {
  const calls: Array<{ path: string; params: Record<string, string> }> = [];
  const server = http.createServer((rq, res) => {
    const parts: Buffer[] = [];
    rq.on('data', (d: Buffer) => parts.push(d));
    rq.on('end', () => {
      const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as { params: Record<string, string> };
      calls.push({ path: rq.url ?? '', params: body.params });
      if (body.params.who === 'deny-slow') return void setTimeout(() => res.writeHead(403).end(`no entry for ${body.params.who}`), 1500);
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const a = server.address();
  return {
    base: `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`,
    calls,
    close: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

// --------------------------------------------------------------- HlsAdmissions, pure

function fakeReq(query: string, authorizedUntil?: number): StreamRequest {
  const r: StreamRequest = { app: 'live', stream: 's', params: new URLSearchParams(query), sessionId: `h-${query}`, remote: '127.0.0.1:1', protocol: 'hls' };
  if (authorizedUntil !== undefined) r.authorizedUntil = authorizedUntil;
  return r;
}

test('HlsAdmissions: bounded in bytes, least recently seen forgotten first; token expiry, idleness and a stopped stream end viewers, each once', () => {
  let now = 1000;
  const ended: Array<[string, AdmissionEnd]> = [];
  const a = new HlsAdmissions({ maxBytes: 10_000, idleMs: 5000 }, (v: AdmittedViewer, why) => ended.push([v.query, why]), () => now);
  for (let i = 0; i < 100; i++) a.add('live/s', `t=${i}`, fakeReq(`t=${i}`));
  assert.ok(a.usedBytes <= 10_000, `${a.usedBytes} bytes used`);
  assert.ok(a.size > 5 && a.size < 100, `${a.size} remembered`);
  assert.equal(ended.length, 100 - a.size);
  assert.ok(ended.every(([, why]) => why === 'evicted'));
  assert.equal(a.lookup('live/s', 't=0'), undefined, 'the oldest was forgotten');
  assert.ok(a.lookup('live/s', 't=99'), 'the newest is remembered');

  // A hit counts as being seen: it outlives newer entries that are not asked for.
  const keep = `t=${100 - a.size}`;
  assert.ok(a.lookup('live/s', keep));
  for (let i = 100; i < 100 + a.size - 1; i++) a.add('live/s', `t=${i}`, fakeReq(`t=${i}`));
  assert.ok(a.lookup('live/s', keep), 'the viewer that kept asking is still there');

  // Token expiry is checked on each lookup.
  ended.length = 0;
  a.add('live/s', 'exp=1', fakeReq('exp=1', 3000));
  assert.ok(a.lookup('live/s', 'exp=1'));
  now = 3000;
  assert.equal(a.lookup('live/s', 'exp=1'), undefined);
  assert.deepEqual(
    ended.filter(([q]) => q === 'exp=1'),
    [['exp=1', 'credential expired']],
  );

  // Idle viewers are swept; a stream's stop ends the rest of its viewers.
  ended.length = 0;
  a.add('live/other', 'x=1', fakeReq('x=1'));
  now += 4000;
  a.lookup('live/other', 'x=1');
  now += 2000;
  const before = a.size;
  a.sweep();
  assert.equal(a.size, 1, 'only the viewer seen 2 s ago is left');
  assert.equal(ended.length, before - 1);
  assert.ok(ended.every(([, why]) => why === 'idle'));
  a.endStream('live/other');
  assert.equal(a.size, 0);
  assert.deepEqual(ended.at(-1), ['x=1', 'stream stopped']);
  a.sweep();
  a.endStream('live/other');
  assert.equal(new Set(ended.map(([q]) => q)).size, ended.length, 'each viewer ended once');
});

// --------------------------------------------------------------- on a node

test('300 HLS viewers with tokens of their own all get the playlist and its segments, with admissions bounded to ~100; junk query strings lock nobody out', async () => {
  const n = await node({
    auth: { token_secret: SECRET, apps: { live: { play: { tokens: true } } } },
    hls: { target_duration_s: 1, playlist_length: 4, idle_timeout_s: 30, admission_cache_bytes: 64 * 1024 },
  });
  const pub = await publishClip(rtmp(n, 'live/crowd'), avcClip());
  cleanups.push(pub.stop);
  const now = Date.now();
  // Distinct exp values make distinct, valid tokens: one per viewer.
  const tokens = Array.from({ length: 300 }, (_, i) => playToken('crowd', 600 + i, now));
  const failures: string[] = [];
  const segOf: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const pl = await fetch(http_(n, `/live/crowd/index.m3u8?${tokens[i]}`));
    if (pl.status !== 200) {
      failures.push(`viewer ${i + 1}: playlist ${pl.status}`);
      continue;
    }
    const seg = uris(await pl.text())[0]!;
    segOf.push(seg);
    const s = await fetch(http_(n, `/live/crowd/${seg}`));
    await s.arrayBuffer();
    if (s.status !== 200) failures.push(`viewer ${i + 1}: segment ${s.status}`);
  }
  assert.deepEqual(failures, []);
  // The first viewers were forgotten to make room, and are admitted again, not refused.
  const again = await fetch(http_(n, `/live/crowd/${segOf[0]!}`));
  await again.arrayBuffer();
  assert.equal(again.status, 200, 'viewer 1, forgotten long ago, gets its segment');

  // One valid token with 1,000 junk suffixes, and as many requests with no token at all.
  for (let i = 0; i < 1000; i++) {
    const r = await fetch(http_(n, `/live/crowd/index.m3u8?${tokens[0]}&junk=${i}`));
    await r.arrayBuffer();
    const bare = await fetch(http_(n, `/live/crowd/0.ts?junk=${i}`));
    await bare.arrayBuffer();
    assert.equal(bare.status, 403);
  }
  const last = await fetch(http_(n, `/live/crowd/index.m3u8?${tokens[299]}`));
  const seg = uris(await last.text())[0]!;
  const s = await fetch(http_(n, `/live/crowd/${seg}`));
  await s.arrayBuffer();
  assert.equal(s.status, 200, 'viewer 300 still gets segments after the junk');
  // A real player with viewer 300's token.
  assert.deepEqual(await ffprobeCodecs(http_(n, `/live/crowd/index.m3u8?${tokens[299]}`)), ['aac', 'h264']);
});

test('an expired token stops playing HLS at its next playlist request, as HTTP-FLV refuses it', async () => {
  const n = await node({ auth: { token_secret: SECRET, apps: { live: { play: { tokens: true } } } } });
  const pub = await publishClip(rtmp(n, 'live/exp'), avcClip());
  cleanups.push(pub.stop);
  const token = playToken('exp', 2);
  const exp = Number(new URLSearchParams(token).get('exp'));
  const first = await fetch(http_(n, `/live/exp/index.m3u8?${token}`));
  assert.equal(first.status, 200);
  const seg = uris(await first.text())[0]!;
  await sleep(Math.max(0, (exp + 1) * 1000 - Date.now()) + 200);
  const later = await fetch(http_(n, `/live/exp/index.m3u8?${token}`));
  const body = (await later.json()) as { error: string };
  assert.equal(later.status, 403);
  assert.match(body.error, /signed token expired/);
  const segLater = await fetch(http_(n, `/live/exp/${seg}`));
  await segLater.arrayBuffer();
  assert.equal(segLater.status, 403, 'nor its segments');
  const flv = await fetch(http_(n, `/live/exp.flv?${token}`));
  await flv.arrayBuffer();
  assert.equal(flv.status, 403);
  // A fresh token plays on the same segmenter.
  assert.equal((await fetch(http_(n, `/live/exp/index.m3u8?${playToken('exp', 60)}`))).status, 200);
});

test('a pending admission is never handed to another query string: a slow refusal of one viewer does not refuse another', async () => {
  const hooks = await hookServer();
  cleanups.push(hooks.close);
  const n = await node({ webhooks: { on_play: `${hooks.base}/on_play`, on_play_done: `${hooks.base}/on_play_done`, timeout_ms: 5000 } });
  const pub = await publishClip(rtmp(n, 'live/shared'), avcClip());
  cleanups.push(pub.stop);
  const slow = fetch(http_(n, '/live/shared/index.m3u8?who=deny-slow'));
  await sleep(200);
  const t0 = Date.now();
  const other = await fetch(http_(n, '/live/shared/index.m3u8?who=alice'));
  const otherMs = Date.now() - t0;
  const otherText = await other.text();
  const refused = await slow;
  const refusedBody = (await refused.json()) as { error: string };
  assert.equal(other.status, 200, `alice got ${other.status}: ${otherText}`);
  assert.ok(otherMs < 1400, `alice waited ${otherMs} ms (not for the other viewer's hook)`);
  assert.equal(refused.status, 403);
  assert.match(refusedBody.error, /no entry for deny-slow/);
  // The same query string asked twice at once is admitted once.
  const before = hooks.calls.filter((c) => c.path === '/on_play').length;
  const [a, b] = await Promise.all([fetch(http_(n, '/live/shared/index.m3u8?who=bob')), fetch(http_(n, '/live/shared/index.m3u8?who=bob'))]);
  await Promise.all([a.text(), b.text()]);
  assert.deepEqual([a.status, b.status], [200, 200]);
  assert.equal(hooks.calls.filter((c) => c.path === '/on_play').length - before, 1, 'one on_play for bob');
});
