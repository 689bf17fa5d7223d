/**
 * meshctl: inspect and operate a running meshcast mesh over its NATS control plane.
 * `runMeshctl(argv, io)` does everything and returns the exit code (main.ts wires it to the
 * process; tests call it directly).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import {
  BoundedLoadRing,
  BusNoRespondersError,
  BusTimeoutError,
  DEFAULT_LOAD_FACTOR,
  DEFAULT_PREFIX,
  MeshEvents,
  StreamNameError,
  StreamTokenError,
  encodeStreamToken,
  type Bus,
  type MeshEventRecord,
  type NodeView,
} from '@meshcast/mesh';
import { decodeAdmissionResponse, decodeBye, decodeHeartbeat, encodeAdmissionRequest, MeshMessageError, type MeshEvent } from '@meshcast/proto';
import { readInput, decodePayload } from './decode.ts';
import { drawTree, duration, mbps, pct, plural, table, toJson, type TreeNode } from './format.ts';
import {
  MESHCTL_ID,
  MeshctlError,
  allStats,
  connectMesh,
  meshSecret,
  controlRequest,
  natsAuthFromEnv,
  observeMesh,
  openRegistries,
  publishingOf,
  viewersOf,
  type ObservedMesh,
} from './mesh-view.ts';
import { describeSeat } from '@meshcast/node';
import { mintStreamToken } from './token.ts';

export interface MeshctlIO {
  /** Writes one line (or block) to stdout. */
  out(text: string): void;
  /** Writes one line to stderr. */
  err(text: string): void;
  readStdin(): Promise<Buffer>;
  env: NodeJS.ProcessEnv;
  /** Ends `events --follow` and `drain` waits (Ctrl-C). */
  signal?: AbortSignal;
  stdoutIsTTY?: boolean;
}

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | undefined>;

const GLOBAL: Options = {
  nats: { type: 'string' },
  prefix: { type: 'string' },
  wait: { type: 'string' },
  timeout: { type: 'string' },
  'mesh-secret-file': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

interface Command {
  args: string;
  summary: string;
  options: Options;
  optionHelp?: string;
  positionals: [number, number];
  bus: boolean;
  run(ctx: Ctx): Promise<number>;
}

interface Ctx {
  io: MeshctlIO;
  values: Values;
  positionals: string[];
  json: boolean;
  waitMs: number;
  timeoutMs: number;
  bus: Bus;
}

const USAGE_HEAD = `usage: meshctl [--nats URL] [--prefix P] <command> [options]

Inspect and operate a meshcast mesh through its NATS control plane.

global options
  --nats URLS      NATS server(s), comma-separated (MESHCAST_NATS; default nats://127.0.0.1:4222)
  --prefix P       subject prefix of the mesh (MESHCAST_SUBJECT_PREFIX; default meshcast)
  --wait MS        how long to listen to heartbeats for the node table (default 1500)
  --timeout MS     per-request timeout (default 2000)
  --json           machine-readable output (nodes, streams, tree, route, events, kick, drain, token)
  --mesh-secret-file F  the nodes' mesh secret (or MESHCAST_MESH_SECRET): required by every command that
                   talks to the mesh; what meshctl reads is verified and what it asks is signed with it
  NATS credentials: MESHCAST_NATS_USER / _PASS / _TOKEN / _NKEY_SEED / _CREDS / _CA, as for nodes.

commands`;

function num(v: string | boolean | undefined, name: string, def: number, min = 0): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(n) || n < min) throw new MeshctlError(`meshctl: --${name} must be a number >= ${min}`, 2);
  return n;
}

function parseStreamArg(s: string | undefined): { app: string; stream: string } {
  const i = s ? s.indexOf('/') : -1;
  if (!s || i <= 0 || i === s.length - 1) throw new MeshctlError(`meshctl: expected <app>/<stream>, e.g. live/demo (got ${JSON.stringify(s ?? '')})`, 2);
  return { app: s.slice(0, i), stream: s.slice(i + 1) };
}

function streamToken(app: string, stream: string): string {
  try {
    return encodeStreamToken(app, stream);
  } catch (err) {
    if (err instanceof StreamNameError || err instanceof StreamTokenError) throw new MeshctlError(`meshctl: ${err.message}`, 2);
    throw err;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      res();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

// ------------------------------------------------------------------ nodes

async function cmdNodes(c: Ctx): Promise<number> {
  const obs = await observeMesh(c.bus, c.waitMs);
  if (c.json) {
    c.io.out(toJson({ nodes: obs.views.map((v) => ({ id: v.id, state: v.state, ...v.heartbeat })), left: [...obs.left.keys()] }, true));
    return 0;
  }
  if (obs.views.length === 0) {
    c.io.err(`no heartbeats heard in ${duration(obs.waitedMs)} on ${c.bus.names.heartbeatAll}: no node is connected to this NATS with prefix "${c.bus.names.prefix}"`);
    return 0;
  }
  const rows = obs.views.map((v) => {
    const h = v.heartbeat;
    return [
      v.id,
      h.roles.join(','),
      v.state,
      `${h.viewers}/${h.capacity}`,
      mbps(h.egressBps),
      pct(h.cpu),
      String(h.streamsOwned),
      String(h.relaysHeld),
      h.draining ? 'yes' : 'no',
      h.addresses.rtmp,
      h.addresses.http,
    ];
  });
  c.io.out(table(['NODE', 'ROLES', 'STATE', 'VIEWERS', 'EGRESS Mbps', 'CPU', 'OWNED', 'RELAYS', 'DRAINING', 'RTMP', 'HTTP'], rows, ['l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'l']));
  const viewers = obs.views.reduce((a, v) => a + v.heartbeat.viewers, 0);
  const egress = obs.views.reduce((a, v) => a + v.heartbeat.egressBps, 0);
  const left = obs.left.size ? `; said bye: ${[...obs.left.keys()].join(', ')}` : '';
  c.io.out(`\n${plural(obs.views.length, 'node')}, ${plural(viewers, 'viewer')}, ${mbps(egress)} Mbps out (heard for ${duration(obs.waitedMs)})${left}`);
  return 0;
}

// ------------------------------------------------------------------ streams

async function cmdStreams(c: Ctx): Promise<number> {
  const [obs, reg] = await Promise.all([observeMesh(c.bus, c.waitMs), openRegistries(c.bus)]);
  try {
    const owners = (await reg.ownership.list()).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const [stats, relays] = await Promise.all([allStats(c.bus, obs.views, Math.min(c.timeoutMs, 1500)), Promise.all(owners.map((o) => reg.relays.list(o.app, o.stream)))]);
    const now = Date.now();
    const list = owners.map((o, i) => {
      const viewers = Object.fromEntries([...viewersOf(stats, o.app, o.stream)].filter(([, n]) => n > 0));
      return {
        app: o.app,
        stream: o.stream,
        ...o.record,
        revision: o.revision,
        ageMs: Math.max(0, now - o.record.startedAt),
        relays: relays[i]!.map((r) => r.claim.node).sort(),
        viewers,
        viewersTotal: Object.values(viewers).reduce((a, b) => a + b, 0),
        publishing: publishingOf(stats, o.app, o.stream),
      };
    });
    if (c.json) {
      c.io.out(toJson({ streams: list, statsFrom: [...stats.keys()].sort() }, true));
      return 0;
    }
    if (list.length === 0) {
      c.io.out('no live streams (nothing is published in the mesh)');
      return 0;
    }
    const rows = list.map((s) => [
      `${s.app}/${s.stream}`,
      s.owner,
      String(s.epoch),
      String(s.revision),
      duration(s.ageMs),
      describeSeat(s.publishing.primary, now),
      describeSeat(s.publishing.standby, now),
      String(s.publishing.failovers.length),
      String(s.relays.length),
      String(s.viewersTotal),
      Object.entries(s.viewers)
        .map(([n, v]) => `${n}:${v}`)
        .join(' ') || '-',
    ]);
    c.io.out(table(['STREAM', 'OWNER', 'EPOCH', 'REV', 'AGE', 'PRIMARY', 'STANDBY', 'FAILOVERS', 'RELAYS', 'VIEWERS', 'PER NODE'], rows, ['l', 'l', 'r', 'r', 'r', 'l', 'l', 'r', 'r', 'r', 'l']));
    // Every failover, with its reason: the operator's answer to "why did the picture change?"
    const failovers = list.flatMap((s) => s.publishing.failovers.map((f) => ({ key: `${s.app}/${s.stream}`, ...f })));
    if (failovers.length) {
      c.io.out('\nfailovers:');
      c.io.out(
        table(
          ['STREAM', 'AGO', 'FROM', 'TO', 'EPOCH', 'REASON'],
          failovers.sort((a, b) => a.at - b.at).map((f) => [f.key, duration(Math.max(0, now - f.at)), f.from ?? '-', f.to, f.epoch === null ? '-' : String(f.epoch), f.reason]),
          ['l', 'r', 'l', 'l', 'r', 'l'],
        ),
      );
    }
    const missing = obs.views.filter((v) => !stats.has(v.id)).map((v) => v.id);
    if (missing.length) c.io.out(`\nviewer counts unknown for: ${missing.join(', ')} (no answer to stats)`);
    return 0;
  } finally {
    await reg.close();
  }
}

// ------------------------------------------------------------------ tree

interface TreeJson {
  node: string;
  role: 'owner' | 'relay';
  alive: boolean;
  viewers: number | null;
  children: TreeJson[];
}

async function cmdTree(c: Ctx): Promise<number> {
  const { app, stream } = parseStreamArg(c.positionals[0]);
  streamToken(app, stream);
  const [obs, reg] = await Promise.all([observeMesh(c.bus, c.waitMs), openRegistries(c.bus)]);
  try {
    const [owner, claims] = await Promise.all([reg.ownership.lookup(app, stream), reg.relays.list(app, stream)]);
    const stats = await allStats(c.bus, obs.views, Math.min(c.timeoutMs, 1500));
    const viewers = viewersOf(stats, app, stream);
    const alive = new Set(obs.views.map((v) => v.id));
    const kids = new Map<string, string[]>();
    for (const cl of claims) {
      const list = kids.get(cl.claim.parent) ?? [];
      list.push(cl.claim.node);
      kids.set(cl.claim.parent, list);
    }
    for (const l of kids.values()) l.sort();
    const placed = new Set<string>();
    const build = (node: string, role: TreeJson['role']): TreeJson => {
      placed.add(node);
      const children = (kids.get(node) ?? []).filter((k) => !placed.has(k)).map((k) => build(k, 'relay'));
      return { node, role, alive: alive.has(node), viewers: viewers.get(node) ?? null, children };
    };
    const root = owner ? build(owner.record.owner, 'owner') : undefined;
    // Claims not reachable from the owner (parent gone, or a loop while re-parenting).
    const detached = claims.filter((cl) => !placed.has(cl.claim.node)).map((cl) => ({ ...build(cl.claim.node, 'relay'), parent: cl.claim.parent }));
    if (c.json) {
      c.io.out(toJson({ app, stream, owner: owner ? { ...owner.record, revision: owner.revision } : null, root: root ?? null, detached }, true));
      return owner ? 0 : 1;
    }
    if (!owner) {
      c.io.out(`${app}/${stream} is not published anywhere in the mesh${claims.length ? ` (${plural(claims.length, 'stale relay claim')})` : ''}`);
      return 1;
    }
    const label = (t: TreeJson): string => {
      const bits = [t.role === 'owner' ? 'owner' : 'relay'];
      if (t.viewers !== null) bits.push(plural(t.viewers, 'viewer'));
      if (t.children.length) bits.push(t.children.length === 1 ? '1 child' : `${t.children.length} children`);
      if (!t.alive) bits.push('NOT ALIVE');
      return `${t.node}  (${bits.join(', ')})`;
    };
    const toTree = (t: TreeJson): TreeNode => ({ label: label(t), children: t.children.map(toTree) });
    c.io.out(`${app}/${stream}  epoch ${owner.record.epoch}, revision ${owner.revision}, up ${duration(Date.now() - owner.record.startedAt)}`);
    c.io.out(drawTree(toTree(root!)));
    if (detached.length) {
      c.io.out('\ndetached relay claims (parent not in the tree):');
      for (const d of detached) c.io.out(`  ${d.node} → parent ${d.parent}`);
    }
    return 0;
  } finally {
    await reg.close();
  }
}

// ------------------------------------------------------------------ events

function describeEvent(e: MeshEvent): string {
  switch (e.type) {
    case 'published':
      return `${e.app}/${e.stream} on ${e.node}`;
    case 'unpublished':
      return `${e.app}/${e.stream} on ${e.node}${e.reason ? ` (${e.reason})` : ''}`;
    case 'ownershipMoved':
      return `${e.app}/${e.stream} ${e.from ?? '?'} → ${e.to} (epoch ${e.epoch}${e.revision !== undefined ? `, revision ${e.revision}` : ''})`;
    case 'standbyPromoted':
      return `${e.app}/${e.stream} ${e.from ?? '?'} → ${e.to}: ${e.reason}${e.epoch !== undefined ? ` (epoch ${e.epoch})` : ''}`;
    case 'relayStarted':
      return `${e.app}/${e.stream} on ${e.node} from ${e.parent}`;
    case 'relayStopped':
      return `${e.app}/${e.stream} on ${e.node}${e.reason ? ` (${e.reason})` : ''}`;
    case 'nodeJoined':
      return `${e.node} (${e.roles.join(',')})`;
    case 'nodeLeft':
      return `${e.node}${e.reason ? ` (${e.reason})` : ''}`;
    case 'nodeDead':
      return `${e.node} (reported by ${e.reportedBy}, silent for ${duration(e.at - e.lastSeenAt)})`;
  }
}

async function cmdEvents(c: Ctx): Promise<number> {
  const events = new MeshEvents(c.bus);
  const limit = num(c.values['limit'], 'limit', 20, 1);
  const since = c.values['since'] !== undefined ? num(c.values['since'], 'since', 0) : undefined;
  const show = (r: MeshEventRecord): void => {
    if (c.json) c.io.out(toJson({ seq: r.seq, time: new Date(r.time).toISOString(), ...r.event }, false));
    else c.io.out(`#${String(r.seq).padEnd(6)} ${new Date(r.time).toISOString().replace('T', ' ').slice(0, 23)}  ${r.event.type.padEnd(14)}  ${describeEvent(r.event)}`);
  };
  const records = await events.read(since !== undefined ? { since, limit } : { limit });
  for (const r of records) show(r);
  if (!c.values['follow']) {
    if (records.length === 0 && !c.json) c.io.err('no events in the log');
    return 0;
  }
  const last = records[records.length - 1]?.seq;
  const follower = await events.follow(show, last !== undefined ? { since: last } : {});
  await new Promise<void>((res) => {
    if (!c.io.signal) return; // follows until the process is stopped
    if (c.io.signal.aborted) return res();
    c.io.signal.addEventListener('abort', () => res(), { once: true });
  });
  follower.stop();
  return 0;
}

// ------------------------------------------------------------------ route

const ASK_AT_MOST = 4;

interface Candidate {
  node: string;
  rtmp: string;
  flv: string;
  hls: string;
  load: number;
  cap: number;
}

function urlsOf(view: NodeView, app: string, stream: string): Pick<Candidate, 'rtmp' | 'flv' | 'hls'> {
  const a = encodeURIComponent(app);
  const s = encodeURIComponent(stream);
  const { rtmp, http } = view.heartbeat.addresses;
  return { rtmp: `${rtmp}/${a}/${s}`, flv: `${http}/${a}/${s}.flv`, hls: `${http}/${a}/${s}/index.m3u8` };
}

async function askAdmission(bus: Bus, node: string, app: string, stream: string, timeoutMs: number): Promise<{ admitted: boolean; reason?: string }> {
  try {
    const data = await bus.request(
      bus.names.rpc(node, 'admit'),
      encodeAdmissionRequest({ requestId: `${MESHCTL_ID}-${process.pid}-${Date.now().toString(36)}`, kind: 'viewer', app, stream, from: MESHCTL_ID, sentAt: Date.now() }),
      { timeoutMs },
    );
    const res = decodeAdmissionResponse(data);
    if (res instanceof MeshMessageError) return { admitted: false, reason: `bad admission answer: ${res.message}` };
    return res.admitted ? { admitted: true } : { admitted: false, reason: res.reason ?? 'at capacity' };
  } catch (err) {
    if (err instanceof BusTimeoutError || err instanceof BusNoRespondersError) return { admitted: false, reason: 'no answer' };
    return { admitted: false, reason: err instanceof Error ? err.message : String(err) };
  }
}

/**
 * The placement answer a node's GET /api/v1/route/:app/:stream gives, computed here from the
 * heartbeat table with the same BoundedLoadRing, then confirmed by the same admission RPC.
 */
export async function computeRoute(
  bus: Bus,
  obs: ObservedMesh,
  app: string,
  stream: string,
  opts: { c?: number; admit?: boolean; timeoutMs?: number } = {},
): Promise<{ answer: (Candidate & { app: string; stream: string; next: Candidate[]; refused: Array<{ node: string; reason: string }> }) | undefined; ranked: Array<Candidate & { score: number; overCap: boolean; verdict?: string }>; error?: string }> {
  const ring = new BoundedLoadRing({ c: opts.c ?? DEFAULT_LOAD_FACTOR });
  ring.updateFromTable(obs.views);
  const byId = new Map(obs.views.map((v) => [v.id, v]));
  const ranked: Array<Candidate & { score: number; overCap: boolean; verdict?: string }> = ring
    .rank(streamToken(app, stream))
    .map((r) => ({ node: r.id, load: r.load, cap: r.cap, ...urlsOf(byId.get(r.id)!, app, stream), score: r.score, overCap: r.overCap }));
  const list: Candidate[] = ranked.map(({ node, load, cap, rtmp, flv, hls }) => ({ node, rtmp, flv, hls, load, cap }));
  if (opts.admit === false) {
    const first = list[0];
    return first ? { answer: { app, stream, ...first, next: list.slice(1), refused: [] }, ranked } : { answer: undefined, ranked, error: 'no playback node is alive with room' };
  }
  const refused: Array<{ node: string; reason: string }> = [];
  for (let i = 0; i < list.length && i < ASK_AT_MOST; i++) {
    const cand = list[i]!;
    const v = await askAdmission(bus, cand.node, app, stream, Math.min(opts.timeoutMs ?? 500, 500));
    ranked[i]!.verdict = v.admitted ? 'admitted' : `refused: ${v.reason ?? 'refused'}`;
    if (v.admitted) return { answer: { app, stream, ...cand, next: list.filter((x) => x !== cand), refused }, ranked };
    refused.push({ node: cand.node, reason: v.reason ?? 'refused' });
  }
  return {
    answer: undefined,
    ranked,
    error: list.length === 0 ? 'no playback node is alive with room' : `every candidate refused: ${refused.map((r) => `${r.node} (${r.reason})`).join(', ')}`,
  };
}

async function cmdRoute(c: Ctx): Promise<number> {
  const { app, stream } = parseStreamArg(c.positionals[0]);
  streamToken(app, stream);
  const lf = num(c.values['load-factor'], 'load-factor', DEFAULT_LOAD_FACTOR, 1);
  const obs = await observeMesh(c.bus, c.waitMs);
  const r = await computeRoute(c.bus, obs, app, stream, { c: lf, admit: !c.values['rank-only'], timeoutMs: c.timeoutMs });
  if (c.json) {
    c.io.out(toJson(r.answer ?? { error: r.error }, true));
    return r.answer ? 0 : 1;
  }
  if (r.answer) {
    c.io.out(`${app}/${stream} → ${r.answer.node}`);
    c.io.out(`  rtmp  ${r.answer.rtmp}\n  flv   ${r.answer.flv}\n  hls   ${r.answer.hls}`);
  } else c.io.out(`${app}/${stream}: ${r.error}`);
  const playback = obs.views.filter((v) => v.heartbeat.roles.includes('playback')).length;
  c.io.out(`\ncandidates (bounded-load rendezvous, c = ${lf}, ${plural(playback, 'playback node')} heard):`);
  if (r.ranked.length) {
    c.io.out(
      table(
        ['#', 'NODE', 'LOAD', 'CAP', 'SCORE', 'ADMISSION'],
        r.ranked.map((x, i) => [String(i + 1), x.node, String(x.load), String(x.cap) + (x.overCap ? ' (over)' : ''), x.score.toFixed(1), x.verdict ?? '-']),
        ['r', 'l', 'r', 'r', 'r', 'l'],
      ),
    );
  } else c.io.out('  none: no playback node is alive, undrained and below capacity');
  return r.answer ? 0 : 1;
}

// ------------------------------------------------------------------ kick

async function cmdKick(c: Ctx): Promise<number> {
  const session = c.positionals[0]!;
  const only = c.values['node'] as string | undefined;
  const targets = only ? [only] : (await observeMesh(c.bus, c.waitMs)).views.map((v) => v.id);
  if (targets.length === 0) throw new MeshctlError('meshctl: no node heard on the bus; nobody to ask');
  const results = await Promise.all(
    targets.map(async (node): Promise<{ node: string; kicked: boolean | undefined; via: string }> => {
      // Every mesh node answers node-control over the bus; meshctl needs no HTTP access to any node.
      try {
        const r = await controlRequest(c.bus, node, 'kick', { op: 'kick', session, from: MESHCTL_ID, reason: 'kicked by meshctl', sentAt: Date.now() }, c.timeoutMs);
        return { node, kicked: r.op === 'kickResult' ? r.kicked : undefined, via: 'rpc' };
      } catch {
        return { node, kicked: undefined, via: 'rpc' };
      }
    }),
  );
  const hit = results.find((r) => r.kicked);
  const silent = results.filter((r) => r.kicked === undefined).map((r) => r.node);
  if (c.json) c.io.out(toJson({ session, kicked: Boolean(hit), node: hit?.node ?? null, via: hit?.via ?? null, asked: targets, noAnswer: silent }, true));
  else if (hit) c.io.out(`kicked session ${session} on ${hit.node}`);
  else c.io.err(`no node has session ${session} (asked ${targets.join(', ')}${silent.length ? `; no answer from ${silent.join(', ')}` : ''})`);
  return hit ? 0 : 1;
}

// ------------------------------------------------------------------ drain

async function cmdDrain(c: Ctx): Promise<number> {
  const node = c.positionals[0]!;
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(node)) throw new MeshctlError(`meshctl: ${JSON.stringify(node)} is not a node id`, 2);
  const exitWaitMs = num(c.values['exit-timeout'], 'exit-timeout', 30, 0) * 1000;
  let byeAt = 0;
  let lastHb = Date.now();
  const bye = c.bus.subscribe(c.bus.names.bye(node), (m) => {
    if (!(decodeBye(m.data) instanceof MeshMessageError)) byeAt ||= Date.now();
  });
  const hb = c.bus.subscribe(c.bus.names.heartbeat(node), (m) => {
    if (!(decodeHeartbeat(m.data) instanceof MeshMessageError)) lastHb = Date.now();
  });
  try {
    const t0 = Date.now();
    let res;
    try {
      res = await controlRequest(c.bus, node, 'drain', { op: 'drain', from: MESHCTL_ID, reason: (c.values['reason'] as string | undefined) ?? 'drained by meshctl', sentAt: t0 }, c.timeoutMs);
    } catch (err) {
      if (err instanceof BusNoRespondersError) {
        throw new MeshctlError(`meshctl: node ${node} does not answer on ${c.bus.names.rpc(node, 'drain')}: it is not running, or runs without node-control`);
      }
      if (err instanceof BusTimeoutError) throw new MeshctlError(`meshctl: node ${node} did not answer the drain request within ${c.timeoutMs} ms`);
      throw err;
    }
    if (res.op !== 'drainResult' || !res.accepted) {
      const why = res.op === 'drainResult' ? (res.reason ?? 'refused') : `unexpected reply ${res.op}`;
      if (c.json) c.io.out(toJson({ node, accepted: false, reason: why }, true));
      else c.io.err(`node ${node} refused to drain: ${why}`);
      return 1;
    }
    if (c.values['detach']) {
      if (c.json) c.io.out(toJson({ node, accepted: true }, true));
      else c.io.out(`${node} is draining`);
      return 0;
    }
    if (!c.json) c.io.out(`${node} is draining; waiting for it to leave the mesh…`);
    // Gone = said bye, or no heartbeat for 3 s (a node that lost NATS while stopping).
    const deadline = t0 + exitWaitMs;
    lastHb = Math.max(lastHb, t0);
    while (!byeAt && Date.now() - lastHb < 3000 && Date.now() < deadline && !c.io.signal?.aborted) await sleep(50, c.io.signal);
    const gone = byeAt > 0 || Date.now() - lastHb >= 3000;
    if (c.json) c.io.out(toJson({ node, accepted: true, left: gone, bye: byeAt > 0, afterMs: gone ? (byeAt || Date.now()) - t0 : null }, true));
    else if (byeAt) c.io.out(`${node} said bye after ${duration(byeAt - t0)} and left the mesh`);
    else if (gone) c.io.out(`${node} stopped sending heartbeats (no bye heard); it is out of the mesh`);
    else c.io.err(`${node} is still in the mesh after ${duration(Date.now() - t0)}`);
    return gone ? 0 : 1;
  } finally {
    bye.unsubscribe();
    hb.unsubscribe();
  }
}

// ------------------------------------------------------------------ decode

async function cmdDecode(io: MeshctlIO, values: Values): Promise<number> {
  const input = (values['input'] as string | undefined) ?? 'raw';
  if (input !== 'raw' && input !== 'hex' && input !== 'base64') throw new MeshctlError('meshctl: --input is raw, hex or base64', 2);
  const data = readInput(await io.readStdin(), input);
  if (data instanceof Error) throw new MeshctlError(`meshctl decode: ${data.message}`);
  const subject = values['subject'] as string | undefined;
  const r = decodePayload(data, subject || undefined);
  if (r instanceof Error) throw new MeshctlError(`meshctl decode: ${r.message}`);
  io.out(toJson(r, Boolean(values['pretty']) || (io.stdoutIsTTY ?? false)));
  return 0;
}

// ------------------------------------------------------------------ token

async function cmdToken(io: MeshctlIO, values: Values, positionals: string[]): Promise<number> {
  const action = positionals[0];
  if (action !== 'publish' && action !== 'play') throw new MeshctlError('meshctl token: first argument is publish or play', 2);
  const { app, stream } = parseStreamArg(positionals[1]);
  const ttl = num(values['ttl'], 'ttl', 3600, 1);
  const t = await mintStreamToken({ env: io.env, secretFile: values['secret-file'] as string | undefined, action, app, stream, ttlSeconds: ttl });
  let url: string | undefined;
  const base = values['url'] as string | undefined;
  if (base) {
    const b = base.replace(/\/+$/, '');
    url = `${b}/${encodeURIComponent(app)}/${encodeURIComponent(stream)}${action === 'play' && /^https?:/.test(b) ? '.flv' : ''}?${t.query}`;
  }
  if (values['json']) io.out(toJson({ action, app, stream, exp: t.exp, expiresAt: new Date(t.exp * 1000).toISOString(), sig: t.sig, query: t.query, ...(url ? { url } : {}) }, true));
  else io.out(url ?? t.query);
  return 0;
}

// ------------------------------------------------------------------ table of commands

const COMMANDS: Record<string, Command> = {
  nodes: {
    args: '',
    summary: 'the live node table: roles, state, load, streams owned, relays, draining',
    options: {},
    positionals: [0, 0],
    bus: true,
    run: cmdNodes,
  },
  streams: {
    args: '',
    summary: 'live streams: owner, epoch, KV revision, age, primary and standby encoder, failovers (with reasons), relays, viewers per node',
    options: {},
    positionals: [0, 0],
    bus: true,
    run: cmdStreams,
  },
  tree: {
    args: '<app/stream>',
    summary: 'the relay tree of a stream, owner at the root',
    options: {},
    positionals: [1, 1],
    bus: true,
    run: cmdTree,
  },
  events: {
    args: '',
    summary: 'the mesh event log (MESHCAST_EVENTS)',
    options: { follow: { type: 'boolean', short: 'f' }, limit: { type: 'string', short: 'n' }, since: { type: 'string' } },
    optionHelp: '  --follow, -f   keep printing new events until Ctrl-C\n  --limit N      last N events (default 20)\n  --since SEQ    events after sequence SEQ',
    positionals: [0, 0],
    bus: true,
    run: cmdEvents,
  },
  route: {
    args: '<app/stream>',
    summary: "where a viewer of the stream goes (the same answer as a node's /api/v1/route)",
    options: { 'load-factor': { type: 'string' }, 'rank-only': { type: 'boolean' } },
    optionHelp: '  --load-factor C  bounded-load factor c (default 1.25; use the nodes\' placement_load_factor)\n  --rank-only      rank only, do not ask the candidates to admit',
    positionals: [1, 1],
    bus: true,
    run: cmdRoute,
  },
  kick: {
    args: '<session>',
    summary: 'close a session (viewer or publisher) on whichever node has it',
    options: { node: { type: 'string' } },
    optionHelp: '  --node ID   ask this node only (default: every node)',
    positionals: [1, 1],
    bus: true,
    run: cmdKick,
  },
  drain: {
    args: '<node>',
    summary: 'drain a node: it stops admitting, says bye, closes its sessions and exits',
    options: { detach: { type: 'boolean' }, reason: { type: 'string' }, 'exit-timeout': { type: 'string' } },
    optionHelp: '  --detach            do not wait for the node to leave\n  --reason TEXT       logged by the node\n  --exit-timeout S    how long to wait for it to leave (default 30)',
    positionals: [1, 1],
    bus: true,
    run: cmdDrain,
  },
  decode: {
    args: '',
    summary: 'decode one msgpack payload from stdin to JSON (nats sub … --translate "meshctl decode")',
    options: { subject: { type: 'string' }, input: { type: 'string' }, pretty: { type: 'boolean' } },
    optionHelp: '  --subject S     the subject it came from (else every schema is tried)\n  --input FORMAT  raw (default), hex or base64\n  --pretty        indent the JSON',
    positionals: [0, 0],
    bus: false,
    run: (c) => cmdDecode(c.io, c.values),
  },
  token: {
    args: '<publish|play> <app/stream>',
    summary: 'mint a signed, expiring publish/play token (secret from MESHCAST_TOKEN_SECRET)',
    options: { ttl: { type: 'string' }, url: { type: 'string' }, 'secret-file': { type: 'string' } },
    optionHelp: '  --ttl S           valid for S seconds (default 3600)\n  --url BASE        print a full URL, e.g. --url rtmp://127.0.0.11:1935\n  --secret-file F   read the secret from a file instead of MESHCAST_TOKEN_SECRET',
    positionals: [2, 2],
    bus: false,
    run: (c) => cmdToken(c.io, c.values, c.positionals),
  },
};

export function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${`${name} ${c.args}`.padEnd(36)} ${c.summary}`);
  const opts = Object.entries(COMMANDS)
    .filter(([, c]) => c.optionHelp)
    .map(([name, c]) => `${name}\n${c.optionHelp}`);
  return `${USAGE_HEAD}\n${lines.join('\n')}\n\ncommand options\n${opts.join('\n')}\n`;
}

function commandUsage(name: string): string {
  const c = COMMANDS[name]!;
  return `usage: meshctl [global options] ${name} ${c.args}\n\n${c.summary}\n${c.optionHelp ? `\n${c.optionHelp}\n` : ''}`;
}

/** The command's position in argv: the first token that is neither an option nor an option's value. */
function findCommand(argv: string[]): number {
  const takesValue = new Set(Object.entries(GLOBAL).filter(([, o]) => o.type === 'string').map(([k]) => `--${k}`));
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') return i + 1 < argv.length ? i + 1 : -1;
    if (a.startsWith('-')) {
      if (takesValue.has(a)) i++;
      continue;
    }
    return i;
  }
  return -1;
}

export async function runMeshctl(argv: string[], io: MeshctlIO): Promise<number> {
  const at = findCommand(argv);
  const name = at >= 0 ? argv[at]! : undefined;
  if (name === undefined || name === 'help') {
    const wantsHelp = name === 'help' || argv.includes('--help') || argv.includes('-h');
    (wantsHelp ? io.out : io.err)(usage());
    return wantsHelp ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    io.err(`meshctl: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  let values: Values;
  let positionals: string[];
  try {
    const parsed = parseArgs({ args: [...argv.slice(0, at), ...argv.slice(at + 1)], options: { ...GLOBAL, ...cmd.options }, allowPositionals: true, strict: true });
    values = parsed.values as Values;
    positionals = parsed.positionals;
  } catch (err) {
    io.err(`meshctl ${name}: ${(err as Error).message}\n\n${commandUsage(name)}`);
    return 2;
  }
  if (values['help']) {
    io.out(commandUsage(name));
    return 0;
  }
  if (positionals.length < cmd.positionals[0] || positionals.length > cmd.positionals[1]) {
    io.err(`meshctl ${name}: expected ${cmd.args || 'no arguments'}\n\n${commandUsage(name)}`);
    return 2;
  }
  let bus: Bus | undefined;
  try {
    const waitMs = num(values['wait'], 'wait', 1500, 0);
    const timeoutMs = num(values['timeout'], 'timeout', 2000, 1);
    if (cmd.bus) {
      const raw = (values['nats'] as string | undefined) ?? io.env['MESHCAST_NATS'] ?? 'nats://127.0.0.1:4222';
      const servers = raw.split(',').map((s) => s.trim()).filter(Boolean);
      if (servers.length === 0) throw new MeshctlError('meshctl: --nats is empty', 2);
      const prefix = (values['prefix'] as string | undefined) ?? io.env['MESHCAST_SUBJECT_PREFIX'] ?? DEFAULT_PREFIX;
      const secret = meshSecret(io.env, values['mesh-secret-file'] as string | undefined);
      bus = await connectMesh({ servers, prefix, requestTimeoutMs: timeoutMs, auth: natsAuthFromEnv(io.env), meshSecret: secret });
    }
    return await cmd.run({ io, values, positionals, json: Boolean(values['json']), waitMs, timeoutMs, bus: bus as Bus });
  } catch (err) {
    if (err instanceof MeshctlError) {
      io.err(err.message);
      return err.exitCode;
    }
    io.err(`meshctl ${name}: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  } finally {
    await bus?.close().catch(() => undefined);
  }
}
