import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { checkWebrtcAtStart, checkWebrtcFfmpeg, checkWebrtcUdpPort } from '../src/webrtc/start-checks.ts';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { CONFIG_FLAGS, SETTINGS, appConfig, configWarnings, defaultConfig, envName, helpText, loadConfig, type NodeConfig, type Setting } from '../src/config.ts';
import { prettyStream } from '../src/log.ts';
import { configRefusal as refusal } from './refusals.ts';

const REPO = resolve(import.meta.dirname, '../../..');
const CLI = join(REPO, 'services/node/src/cli.ts');

function file(text: string): string {
  const p = join(mkdtempSync(join(tmpdir(), 'mc-cfg-')), 'c.yaml');
  writeFileSync(p, text);
  return p;
}


function at(cfg: NodeConfig, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown>)[k], cfg);
}

/** A mesh node that may start: the settings the fail-fast rules ask for. */
const MESH_OK = { node_id: 'm', host: '127.0.0.1', mesh: { nats: ['nats://127.0.0.1:4222'], mesh_secret: 's' } };

// ---------------------------------------------------------------- loading and precedence

test('defaults: RTMP on 1935, HTTP on 8080, admin on 127.0.0.1:8081, both roles, no mesh', () => {
  const c = loadConfig({ flags: { 'node-id': 'a' } });
  assert.equal(c.rtmp_port, 1935);
  assert.equal(c.http_port, 8080);
  assert.deepEqual(c.admin, { host: '127.0.0.1', port: 8081, token: '' });
  assert.deepEqual(c.roles, ['ingest', 'playback']);
  assert.equal(c.media.gop_cache, true);
  assert.deepEqual(c.mesh.nats, []);
  assert.equal(c.mesh.nats_replicas, 1);
  assert.equal(c.public_host, '127.0.0.1', 'without a mesh a wildcard host falls back to loopback');
  assert.match(defaultConfig().node_id, /^[A-Za-z0-9_-]{1,64}$/, 'the default node id is a valid one');
});

test('defaults < file < inline < environment < flags, setting by setting', () => {
  const f = file('node_id: fromfile\nrtmp_port: 1000\nhttp_port: 2000\nlog_level: debug\nmedia:\n  flush_ms: 7\n  gop_cache: false\napps:\n  live:\n    duplicate_publish: reject\n');
  const c = loadConfig({
    file: f,
    inline: { http_port: 2100, rtmp_port: 1050, apps: { live: { play_wait_ms: 5 } } },
    env: { MESHCAST_RTMP_PORT: '1100', MESHCAST_ROLES: 'playback', MESHCAST_MEDIA_FLUSH_MS: '9', MESHCAST_LOG_LEVEL: 'warn' },
    flags: { 'rtmp-port': '1200' },
  });
  assert.equal(c.node_id, 'fromfile', 'file over default');
  assert.equal(c.http_port, 2100, 'inline over file');
  assert.equal(c.rtmp_port, 1200, 'flag over environment over inline over file');
  assert.equal(c.log_level, 'warn', 'environment over file');
  assert.equal(c.media.flush_ms, 9, 'environment reaches nested settings');
  assert.equal(c.media.gop_cache, false, 'file value kept where nothing later sets it');
  assert.deepEqual(c.roles, ['playback']);
  assert.deepEqual(c.apps.live, { duplicate_publish: 'reject', play_wait_ms: 5 }, 'maps merge key by key across layers');
});

test('MESHCAST_CONFIG names the file; --config wins over it', () => {
  const a = file('node_id: a\n');
  const b = file('node_id: b\n');
  assert.equal(loadConfig({ env: { MESHCAST_CONFIG: a } }).node_id, 'a');
  assert.equal(loadConfig({ file: b, env: { MESHCAST_CONFIG: a } }).node_id, 'b');
});

test('an unknown key is an error that names it, nested or not', () => {
  assert.match(refusal({ file: file('rtmp_prot: 1\n') }), /unknown config key "rtmp_prot"/);
  assert.match(refusal({ file: file('media:\n  gop_cahce: true\n') }), /"media\.gop_cahce"/);
  assert.match(refusal({ file: file('apps:\n  live:\n    duplicate: reject\n') }), /"apps\.live\.duplicate"/);
  assert.match(refusal({ inline: { mesh: { nats_tls: { ca: 'x' } } } }), /"mesh\.nats_tls\.ca"/);
  assert.match(refusal({ flags: { 'rtmp-prot': '1' } }), /unknown flag --rtmp-prot/);
});

test('wrong types and bad values are named with the setting, its flag and its environment names', () => {
  const m = refusal({ file: file('rtmp_port: abc\n') });
  assert.match(m, /^config key "rtmp_port": expected a whole number/);
  assert.match(m, /got "abc"/);
  assert.match(m, /flag --rtmp-port/);
  assert.match(m, /MESHCAST_RTMP_PORT/);
  assert.match(refusal({ flags: { roles: 'ingest,edge' } }), /"roles\[1\]": roles are "ingest" and "playback"/);
  assert.match(refusal({ flags: { 'node-id': 'a.b' } }), /"node_id": must be 1-64 characters/);
  assert.match(refusal({ file: file('apps:\n  live:\n    duplicate_publish: sometimes\n') }), /"apps\.live\.duplicate_publish": expected "standby", "takeover" or "reject".*MESHCAST_APPS/);
  assert.match(refusal({ env: { MESHCAST_MEDIA_GOP_CACHE: 'yes' } }), /"media\.gop_cache": expected true or false, got "yes" \(env MESHCAST_MEDIA_GOP_CACHE\)/);
  assert.match(refusal({ file: file('- a\n- b\n') }), /expected a mapping of settings/);
  assert.match(refusal({ file: file('media: [1]\n') }), /"media": expected a mapping/);
});

test('a secret is never echoed in an error', () => {
  const m = refusal({ env: { MESHCAST_AUTH_APPS: 'hunter2-not-a-map' } });
  assert.match(m, /"auth\.apps"/);
  assert.doesNotMatch(m, /hunter2/);
});

test('per-app settings override the defaults', () => {
  const c = loadConfig({ file: file('node_id: x\napps:\n  live:\n    duplicate_publish: reject\n  "*":\n    play_not_found: reject\n') });
  assert.equal(appConfig(c, 'live').duplicate_publish, 'reject');
  assert.equal(appConfig(c, 'live').play_not_found, 'reject');
  assert.equal(appConfig(c, 'other').duplicate_publish, 'standby');
  assert.equal(appConfig(c, 'other').play_not_found, 'reject');
});

test('comma-separated NATS servers from the environment; map settings as YAML text', () => {
  const c = loadConfig({
    env: {
      MESHCAST_NATS: 'nats://127.0.0.1:4222, nats://127.0.0.1:4223',
      MESHCAST_NODE_ID: 'n',
      MESHCAST_MESH_SECRET: 's',
      MESHCAST_PUBLIC_HOST: '10.0.0.5',
      MESHCAST_APPS: '{live: {duplicate_publish: reject}}',
      MESHCAST_STATIC_RELAYS: '[{pull: "rtmp://origin.example/live/a", as: live/a}]',
    },
  });
  assert.deepEqual(c.mesh.nats, ['nats://127.0.0.1:4222', 'nats://127.0.0.1:4223']);
  assert.equal(c.public_host, '10.0.0.5');
  assert.equal(appConfig(c, 'live').duplicate_publish, 'reject');
  assert.deepEqual(c.static_relays, [{ kind: 'pull', url: 'rtmp://origin.example/live/a', app: 'live', stream: 'a' }]);
});

// ---------------------------------------------------------------- every setting reachable by env

/** A valid text value for a setting that differs from its default. */
function sampleText(s: Setting): string {
  const special: Record<string, string> = {
    node_id: 'other-id',
    host: '127.0.0.9',
    public_host: 'pub.example',
    'admin.host': '127.0.0.2',
    roles: 'playback',
    'mesh.nats': 'nats://127.0.0.1:4999',
    'mesh.subject_prefix': 'other',
    'mesh.nats_auth.nkey_seed': `SU${'A'.repeat(56)}`,
    'mesh.placement_load_factor': '1.5',
    apps: '{live: {duplicate_publish: reject}}',
    'app_defaults.record': '{segment_s: 10}',
    'app_defaults.vod': '{root: .}',
    'auth.apps': '{live: {publish: {keys: [k]}}}',
    static_relays: '[{push: live/a, to: "rtmp://out.example/app/a"}]',
    'webrtc.candidates': '203.0.113.7',
  };
  if (special[s.path]) return special[s.path]!;
  if (s.type === 'boolean') return String(!s.default);
  if (s.type === 'URL') return 'http://127.0.0.1:9/hook';
  if (s.type === 'string') return 'x1';
  const range = /^integer (\d+)\.\.(\d+)$/.exec(s.type);
  if (s.type === 'number' || range) {
    const d = s.default as number;
    return String(range && d + 2 > Number(range[2]) ? d - 2 : d + 2);
  }
  const choices = [...s.type.matchAll(/"([^"]+)"/g)].map((m) => m[1]!).filter((v) => v !== s.default);
  if (choices.length > 0) return choices[0]!;
  throw new Error(`no sample value for ${s.path} (${s.type})`);
}

/** Companions the rules ask for, so that one setting can change on its own. */
const PEM = file('-----BEGIN CERTIFICATE-----\n');
const BASE = { node_id: 'base', public_host: 'base.example', mesh: { mesh_secret: 'base-secret', nats_auth: { user: 'u', pass: 'p' }, nats_tls: { cert_file: PEM, key_file: PEM } } };

test('every setting is reachable by its MESHCAST_<PATH> name and by each alias', () => {
  assert.ok(SETTINGS.length > 60, 'the walk found the settings');
  const base = loadConfig({ inline: BASE });
  const seen = new Set<string>();
  for (const s of SETTINGS) {
    assert.equal(s.env[0], envName(s.path));
    assert.match(s.env[0]!, /^MESHCAST_[A-Z0-9_]+$/);
    for (const name of s.env) {
      assert.ok(!seen.has(name), `${name} names one setting only`);
      seen.add(name);
      const text = sampleText(s);
      const c = loadConfig({ inline: BASE, env: { [name]: text } });
      assert.notDeepEqual(at(c, s.path), at(base, s.path), `${name}=${text} changes ${s.path}`);
      if (s.type === 'number' || s.type.startsWith('integer')) assert.equal(at(c, s.path), Number(text), name);
      if (s.type === 'string' || s.type === 'URL') assert.equal(at(c, s.path), text, name);
      if (s.type === 'boolean') assert.equal(at(c, s.path), text === 'true', name);
    }
  }
});

test('today\'s short environment names and flags keep working', () => {
  const aliases: Record<string, string> = {
    MESHCAST_NATS: 'mesh.nats', MESHCAST_MESH_SECRET: 'mesh.mesh_secret', MESHCAST_NODE_ID: 'node_id', MESHCAST_HOST: 'host', MESHCAST_PUBLIC_HOST: 'public_host',
    MESHCAST_RTMP_PORT: 'rtmp_port', MESHCAST_HTTP_PORT: 'http_port', MESHCAST_ROLES: 'roles', MESHCAST_LOG_LEVEL: 'log_level', MESHCAST_RELAY_FANOUT: 'mesh.relay_fanout',
    MESHCAST_CAPACITY: 'mesh.capacity', MESHCAST_NATS_REPLICAS: 'mesh.nats_replicas', MESHCAST_ADMIN_HOST: 'admin.host', MESHCAST_ADMIN_PORT: 'admin.port', MESHCAST_ADMIN_TOKEN: 'admin.token',
    MESHCAST_TOKEN_SECRET: 'auth.token_secret', MESHCAST_WEBHOOK_SECRET: 'webhooks.secret', MESHCAST_NATS_USER: 'mesh.nats_auth.user', MESHCAST_NATS_PASS: 'mesh.nats_auth.pass',
    MESHCAST_NATS_TOKEN: 'mesh.nats_auth.token', MESHCAST_NATS_NKEY_SEED: 'mesh.nats_auth.nkey_seed', MESHCAST_NATS_CREDS: 'mesh.nats_auth.creds_file',
    MESHCAST_NATS_CA: 'mesh.nats_tls.ca_file', MESHCAST_SUBJECT_PREFIX: 'mesh.subject_prefix',
  };
  for (const [env, path] of Object.entries(aliases)) {
    assert.ok(SETTINGS.find((s) => s.path === path)?.env.includes(env), `${env} sets ${path}`);
  }
  const flags = ['node-id', 'host', 'public-host', 'rtmp-port', 'http-port', 'roles', 'log-level', 'nats', 'mesh-secret', 'relay-fanout', 'capacity', 'nats-replicas', 'admin-host', 'admin-port', 'webrtc-udp-port', 'webrtc-candidates'];
  assert.deepEqual([...CONFIG_FLAGS].sort(), [...flags].sort());
  const base = loadConfig({ inline: BASE });
  for (const s of SETTINGS.filter((x) => x.flag)) {
    const c = loadConfig({ inline: BASE, env: { [s.env[0]!]: sampleText(s) }, flags: { [s.flag!]: String(at(base, s.path)) } });
    assert.deepEqual(at(c, s.path), at(base, s.path), `--${s.flag} wins over ${s.env[0]}`);
  }
  assert.ok(!SETTINGS.some((s) => s.flag && s.secret && s.path !== 'mesh.mesh_secret'), 'no secret but the mesh secret (kept for compatibility) has a flag');
});

test('two names of one setting set to different values is an error; to the same value is fine', () => {
  assert.match(refusal({ env: { MESHCAST_NATS_REPLICAS: '3', MESHCAST_MESH_NATS_REPLICAS: '2' } }), /"mesh\.nats_replicas": MESHCAST_MESH_NATS_REPLICAS and MESHCAST_NATS_REPLICAS are both set/);
  assert.equal(loadConfig({ env: { MESHCAST_NATS_REPLICAS: '3', MESHCAST_MESH_NATS_REPLICAS: '3' } }).mesh.nats_replicas, 3);
});

// ---------------------------------------------------------------- fail fast

test('a mesh node without mesh.mesh_secret refuses to start, saying how to set it', () => {
  const m = refusal({ inline: { ...MESH_OK, mesh: { nats: ['nats://127.0.0.1:4222'] } } });
  assert.match(m, /"mesh\.mesh_secret": is required in mesh mode/);
  assert.match(m, /--mesh-secret/);
  assert.match(m, /MESHCAST_MESH_SECRET/);
  assert.equal(loadConfig({ inline: MESH_OK }).mesh.mesh_secret, 's');
});

test('a mesh node on a wildcard host needs public_host; without a mesh loopback is the fallback', () => {
  for (const host of ['0.0.0.0', '::', '']) {
    const m = refusal({ inline: { ...MESH_OK, host } });
    assert.match(m, /"public_host": host .* binds every interface/);
    assert.match(m, /--public-host/);
    assert.match(m, /MESHCAST_PUBLIC_HOST/);
  }
  assert.equal(loadConfig({ inline: { ...MESH_OK, host: '0.0.0.0', public_host: 'edge1' } }).public_host, 'edge1');
  assert.equal(loadConfig({ inline: MESH_OK }).public_host, '127.0.0.1', 'a mesh node on a specific address advertises it');
  assert.equal(loadConfig({ inline: { host: '::' } }).public_host, '127.0.0.1');
});

test('an admin listener beyond loopback needs admin.token', () => {
  const m = refusal({ flags: { 'admin-host': '0.0.0.0' } });
  assert.match(m, /"admin\.token": admin\.host "0\.0\.0\.0" is not a loopback address/);
  assert.match(m, /MESHCAST_ADMIN_TOKEN/);
  assert.equal(loadConfig({ flags: { 'admin-host': '0.0.0.0' }, env: { MESHCAST_ADMIN_TOKEN: 't' } }).admin.token, 't');
  for (const host of ['127.0.0.1', '127.3.4.5', '::1', 'localhost']) assert.equal(loadConfig({ flags: { 'admin-host': host } }).admin.host, host);
});

test('mesh timings that cannot work are refused', () => {
  assert.match(refusal({ inline: { mesh: { renew_ms: 10000, lease_ms: 10000 } } }), /"mesh\.renew_ms": 10000 must be less than mesh\.lease_ms/);
  assert.match(refusal({ inline: { mesh: { suspect_ms: 5000, dead_ms: 5000 } } }), /"mesh\.dead_ms": 5000 must be greater than mesh\.suspect_ms/);
  assert.match(refusal({ inline: { mesh: { heartbeat_ms: 3000 } } }), /"mesh\.suspect_ms": 3000 must be greater than mesh\.heartbeat_ms/);
  assert.match(refusal({ inline: { mesh: { heartbeat_ms: 0 } } }), /"mesh\.heartbeat_ms": must be greater than 0/);
  assert.match(refusal({ inline: { mesh: { relay_fanout: 0 } } }), /"mesh\.relay_fanout"/);
  assert.match(refusal({ inline: { mesh: { placement_load_factor: 0.5 } } }), /"mesh\.placement_load_factor"/);
});

test('two listeners on one port of one address are refused; port 0 and different addresses are fine', () => {
  assert.match(refusal({ flags: { 'rtmp-port': '9000', 'http-port': '9000' } }), /"http_port": 9000 is also rtmp_port/);
  assert.match(refusal({ flags: { 'http-port': '8081' } }), /"admin\.port": 8081 is also http_port on 0\.0\.0\.0/);
  assert.match(refusal({ flags: { host: '127.0.0.1', 'admin-port': '1935' } }), /"admin\.port": 1935 is also rtmp_port/);
  assert.equal(loadConfig({ flags: { host: '127.0.0.5', 'admin-port': '1935' } }).admin.port, 1935);
  assert.equal(loadConfig({ flags: { 'rtmp-port': '0', 'http-port': '0', 'admin-port': '0' } }).http_port, 0);
});

test('ranges: mesh.nats_replicas 1..5, ports up to 65535, a pino log level, a subject-safe prefix', () => {
  assert.match(refusal({ flags: { 'nats-replicas': '0' } }), /"mesh\.nats_replicas": expected a whole number 1\.\.5, got 0 \(flag --nats-replicas, env MESHCAST_NATS_REPLICAS or MESHCAST_MESH_NATS_REPLICAS\)/);
  assert.match(refusal({ flags: { 'nats-replicas': '6' } }), /"mesh\.nats_replicas"/);
  assert.match(refusal({ flags: { 'http-port': '70000' } }), /"http_port": expected a whole number 0\.\.65535/);
  assert.match(refusal({ flags: { 'log-level': 'verbose' } }), /"log_level": expected a pino level/);
  assert.match(refusal({ env: { MESHCAST_SUBJECT_PREFIX: 'a.b' } }), /"mesh\.subject_prefix"/);
});

test('NATS URLs must be nats:// or tls:// (host:port alone means nats://)', () => {
  assert.match(refusal({ inline: { ...MESH_OK, mesh: { ...MESH_OK.mesh, nats: ['http://127.0.0.1:4222'] } } }), /"mesh\.nats": "http:\/\/127\.0\.0\.1:4222" is not a NATS server URL/);
  assert.match(refusal({ inline: { ...MESH_OK, mesh: { ...MESH_OK.mesh, nats: ['ws://127.0.0.1:8080'] } } }), /not WebSocket/);
  assert.deepEqual(loadConfig({ inline: { ...MESH_OK, mesh: { ...MESH_OK.mesh, nats: ['127.0.0.1:4222', 'tls://nats.example:4443'] } } }).mesh.nats, ['127.0.0.1:4222', 'tls://nats.example:4443']);
});

test('NATS credential and TLS files are read at start in mesh mode', () => {
  const readable = file('-----BEGIN CERTIFICATE-----\n');
  for (const [path, key] of [['nats_auth', 'creds_file'], ['nats_auth', 'nkey_file'], ['nats_tls', 'ca_file']] as const) {
    const m = refusal({ inline: { ...MESH_OK, mesh: { ...MESH_OK.mesh, [path]: { [key]: '/nonexistent/x.pem' } } } });
    assert.match(m, new RegExp(`"mesh\\.${path}\\.${key}": cannot read /nonexistent/x\\.pem: ENOENT`));
    const ok = loadConfig({ inline: { ...MESH_OK, mesh: { ...MESH_OK.mesh, [path]: { [key]: readable } } } });
    assert.equal((ok.mesh[path] as Record<string, unknown>)[key], readable);
  }
  assert.match(refusal({ inline: { ...MESH_OK, mesh: { ...MESH_OK.mesh, nats_tls: { ca_file: tmpdir() } } } }), /"mesh\.nats_tls\.ca_file": cannot read/);
  assert.equal(loadConfig({ inline: { mesh: { nats_tls: { ca_file: '/nonexistent/x.pem' } } } }).mesh.nats_tls.ca_file, '/nonexistent/x.pem', 'no mesh: the file is never read');
});

test('a playback node with capacity 0 is refused; an ingest-only node may advertise 0', () => {
  assert.match(refusal({ flags: { capacity: '0' } }), /"mesh\.capacity": is 0 on a playback node/);
  assert.equal(loadConfig({ flags: { capacity: '0', roles: 'ingest' } }).mesh.capacity, 0);
});

// ---------------------------------------------------------------- warnings

test('several NATS servers with nats_replicas 1 is a warning, not an error', () => {
  const two = { ...MESH_OK, mesh: { ...MESH_OK.mesh, nats: ['nats://127.0.0.1:4222', 'nats://127.0.0.1:4223'] } };
  const w = configWarnings(loadConfig({ inline: two }));
  assert.equal(w.length, 1);
  assert.equal(w[0]!.setting, 'mesh.nats_replicas');
  assert.match(w[0]!.message, /lists 2 servers but mesh\.nats_replicas is 1.*--nats-replicas 3/);
  assert.deepEqual(configWarnings(loadConfig({ inline: two, flags: { 'nats-replicas': '3' } })), []);
  assert.deepEqual(configWarnings(loadConfig({ inline: MESH_OK })), []);
});

// ---------------------------------------------------------------- --help

test('--help is generated from the schema: every flag with its environment names and default', () => {
  const help = helpText();
  const flags = [...help.matchAll(/^ {2}(?:-h, )?--([a-z-]+)/gm)].map((m) => m[1]);
  assert.deepEqual(flags.sort(), [...CONFIG_FLAGS, 'config', 'help'].sort());
  for (const s of SETTINGS.filter((x) => x.flag)) {
    const block = help.slice(help.indexOf(`--${s.flag} `), help.indexOf('\n  --', help.indexOf(`--${s.flag} `) + 1));
    for (const env of s.env) assert.ok(block.includes(env), `--${s.flag} mentions ${env}`);
    if (!s.secret) assert.ok(block.includes(`default ${s.defaultShown}`), `--${s.flag} shows its default`);
    else assert.ok(!block.includes('default'), `--${s.flag} shows no default: it is a secret`);
  }
  assert.match(help.replace(/\s+/g, ' '), /docs\/configuration\.md/);
  assert.match(help, /MESHCAST_/);
  assert.ok(help.split('\n').every((l) => l.length <= 80), 'fits a terminal');
});

// ---------------------------------------------------------------- the real CLI

function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MESHCAST_')));
  const p = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: REPO, env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((res) => p.on('exit', (code) => res({ code, stdout, stderr })));
}

test('the real CLI: a mesh node without a secret exits 2 with one line naming mesh_secret', async () => {
  const r = await runCli(['node', '--nats', 'nats://127.0.0.1:4222', '--host', '127.0.0.1']);
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /^meshcast node: config key "mesh\.mesh_secret".*--mesh-secret.*MESHCAST_MESH_SECRET/);
});

test('the real CLI: a WebRTC UDP port another process holds stops the start with one line naming webrtc.udp_port', async () => {
  // libdatachannel binds the port only on the first WHEP/WHIP request; without the check at start
  // the node would run and fail every WebRTC request.
  const holder = createSocket('udp4');
  await new Promise<void>((res) => holder.bind(0, '127.0.0.1', res));
  const port = holder.address().port;
  try {
    const r = await runCli(['node', '--host', '127.0.0.1', '--rtmp-port', '0', '--http-port', '0', '--admin-port', '0'], { MESHCAST_WEBRTC_UDP_PORT: String(port) });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const fatal = r.stdout.trimEnd().split('\n').filter((l) => l.includes('"level":60'));
    assert.equal(fatal.length, 1, r.stdout);
    const msg = (JSON.parse(fatal[0]!) as { msg: string }).msg;
    assert.match(msg, new RegExp(`config key "webrtc\\.udp_port": UDP port ${port} on 127\\.0\\.0\\.1 cannot be bound`));
    assert.doesNotMatch(r.stdout, /"stack"/, 'one line, no stack');
  } finally {
    holder.close();
  }
  // The same port once free (and WebRTC off with the port still held) starts.
  const held = createSocket('udp4');
  await new Promise<void>((res) => held.bind(port, '127.0.0.1', res));
  try {
    await assert.doesNotReject(checkWebrtcUdpPort(loadConfig({ flags: { host: '127.0.0.1' }, env: { MESHCAST_WEBRTC_UDP_PORT: String(port), MESHCAST_WEBRTC_ENABLED: 'false' } })));
    await assert.rejects(checkWebrtcUdpPort(loadConfig({ flags: { host: '127.0.0.1' }, env: { MESHCAST_WEBRTC_UDP_PORT: String(port) } }), 2, 1), /webrtc\.udp_port/);
  } finally {
    held.close();
  }
  await assert.doesNotReject(checkWebrtcUdpPort(loadConfig({ flags: { host: '127.0.0.1' }, env: { MESHCAST_WEBRTC_UDP_PORT: String(port) } })));
});

test('the real CLI: an ffmpeg that is missing, or lacks libopus, stops the start with one line naming webrtc.ffmpeg', async () => {
  const r = await runCli(['node', '--host', '127.0.0.1', '--rtmp-port', '0', '--http-port', '0', '--admin-port', '0'], { MESHCAST_WEBRTC_FFMPEG: '/nonexistent/ffmpeg' });
  assert.equal(r.code, 1, r.stdout + r.stderr);
  const fatal = r.stdout.trimEnd().split('\n').filter((l) => l.includes('"level":60'));
  assert.equal(fatal.length, 1, r.stdout);
  assert.match((JSON.parse(fatal[0]!) as { msg: string }).msg, /config key "webrtc\.ffmpeg": "\/nonexistent\/ffmpeg" cannot be run \(not found\).*webrtc\.enabled: false/);
  // An ffmpeg without libopus (a minimal build): refused, naming the encoder.
  const dir = mkdtempSync(join(tmpdir(), 'meshcast-ffmpeg-'));
  const fake = join(dir, 'ffmpeg');
  writeFileSync(fake, '#!/bin/sh\nprintf "Encoders:\\n ------\\n A..... aac                  AAC (Advanced Audio Coding)\\n"\n', { mode: 0o755 });
  await assert.rejects(checkWebrtcFfmpeg(fake), /webrtc\.ffmpeg.*has no libopus encoder/);
  // The machine's ffmpeg (the tests need Debian's) has both; WebRTC off needs none.
  await assert.doesNotReject(checkWebrtcFfmpeg('ffmpeg'));
  await assert.doesNotReject(checkWebrtcAtStart(loadConfig({ flags: { host: '127.0.0.1' }, env: { MESHCAST_WEBRTC_FFMPEG: '/nonexistent/ffmpeg', MESHCAST_WEBRTC_ENABLED: 'false' } })));
});

test('the real CLI: --help prints the generated help and exits 0', async () => {
  const r = await runCli(['node', '--help']);
  assert.equal(r.code, 0);
  assert.equal(r.stdout, helpText());
});

test('the real CLI: logs are JSON lines with the node id when stdout is not a terminal', async () => {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MESHCAST_')));
  const p = spawn(process.execPath, ['--import', 'tsx', CLI, 'node', '--node-id', 'jsonlog', '--host', '127.0.0.1', '--rtmp-port', '0', '--http-port', '0', '--admin-port', '0'], { cwd: REPO, env: clean, stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const first = await new Promise<string>((res, rej) => {
      let buf = '';
      p.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('\n')) res(buf.slice(0, buf.indexOf('\n')));
      });
      p.on('exit', (code) => rej(new Error(`node exited ${code} before logging`)));
    });
    const line = JSON.parse(first) as Record<string, unknown>;
    assert.equal(line.node, 'jsonlog');
    assert.equal(typeof line.msg, 'string');
  } finally {
    p.kill('SIGTERM');
    await new Promise((res) => (p.exitCode !== null ? res(null) : p.on('exit', res)));
  }
});

test('the real CLI: a config warning is logged once, at warn level, before the node starts', async () => {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MESHCAST_')));
  // Nothing listens on port 9 (discard): the node fails to connect after the warning; only the warning matters here.
  const args = ['node', '--node-id', 'warnlog', '--host', '127.0.0.1', '--rtmp-port', '0', '--http-port', '0', '--admin-port', '0', '--nats', 'nats://127.0.0.1:9,nats://127.0.0.2:9'];
  const p = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: REPO, env: { ...clean, MESHCAST_MESH_SECRET: 's' }, stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const first = await new Promise<string>((res, rej) => {
      let buf = '';
      p.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('\n')) res(buf.slice(0, buf.indexOf('\n')));
      });
      p.on('exit', (code) => rej(new Error(`node exited ${code} before logging: ${buf}`)));
    });
    const line = JSON.parse(first) as Record<string, unknown>;
    assert.equal(line.level, 40);
    assert.equal(line.setting, 'mesh.nats_replicas');
    assert.match(String(line.msg), /lists 2 servers/);
  } finally {
    p.kill('SIGKILL');
    await new Promise((res) => (p.exitCode !== null || p.signalCode !== null ? res(null) : p.on('exit', res)));
  }
});

test('the real CLI: on a terminal (a pty from util-linux script) log lines are readable, not JSON', async () => {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MESHCAST_')));
  const cmd = [process.execPath, '--import', 'tsx', CLI, 'node', '--node-id', 'ttylog', '--host', '127.0.0.1', '--rtmp-port', '0', '--http-port', '0', '--admin-port', '0'].join(' ');
  // detached: script, its shell and the node form one process group, stopped together below.
  const p = spawn('script', ['-qec', cmd, '/dev/null'], { cwd: REPO, env: clean, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  try {
    const out = await new Promise<string>((res, rej) => {
      let buf = '';
      p.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('node started')) res(buf);
      });
      p.on('exit', (code) => rej(new Error(`script exited ${code}: ${buf}`)));
    });
    const line = out.split(/\r?\n/).find((l) => l.includes('node started'))!;
    assert.match(line, /^\[\d\d:\d\d:\d\d\.\d{3}\] .*INFO.*ttylog: node started/);
    assert.throws(() => JSON.parse(line) as unknown);
  } finally {
    process.kill(-p.pid!, 'SIGTERM');
    await new Promise((res) => (p.exitCode !== null ? res(null) : p.on('exit', res)));
  }
});

test('terminal log lines are readable and carry node, app/stream and session', () => {
  let out = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  const log = pino({ base: { node: 'n1' } }, prettyStream(sink));
  log.child({ app: 'live', stream: 'cam', session: 's7' }).warn({ bytes: 3 }, 'viewer slow');
  const first = out.split('\n')[0]!;
  assert.match(first, /WARN.*n1 live\/cam s7: viewer slow/);
  assert.throws(() => JSON.parse(first) as unknown);
  assert.match(out, /bytes: 3/);
});
