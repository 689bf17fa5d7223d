/**
 * meshctl against a real 3-node mesh (nats-server with JetStream, three `meshcast node`
 * processes started through the real CLI, publishers and viewers with the project's RTMP
 * client), plus its pure pieces. Most commands run in this process through runMeshctl(); the
 * bin is run as a child process where stdin/exit codes matter.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectNatsBus, type Bus } from '@meshcast/mesh';
import { RtmpClient, startSyntheticPublisher, type SyntheticPublisher } from '@meshcast/node/client';
import { encodeAdmissionRequest, encodeHeartbeat, encodeMeshEvent, type Heartbeat } from '@meshcast/proto';
import { runMeshctl } from '../src/meshctl/cli.ts';
import { decodeControlMessage, encodeControlMessage } from '../src/meshctl/control-messages.ts';
import { decodePayload, readInput } from '../src/meshctl/decode.ts';
import { drawTree, duration, table } from '../src/meshctl/format.ts';
import { MeshcastNode, NatsServer, REPO, freePort, waitFor } from './support/real-mesh.ts';

const MESHCTL_BIN = join(REPO, 'tools/bin/meshctl.mjs');

interface Run {
  code: number;
  out: string;
  err: string;
}

/** The nodes' mesh secret in the live-mesh tests: meshctl verifies what it reads and signs what it asks with it. */
const MESH_SECRET = 's';

async function ctl(args: string[], stdin = Buffer.alloc(0), signal?: AbortSignal, env: NodeJS.ProcessEnv = { MESHCAST_MESH_SECRET: MESH_SECRET }): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runMeshctl(args, {
    out: (t) => out.push(t),
    err: (t) => err.push(t),
    readStdin: async () => stdin,
    env,
    ...(signal ? { signal } : {}),
  });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

function runBin(args: string[], stdin?: Buffer, env: NodeJS.ProcessEnv = {}): Promise<Run & { ms: number }> {
  const t0 = Date.now();
  return new Promise((res, rej) => {
    const p = spawn(process.execPath, [MESHCTL_BIN, ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', rej);
    p.on('exit', (code) => res({ code: code ?? -1, out, err, ms: Date.now() - t0 }));
    p.stdin.end(stdin ?? Buffer.alloc(0));
  });
}

describe('meshctl pieces', () => {
  it('aligns tables, draws trees, formats durations', () => {
    assert.equal(table(['A', 'NUM'], [['x', '1'], ['long', '100']], ['l', 'r']), 'A     NUM\nx       1\nlong  100');
    assert.equal(drawTree({ label: 'o', children: [{ label: 'a', children: [{ label: 'c', children: [] }] }, { label: 'b', children: [] }] }), 'o\n├── a\n│   └── c\n└── b');
    assert.equal(duration(950), '0.9s');
    assert.equal(duration(75_000), '1m15s');
  });

  it('round-trips control messages and rejects bad ones', () => {
    const m = { op: 'kick', session: 'r123', from: 'meshctl', sentAt: 5 } as const;
    assert.deepEqual(decodeControlMessage(encodeControlMessage(m)), m);
    const s = decodeControlMessage(
      encodeControlMessage({ op: 'statsResult', node: 'B', state: 'running', sessions: 2, viewers: 1, publishers: 0, relayPulls: 1, streams: [{ app: 'live', stream: 'x', live: true, publisher: 'relay', viewers: 1, relayPulls: 1 }], streamsTotal: 1, rss: 1, uptimeMs: 2, sentAt: 3 }),
    );
    assert.ok(!(s instanceof Error) && s.op === 'statsResult' && s.streams[0]!.viewers === 1);
    // A node's part of who publishes: carried whole; a malformed one makes the whole answer an error.
    const publishing = { state: 'standby', epoch: null, primary: { node: 'A', since: 1, live: true }, standby: { node: 'B', since: 2, session: 'r9' }, failovers: [{ at: 3, from: 'A', to: 'B', epoch: 7, reason: 'primary gone' }] };
    const stat = (p: unknown) => ({ op: 'statsResult', node: 'B', state: 'running', sessions: 1, viewers: 0, publishers: 1, relayPulls: 0, streams: [{ app: 'live', stream: 'x', live: false, publisher: 'rtmp', viewers: 0, relayPulls: 0, publishing: p }], streamsTotal: 1, rss: 1, uptimeMs: 2, sentAt: 3 }) as never;
    const withP = decodeControlMessage(encodeControlMessage(stat(publishing)));
    assert.ok(!(withP instanceof Error) && withP.op === 'statsResult');
    assert.deepEqual(withP.streams[0]!.publishing, publishing);
    assert.match(String(decodeControlMessage(encodeControlMessage(stat({ ...publishing, failovers: [{ at: 1 }] })))), /publishing of live\/x/);
    assert.ok(decodeControlMessage(encodeControlMessage({ op: 'kick', sentAt: 1 } as never)) instanceof Error);
    assert.ok(decodeControlMessage(Buffer.from([0xc1])) instanceof Error);
  });

  it('decodes every schema by trying the decoders, or by subject', () => {
    const hb: Heartbeat = {
      node: 'edge-1', roles: ['playback'], addresses: { rtmp: 'rtmp://127.0.0.1:1935', http: 'http://127.0.0.1:8080' }, startedAt: 1, capacity: 10,
      viewers: 2, publishers: 0, egressBps: 0, ingressBps: 0, cpu: 0.1, streamsOwned: 0, relaysHeld: 1, draining: false, placementsSinceLastHb: 0, seq: 7, sentAt: 2,
    };
    assert.deepEqual(decodePayload(encodeHeartbeat(hb)), { schema: 'heartbeat', value: hb });
    const ev = decodePayload(encodeMeshEvent({ type: 'published', at: 1, app: 'live', stream: 's', node: 'A' }), 'meshcast.events.published');
    assert.ok(!(ev instanceof Error) && ev.schema === 'event');
    const adm = decodePayload(encodeAdmissionRequest({ requestId: 'q', kind: 'viewer', app: 'a', stream: 'b', from: 'A', sentAt: 1 }));
    assert.ok(!(adm instanceof Error) && adm.schema === 'admissionRequest');
    const ctl = decodePayload(encodeControlMessage({ op: 'drain', sentAt: 1 }));
    assert.ok(!(ctl instanceof Error) && ctl.schema === 'control');
    // A heartbeat on an events subject does not fit that subject's schema.
    assert.ok(decodePayload(encodeHeartbeat(hb), 'meshcast.events.published') instanceof Error);
    assert.equal((readInput(Buffer.from('0a ff\n'), 'hex') as Buffer).toString('hex'), '0aff');
  });

  it('prints usage, and refuses unknown commands and bad arguments with exit 2', async () => {
    assert.equal((await ctl(['help'])).code, 0);
    assert.match((await ctl(['--help'])).out, /commands[\s\S]*drain <node>/);
    assert.equal((await ctl(['frobnicate'])).code, 2);
    assert.equal((await ctl(['tree'])).code, 2);
    assert.equal((await ctl(['nodes', '--bogus'])).code, 2);
  });

  it('fails clearly and fast when NATS is unreachable', async () => {
    const port = await freePort('127.0.0.1');
    const r = await runBin(['--nats', `nats://127.0.0.1:${port}`, 'nodes'], undefined, { MESHCAST_MESH_SECRET: MESH_SECRET });
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot reach NATS at nats:\/\/127\.0\.0\.1:\d+.*\n.*--nats/);
    assert.ok(r.ms < 5000, `took ${r.ms} ms`);
  });
});

describe('meshctl against a 3-node mesh', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let a: MeshcastNode;
  let b: MeshcastNode;
  let c: MeshcastNode;
  let bus: Bus;
  let pub: SyntheticPublisher | undefined;
  let viewer: RtmpClient | undefined;
  const base = (): string[] => ['--nats', nats.url, '--wait', '1200'];
  const TOKEN_SECRET = 'meshctl-test-secret';

  before(async () => {
    nats = await NatsServer.start();
    const mesh = { nats: [nats.url], mesh_secret: MESH_SECRET, heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 2500, lease_ms: 4000, renew_ms: 1000, relay_linger_ms: 1000 };
    const auth = { token_secret: TOKEN_SECRET, apps: { secure: { publish: { tokens: true }, play: { public: true } } } };
    [a, b, c] = await Promise.all([
      MeshcastNode.start({ id: 'A', host: '127.0.0.161', roles: 'ingest', config: { mesh, auth } }),
      MeshcastNode.start({ id: 'B', host: '127.0.0.162', roles: 'playback', config: { mesh } }),
      MeshcastNode.start({ id: 'C', host: '127.0.0.163', roles: 'playback', config: { mesh } }),
    ]);
    await waitFor('mesh of 3', async () => (await b.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length === 3, 15_000, 100);
    bus = await connectNatsBus({ servers: nats.url, name: 'meshctl-test' });
  });

  after(async () => {
    viewer?.close();
    pub?.stop();
    await bus?.close();
    await Promise.all([a, b, c].map((n) => n?.kill()));
    await nats?.stop();
  });

  it('nodes: the live table, as text and JSON', async () => {
    const j = await ctl([...base(), 'nodes', '--json']);
    assert.equal(j.code, 0, j.err);
    const nodes = (JSON.parse(j.out) as { nodes: Array<{ id: string; roles: string[]; state: string; capacity: number }> }).nodes;
    assert.deepEqual(nodes.map((n) => `${n.id}:${n.roles.join()}:${n.state}`), ['A:ingest:alive', 'B:playback:alive', 'C:playback:alive']);
    const t = await ctl([...base(), 'nodes']);
    assert.match(t.out, /^NODE\s+ROLES\s+STATE\s+VIEWERS\s+EGRESS Mbps\s+CPU\s+OWNED\s+RELAYS\s+DRAINING/);
    assert.match(t.out, /\nB\s+playback\s+alive\s+0\/\d+/);
    assert.match(t.out, /3 nodes, 0 viewers/);
  });

  it('streams names the owner; tree shows the relay once a viewer joins', async () => {
    pub = await startSyntheticPublisher(`${a.rtmp}/live/show`);
    const owner = await waitFor('stream listed', async () => {
      const r = await ctl([...base(), 'streams', '--json']);
      return (JSON.parse(r.out) as { streams: Array<{ app: string; stream: string; owner: string; epoch: number; revision: number }> }).streams.find((s) => s.stream === 'show');
    }, 10_000, 200);
    assert.equal(owner.owner, 'A');
    assert.equal(owner.epoch, 1);
    assert.ok(owner.revision > 0);
    let frames = 0;
    viewer = await RtmpClient.openPlayer(`${b.rtmp}/live/show`, { onFrame: () => frames++ });
    await waitFor('frames on B', () => frames > 10, 10_000);
    const tree = await waitFor('relay claim', async () => {
      const r = await ctl([...base(), 'tree', 'live/show', '--json']);
      const t = JSON.parse(r.out) as { root: { node: string; role: string; children: Array<{ node: string; viewers: number | null }> } };
      return t.root.children.length > 0 ? t : undefined;
    }, 10_000, 200);
    assert.equal(tree.root.node, 'A');
    assert.deepEqual(tree.root.children.map((x) => [x.node, x.viewers]), [['B', 1]]);
    const text = await ctl([...base(), 'tree', 'live/show']);
    assert.equal(text.code, 0);
    assert.match(text.out, /^live\/show {2}epoch 1/);
    assert.match(text.out, /\nA {2}\(owner, 0 viewers, 1 child\)\n└── B {2}\(relay, 1 viewer\)/);
    const s = await ctl([...base(), 'streams']);
    // OWNER EPOCH REV AGE PRIMARY STANDBY FAILOVERS RELAYS VIEWERS PER-NODE
    assert.match(s.out, /live\/show\s+A\s+1\s+\d+\s+\S+\s+A \(\d+s\)\s+-\s+0\s+1\s+1\s+B:1/);
    const j = JSON.parse((await ctl([...base(), 'streams', '--json'])).out) as { streams: Array<{ stream: string; publishing: { primary: { node: string; session?: string } | null; standby: unknown; failovers: unknown[] } }> };
    const pubShow = j.streams.find((x) => x.stream === 'show')?.publishing;
    assert.equal(pubShow?.primary?.node, 'A', 'the primary is the node the publisher is on');
    assert.ok(pubShow?.primary?.session, 'with its session id, from the node itself');
    assert.equal(pubShow?.standby, null);
    assert.deepEqual(pubShow?.failovers, []);
    assert.equal((await ctl([...base(), 'tree', 'live/nothing'])).code, 1);
  });

  it("route gives the same answer as a node's /api/v1/route", async () => {
    const mine = await ctl([...base(), 'route', 'live/routed', '--json']);
    assert.equal(mine.code, 0, mine.err);
    // The route API is on the public listener.
    const theirs = (await (await fetch(`${c.http}/api/v1/route/live/routed`)).json()) as { node: string; rtmp: string; flv: string; load: number; cap: number; next: Array<{ node: string }> };
    const m = JSON.parse(mine.out) as typeof theirs;
    assert.equal(m.node, theirs.node);
    assert.equal(m.rtmp, theirs.rtmp);
    assert.equal(m.flv, theirs.flv);
    assert.equal(m.cap, theirs.cap);
    assert.deepEqual(m.next.map((x) => x.node), theirs.next.map((x) => x.node));
    const text = await ctl([...base(), 'route', 'live/routed']);
    assert.match(text.out, new RegExp(`^live/routed → ${theirs.node}\\n {2}rtmp {2}${theirs.rtmp.replace(/[.]/g, '\\.')}`));
    assert.match(text.out, /#\s+NODE\s+LOAD\s+CAP\s+SCORE\s+ADMISSION\n1\s+\S+\s+\d+\s+\d+\s+[\d.]+\s+admitted/);
  });

  it('events: the log as JSON lines, and --follow until stopped', async () => {
    const r = await ctl([...base(), 'events', '--limit', '50', '--json']);
    const evs = r.out.split('\n').map((l) => JSON.parse(l) as { type: string; node?: string; stream?: string; seq: number });
    assert.ok(evs.some((e) => e.type === 'published' && e.stream === 'show' && e.node === 'A'));
    for (const n of ['A', 'B', 'C']) assert.ok(evs.some((e) => e.type === 'nodeJoined' && e.node === n), `nodeJoined ${n}`);
    assert.ok(evs.some((e) => e.type === 'relayStarted' && e.node === 'B'));
    const ac = new AbortController();
    const following = ctl([...base(), 'events', '--follow', '--limit', '1'], undefined, ac.signal);
    await new Promise((res) => setTimeout(res, 800)); // the follow consumer is being created
    const p2 = await startSyntheticPublisher(`${a.rtmp}/live/followed`);
    await new Promise((res) => setTimeout(res, 1000));
    p2.stop();
    ac.abort();
    const f = await following;
    assert.equal(f.code, 0);
    assert.match(f.out, /published\s+live\/followed on A/);
  });

  it('decode: a captured heartbeat and KV value, piped to the bin like nats sub --translate', async () => {
    const hb = await new Promise<Uint8Array>((res) => {
      const sub = bus.subscribe('meshcast.node.B.hb', (m) => {
        sub.unsubscribe();
        res(m.data);
      });
    });
    const r = await runBin(['decode'], Buffer.from(hb));
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as { schema: string; value: { node: string; roles: string[] } };
    assert.equal(j.schema, 'heartbeat');
    assert.equal(j.value.node, 'B');
    assert.deepEqual(j.value.roles, ['playback']);
    const kv = await bus.kv('meshcast-streams', { maxAgeMs: 4000 });
    const entry = await kv.get('live.show');
    assert.ok(entry);
    const o = await ctl(['decode', '--subject', '$KV.meshcast-streams.live.show', '--input', 'base64'], Buffer.from(Buffer.from(entry.value).toString('base64')));
    assert.equal(o.code, 0, o.err);
    assert.equal((JSON.parse(o.out) as { schema: string; value: { owner: string } }).value.owner, 'A');
    const bad = await runBin(['decode'], Buffer.from('not msgpack at all'));
    assert.equal(bad.code, 1);
    assert.match(bad.err, /meshctl decode: /);
  });

  it("stats: the viewer and publisher counts meshctl gets from each node match the node's own sessions", async () => {
    const r = await ctl([...base(), 'streams', '--json']);
    assert.equal(r.code, 0, r.err);
    const out = JSON.parse(r.out) as { streams: Array<{ stream: string; owner: string; viewers: Record<string, number> }>; statsFrom: string[] };
    assert.deepEqual(out.statsFrom, ['A', 'B', 'C'], 'every node answered the stats request');
    const show = out.streams.find((s) => s.stream === 'show');
    const sessionsOf = async (n: MeshcastNode): Promise<Array<{ id: string; role: string; stream?: string }>> => (await n.api<{ sessions: Array<{ id: string; role: string; stream?: string }> }>('/api/v1/sessions')).sessions;
    const bViewers = (await sessionsOf(b)).filter((s) => s.role === 'viewer').length;
    assert.equal(bViewers, 1, "B's own session list: the one RTMP viewer");
    assert.deepEqual(show?.viewers, { B: bViewers }, 'meshctl counts the same viewers, on the same node');
    assert.equal((await sessionsOf(a)).filter((s) => s.role === 'publisher').length, 1, "A's own session list: the publisher");
  });

  it('the mesh secret: without it one line naming the setting; with another secret meshctl hears nothing and is not obeyed', async () => {
    const none = await ctl([...base(), 'nodes'], undefined, undefined, {});
    assert.equal(none.code, 2);
    assert.equal(none.err.split('\n').length, 1, none.err);
    assert.match(none.err, /^meshctl: no mesh secret: set MESHCAST_MESH_SECRET \(the nodes' mesh\.mesh_secret\) or pass --mesh-secret-file FILE/);
    const dir = mkdtempSync(join(tmpdir(), 'meshctl-secret-'));
    const right = join(dir, 'right');
    const wrong = join(dir, 'wrong');
    writeFileSync(right, `${MESH_SECRET}\n`);
    writeFileSync(wrong, 'not the mesh secret\n');
    const viaFile = await ctl([...base(), '--mesh-secret-file', right, 'nodes', '--json'], undefined, undefined, {});
    assert.equal(viaFile.code, 0, viaFile.err);
    assert.equal((JSON.parse(viaFile.out) as { nodes: unknown[] }).nodes.length, 3);
    // Another secret: every heartbeat fails verification, and the nodes do not answer its requests.
    const forged = await ctl([...base(), '--mesh-secret-file', wrong, 'nodes', '--json'], undefined, undefined, {});
    assert.deepEqual((JSON.parse(forged.out) as { nodes: unknown[] }).nodes, []);
    const bViewers = (await b.api<{ sessions: Array<{ id: string; role: string }> }>('/api/v1/sessions')).sessions.filter((x) => x.role === 'viewer');
    assert.equal(bViewers.length, 1);
    const kick = await ctl([...base(), '--timeout', '500', '--mesh-secret-file', wrong, 'kick', bViewers[0]!.id, '--node', 'B'], undefined, undefined, {});
    assert.notEqual(kick.code, 0, 'a kick nobody verified is not answered');
    const drain = await ctl([...base(), '--timeout', '500', '--mesh-secret-file', wrong, 'drain', 'B', '--detach'], undefined, undefined, {});
    assert.notEqual(drain.code, 0);
    await new Promise((res) => setTimeout(res, 500));
    assert.equal(viewer!.closed, false, 'the viewer was not kicked');
    assert.equal((await b.api<{ sessions: Array<{ id: string }> }>('/api/v1/sessions')).sessions.some((x) => x.id === bViewers[0]!.id), true);
    assert.equal((await fetch(`${b.http}/readyz`)).status, 200, 'B is not draining');
    rmSync(dir, { recursive: true, force: true });
  });

  it('kick: finds the node that has the session and closes it (a viewer, then the publisher)', async () => {
    const viewerIds = async (): Promise<string[]> => (await b.api<{ sessions: Array<{ id: string; role: string }> }>('/api/v1/sessions')).sessions.filter((s) => s.role === 'viewer').map((s) => s.id);
    const id = (await viewerIds())[0]!;
    const closed = new Promise<void>((res) => viewer!.once('close', () => res()));
    const r = await ctl([...base(), 'kick', id]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `kicked session ${id} on B`);
    await closed;
    await waitFor('the session is gone from B', async () => !(await viewerIds()).includes(id), 5000);
    const again = await ctl([...base(), 'kick', id, '--node', 'B', '--json']);
    assert.equal(again.code, 1);
    assert.equal((JSON.parse(again.out) as { kicked: boolean }).kicked, false);

    // The publisher: its connection is closed by the node, and the stream is no longer live there.
    const pubIds = async (): Promise<string[]> => (await a.api<{ sessions: Array<{ id: string; role: string }> }>('/api/v1/sessions')).sessions.filter((s) => s.role === 'publisher').map((s) => s.id);
    const pid = (await pubIds())[0]!;
    assert.equal(pub!.client.closed, false);
    const k = await ctl([...base(), 'kick', pid]);
    assert.equal(k.code, 0, k.err);
    assert.equal(k.out, `kicked session ${pid} on A`);
    await waitFor('the publisher is disconnected', () => pub!.client.closed, 5000);
    await waitFor('the publisher session is gone from A', async () => (await pubIds()).length === 0, 5000);
    pub = undefined;
  });

  it('token: a signed publish URL the node accepts (and nothing without it)', async () => {
    const r = await runBin(['token', 'publish', 'secure/cam', '--url', a.rtmp, '--ttl', '60'], undefined, { MESHCAST_TOKEN_SECRET: TOKEN_SECRET });
    assert.equal(r.code, 0, r.err);
    const url = r.out.trim();
    assert.match(url, /^rtmp:\/\/127\.0\.0\.161:\d+\/secure\/cam\?exp=\d+&sig=[0-9a-f]{64}$/);
    const ok = await startSyntheticPublisher(url);
    ok.stop();
    await assert.rejects(startSyntheticPublisher(`${a.rtmp}/secure/cam`));
    const noSecret = await ctl(['token', 'play', 'secure/cam']);
    assert.equal(noSecret.code, 2);
    assert.match(noSecret.err, /MESHCAST_TOKEN_SECRET/);
  });

  it('drain: the node says bye, exits 0 and leaves the table', async () => {
    const r = await ctl([...base(), 'drain', 'C']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /C said bye after \S+ and left the mesh/);
    assert.equal(await c.exited, 0);
    const j = await ctl([...base(), 'nodes', '--json']);
    assert.deepEqual((JSON.parse(j.out) as { nodes: Array<{ id: string }> }).nodes.map((n) => n.id), ['A', 'B']);
    const gone = await ctl([...base(), 'drain', 'C']);
    assert.equal(gone.code, 1);
    assert.match(gone.err, /does not answer/);
  });
});
