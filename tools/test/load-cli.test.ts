/**
 * meshcast-load: the option rules and small pure pieces, then real runs against a meshcast
 * node process — the bin with --json (RTMP), and an HTTP-FLV run over several streams in-process.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FlvTag } from '@meshcast/proto';
import type { FlvSource } from '../src/load/index.ts';
import { NodeProcess } from '../../tests/src/harness/node-process.ts';
import { freeUdpPort } from '../../tests/src/harness/ports.ts';
import { isLoopbackAddress, isLoopbackHost, parseLoadArgs, UsageError, type LoadOptions } from '../src/load-cli/options.ts';
import { framesInRange, runLoad, streamNames, withStream, type LoadReport, type LoadUi } from '../src/load-cli/runner.ts';
import { carriesIdr, parseRtp } from '../src/load-cli/whep-swarm.ts';
import { apportion, arrivalOrder, zipfWeights } from '../src/load-cli/zipf.ts';

const REPO = resolve(import.meta.dirname, '../..');
const BIN = join(REPO, 'tools/bin/meshcast-load.mjs');

function runBin(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((res, rej) => {
    const p = spawn(process.execPath, [BIN, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', rej);
    p.on('exit', (code) => res({ code: code ?? -1, out, err }));
  });
}

const opts = (args: string[]): LoadOptions => parseLoadArgs(args) as LoadOptions;

describe('meshcast-load options and pieces', () => {
  it('spreads viewers over streams by Zipf popularity, exactly', () => {
    const w = zipfWeights(4, 1);
    assert.ok(Math.abs(w.reduce((a, b) => a + b, 0) - 1) < 1e-12);
    assert.ok(w[0]! > w[1]! && w[1]! > w[2]!);
    assert.deepEqual(apportion(30, w), [14, 7, 5, 4]);
    assert.deepEqual(apportion(10, zipfWeights(3, 0)), [4, 3, 3]);
    assert.deepEqual(apportion(7, [1]), [7]);
    const order = arrivalOrder([3, 1, 2], 7);
    assert.deepEqual([...order].sort(), [0, 0, 0, 1, 2, 2]);
    assert.deepEqual(arrivalOrder([3, 1, 2], 7), order, 'seeded: the same every run');
  });

  it('names streams and builds play URLs', () => {
    assert.deepEqual(streamNames('load', 1), ['load']);
    assert.deepEqual(streamNames('load', 3), ['load-1', 'load-2', 'load-3']);
    assert.equal(withStream('rtmp://127.0.0.1:1935/live/x?key=k', 'live', 'load-2', false), 'rtmp://127.0.0.1:1935/live/load-2?key=k');
    assert.equal(withStream('http://127.0.0.21:8080/live/x.flv', 'live', 'a b', true), 'http://127.0.0.21:8080/live/a%20b.flv');
    assert.equal(withStream('http://127.0.0.21:8080/live/x/whep?token=t', 'live', 'load-1', 'whep'), 'http://127.0.0.21:8080/live/load-1/whep?token=t');
    assert.deepEqual(opts(['--play-url', 'http://127.0.0.1:8080/live/cam/whep', '--protocol', 'whep']).stream, 'cam');
    assert.throws(() => parseLoadArgs(['--url', 'rtmp://127.0.0.1/live/x', '--protocol', 'whep']), /--protocol whep needs --play-url/);
    assert.throws(() => parseLoadArgs(['--url', 'rtmp://127.0.0.1/live/x', '--protocol', 'whep', '--play-url', 'http://127.0.0.1/live/x.flv']), /must be an http:\/\/…\/app\/stream\/whep URL/);
  });

  it('reads RTP headers and finds IDR slices in H.264 payloads', () => {
    const rtp = Buffer.from([0x80, 0x80 | 102, 0, 1, 0, 0, 0x03, 0xe8, 0, 0, 0, 7, 0x65, 0x88]);
    assert.deepEqual(parseRtp(rtp), { marker: true, payloadType: 102, timestamp: 1000, payload: Buffer.from([0x65, 0x88]) });
    assert.equal(parseRtp(Buffer.from([0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0])), undefined, 'an RTCP sender report is not RTP');
    assert.ok(carriesIdr(Buffer.from([0x65, 0x88])), 'single NAL IDR');
    assert.ok(carriesIdr(Buffer.from([0x7c, 0x85, 0])), 'first FU-A fragment of an IDR');
    assert.ok(!carriesIdr(Buffer.from([0x7c, 0x05, 0])), 'a middle FU-A fragment does not start a picture');
    assert.ok(carriesIdr(Buffer.from([0x78, 0, 2, 0x67, 0x42, 0, 2, 0x65, 0x88])), 'STAP-A with SPS and IDR');
    assert.ok(!carriesIdr(Buffer.from([0x41, 0x9a])), 'a P slice');
  });

  it('counts expected frames over looped media time', () => {
    const tag = (ts: number): FlvTag => ({ type: 9, timestamp: ts, streamId: 0, payload: Buffer.alloc(1) });
    const src = { tags: [tag(0), tag(40), tag(80)], loopDurationMs: 120 } as FlvSource;
    assert.equal(framesInRange(src, -1, 0), 1);
    assert.equal(framesInRange(src, 0, 120), 3);
    assert.equal(framesInRange(src, 100, 100 + 1200), 30);
  });

  it('applies defaults and bounds', () => {
    const o = opts(['--url', 'rtmp://127.0.0.1:1935/live/load', '--viewers', '20', '--duration', '3']);
    assert.equal(o.app, 'live');
    assert.equal(o.stream, 'load');
    assert.equal(o.publishers, 1);
    assert.equal(o.workers, 0);
    assert.equal(opts(['--url', 'rtmp://127.0.0.1/live/x', '--streams', '5']).publishers, 5);
    assert.throws(() => parseLoadArgs(['--url', 'rtmp://127.0.0.1/live/x', '--viewers', '20001']), /refusing 20001 viewers: more than 20000 needs --force/);
    assert.throws(() => parseLoadArgs(['--url', 'rtmp://127.0.0.1/live/x', '--duration', '3601']), /longer than 3600 s needs --force/);
    assert.equal(opts(['--url', 'rtmp://127.0.0.1/live/x', '--viewers', '20001', '--force']).viewers, 20001);
    assert.throws(() => parseLoadArgs(['--url', 'rtmp://127.0.0.1/live/x', '--protocol', 'http-flv']), /needs --play-url/);
    assert.throws(() => parseLoadArgs(['--url', 'rtmp://127.0.0.1/live/x', '--publishers', '2']), /more than --streams/);
    assert.throws(() => parseLoadArgs(['--viewers', '3']), UsageError);
    assert.equal(parseLoadArgs(['--help']), 'help');
  });

  it('knows loopback from the rest', async () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', '::ffff:127.0.0.9']) assert.ok(isLoopbackAddress(a), a);
    for (const a of ['10.0.0.1', '192.168.1.1', '::', '8.8.8.8', 'example']) assert.ok(!isLoopbackAddress(a), a);
    assert.ok(await isLoopbackHost('localhost'));
    assert.ok(!(await isLoopbackHost('10.20.30.40')));
  });

  it('refuses non-loopback targets unless --allow-remote (before any connection)', async () => {
    const r = await runBin(['--url', 'rtmp://10.20.30.40:1935/live/x', '--viewers', '1', '--duration', '1']);
    assert.equal(r.code, 2);
    assert.match(r.err, /refusing to load 10\.20\.30\.40: not a loopback address.*--allow-remote/);
    const r2 = await runBin(['--url', 'rtmp://127.0.0.1:1935/live/x', '--route', 'http://192.168.77.1:8080', '--viewers', '1']);
    assert.equal(r2.code, 2);
    assert.match(r2.err, /refusing to load 192\.168\.77\.1/);
    const r3 = await runBin(['--url', 'rtmp://127.0.0.1:1935/live/x', '--viewers', '50000']);
    assert.equal(r3.code, 2);
    assert.match(r3.err, /needs --force/);
  });
});

describe('meshcast-load against a meshcast node', { timeout: 60_000 }, () => {
  let node: NodeProcess;

  before(async () => {
    node = await NodeProcess.start({ host: '127.0.0.171', env: { MESHCAST_LOG_LEVEL: 'warn' } });
  });

  after(async () => {
    await node?.kill();
    node?.cleanup();
  });

  it('--json: 20 viewers for 3 s all play; TTFF, latency percentiles, delivered ≈ expected', async () => {
    const r = await runBin(['--url', `${node.rtmpUrl}/live/loadtest`, '--viewers', '20', '--duration', '3', '--ramp', '100', '--json']);
    assert.equal(r.code, 0, r.err);
    const rep = JSON.parse(r.out) as LoadReport;
    const s = rep.summary;
    assert.equal(rep.ok, true);
    assert.equal(s.requested, 20);
    assert.equal(s.playing, 20);
    assert.equal(s.receiving, 20);
    assert.equal(s.failed, 0, JSON.stringify(s.failures));
    assert.equal(s.ttffMs.count, 20);
    assert.ok(s.ttffMs.p50 > 0 && s.ttffMs.p99 < 5000, `TTFF ${JSON.stringify(s.ttffMs)}`);
    assert.ok(s.latencyMs.count >= 20 * 8, `clock stamps seen: ${s.latencyMs.count}`);
    assert.ok(s.latencyMs.p50 > 0 && s.latencyMs.p95 < 1000 && s.latencyMs.p99 >= s.latencyMs.p50, `latency ${JSON.stringify(s.latencyMs)}`);
    assert.equal(rep.window, 'media-time');
    assert.ok(s.deliveredRatio > 0.98 && s.deliveredRatio <= 1.0001, `delivered ${s.deliveredRatio}`);
    assert.ok(rep.framesExpected > 0);
    assert.ok(rep.framesMissing <= rep.framesExpected * 0.02, `missing ${rep.framesMissing} of ${rep.framesExpected}`);
    assert.equal(rep.publishers.length, 1);
    assert.match(r.err, /publisher\(s\) live/);
  });

  it('HTTP-FLV viewers over 3 Zipf-popular streams', async () => {
    const lines: string[] = [];
    const ui: LoadUi = { start: () => undefined, update: () => undefined, log: (l) => lines.push(l), stop: () => undefined };
    const o = opts(['--url', `${node.rtmpUrl}/live/zipf`, '--protocol', 'http-flv', '--play-url', `${node.httpUrl}/live/any.flv`, '--viewers', '12', '--streams', '3', '--duration', '2', '--ramp', '0']);
    const rep = await runLoad(o, ui);
    assert.deepEqual(rep.streams.map((x) => [x.stream, x.viewers]), [['zipf-1', 7], ['zipf-2', 3], ['zipf-3', 2]]);
    assert.equal(rep.streams[0]!.playUrl, `${node.httpUrl}/live/zipf-1.flv`);
    assert.equal(rep.summary.receiving, 12, JSON.stringify(rep.summary.failures));
    assert.ok(rep.summary.latencyMs.count > 0, 'clock stamps reach HTTP-FLV viewers');
    assert.ok(rep.summary.deliveredRatio > 0.98, `delivered ${rep.summary.deliveredRatio}`);
    assert.equal(rep.ok, true);
  });

  it('--protocol whep: libdatachannel viewers play H.264 + Opus over WHEP, and DELETE their sessions', async () => {
    const webrtc = await NodeProcess.start({ host: '127.0.0.172', config: { webrtc: { udp_port: await freeUdpPort('127.0.0.172') } }, env: { MESHCAST_LOG_LEVEL: 'warn' } });
    try {
      // The bin, as an operator runs it: it must also exit once its peers are closed (libdatachannel's threads stopped).
      const r = await runBin(['--url', `${webrtc.rtmpUrl}/live/whepload`, '--protocol', 'whep', '--play-url', `${webrtc.httpUrl}/live/whepload/whep`, '--viewers', '4', '--duration', '3', '--ramp', '0', '--json']);
      assert.equal(r.code, 0, r.err);
      const rep = JSON.parse(r.out) as LoadReport;
      const s = rep.summary;
      assert.equal(rep.window, 'arrival');
      assert.equal(s.failed, 0, JSON.stringify(s.failures));
      assert.equal(s.receiving, 4, 'every viewer decoded-ready a keyframe');
      assert.equal(rep.ok, true);
      // The test media is 30 fps video + AAC (→ Opus 20 ms packets): 3 s is ~90 video + ~150 audio frames per viewer.
      assert.ok(rep.framesReceived >= 4 * 150, `frames received ${rep.framesReceived}`);
      assert.ok(s.medianViewerBytes > 100_000, `median bytes per viewer ${s.medianViewerBytes}`);
      // The sessions were DELETEd when the load tester stopped: the node lists no WHEP viewer.
      const { sessions } = await webrtc.api<{ sessions: Array<{ protocol: string }> }>('/api/v1/sessions');
      assert.deepEqual(sessions.filter((x) => x.protocol === 'whep'), []);
    } finally {
      await webrtc.kill();
      webrtc.cleanup();
    }
  });

  it('--protocol whep: a viewer whose peer fails before it plays asks again with a fresh peer; the report counts the retry, not a failure', async () => {
    const webrtc = await NodeProcess.start({ host: '127.0.0.173', config: { webrtc: { udp_port: await freeUdpPort('127.0.0.173') } }, env: { MESHCAST_LOG_LEVEL: 'warn' } });
    // A WHEP proxy that spoils the first answer's DTLS fingerprint: that peer refuses the node's
    // certificate and fails, as a libdatachannel peer does when it loses the offerer race.
    let posts = 0;
    let deletes = 0;
    const proxy = createServer((req: IncomingMessage, res: ServerResponse) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        void (async () => {
          // Numbered on arrival: both viewers' offers come at once.
          const post = req.method === 'POST' ? ++posts : 0;
          if (req.method === 'DELETE') deletes++;
          const up = await fetch(`${webrtc.httpUrl}${req.url}`, { method: req.method, headers: { 'Content-Type': req.headers['content-type'] ?? 'application/sdp' }, body: req.method === 'POST' ? Buffer.concat(chunks) : undefined });
          let body = Buffer.from(await up.arrayBuffer());
          if (post === 1) body = Buffer.from(body.toString().replace(/(a=fingerprint:sha-256 )([0-9A-F]{2})/i, (_, p: string, b: string) => `${p}${b === '00' ? '11' : '00'}`));
          const headers: Record<string, string> = { 'Content-Type': up.headers.get('content-type') ?? 'application/sdp' };
          const loc = up.headers.get('location');
          if (loc) headers.Location = loc;
          res.writeHead(up.status, headers).end(body);
        })().catch((err: Error) => res.writeHead(502).end(err.message));
      });
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.173', r));
    const proxyUrl = `http://127.0.0.173:${(proxy.address() as AddressInfo).port}`;
    try {
      const r = await runBin(['--url', `${webrtc.rtmpUrl}/live/wheprt`, '--protocol', 'whep', '--play-url', `${proxyUrl}/live/wheprt/whep`, '--viewers', '2', '--duration', '2', '--ramp', '0', '--json']);
      assert.equal(r.code, 0, r.err);
      const s = (JSON.parse(r.out) as LoadReport).summary;
      assert.equal(s.failed, 0, JSON.stringify(s.failures));
      assert.equal(s.receiving, 2);
      // The spoiled answer's peer was retried; libdatachannel's own race may add a retry of its own.
      assert.ok((s.retries['connect:ICE_FAILED'] ?? 0) >= 1, JSON.stringify(s.retries));
      const retried = Object.values(s.retries).reduce((a, b) => a + b, 0);
      assert.equal(posts, 2 + retried, 'one offer per viewer, and one per retry');
      // Every session made, the failed attempts' and the played ones, was DELETEd.
      assert.equal(deletes, posts);
      const { sessions } = await webrtc.api<{ sessions: Array<{ protocol: string }> }>('/api/v1/sessions');
      assert.deepEqual(sessions.filter((x) => x.protocol === 'whep'), []);
    } finally {
      proxy.close();
      await webrtc.kill();
      webrtc.cleanup();
    }
  });
});
