/**
 * HLS served by nodes in this process (in-process bus): on-demand segmenters, waiting first
 * playlist, refusals, tokens, idle stop, discontinuities on publisher reconnect, HEVC, and
 * HLS from a node that relays the stream from its owner.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import type { NodeMesh } from '../src/mesh/node-mesh.ts';
import { inProcessNode, sleep, until } from './support.ts';
import { avcClip, firstVideoPesIsRandomAccess, hevcClip, publishClip } from './hls-support.ts';

let nodes: MediaNode[] = [];
const cleanups: Array<() => void> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  await Promise.all(nodes.map((n) => n.stop()));
  nodes = [];
});

const HLS = { target_duration_s: 1, playlist_length: 4, idle_timeout_s: 30 };

async function node(inline: Record<string, unknown> = {}, net = new MemoryBusNetwork(), id = 'n1'): Promise<MediaNode> {
  const n = await inProcessNode(net, id, { hls: HLS, ...inline });
  nodes.push(n);
  return n;
}

function http(n: MediaNode, path: string): string {
  return `http://${n.config.public_host}:${n.httpPort}${path}`;
}

function rtmp(n: MediaNode, path: string): string {
  return `rtmp://${n.config.public_host}:${n.rtmpPort}/${path}`;
}

function extinf(text: string): number[] {
  return [...text.matchAll(/#EXTINF:([\d.]+),/g)].map((m) => Number(m[1]));
}

function uris(text: string): string[] {
  return text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
}

function hlsSessions(n: MediaNode): Array<{ id: string; stream: string | undefined }> {
  return n.sessions.list().filter((s) => s.protocol === 'hls');
}

/** ffprobe in a child process, asynchronously: the node answering it runs in this process. */
function ffprobeCodecs(url: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile('ffprobe', ['-v', 'error', '-show_streams', '-of', 'json', url], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`ffprobe ${url}: ${err.message} ${stderr}`));
      resolve((JSON.parse(stdout) as { streams: Array<{ codec_name: string }> }).streams.map((s) => s.codec_name).sort());
    });
  });
}

test('the first playlist request waits for the first segment; segments are served with ETags', async () => {
  const n = await node();
  const name = 'cam 1/a';
  const base = `/live/${encodeURIComponent(name)}`;
  const t0 = Date.now();
  const pending = fetch(http(n, `${base}/index.m3u8`));
  await sleep(300);
  // Publishing starts after the request: it waits rather than answering an empty playlist.
  const client = await (await import('../src/client/rtmp-client.ts')).RtmpClient.connect(rtmp(n, 'live'));
  cleanups.push(() => client.close());
  await client.publish(name);
  const clip = avcClip({ seconds: 4, fps: 10, gop: 10 });
  for (const h of clip.headers) client.sendMedia(h.type, 0, h.payload);
  let i = 0;
  const timer = setInterval(() => {
    const now = Date.now() - t0;
    while (i < clip.frames.length && clip.frames[i]!.timestamp <= now) {
      client.sendMedia(clip.frames[i]!.type, clip.frames[i]!.timestamp, clip.frames[i]!.payload);
      i++;
    }
  }, 10);
  cleanups.push(() => clearInterval(timer));
  const r = await pending;
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'application/vnd.apple.mpegurl');
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  const text = await r.text();
  assert.match(text, /^#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n/);
  assert.ok(extinf(text).length >= 1);
  assert.ok(Date.now() - t0 < 5000, 'answered as soon as the first segment was cut');
  const first = uris(text)[0]!;
  assert.equal(first, '0.ts');
  const seg = await fetch(http(n, `${base}/${first}`));
  assert.equal(seg.status, 200);
  assert.equal(seg.headers.get('content-type'), 'video/mp2t');
  const body = Buffer.from(await seg.arrayBuffer());
  assert.equal(body.length % 188, 0);
  assert.equal(firstVideoPesIsRandomAccess(body), true);
  const etag = seg.headers.get('etag')!;
  assert.match(etag, /^"[a-z0-9]+-0"$/);
  const again = await fetch(http(n, `${base}/0.ts`), { headers: { 'if-none-match': etag } });
  assert.equal(again.status, 304);
  assert.equal((await fetch(http(n, `${base}/99.ts`))).status, 404);
  assert.equal((await fetch(http(n, `${base}/x.ts`))).status, 404);
  const sessions = hlsSessions(n);
  assert.equal(sessions.length, 1, 'one session for the segmenter, not one per request');
  assert.equal(sessions[0]!.stream, name);
});

test('refusals: unknown stream 404 (reject app), bad names 400, no segmenter 404, unauthorised 403; tokens ride on segment URIs', async () => {
  const n = await node({
    apps: { strict: { play_not_found: 'reject' } },
    auth: { apps: { sec: { play: { keys: ['k1'] } } } },
  });
  const t0 = Date.now();
  const nf = await fetch(http(n, '/strict/nobody/index.m3u8'));
  assert.equal(nf.status, 404);
  assert.ok(Date.now() - t0 < 2000, 'a refusal does not wait');
  assert.equal(hlsSessions(n).length, 0);
  assert.equal((await fetch(http(n, '/live/nobody/3.ts'))).status, 404);
  assert.equal((await fetch(http(n, '/live/%01/index.m3u8'))).status, 400);

  const pub = await publishClip(rtmp(n, 'sec/s'), avcClip());
  cleanups.push(pub.stop);
  assert.equal((await fetch(http(n, '/sec/s/index.m3u8'))).status, 403);
  assert.equal((await fetch(http(n, '/sec/s/index.m3u8?key=bad'))).status, 403);
  const ok = await fetch(http(n, '/sec/s/index.m3u8?key=k1'));
  assert.equal(ok.status, 200);
  const text = await ok.text();
  assert.ok(uris(text).every((u) => /^\d+\.ts\?key=k1$/.test(u)), text);
  const seg = uris(text)[0]!;
  assert.equal((await fetch(http(n, `/sec/s/${seg}`))).status, 200);
  assert.equal((await fetch(http(n, `/sec/s/${seg.split('?')[0]!}`))).status, 403, 'a segment without an admitted token');
  assert.equal((await fetch(http(n, '/sec/s/index.m3u8?key=bad'))).status, 403, 'joining a running segmenter is still authorised');
});

test('the segmenter stops after the idle timeout: session gone, hub listener removed', async () => {
  const n = await node({ hls: { ...HLS, idle_timeout_s: 1 } });
  const pub = await publishClip(rtmp(n, 'live/idle'), avcClip());
  cleanups.push(pub.stop);
  const r = await fetch(http(n, '/live/idle/index.m3u8'));
  assert.equal(r.status, 200);
  const hub = n.registry.get('live', 'idle')!;
  assert.equal(hub.consumerCount, 1);
  assert.equal(hlsSessions(n).length, 1);
  // Requests keep it alive.
  for (let i = 0; i < 4; i++) {
    await sleep(400);
    assert.equal((await fetch(http(n, '/live/idle/index.m3u8'))).status, 200);
  }
  assert.equal(hlsSessions(n).length, 1);
  const t0 = Date.now();
  await until('segmenter stopped', () => hlsSessions(n).length === 0, 5000);
  assert.ok(Date.now() - t0 >= 500);
  assert.equal(hub.consumerCount, 0);
  // The next request starts a fresh one, whose numbering continues the old one's.
  const again = await fetch(http(n, '/live/idle/index.m3u8'));
  assert.equal(again.status, 200);
  assert.equal(hlsSessions(n).length, 1);
  const text = await again.text();
  assert.ok(Number(/#EXT-X-MEDIA-SEQUENCE:(\d+)/.exec(text)?.[1]) > 0, text);
  assert.match(text, /#EXT-X-MEDIA-SEQUENCE:\d+\n#EXT-X-DISCONTINUITY\n/);
});

test('a publisher reconnect puts a discontinuity in the playlist, the media sequence carries on', async () => {
  const n = await node();
  const clip = avcClip();
  const pub1 = await publishClip(rtmp(n, 'live/re'), clip);
  cleanups.push(pub1.stop);
  assert.equal((await fetch(http(n, '/live/re/index.m3u8'))).status, 200);
  await sleep(1500);
  pub1.stop();
  await sleep(300);
  const pub2 = await publishClip(rtmp(n, 'live/re'), clip);
  cleanups.push(pub2.stop);
  const text = await until('discontinuity listed', async () => {
    const t = await (await fetch(http(n, '/live/re/index.m3u8'))).text();
    return /#EXT-X-DISCONTINUITY\n#EXTINF:[\d.]+,\n\d+\.ts\n#EXTINF/.test(t) ? t : undefined;
  }, 10_000);
  const seqs = uris(text).map((u) => Number(u.split('.')[0]));
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1]! + 1);
  assert.ok(extinf(text).every((d) => d > 0 && d <= 2.0));
});

test('an HEVC source is segmented as HEVC', async () => {
  const n = await node();
  const pub = await publishClip(rtmp(n, 'live/h265'), hevcClip());
  cleanups.push(pub.stop);
  assert.deepEqual(await ffprobeCodecs(http(n, '/live/h265/index.m3u8')), ['hevc']);
});

test('HLS from a node that relays the stream: the segmenter keeps the relay, which lingers and goes after the idle stop', async () => {
  const net = new MemoryBusNetwork();
  const a = await node({}, net, 'n1');
  const b = await node({ hls: { ...HLS, idle_timeout_s: 1 } }, net, 'n2');
  const meshOf = (x: MediaNode): NodeMesh => (x as unknown as { mesh: NodeMesh }).mesh;
  await until('membership', () => meshOf(b).membership.table().filter((v) => v.state === 'alive').length === 2);
  const pub = await publishClip(rtmp(a, 'live/far'), avcClip());
  cleanups.push(pub.stop);
  await until('owner known on n2', async () => (await meshOf(b).ownership.lookup('live', 'far'))?.record.owner === 'n1');
  assert.deepEqual(await ffprobeCodecs(http(b, '/live/far/index.m3u8')), ['aac', 'h264']);
  assert.equal(meshOf(b).relayStatus().length, 1, 'n2 pulls the stream from n1');
  assert.equal(b.registry.get('live', 'far')?.publisher?.kind, 'relay');
  await until('segmenter idle-stopped', () => hlsSessions(b).length === 0, 5000);
  await until('relay released after its linger', () => meshOf(b).relayStatus().length === 0, 8000);
});
