/**
 * `npm run mesh`: a whole meshcast mesh on this machine — nats-server with JetStream, 2 ingest
 * and 3 playback nodes on their own loopback addresses — as child processes of this one.
 * Prints where to publish, play and look; Ctrl-C (or SIGTERM) stops everything it started and
 * removes its temp dir.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { startSyntheticPublisher } from '@meshcast/node/client';
import { FROM_SOURCE, FlvLoopPublisher, REPO_ROOT, TEST_MEDIA, ensureTestMedia, loadFlvSource } from '../load/index.ts';

// The built launcher (npm run mesh) starts built nodes; from the sources (tests) it starts sources through tsx.
const NODE_CMD = FROM_SOURCE ? ['--import', 'tsx', join(REPO_ROOT, 'services/node/src/cli.ts')] : ['--enable-source-maps', join(REPO_ROOT, 'services/node/dist/meshcast.mjs')];

const USAGE = `usage: npm run mesh [-- options]

Starts nats-server (JetStream) and a local meshcast mesh: ingest nodes on 127.0.0.11, .12, …
and playback nodes on 127.0.0.21, .22, …, each with its own RTMP and HTTP port, and its
admin listener (dashboard, API, metrics) on the same loopback address.
Ctrl-C stops all of it.

  --ingest N        ingest nodes (default 2)
  --playback N      playback nodes (default 3)
  --ports MODE      fixed: RTMP 1935, HTTP 8080 and admin 8081 on every node address (default);
                    auto: free ephemeral ports
  --nats-port P     NATS client port on 127.0.0.1 (default 4222; 'auto' for a free one)
  --publisher       publish a test pattern (with clock stamps) into live/demo
  --log-level L     node log level shown here (default warn; info shows much more)
  --mesh-secret S   secret for inter-node pulls (default: random per run)
`;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const stamp = (): string => new Date().toISOString().slice(11, 19);
const say = (line: string): void => void process.stdout.write(`${line}\n`);
const warn = (line: string): void => void process.stderr.write(`${line}\n`);

interface NodeSpec {
  id: string;
  roles: 'ingest' | 'playback';
  host: string;
  rtmpPort: number;
  httpPort: number;
  /** The admin listener, on the node's own loopback address (a loopback admin address is not advertised to peers). */
  adminPort: number;
}

interface Child {
  name: string;
  proc: ChildProcess;
  exited: Promise<number | null>;
  code: number | null | undefined;
  tail: string[];
}

const children: Child[] = [];
let dir = '';
let shuttingDown = false;

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
    s.setTimeout(500, () => {
      s.destroy();
      resolve(false);
    });
  });
}

/** Pino JSON lines → `[node] LEVEL msg key=value`, anything else as it is. */
function formatNodeLine(name: string, line: string): string {
  try {
    const o = JSON.parse(line) as Record<string, unknown>;
    const level = ({ 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' } as Record<number, string>)[Number(o['level'])] ?? 'LOG';
    const skip = new Set(['level', 'time', 'pid', 'hostname', 'node', 'msg', 'v']);
    const extra = Object.entries(o)
      .filter(([k]) => !skip.has(k))
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ');
    return `[${stamp()}] [${name}] ${level} ${String(o['msg'] ?? '')}${extra ? ` ${extra}` : ''}`;
  } catch {
    return `[${stamp()}] [${name}] ${line}`;
  }
}

function track(name: string, proc: ChildProcess, echo: boolean): Child {
  const c: Child = { name, proc, code: undefined, tail: [], exited: undefined as unknown as Promise<number | null> };
  let partial = '';
  const onData = (d: Buffer): void => {
    const lines = (partial + d.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) {
      if (!l.trim()) continue;
      c.tail.push(l);
      if (c.tail.length > 40) c.tail.shift();
      if (echo) warn(formatNodeLine(name, l));
    }
  };
  proc.stdout?.on('data', onData);
  proc.stderr?.on('data', onData);
  c.exited = new Promise((res) => {
    proc.on('error', (err) => {
      c.tail.push(String(err));
      c.code = -1;
      res(-1);
    });
    proc.on('exit', (code, sig) => {
      c.code = code ?? (sig ? -1 : null);
      if (!shuttingDown) warn(`[${stamp()}] [${name}] exited (${code ?? sig}) while the mesh was running${c.tail.length ? `; last output:\n  ${c.tail.slice(-10).join('\n  ')}` : ''}`);
      res(c.code);
    });
  });
  children.push(c);
  return c;
}

function natsInstalled(): boolean {
  const r = spawnSync('nats-server', ['--version'], { encoding: 'utf8' });
  return !r.error;
}

async function startNats(port: number | 'auto'): Promise<{ url: string; child: Child }> {
  const args = ['-a', '127.0.0.1', '-p', port === 'auto' ? '-1' : String(port), '--ports_file_dir', dir, '-js', '-sd', join(dir, 'jetstream'), '-n', 'meshcast-local'];
  // Own process group: a Ctrl-C in the terminal reaches the nodes (they drain) but not NATS,
  // which must outlive them so they can say bye and release their leases; we stop it last.
  const proc = spawn('nats-server', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const child = track('nats', proc, false);
  const t0 = Date.now();
  for (;;) {
    if (child.code !== undefined) throw new Error(`nats-server exited at start:\n  ${child.tail.slice(-8).join('\n  ')}${port !== 'auto' ? `\n(is port ${port} taken? try --nats-port auto)` : ''}`);
    const file = readdirSync(dir).find((f) => f.endsWith(`_${proc.pid}.ports`));
    if (file) {
      try {
        const ports = JSON.parse(readFileSync(join(dir, file), 'utf8')) as { nats?: string[] };
        const url = ports.nats?.[0];
        if (url && (await canConnect('127.0.0.1', Number(new URL(url).port)))) return { url, child };
      } catch {
        // being written
      }
    }
    if (Date.now() - t0 > 10_000) throw new Error('nats-server did not come up within 10 s');
    await sleep(50);
  }
}

function startNode(spec: NodeSpec, natsUrl: string, secret: string, logLevel: string): Child {
  const args = [
    ...NODE_CMD, 'node',
    '--node-id', spec.id, '--host', spec.host, '--roles', spec.roles,
    '--rtmp-port', String(spec.rtmpPort), '--http-port', String(spec.httpPort),
    '--admin-host', spec.host, '--admin-port', String(spec.adminPort),
    '--nats', natsUrl, '--mesh-secret', secret, '--log-level', logLevel,
  ];
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('MESHCAST_')) delete env[k]; // the flags say it all
  const proc = spawn(process.execPath, args, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  return track(spec.id, proc, true);
}

async function waitHealthy(spec: NodeSpec, child: Child, timeoutMs = 25_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (child.code !== undefined) throw new Error(`node ${spec.id} exited (${child.code}) at start:\n  ${child.tail.slice(-10).join('\n  ')}`);
    try {
      const r = await fetch(`http://${spec.host}:${spec.httpPort}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (r.ok) return;
    } catch {
      // not yet
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`node ${spec.id} did not answer /healthz within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

async function waitMesh(spec: NodeSpec, size: number, timeoutMs = 15_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    try {
      const r = await fetch(`http://${spec.host}:${spec.adminPort}/api/v1/mesh/nodes`, { signal: AbortSignal.timeout(1000) });
      const j = (await r.json()) as { nodes: Array<{ state: string }> };
      if (j.nodes.filter((n) => n.state === 'alive').length >= size) return;
    } catch {
      // not yet
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`the nodes did not see each other within ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}

/** SIGTERM (nodes drain), SIGKILL after the grace time; NATS last. Removes the temp dir. */
async function stopAll(graceMs = 12_000): Promise<void> {
  shuttingDown = true;
  const nodes = children.filter((c) => c.name !== 'nats');
  const nats = children.filter((c) => c.name === 'nats');
  const stop = async (cs: Child[], ms: number): Promise<void> => {
    await Promise.all(
      cs.map(async (c) => {
        if (c.code !== undefined) return;
        c.proc.kill('SIGTERM');
        const t = setTimeout(() => c.proc.kill('SIGKILL'), ms);
        await c.exited;
        clearTimeout(t);
      }),
    );
  };
  await stop(nodes, graceMs);
  await stop(nats, 5000);
  if (dir) rmSync(dir, { recursive: true, force: true });
}

/** Last resort (exception, process.exit): nothing we started may outlive us. */
function killAllSync(): void {
  for (const c of children) if (c.code === undefined) c.proc.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
}

interface Publisher {
  stop(): void;
}

/** A test pattern into live/demo, reconnecting if it drops; a synthetic source when ffmpeg is missing. */
async function startPublisher(url: string): Promise<Publisher> {
  let stopped = false;
  let current: { stop(): void } | undefined;
  let media: ReturnType<typeof loadFlvSource> | undefined;
  try {
    media = loadFlvSource(await ensureTestMedia(TEST_MEDIA));
  } catch (err) {
    warn(`(no ffmpeg test media: ${(err as Error).message.split('\n')[0]}; publishing a synthetic, undecodable source instead)`);
  }
  const loop = async (): Promise<void> => {
    while (!stopped && !shuttingDown) {
      try {
        if (media) {
          const p = await FlvLoopPublisher.start({ url, source: media, clockIntervalMs: 1000 });
          current = p;
          await new Promise<void>((res) => p.once('close', () => res()));
        } else {
          const p = await startSyntheticPublisher(url);
          current = p;
          await new Promise<void>((res) => p.client.once('close', () => res()));
        }
        // A Ctrl-C reaches the nodes too: an ingest node closing us then is no news.
        if (!stopped) await sleep(300);
        if (!stopped && !shuttingDown) warn(`[${stamp()}] [publisher] connection closed; reconnecting in 2 s`);
      } catch (err) {
        if (!stopped && !shuttingDown) warn(`[${stamp()}] [publisher] ${(err as Error).message}; retrying in 2 s`);
      }
      if (!stopped && !shuttingDown) await sleep(2000);
    }
  };
  void loop();
  return {
    stop() {
      stopped = true;
      current?.stop();
    },
  };
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: process.argv.slice(2),
      options: {
        ingest: { type: 'string' },
        playback: { type: 'string' },
        ports: { type: 'string' },
        'nats-port': { type: 'string' },
        publisher: { type: 'boolean' },
        'log-level': { type: 'string' },
        'mesh-secret': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    warn(`mesh: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    say(USAGE);
    return 0;
  }
  const count = (v: string | undefined, def: number, name: string): number => {
    const n = v === undefined ? def : Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 9) throw new Error(`--${name} must be 1..9`);
    return n;
  };
  let ingest: number;
  let playback: number;
  try {
    ingest = count(values.ingest, 2, 'ingest');
    playback = count(values.playback, 3, 'playback');
  } catch (err) {
    warn(`mesh: ${(err as Error).message}`);
    return 2;
  }
  const portsMode = values.ports ?? 'fixed';
  if (portsMode !== 'fixed' && portsMode !== 'auto') {
    warn('mesh: --ports is fixed or auto');
    return 2;
  }
  const natsPortArg = values['nats-port'] ?? (portsMode === 'auto' ? 'auto' : '4222');
  const natsPort = natsPortArg === 'auto' ? 'auto' : Number(natsPortArg);
  if (natsPort !== 'auto' && !(Number.isInteger(natsPort) && natsPort > 0 && natsPort < 65536)) {
    warn('mesh: --nats-port is a port number or auto');
    return 2;
  }
  if (!natsInstalled()) {
    warn(
      'mesh: nats-server is not installed (or not on PATH).\n' +
        '  Debian/Ubuntu:  sudo apt-get install nats-server\n' +
        '  elsewhere:      https://docs.nats.io/running-a-nats-service/introduction/installation (any 2.9+ release)',
    );
    return 1;
  }

  dir = mkdtempSync(join(tmpdir(), 'meshcast-mesh-'));
  process.on('exit', killAllSync);
  let publisher: Publisher | undefined;
  let firstSignalAt = 0;
  let resolveStop!: () => void;
  const stopRequested = new Promise<void>((r) => (resolveStop = r));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      shuttingDown = true;
      if (firstSignalAt === 0) {
        firstSignalAt = Date.now();
        resolveStop();
        return;
      }
      // One Ctrl-C can arrive twice (from the terminal and relayed by npm/tsx): only a later one forces.
      if (Date.now() - firstSignalAt < 1500) return;
      warn('mesh: killing everything now');
      killAllSync();
      process.exit(130);
    });
  }

  const secret = values['mesh-secret'] ?? randomBytes(12).toString('hex');
  // meshctl verifies and signs with the mesh secret; it reads it from a file, not from its command line.
  const secretFile = join(dir, 'mesh-secret');
  writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
  const logLevel = values['log-level'] ?? 'warn';
  try {
    const nats = await startNats(natsPort);
    const specs: NodeSpec[] = [];
    for (let i = 1; i <= ingest; i++) specs.push({ id: `ingest-${i}`, roles: 'ingest', host: `127.0.0.${10 + i}`, rtmpPort: 1935, httpPort: 8080, adminPort: 8081 });
    for (let i = 1; i <= playback; i++) specs.push({ id: `edge-${i}`, roles: 'playback', host: `127.0.0.${20 + i}`, rtmpPort: 1935, httpPort: 8080, adminPort: 8081 });
    if (portsMode === 'auto') {
      for (const s of specs) {
        s.rtmpPort = await freePort(s.host);
        s.httpPort = await freePort(s.host);
        s.adminPort = await freePort(s.host);
      }
    }
    const started = specs.map((s) => ({ spec: s, child: startNode(s, nats.url, secret, logLevel) }));
    const ready = Promise.all(started.map(({ spec, child }) => waitHealthy(spec, child))).then(() => waitMesh(specs[specs.length - 1]!, specs.length));
    const outcome = await Promise.race([ready.then(() => 'ready' as const), stopRequested.then(() => 'stop' as const)]);
    if (outcome === 'stop') {
      warn('mesh: interrupted while starting; stopping');
      await stopAll(5000);
      return 130;
    }
    const ing = specs.filter((s) => s.roles === 'ingest');
    const edges = specs.filter((s) => s.roles === 'playback');
    const rtmp = (s: NodeSpec): string => `rtmp://${s.host}:${s.rtmpPort}`;
    const http = (s: NodeSpec): string => `http://${s.host}:${s.httpPort}`;
    const admin = (s: NodeSpec): string => `http://${s.host}:${s.adminPort}`;
    if (values.publisher) publisher = await startPublisher(`${rtmp(ing[0]!)}/live/demo`);
    const key = values.publisher ? 'demo' : '<key>';
    const lines = [
      '',
      `meshcast mesh is up: ${plural(ing.length, 'ingest node')}, ${plural(edges.length, 'playback node')}, NATS ${nats.url}`,
      '',
      ...ing.map((s, i) => `  ${i === 0 ? 'publish  ' : '         '} ${rtmp(s)}/live/${key}    (${s.id})`),
      ...edges.map((s, i) => `  ${i === 0 ? 'play     ' : '         '} ${rtmp(s)}/live/${key}    ${http(s)}/live/${key}.flv    (${s.id})`),
      `  routed    ${http(edges[0]!)}/play/live/${key}.flv    (302 to the node placement picks)`,
      `  dashboard ${admin(edges[0]!)}/    (each node's admin listener: dashboard, API, /metrics)`,
      ...specs.map((s) => `  admin     ${admin(s)}/    (${s.id})`),
      `  meshctl   npx meshctl --nats ${nats.url} --mesh-secret-file ${secretFile} nodes`,
      '',
      values.publisher
        ? `  publishing a test pattern into live/demo on ${ing[0]!.id}; watch it with: ffplay ${rtmp(edges[0]!)}/live/demo`
        : `  try: ffmpeg -re -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine -c:v libx264 -g 60 -c:a aac -f flv ${rtmp(ing[0]!)}/live/demo\n       ffplay ${rtmp(edges[0]!)}/live/demo`,
      `  state in ${dir} (removed on exit); Ctrl-C stops everything`,
      '',
    ];
    say(lines.join('\n'));
    await stopRequested;
  } catch (err) {
    warn(`mesh: ${(err as Error).message}`);
    publisher?.stop();
    await stopAll(5000);
    return 1;
  }
  say(`[${stamp()}] stopping: draining the nodes, then NATS… (Ctrl-C again to kill at once)`);
  publisher?.stop();
  await stopAll();
  say(`[${stamp()}] stopped; removed ${dir}`);
  return 0;
}

function plural(n: number, w: string): string {
  return `${n} ${w}${n === 1 ? '' : 's'}`;
}

const code = await main();
process.exit(code);
