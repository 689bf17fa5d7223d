/**
 * Authorisation inside running nodes (in-process): nothing is accepted and no media moves
 * before the authoriser says yes; relays between nodes skip viewer auth; reload swaps keys
 * without touching sessions.
 */
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { MemoryBusNetwork } from '@meshcast/mesh';
import { RtmpClient, RtmpClientError } from '../src/client/rtmp-client.ts';
import { loadConfig } from '../src/config.ts';
import type { MediaNode } from '../src/media-node.ts';
import type { HookBody } from '../src/auth/webhooks.ts';
import { applyReload } from '../src/auth/reload.ts';
import { mintToken } from '../src/auth/token.ts';
import { inProcessNode, recordingViewer, rtmpUrl, sleep, syntheticPublisher, until } from './support.ts';

interface HookCall {
  path: string;
  body: HookBody;
  answer: (status: number, text?: string) => void;
}

/** A webhook receiver whose answers the test gives, one call at a time. */
let hookServer: http.Server;
let hookBase = '';
const calls: HookCall[] = [];
let autoAnswer: ((c: HookCall) => void) | undefined = (c) => c.answer(204);

before(async () => {
  hookServer = http.createServer((rq, res) => {
    const parts: Buffer[] = [];
    rq.on('data', (d: Buffer) => parts.push(d));
    rq.on('end', () => {
      const call: HookCall = {
        path: rq.url ?? '',
        body: JSON.parse(Buffer.concat(parts).toString('utf8')) as HookBody,
        answer: (status, text = '') => res.writeHead(status).end(text),
      };
      calls.push(call);
      autoAnswer?.(call);
    });
  });
  await new Promise<void>((r) => hookServer.listen(0, '127.0.0.1', () => r()));
  const a = hookServer.address();
  hookBase = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
});

after(async () => {
  hookServer.closeAllConnections();
  await new Promise((r) => hookServer.close(r));
});

let nodes: MediaNode[] = [];
const cleanups: Array<() => void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  await Promise.all(nodes.map((n) => n.stop()));
  nodes = [];
  calls.length = 0;
  autoAnswer = (c) => c.answer(204);
});

async function node(inline: Record<string, unknown>, net = new MemoryBusNetwork(), id = 'a'): Promise<MediaNode> {
  const n = await inProcessNode(net, id, inline);
  nodes.push(n);
  return n;
}

const hookCall = (path: string): Promise<HookCall> => until(`hook ${path}`, () => calls.find((c) => c.path === path), 5000);

function mediaCount(frames: Array<{ type: number }>): number {
  return frames.filter((f) => f.type === 8 || f.type === 9).length;
}

test('a publisher waiting on on_publish gets nothing into the stream; refused → Publish.Unauthorized, nothing ever reaches viewers', async () => {
  const n = await node({ webhooks: { on_publish: `${hookBase}/pub` } });
  autoAnswer = undefined;
  const watcher = await recordingViewer(rtmpUrl(n, 'live/cam'));
  cleanups.push(() => watcher.client.close());
  const pub = await RtmpClient.connect(rtmpUrl(n, 'live/cam'));
  cleanups.push(() => pub.close());
  const publishing = pub.publish('cam?key=whatever');
  const call = await hookCall('/pub');
  assert.equal(call.body.action, 'publish');
  assert.deepEqual(call.body.params, { key: 'whatever' });
  // The publisher does not wait for the answer: it pushes media right away.
  for (let i = 0; i < 20; i++) pub.sendMedia(9, i * 33, Buffer.from([i === 0 ? 0x17 : 0x27, 1, 0, 0, 0, i]));
  await sleep(300);
  const hub = n.registry.get('live', 'cam');
  assert.equal(hub?.isLive ?? false, false, 'not live while authorisation is pending');
  assert.equal(hub?.stats.framesIn ?? 0, 0, 'no frame ingested while authorisation is pending');
  assert.equal(mediaCount(watcher.frames), 0);
  call.answer(403, 'not today');
  await assert.rejects(publishing, (e: unknown) => e instanceof RtmpClientError && e.code === 'NetStream.Publish.Unauthorized' && /on_publish hook refused \(HTTP 403\): not today/.test(e.message));
  for (let i = 20; i < 30; i++) pub.sendMedia(9, i * 33, Buffer.from([0x27, 1, 0, 0, 0, i]));
  await sleep(300);
  assert.equal(n.registry.get('live', 'cam')?.stats.framesIn ?? 0, 0, 'media after a refusal is dropped too');
  assert.equal(mediaCount(watcher.frames), 0, 'the waiting viewer never saw a frame');
  assert.ok(!calls.some((c) => c.path === '/pub' && c !== call), 'one hook call');
});

test('media sent before on_publish allows is dropped; media after it flows', async () => {
  const n = await node({ webhooks: { on_publish: `${hookBase}/pub` } });
  autoAnswer = undefined;
  const watcher = await recordingViewer(rtmpUrl(n, 'live/cam'));
  cleanups.push(() => watcher.client.close());
  const pub = await RtmpClient.connect(rtmpUrl(n, 'live/cam'));
  cleanups.push(() => pub.close());
  const publishing = pub.publish();
  const call = await hookCall('/pub');
  for (let i = 0; i < 5; i++) pub.sendMedia(9, i * 33, Buffer.from([0x17, 1, 0, 0, 0, 0xee]));
  await sleep(200);
  call.answer(200);
  await publishing;
  for (let i = 5; i < 10; i++) pub.sendMedia(9, i * 33, Buffer.from([0x17, 1, 0, 0, 0, 0x11]));
  await until('frames after allow', () => mediaCount(watcher.frames) >= 5);
  assert.ok(watcher.frames.every((f) => f.type !== 9 || f.payload[5] === 0x11), 'only frames sent after authorisation');
});

test('a viewer waiting on on_play gets no media; refused → Play.Unauthorized and still nothing', async () => {
  const n = await node({ webhooks: { on_play: `${hookBase}/play` } });
  const pub = await syntheticPublisher(rtmpUrl(n, 'live/cam'));
  cleanups.push(pub.stop);
  await until('live', () => n.registry.get('live', 'cam')?.isLive);
  await sleep(200);
  autoAnswer = undefined;
  const v = await RtmpClient.connect(rtmpUrl(n, 'live/cam'));
  cleanups.push(() => v.close());
  const frames: Array<{ type: number }> = [];
  v.onFrame = (m) => frames.push(m);
  const playing = v.play('cam?exp=1&sig=x');
  const call = await hookCall('/play');
  assert.equal(call.body.action, 'play');
  await sleep(400);
  assert.equal(frames.length, 0, 'no media (nor metadata) before authorisation');
  call.answer(401, 'who are you');
  await assert.rejects(playing, (e: unknown) => e instanceof RtmpClientError && e.code === 'NetStream.Play.Unauthorized' && /who are you/.test(e.message));
  await sleep(300);
  assert.equal(frames.length, 0);
  assert.equal(n.registry.get('live', 'cam')?.sinkCount, 0, 'never attached to the stream');
});

test('HTTP-FLV play refused by on_play: 403 with the reason, not a byte of FLV; allowed: FLV', async () => {
  const n = await node({ webhooks: { on_play: `${hookBase}/play` } });
  const pub = await syntheticPublisher(rtmpUrl(n, 'live/cam'));
  cleanups.push(pub.stop);
  await until('live', () => n.registry.get('live', 'cam')?.isLive);
  autoAnswer = (c) => c.answer(c.body.params.token === 'good' ? 200 : 403, 'bad token');
  const base = `http://${n.config.public_host}:${n.httpPort}/live/cam.flv`;
  const refused = await fetch(`${base}?token=nope`);
  assert.equal(refused.status, 403);
  const text = await refused.text();
  assert.ok(!text.startsWith('FLV'));
  assert.deepEqual(JSON.parse(text), { error: 'play live/cam unauthorised: on_play hook refused (HTTP 403): bad token', code: 'NetStream.Play.Unauthorized' });
  const hook = calls.find((c) => c.body.params.token === 'nope')!.body;
  assert.equal(hook.protocol, 'http-flv');
  const ok = await fetch(`${base}?token=good`);
  assert.equal(ok.status, 200);
  const reader = ok.body!.getReader();
  const first = await reader.read();
  assert.equal(Buffer.from(first.value!).subarray(0, 3).toString(), 'FLV');
  await reader.cancel();
});

test('relays between nodes skip viewer auth: a viewer with a play token on node b gets a stream published on node a', async () => {
  const net = new MemoryBusNetwork();
  const inline = {
    auth: { token_secret: 'tok', apps: { live: { publish: { keys: ['pk'] }, play: { tokens: true } } } },
    webhooks: { on_play: `${hookBase}/play`, on_play_done: `${hookBase}/play_done` },
  };
  const a = await node(inline, net, 'a');
  const b = await node(inline, net, 'b');
  const pub = await syntheticPublisher(rtmpUrl(a, 'live/cam?key=pk'));
  cleanups.push(pub.stop);
  await until('live on a', () => a.registry.get('live', 'cam')?.isLive);
  await assert.rejects(recordingViewer(rtmpUrl(b, 'live/cam')), /NetStream\.Play\.Unauthorized.*needs a signed token/);
  const token = mintToken({ secret: 'tok', action: 'play', app: 'live', stream: 'cam', ttlSeconds: 60 }).query;
  const v = await recordingViewer(rtmpUrl(b, `live/cam?${token}`));
  cleanups.push(() => v.client.close());
  await until('frames through the relay', () => v.video().length > 10);
  const plays = calls.filter((c) => c.path === '/play');
  assert.equal(plays.length, 1, 'only the viewer was put to the hook, not the relay pull');
  assert.equal(plays[0]!.body.node, 'b');
  v.client.close();
  const done = await hookCall('/play_done');
  assert.equal(done.body.action, 'play_done');
  assert.equal(done.body.node, 'b');
  assert.ok((done.body.bytes_out ?? 0) > 0);
});

test('reload swaps static keys at once; an existing viewer and publisher are untouched', async () => {
  const inline = { auth: { apps: { live: { publish: { keys: ['old'] } } } } };
  const n = await node(inline);
  const pub = await syntheticPublisher(rtmpUrl(n, 'live/cam?key=old'));
  cleanups.push(pub.stop);
  const v = await recordingViewer(rtmpUrl(n, 'live/cam'));
  cleanups.push(() => v.client.close());
  await until('frames', () => v.video().length > 5);
  const next = loadConfig({
    inline: { node_id: 'a', host: n.config.host, rtmp_port: 0, http_port: 0, auth: { apps: { live: { publish: { keys: ['new'] } } } }, limits: { max_connections_per_ip: 4000 }, media: { flush_ms: 5 } },
  });
  const r = applyReload(n, next);
  assert.ok(r.applied.includes('auth.apps.live.publish.keys'));
  assert.ok(r.applied.includes('limits.max_connections_per_ip'));
  assert.ok(r.needRestart.includes('media.flush_ms'));
  assert.equal(n.limiter.maxPerIp, 4000);
  assert.equal(n.config.limits.max_connections_per_ip, 4000);
  await assert.rejects(syntheticPublisher(rtmpUrl(n, 'live/other?key=old')), /NetStream\.Publish\.Unauthorized.*stream key invalid/);
  const p2 = await syntheticPublisher(rtmpUrl(n, 'live/other?key=new'));
  cleanups.push(p2.stop);
  const before_ = v.video().length;
  await sleep(500);
  assert.ok(v.video().length > before_ + 8, 'the viewer kept receiving');
  assert.ok(n.sessions.list().some((s) => s.role === 'publisher' && s.stream === 'cam'), 'the old-key publisher is still publishing');
});
