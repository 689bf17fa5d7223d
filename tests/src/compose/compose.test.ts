/**
 * The docker compose deployment (compose/), for real: build the images, `compose up`, wait for
 * health, publish from this host into an ingest container through its published loopback port,
 * play from a playback container through its loopback port (and over WebRTC in headless Chromium,
 * through the published UDP port), `compose kill` the owning ingest
 * container, republish to the other ingest node and check the viewer keeps its connection and
 * plays the new feed. The load profile's meshcast-load runs once, briefly, inside the compose
 * network. Then one NATS server (the leader of the ownership bucket) is killed while a stream
 * plays: the stream keeps its owner and epoch and the viewers see no gap over 1 s. Then
 * `down -v --remove-orphans`, and check nothing of ours is left: containers, networks,
 * volumes, the node image, host bridges and iptables rules. The mesh API is asked on the
 * nodes' admin ports with the compose file's admin token.
 *
 * Needs a running Docker engine (DOCKER_HOST is honoured) and compose (`docker compose` or
 * `docker-compose`). Without one the whole suite is skipped with the reason (under CI=true it
 * fails instead); scripts/compose-test.sh starts a private engine for it where it can.
 * Env: MESHCAST_COMPOSE (the compose command),
 * MESHCAST_COMPOSE_PROJECT (default meshcast-ct), MESHCAST_COMPOSE_KEEP_IMAGE=1 (keep meshcast-node).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { connectNatsBus } from '@meshcast/mesh';
import { RtmpClient, startSyntheticPublisher, syntheticFrameNumber, type SyntheticPublisher } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';
import { sleep, waitFor } from '../harness/ports.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { browserUnavailable, launchBrowser } from '../harness/browser.ts';
import { playWhep } from '../harness/whep-client.ts';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const COMPOSE_FILE = join(ROOT, 'compose/docker-compose.yml');
const PROJECT = process.env.MESHCAST_COMPOSE_PROJECT ?? 'meshcast-ct';
const IMAGE = process.env.MESHCAST_IMAGE ?? 'meshcast-node:local';
const LO = '127.0.0.1';
/** The compose file's NATS user of the nodes (compose/nats/auth.conf; MESHCAST_NATS_PASS overrides both). */
const NATS_MESH_USER = { user: 'mesh', pass: process.env.MESHCAST_NATS_PASS ?? 'compose-demo-nats-mesh' };
/** The compose file's default admin token (MESHCAST_ADMIN_TOKEN overrides both). */
const ADMIN_TOKEN = process.env.MESHCAST_ADMIN_TOKEN ?? 'compose-demo-admin-token';
/** Published loopback ports, as in compose/docker-compose.yml. */
const PORTS = {
  ingest1: { rtmp: 19351, http: 18071, admin: 18171 },
  ingest2: { rtmp: 19352, http: 18072, admin: 18172 },
  playback1: { rtmp: 19361, http: 18081, admin: 18181 },
  playback2: { rtmp: 19362, http: 18082, admin: 18182 },
  playback3: { rtmp: 19363, http: 18083, admin: 18183 },
  nats1: { client: 14221, http: 18221 },
  nats2: { client: 14222, http: 18222 },
  nats3: { client: 14223, http: 18223 },
} as const;
/** playback2's WebRTC UDP port (`--webrtc-udp-port`), published on the same number. */
const PLAYBACK2_WEBRTC_UDP = 18282;
const NODE_SERVICES = ['ingest1', 'ingest2', 'playback1', 'playback2', 'playback3'] as const;
const NATS_SERVICES = ['nats1', 'nats2', 'nats3'] as const;
/** Long-running services; nats-ready is a one-shot that must have exited 0. */
const ALL_SERVICES = [...NATS_SERVICES, ...NODE_SERVICES, 'publisher'] as const;

interface Run {
  code: number;
  out: string;
  err: string;
}

/** Runs a command to completion (bounded by timeoutMs), capturing its output. */
function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), out, err });
    });
  });
}

async function must(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.err.slice(-3000)}${r.out.slice(-2000)}`);
  return r.out;
}

/** The compose command: $MESHCAST_COMPOSE, else the v2 plugin, else docker-compose v1. */
function composeCommand(): string[] | undefined {
  const env = process.env.MESHCAST_COMPOSE?.trim();
  if (env) return env.split(/\s+/);
  if (spawnSync('docker', ['compose', 'version'], { stdio: 'ignore' }).status === 0) return ['docker', 'compose'];
  if (spawnSync('docker-compose', ['version'], { stdio: 'ignore' }).status === 0) return ['docker-compose'];
  return undefined;
}

/** Why the suite cannot run here, or undefined when it can. */
function unavailable(): string | undefined {
  const info = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8', timeout: 20_000 });
  if (info.error) return `no docker CLI (${info.error.message})`;
  if (info.status !== 0) return `no Docker engine answers at ${process.env.DOCKER_HOST ?? 'the default socket'} (${(info.stderr || '').trim().split('\n')[0]}); scripts/compose-test.sh starts one where it can`;
  if (!composeCommand()) return 'neither `docker compose` nor `docker-compose` is installed';
  return undefined;
}

// Outside CI a machine without an engine skips the suite; in CI it fails (before() throws).
// CI as scripts/compose-test.sh reads it: any value but "", "false" or "0".
const IN_CI = !['', 'false', '0'].includes(process.env.CI ?? '');
const unavailableReason = unavailable();
const skipReason = IN_CI ? undefined : unavailableReason;
/** A test that cannot run here is skipped outside CI, and fails (it runs, and its own check throws) in CI. */
const skipOutsideCi = (reason: string | undefined): string | false => (reason && !IN_CI ? reason : false);
const COMPOSE = composeCommand() ?? ['docker-compose'];

function compose(args: string[], timeoutMs?: number): Promise<string> {
  return must(COMPOSE[0]!, [...COMPOSE.slice(1), '-f', COMPOSE_FILE, '-p', PROJECT, ...args], timeoutMs);
}

async function containerId(service: string): Promise<string> {
  const out = await must('docker', ['ps', '-a', '-q', '--filter', `label=com.docker.compose.project=${PROJECT}`, '--filter', `label=com.docker.compose.service=${service}`]);
  const id = out.trim().split('\n')[0];
  if (!id) throw new Error(`no container for service ${service}`);
  return id;
}

async function health(service: string): Promise<string> {
  const out = await must('docker', ['inspect', '--format', '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}/{{.State.ExitCode}}', await containerId(service)]);
  return out.trim();
}

/** GET on a published loopback port (NATS monitoring). */
async function api<T>(port: number, path: string): Promise<T> {
  const r = await fetch(`http://${LO}:${port}${path}`, { signal: AbortSignal.timeout(5000) });
  if (!r.ok) throw new Error(`GET :${port}${path} → ${r.status}`);
  return (await r.json()) as T;
}

/** GET on a node's admin listener, with the bearer token. */
async function admin<T>(service: (typeof NODE_SERVICES)[number], path: string): Promise<T> {
  const port = PORTS[service].admin;
  const r = await fetch(`http://${LO}:${port}${path}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, signal: AbortSignal.timeout(5000) });
  if (!r.ok) throw new Error(`GET admin :${port}${path} → ${r.status}`);
  return (await r.json()) as T;
}

interface StreamRecord {
  stream: string;
  owner: string;
  epoch: number;
  revision: number;
}

/** The longest time between consecutive frames arriving in [from, to]. */
function longestGap(frames: Array<{ at: number }>, from: number, to: number): number {
  const at = frames.map((f) => f.at).filter((t) => t >= from && t <= to);
  let gap = 0;
  for (let i = 1; i < at.length; i++) gap = Math.max(gap, at[i]! - at[i - 1]!);
  return gap;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, LO, () => srv.close(() => resolve(true)));
  });
}

/** Host-side state that must look the same after `down`: iptables rules, bridges and veths. */
function hostNetState(): string {
  const parts: string[] = [];
  const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  if (links.status === 0) {
    const names = links.stdout.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '').filter((n) => /^(br-|veth|docker)/.test(n));
    parts.push(`links: ${names.sort().join(' ')}`);
  }
  if (process.getuid?.() === 0) {
    for (const tool of ['iptables-save', 'ip6tables-save', 'iptables-legacy-save']) {
      const r = spawnSync(tool, [], { encoding: 'utf8' });
      if (r.status !== 0) continue;
      // Comments carry dates and counters move: compare the rules alone.
      const rules = r.stdout.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.replace(/\[\d+:\d+\]/g, ''));
      parts.push(`${tool}:\n${rules.join('\n')}`);
    }
  }
  return parts.join('\n');
}

interface Viewer {
  client: RtmpClient;
  frames: Array<{ n: number; at: number }>;
  timestamps: number[];
}

async function rtmpView(url: string): Promise<Viewer> {
  const v: Viewer = { client: undefined as unknown as RtmpClient, frames: [], timestamps: [] };
  v.client = await RtmpClient.openPlayer(url, {
    timeoutMs: 15_000,
    onFrame: (m: RtmpMessage) => {
      if (m.type === 8 || m.type === 9) v.timestamps.push(m.timestamp);
      const n = syntheticFrameNumber(m.type, m.payload);
      if (n !== undefined) v.frames.push({ n, at: Date.now() });
    },
  });
  return v;
}

/** An HTTP-FLV viewer: parses tags as they arrive and records the synthetic frame numbers. */
interface FlvViewer {
  frames: Array<{ n: number; at: number }>;
  headerOk: boolean;
  ended: boolean;
  stop(): void;
}

function flvView(url: string): FlvViewer {
  const ac = new AbortController();
  const v: FlvViewer = { frames: [], headerOk: false, ended: false, stop: () => ac.abort() };
  void (async () => {
    try {
      const r = await fetch(url, { signal: ac.signal });
      if (!r.ok || !r.body) throw new Error(`GET ${url} → ${r.status}`);
      let buf = Buffer.alloc(0);
      let pos = -1;
      for await (const chunk of r.body) {
        buf = Buffer.concat([buf, chunk as Uint8Array]);
        if (pos < 0) {
          if (buf.length < 13) continue;
          v.headerOk = buf.subarray(0, 3).toString('latin1') === 'FLV';
          pos = buf.readUInt32BE(5) + 4;
        }
        while (buf.length >= pos + 11) {
          const type = buf[pos]! & 0x1f;
          const size = buf.readUIntBE(pos + 1, 3);
          if (buf.length < pos + 11 + size + 4) break;
          const n = syntheticFrameNumber(type, buf.subarray(pos + 11, pos + 11 + size));
          if (n !== undefined) v.frames.push({ n, at: Date.now() });
          pos += 11 + size + 4;
        }
        buf = buf.subarray(pos);
        pos = 0;
      }
    } catch {
      /* aborted or closed */
    } finally {
      v.ended = true;
    }
  })();
  return v;
}

describe('docker compose deployment', { skip: skipReason }, () => {
  const pubs: Array<Pick<SyntheticPublisher, 'stop'>> = [];
  const viewers: Array<{ close(): void }> = [];
  let netBefore = '';
  let failed = false;
  /** Marks the suite failed when fn throws, so `after` prints the containers' logs. */
  const guard = (fn: () => Promise<void>) => async (): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      failed = true;
      throw err;
    }
  };
  const t0 = Date.now();
  const mark = (what: string): void => console.log(`# ${what} at +${((Date.now() - t0) / 1000).toFixed(1)} s`);

  before(guard(async () => {
    if (unavailableReason) throw new Error(`cannot run the compose test under CI=${process.env.CI}: ${unavailableReason}`);
    // Leftovers of an interrupted earlier run of this project.
    await compose(['down', '-v', '--remove-orphans'], 120_000);
    const busy = [];
    for (const svc of Object.values(PORTS)) for (const p of Object.values(svc)) if (!(await portFree(p))) busy.push(p);
    assert.deepEqual(busy, [], `loopback ports the compose file publishes are in use by something else: ${busy.join(', ')}`);
    netBefore = hostNetState();
    const build = await run('bash', [join(ROOT, 'compose/build-images.sh')], 600_000);
    if (build.code !== 0) throw new Error(`compose/build-images.sh failed:\n${build.err.slice(-4000)}`);
    console.log(`# ${build.out.trim().split('\n').join('\n# ')}`);
    mark('images built');
    await compose(['up', '-d', '--no-build'], 300_000);
    mark('compose up returned');
    await waitFor('every container healthy', async () => {
      const states = await Promise.all(ALL_SERVICES.map(async (s) => [s, await health(s)] as const));
      // NATS containers have no health check (the official image holds nothing but the server): running is what they can say.
      const bad = states.filter(([s, h]) => (s === 'publisher' || s.startsWith('nats') ? !h.startsWith('running/') : !h.startsWith('running/healthy/')));
      if (bad.some(([, h]) => h.startsWith('exited') || h.includes('unhealthy'))) throw new Error(`not healthy: ${bad.map(([s, h]) => `${s}=${h}`).join(' ')}`);
      return bad.length === 0;
    }, 180_000, 1000);
    assert.match(await health('nats-ready'), /^exited\/none\/0$/, 'nats-ready saw the cluster ready and exited 0');
    mark('all containers healthy');
  }));

  after(async () => {
    for (const p of pubs) p.stop();
    for (const v of viewers) v.close();
    if (process.env.MESHCAST_COMPOSE_LOGS === '1' || failed) {
      const logs = await run(COMPOSE[0]!, [...COMPOSE.slice(1), '-f', COMPOSE_FILE, '-p', PROJECT, 'logs', '--no-color', '--tail', '40']);
      console.log(logs.out.split('\n').map((l) => `# ${l}`).join('\n'));
    }
    const t = Date.now();
    await compose(['down', '-v', '--remove-orphans', '--timeout', '20'], 180_000);
    console.log(`# compose down took ${((Date.now() - t) / 1000).toFixed(1)} s`);
    if (process.env.MESHCAST_COMPOSE_KEEP_IMAGE !== '1') {
      await run('docker', ['image', 'rm', IMAGE]);
      await run('docker', ['image', 'prune', '-f', '--filter', 'label=io.meshcast.stage=build']);
    }
    const label = `label=com.docker.compose.project=${PROJECT}`;
    assert.equal((await must('docker', ['ps', '-a', '-q', '--filter', label])).trim(), '', 'no containers of the project left');
    assert.equal((await must('docker', ['network', 'ls', '-q', '--filter', label])).trim(), '', 'no networks of the project left');
    assert.equal((await must('docker', ['volume', 'ls', '-q', '--filter', label])).trim(), '', 'no volumes of the project left');
    if (process.env.MESHCAST_COMPOSE_KEEP_IMAGE !== '1') assert.equal((await run('docker', ['image', 'inspect', IMAGE])).code !== 0, true, `${IMAGE} removed`);
    // Bridges and veths go a moment after their network.
    let netAfter = hostNetState();
    for (let i = 0; i < 20 && netAfter !== netBefore; i++) {
      await sleep(500);
      netAfter = hostNetState();
    }
    assert.equal(netAfter, netBefore, 'host bridges, veths and iptables rules are as before the test');
    mark('torn down, nothing left');
  });

  test('3 NATS servers form one JetStream cluster and the 5 nodes see each other', guard(async () => {
    for (const n of NATS_SERVICES) {
      await waitFor(`${n} in a 3-server JetStream cluster with a leader`, async () => {
        const jsz = await api<{ meta_cluster?: { cluster_size?: number; leader?: string } }>(PORTS[n].http, '/jsz');
        return jsz.meta_cluster?.cluster_size === 3 && !!jsz.meta_cluster.leader;
      }, 60_000, 500);
    }
    for (const svc of NODE_SERVICES) {
      await waitFor(`${svc} sees 5 alive nodes`, async () => {
        const r = await admin<{ nodes: Array<{ id: string; state: string }> }>(svc, '/api/v1/mesh/nodes');
        return r.nodes.filter((x) => x.state === 'alive').length === 5;
      }, 30_000, 500);
    }
    const nodes = await admin<{ nodes: Array<{ id: string; roles: string[]; addresses: { rtmp: string } }> }>('playback1', '/api/v1/mesh/nodes');
    const ing = nodes.nodes.find((x) => x.id === 'ingest1')!;
    assert.deepEqual(ing.roles, ['ingest']);
    assert.equal(ing.addresses.rtmp, 'rtmp://ingest1:1935', 'nodes advertise their compose service names');
    // The admin API answers only with the token, and only on the admin port.
    assert.equal((await fetch(`http://${LO}:${PORTS.playback1.admin}/api/v1/mesh/nodes`)).status, 401);
    assert.equal((await fetch(`http://${LO}:${PORTS.playback1.http}/api/v1/mesh/nodes`)).status, 404);
    mark('cluster and mesh formed');
  }));

  test('the in-compose demo publisher is relayed to a playback node and plays over HTTP-FLV through its loopback port', guard(async () => {
    const v = flvView(`http://${LO}:${PORTS.playback2.http}/live/demo.flv`);
    viewers.push({ close: v.stop });
    await waitFor('demo frames over HTTP-FLV on playback2', () => v.frames.length >= 30, 20_000, 100);
    v.stop();
    assert.ok(v.headerOk, 'FLV header');
    const ns = v.frames.map((f) => f.n);
    for (let i = 1; i < ns.length; i++) assert.ok(ns[i]! > ns[i - 1]!, `frame numbers increase: ${ns[i - 1]} → ${ns[i]}`);
    mark('demo stream played');
  }));

  test('WebRTC through the published UDP ports: ffmpeg publishes to ingest2, headless Chromium plays H.264 + Opus over WHEP from playback2; the answer names no container address', guard(async () => {
    const reason = browserUnavailable();
    if (reason) throw new Error(reason);
    const key = `wr${Date.now().toString(36)}`;
    const pub = new FfmpegPublisher(`rtmp://${LO}:${PORTS.ingest2.rtmp}/live/${key}`);
    pubs.push({ stop: () => void pub.stop() });
    await waitFor('ingest2 owns the stream', async () => {
      const r = await admin<{ streams: Array<{ stream: string; owner: string }> }>('playback2', '/api/v1/mesh/streams');
      return r.streams.some((x) => x.stream === key && x.owner === 'ingest2');
    }, 20_000, 200);
    const whep = `http://${LO}:${PORTS.playback2.http}/live/${key}/whep`;
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      await page.goto(`http://${LO}:${PORTS.playback2.http}/healthz`);
      // The answer's candidates: the node's service name and MESHCAST_WEBRTC_CANDIDATES, all on the published port.
      const answer = (await page.evaluate(`(async (url) => {
        const pc = new RTCPeerConnection();
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.addTransceiver('audio', { direction: 'recvonly' });
        await pc.setLocalDescription(await pc.createOffer());
        await new Promise((r) => { if (pc.iceGatheringState === 'complete') r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); setTimeout(r, 2000); });
        const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
        const sdp = await res.text();
        pc.close();
        const loc = res.headers.get('Location');
        if (loc) await fetch(new URL(loc, url), { method: 'DELETE' });
        return { status: res.status, sdp };
      })(${JSON.stringify(whep)})`)) as { status: number; sdp: string };
      assert.equal(answer.status, 201, answer.sdp);
      const candidates = [...answer.sdp.matchAll(/^a=candidate:\S+ \d+ UDP \d+ (\S+) (\d+) typ host/gm)].map((m) => `${m[1]}:${m[2]}`);
      assert.ok(candidates.length > 0, answer.sdp);
      assert.deepEqual([...new Set(candidates)].sort(), [`${LO}:${PLAYBACK2_WEBRTC_UDP}`, `playback2:${PLAYBACK2_WEBRTC_UDP}`], 'only the service name and the published address, on the published UDP port');
      const played = await playWhep(page, whep, 4000);
      assert.equal(played.status, 201, played.error);
      assert.ok(played.frames > 30, `video frames shown in Chromium: ${played.frames}`);
      assert.ok(played.framesDecoded > 30, `frames decoded: ${played.framesDecoded}`);
      assert.equal(played.audioCodec, 'audio/opus', 'AAC became Opus in the container (its ffmpeg)');
      assert.ok((played.audioPackets ?? 0) > 50, `Opus packets: ${played.audioPackets}`);
      console.log(`# WHEP in compose: ${played.frames} frames shown, ${played.framesDecoded} decoded, ${played.audioPackets} Opus packets in 4 s; candidates ${candidates.join(', ')}`);
    } finally {
      await browser.close();
      await pub.stop();
    }
    mark('WebRTC played');
  }));

  const noLoadBin = existsSync(join(ROOT, 'tools/bin/meshcast-load.mjs')) ? undefined : 'tools/bin/meshcast-load.mjs is not there';
  test('the load profile: meshcast-load in a container, 20 viewers of the demo stream placed over the playback pool', { skip: skipOutsideCi(noLoadBin) }, guard(async () => {
    if (noLoadBin) throw new Error(noLoadBin);
    const args = '--play-url rtmp://playback1:1935/live/demo --route http://playback1:8080 --viewers 20 --duration 4 --allow-remote --quiet';
    const out = await compose(['--profile', 'load', 'run', '--rm', '-T', '-e', `MESHCAST_LOAD_ARGS=${args}`, 'load'], 120_000);
    const lines = out.trim().split('\n');
    console.log(lines.filter((l) => /viewers|placement|result/.test(l)).map((l) => `# ${l}`).join('\n'));
    assert.match(out, /result: OK/);
    assert.match(out, /placement .*playback\d/);
    mark('load profile ran');
  }));

  test('publish to ingest1, play from playback1 (RTMP) and playback3 (HTTP-FLV); kill ingest1; republish to ingest2; viewers keep playing', guard(async () => {
    const key = `ct${Date.now().toString(36)}`;
    const p1 = await startSyntheticPublisher(`rtmp://${LO}:${PORTS.ingest1.rtmp}/live/${key}`, { timeoutMs: 10_000 });
    pubs.push(p1);
    await waitFor('ingest1 owns the stream', async () => {
      const r = await admin<{ streams: Array<{ stream: string; owner: string }> }>('playback1', '/api/v1/mesh/streams');
      return r.streams.some((s) => s.stream === key && s.owner === 'ingest1');
    }, 15_000, 200);
    const openedAt = Date.now();
    const v = await rtmpView(`rtmp://${LO}:${PORTS.playback1.rtmp}/live/${key}`);
    viewers.push(v.client);
    const hv = flvView(`http://${LO}:${PORTS.playback3.http}/live/${key}.flv`);
    viewers.push({ close: hv.stop });
    await waitFor('frames on playback1 (RTMP)', () => v.frames.length > 30, 15_000, 50);
    await waitFor('frames on playback3 (HTTP-FLV)', () => hv.frames.length > 30, 15_000, 50);
    console.log(`# first frame through the relay ${v.frames[0]!.at - openedAt} ms after play`);

    const killedAt = Date.now();
    await compose(['kill', 'ingest1'], 60_000);
    mark('ingest1 killed');
    assert.match(await health('ingest1'), /^exited/);
    await waitFor('the publisher on ingest1 sees its connection end', () => p1.client.closed, 10_000, 50);
    p1.stop();

    // A new encoder session: frame numbers jump, and its timestamps start again at 0 (the node rebases them).
    const p2 = await startSyntheticPublisher(`rtmp://${LO}:${PORTS.ingest2.rtmp}/live/${key}`, { timeoutMs: 10_000, firstFrame: 100_000 });
    pubs.push(p2);
    const publishedAt = Date.now();
    await waitFor('playback1 plays the feed from ingest2', () => v.frames.some((f) => f.n >= 100_000), 20_000, 20);
    const gap = v.frames.find((f) => f.n >= 100_000)!.at - publishedAt;
    await waitFor('playback3 plays the feed from ingest2', () => hv.frames.some((f) => f.n >= 100_000), 20_000, 20);
    const hgap = hv.frames.find((f) => f.n >= 100_000)!.at - publishedAt;
    console.log(`# owner killed: RTMP viewer plays again ${gap} ms after the republish (${publishedAt - killedAt} ms after the kill); HTTP-FLV viewer ${hgap} ms`);
    assert.equal(v.client.closed, false, 'the RTMP viewer kept its connection');
    assert.equal(hv.ended, false, 'the HTTP-FLV viewer kept its connection');
    await waitFor('more frames after the takeover', () => v.frames.filter((f) => f.n >= 100_000).length > 30, 10_000, 50);
    for (let i = 1; i < v.timestamps.length; i++) assert.ok(v.timestamps[i]! >= v.timestamps[i - 1]!, `monotonic timestamps for the viewer: ${v.timestamps[i - 1]} → ${v.timestamps[i]}`);

    const rec = (await admin<{ streams: StreamRecord[] }>('playback1', '/api/v1/mesh/streams')).streams.find((s) => s.stream === key);
    assert.equal(rec?.owner, 'ingest2');
    assert.ok(rec.epoch >= 2, 'a new ownership epoch');
    await waitFor('ingest1 is dead to the mesh', async () => {
      const r = await admin<{ nodes: Array<{ id: string; state: string }> }>('playback1', '/api/v1/mesh/nodes');
      return !r.nodes.some((x) => x.id === 'ingest1' && x.state === 'alive');
    }, 15_000, 500);
    v.client.close();
    hv.stop();
    p2.stop();
    mark('takeover checked');
  }));
  test('kill the NATS server leading the ownership bucket while a stream plays: same owner and epoch, no viewer gap over 1 s', guard(async () => {
    // Every mesh bucket and the event stream have 3 replicas (MESHCAST_NATS_REPLICAS=3 in the compose file).
    interface StreamDetail {
      name: string;
      config?: { num_replicas?: number };
      cluster?: { leader?: string };
    }
    const streams = async (): Promise<StreamDetail[]> => {
      for (const n of NATS_SERVICES) {
        try {
          const jsz = await api<{ account_details?: Array<{ stream_detail?: StreamDetail[] }> }>(PORTS[n].http, '/jsz?accounts=true&streams=true&config=true');
          return (jsz.account_details ?? []).flatMap((a) => a.stream_detail ?? []);
        } catch {
          // that server is the one killed: ask another
        }
      }
      throw new Error('no NATS server answers /jsz');
    };
    const mesh = (await streams()).filter((st) => st.name.startsWith('KV_meshcast-') || st.name === 'MESHCAST_EVENTS');
    assert.ok(mesh.some((st) => st.name === 'KV_meshcast-streams'), `mesh streams: ${mesh.map((st) => st.name).join(' ')}`);
    for (const st of mesh) assert.equal(st.config?.num_replicas, 3, `${st.name} replicas`);
    const leader = mesh.find((st) => st.name === 'KV_meshcast-streams')!.cluster?.leader;
    assert.ok(leader && (NATS_SERVICES as readonly string[]).includes(leader), `ownership bucket leader: ${leader}`);

    const key = `nk${Date.now().toString(36)}`;
    const pub = await startSyntheticPublisher(`rtmp://${LO}:${PORTS.ingest2.rtmp}/live/${key}`, { timeoutMs: 10_000 });
    pubs.push(pub);
    const record = async (): Promise<StreamRecord | undefined> => (await admin<{ streams: StreamRecord[] }>('playback1', '/api/v1/mesh/streams')).streams.find((x) => x.stream === key);
    await waitFor('ingest2 owns the stream', async () => (await record())?.owner === 'ingest2', 15_000, 200);
    const v = await rtmpView(`rtmp://${LO}:${PORTS.playback1.rtmp}/live/${key}`);
    viewers.push(v.client);
    const hv = flvView(`http://${LO}:${PORTS.playback3.http}/live/${key}.flv`);
    viewers.push({ close: hv.stop });
    await waitFor('frames on playback1 (RTMP)', () => v.frames.length > 30, 15_000, 50);
    await waitFor('frames on playback3 (HTTP-FLV)', () => hv.frames.length > 30, 15_000, 50);
    const before = (await record())!;

    // A KV write probe of our own (3 replicas, through the published client ports), every 100 ms.
    const bus = await connectNatsBus({ servers: NATS_SERVICES.map((n) => `nats://${LO}:${PORTS[n].client}`), name: 'compose-test-probe', prefix: 'ctprobe', replicas: 3, requestTimeoutMs: 1000, ...NATS_MESH_USER });
    const probe = await bus.kv('ctprobe-writes', { maxAgeMs: 60_000, replicas: 3 });
    const writes: Array<{ at: number; ok: boolean }> = [];
    let probing = true;
    const prober = (async () => {
      for (let i = 0; probing; i++) {
        const t = Date.now();
        const ok = await probe.put('w', new TextEncoder().encode(String(i)), { timeoutMs: 1000 }).then(() => true, () => false);
        writes.push({ at: Date.now(), ok });
        await sleep(Math.max(0, 100 - (Date.now() - t)));
      }
    })();
    await sleep(1500);

    const killedAt = Date.now();
    await compose(['kill', leader], 60_000);
    mark(`${leader} (leader of KV_meshcast-streams) killed`);
    // Longer than a lease (10 s): a renewal that could not be written would have cost the owner its lease by now.
    const samples: Array<{ at: number; rec?: StreamRecord }> = [];
    while (Date.now() - killedAt < 13_000) {
      const rec = await record().catch(() => undefined);
      samples.push({ at: Date.now(), rec });
      await sleep(250);
    }
    probing = false;
    await prober;
    await bus.close();
    const after = (await record())!;

    const renewedAt = samples.find((x) => x.rec && x.rec.revision > before.revision)?.at;
    // The longest stretch without a successful probe write, among those ending after the kill.
    const oks = writes.filter((w) => w.ok).map((w) => w.at);
    let outage = { from: killedAt, to: killedAt };
    for (let i = 1; i < oks.length; i++) if (oks[i]! > killedAt && oks[i]! - oks[i - 1]! > outage.to - outage.from) outage = { from: oks[i - 1]!, to: oks[i]! };
    const failed = writes.filter((w) => !w.ok && w.at > killedAt);
    const gap = longestGap(v.frames, killedAt - 1000, killedAt + 13_000);
    const hgap = longestGap(hv.frames, killedAt - 1000, killedAt + 13_000);
    const owners = [...new Set(samples.flatMap((x) => (x.rec ? [`${x.rec.owner}#${x.rec.epoch}`] : [])))];
    console.log(`# NATS kill (${leader}): owner ${before.owner} epoch ${before.epoch} before, ${after.owner} epoch ${after.epoch} after (seen: ${owners.join(', ')}); ` +
      `ownership record rewritten (lease renewal) ${renewedAt ? `${renewedAt - killedAt} ms` : 'never'} after the kill; ` +
      `probe KV writes: longest stretch without a successful write ${outage.to - outage.from} ms (from ${outage.from - killedAt} to ${outage.to - killedAt} ms after the kill), ` +
      `${failed.length} of ${writes.filter((w) => w.at > killedAt).length} writes after the kill failed${failed.length ? ` (the last ${failed.at(-1)!.at - killedAt} ms after it)` : ''}; ` +
      `longest frame gap: RTMP ${gap} ms, HTTP-FLV ${hgap} ms; ${samples.filter((x) => !x.rec).length} of ${samples.length} mesh listings failed`);
    assert.equal(after.owner, before.owner, 'the stream keeps its owner');
    assert.equal(after.epoch, before.epoch, 'the stream keeps its epoch');
    assert.deepEqual(owners, [`${before.owner}#${before.epoch}`], 'no other owner or epoch at any time');
    assert.ok(renewedAt !== undefined, 'the owner renewed its lease through the 2 remaining servers');
    assert.ok(oks.at(-1)! > killedAt + 5000, 'KV writes resume on the 2 remaining servers');
    assert.equal(v.client.closed, false, 'the RTMP viewer kept its connection');
    assert.equal(hv.ended, false, 'the HTTP-FLV viewer kept its connection');
    assert.ok(gap <= 1000, `RTMP viewer gap ${gap} ms`);
    assert.ok(hgap <= 1000, `HTTP-FLV viewer gap ${hgap} ms`);
    v.client.close();
    hv.stop();
    pub.stop();
    mark('NATS kill checked');
  }));
});
