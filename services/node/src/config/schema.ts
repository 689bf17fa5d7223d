/**
 * The node's settings, declared once. Types, defaults, validation of single values, the
 * MESHCAST_* environment names, the command-line flags, `meshcast node --help` and
 * docs/configuration.md all come from this schema; cross-setting rules live in config.ts.
 */
import { hostname } from 'node:os';
import { z } from 'zod';
import { parse as parseYaml } from 'yaml';

/** What a leaf setting carries besides its type and default (attached with zod's `.meta`). */
export interface SettingMeta {
  /** One or two sentences for --help and docs/configuration.md. */
  description: string;
  /** The type as the docs name it. */
  type: string;
  /** A command-line flag, without the leading `--`. */
  flag?: string;
  /** Older or shorter environment names accepted besides the canonical MESHCAST_<PATH>. */
  aliases?: readonly string[];
  /** Never shown with a value in --help, docs or logs; never given as a flag (except mesh_secret, kept for compatibility). */
  secret?: boolean;
  /** Shown as the default when the default is computed at start. */
  defaultText?: string;
}

type LeafMeta = Omit<SettingMeta, 'type'>;

/** Marks a nested group of settings, for the docs' section intro. */
export interface GroupMeta {
  group: string;
}

// ------------------------------------------------------------------ coercion of text values
// Environment variables and flags are text; YAML may also write a number where a string is
// meant (a numeric node id or key). Each leaf accepts its text form here, so every source of a
// value goes through the same parser and the same error message.

const toNumber = (v: unknown): unknown => (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v)) ? Number(v) : v);
const toString = (v: unknown): unknown => (typeof v === 'number' ? String(v) : v);
const toBoolean = (v: unknown): unknown => {
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  return v;
};
/** "a, b" or a YAML flow list "[a, b]" from text; lists from YAML are trimmed the same way. */
const toList = (v: unknown): unknown => {
  if (typeof v === 'string') {
    if (v.trim().startsWith('[')) return fromYaml(v);
    return v.split(',').map((s) => s.trim()).filter((s) => s !== '');
  }
  if (Array.isArray(v)) return v.map((s: unknown) => (typeof s === 'string' ? s.trim() : s)).filter((s: unknown) => s !== '');
  return v;
};
/** A map or list of mappings given as text (an environment variable): YAML, which includes JSON. */
function fromYaml(v: unknown): unknown {
  if (typeof v !== 'string') return v;
  try {
    return parseYaml(v) as unknown;
  } catch {
    return v; // fails the type check with the text shown
  }
}
const nullToEmpty = (v: unknown): unknown => (v === null ? {} : fromYaml(v));

// ------------------------------------------------------------------ leaf builders

const meta = (type: string, m: LeafMeta): { setting: SettingMeta } => ({ setting: { ...m, type } });

function str(def: string, m: LeafMeta, inner: z.ZodType<string> = z.string({ error: 'expected a string' })) {
  return z.preprocess(toString, inner).default(def).meta(meta('string', m));
}

function num(def: number, m: LeafMeta, inner = z.number({ error: 'expected a number' }).nonnegative({ error: 'expected a non-negative number' })) {
  return z.preprocess(toNumber, inner).default(def).meta(meta('number', m));
}

/** A whole number in min..max. */
function int(def: number, min: number, max: number, m: LeafMeta) {
  const inner = z
    .number({ error: 'expected a whole number' })
    .int({ error: `expected a whole number ${min}..${max}` })
    .min(min, { error: `expected a whole number ${min}..${max}` })
    .max(max, { error: `expected a whole number ${min}..${max}` });
  return z.preprocess(toNumber, inner).default(def).meta(meta(`integer ${min}..${max}`, m));
}

function bool(def: boolean, m: LeafMeta) {
  return z.preprocess(toBoolean, z.boolean({ error: 'expected true or false' })).default(def).meta(meta('boolean', m));
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T, def: T[number], m: LeafMeta) {
  return z.enum(values, { error: `expected ${values.map((v) => `"${v}"`).join(' or ')}` }).default(def as never).meta(meta(values.map((v) => `"${v}"`).join(' | '), m));
}

const port = (def: number, m: LeafMeta) => int(def, 0, 65535, m);

function url(m: LeafMeta) {
  const inner = z.string({ error: 'expected a string' }).refine(
    (s) => {
      if (s === '') return true;
      try {
        const u = new URL(s);
        return u.protocol === 'http:' || u.protocol === 'https:';
      } catch {
        return false;
      }
    },
    { error: 'expected an http:// or https:// URL (or "" for none)' },
  );
  return z.preprocess(toString, inner).default('').meta(meta('URL', m));
}

/** Nested settings: unknown keys are errors; an empty (null) section in YAML means all defaults. */
function group<T extends z.core.$ZodLooseShape>(description: string, shape: T) {
  return z
    .preprocess((v) => (v === null ? undefined : v), z.strictObject(shape, { error: 'expected a mapping' }))
    .prefault({})
    .meta({ group: description } satisfies GroupMeta);
}

// ------------------------------------------------------------------ value types shared by several settings

const ROLES = ['ingest', 'playback'] as const;
const DUPLICATE_PUBLISH = ['standby', 'takeover', 'reject'] as const;
const PLAY_NOT_FOUND = ['wait', 'reject'] as const;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Keys are secrets: never split on commas, never trimmed; YAML may read a numeric key as a number. */
const KEYS = z.preprocess(
  (v) => (Array.isArray(v) ? v : [v]),
  z
    .array(z.union([z.string(), z.number()], { error: 'expected a list of non-empty keys' }).transform(String), { error: 'expected a list of non-empty keys' })
    .refine((keys) => keys.every((k) => k !== ''), { error: 'expected a list of non-empty keys' }),
);

/** How one action (publish or play) of an app is authorised; see docs/security.md. */
const AUTH_RULE = z.preprocess(
  nullToEmpty,
  z.strictObject(
    {
      /** Explicitly open: no credential needed (a rule that names no credential must say so). */
      public: z.preprocess(toBoolean, z.boolean({ error: 'expected true or false' })).default(false),
      /** Static keys valid for any stream of the app, presented as `?key=…`. */
      keys: KEYS.default([]),
      /** Static keys valid for one stream only: stream name → keys. */
      stream_keys: z.preprocess(nullToEmpty, z.record(z.string(), KEYS, { error: 'expected a mapping of stream name to key(s)' })).default({}),
      /** Accept HMAC-signed expiring tokens (`?exp=<unix s>&sig=<hex>`). */
      tokens: z.preprocess(toBoolean, z.boolean({ error: 'expected true or false' })).default(false),
    },
    { error: 'expected a mapping' },
  ),
);

const APP_AUTH = z.preprocess(
  nullToEmpty,
  z.strictObject(
    {
      /** Overrides auth.token_secret for this app. */
      token_secret: z.preprocess(toString, z.string({ error: 'expected a string' })).default(''),
      publish: AUTH_RULE.optional(),
      play: AUTH_RULE.optional(),
    },
    { error: 'expected a mapping of publish/play rules' },
  ),
);

/** A duration in seconds: a number, or text such as `90s`, `15m`, `24h`, `7d`. */
const toSeconds = (v: unknown): unknown => {
  const m = typeof v === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$/.exec(v) : null;
  if (!m) return v;
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd'];
};

export const RECORD_FORMATS = ['flv', 'fmp4'] as const;

/**
 * An app's recording: `false` (off), `true` (on with the defaults) or `{format, segment_s, retention}`.
 * Retention is kept in seconds (`retention_s`) once parsed.
 */
const RECORD = z.preprocess(
  (v) => {
    const parsed = fromYaml(toBoolean(v));
    return parsed === true || parsed === null ? {} : parsed;
  },
  z.union(
    [
      z.literal(false),
      z
        .strictObject(
          {
            format: z.enum(RECORD_FORMATS, { error: `expected ${RECORD_FORMATS.map((f) => `"${f}"`).join(' or ')}` }).default('flv'),
            segment_s: z.preprocess(toNumber, z.number({ error: 'expected a number' }).min(1, { error: 'expected at least 1 (s)' })).default(60),
            retention: z.preprocess(toSeconds, z.number({ error: 'expected a duration such as 3600, "90m", "24h" or "7d"' }).positive({ error: 'expected a duration greater than 0' })).default(86400),
          },
          { error: 'expected false, true or {format, segment_s, retention}' },
        )
        .transform(({ retention, ...r }) => ({ ...r, retention_s: retention })),
    ],
    { error: 'expected false, true or {format, segment_s, retention}' },
  ),
);

/**
 * An app's VOD files (see docs/vod.md): `false` (a live app), or `{root, remote}`. `true` or an
 * empty `root` = this node holds none of the app's files and serves them from other nodes.
 * `{recordings: <live app>}` serves that app's recordings instead of files.
 */
const VOD = z.preprocess(
  (v) => {
    const parsed = fromYaml(toBoolean(v));
    return parsed === true || parsed === null ? {} : parsed;
  },
  z.union(
    [
      z.literal(false),
      z.strictObject(
        {
          root: z.preprocess(toString, z.string({ error: 'expected a directory' })).default(''),
          remote: z.preprocess(toBoolean, z.boolean({ error: 'expected true or false' })).default(true),
          // The live app whose recordings this app serves (vod-recordings.ts); absent or '' = files from `root`.
          recordings: z.preprocess(toString, z.string({ error: 'expected an app name' })).optional(),
        },
        { error: 'expected false, true, {root, remote} or {recordings}' },
      ),
    ],
    { error: 'expected false, true, {root, remote} or {recordings}' },
  ),
);

const appFields = {
  record: RECORD,
  vod: VOD,
  duplicate_publish: z.enum(DUPLICATE_PUBLISH, { error: 'expected "standby", "takeover" or "reject"' }),
  publisher_silence_ms: z.preprocess(toNumber, z.number({ error: 'expected a number' }).int({ error: 'expected a whole number' }).min(250, { error: 'expected at least 250 (ms)' })),
  play_not_found: z.enum(PLAY_NOT_FOUND, { error: 'expected "wait" or "reject"' }),
  play_wait_ms: z.preprocess(toNumber, z.number({ error: 'expected a number' }).nonnegative({ error: 'expected a non-negative number' })),
  allow_publish: z.preprocess(toBoolean, z.boolean({ error: 'expected true or false' })),
  allow_play: z.preprocess(toBoolean, z.boolean({ error: 'expected true or false' })),
};

const APP_OVERRIDES = z.preprocess(
  nullToEmpty,
  z.strictObject(
    {
      duplicate_publish: appFields.duplicate_publish.optional(),
      publisher_silence_ms: appFields.publisher_silence_ms.optional(),
      play_not_found: appFields.play_not_found.optional(),
      play_wait_ms: appFields.play_wait_ms.optional(),
      allow_publish: appFields.allow_publish.optional(),
      allow_play: appFields.allow_play.optional(),
      record: appFields.record.optional(),
      vod: appFields.vod.optional(),
    },
    { error: 'expected a mapping of app settings' },
  ),
);

export type StaticRelayConfig = { kind: 'pull'; url: string; app: string; stream: string } | { kind: 'push'; app: string; stream: string; url: string };

/**
 * `static_relays:` entries: `{ pull: rtmp://…, as: app/stream }` brings an outside stream into
 * the mesh; `{ push: app/stream, to: rtmp://… }` sends a mesh stream out (restreaming).
 */
const STATIC_RELAYS = z.preprocess(
  (v) => (v === null ? [] : fromYaml(v)),
  z.array(z.unknown(), { error: 'expected a list of { pull, as } or { push, to }' }).transform((list, ctx): StaticRelayConfig[] => {
    const out: StaticRelayConfig[] = [];
    const fail = (i: number, key: string | undefined, message: string): void => {
      ctx.issues.push({ code: 'custom', message, input: list[i], path: key ? [i, key] : [i] });
    };
    const splitName = (v: unknown): { app: string; stream: string } | undefined => {
      if (typeof v !== 'string' || !/^[^/]+\/.+$/.test(v)) return undefined;
      const i = v.indexOf('/');
      return { app: v.slice(0, i), stream: v.slice(i + 1) };
    };
    const isRtmpUrl = (v: unknown): v is string => typeof v === 'string' && /^rtmp:\/\/[^/]+\/[^/]+\/.+/.test(v);
    list.forEach((entry, i) => {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) return fail(i, undefined, 'expected a mapping');
      const e = entry as Record<string, unknown>;
      const keys = Object.keys(e).sort().join(',');
      if (keys === 'as,pull' || keys === 'push,to') {
        const pull = keys === 'as,pull';
        const url = pull ? e.pull : e.to;
        const name = splitName(pull ? e.as : e.push);
        if (!isRtmpUrl(url)) return fail(i, pull ? 'pull' : 'to', `expected rtmp://host[:port]/app/stream, got ${JSON.stringify(url)}`);
        if (!name) return fail(i, pull ? 'as' : 'push', `expected "app/stream", got ${JSON.stringify(pull ? e.as : e.push)}`);
        out.push({ kind: pull ? 'pull' : 'push', url, ...name });
        return;
      }
      fail(i, undefined, `expected { pull, as } or { push, to }, got keys ${keys || '(none)'}`);
    });
    return out;
  }),
);

/** Made safe for a NATS subject token: the host name may hold dots. */
const defaultNodeId = (): string => `${hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 50)}-${process.pid}`;

// ------------------------------------------------------------------ the schema

export const NODE_SCHEMA = z.strictObject(
  {
    node_id: z
      .preprocess(toString, z.string({ error: 'expected a string' }).regex(/^[A-Za-z0-9_-]{1,64}$/, { error: 'must be 1-64 characters of [A-Za-z0-9_-] (it becomes a NATS subject token)' }))
      .default(defaultNodeId)
      .meta(meta('string', { description: 'This node\'s id in the mesh: 1-64 characters of `[A-Za-z0-9_-]`, unique per mesh.', flag: 'node-id', aliases: ['MESHCAST_NODE_ID'], defaultText: '<hostname>-<pid>' })),
    host: str('0.0.0.0', { description: 'Address the RTMP and HTTP listeners bind (`0.0.0.0` = every interface).', flag: 'host', aliases: ['MESHCAST_HOST'] }),
    public_host: str('', {
      description: 'Address other nodes and redirected viewers use to reach this node. Defaults to `host`; required in mesh mode when `host` is a wildcard. Without a mesh a wildcard host falls back to 127.0.0.1.',
      flag: 'public-host',
      aliases: ['MESHCAST_PUBLIC_HOST'],
      defaultText: 'host',
    }),
    rtmp_port: port(1935, { description: 'RTMP listener port (0 = any free port).', flag: 'rtmp-port', aliases: ['MESHCAST_RTMP_PORT'] }),
    http_port: port(8080, { description: 'Public HTTP port: HTTP-FLV, WS-FLV, HLS, the route API, /healthz and /readyz (0 = any free port).', flag: 'http-port', aliases: ['MESHCAST_HTTP_PORT'] }),
    roles: z
      .preprocess(toList, z.array(z.enum(ROLES, { error: 'roles are "ingest" and "playback"' }), { error: 'expected a list of roles' }).min(1, { error: 'expected at least one role' }))
      .default(['ingest', 'playback'])
      .meta(meta('list of "ingest" | "playback"', { description: 'What this node does: take publishers (`ingest`), serve viewers (`playback`), or both.', flag: 'roles', aliases: ['MESHCAST_ROLES'] })),
    log_level: z
      .enum(LOG_LEVELS, { error: `expected a pino level: ${LOG_LEVELS.join(', ')}` })
      .default('info')
      .meta(meta(LOG_LEVELS.map((l) => `"${l}"`).join(' | '), { description: 'Lowest level logged.', flag: 'log-level', aliases: ['MESHCAST_LOG_LEVEL'] })),
    admin: group(
      'The admin listener: kick, drain, session and stream lists, the mesh API, metrics and the dashboard. Loopback-only by default; a token is required before it may bind anything wider.',
      {
        host: str('127.0.0.1', { description: 'Admin listener address. Anything but loopback needs `admin.token`.', flag: 'admin-host', aliases: ['MESHCAST_ADMIN_HOST'] }),
        port: port(8081, { description: 'Admin listener port (0 = any free port).', flag: 'admin-port', aliases: ['MESHCAST_ADMIN_PORT'] }),
        token: str('', { description: 'Bearer token every admin request must carry (`Authorization: Bearer …`); empty = none (loopback only).', aliases: ['MESHCAST_ADMIN_TOKEN'], secret: true }),
      },
    ),
    limits: group('Per-node and per-address limits on RTMP connections.', {
      max_connections: num(20000, { description: 'Connections this node accepts in all.' }),
      max_connections_per_ip: num(5000, { description: 'Connections one address may hold at once.' }),
      handshake_timeout_ms: num(5000, { description: 'Time a new connection has to finish the RTMP handshake.' }),
      first_command_timeout_ms: num(10000, { description: 'Time after the handshake until the first command (connect).' }),
      idle_publisher_timeout_ms: num(15000, { description: 'A publisher that sends no media for this long is disconnected.' }),
      max_message_bytes: num(8 * 1024 * 1024, { description: 'Largest RTMP message accepted.' }),
      max_chunk_size: int(65536, 1, 65536, { description: 'Largest chunk size a peer may set.' }),
      max_stream_name_bytes: num(1024, { description: 'Longest app/stream name accepted.' }),
      max_publishers: num(500, { description: 'Publishers this node takes before it redirects new ones to another ingest node.' }),
      connection_rate_per_ip: num(0, { description: 'New connections per second one address may open (token bucket; 0 = no rate limit).' }),
      connection_burst_per_ip: num(20, { description: 'Connections one address may open at once before the rate applies (bucket size).' }),
      idle_connection_timeout_ms: num(30000, {
        description:
          'An RTMP connection that has neither published nor played (nor has a publish or play waiting for admission) for this long after its `connect` is closed: it holds a connection slot.',
      }),
      max_amf_expanded_bytes: num(1024 * 1024, {
        description:
          'Largest decoded size of one RTMP command or data message, each AMF reference counted at the full size of what it points to every time it is used. A larger command closes the connection; a larger data message is dropped.',
      }),
      max_unfinished_message_bytes: num(32 * 1024 * 1024, {
        description:
          'Bytes a publishing RTMP connection may hold in messages it has started and not finished, over all its chunk streams (each counted at its announced length); past it the connection is closed. At least `max_message_bytes`.',
      }),
      max_unfinished_message_bytes_unpublished: num(1024 * 1024, {
        description: 'The same bound for an RTMP connection that has no authorised publish (before `publish`, and for viewers): they send only small commands.',
      }),
      reply_buffer_bytes: num(256 * 1024, {
        description:
          'Bytes written to one connection that its peer has not read yet, past which the node answers none of its requests (pings, commands) and reads no more of them until it drains. Media to viewers has its own bound (`media.viewer_queue_bytes`).',
      }),
    }),
    media: group('Fan-out of media to viewers.', {
      gop_cache: bool(true, { description: 'Keep the last GOP so a new viewer starts at a keyframe at once.' }),
      gop_cache_max_bytes: num(16 * 1024 * 1024, { description: 'Largest GOP held; past it the cache is dropped and new viewers wait for the next keyframe.' }),
      flush_ms: num(33, {
        description: 'Frames that arrive within this window go to each viewer in one write. One frame interval (33 ms at 30 fps) roughly halves the writes per viewer (see docs/benchmark.md).',
      }),
      out_chunk_size: int(4096, 128, 65536, { description: 'RTMP chunk size this node sends with.' }),
      viewer_queue_bytes: num(4 * 1024 * 1024, { description: 'Bytes queued for one slow viewer before frames are dropped to the next keyframe.' }),
      viewer_max_lag_ms: num(8000, { description: 'A viewer further behind than this is disconnected.' }),
    }),
    mesh: group('The mesh: NATS, membership, ownership leases, relays and placement. With no `nats` the node runs alone on an in-process bus.', {
      nats: z
        .preprocess(toList, z.array(z.string({ error: 'expected a list of NATS URLs' }), { error: 'expected a list of NATS URLs' }))
        .default([])
        .meta(meta('list of URLs', { description: 'NATS servers (comma-separated in env and flags). Empty = no mesh: an in-process bus. Set = mesh mode, which needs `mesh.mesh_secret`.', flag: 'nats', aliases: ['MESHCAST_NATS'] })),
      subject_prefix: str('meshcast', { description: 'Prefix of every NATS subject, KV bucket and stream the mesh uses (one NATS can carry several meshes).', aliases: ['MESHCAST_SUBJECT_PREFIX'] }, z.string({ error: 'expected a string' }).regex(/^[A-Za-z0-9_-]+$/, { error: 'must be characters of [A-Za-z0-9_-] (it becomes a NATS subject token and bucket name)' })),
      mesh_secret: str('', { description: 'Shared secret of the mesh: every message and KV value a node puts on NATS is sealed with it (HMAC) and what fails verification is dropped; nodes also sign their relay pulls with it. Required in mesh mode; give every node and meshctl the same one.', flag: 'mesh-secret', aliases: ['MESHCAST_MESH_SECRET'], secret: true }),
      heartbeat_ms: num(1000, { description: 'How often a node announces itself.' }),
      suspect_ms: num(3000, { description: 'A node silent this long is suspected (no new placements). Must exceed heartbeat_ms.' }),
      dead_ms: num(5000, { description: 'A node silent this long is dead (its streams move). Must exceed suspect_ms.' }),
      lease_ms: num(10000, { description: 'Length of a stream-ownership lease.' }),
      renew_ms: num(3000, { description: 'How often an owner renews its lease. Must be below lease_ms.' }),
      relay_fanout: num(8, { description: 'Relay-tree fan-out cap: nodes one node relays a stream to.', flag: 'relay-fanout', aliases: ['MESHCAST_RELAY_FANOUT'] }),
      relay_linger_ms: num(10000, { description: 'A relay with no viewers is kept this long before it is torn down.' }),
      relay_stall_ms: num(2000, { description: 'A relay whose parent sends no media for this long (while the owner is live) moves to another parent.' }),
      partition_grace_ms: num(10000, {
        description:
          'How long a node keeps a stream it cannot confirm through NATS. Cut off from NATS, a relay keeps pulling from its last parent (or the last owner, same epoch); viewers of a stream that got no media for this long are then closed so players re-route. An ownership record that expired without a release (its owner may only be cut off from NATS) stays a parent candidate this long after it expired.',
      }),
      capacity: num(2000, { description: 'Viewers this node advertises it can take (placement weight). A playback node needs at least 1.', flag: 'capacity', aliases: ['MESHCAST_CAPACITY'] }),
      placement_load_factor: num(1.25, { description: 'Bounded-load factor c of viewer placement (HAProxy suggests 1.25-2.0); at least 1.' }),
      rtmp_redirect: bool(false, { description: 'Redirect RTMP players to the node placement chose (clients that follow ex.redirect); otherwise serve here.' }),
      nats_auth: group('Credentials for NATS. Files are read at start in mesh mode.', {
        user: str('', { description: 'NATS user (with `pass`).', aliases: ['MESHCAST_NATS_USER'] }),
        pass: str('', { description: 'NATS password (with `user`).', aliases: ['MESHCAST_NATS_PASS'], secret: true }),
        token: str('', { description: 'NATS token.', aliases: ['MESHCAST_NATS_TOKEN'], secret: true }),
        nkey_seed: str('', { description: 'NKey user seed (`SU…`); or give `nkey_file`.', aliases: ['MESHCAST_NATS_NKEY_SEED'], secret: true }),
        nkey_file: str('', { description: 'File holding an NKey user seed.' }),
        creds_file: str('', { description: 'NATS `.creds` file (JWT and seed).', aliases: ['MESHCAST_NATS_CREDS'] }),
      }),
      nats_tls: group('TLS to NATS. Files are read at start in mesh mode.', {
        enabled: bool(false, { description: 'Require TLS even with no files given (server certificate checked against the system CAs).' }),
        ca_file: str('', { description: 'CA certificate(s) the NATS server certificate is checked against.', aliases: ['MESHCAST_NATS_CA'] }),
        cert_file: str('', { description: 'Client certificate (with `key_file`).' }),
        key_file: str('', { description: 'Client key (with `cert_file`).' }),
        handshake_first: bool(false, { description: 'TLS before the NATS INFO (servers with `handshake_first`).' }),
      }),
      nats_replicas: int(1, 1, 5, {
        description: 'Replicas of the mesh\'s KV buckets and event stream: 1 for one NATS server, 3 on a 3-server JetStream cluster.',
        flag: 'nats-replicas',
        aliases: ['MESHCAST_NATS_REPLICAS'],
      }),
    }),
    hls: group('HLS, cut on demand from the live stream.', {
      target_duration_s: num(2, { description: 'Segments are cut at the first keyframe at or after this many seconds (more than 0).' }, z.number({ error: 'expected a number' }).positive({ error: 'must be greater than 0' })),
      playlist_length: int(6, 1, 1000, { description: 'Segments listed in the live playlist.' }),
      idle_timeout_s: num(30, { description: 'A stream\'s segmenter stops after this long without playlist or segment requests (more than 0).' }, z.number({ error: 'expected a number' }).positive({ error: 'must be greater than 0' })),
      max_stream_bytes: num(64 * 1024 * 1024, { description: 'Bytes of segments one stream may hold in memory (the window plus the segment being cut).' }),
      admission_cache_bytes: num(16 * 1024 * 1024, {
        description:
          'Memory for remembering admitted HLS viewers (one entry per stream and query string, e.g. per token; about 500 bytes each). When full, the viewer seen least recently is forgotten and admitted again on its next request, so nobody is locked out.',
      }),
    }),
    webrtc: group('WebRTC: playback (WHEP, H.264 passed through) and ingest (WHIP, H.264 + Opus) over RTP, on one UDP port for every peer.', {
      enabled: bool(true, { description: 'Answer WHEP requests (`POST /:app/:stream/whep`) on the public listener, and WHIP publishes (`POST /:app/:stream/whip`) on ingest nodes.', aliases: ['MESHCAST_WEBRTC_ENABLED'] }),
      udp_port: int(8189, 1, 65535, { description: 'The one UDP port every WebRTC peer of this node uses (ICE over a UDP mux), advertised in every answer, so never 0. Bound on the first WHEP or WHIP request; a port another process holds stops the start.', flag: 'webrtc-udp-port', aliases: ['MESHCAST_WEBRTC_UDP_PORT'] }),
      candidates: z
        .preprocess(toList, z.array(z.string({ error: 'expected an address' }), { error: 'expected a list of addresses' }))
        .default([])
        .meta(meta('list of addresses', { description: 'Extra addresses advertised as ICE candidates besides `public_host` (a NAT\'s outside address).', flag: 'webrtc-candidates', aliases: ['MESHCAST_WEBRTC_CANDIDATES'] })),
      ffmpeg: str('ffmpeg', { description: 'The ffmpeg the node runs for WebRTC audio: AAC→Opus for WHEP viewers, Opus→AAC for WHIP publishes (one child per stream, only while needed). It must have the libopus and aac encoders; checked at start while `enabled` (Debian: `apt-get install ffmpeg`).', aliases: ['MESHCAST_WEBRTC_FFMPEG'] }),
      session_timeout_s: num(10, { description: 'A peer that has not connected this many seconds after its answer, or whose ICE/DTLS failed, is closed.' }, z.number({ error: 'expected a number' }).positive({ error: 'must be greater than 0' })),
      rtcp_timeout_s: num(10, { description: 'A connected WHEP viewer that sends no RTCP (receiver reports, feedback) for this many seconds has gone away and is closed; browsers send RTCP about once a second. 0 turns this off.' }, z.number({ error: 'expected a number' }).min(0, { error: 'must be 0 or more' })),
      whip_keyframe_interval_s: num(2, { description: 'A WHIP publisher is asked for a keyframe (RTCP PLI) this often: WebRTC encoders send one only when asked, and HLS segments, new viewers and relays start on keyframes. Match `hls.target_duration_s`; 0 asks only at the start and after a loss.' }, z.number({ error: 'expected a number' }).min(0, { error: 'must be 0 or more' })),
    }),
    apps: z
      .preprocess(nullToEmpty, z.record(z.string(), APP_OVERRIDES, { error: 'expected a mapping of app name to settings' }))
      .default({})
      .meta(meta('map: app → app settings', { description: 'Per-app overrides of `app_defaults` (same keys); `"*"` applies to every app not listed. Example: `{live: {duplicate_publish: reject}}`.' })),
    static_relays: STATIC_RELAYS.default([]).meta(
      meta('list', { description: 'Interop with servers outside the mesh: `{pull: rtmp://…, as: app/stream}` brings a stream in; `{push: app/stream, to: rtmp://…}` sends one out.' }),
    ),
    app_defaults: group('What an app does when `apps` says nothing about it.', {
      duplicate_publish: appFields.duplicate_publish.default('standby').meta(
        meta('"standby" | "takeover" | "reject"', {
          description:
            'A second publish of a key whose publisher is live (here or on another node): keep it connected as the one standby, promoted within about a second when the primary goes silent or leaves (`standby`; a third publisher is refused with BadName); take the stream over at once (`takeover`); or refuse it with BadName (`reject`). Under `standby` and `takeover` a publisher whose predecessor is silent takes over at once.',
        }),
      ),
      publisher_silence_ms: appFields.publisher_silence_ms.default(1000).meta(
        meta('number', { description: 'Milliseconds: a publisher that sent no media for this long is silent: a new publisher of its key takes over at once, and its standby is promoted.' }),
      ),
      play_not_found: appFields.play_not_found.default('wait').meta(meta('"wait" | "reject"', { description: 'A play of a key nobody publishes: wait for the publisher, or answer StreamNotFound.' })),
      play_wait_ms: appFields.play_wait_ms.default(0).meta(meta('number', { description: 'How long a waiting viewer waits for a publisher (0 = forever).' })),
      allow_publish: appFields.allow_publish.default(true).meta(meta('boolean', { description: 'Accept publishers.' })),
      allow_play: appFields.allow_play.default(true).meta(meta('boolean', { description: 'Accept viewers.' })),
      record: appFields.record.default(false).meta(
        meta('false | {format, segment_s, retention}', {
          description:
            'Record the app\'s streams on the node that owns each one (see docs/recording.md): `false` (off), `true`, or `{format: flv, segment_s: 60, retention: 24h}` (`format`: `flv` files, or `fmp4` fragmented MP4 files `.mp4` with H.264/AAC; segments cut at the first keyframe at or after `segment_s`; segments older than `retention`, a number of seconds or `90m`/`24h`/`7d`, are deleted).',
        }),
      ),
      vod: appFields.vod.default(false).meta(
        meta('false | {root, remote} | {recordings}', {
          description:
            'Serve files instead of live streams (see docs/vod.md): `false` (a live app), or `{root: /srv/media, remote: true}`: RTMP `mp4:dir/file.mp4` / `file.flv` / `file`, HTTP `/<app>/dir/file.mp4`. Files this node does not hold under `root` (empty = none here) are found on other nodes of the mesh and copied once into `vod.cache_dir` (unless `remote: false`). `root` must be an existing directory. Or `{recordings: <live app>}`: the recordings of that app (which must have `record`) as MP4 files, `<stream>.mp4` (its latest recorded span) or `<stream>@20261205T160000Z.mp4` (from that UTC time); see docs/vod.md.',
        }),
      ),
    }),
    vod: group('VOD apps (per-app `vod`): where files fetched from other nodes are cached (see docs/vod.md).', {
      cache_dir: str('vod-cache', { description: 'Directory for VOD files copied from other nodes (relative to the working directory). Its cache files are removed at start.' }),
      cache_max_bytes: num(2 * 1024 ** 3, {
        description: 'Bytes the VOD cache may hold; past it the file used least recently is removed (at least 1 MiB; a file larger than this is not fetched).',
      }, z.number({ error: 'expected a number' }).min(1024 * 1024, { error: 'expected at least 1048576 (1 MiB)' })),
      locate_timeout_ms: num(1500, { description: 'How long a node waits for another node to say it holds a VOD file it does not (at least 1).' }, z.number({ error: 'expected a number' }).min(1, { error: 'must be at least 1' })),
      fetch_timeout_ms: num(15000, { description: 'A copy from another node that receives no bytes for this long is abandoned (at least 1).' }, z.number({ error: 'expected a number' }).min(1, { error: 'must be at least 1' })),
    }),
    recording: group('Where recordings are kept and how much of them (per-app `record` turns recording on; see docs/recording.md).', {
      storage: oneOf(['auto', 'local', 'object_store'] as const, 'auto', {
        description:
          'Where segments go: `local` (the directory `recording.dir`), `object_store` (the NATS JetStream Object Store, replicated like the mesh\'s buckets; any node serves any recording), or `auto` (the object store in mesh mode, else the directory).',
      }),
      dir: str('recordings', { description: 'Directory for local recordings (relative to the working directory).' }),
      max_bytes: num(10 * 1024 ** 3, {
        description: 'Bytes all recordings may take in the store (the directory, or the object-store bucket\'s max_bytes). Past it the oldest segments are deleted before their retention ends.',
      }),
      queue_bytes: num(8 * 1024 * 1024, {
        description: 'Bytes of one stream\'s recording waiting for the store. Past it frames are dropped up to the next keyframe (and logged): a slow store never slows viewers.',
      }),
      flush_ms: num(1000, {
        description: 'Object store only: how often the open segment\'s new bytes are stored as a part (at most this much is lost when the node dies). The directory store appends every batch.',
      }),
      max_playback_s: num(600, {
        description: 'Longest span one `/recordings/…mp4` request may stitch (the MP4 is built in memory).',
      }),
    }),
    auth: group('Who may publish and play (see docs/security.md).', {
      token_secret: str('', { description: 'HMAC-SHA256 secret for signed play/publish tokens.', aliases: ['MESHCAST_TOKEN_SECRET'], secret: true }),
      apps: z
        .preprocess(nullToEmpty, z.record(z.string(), APP_AUTH, { error: 'expected a mapping of app name to auth settings' }))
        .default({})
        .meta(
          meta('map: app → {token_secret, publish, play}', {
            description: 'Per-app rules; each of `publish`/`play` is `{public, keys, stream_keys, tokens}`; `"*"` applies to apps (or actions) not listed; unlisted apps are open.',
            secret: true,
          }),
        ),
    }),
    webhooks: group('HTTP callbacks on publish and play.', {
      on_publish: url({ description: 'Asked before a publish is accepted (2xx = allow).' }),
      on_play: url({ description: 'Asked before a play is accepted (2xx = allow).' }),
      on_publish_done: url({ description: 'Told when a publish ends.' }),
      on_play_done: url({ description: 'Told when a play ends.' }),
      timeout_ms: num(2000, { description: 'How long a hook may take (at least 1).' }, z.number({ error: 'expected a number' }).min(1, { error: 'must be at least 1' })),
      on_timeout: oneOf(['refuse', 'allow'] as const, 'refuse', { description: 'What a hook that does not answer (timeout, connection refused) means.' }),
      secret: str('', { description: 'When set, each hook request carries `X-Meshcast-Signature: sha256=<hex HMAC of the body>`.', aliases: ['MESHCAST_WEBHOOK_SECRET'], secret: true }),
    }),
  },
  { error: 'expected a mapping' },
);

export type NodeConfig = z.output<typeof NODE_SCHEMA>;

// ------------------------------------------------------------------ walking the schema

export interface Setting extends SettingMeta {
  /** Dotted path, e.g. `mesh.nats_replicas`. */
  path: string;
  /** Canonical environment name first, then the aliases. */
  env: string[];
  /** The default as docs and --help show it (never for secrets). */
  defaultShown: string;
  /** The default value, for tests and --help. */
  default: unknown;
}

export interface SettingGroup {
  path: string;
  description: string;
}

/** Canonical environment name of a setting: MESHCAST_ and the path upper-cased, dots as underscores. */
export function envName(path: string): string {
  return `MESHCAST_${path.replace(/\./g, '_').toUpperCase()}`;
}

type AnySchema = z.ZodType;

function metaOf(s: AnySchema): Partial<{ setting: SettingMeta; group: string }> {
  return (z.globalRegistry.get(s) ?? {}) as Partial<{ setting: SettingMeta; group: string }>;
}

/** The object shape under a group's preprocess/prefault wrappers. */
function shapeOf(s: AnySchema): Record<string, AnySchema> | undefined {
  let cur: AnySchema | undefined = s;
  for (let i = 0; i < 5 && cur; i++) {
    if (cur instanceof z.ZodObject) return cur.shape as Record<string, AnySchema>;
    const def: { innerType?: AnySchema; out?: AnySchema } = (cur as unknown as { def: { innerType?: AnySchema; out?: AnySchema } }).def;
    cur = def.innerType ?? def.out;
  }
  return undefined;
}

function walk(shape: Record<string, AnySchema>, prefix: string, defaults: Record<string, unknown>, settings: Setting[], groups: SettingGroup[]): void {
  for (const [key, s] of Object.entries(shape)) {
    const path = prefix ? `${prefix}.${key}` : key;
    const m = metaOf(s);
    if (m.setting) {
      const canonical = envName(path);
      const env = [canonical, ...(m.setting.aliases ?? []).filter((a) => a !== canonical)];
      const def = defaults[key];
      settings.push({ ...m.setting, path, env, default: def, defaultShown: m.setting.defaultText ?? (m.setting.secret ? '(none)' : showValue(def)) });
    } else if (m.group !== undefined) {
      groups.push({ path, description: m.group });
      const inner = shapeOf(s);
      if (!inner) throw new Error(`config schema: group ${path} has no object shape`);
      walk(inner, path, defaults[key] as Record<string, unknown>, settings, groups);
    } else {
      throw new Error(`config schema: ${path} is neither a setting nor a group`);
    }
  }
}

export function showValue(v: unknown): string {
  if (v === '') return '""';
  if (Array.isArray(v)) return v.length === 0 ? '[]' : v.join(',');
  if (v !== null && typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function collect(): { settings: Setting[]; groups: SettingGroup[] } {
  const settings: Setting[] = [];
  const groups: SettingGroup[] = [];
  walk(NODE_SCHEMA.shape as unknown as Record<string, AnySchema>, '', NODE_SCHEMA.parse({}) as Record<string, unknown>, settings, groups);
  // One environment name and one flag mean one setting: a clash is a bug in this file.
  const seen = new Map<string, string>();
  for (const s of settings) {
    for (const name of [...s.env, ...(s.flag ? [`--${s.flag}`] : [])]) {
      const other = seen.get(name);
      if (other) throw new Error(`config schema: ${name} names both ${other} and ${s.path}`);
      seen.set(name, s.path);
    }
  }
  return { settings, groups };
}

const COLLECTED = collect();
/** Every leaf setting, in schema order. */
export const SETTINGS: readonly Setting[] = COLLECTED.settings;
/** Every group of settings, in schema order. */
export const GROUPS: readonly SettingGroup[] = COLLECTED.groups;
/** The environment variable that names the config file (not a setting itself). */
export const CONFIG_FILE_ENV = 'MESHCAST_CONFIG';
