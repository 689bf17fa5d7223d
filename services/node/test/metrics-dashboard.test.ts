/**
 * The dashboard's server side on in-process nodes: the page and its assets, and the mesh
 * snapshot it renders (nodes, owner, relay tree, viewers per node), once and as server-sent events.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import type { DashboardSnapshot } from '../src/dashboard/snapshot.ts';
import { MESH_CREDENTIAL_HEADER, encodeCredentialHeader } from '../src/dashboard/peer-credential.ts';
import { signCredential } from '../src/mesh/mesh-credential.ts';
import { inProcessNode, recordingViewer, rtmpUrl, syntheticPublisher, until } from './support.ts';

/** The admin listener: the dashboard's home. */
const base = (n: MediaNode): string => n.adminUrl;
const publicBase = (n: MediaNode): string => `http://${n.config.public_host}:${n.httpPort}`;

async function snapshot(n: MediaNode): Promise<DashboardSnapshot> {
  const r = await fetch(`${base(n)}/api/v1/dashboard/snapshot`);
  assert.equal(r.status, 200);
  return (await r.json()) as DashboardSnapshot;
}

/** Reads server-sent events until `count` `snapshot` events arrived, then hangs up. */
async function readEvents(url: string, count: number, timeoutMs = 6000): Promise<{ contentType: string; snapshots: DashboardSnapshot[]; at: number[] }> {
  const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const contentType = r.headers.get('content-type') ?? '';
  const reader = (r.body as ReadableStream<Uint8Array>).getReader();
  const snapshots: DashboardSnapshot[] = [];
  const at: number[] = [];
  const decoder = new TextDecoder();
  let buf = '';
  try {
    while (snapshots.length < count) {
      const { done, value } = await reader.read();
      if (done) throw new Error('event stream ended early');
      buf += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const lines = buf.slice(0, end).split('\n');
        buf = buf.slice(end + 2);
        if (!lines.includes('event: snapshot')) continue;
        const data = lines.filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
        snapshots.push(JSON.parse(data) as DashboardSnapshot);
        at.push(Date.now());
      }
    }
    return { contentType, snapshots, at };
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

describe('dashboard (server side)', () => {
  const network = new MemoryBusNetwork();
  let a: MediaNode;
  let b: MediaNode;

  before(async () => {
    a = await inProcessNode(network, 'dash-a');
    b = await inProcessNode(network, 'dash-b');
  });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  test('the page, its assets and the players are served by the node, with a strict CSP', async () => {
    const page = await fetch(`${base(a)}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    const csp = page.headers.get('content-security-policy') ?? '';
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    const html = await page.text();
    assert.doesNotMatch(html, /<script>|\son[a-z]+=/i, 'no inline scripts or event handlers');
    for (const m of html.matchAll(/(?:src|href)="(\/dashboard\/[^"]+)"/g)) {
      const r = await fetch(`${base(a)}${m[1]}`);
      assert.equal(r.status, 200, `${m[1]} served`);
    }
    for (const [path, global] of [['/dashboard/vendor/mpegts.js', 'mpegts'], ['/dashboard/vendor/hls.js', 'Hls']] as const) {
      const r = await fetch(`${base(a)}${path}`);
      assert.equal(r.status, 200, `${path} served`);
      assert.match(r.headers.get('content-type') ?? '', /javascript/);
      assert.ok((await r.text()).includes(global));
    }
    for (const file of ['app.js', 'player.js', 'relay-tree.js', 'dom.js', 'style.css']) {
      assert.equal((await fetch(`${base(a)}/dashboard/${file}`)).status, 200, file);
    }
    // Only the page's own files are static routes.
    assert.equal((await fetch(`${base(a)}/dashboard/readme.txt`)).status, 404);
    // The public listener serves no dashboard: its /dashboard/… paths are media paths.
    for (const path of ['/', '/dashboard/app.js', '/api/v1/dashboard/snapshot']) {
      assert.equal((await fetch(`${publicBase(a)}${path}`)).status, 404, `${path} not on the public listener`);
    }
  });

  test('snapshot of an idle mesh: both nodes, no streams', async () => {
    await until('both nodes alive in the table', async () => (await snapshot(a)).nodes.filter((n) => n.state === 'alive').length === 2);
    const s = await snapshot(a);
    assert.equal(s.self, 'dash-a');
    assert.equal(s.mesh, true);
    assert.deepEqual(s.bus, { kind: 'embedded', status: 'connected' });
    assert.deepEqual(s.nodes.map((n) => [n.id, n.self]).sort(), [['dash-a', true], ['dash-b', false]]);
    assert.ok(s.nodes.every((n) => n.capacity > 0 && n.http?.startsWith('http://') && n.roles.includes('playback')));
    assert.deepEqual(s.streams, []);
  });

  test('a stream published on A and watched on B: owner, relay tree, and viewers per node (relays are not viewers)', async () => {
    const pub = await syntheticPublisher(rtmpUrl(a, 'live/dash'));
    try {
      await until('owner announced', async () => (await snapshot(b)).streams.some((s) => s.owner === 'dash-a'));
      const viewer = await recordingViewer(rtmpUrl(b, 'live/dash'));
      try {
        await until('relayed video', () => viewer.video().length > 5);
        const s = await until('relay claim listed', async () => {
          const snap = await snapshot(a);
          return snap.streams[0]?.relays.length === 1 ? snap : undefined;
        });
        assert.equal(s.streams.length, 1);
        const st = s.streams[0]!;
        assert.equal(st.key, 'live/dash');
        assert.equal(st.owner, 'dash-a');
        assert.ok(st.startedAt && st.startedAt <= Date.now());
        assert.deepEqual(st.relays.map((r) => [r.node, r.parent]), [['dash-b', 'dash-a']]);
        assert.equal(st.nodes['dash-a']?.source, 'rtmp');
        assert.equal(st.nodes['dash-a']?.viewers, 0, 'the relay pulling from A is not a viewer of A');
        assert.equal(st.nodes['dash-b']?.source, 'relay');
        assert.equal(st.nodes['dash-b']?.viewers, 1);
        assert.deepEqual(st.nodes['dash-b']?.protocols, { rtmp: 1 });
        assert.deepEqual(st.nodes['dash-a']?.protocols, {});
        assert.equal(st.viewers, 1);
        assert.deepEqual(st.video, { codec: 'H.264', width: 320, height: 240, fps: 30 });
        assert.equal(st.audio, 'AAC');
        assert.deepEqual(s.unreachable, []);
        // What each node tells its peers' dashboards about itself, on its public listener, to mesh members only.
        const anonymous = await fetch(`${publicBase(b)}/api/v1/dashboard/local`);
        assert.equal(anonymous.status, 401);
        const forged = await fetch(`${publicBase(b)}/api/v1/dashboard/local`, { headers: { [MESH_CREDENTIAL_HEADER]: encodeCredentialHeader(signCredential('not-the-secret', 'dash-a')) } });
        assert.equal(forged.status, 401);
        const headers = { [MESH_CREDENTIAL_HEADER]: encodeCredentialHeader(signCredential(a.config.mesh.mesh_secret, 'dash-a')) };
        const local = (await (await fetch(`${publicBase(b)}/api/v1/dashboard/local`, { headers })).json()) as { node: string; streams: Array<{ stream: string; viewers: number; protocols: Record<string, number> }> };
        assert.equal(local.node, 'dash-b');
        assert.deepEqual(local.streams.map((r) => [r.stream, r.viewers, r.protocols]), [['dash', 1, { rtmp: 1 }]]);
        // B sees the same mesh from its side.
        const fromB = await snapshot(b);
        assert.equal(fromB.self, 'dash-b');
        assert.equal(fromB.streams[0]?.nodes['dash-b']?.viewers, 1);
      } finally {
        viewer.client.close();
      }
    } finally {
      pub.stop();
    }
  });

  test('server-sent events push a snapshot about every second', async () => {
    const started = Date.now();
    const ev = await readEvents(`${base(a)}/api/v1/dashboard/events`, 3);
    assert.match(ev.contentType, /^text\/event-stream/);
    assert.equal(ev.snapshots.length, 3);
    assert.ok(ev.snapshots.every((s) => s.self === 'dash-a' && s.nodes.length >= 2));
    assert.ok(ev.at[0]! - started < 1500, 'first snapshot right away');
    const spacing = ev.at[2]! - ev.at[1]!;
    assert.ok(spacing > 600 && spacing < 2000, `about a second apart (${spacing} ms)`);
  });
});
