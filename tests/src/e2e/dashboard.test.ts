/**
 * The dashboard in a real browser: a mesh of node processes over a real nats-server,
 * ffmpeg publishing to the origin, the project's client watching through relays on three
 * edges, and headless Chromium (the system's, driven by playwright-core) on the origin's
 * page. The page must list the nodes and the stream, draw the relay tree the mesh reports,
 * and play the stream in the page: HTTP-FLV with mpegts.js from this node and from an
 * edge, and HLS with hls.js where the node serves HLS. Leaves a screenshot in
 * tests/artifacts/dashboard.png.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Page } from 'playwright-core';
import { RtmpClient } from '@meshcast/node/client';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { browserUnavailable, launchBrowser, type HeadlessBrowser } from '../harness/browser.ts';

const ARTIFACTS = resolve(import.meta.dirname, '../../artifacts');

const MESH = {
  mesh_secret: 'dashboard-secret',
  heartbeat_ms: 500,
  suspect_ms: 1500,
  dead_ms: 2500,
  lease_ms: 4000,
  renew_ms: 1000,
  relay_linger_ms: 2000,
  relay_stall_ms: 1500,
  relay_fanout: 2,
};

interface ClaimList {
  relays: Array<{ node: string; parent: string }>;
}

/**
 * What the in-page checks touch in the browser. The project compiles without the DOM
 * library, so it is typed here (the casts vanish before the functions reach the page).
 */
interface PageWindow {
  document: {
    querySelector(selector: string): { currentTime: number; videoWidth: number; videoHeight: number; paused: boolean };
    getElementById(id: string): { textContent: string | null } | null;
  };
  mpegts?: unknown;
  Hls?: unknown;
}
type Dataset = { dataset: Record<string, string | undefined> };

/** The video element's position, and whether it has picture. */
function videoState(page: Page): Promise<{ t: number; w: number; h: number; paused: boolean; status: string }> {
  return page.evaluate(() => {
    const doc = (globalThis as unknown as PageWindow).document;
    const v = doc.querySelector('video');
    return { t: v.currentTime, w: v.videoWidth, h: v.videoHeight, paused: v.paused, status: doc.getElementById('ps-status')?.textContent ?? '' };
  });
}

/** Waits for playback to start, then checks that currentTime keeps growing for a few seconds. */
async function assertPlays(page: Page, what: string): Promise<void> {
  const start = await waitFor(`${what}: playback starts`, async () => {
    const s = await videoState(page);
    if (/error|cannot|not available/i.test(s.status)) throw new Error(`player says: ${s.status}`);
    return s.t > 0.3 ? s : undefined;
  }, 20_000, 200);
  await sleep(3000);
  const later = await videoState(page);
  assert.ok(later.t > start.t + 1.5, `${what}: currentTime grows (${start.t.toFixed(2)} → ${later.t.toFixed(2)} s, status "${later.status}")`);
  assert.equal(later.paused, false, `${what}: not paused`);
  assert.deepEqual([later.w, later.h], [640, 360], `${what}: picture is 640×360`);
}

describe('dashboard in headless Chromium', () => {
  test('headless Chromium is installed (scripts/setup-system.sh installs it)', () => {
    assert.equal(browserUnavailable(), undefined);
  });

  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  const viewers: RtmpClient[] = [];
  let origin: NodeProcess;
  let edges: NodeProcess[];
  let ff: FfmpegPublisher | undefined;
  let browser: HeadlessBrowser | undefined;
  let page: Page;

  async function node(id: string): Promise<NodeProcess> {
    const n = await NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats.url] } } });
    nodes.push(n);
    return n;
  }

  async function watch(n: NodeProcess, count: number): Promise<void> {
    for (let i = 0; i < count; i++) viewers.push(await RtmpClient.openPlayer(`${n.rtmpUrl}/live/cam`));
  }

  async function claims(): Promise<ClaimList['relays']> {
    return (await origin.api<ClaimList>('/api/v1/mesh/relays/live/cam')).relays;
  }

  before(async () => {
    nats = await startNatsServer();
    origin = await node('origin');
    edges = await Promise.all(['edge-1', 'edge-2', 'edge-3'].map((id) => node(id)));
    await waitFor('mesh of 4', async () => {
      const r = await origin.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes');
      return r.nodes.filter((n) => n.state === 'alive').length === 4;
    }, 15_000, 100);
    ff = new FfmpegPublisher(`${origin.rtmpUrl}/live/cam`, { width: 640, height: 360 });
    await waitFor('stream owned by origin', async () => {
      const r = await edges[2]!.api<{ streams: Array<{ stream: string; owner: string }> }>('/api/v1/mesh/streams');
      return r.streams.some((s) => s.stream === 'cam' && s.owner === 'origin');
    }, 20_000, 100);
    // Players on every edge; with a fan-out of 2 the third edge's relay may hang off another edge.
    await watch(edges[0]!, 2);
    await watch(edges[1]!, 1);
    await waitFor('two relays', async () => (await claims()).length === 2, 10_000, 100);
    await watch(edges[2]!, 3);
    await waitFor('three relays', async () => (await claims()).length === 3, 10_000, 100);
    browser = await launchBrowser({ viewport: { width: 1440, height: 1080 } });
    page = await browser.newPage();
  });

  after(async () => {
    for (const v of viewers) v.close();
    await browser?.close();
    await ff?.stop();
    await Promise.all(nodes.map((n) => n.stop(5000)));
    for (const n of nodes) n.cleanup();
    await nats?.stop();
  });

  test('the page lists the mesh: four nodes, the stream with its owner and viewers per node, and the relay tree', async () => {
    const response = await page.goto(`${origin.adminUrl}/`);
    assert.equal(response?.status(), 200);
    await page.waitForSelector('#conn[data-state="live"]', { timeout: 10_000 });
    assert.equal(await page.textContent('#self-id'), 'origin');
    for (const id of ['origin', 'edge-1', 'edge-2', 'edge-3']) {
      await page.waitForSelector(`#nodes-table tbody tr[data-node="${id}"]`, { timeout: 10_000 });
    }
    assert.match((await page.textContent('#nodes-table tbody tr[data-node="origin"]')) ?? '', /this node/);

    const row = await page.waitForSelector('#streams-table tbody tr[data-key="live/cam"]', { timeout: 10_000 });
    const text = (await row.textContent()) ?? '';
    assert.match(text, /live\/cam/);
    assert.match(text, /origin/);
    assert.match(text, /H\.264 640×360/);
    // Viewers per node reach the page (6 players on the edges, none on the origin: relays are not viewers).
    await waitFor('per-node viewers on the page', async () => {
      const chips = await page.$$eval('#streams-table tbody tr[data-key="live/cam"] .chip', (els) => els.map((e) => e.textContent));
      return ['edge-1 · 2', 'edge-2 · 1', 'edge-3 · 3'].every((c) => chips.includes(c)) ? chips : undefined;
    }, 10_000, 200);

    // The relay tree drawn in the page is the one the mesh reports. Live updates may redraw the row
    // (detaching the handle above), so click by selector: Playwright re-finds it.
    await page.click('#streams-table tbody tr[data-key="live/cam"]');
    const expected = await claims();
    const drawn = await waitFor('tree with all nodes', async () => {
      const boxes = await page.$$eval('#tree svg g[data-node]', (els) => els.map((e) => [(e as unknown as Dataset).dataset.node, (e as unknown as Dataset).dataset.parent]));
      return boxes.length === 4 ? boxes : undefined;
    }, 10_000, 200);
    assert.deepEqual(drawn.find(([id]) => id === 'origin'), ['origin', '']);
    for (const c of expected) assert.ok(drawn.some(([id, parent]) => id === c.node && parent === c.parent), `${c.node} drawn under ${c.parent}`);
    assert.equal(await page.$$eval('#tree svg path.edge.flow', (els) => els.length), 3);
  });

  test('plays the stream over HTTP-FLV with mpegts.js from this node, then from an edge', async () => {
    await page.click('#streams-table button[data-play="flv"][data-key="live/cam"]');
    await assertPlays(page, 'HTTP-FLV from origin');
    assert.equal(await page.textContent('#ps-status'), 'playing');
    assert.equal(await page.evaluate(() => typeof (globalThis as unknown as PageWindow).mpegts), 'object', 'mpegts.js loaded from the node');

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });

    // Same player, another node: edge-3 serves it from its relay, and counts one more viewer.
    await page.selectOption('#play-node', { label: 'edge-3' });
    await assertPlays(page, 'HTTP-FLV from edge-3');
    await waitFor('edge-3 counts the page as a viewer', async () => {
      const chips = await page.$$eval('#streams-table tbody tr[data-key="live/cam"] .chip', (els) => els.map((e) => e.textContent));
      return chips.includes('edge-3 · 4');
    }, 10_000, 200);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-edge.png'), fullPage: true });
    await page.selectOption('#play-node', { label: 'origin (this node)' });
  });

  test('plays the stream over HLS with hls.js', async () => {
    const probe = await waitFor('HLS playlist or a definite answer', async () => {
      const r = await fetch(`${origin.httpUrl}/live/cam/index.m3u8`, { signal: AbortSignal.timeout(10_000) });
      return r.status === 200 || r.status === 404 ? r.status : undefined;
    }, 15_000, 250);
    assert.equal(probe, 200, 'the node serves HLS');
    await page.click('#streams-table button[data-play="hls"][data-key="live/cam"]');
    await assertPlays(page, 'HLS from origin');
    assert.equal(await page.evaluate(() => typeof (globalThis as unknown as PageWindow).Hls), 'function', 'hls.js loaded from the node');
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-hls.png'), fullPage: true });
  });

  test('no script errors and no CSP violations in the page', () => {
    const bad = (browser?.errors ?? []).filter((e) => /^page:|Content Security Policy|Refused to/i.test(e));
    assert.deepEqual(bad, []);
  });
});
