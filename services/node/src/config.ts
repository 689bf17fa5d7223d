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
  limits: LimitsConfig;
  media: MediaConfig;
  mesh: MeshConfig;
  apps: Record<string, Partial<AppConfig>>;
  app_defaults: AppConfig;
}

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
    limits: {
      max_connections: 20000,
      max_connections_per_ip: 5000,
      handshake_timeout_ms: 5000,
      first_command_timeout_ms: 10000,
      idle_publisher_timeout_ms: 15000,
      max_message_bytes: 8 * 1024 * 1024,
      max_chunk_size: 65536,
      max_stream_name_bytes: 1024,
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
    },
    apps: {},
    app_defaults: {
      duplicate_publish: 'takeover',
      play_not_found: 'wait',
      play_wait_ms: 0,
      allow_publish: true,
      allow_play: true,
    },
  };
}

type Kind = 'string' | 'number' | 'boolean' | 'roles' | 'strings' | 'duplicate' | 'notfound';
type Schema = { [key: string]: Kind | Schema };

const APP_SCHEMA: Schema = {
  duplicate_publish: 'duplicate',
  play_not_found: 'notfound',
  play_wait_ms: 'number',
  allow_publish: 'boolean',
  allow_play: 'boolean',
};

const SCHEMA: Schema = {
  node_id: 'string',
  host: 'string',
  public_host: 'string',
  rtmp_port: 'number',
  http_port: 'number',
  roles: 'roles',
  log_level: 'string',
  limits: {
    max_connections: 'number',
    max_connections_per_ip: 'number',
    handshake_timeout_ms: 'number',
    first_command_timeout_ms: 'number',
    idle_publisher_timeout_ms: 'number',
    max_message_bytes: 'number',
    max_chunk_size: 'number',
    max_stream_name_bytes: 'number',
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
  },
  app_defaults: APP_SCHEMA,
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
];

export const CONFIG_FLAGS = OVERRIDES.map((o) => o.flag);

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
  for (const o of OVERRIDES) {
    const v = input.flags?.[o.flag];
    if (v !== undefined) setPath(cfg, o.path, v);
  }
  if (!cfg.public_host) cfg.public_host = cfg.host === '0.0.0.0' || cfg.host === '::' ? '127.0.0.1' : cfg.host;
  validate(cfg);
  return cfg;
}

function validate(cfg: NodeConfig): void {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(cfg.node_id)) {
    throw new ConfigError(`config key "node_id": must be 1-64 characters of [A-Za-z0-9_-] (it becomes a NATS subject token), got ${JSON.stringify(cfg.node_id)}`);
  }
  const oc = cfg.media.out_chunk_size;
  if (oc < 128 || oc > 65536) throw new ConfigError('config key "media.out_chunk_size": must be 128..65536');
  if (cfg.limits.max_chunk_size > 65536) throw new ConfigError('config key "limits.max_chunk_size": at most 65536');
  for (const port of [cfg.rtmp_port, cfg.http_port]) {
    if (!Number.isInteger(port) || port > 65535) throw new ConfigError(`port ${port} out of range`);
  }
}

export function appConfig(cfg: NodeConfig, app: string): AppConfig {
  return { ...cfg.app_defaults, ...(cfg.apps['*'] ?? {}), ...(cfg.apps[app] ?? {}) };
}
