/**
 * Node configuration: defaults < YAML file < inline settings < MESHCAST_* environment < flags.
 * The settings are declared once, in config/schema.ts; this file loads them and applies the
 * rules that span several settings, so that a misconfiguration that could only fail while the
 * node runs fails at start instead, with one line naming the setting.
 */
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { CONFIG_FILE_ENV, NODE_SCHEMA, SETTINGS, type NodeConfig, type Setting } from './config/schema.ts';

export { SETTINGS, GROUPS, envName, type NodeConfig, type Setting, type SettingGroup, type StaticRelayConfig } from './config/schema.ts';
export { helpText, configurationMarkdown } from './config/describe.ts';

export type Role = NodeConfig['roles'][number];
export type AppConfig = NodeConfig['app_defaults'];
export type DuplicatePublish = AppConfig['duplicate_publish'];
export type PlayNotFound = AppConfig['play_not_found'];
export type AuthConfig = NodeConfig['auth'];
export type AppAuthConfig = AuthConfig['apps'][string];
export type AuthRule = NonNullable<AppAuthConfig['publish']>;
export type WebhooksConfig = NodeConfig['webhooks'];
export type OnHookTimeout = WebhooksConfig['on_timeout'];
export type LimitsConfig = NodeConfig['limits'];
export type MediaConfig = NodeConfig['media'];
export type MeshConfig = NodeConfig['mesh'];
export type NatsAuthConfig = MeshConfig['nats_auth'];
export type NatsTlsConfig = MeshConfig['nats_tls'];
export type HlsConfig = NodeConfig['hls'];
export type AdminConfig = NodeConfig['admin'];

/** A setting that cannot work; the message is one line naming the setting and how to set it. */
export class ConfigError extends Error {
  readonly code = 'CONFIG';
}

/** Something that works but is probably not what the operator wants; logged once at start. */
export interface ConfigWarning {
  setting: string;
  message: string;
}

const BY_PATH = new Map(SETTINGS.map((s) => [s.path, s]));

/** The flags `meshcast node` accepts besides --config and --help (without the leading --). */
export const CONFIG_FLAGS: readonly string[] = SETTINGS.flatMap((s) => (s.flag ? [s.flag] : []));

/** The setting a path lies in: a leaf, or the map-valued leaf (apps, auth.apps, …) it is inside. */
function settingAt(path: string): Setting | undefined {
  for (let p = path; p !== ''; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    const s = BY_PATH.get(p.replace(/\[\d+\].*$/, ''));
    if (s) return s;
  }
  return undefined;
}

/** Where else a setting can be given, for the error line. */
function whereToSet(path: string): string {
  const s = settingAt(path);
  if (!s) return '';
  // The short (older) names first: they are what most deployments already use.
  const names = [...s.env.slice(1), s.env[0]!];
  return ` (${s.flag ? `flag --${s.flag}, ` : ''}env ${names.join(' or ')})`;
}

/** `config key "<path>": <problem> (env …, flag …)` */
export function settingError(path: string, problem: string): ConfigError {
  return new ConfigError(`config key "${path}": ${problem}${whereToSet(path)}`);
}

function pathText(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out === '' ? String(p) : `.${String(p)}`;
  return out;
}

function shown(v: unknown): string {
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** The first problem zod found, as one line. */
function fromIssue(issue: z.core.$ZodIssue): ConfigError {
  const path = pathText(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const key = pathText([...issue.path, issue.keys[0]!]);
    return new ConfigError(`unknown config key "${key}" (every setting is listed in docs/configuration.md)`);
  }
  const secret = settingAt(path)?.secret === true;
  const input = (issue as { input?: unknown }).input;
  const got = issue.code !== 'custom' && input !== undefined && !secret ? `, got ${shown(input)}` : '';
  return settingError(path || '(root)', `${issue.message}${got}`);
}

// ------------------------------------------------------------------ layers

type Raw = Record<string, unknown>;

const isMapping = (v: unknown): v is Raw => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Later layers win key by key; a map-valued setting (apps, auth.apps) is merged the same way. */
function deepMerge(base: Raw, over: Raw): Raw {
  const out: Raw = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isMapping(v) && isMapping(out[k]) ? deepMerge(out[k] as Raw, v) : v;
  return out;
}

function setAt(tree: Raw, path: string, value: unknown): void {
  const parts = path.split('.');
  const leaf = parts.pop()!;
  let obj = tree;
  for (const p of parts) {
    if (!isMapping(obj[p])) obj[p] = {};
    obj = obj[p] as Raw;
  }
  obj[leaf] = value;
}

/**
 * MESHCAST_* variables, by canonical name or alias. An empty variable counts as unset (compose
 * files often pass `VAR: ${VAR:-}`); two names of one setting with different values are an error.
 */
function envLayer(env: NodeJS.ProcessEnv): Raw {
  const layer: Raw = {};
  for (const s of SETTINGS) {
    const given = s.env.filter((name) => env[name] !== undefined && env[name] !== '');
    if (given.length === 0) continue;
    const values = new Set(given.map((name) => env[name]));
    if (values.size > 1) throw settingError(s.path, `${given.join(' and ')} are both set, to different values; set one`);
    setAt(layer, s.path, env[given[0]!]);
  }
  return layer;
}

function flagLayer(flags: Record<string, string | undefined>): Raw {
  const layer: Raw = {};
  const known = new Set(CONFIG_FLAGS);
  for (const name of Object.keys(flags)) if (flags[name] !== undefined && !known.has(name)) throw new ConfigError(`unknown flag --${name}`);
  for (const s of SETTINGS) {
    const v = s.flag ? flags[s.flag] : undefined;
    if (v !== undefined) setAt(layer, s.path, v);
  }
  return layer;
}

function fileLayer(file: string): Raw {
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
    throw new ConfigError(`config file ${file} is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  if (doc == null) return {};
  if (!isMapping(doc)) throw new ConfigError(`config file ${file}: expected a mapping of settings, got ${shown(doc)}`);
  return doc;
}

function parseLayers(raw: Raw): NodeConfig {
  const r = NODE_SCHEMA.safeParse(raw, { reportInput: true });
  if (!r.success) throw fromIssue(r.error.issues[0]!);
  return r.data;
}

// ------------------------------------------------------------------ loading

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

/** Every setting at its default (public_host not yet derived from host). */
export function defaultConfig(): NodeConfig {
  return parseLayers({});
}

export function loadConfig(input: LoadConfigInput = {}): NodeConfig {
  const env = input.env ?? {};
  let raw: Raw = {};
  const file = input.file ?? (env[CONFIG_FILE_ENV] || undefined);
  if (file) raw = fileLayer(file);
  if (input.inline !== undefined && input.inline !== null) {
    if (!isMapping(input.inline)) throw new ConfigError(`inline config: expected a mapping of settings, got ${shown(input.inline)}`);
    raw = deepMerge(raw, input.inline);
  }
  raw = deepMerge(raw, envLayer(env));
  raw = deepMerge(raw, flagLayer(input.flags ?? {}));
  const cfg = parseLayers(raw);
  checkConfig(cfg);
  if (!cfg.public_host) cfg.public_host = isWildcard(cfg.host) ? '127.0.0.1' : cfg.host;
  SOURCES.set(cfg, { ...input });
  return cfg;
}

export function appConfig(cfg: NodeConfig, app: string): AppConfig {
  const out = { ...cfg.app_defaults };
  for (const over of [cfg.apps['*'], cfg.apps[app]]) {
    for (const [k, v] of Object.entries(over ?? {})) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  }
  return out;
}

// ------------------------------------------------------------------ rules across settings

const isWildcard = (host: string): boolean => host === '' || host === '0.0.0.0' || host === '::' || host === '[::]';
const isLoopback = (host: string): boolean => host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
const isMeshMode = (cfg: NodeConfig): boolean => cfg.mesh.nats.length > 0;

/** The first rule a config breaks, as a ConfigError; nothing when it can run. */
function checkConfig(cfg: NodeConfig): void {
  checkMesh(cfg);
  checkTimings(cfg);
  checkListeners(cfg);
  checkSecurity(cfg);
  checkRecording(cfg);
  checkVod(cfg);
  // Last, the files and directories the machine must have: the docs-config test relies on a block that fails only here having passed the rest.
  checkVodDirs(cfg);
  if (isMeshMode(cfg)) checkNatsFiles(cfg);
}

function checkRecording(cfg: NodeConfig): void {
  if (cfg.recording.storage === 'object_store' && !isMeshMode(cfg)) {
    throw settingError('recording.storage', '"object_store" needs NATS (mesh.nats); use "local" (or "auto") on a node without a mesh');
  }
  const records = [['app_defaults.record', cfg.app_defaults.record] as const, ...Object.entries(cfg.apps).map(([app, a]) => [`apps.${app}.record`, a.record] as const)];
  for (const [path, r] of records) {
    if (r && r.retention_s < r.segment_s) throw settingError(`${path}.retention`, `${r.retention_s} s is shorter than ${path}.segment_s (${r.segment_s} s): every segment would be deleted as it is finished`);
  }
}

/** Every VOD setting of a config with its path: `app_defaults.vod`, then `apps.<app>.vod`. */
export const vodSettings = (cfg: NodeConfig) => [['app_defaults.vod', cfg.app_defaults.vod] as const, ...Object.entries(cfg.apps).map(([app, a]) => [`apps.${app}.vod`, a.vod] as const)];

/** An app with no VOD root here has the mesh to fetch from; an app serving recordings names a live app that records. */
function checkVod(cfg: NodeConfig): void {
  for (const [path, v] of vodSettings(cfg)) {
    if (v && v.recordings) {
      const live = v.recordings;
      if (v.root !== '') throw settingError(path, `has both recordings (${JSON.stringify(live)}) and root (${JSON.stringify(v.root)}): an app serves either files from a root or an app's recordings`);
      const liveApp = appConfig(cfg, live);
      if (liveApp.vod) throw settingError(`${path}.recordings`, `names ${JSON.stringify(live)}, which is a VOD app${path === `apps.${live}.vod` ? ' (itself)' : ''}: it must name a live app that records`);
      if (!liveApp.record) throw settingError(`${path}.recordings`, `names app ${JSON.stringify(live)}, which has no record (apps.${live}.record or app_defaults.record): there would be no recordings to serve`);
      continue;
    }
    if (!v || v.root !== '') continue;
    if (!v.remote) throw settingError(`${path}.root`, 'is empty and remote is false: the app would serve no file (give a directory, or remote: true in a mesh)');
    if (!isMeshMode(cfg)) throw settingError(`${path}.root`, 'is empty, and without a mesh (mesh.nats) there is no other node to serve the files from');
  }
}

/** Every VOD app's root is an existing directory, and the cache directory can be made. */
function checkVodDirs(cfg: NodeConfig): void {
  const vods = vodSettings(cfg);
  for (const [path, v] of vods) {
    if (!v || v.root === '') continue;
    let isDir = false;
    try {
      isDir = statSync(v.root).isDirectory();
    } catch (err) {
      throw settingError(`${path}.root`, `${JSON.stringify(v.root)} cannot be read: ${(err as Error).message}`);
    }
    if (!isDir) throw settingError(`${path}.root`, `${JSON.stringify(v.root)} is not a directory`);
  }
  if (vods.some(([, v]) => v)) checkCacheDir(cfg.vod.cache_dir);
}

/** The VOD cache directory exists as a writable directory, or can be made in one (it is made at start). */
function checkCacheDir(dir: string): void {
  let at = resolve(dir);
  for (;;) {
    let st;
    try {
      st = statSync(at);
    } catch {
      const up = dirname(at);
      if (up === at) return;
      at = up;
      continue;
    }
    if (!st.isDirectory()) throw settingError('vod.cache_dir', `${JSON.stringify(dir)} cannot be made: ${at} is not a directory`);
    try {
      accessSync(at, constants.W_OK);
    } catch {
      throw settingError('vod.cache_dir', `${JSON.stringify(dir)} cannot be made or written: ${at} is not writable`);
    }
    return;
  }
}

function checkMesh(cfg: NodeConfig): void {
  const m = cfg.mesh;
  for (const u of m.nats) {
    // nats.js takes host:port without a scheme as nats://host:port.
    let parsed: URL | undefined;
    try {
      parsed = new URL(u.includes('://') ? u : `nats://${u}`);
    } catch {
      parsed = undefined;
    }
    if (!parsed || (parsed.protocol !== 'nats:' && parsed.protocol !== 'tls:') || parsed.hostname === '') {
      const ws = parsed && (parsed.protocol === 'ws:' || parsed.protocol === 'wss:') ? ' (the node speaks NATS over TCP, not WebSocket)' : '';
      throw settingError('mesh.nats', `${JSON.stringify(u)} is not a NATS server URL; expected nats://host:port or tls://host:port${ws}`);
    }
  }
  if (!isMeshMode(cfg)) return;
  if (m.mesh_secret === '') {
    throw settingError('mesh.mesh_secret', 'is required in mesh mode (mesh.nats is set): nodes present it to pull streams from each other; give every node the same one');
  }
  if (cfg.public_host === '' && isWildcard(cfg.host)) {
    throw settingError('public_host', `host ${JSON.stringify(cfg.host)} binds every interface, so other nodes and redirected viewers cannot reach this node by it; give the address they should use`);
  }
}

function checkTimings(cfg: NodeConfig): void {
  const m = cfg.mesh;
  if (m.heartbeat_ms <= 0) throw settingError('mesh.heartbeat_ms', 'must be greater than 0');
  if (m.suspect_ms <= m.heartbeat_ms) throw settingError('mesh.suspect_ms', `${m.suspect_ms} must be greater than mesh.heartbeat_ms (${m.heartbeat_ms}), or every node is suspected between heartbeats`);
  if (m.dead_ms <= m.suspect_ms) throw settingError('mesh.dead_ms', `${m.dead_ms} must be greater than mesh.suspect_ms (${m.suspect_ms})`);
  if (m.renew_ms <= 0) throw settingError('mesh.renew_ms', 'must be greater than 0');
  if (m.renew_ms >= m.lease_ms) throw settingError('mesh.renew_ms', `${m.renew_ms} must be less than mesh.lease_ms (${m.lease_ms}), or every lease lapses before it is renewed`);
  if (m.relay_fanout < 1) throw settingError('mesh.relay_fanout', 'must be at least 1');
  if (m.placement_load_factor < 1) throw settingError('mesh.placement_load_factor', `${m.placement_load_factor} must be at least 1 (a node may always take the average load)`);
  if (m.capacity < 1 && cfg.roles.includes('playback')) {
    throw settingError('mesh.capacity', 'is 0 on a playback node, so placement never sends it a viewer; give at least 1, or drop the playback role');
  }
}

function checkListeners(cfg: NodeConfig): void {
  const listeners = [
    { path: 'rtmp_port', host: cfg.host, port: cfg.rtmp_port },
    { path: 'http_port', host: cfg.host, port: cfg.http_port },
    { path: 'admin.port', host: cfg.admin.host, port: cfg.admin.port },
  ];
  for (let i = 1; i < listeners.length; i++) {
    const b = listeners[i]!;
    for (const a of listeners.slice(0, i)) {
      const sameHost = a.host === b.host || isWildcard(a.host) || isWildcard(b.host);
      if (b.port !== 0 && a.port === b.port && sameHost) {
        throw settingError(b.path, `${b.port} is also ${a.path} on ${a.host}; give each listener its own port (or 0 for any free one)`);
      }
    }
  }
  if (!isLoopback(cfg.admin.host) && cfg.admin.token === '') {
    throw settingError('admin.token', `admin.host ${JSON.stringify(cfg.admin.host)} is not a loopback address, so the admin API needs a token; set MESHCAST_ADMIN_TOKEN (or bind admin.host to 127.0.0.1)`);
  }
}

function checkSecurity(cfg: NodeConfig): void {
  const lim = cfg.limits;
  if (lim.connection_rate_per_ip > 0 && lim.connection_burst_per_ip < 1) {
    throw settingError('limits.connection_burst_per_ip', 'must be at least 1 when limits.connection_rate_per_ip is set');
  }
  if (lim.max_unfinished_message_bytes < lim.max_message_bytes) {
    throw settingError('limits.max_unfinished_message_bytes', `${lim.max_unfinished_message_bytes} must be at least limits.max_message_bytes (${lim.max_message_bytes}), or a publisher's largest message could never be assembled`);
  }
  for (const [app, a] of Object.entries(cfg.auth.apps)) {
    for (const action of ['publish', 'play'] as const) {
      const rule = a[action];
      if (!rule) continue;
      const path = `auth.apps.${app}.${action}`;
      const hasKeys = rule.keys.length > 0 || Object.keys(rule.stream_keys).length > 0;
      if (rule.public && (hasKeys || rule.tokens)) throw settingError(path, '"public: true" cannot be combined with keys, stream_keys or tokens');
      if (!rule.public && !hasKeys && !rule.tokens) {
        throw settingError(path, 'names no credential; give keys, stream_keys or "tokens: true" (or "public: true" to leave it open)');
      }
      if (rule.tokens && !(a.token_secret || cfg.auth.token_secret)) {
        throw new ConfigError(`config key "${path}.tokens": signed tokens need auth.token_secret (env MESHCAST_TOKEN_SECRET) or auth.apps.${app}.token_secret`);
      }
    }
  }
  const na = cfg.mesh.nats_auth;
  if ((na.user === '') !== (na.pass === '')) throw new ConfigError('config keys "mesh.nats_auth.user" and "mesh.nats_auth.pass": give both or neither (env MESHCAST_NATS_USER, MESHCAST_NATS_PASS)');
  if (na.nkey_seed && na.nkey_file) throw new ConfigError('config keys "mesh.nats_auth.nkey_seed" and "mesh.nats_auth.nkey_file": give one, not both');
  if (na.nkey_seed && !/^SU[A-Z2-7]{50,}$/.test(na.nkey_seed)) throw settingError('mesh.nats_auth.nkey_seed', 'not an NKey user seed (SU…)');
  const tls = cfg.mesh.nats_tls;
  if ((tls.cert_file === '') !== (tls.key_file === '')) throw new ConfigError('config keys "mesh.nats_tls.cert_file" and "mesh.nats_tls.key_file": give both or neither');
}

/** Credential and TLS files are read when the node connects to NATS: check them now instead. */
function checkNatsFiles(cfg: NodeConfig): void {
  const files: Array<[string, string]> = [
    ['mesh.nats_auth.creds_file', cfg.mesh.nats_auth.creds_file],
    ['mesh.nats_auth.nkey_file', cfg.mesh.nats_auth.nkey_file],
    ['mesh.nats_tls.ca_file', cfg.mesh.nats_tls.ca_file],
    ['mesh.nats_tls.cert_file', cfg.mesh.nats_tls.cert_file],
    ['mesh.nats_tls.key_file', cfg.mesh.nats_tls.key_file],
  ];
  for (const [path, file] of files) {
    if (file === '') continue;
    try {
      accessSync(file, constants.R_OK);
      if (!statSync(file).isFile()) throw new Error('not a file');
    } catch (err) {
      throw settingError(path, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
}

/** What a config that loaded may still get wrong; the node logs each once at start. */
export function configWarnings(cfg: NodeConfig): ConfigWarning[] {
  const out: ConfigWarning[] = [];
  const m = cfg.mesh;
  if (m.nats.length > 1 && m.nats_replicas === 1) {
    out.push({
      setting: 'mesh.nats_replicas',
      message: `mesh.nats lists ${m.nats.length} servers but mesh.nats_replicas is 1: the mesh's KV buckets and event stream live on one server and go down with it; on a JetStream cluster set --nats-replicas 3 (MESHCAST_NATS_REPLICAS)`,
    });
  }
  return out;
}
