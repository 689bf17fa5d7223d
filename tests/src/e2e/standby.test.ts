/**
 * Redundant encoders with duplicate_publish: standby (the default), with real ffmpeg encoders, a real
 * nats-server and node processes: two ingest nodes (A, B) and a playback node (P).
 *
 * Each encoder runs the way OBS does by default: when its connection drops it publishes again 1 s later
 * (a loop here restarts ffmpeg 1 s after it exits). Measured and printed: ownership changes and encoder
 * drops over the two-encoder run, and the viewer-visible video gap over 10 SIGKILL failovers (p50, max).
 * STANDBY_RUN_S sets the length of the two-encoder run (default 60 s).
 */
import { after, before, describe, test } from 'node:test';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { RtmpClient, startSyntheticPublisher } from '@meshcast/node/client';
import type { RtmpMessage } from '@meshcast/proto';
import { startNatsServer, type NatsServer } from '../harness/nats.ts';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher } from '../harness/ffmpeg.ts';
import { sleep, waitFor } from '../harness/ports.ts';
import { runMeshctl } from '@meshcast/tools';

const MESH = {
  mesh_secret: 'e2e-secret',
  heartbeat_ms: 500,
  suspect_ms: 1500,
  dead_ms: 2500,
  lease_ms: 4000,
  renew_ms: 1000,
  relay_linger_ms: 2000,
  relay_stall_ms: 1500,
};
const RUN_S = Number(process.env['STANDBY_RUN_S'] ?? 60);
const FAILOVERS = Number(process.env['STANDBY_FAILOVERS'] ?? 10);
/** A directory to copy the nodes' logs to (diagnosis). */
const KEEP_LOGS = process.env['STANDBY_KEEP_LOGS'];

interface OwnerList {
  streams: Array<{ app: string; stream: string; owner: string; epoch: number }>;
}
interface Publishing {
  state: string;
  primary: { node: string; since: number } | null;
  standby: { node: string; since: number } | null;
  failovers: Array<{ at: number; from?: string; to: string; reason: string }>;
}
interface StreamsApi {
  streams: Array<{ app: string; stream: string; publishing: Publishing | null }>;
}

/** An encoder that publishes again 1 s after its connection drops, counting its connections. */
class EncoderLoop {
  ff: FfmpegPublisher | undefined;
  starts = 0;
  private stopped = false;
  readonly done: Promise<void>;

  constructor(
    readonly name: string,
    readonly url: string,
  ) {
    this.done = this.run();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      this.starts++;
      this.ff = new FfmpegPublisher(this.url, { width: 320, height: 180, fps: 25, gop: 25, bitrate: '300k' });
      await this.ff.exited;
      if (this.stopped) return;
      await sleep(1000);
    }
  }

  /** Connections dropped (each restart is one). */
  get drops(): number {
    return this.starts - 1;
  }

  kill(): void {
    this.ff?.proc.kill('SIGKILL');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.ff?.stop();
    await this.done;
  }
}

interface Viewer {
  client: RtmpClient;
  video: number[];
}

async function view(url: string): Promise<Viewer> {
  const v: Viewer = { client: undefined as unknown as RtmpClient, video: [] };
  v.client = await RtmpClient.openPlayer(url, {
    // Coded video frames (AVC packet type 1): what a viewer sees moving.
    onFrame: (m: RtmpMessage) => {
      if (m.type === 9 && m.payload[1] === 1) v.video.push(Date.now());
    },
  });
  return v;
}

/** The longest stretch without video around `at` (from the last frame before it to the first after it). */
function videoGap(v: Viewer, at: number): number {
  const before = v.video.filter((t) => t <= at).at(-1) ?? at;
  const after_ = v.video.find((t) => t > at);
  if (after_ === undefined) return Infinity;
  let gap = after_ - before;
  // Then any later stall while the new primary settles in.
  const later = v.video.filter((t) => t >= after_ && t <= at + 3000);
  for (let i = 1; i < later.length; i++) gap = Math.max(gap, later[i]! - later[i - 1]!);
  return gap;
}

interface MeshctlStreams {
  streams: Array<{ stream: string; owner: string; publishing: { primary: { node: string } | null; standby: { node: string; since: number } | null; failovers: Array<{ to: string; reason: string; epoch: number | null }> } }>;
}

/** `meshctl streams` over NATS, as an operator runs it: the JSON and the table. */
async function meshctlStreams(natsUrl: string): Promise<{ json: MeshctlStreams; text: string }> {
  const run = async (extra: string[]): Promise<string> => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runMeshctl(['--nats', natsUrl, 'streams', ...extra], { out: (t) => out.push(t), err: (t) => err.push(t), readStdin: async () => Buffer.alloc(0), env: { MESHCAST_MESH_SECRET: MESH.mesh_secret } });
    assert.equal(code, 0, err.join('\n'));
    return out.join('\n');
  };
  return { json: JSON.parse(await run(['--json'])) as MeshctlStreams, text: await run([]) };
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

describe('redundant encoders on one key (duplicate_publish: standby)', () => {
  let nats: NatsServer;
  const nodes: NodeProcess[] = [];
  const loops: EncoderLoop[] = [];
  let a: NodeProcess;
  let b: NodeProcess;
  let p: NodeProcess;

  async function node(id: string, roles: string): Promise<NodeProcess> {
    const n = await NodeProcess.start({ nodeId: id, config: { mesh: { ...MESH, nats: [nats.url] } }, args: ['--roles', roles] });
    nodes.push(n);
    return n;
  }

  async function owner(): Promise<{ owner: string; epoch: number } | undefined> {
    return (await p.api<OwnerList>('/api/v1/mesh/streams')).streams.find((s) => s.app === 'live' && s.stream === 'red');
  }

  before(async () => {
    nats = await startNatsServer();
    [a, b, p] = await Promise.all([node('SA', 'ingest,playback'), node('SB', 'ingest,playback'), node('SP', 'playback')]);
    await waitFor('mesh of 3', async () => (await p.api<{ nodes: Array<{ state: string }> }>('/api/v1/mesh/nodes')).nodes.filter((n) => n.state === 'alive').length >= 3, 15_000, 100);
  });

  after(async () => {
    await Promise.all(loops.map((l) => l.stop()));
    await Promise.all(nodes.map(async (n) => (n.exitCode === undefined ? n.kill() : undefined)));
    for (const n of nodes) {
      if (KEEP_LOGS) writeFileSync(join(KEEP_LOGS, `${n.nodeId}.log`), n.readLogFile());
      n.cleanup();
    }
    await nats?.stop();
  });

  test(`two live encoders, one to each ingest node, re-publishing 1 s after a drop: over ${RUN_S} s at most 1 ownership change, each encoder dropped at most once`, async () => {
    loops.push(new EncoderLoop('E1', `${a.rtmpUrl}/live/red`));
    await waitFor('E1 owns the stream on SA', async () => (await owner())?.owner === 'SA', 20_000, 100);
    loops.push(new EncoderLoop('E2', `${b.rtmpUrl}/live/red`));
    await waitFor('E2 kept as standby on SB', async () => (await b.api<StreamsApi>('/api/v1/streams')).streams.find((s) => s.stream === 'red')?.publishing?.state === 'standby', 20_000, 100);
    const changes: string[] = [];
    let last = await owner();
    const until = Date.now() + RUN_S * 1000;
    while (Date.now() < until) {
      await sleep(200);
      const now = await owner();
      if (now && last && (now.owner !== last.owner || now.epoch !== last.epoch)) changes.push(`${last.owner}#${last.epoch} → ${now.owner}#${now.epoch}`);
      if (now) last = now;
    }
    const [e1, e2] = loops;
    console.log(`# standby e2e: ${RUN_S} s with two live encoders: ownership changes ${changes.length} [${changes.join(', ')}], drops E1 ${e1!.drops}, E2 ${e2!.drops}`);
    assert.ok(changes.length <= 1, `at most 1 ownership change: ${changes.join(', ')}`);
    assert.ok(e1!.drops <= 1 && e2!.drops <= 1, `each encoder dropped at most once: E1 ${e1!.drops}, E2 ${e2!.drops}`);
    // The stream API names the primary and the standby with their nodes.
    const onA = (await a.api<StreamsApi>('/api/v1/streams')).streams.find((s) => s.stream === 'red')?.publishing;
    const onB = (await b.api<StreamsApi>('/api/v1/streams')).streams.find((s) => s.stream === 'red')?.publishing;
    assert.equal(onA?.primary?.node, 'SA');
    assert.equal(onA?.standby?.node, 'SB', 'the owner knows its standby (node, since)');
    assert.equal(onB?.primary?.node, 'SA');
    assert.equal(onB?.standby?.node, 'SB');
    // meshctl (over NATS) and the dashboard (admin listener of the playback node) show the same.
    const ctl = await meshctlStreams(nats.url);
    const red = ctl.json.streams.find((s) => s.stream === 'red');
    assert.equal(red?.publishing.primary?.node, 'SA', ctl.text);
    assert.equal(red?.publishing.standby?.node, 'SB', ctl.text);
    assert.match(ctl.text, /live\/red\s+SA\s+\d+\s+\d+\s+\S+\s+SA \([^)]*\)\s+SB \([^)]*\)/);
    const snap = await p.api<{ streams: Array<{ key: string; publishing: MeshctlStreams['streams'][number]['publishing'] | null }> }>('/api/v1/dashboard/snapshot');
    const onDash = snap.streams.find((s) => s.key === 'live/red')?.publishing;
    assert.equal(onDash?.primary?.node, 'SA');
    assert.equal(onDash?.standby?.node, 'SB');
  });

  test(`a third encoder is refused with BadName; the primary encoder SIGKILLed: viewers on the playback node see video again within 1 s without reconnecting (${FAILOVERS} failovers)`, async () => {
    const third = await assert.rejects(startSyntheticPublisher(`${p.rtmpUrl.replace(p.host, a.host).replace(String(p.rtmpPort), String(a.rtmpPort))}/live/red`), (err: Error) => {
      assert.match(err.message, /BadName.*primary publisher \(node SA\) and a standby \(node SB\)/);
      return true;
    });
    void third;
    const ff3 = new FfmpegPublisher(`${b.rtmpUrl}/live/red`, { width: 320, height: 180, fps: 25, gop: 25 });
    const code = await Promise.race([ff3.exited, sleep(10_000).then(() => 'still running')]);
    await ff3.stop();
    assert.notEqual(code, 'still running', 'ffmpeg gives up: its publish was refused');
    assert.notEqual(code, 0);

    const v = await view(`${p.rtmpUrl}/live/red`);
    await waitFor('video on the playback node', () => v.video.length > 50, 15_000);
    const gaps: number[] = [];
    const loopOn = new Map([['SA', loops[0]!], ['SB', loops[1]!]]);
    for (let i = 0; i < FAILOVERS; i++) {
      const o = (await owner())!;
      const standbyNode = o.owner === 'SA' ? b : a;
      // The killed encoder of the previous round is back as the standby (it re-published 1 s later).
      await waitFor(`round ${i}: a standby on ${standbyNode.nodeId}`, async () => (await standbyNode.api<StreamsApi>('/api/v1/streams')).streams.find((s) => s.stream === 'red')?.publishing?.state === 'standby', 15_000, 100);
      await sleep(1500); // the standby has a GOP warm
      const killAt = Date.now();
      loopOn.get(o.owner)!.kill();
      await waitFor(`round ${i}: owner moves from ${o.owner}`, async () => (await owner())?.owner !== o.owner, 10_000, 50);
      await sleep(3000);
      gaps.push(videoGap(v, killAt));
      assert.equal(v.client.closed, false, 'the viewer never reconnects');
    }
    console.log(`# standby e2e: failover video gap over ${gaps.length} SIGKILL failovers: p50 ${percentile(gaps, 50)} ms, max ${Math.max(...gaps)} ms [${gaps.join(', ')}]`);
    assert.ok(Math.max(...gaps) <= 1000, `video again within 1 s after every failover: ${gaps.join(', ')}`);
    // Every promotion is listed with its reason on the node that took over.
    const o = (await owner())!;
    const now = o.owner === 'SA' ? a : b;
    const pub = (await now.api<StreamsApi>('/api/v1/streams')).streams.find((s) => s.stream === 'red')?.publishing;
    assert.ok(pub && pub.failovers.length >= 1 && pub.failovers.every((f) => f.reason.length > 0), JSON.stringify(pub));
    // meshctl merges both ingest nodes' parts: every failover of this run, each with its reason.
    const ctl = await meshctlStreams(nats.url);
    const red = ctl.json.streams.find((s) => s.stream === 'red')!;
    assert.ok(red.publishing.failovers.length >= FAILOVERS, `meshctl lists ${red.publishing.failovers.length} failovers: ${ctl.text}`);
    assert.ok(red.publishing.failovers.every((f) => f.reason.length > 0 && (f.to === 'SA' || f.to === 'SB')));
    assert.match(ctl.text, /\nfailovers:\n/);
    const snap = await p.api<{ streams: Array<{ key: string; publishing: { failovers: unknown[] } | null }> }>('/api/v1/dashboard/snapshot');
    assert.ok((snap.streams.find((s) => s.key === 'live/red')?.publishing?.failovers.length ?? 0) >= FAILOVERS, 'the dashboard lists them too');
    v.client.close();
  });
});
