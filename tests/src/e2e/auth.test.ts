/**
 * Publish/play authorisation on a real node process: static keys and signed tokens from
 * YAML, HTTP webhooks answered by a real HTTP server in this test, and SIGHUP reload of
 * keys and webhook settings while a viewer keeps playing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { RtmpClient, RtmpClientError } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';
import { mintToken } from '../../../services/node/src/auth/token.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher, ffmpegDecode } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';

const SECRET = 'e2e-token-secret';

interface HookBody {
  action: string;
  app: string;
  stream: string;
  params: Record<string, string>;
  client_id: string;
  ip: string;
  port: number;
  protocol: string;
  node: string;
  bytes_in?: number;
  bytes_out?: number;
  duration_ms?: number;
}

interface StreamsReply {
  streams: Array<{ app: string; stream: string; live: boolean }>;
}

/** The webhook receiver: `deny=1` in the params refuses, `slow=1` answers after 2.5 s. */
class Hooks {
  readonly calls: Array<{ path: string; body: HookBody; at: number }> = [];
  private server!: http.Server;
  base = '';

  async start(): Promise<void> {
    this.server = http.createServer((rq, res) => {
      const parts: Buffer[] = [];
      rq.on('data', (d: Buffer) => parts.push(d));
      rq.on('end', () => {
        const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as HookBody;
        this.calls.push({ path: rq.url ?? '', body, at: Date.now() });
        if (body.params.deny === '1') return void res.writeHead(403).end(`denied by hook for ${body.stream}`);
        if (body.params.slow === '1') return void setTimeout(() => res.writeHead(200).end(), 2500);
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    const a = this.server.address();
    this.base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  }

  find(path: string, pred: (b: HookBody) => boolean = () => true): Promise<HookBody> {
    return waitFor(`hook ${path}`, () => this.calls.find((c) => c.path === path && pred(c.body))?.body, 10_000, 50);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

function config(hooks: Hooks, key: string, onTimeout: 'refuse' | 'allow'): Record<string, unknown> {
  return {
    auth: {
      token_secret: SECRET,
      apps: {
        live: { publish: { keys: [key] }, play: { tokens: true } },
      },
    },
    webhooks: {
      on_publish: `${hooks.base}/on_publish`,
      on_play: `${hooks.base}/on_play`,
      on_publish_done: `${hooks.base}/on_publish_done`,
      on_play_done: `${hooks.base}/on_play_done`,
      timeout_ms: 1000,
      on_timeout: onTimeout,
    },
  };
}

const playToken = (stream: string): string => mintToken({ secret: SECRET, action: 'play', app: 'live', stream, ttlSeconds: 120 }).query;

async function viewer(url: string): Promise<{ client: RtmpClient; frames: Array<RtmpMessage & { at: number }> }> {
  const client = await RtmpClient.connect(url);
  const frames: Array<RtmpMessage & { at: number }> = [];
  client.onFrame = (m) => frames.push({ ...m, at: Date.now() });
  await client.play();
  return { client, frames };
}

async function publishWith(node: NodeProcess, path: string): Promise<RtmpClient> {
  const c = await RtmpClient.connect(`${node.rtmpUrl}/${path}`);
  try {
    await c.publish();
  } catch (err) {
    c.close();
    throw err;
  }
  return c;
}

const count = (text: string, needle: string): number => text.split(needle).length - 1;

describe('authorisation on a node process', () => {
  const hooks = new Hooks();
  let node: NodeProcess;
  let ffmpeg: FfmpegPublisher | undefined;

  before(async () => {
    await hooks.start();
    node = await NodeProcess.start({ config: config(hooks, 'k-one', 'refuse') });
  });

  after(async () => {
    await ffmpeg?.stop();
    await node?.stop();
    node?.cleanup();
    await hooks.stop();
  });

  test('ffmpeg with a wrong stream key is refused before anything is published; with the right key it goes live', async () => {
    const bad = new FfmpegPublisher(`${node.rtmpUrl}/live/cam?key=wrong`, { width: 320, height: 240, fps: 25, gop: 25 });
    const code = await Promise.race([bad.exited, sleep(15_000).then(() => 'timeout' as const)]);
    await bad.stop();
    assert.notEqual(code, 0, 'ffmpeg fails');
    assert.notEqual(code, 'timeout', 'ffmpeg gives up promptly');
    const streams = await node.api<StreamsReply>('/api/v1/streams');
    assert.ok(!streams.streams.some((s) => s.stream === 'cam' && s.live), 'never live');
    assert.match(node.logs(), /"reason":"stream key invalid".*"msg":"authorisation refused"|"msg":"authorisation refused".*"reason":"stream key invalid"/);
    assert.equal(hooks.calls.filter((c) => c.path === '/on_publish').length, 0, 'the hook is not asked for a wrong key');

    ffmpeg = new FfmpegPublisher(`${node.rtmpUrl}/live/cam?key=k-one`, { width: 320, height: 240, fps: 25, gop: 25 });
    await waitFor('cam live', async () => (await node.api<StreamsReply>('/api/v1/streams')).streams.some((s) => s.stream === 'cam' && s.live), 20_000, 100);
    const hook = await hooks.find('/on_publish', (b) => b.stream === 'cam');
    assert.equal(hook.action, 'publish');
    assert.equal(hook.app, 'live');
    assert.deepEqual(hook.params, { key: 'k-one' });
    assert.equal(hook.protocol, 'rtmp');
    assert.equal(hook.node, node.nodeId);
    assert.match(hook.ip, /^127\./);
  });

  test('on_publish refusal: the client gets NetStream.Publish.Unauthorized with the hook\'s reason', async () => {
    await assert.rejects(
      publishWith(node, 'live/x?key=k-one&deny=1'),
      (e: unknown) => e instanceof RtmpClientError && e.code === 'NetStream.Publish.Unauthorized' && /on_publish hook refused \(HTTP 403\): denied by hook for x/.test(e.message),
    );
    await assert.rejects(publishWith(node, 'live/x'), /NetStream\.Publish\.Unauthorized: publish live\/x unauthorised: needs a stream key/);
  });

  test('play needs a signed token: missing, forged or expired are refused; ffmpeg and the client play with one', async () => {
    await assert.rejects(viewer(`${node.rtmpUrl}/live/cam`), /NetStream\.Play\.Unauthorized.*needs a signed token/);
    await assert.rejects(viewer(`${node.rtmpUrl}/live/cam?exp=9999999999&sig=${'0'.repeat(64)}`), /signed token invalid/);
    const expired = mintToken({ secret: SECRET, action: 'play', app: 'live', stream: 'cam', ttlSeconds: 1, now: Date.now() - 60_000 }).query;
    await assert.rejects(viewer(`${node.rtmpUrl}/live/cam?${expired}`), /signed token expired/);
    const publishToken = mintToken({ secret: SECRET, action: 'publish', app: 'live', stream: 'cam', ttlSeconds: 60 }).query;
    await assert.rejects(viewer(`${node.rtmpUrl}/live/cam?${publishToken}`), /signed token invalid for play/);
    const v = await viewer(`${node.rtmpUrl}/live/cam?${playToken('cam')}`);
    await waitFor('frames', () => v.frames.filter((f) => f.type === 9).length > 10, 10_000);
    v.client.close();
    const decoded = await ffmpegDecode(`${node.rtmpUrl}/live/cam?${playToken('cam')}`, 2);
    assert.equal(decoded.code, 0, decoded.errors);
    assert.ok(decoded.frames >= 40, `ffmpeg decoded ${decoded.frames} frames`);
  });

  test('on_play refusal over HTTP-FLV: 403 with the reason and not one byte of media', async () => {
    const r = await fetch(`${node.httpUrl}/live/cam.flv?${playToken('cam')}&deny=1`);
    assert.equal(r.status, 403);
    const body = Buffer.from(await r.arrayBuffer());
    assert.notEqual(body.subarray(0, 3).toString(), 'FLV');
    const json = JSON.parse(body.toString()) as { error: string; code: string };
    assert.equal(json.code, 'NetStream.Play.Unauthorized');
    assert.equal(json.error, 'play live/cam unauthorised: on_play hook refused (HTTP 403): denied by hook for cam');
    const noToken = await fetch(`${node.httpUrl}/live/cam.flv`);
    assert.equal(noToken.status, 403);
    assert.match(await noToken.text(), /needs a signed token/);
    const ok = await fetch(`${node.httpUrl}/live/cam.flv?${playToken('cam')}`);
    assert.equal(ok.status, 200);
    const reader = ok.body!.getReader();
    assert.equal(Buffer.from((await reader.read()).value!).subarray(0, 3).toString(), 'FLV');
    await reader.cancel();
  });

  test('a hook that does not answer within timeout_ms refuses (on_timeout: refuse)', async () => {
    const t0 = Date.now();
    await assert.rejects(viewer(`${node.rtmpUrl}/live/cam?${playToken('cam')}&slow=1`), /NetStream\.Play\.Unauthorized: play live\/cam unauthorised: on_play hook did not answer within 1000 ms/);
    const took = Date.now() - t0;
    assert.ok(took >= 900 && took < 2400, `refused after ${took} ms`);
  });

  test('on_play_done and on_publish_done arrive with the session\'s fields when sessions end', async () => {
    const started = Date.now();
    const v = await viewer(`${node.rtmpUrl}/live/cam?${playToken('cam')}&who=alice`);
    const play = await hooks.find('/on_play', (b) => b.params.who === 'alice');
    await sleep(1000);
    v.client.close();
    const done = await hooks.find('/on_play_done', (b) => b.params.who === 'alice');
    assert.equal(done.action, 'play_done');
    assert.equal(done.app, 'live');
    assert.equal(done.stream, 'cam');
    assert.equal(done.client_id, play.client_id);
    assert.equal(done.protocol, 'rtmp');
    assert.equal(done.ip, play.ip);
    assert.equal(done.port, play.port);
    assert.ok((done.bytes_out ?? 0) > 10_000, `bytes_out ${done.bytes_out}`);
    assert.ok((done.duration_ms ?? 0) >= 900 && (done.duration_ms ?? 0) <= Date.now() - started, `duration ${done.duration_ms}`);

    const flv = await fetch(`${node.httpUrl}/live/cam.flv?${playToken('cam')}&who=bob`);
    const reader = flv.body!.getReader();
    await reader.read();
    await reader.cancel();
    const flvDone = await hooks.find('/on_play_done', (b) => b.params.who === 'bob');
    assert.equal(flvDone.protocol, 'http-flv');

    const pub = await publishWith(node, 'live/short?key=k-one&who=carol');
    pub.sendMedia(9, 0, Buffer.from([0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 0]));
    await sleep(300);
    pub.close();
    const pdone = await hooks.find('/on_publish_done', (b) => b.params.who === 'carol');
    assert.equal(pdone.action, 'publish_done');
    assert.equal(pdone.stream, 'short');
    assert.ok((pdone.bytes_in ?? 0) > 0);
    assert.equal(hooks.calls.filter((c) => c.path === '/on_publish_done' && c.body.stream === 'cam').length, 0, 'the live publisher is not done');
  });

  test('SIGHUP reloads keys and webhook settings; the viewer keeps playing; an invalid file keeps the running config', async () => {
    const v = await viewer(`${node.rtmpUrl}/live/cam?${playToken('cam')}`);
    let maxGap = 0;
    let last = Date.now();
    v.client.onFrame = (m) => {
      const now = Date.now();
      if (m.type === 9) {
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }
      v.frames.push({ ...m, at: now });
    };
    await waitFor('frames', () => v.frames.filter((f) => f.type === 9).length > 10, 10_000);
    const file = join(node.dir, 'config.yaml');
    const reloads = (): number => count(node.logs(), '"msg":"config reloaded"');
    writeFileSync(file, stringify(config(hooks, 'k-two', 'allow')));
    node.signal('SIGHUP');
    await waitFor('reload logged', () => reloads() === 1, 10_000);
    assert.match(node.logs(), /"changed":\["auth\.apps\.live\.publish\.keys","webhooks\.on_timeout"\]/);
    assert.ok(!node.logs().includes('k-two'), 'keys are not logged');
    await assert.rejects(publishWith(node, 'live/after?key=k-one'), /NetStream\.Publish\.Unauthorized.*stream key invalid/);
    const p = await publishWith(node, 'live/after?key=k-two');
    p.close();
    // on_timeout: allow now lets a slow hook through.
    const slow = await viewer(`${node.rtmpUrl}/live/cam?${playToken('cam')}&slow=1`);
    slow.client.close();

    writeFileSync(file, 'auth:\n  apps:\n    live:\n      publish: { keyz: [x] }\n');
    node.signal('SIGHUP');
    await waitFor('failed reload logged', () => node.logs().includes('config reload failed; keeping the running config'), 10_000);
    assert.match(node.logs(), /unknown config key \\"auth\.apps\.live\.publish\.keyz\\"/);
    const p2 = await publishWith(node, 'live/after2?key=k-two');
    p2.close();

    const n = v.frames.filter((f) => f.type === 9).length;
    await sleep(1000);
    assert.ok(v.frames.filter((f) => f.type === 9).length >= n + 15, 'still receiving after the reloads');
    assert.ok(maxGap < 1000, `no stall in the viewer (largest gap ${maxGap} ms)`);
    assert.equal(count(node.logs(), '"msg":"node started"'), 1, 'no restart');
    v.client.close();
  });
});
