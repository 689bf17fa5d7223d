/** `meshcast-load --vod`: options, and N RTMP / HTTP viewers of one file from an in-process node. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import pino from 'pino';
import { loadConfig } from '../../services/node/src/config.ts';
import { startNode } from '../../services/node/src/start-node.ts';
import type { MediaNode } from '../../services/node/src/media-node.ts';
import { parseLoadArgs, UsageError } from '../src/load-cli/options.ts';
import { VodSwarm } from '../src/load-cli/vod-swarm.ts';
import { renderVodMarkdown, type VodPhase } from '../src/bench/results.ts';

describe('meshcast-load --vod', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'vod-load-'));
  let node: MediaNode;

  before(async () => {
    mkdirSync(join(tmp, 'root', 'dir'), { recursive: true });
    execFileSync('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=160x90:rate=25', '-f', 'lavfi', '-i', 'sine=frequency=440', '-t', '2', '-c:v', 'libx264', '-preset', 'ultrafast', '-g', '25', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-movflags', '+faststart', '-y', join(tmp, 'root', 'dir', 'clip.mp4')]);
    const httpPort = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const a = s.address();
        s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
      });
    });
    const config = loadConfig({ inline: { node_id: 'vodload', host: '127.0.0.1', rtmp_port: 0, http_port: httpPort, admin: { port: 0 }, apps: { vod: { vod: { root: join(tmp, 'root') } } }, vod: { cache_dir: join(tmp, 'cache') } } });
    node = await startNode(config, pino({ level: 'silent' }));
  });

  after(async () => {
    await node?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('parses --vod and refuses it with a live stream\'s options', () => {
    const o = parseLoadArgs(['--vod', 'rtmp://127.0.0.1:1935/vod/mp4:dir/clip.mp4', '--viewers', '3']);
    assert.ok(o !== 'help');
    assert.equal(o.vod, 'rtmp://127.0.0.1:1935/vod/mp4:dir/clip.mp4');
    assert.equal(o.viewers, 3);
    assert.throws(() => parseLoadArgs(['--vod', 'rtmp://127.0.0.1/vod/x', '--url', 'rtmp://127.0.0.1/live/x']), UsageError);
    assert.throws(() => parseLoadArgs(['--vod', 'rtmp://127.0.0.1/vod/x', '--protocol', 'whep']), UsageError);
    assert.throws(() => parseLoadArgs(['--vod', 'ftp://127.0.0.1/vod/x']), UsageError);
  });

  for (const protocol of ['rtmp', 'http'] as const) {
    it(`${protocol}: every viewer receives the file, bytes are counted in the window`, async () => {
      const url = protocol === 'rtmp' ? `rtmp://127.0.0.1:${node.rtmpPort}/vod/mp4:dir/clip.mp4` : `http://127.0.0.1:${node.httpPort}/vod/dir/clip.mp4`;
      const swarm = new VodSwarm({ url, viewers: 4, timeoutMs: 5000 });
      try {
        swarm.start();
        const p = await swarm.whenSettled(8000);
        assert.equal(p.receiving, 4);
        swarm.mark();
        await new Promise((r) => setTimeout(r, 2500));
        swarm.end();
        const r = swarm.report();
        assert.equal(r.protocol, protocol);
        assert.equal(r.failed, 0, JSON.stringify(r.failures));
        assert.ok(r.windowBytes > 0);
        assert.ok(r.completed >= 4, `each viewer reached the end of the 2 s file at least once (${r.completed})`);
        assert.ok(r.ok);
      } finally {
        swarm.stop();
      }
    });
  }

  it('a missing file fails every viewer with its cause', async () => {
    const swarm = new VodSwarm({ url: `http://127.0.0.1:${node.httpPort}/vod/none.mp4`, viewers: 2, timeoutMs: 3000 });
    try {
      swarm.start();
      await swarm.whenSettled(5000);
      const r = swarm.report();
      assert.equal(r.failed, 2);
      assert.deepEqual(r.failures, { 'play:HTTP_404': 2 });
      assert.equal(r.ok, false);
    } finally {
      swarm.stop();
    }
  });
});

describe('bench VOD row', () => {
  it('renders live and VOD CPU per viewer and the cache hit rate', () => {
    const phase = (cpu: number): VodPhase => ({ receiving: 10, failed: 0, failures: {}, rampSeconds: 1, windowSeconds: 5, serverCpuPct: cpu, serverMaxRssBytes: 100 * 2 ** 20, cpuPctPerViewer: cpu / 10, mbps: 20, ttffP50Ms: 3 });
    const md = renderVodMarkdown({ viewers: 10, ok: true, kbps: 2000, live: phase(2), vod: phase(8), cacheFetches: 1, cacheHits: 9, cacheHitRate: 0.9, cpuPerViewerVsLive: 4 }).join('\n');
    assert.match(md, /\| live stream \| 10 \| 0 \| 2\.0 \| 0\.200 \|/);
    assert.match(md, /\| VOD file \| 10 \| 0 \| 8\.0 \| 0\.800 \|/);
    assert.match(md, /4\.00× the live CPU per viewer\. Edge cache: 1 fetch\(es\) from the origin, 9 hits, hit rate 90\.0 %/);
    assert.deepEqual(renderVodMarkdown(undefined), []);
  });
});
