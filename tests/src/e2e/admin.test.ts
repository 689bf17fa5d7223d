/**
 * The admin listener against real node processes: the public port serves media and no
 * admin API; the admin listener sends no CORS headers, refuses other origins and (without a
 * token) other host names, and with `admin.token` set refuses every API request without it —
 * a real ffmpeg publisher survives an unauthenticated kick and is kicked with the token.
 * `/readyz` turns 503 while the node drains and while a NATS node has lost its bus; `/metrics`
 * has the standard process metric names next to meshcast's own.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startSyntheticPublisher, type SyntheticPublisher } from '@meshcast/node/client';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { launchBrowser } from '../harness/browser.ts';

const TOKEN = 'admin-e2e-token-0123456789';

interface SessionsReply {
  sessions: Array<{ id: string; role: string; protocol: string; app?: string; stream?: string }>;
}
interface ReadyReply {
  node: string;
  ready: boolean;
  state: string;
  reason?: string;
  bus?: { kind: string; status: string };
}

/** A raw request, so the Host header can be anything (fetch sets it from the URL). */
function rawRequest(url: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function corsHeaders(h: Headers | http.IncomingHttpHeaders): string[] {
  const names = h instanceof Headers ? [...h.keys()] : Object.keys(h);
  return names.filter((n) => n.toLowerCase().startsWith('access-control-'));
}

async function ready(base: string): Promise<{ status: number; body: ReadyReply }> {
  const r = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(2000) });
  return { status: r.status, body: (await r.json()) as ReadyReply };
}

describe('admin listener with admin.token', () => {
  let node: NodeProcess;
  let ff: FfmpegPublisher | undefined;

  before(async () => {
    node = await NodeProcess.start({ adminToken: TOKEN });
  });

  after(async () => {
    await ff?.stop();
    await node?.stop(5000);
    node?.cleanup();
  });

  test('the public port serves no admin API, dashboard or metrics, and its preflight allows GET only', async () => {
    for (const path of ['/api/v1/sessions', '/api/v1/streams', '/api/v1/node', '/api/v1/mesh/nodes', '/metrics', '/', '/api/v1/dashboard/snapshot']) {
      assert.equal((await fetch(`${node.httpUrl}${path}`)).status, 404, `${path} not on the public port`);
    }
    assert.equal((await fetch(`${node.httpUrl}/api/v1/sessions/x`, { method: 'DELETE' })).status, 404);
    assert.equal((await fetch(`${node.httpUrl}/api/v1/drain`, { method: 'POST' })).status, 404);
    const pre = await fetch(`${node.httpUrl}/api/v1/sessions/x`, { method: 'OPTIONS', headers: { Origin: 'http://evil.example', 'Access-Control-Request-Method': 'DELETE' } });
    assert.equal(pre.headers.get('access-control-allow-methods'), 'GET, OPTIONS');
    // Probes answer anyone there.
    assert.equal((await fetch(`${node.httpUrl}/healthz`)).status, 200);
    const r = await ready(node.httpUrl);
    assert.equal(r.status, 200);
    assert.deepEqual({ ready: r.body.ready, state: r.body.state }, { ready: true, state: 'running' });
  });

  test('a cross-origin preflight to the admin listener gets no Access-Control-Allow-* headers and a refusal', async () => {
    const pre = await fetch(`${node.adminUrl}/api/v1/sessions/x`, { method: 'OPTIONS', headers: { Origin: 'http://evil.example', 'Access-Control-Request-Method': 'DELETE' } });
    assert.equal(pre.status, 403);
    assert.deepEqual(corsHeaders(pre.headers), []);
    assert.match(((await pre.json()) as { error: string }).error, /cross-origin request refused/);
    // Even with the token: a foreign origin is refused, and the answer is not readable cross-origin.
    const withToken = await node.adminFetch('/api/v1/sessions', { headers: { Origin: 'http://evil.example' } });
    assert.equal(withToken.status, 403);
    assert.deepEqual(corsHeaders(withToken.headers), []);
    // The listener's own origin is fine.
    const own = await node.adminFetch('/api/v1/sessions', { headers: { Origin: node.adminUrl } });
    assert.equal(own.status, 200);
    assert.deepEqual(corsHeaders(own.headers), []);
  });

  test('kick without the token is refused (401) and the ffmpeg publisher survives; with the token it is kicked', async () => {
    ff = new FfmpegPublisher(`${node.rtmpUrl}/live/admin`);
    const publisher = await waitFor('ffmpeg publishing', async () => (await node.api<SessionsReply>('/api/v1/sessions')).sessions.find((s) => s.role === 'publisher' && s.stream === 'admin'), 15_000, 100);

    const anonymous = await fetch(`${node.adminUrl}/api/v1/sessions/${publisher.id}`, { method: 'DELETE' });
    assert.equal(anonymous.status, 401);
    assert.match(((await anonymous.json()) as { error: string }).error, /admin token required/);
    const wrong = await fetch(`${node.adminUrl}/api/v1/sessions/${publisher.id}`, { method: 'DELETE', headers: { Authorization: `Bearer ${TOKEN}x` } });
    assert.equal(wrong.status, 401);
    // The query-string token is for GETs (EventSource) only.
    const viaQuery = await fetch(`${node.adminUrl}/api/v1/sessions/${publisher.id}?access_token=${TOKEN}`, { method: 'DELETE' });
    assert.equal(viaQuery.status, 401);
    assert.equal((await fetch(`${node.adminUrl}/api/v1/sessions`)).status, 401, 'the session list needs the token too');
    assert.equal((await fetch(`${node.adminUrl}/api/v1/drain`, { method: 'POST' })).status, 401);

    await sleep(500);
    assert.equal(ff.exitCode, undefined, `ffmpeg still publishing: ${ff.stderr}`);
    const still = (await node.api<SessionsReply>('/api/v1/sessions')).sessions.find((s) => s.id === publisher.id);
    assert.ok(still, 'the publisher session survived the refused kicks');

    const kicked = await node.adminFetch(`/api/v1/sessions/${publisher.id}`, { method: 'DELETE' });
    assert.equal(kicked.status, 200);
    assert.deepEqual(await kicked.json(), { kicked: publisher.id });
    await waitFor('publisher session gone', async () => !(await node.api<SessionsReply>('/api/v1/sessions')).sessions.some((s) => s.id === publisher.id), 5000, 100);
    await waitFor('ffmpeg exits after the kick', () => ff!.exitCode !== undefined, 10_000, 100);
  });

  test('the dashboard page and assets load without the token; its data needs it (Bearer, or access_token on a GET)', async () => {
    const page = await fetch(`${node.adminUrl}/`);
    assert.equal(page.status, 200);
    assert.deepEqual(corsHeaders(page.headers), []);
    assert.equal((await fetch(`${node.adminUrl}/dashboard/app.js`)).status, 200);
    assert.equal((await fetch(`${node.adminUrl}/api/v1/dashboard/snapshot`)).status, 401);
    assert.equal((await node.adminFetch('/api/v1/dashboard/snapshot')).status, 200);
    const events = await fetch(`${node.adminUrl}/api/v1/dashboard/events?access_token=${TOKEN}`, { signal: AbortSignal.timeout(5000) });
    assert.equal(events.status, 200);
    assert.match(events.headers.get('content-type') ?? '', /^text\/event-stream/);
    assert.deepEqual(corsHeaders(events.headers), []);
    await events.body?.cancel();
    assert.equal((await fetch(`${node.adminUrl}/api/v1/dashboard/events`)).status, 401);
  });

  test('in Chromium, the dashboard opened as /#token=… goes live and plays from the public port; without the token it gets no data', async () => {
    ff = new FfmpegPublisher(`${node.rtmpUrl}/live/page`);
    await waitFor('ffmpeg publishing', async () => (await node.api<SessionsReply>('/api/v1/sessions')).sessions.some((s) => s.role === 'publisher' && s.stream === 'page'), 15_000, 100);
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      await page.goto(`${node.adminUrl}/#token=${encodeURIComponent(TOKEN)}`);
      await page.waitForSelector('#conn[data-state="live"]', { timeout: 10_000 });
      await page.click('#streams-table button[data-play="flv"][data-key="live/page"]', { timeout: 10_000 });
      await waitFor('video playing from the public port', async () => page.evaluate(() => {
        const v = (globalThis as unknown as { document: { querySelector(s: string): { currentTime: number } | null } }).document.querySelector('video');
        return v !== null && v.currentTime > 0.5;
      }), 15_000, 200);
      const viewer = await waitFor('the page is an http-flv viewer', async () => (await node.api<SessionsReply>('/api/v1/sessions')).sessions.find((s) => s.role === 'viewer' && s.protocol === 'http-flv'), 5000, 100);
      assert.equal(viewer.stream, 'page');
      assert.deepEqual(browser.errors, []);

      const anonymous = await browser.newPage();
      await anonymous.goto(`${node.adminUrl}/`);
      await anonymous.waitForFunction(() => (globalThis as unknown as { document: { getElementById(id: string): { textContent: string | null } | null } }).document.getElementById('conn-text')?.textContent?.startsWith('admin token required'), undefined, { timeout: 10_000 });
      assert.notEqual(await anonymous.getAttribute('#conn', 'data-state'), 'live', 'no snapshot without the token');
    } finally {
      await browser.close();
      await ff.stop();
    }
  });

  test('/metrics: standard process_* and nodejs_* names, meshcast_* for meshcast\'s own', async () => {
    assert.equal((await fetch(`${node.adminUrl}/metrics`)).status, 401);
    const r = await node.adminFetch('/metrics');
    assert.equal(r.status, 200);
    const text = await r.text();
    assert.match(text, /^process_cpu_user_seconds_total \d/m);
    assert.match(text, /^nodejs_eventloop_lag_seconds \d/m);
    assert.match(text, /^meshcast_connections_limit\{node="[^"]+"\} \d/m);
    assert.doesNotMatch(text, /^meshcast_(process|nodejs)_/m);
  });
});

describe('admin listener without a token (loopback)', () => {
  let node: NodeProcess;
  let pub: SyntheticPublisher | undefined;

  before(async () => {
    node = await NodeProcess.start();
  });

  after(async () => {
    pub?.stop();
    await node?.stop(5000);
    node?.cleanup();
  });

  test('answers requests addressed to an IP or localhost; refuses other host names (DNS rebinding) and other origins', async () => {
    const url = `${node.adminUrl}/api/v1/sessions`;
    assert.equal((await fetch(url)).status, 200);
    const local = await rawRequest(url, { headers: { Host: `localhost:${node.adminPort}` } });
    assert.equal(local.status, 200);
    const rebound = await rawRequest(url, { headers: { Host: `evil.example:${node.adminPort}` } });
    assert.equal(rebound.status, 403);
    assert.match((JSON.parse(rebound.body) as { error: string }).error, /without admin.token/);
    const rebindKick = await rawRequest(`${node.adminUrl}/api/v1/sessions/x`, { method: 'DELETE', headers: { Host: `evil.example:${node.adminPort}`, Origin: `http://evil.example:${node.adminPort}` } });
    assert.equal(rebindKick.status, 403);
    const foreign = await rawRequest(`${node.adminUrl}/api/v1/drain`, { method: 'POST', headers: { Origin: 'http://evil.example' } });
    assert.equal(foreign.status, 403);
    assert.deepEqual(corsHeaders(foreign.headers), []);
    await sleep(300);
    assert.equal(node.exitCode, undefined, 'the refused drain did nothing');
    assert.equal((await ready(node.adminUrl)).status, 200);
  });

  test('POST /api/v1/drain drains the node as SIGTERM does: its publisher is closed, it logs why, it exits 0', async () => {
    pub = await startSyntheticPublisher(`${node.rtmpUrl}/live/drained`);
    const closed = new Promise<void>((r) => pub!.client.once('close', () => r()));
    const before = await ready(node.adminUrl);
    assert.equal(before.status, 200);
    const r = await fetch(`${node.adminUrl}/api/v1/drain`, { method: 'POST' });
    assert.equal(r.status, 202);
    assert.deepEqual(await r.json(), { node: node.nodeId, draining: true, state: 'draining' });
    await closed;
    const code = await waitFor('node exit', () => (node.exitCode !== undefined ? { code: node.exitCode } : undefined), 15_000, 50);
    assert.equal(code.code, 0);
    assert.match(node.logs(), /drain requested through the admin API/);
  });
});

describe('/readyz of a NATS mesh node', () => {
  let nats: NatsServer;
  let node: NodeProcess;
  let pub: SyntheticPublisher | undefined;

  before(async () => {
    nats = await startNatsServer();
    node = await NodeProcess.start({ config: { mesh: { nats: [nats.url], mesh_secret: 'admin-e2e-secret', heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500 } } });
  });

  after(async () => {
    pub?.stop();
    try {
      process.kill(nats.pid, 'SIGCONT');
    } catch {
      // not paused, or gone
    }
    await node?.stop(5000);
    node?.cleanup();
    await nats?.stop();
  });

  test('503 while the bus is down (NATS killed), on both listeners; 200 again once NATS is back', async () => {
    const up = await ready(node.adminUrl);
    assert.equal(up.status, 200);
    assert.deepEqual(up.body.bus, { kind: 'nats', status: 'connected' });
    const { port, dir } = nats;
    await nats.kill();
    for (const base of [node.adminUrl, node.httpUrl]) {
      const down = await waitFor(`${base}/readyz 503`, async () => {
        const r = await ready(base);
        return r.status === 503 ? r.body : undefined;
      }, 15_000, 100);
      assert.equal(down.ready, false);
      assert.match(down.reason ?? '', /mesh bus \(NATS\) is (disconnected|reconnecting)/);
    }
    assert.equal((await fetch(`${node.httpUrl}/healthz`)).status, 200, '/healthz stays liveness');
    nats = await startNatsServer({ port, dir });
    await waitFor('/readyz 200 again', async () => (await ready(node.httpUrl)).status === 200, 30_000, 200);
  });

  test('503 (draining) while a drain waits on a paused NATS, then exit 0 once it answers again', async () => {
    pub = await startSyntheticPublisher(`${node.rtmpUrl}/live/leased`);
    await waitFor('lease held', async () => (await node.api<{ leases: number }>('/api/v1/node')).leases === 1, 10_000, 100);
    // A paused server holds the drain's lease release and goodbye: the node stays up, draining.
    process.kill(nats.pid, 'SIGSTOP');
    const r = await node.adminFetch('/api/v1/drain', { method: 'POST' });
    assert.equal(r.status, 202);
    for (const base of [node.adminUrl, node.httpUrl]) {
      const draining = await waitFor(`${base}/readyz draining`, async () => {
        const x = await ready(base);
        return x.status === 503 ? x.body : undefined;
      }, 5000, 50);
      assert.deepEqual({ ready: draining.ready, state: draining.state, reason: draining.reason }, { ready: false, state: 'draining', reason: 'draining' });
    }
    process.kill(nats.pid, 'SIGCONT');
    const code = await waitFor('node exit', () => (node.exitCode !== undefined ? { code: node.exitCode } : undefined), 15_000, 50);
    assert.equal(code.code, 0);
  });
});
