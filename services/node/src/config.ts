/**
 * Node configuration: defaults < YAML file < MESHCAST_* environment < command-line flags.
 * Every key is declared in a schema so an unknown key (a typo in an operator's file)
 * is an error that names it, rather than a setting silently ignored.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';

export type Role = 'ingest' | 'playback';
export type DuplicatePublish = 'takeover' | 'reject';
export type PlayNotFound = 'wait' | 'reject';
export type OnHookTimeout = 'refuse' | 'allow';

export interface AppConfig {
  /** What a second publish of a live key does: take the stream over (publisher reconnect) or be refused with BadName. */
  duplicate_publish: DuplicatePublish;
  /** A play of a key nobody publishes: wait for the publisher, or answer NetStream.Play.StreamNotFound. */
  play_not_found: PlayNotFound;
  /** How long a waiting viewer waits for a publisher before it is told StreamNotFound and closed (0 = forever). */
  play_wait_ms: number;
  allow_publish: boolean;
  allow_play: boolean;
}

export interface LimitsConfig {
  max_connections: number;
  max_connections_per_ip: number;
  handshake_timeout_ms: number;
  first_command_timeout_ms: number;
  idle_publisher_timeout_ms: number;
  max_message_bytes: number;
  max_chunk_size: number;
  max_stream_name_bytes: number;
  /** Publishers this node takes before it redirects new ones to another ingest node. */
  max_publishers: number;
  /** New connections per second one address may open (token bucket; 0 = no rate limit). */
  connection_rate_per_ip: number;
  /** How many connections one address may open at once before the rate applies (bucket size). */
  connection_burst_per_ip: number;
}

/** How one action (publish or play) of an app is authorised; see docs/security.md. */
export interface AuthRule {
  /** Explicitly open: no credential needed (a rule that names no credential must say so). */
  public: boolean;
  /** Static keys valid for any stream of the app, presented as `?key=…`. */
  keys: string[];
  /** Static keys valid for one stream only: stream name → keys. */
  stream_keys: Record<string, string[]>;
  /** Accept HMAC-signed expiring tokens (`?exp=<unix s>&sig=<hex>`). */
  tokens: boolean;
}

export interface AppAuthConfig {
  /** Overrides auth.token_secret for this app. */
  token_secret: string;
  publish?: AuthRule;
  play?: AuthRule;
}

export interface AuthConfig {
  /** HMAC-SHA256 secret for signed tokens. */
  token_secret: string;
  /** Per-app rules; "*" applies to apps (or actions) not listed. */
  apps: Record<string, AppAuthConfig>;
}

export interface WebhooksConfig {
  on_publish: string;
  on_play: string;
  on_publish_done: string;
  on_play_done: string;
  timeout_ms: number;
  /** What a hook that does not answer (timeout, connection refused) means. */
  on_timeout: OnHookTimeout;
  /** When set, each hook request carries `X-Meshcast-Signature: sha256=<hex HMAC of the body>`. */
  secret: string;
}

export interface NatsAuthConfig {
  user: string;
  pass: string;
  token: string;
  nkey_seed: string;
  nkey_file: string;
  creds_file: string;
}

export interface NatsTlsConfig {
  /** Require TLS even with no files given (server certificate checked against the system CAs). */
  enabled: boolean;
  ca_file: string;
  cert_file: string;
  key_file: string;
  handshake_first: boolean;
}

export interface MediaConfig {
  gop_cache: boolean;
  gop_cache_max_bytes: number;
  /**
   * Frames that arrive within this window go out to each viewer in one write. One video frame
   * interval (33 ms at 30 fps) roughly halves the writes per viewer against writing every
   * frame, which is what keeps fan-out CPU per viewer under nginx-rtmp's (see the benchmark).
   */
  flush_ms: number;
  out_chunk_size: number;
  viewer_queue_bytes: number;
  viewer_max_lag_ms: number;
}

export interface MeshConfig {
  nats: string[];
  subject_prefix: string;
  mesh_secret: string;
  heartbeat_ms: number;
  suspect_ms: number;
  dead_ms: number;
  lease_ms: number;
  renew_ms: number;
  relay_fanout: number;
  relay_linger_ms: number;
  relay_stall_ms: number;
  capacity: number;
  /** Bounded-load factor c of viewer placement (HAProxy suggests 1.25-2.0). */
  placement_load_factor: number;
  /** Redirect RTMP players to the node placement chose (clients that follow ex.redirect); otherwise serve here. */
  rtmp_redirect: boolean;
  nats_auth: NatsAuthConfig;
  nats_tls: NatsTlsConfig;
  /** Replicas of the mesh's KV buckets and event stream (1 for one NATS server; 3 on a 3-server JetStream cluster). */
  nats_replicas: number;
}

export interface HlsConfig {
  /** Segments are cut at the first keyframe at or after this many seconds. */
  target_duration_s: number;
  /** Segments listed in the live playlist. */
  playlist_length: number;
  /** A stream's segmenter stops after this long without playlist or segment requests. */
  idle_timeout_s: number;
  /** Bytes of segments one stream may hold in memory (the window plus the segment being cut). */
  max_stream_bytes: number;
}

/**
 * The admin listener: kick, drain, session and stream lists, the mesh API, metrics and the
 * dashboard. Loopback-only by default; a token is required before it may bind anything wider.
 */
export interface AdminConfig {
  host: string;
  port: number;
  /** Bearer token every admin request must carry (`Authorization: Bearer …`); "" = none (loopback only). */
  token: string;
}

export interface NodeConfig {
  node_id: string;
  host: string;
  /** Address other nodes and redirected viewers use to reach this node (defaults to host). */
  public_host: string;
  rtmp_port: number;
  http_port: number;
  roles: Role[];
  log_level: string;
  admin: AdminConfig;
  limits: LimitsConfig;
  media: MediaConfig;
  mesh: MeshConfig;
  hls: HlsConfig;
  apps: Record<string, Partial<AppConfig>>;
  /** Interop with servers outside the mesh: pull an RTMP URL in as a mesh stream, push a mesh stream out. */
  static_relays: StaticRelayConfig[];
  app_defaults: AppConfig;
  auth: AuthConfig;
  webhooks: WebhooksConfig;
}

export type StaticRelayConfig =
  | { kind: 'pull'; url: string; app: string; stream: string }
  | { kind: 'push'; app: string; stream: string; url: string };

export class ConfigError extends Error {
  readonly code = 'CONFIG';
}

export function defaultConfig(): NodeConfig {
  return {
    node_id: `${hostname()}-${process.pid}`,
    host: '0.0.0.0',
    public_host: '',
    rtmp_port: 1935,
    http_port: 8080,
    roles: ['ingest', 'playback'],
    log_level: 'info',
    admin: { host: '127.0.0.1', port: 8081, token: '' },
    limits: {
      max_connections: 20000,
      max_connections_per_ip: 5000,
      handshake_timeout_ms: 5000,
      first_command_timeout_ms: 10000,
      idle_publisher_timeout_ms: 15000,
      max_message_bytes: 8 * 1024 * 1024,
      max_chunk_size: 65536,
      max_stream_name_bytes: 1024,
      max_publishers: 500,
      connection_rate_per_ip: 0,
      connection_burst_per_ip: 20,
    },
    media: {
      gop_cache: true,
      gop_cache_max_bytes: 16 * 1024 * 1024,
      flush_ms: 33,
      out_chunk_size: 4096,
      viewer_queue_bytes: 4 * 1024 * 1024,
      viewer_max_lag_ms: 8000,
    },
    mesh: {
      nats: [],
      subject_prefix: 'meshcast',
      mesh_secret: '',
      heartbeat_ms: 1000,
      suspect_ms: 3000,
      dead_ms: 5000,
      lease_ms: 10000,
      renew_ms: 3000,
      relay_fanout: 8,
      relay_linger_ms: 10000,
      relay_stall_ms: 2000,
      capacity: 2000,
      placement_load_factor: 1.25,
      rtmp_redirect: false,
      nats_auth: { user: '', pass: '', token: '', nkey_seed: '', nkey_file: '', creds_file: '' },
      nats_tls: { enabled: false, ca_file: '', cert_file: '', key_file: '', handshake_first: false },
      nats_replicas: 1,
    },
    hls: {
      target_duration_s: 2,
      playlist_length: 6,
      idle_timeout_s: 30,
      max_stream_bytes: 64 * 1024 * 1024,
    },
    apps: {},
    static_relays: [],
    app_defaults: {
      duplicate_publish: 'takeover',
      play_not_found: 'wait',
      play_wait_ms: 0,
      allow_publish: true,
      allow_play: true,
    },
    auth: { token_secret: '', apps: {} },
    webhooks: { on_publish: '', on_play: '', on_publish_done: '', on_play_done: '', timeout_ms: 2000, on_timeout: 'refuse', secret: '' },
  };
}

type Kind = 'string' | 'number' | 'boolean' | 'roles' | 'strings' | 'duplicate' | 'notfound' | 'keys' | 'keymap' | 'ontimeout' | 'url';
type Schema = { [key: string]: Kind | Schema };

const APP_SCHEMA: Schema = {
  duplicate_publish: 'duplicate',
  play_not_found: 'notfound',
  play_wait_ms: 'number',
  allow_publish: 'boolean',
  allow_play: 'boolean',
};

const AUTH_RULE_SCHEMA: Schema = {
  public: 'boolean',
  keys: 'keys',
  stream_keys: 'keymap',
  tokens: 'boolean',
};

const SCHEMA: Schema = {
  node_id: 'string',
  host: 'string',
  public_host: 'string',
  rtmp_port: 'number',
  http_port: 'number',
  roles: 'roles',
  log_level: 'string',
  admin: { host: 'string', port: 'number', token: 'string' },
  limits: {
    max_connections: 'number',
    max_connections_per_ip: 'number',
    handshake_timeout_ms: 'number',
    first_command_timeout_ms: 'number',
    idle_publisher_timeout_ms: 'number',
    max_message_bytes: 'number',
    max_chunk_size: 'number',
    max_stream_name_bytes: 'number',
    max_publishers: 'number',
    connection_rate_per_ip: 'number',
    connection_burst_per_ip: 'number',
  },
  media: {
    gop_cache: 'boolean',
    gop_cache_max_bytes: 'number',
    flush_ms: 'number',
    out_chunk_size: 'number',
    viewer_queue_bytes: 'number',
    viewer_max_lag_ms: 'number',
  },
  mesh: {
    nats: 'strings',
    subject_prefix: 'string',
    mesh_secret: 'string',
    heartbeat_ms: 'number',
    suspect_ms: 'number',
    dead_ms: 'number',
    lease_ms: 'number',
    renew_ms: 'number',
    relay_fanout: 'number',
    relay_linger_ms: 'number',
    relay_stall_ms: 'number',
    capacity: 'number',
    placement_load_factor: 'number',
    rtmp_redirect: 'boolean',
    nats_auth: { user: 'string', pass: 'string', token: 'string', nkey_seed: 'string', nkey_file: 'string', creds_file: 'string' },
    nats_tls: { enabled: 'boolean', ca_file: 'string', cert_file: 'string', key_file: 'string', handshake_first: 'boolean' },
    nats_replicas: 'number',
  },
  hls: {
    target_duration_s: 'number',
    playlist_length: 'number',
    idle_timeout_s: 'number',
    max_stream_bytes: 'number',
  },
  app_defaults: APP_SCHEMA,
  // auth.apps is a mapping of app name to { token_secret, publish, play }: merged by mergeAuthApps.
  auth: { token_secret: 'string' },
  webhooks: { on_publish: 'url', on_play: 'url', on_publish_done: 'url', on_play_done: 'url', timeout_ms: 'number', on_timeout: 'ontimeout', secret: 'string' },
};

function coerce(kind: Kind, value: unknown, path: string): unknown {
  const fail = (want: string): never => {
    throw new ConfigError(`config key "${path}": expected ${want}, got ${JSON.stringify(value)}`);
  };
  switch (kind) {
    case 'string':
      if (typeof value === 'number') return String(value);
      if (typeof value !== 'string') fail('a string');
      return value;
    case 'number': {
      const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
      if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) fail('a non-negative number');
      return n;
    }
    case 'boolean':
      if (value === 'true' || value === '1') return true;
      if (value === 'false' || value === '0') return false;
      if (typeof value !== 'boolean') fail('true or false');
      return value;
    case 'strings': {
      const list = typeof value === 'string' ? value.split(',') : value;
      if (!Array.isArray(list) || list.some((s) => typeof s !== 'string')) fail('a list of strings');
      return (list as string[]).map((s) => s.trim()).filter((s) => s !== '');
    }
    case 'roles': {
      const list = coerce('strings', value, path) as string[];
      for (const r of list) if (r !== 'ingest' && r !== 'playback') fail('roles from "ingest", "playback"');
      if (list.length === 0) fail('at least one role');
      return list;
    }
    case 'duplicate':
      if (value !== 'takeover' && value !== 'reject') fail('"takeover" or "reject"');
      return value;
    case 'notfound':
      if (value !== 'wait' && value !== 'reject') fail('"wait" or "reject"');
      return value;
    case 'ontimeout':
      if (value !== 'refuse' && value !== 'allow') fail('"refuse" or "allow"');
      return value;
    case 'keys': {
      // Keys are secrets: never split on commas, never trimmed; YAML may read a numeric key as a number.
      const list = Array.isArray(value) ? value : [value];
      if (list.some((k) => (typeof k !== 'string' && typeof k !== 'number') || String(k) === '')) fail('a list of non-empty keys');
      return list.map(String);
    }
    case 'keymap': {
      if (value == null) return {};
      if (typeof value !== 'object' || Array.isArray(value)) fail('a mapping of stream name to key(s)');
      const out: Record<string, string[]> = {};
      for (const [stream, keys] of Object.entries(value as Record<string, unknown>)) out[stream] = coerce('keys', keys, `${path}.${stream}`) as string[];
      return out;
    }
    case 'url': {
      const s = coerce('string', value, path) as string;
      if (s === '') return s;
      let u: URL | undefined;
      try {
        u = new URL(s);
      } catch {
        u = undefined;
      }
      if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) fail('an http:// or https:// URL (or "" for none)');
      return s;
    }
  }
}

function defaultAuthRule(): AuthRule {
  return { public: false, keys: [], stream_keys: {}, tokens: false };
}

/** `auth.apps`: app name → { token_secret, publish, play }. */
function mergeAuthApps(target: Record<string, AppAuthConfig>, value: unknown): void {
  if (value == null) return;
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError('config key "auth.apps": expected a mapping of app name to auth settings');
  for (const [app, settings] of Object.entries(value as Record<string, unknown>)) {
    const base = `auth.apps.${app}`;
    const into = (target[app] ??= { token_secret: '' });
    if (settings == null) continue;
    if (typeof settings !== 'object' || Array.isArray(settings)) throw new ConfigError(`config key "${base}": expected a mapping`);
    for (const [key, v] of Object.entries(settings as Record<string, unknown>)) {
      if (key === 'publish' || key === 'play') {
        const rule = (into[key] ??= defaultAuthRule());
        merge(rule as unknown as Record<string, unknown>, v, AUTH_RULE_SCHEMA, `${base}.${key}`);
      } else if (key === 'token_secret') {
        into.token_secret = coerce('string', v, `${base}.token_secret`) as string;
      } else {
        throw new ConfigError(`unknown config key "${base}.${key}"`);
      }
    }
  }
}

function merge(target: Record<string, unknown>, input: unknown, schema: Schema, prefix: string): void {
  if (input == null) return;
  if (typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError(`config key "${prefix || '(root)'}": expected a mapping`);
  }
  for (const [key, value] of Object.entries(input as Record<string, unknown>)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (prefix === '' && key === 'apps') {
      if (value == null) continue;
      if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError('config key "apps": expected a mapping of app name to settings');
      const apps = target.apps as Record<string, Record<string, unknown>>;
      for (const [app, settings] of Object.entries(value as Record<string, unknown>)) {
        const into = (apps[app] ??= {});
        merge(into, settings, APP_SCHEMA, `apps.${app}`);
      }
      continue;
    }
    if (prefix === '' && key === 'static_relays') {
      (target.static_relays as StaticRelayConfig[]).push(...parseStaticRelays(value));
      continue;
    }
    if (prefix === 'auth' && key === 'apps') {
      mergeAuthApps((target as unknown as AuthConfig).apps, value);
      continue;
    }
    const kind = schema[key];
    if (kind === undefined) throw new ConfigError(`unknown config key "${path}"`);
    if (typeof kind === 'object') {
      merge(target[key] as Record<string, unknown>, value, kind, path);
    } else {
      target[key] = coerce(kind, value, path);
    }
  }
}

/** Flags and environment variables that map onto config paths. */
const OVERRIDES: Array<{ flag: string; env: string; path: string }> = [
  { flag: 'node-id', env: 'MESHCAST_NODE_ID', path: 'node_id' },
  { flag: 'host', env: 'MESHCAST_HOST', path: 'host' },
  { flag: 'public-host', env: 'MESHCAST_PUBLIC_HOST', path: 'public_host' },
  { flag: 'rtmp-port', env: 'MESHCAST_RTMP_PORT', path: 'rtmp_port' },
  { flag: 'http-port', env: 'MESHCAST_HTTP_PORT', path: 'http_port' },
  { flag: 'roles', env: 'MESHCAST_ROLES', path: 'roles' },
  { flag: 'log-level', env: 'MESHCAST_LOG_LEVEL', path: 'log_level' },
  { flag: 'nats', env: 'MESHCAST_NATS', path: 'mesh.nats' },
  { flag: 'mesh-secret', env: 'MESHCAST_MESH_SECRET', path: 'mesh.mesh_secret' },
  { flag: 'relay-fanout', env: 'MESHCAST_RELAY_FANOUT', path: 'mesh.relay_fanout' },
  { flag: 'capacity', env: 'MESHCAST_CAPACITY', path: 'mesh.capacity' },
  { flag: 'nats-replicas', env: 'MESHCAST_NATS_REPLICAS', path: 'mesh.nats_replicas' },
  { flag: 'admin-host', env: 'MESHCAST_ADMIN_HOST', path: 'admin.host' },
  { flag: 'admin-port', env: 'MESHCAST_ADMIN_PORT', path: 'admin.port' },
];

export const CONFIG_FLAGS = OVERRIDES.map((o) => o.flag);

/** Secrets come from the environment (or the file), never from flags that show up in `ps`. */
const ENV_ONLY: Array<{ env: string; path: string }> = [
  { env: 'MESHCAST_TOKEN_SECRET', path: 'auth.token_secret' },
  { env: 'MESHCAST_ADMIN_TOKEN', path: 'admin.token' },
  { env: 'MESHCAST_WEBHOOK_SECRET', path: 'webhooks.secret' },
  { env: 'MESHCAST_NATS_USER', path: 'mesh.nats_auth.user' },
  { env: 'MESHCAST_NATS_PASS', path: 'mesh.nats_auth.pass' },
  { env: 'MESHCAST_NATS_TOKEN', path: 'mesh.nats_auth.token' },
  { env: 'MESHCAST_NATS_NKEY_SEED', path: 'mesh.nats_auth.nkey_seed' },
  { env: 'MESHCAST_NATS_CREDS', path: 'mesh.nats_auth.creds_file' },
];

function setPath(cfg: NodeConfig, path: string, raw: unknown): void {
  const parts = path.split('.');
  const leaf = parts.pop()!;
  let schema: Schema = SCHEMA;
  let obj = cfg as unknown as Record<string, unknown>;
  for (const p of parts) {
    schema = schema[p] as Schema;
    obj = obj[p] as Record<string, unknown>;
  }
  obj[leaf] = coerce(schema[leaf] as Kind, raw, path);
}

export interface LoadConfigInput {
  file?: string | undefined;
  flags?: Record<string, string | undefined>;
  env?: NodeJS.ProcessEnv;
  /** Extra settings applied after the file (used by tests and the in-process launcher). */
  inline?: unknown;
}

/** What each loaded config was loaded from, so SIGHUP can load it again the same way. */
const SOURCES = new WeakMap<NodeConfig, LoadConfigInput>();

export function configSource(cfg: NodeConfig): LoadConfigInput | undefined {
  return SOURCES.get(cfg);
}

export function loadConfig(input: LoadConfigInput = {}): NodeConfig {
  const cfg = defaultConfig();
  const env = input.env ?? {};
  const file = input.file ?? env.MESHCAST_CONFIG;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
    }
    let doc: unknown;
    try {
      doc = parseYaml(text);
    } catch (err) {
      throw new ConfigError(`config file ${file} is not valid YAML: ${(err as Error).message}`);
    }
    merge(cfg as unknown as Record<string, unknown>, doc, SCHEMA, '');
  }
  if (input.inline !== undefined) merge(cfg as unknown as Record<string, unknown>, input.inline, SCHEMA, '');
  for (const o of OVERRIDES) {
    const v = env[o.env];
    if (v !== undefined && v !== '') setPath(cfg, o.path, v);
  }
  for (const o of ENV_ONLY) {
    const v = env[o.env];
    if (v !== undefined && v !== '') setPath(cfg, o.path, v);
  }
  for (const o of OVERRIDES) {
    const v = input.flags?.[o.flag];
    if (v !== undefined) setPath(cfg, o.path, v);
  }
  if (!cfg.public_host) cfg.public_host = cfg.host === '0.0.0.0' || cfg.host === '::' ? '127.0.0.1' : cfg.host;
  validate(cfg);
  SOURCES.set(cfg, { ...input });
  return cfg;
}

function validate(cfg: NodeConfig): void {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(cfg.node_id)) {
    throw new ConfigError(`config key "node_id": must be 1-64 characters of [A-Za-z0-9_-] (it becomes a NATS subject token), got ${JSON.stringify(cfg.node_id)}`);
  }
  const oc = cfg.media.out_chunk_size;
  if (oc < 128 || oc > 65536) throw new ConfigError('config key "media.out_chunk_size": must be 128..65536');
  if (cfg.limits.max_chunk_size > 65536) throw new ConfigError('config key "limits.max_chunk_size": at most 65536');
  if (cfg.hls.target_duration_s <= 0) throw new ConfigError('config key "hls.target_duration_s": must be greater than 0');
  if (!Number.isInteger(cfg.hls.playlist_length) || cfg.hls.playlist_length < 1) throw new ConfigError('config key "hls.playlist_length": must be a whole number, at least 1');
  if (cfg.hls.idle_timeout_s <= 0) throw new ConfigError('config key "hls.idle_timeout_s": must be greater than 0');
  for (const port of [cfg.rtmp_port, cfg.http_port, cfg.admin.port]) {
    if (!Number.isInteger(port) || port > 65535) throw new ConfigError(`port ${port} out of range`);
  }
  validateSecurity(cfg);
}

function validateSecurity(cfg: NodeConfig): void {
  const lim = cfg.limits;
  if (lim.connection_rate_per_ip > 0 && lim.connection_burst_per_ip < 1) {
    throw new ConfigError('config key "limits.connection_burst_per_ip": must be at least 1 when limits.connection_rate_per_ip is set');
  }
  if (cfg.webhooks.timeout_ms < 1) throw new ConfigError('config key "webhooks.timeout_ms": must be at least 1');
  for (const [app, a] of Object.entries(cfg.auth.apps)) {
    for (const action of ['publish', 'play'] as const) {
      const rule = a[action];
      if (!rule) continue;
      const path = `auth.apps.${app}.${action}`;
      const hasKeys = rule.keys.length > 0 || Object.keys(rule.stream_keys).length > 0;
      if (rule.public && (hasKeys || rule.tokens)) throw new ConfigError(`config key "${path}": "public: true" cannot be combined with keys, stream_keys or tokens`);
      if (!rule.public && !hasKeys && !rule.tokens) {
        throw new ConfigError(`config key "${path}": names no credential; give keys, stream_keys or "tokens: true" (or "public: true" to leave it open)`);
      }
      if (rule.tokens && !(a.token_secret || cfg.auth.token_secret)) {
        throw new ConfigError(`config key "${path}.tokens": signed tokens need auth.token_secret (or auth.apps.${app}.token_secret)`);
      }
    }
  }
  const na = cfg.mesh.nats_auth;
  if ((na.user === '') !== (na.pass === '')) throw new ConfigError('config keys "mesh.nats_auth.user" and "mesh.nats_auth.pass": give both or neither');
  if (na.nkey_seed && na.nkey_file) throw new ConfigError('config keys "mesh.nats_auth.nkey_seed" and "mesh.nats_auth.nkey_file": give one, not both');
  if (na.nkey_seed && !/^SU[A-Z2-7]{50,}$/.test(na.nkey_seed)) throw new ConfigError('config key "mesh.nats_auth.nkey_seed": not an NKey user seed (SU…)');
  const tls = cfg.mesh.nats_tls;
  if ((tls.cert_file === '') !== (tls.key_file === '')) throw new ConfigError('config keys "mesh.nats_tls.cert_file" and "mesh.nats_tls.key_file": give both or neither');
}

export function appConfig(cfg: NodeConfig, app: string): AppConfig {
  return { ...cfg.app_defaults, ...(cfg.apps['*'] ?? {}), ...(cfg.apps[app] ?? {}) };
}

/**
 * `static_relays:` entries: `{ pull: rtmp://…, as: app/stream }` brings an outside stream into
 * the mesh; `{ push: app/stream, to: rtmp://… }` sends a mesh stream out (restreaming).
 */
function parseStaticRelays(value: unknown): StaticRelayConfig[] {
  if (value == null) return [];
  if (!Array.isArray(value)) throw new ConfigError('config key "static_relays": expected a list');
  const splitName = (v: unknown, path: string): { app: string; stream: string } => {
    if (typeof v !== 'string' || !/^[^/]+\/.+$/.test(v)) throw new ConfigError(`config key "${path}": expected "app/stream", got ${JSON.stringify(v)}`);
    const i = v.indexOf('/');
    return { app: v.slice(0, i), stream: v.slice(i + 1) };
  };
  const rtmpUrl = (v: unknown, path: string): string => {
    if (typeof v !== 'string' || !/^rtmp:\/\/[^/]+\/[^/]+\/.+/.test(v)) throw new ConfigError(`config key "${path}": expected rtmp://host[:port]/app/stream, got ${JSON.stringify(v)}`);
    return v;
  };
  return value.map((entry, i): StaticRelayConfig => {
    const path = `static_relays[${i}]`;
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new ConfigError(`config key "${path}": expected a mapping`);
    const e = entry as Record<string, unknown>;
    const keys = Object.keys(e).sort().join(',');
    if (keys === 'as,pull') return { kind: 'pull', url: rtmpUrl(e.pull, `${path}.pull`), ...splitName(e.as, `${path}.as`) };
    if (keys === 'push,to') return { kind: 'push', url: rtmpUrl(e.to, `${path}.to`), ...splitName(e.push, `${path}.push`) };
    throw new ConfigError(`config key "${path}": expected { pull, as } or { push, to }, got keys ${keys || '(none)'}`);
  });
}
