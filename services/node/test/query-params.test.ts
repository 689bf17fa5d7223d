/**
 * One rule for repeated query parameters (auth/params.ts): a name given more than once is
 * refused, on RTMP (app and stream name queries joined), HTTP-FLV, WS-FLV and HLS alike, before
 * any key, token or webhook looks at it. A node in this process, real sockets, a webhook server
 * in this test.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import { RtmpClient } from '../src/client/rtmp-client.ts';
import { joinParams, paramsRecord, repeatedParam } from '../src/auth/params.ts';
import { inProcessNode, syntheticPublisher } from './support.ts';
import type { SyntheticPublisher } from '../src/client/synthetic-source.ts';

test('repeatedParam, joinParams and paramsRecord', () => {
  assert.equal(repeatedParam(new URLSearchParams('a=1&b=2')), undefined);
  assert.equal(repeatedParam(new URLSearchParams('key=a&x=1&key=b')), 'key');
  assert.equal(repeatedParam(new URLSearchParams('key=a&k%65y=b')), 'key', 'names compare after percent-decoding');
  const joined = joinParams(new URLSearchParams('key=a'), new URLSearchParams('key=a&z=1'));
  assert.deepEqual([...joined], [['key', 'a'], ['key', 'a'], ['z', '1']], 'the app query then the stream query, every pair kept');
  const rec = paramsRecord(new URLSearchParams('__proto__=x&a=1'));
  assert.ok(Object.hasOwn(rec, '__proto__'), 'a parameter named __proto__ is a plain field');
  assert.equal(Object.getPrototypeOf(rec), Object.prototype);
  assert.equal(JSON.stringify(rec), '{"__proto__":"x","a":"1"}');
});

let node: MediaNode;
let hooks: http.Server;
let pub: SyntheticPublisher;
const hookCalls: Array<{ path: string; params: Record<string, string> }> = [];

before(async () => {
  hooks = http.createServer((rq, res) => {
    const parts: Buffer[] = [];
    rq.on('data', (d: Buffer) => parts.push(d));
    rq.on('end', () => {
      hookCalls.push({ path: rq.url ?? '', params: (JSON.parse(Buffer.concat(parts).toString('utf8')) as { params: Record<string, string> }).params });
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((r) => hooks.listen(0, '127.0.0.1', () => r()));
  const a = hooks.address();
  const base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  node = await inProcessNode(new MemoryBusNetwork(), 'q1', {
    auth: { apps: { live: { publish: { keys: ['pk'] }, play: { keys: ['good'] } } } },
    webhooks: { on_play: `${base}/on_play`, on_publish: `${base}/on_publish` },
  });
  pub = await syntheticPublisher(`rtmp://${node.config.public_host}:${node.rtmpPort}/live/cam?key=pk`);
});

after(async () => {
  pub?.stop();
  await node?.stop();
  hooks.closeAllConnections();
  await new Promise((r) => hooks.close(r));
});

const httpUrl = (path: string): string => `http://${node.config.public_host}:${node.httpPort}${path}`;
const rtmpBase = (): string => `rtmp://${node.config.public_host}:${node.rtmpPort}`;

async function status(path: string): Promise<{ status: number; error?: string }> {
  const ac = new AbortController();
  const r = await fetch(httpUrl(path), { signal: ac.signal });
  if (r.status === 200) {
    ac.abort();
    return { status: 200 };
  }
  return { status: r.status, error: ((await r.json()) as { error: string }).error };
}

/** A WS-FLV opening handshake; returns the status line's code and the body. */
function wsStatus(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: node.config.public_host, port: node.httpPort }, () => {
      s.write([`GET ${path} HTTP/1.1`, 'Host: x', 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`, 'Sec-WebSocket-Version: 13', '', ''].join('\r\n'));
    });
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) {
        const code = Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1]);
        if (code === 101 || got.includes('}')) {
          s.destroy();
          resolve({ status: code, body: got.slice(got.indexOf('\r\n\r\n') + 4) });
        }
      }
    });
    s.on('error', reject);
  });
}

async function rtmpPlay(app: string, stream: string): Promise<string> {
  const c = await RtmpClient.connect(`${rtmpBase()}/${app}/x`);
  try {
    await c.play(stream, 5000);
    return 'playing';
  } catch (err) {
    return (err as Error).message;
  } finally {
    c.close();
  }
}

test('a repeated parameter is refused on every protocol, whichever copy is the good one, and no webhook is asked', async () => {
  const before = hookCalls.length;
  const dup = /query parameter "key" is given more than once/;
  for (const q of ['key=good&key=bad', 'key=bad&key=good', 'key=good&key=good']) {
    const flv = await status(`/live/cam.flv?${q}`);
    assert.equal(flv.status, 403, `HTTP-FLV ?${q}`);
    assert.match(flv.error!, dup);
    const hls = await status(`/live/cam/index.m3u8?${q}`);
    assert.equal(hls.status, 403, `HLS ?${q}`);
    assert.match(hls.error!, dup);
    const ws = await wsStatus(`/ws/live/cam.flv?${q}`);
    assert.equal(ws.status, 403, `WS-FLV ?${q}`);
    assert.match((JSON.parse(ws.body) as { error: string }).error, dup);
    assert.match(await rtmpPlay('live', `cam?${q}`), dup, `RTMP ?${q}`);
  }
  // RTMP joins the app's query and the stream name's: a name in both is repeated too.
  assert.match(await rtmpPlay('live?key=good', 'cam?key=good'), dup);
  assert.match(await rtmpPlay('live?key=bad', 'cam?key=good'), dup);
  const c = await RtmpClient.connect(`${rtmpBase()}/live/cam2?key=pk&key=pk`);
  await assert.rejects(c.publish(), dup);
  c.close();
  assert.equal(hookCalls.length, before, 'the webhook never saw a request with a repeated name');

  // The single-valued forms play, and the webhook sees exactly that value.
  assert.equal((await status('/live/cam.flv?key=good&who=ann')).status, 200);
  assert.equal((await wsStatus('/ws/live/cam.flv?key=good&who=ann')).status, 101);
  assert.equal(await rtmpPlay('live?key=good', 'cam?who=ann'), 'playing');
  const seen = hookCalls.slice(before).filter((h) => h.path === '/on_play');
  assert.equal(seen.length, 3);
  assert.ok(seen.every((h) => h.params.key === 'good' && h.params.who === 'ann'));
});
