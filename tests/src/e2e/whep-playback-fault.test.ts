/**
 * WHEP when the playback node dies: Chromium plays through the dashboard's player over WebRTC
 * from one playback node of a mesh (real nats-server, node processes, ffmpeg). That node is
 * SIGKILLed. The player sees its peer connection drop, asks the route API for another node, and
 * plays again from it. The gap between the last frame from the dead node and the first from the
 * new one is measured, and currentTime must grow again.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { NodeProcess } from '../harness/node-process.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { freeUdpPort, waitFor } from '../harness/ports.ts';
import { browserUnavailable, launchBrowser, type HeadlessBrowser } from '../harness/browser.ts';

const MESH = { mesh_secret: 'whep-playback-fault', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 2000, relay_stall_ms: 1500 };

/** Collects the wall time of every frame the page's <video> shows, whatever its source (the player replaces srcObject when it reroutes). */
const WATCH = `(() => {
  const v = document.querySelector('video');
  window.__shown = [];
  let handle = 0;
  const arm = () => { handle = v.requestVideoFrameCallback(() => { window.__shown.push(Date.now()); arm(); }); };
  arm();
  // A callback armed on the old source may never fire on the new one: re-arm when frames stop.
  setInterval(() => { const last = window.__shown.at(-1) ?? 0; if (Date.now() - last > 400) { v.cancelVideoFrameCallback(handle); arm(); } }, 400);
})()`;

interface PlayerState {
  t: number;
  status: string;
  title: string;
}

describe('WHEP when the playback node dies', { skip: browserUnavailable(), timeout: 120_000 }, () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  let pub: FfmpegPublisher | undefined;
  let browser: HeadlessBrowser;
  let page: Page;

  before(async () => {
    nats = await startNatsServer();
    for (const [id, roles] of [['K-in', 'ingest'], ['K-p1', 'playback'], ['K-p2', 'playback']] as const) {
      nodes.push(await NodeProcess.start({ nodeId: id, args: ['--roles', roles], config: { mesh: { ...MESH, nats: [nats.url] }, webrtc: { udp_port: await freeUdpPort() } } }));
    }
    browser = await launchBrowser();
    page = await browser.newPage();
  });

  after(async () => {
    await pub?.stop();
    await browser?.close();
    for (const n of nodes) await (n.exitCode === undefined ? n.stop() : undefined);
    await nats?.stop();
  });

  test('the playback node is SIGKILLed: the page\'s player asks the route API again and plays from another node', async () => {
    const [ingest, p1, p2] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    await waitFor('the mesh sees 3 nodes', async () => (await ingest.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 3 || undefined, 15_000, 100);
    pub = new FfmpegPublisher(`${ingest.rtmpUrl}/live/pk`);
    await waitFor('live on the ingest node', async () => (await ingest.api<{ streams: Array<{ stream: string; live: boolean }> }>('/api/v1/streams')).streams.find((s) => s.stream === 'pk' && s.live), 15_000);

    // The route API names a playback node's WHEP URL.
    const route = (await (await fetch(`${ingest.httpUrl}/api/v1/route/live/pk`)).json()) as { node: string; whep: string; next: Array<{ node: string; whep: string }> };
    const whepOf = new Map([[p1.nodeId, `${p1.httpUrl}/live/pk/whep`], [p2.nodeId, `${p2.httpUrl}/live/pk/whep`]]);
    assert.equal(route.whep, whepOf.get(route.node), `route answer ${JSON.stringify(route)}`);

    // The dashboard (on the ingest node's admin listener) plays from playback node 1 over WebRTC.
    await page.goto(`${ingest.adminUrl}/`);
    await waitFor('the dashboard lists both playback nodes', async () => {
      const values = (await page.evaluate(`[...document.querySelectorAll('#play-node option')].map((o) => o.value)`)) as string[];
      return (values.includes(p1.httpUrl) && values.includes(p2.httpUrl)) || undefined;
    }, 20_000, 200);
    await page.selectOption('#play-node', p1.httpUrl);
    await page.waitForSelector('#streams-table button[data-play="whep"][data-key="live/pk"]', { timeout: 20_000 });
    await page.click('#streams-table button[data-play="whep"][data-key="live/pk"]');
    const state = (): Promise<PlayerState> =>
      page.evaluate(`(() => ({ t: document.querySelector('video').currentTime, status: document.getElementById('ps-status').textContent, title: document.getElementById('player-title').textContent }))()`) as Promise<PlayerState>;
    await waitFor('playing over WebRTC from playback node 1', async () => {
      const s = await state();
      if (/error|cannot|WHEP \d/i.test(s.status)) throw new Error(`player says: ${s.status}`);
      return s.t > 1 || undefined;
    }, 20_000, 200);
    assert.match((await state()).title, new RegExp(`WebRTC · from ${p1.nodeId}`));
    await page.evaluate(WATCH);
    const shown = async (): Promise<number[]> => (await page.evaluate('window.__shown')) as number[];
    await waitFor('frames counted', async () => (await shown()).length > 15 || undefined, 5000, 100);

    const killAt = Date.now();
    await p1.kill();
    const resumed = await waitFor('video from another node', async () => (await shown()).find((t) => t > killAt + 200), 40_000, 100);
    const beforeKill = (await shown()).filter((t) => t <= killAt);
    const gap = resumed - beforeKill[beforeKill.length - 1]!;
    const s0 = await state();
    await new Promise((r) => setTimeout(r, 2500));
    const s1 = await state();
    console.log(`# WHEP through the playback node's death: the player rerouted and showed a frame ${resumed - killAt} ms after the SIGKILL (${gap} ms without a new frame); ${s1.title}`);
    assert.match(s1.title, new RegExp(`from ${p2.nodeId} \\(rerouted\\)`), 'the player plays from the other playback node');
    assert.ok(s1.t > s0.t + 1.5, `currentTime grows again: ${s0.t} → ${s1.t}`);
    assert.ok(resumed - killAt < 15_000, `video back ${resumed - killAt} ms after the kill`);
  });
});
