/**
 * Mesh control-plane wire schemas (docs/design.md).
 *
 * Every payload on the control plane is one msgpack map (msgpackr, plain maps —
 * no records/structures, so any msgpack tool can read it) carrying a schema
 * version field `v`. One schema per subject / KV bucket:
 *
 * | schema             | where                                   | version |
 * |--------------------|-----------------------------------------|---------|
 * | Heartbeat          | `<prefix>.node.<node>.hb`               | 1       |
 * | Bye                | `<prefix>.node.<node>.bye`              | 1       |
 * | OwnershipRecord    | KV `meshcast-streams`, `<app>.<stream>` | 1       |
 * | RelayClaim         | KV `meshcast-relays`, `<app>.<stream>.<node>` | 1 |
 * | MeshEvent          | `<prefix>.events.<type>` (JetStream)    | 1       |
 * | AdmissionRequest   | `<prefix>.node.<node>.rpc.admit`        | 1       |
 * | AdmissionResponse  | reply to the above                      | 1       |
 *
 * Encoders take the value without `v` and add it. Decoders never throw: they
 * return the value (a fresh object holding only the known fields, so nothing
 * from the wire can touch prototypes) or a `MeshMessageError` that says which
 * field was wrong. Unknown extra fields are ignored (forward compatible);
 * a different `v` is an error (the schema changed incompatibly).
 *
 * Pure: no I/O, imports nothing but msgpackr and this package's errors.
 */
import { Packr, Unpackr } from 'msgpackr';
import { MeshMessageError } from './errors.ts';

/** Schema version of each message kind currently written and accepted. */
export const MESH_SCHEMA_VERSIONS = {
  heartbeat: 1,
  bye: 1,
  ownership: 1,
  relayClaim: 1,
  event: 1,
  admissionRequest: 1,
  admissionResponse: 1,
} as const;

/** Node ids appear verbatim in subjects and KV keys, so they are restricted. */
export const NODE_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
export function isValidNodeId(id: unknown): id is string {
  return typeof id === 'string' && NODE_ID_PATTERN.test(id);
}

const MAX_ADDRESS = 512;
const MAX_NAME = 1024;
const MAX_TEXT = 1024;
/** A process boot id (mesh/src/boot-id.ts makes 16 hex digits). */
const MAX_BOOT_ID = 64;
const MAX_CODEC = 64;

// ---------------------------------------------------------------- types

export type NodeRole = 'ingest' | 'playback';
export const NODE_ROLES: readonly NodeRole[] = ['ingest', 'playback'];

export interface NodeAddresses {
  /** e.g. `rtmp://10.0.0.5:1935` — where relays and redirected players connect. */
  rtmp: string;
  /** e.g. `http://10.0.0.5:8080` — HTTP-FLV / HLS / API base. */
  http: string;
}

export interface Heartbeat {
  node: string;
  roles: NodeRole[];
  addresses: NodeAddresses;
  /** Process start time (ms since epoch); identifies an incarnation of `node`. */
  startedAt: number;
  /** Max viewers this node accepts (also its placement weight). */
  capacity: number;
  viewers: number;
  publishers: number;
  egressBps: number;
  ingressBps: number;
  /** CPU load, 0..1 per core summed (informational). */
  cpu: number;
  streamsOwned: number;
  relaysHeld: number;
  draining: boolean;
  /** Placements this node handed out since its previous heartbeat (informational). */
  placementsSinceLastHb: number;
  /** Increments by one per heartbeat within an incarnation. */
  seq: number;
  /** Sender's wall clock, ms since epoch. */
  sentAt: number;
}

export interface Bye {
  node: string;
  startedAt: number;
  seq: number;
  sentAt: number;
  reason?: string;
}

export interface VideoTrackSummary {
  codec: string;
  width?: number;
  height?: number;
  fps?: number;
  bitrate?: number;
}
export interface AudioTrackSummary {
  codec: string;
  sampleRate?: number;
  channels?: number;
  bitrate?: number;
}
export interface TracksSummary {
  video?: VideoTrackSummary;
  audio?: AudioTrackSummary;
}

export interface OwnershipRecord {
  owner: string;
  /** RTMP URL base relays pull from, e.g. `rtmp://10.0.0.5:1935`. */
  rtmp: string;
  /** Increments on every takeover of a live or stale record; restarts at 1 when the key was gone. */
  epoch: number;
  startedAt: number;
  renewedAt: number;
  tracks: TracksSummary;
  /**
   * The owner's process instance (random at its start). A record of this node id with another boot id is a
   * lease left by an earlier process of the same node (restarted within the lease). Absent in older records.
   */
  bootId?: string;
}

export interface RelayClaim {
  node: string;
  /** Node this relay pulls from (the owner or another relay). */
  parent: string;
  /** Direct child relays this relay currently serves (self-reported). */
  children: number;
  rtmp: string;
  claimedAt: number;
  renewedAt: number;
  /** The relay node's process instance; another boot id than the node's current one marks a stale claim. Absent in older claims. */
  bootId?: string;
}

interface EventBase {
  /** ms since epoch, appender's clock */
  at: number;
}
export interface PublishedEvent extends EventBase { type: 'published'; app: string; stream: string; node: string }
export interface UnpublishedEvent extends EventBase { type: 'unpublished'; app: string; stream: string; node: string; reason?: string }
export interface OwnershipMovedEvent extends EventBase {
  type: 'ownershipMoved';
  app: string;
  stream: string;
  from?: string;
  to: string;
  epoch: number;
  revision?: number;
}
/** A publisher took over a stream: a standby promoted (its primary went silent or left) or a takeover. */
export interface StandbyPromotedEvent extends EventBase {
  type: 'standbyPromoted';
  app: string;
  stream: string;
  from?: string;
  to: string;
  epoch?: number;
  reason: string;
}
export interface RelayStartedEvent extends EventBase { type: 'relayStarted'; app: string; stream: string; node: string; parent: string }
export interface RelayStoppedEvent extends EventBase { type: 'relayStopped'; app: string; stream: string; node: string; reason?: string }
export interface NodeJoinedEvent extends EventBase { type: 'nodeJoined'; node: string; roles: NodeRole[] }
export interface NodeLeftEvent extends EventBase { type: 'nodeLeft'; node: string; reason?: string }
export interface NodeDeadEvent extends EventBase { type: 'nodeDead'; node: string; lastSeenAt: number; reportedBy: string }

export type MeshEvent =
  | PublishedEvent
  | UnpublishedEvent
  | OwnershipMovedEvent
  | StandbyPromotedEvent
  | RelayStartedEvent
  | RelayStoppedEvent
  | NodeJoinedEvent
  | NodeLeftEvent
  | NodeDeadEvent;
export type MeshEventType = MeshEvent['type'];
export const MESH_EVENT_TYPES: readonly MeshEventType[] = [
  'published',
  'unpublished',
  'ownershipMoved',
  'standbyPromoted',
  'relayStarted',
  'relayStopped',
  'nodeJoined',
  'nodeLeft',
  'nodeDead',
];

export interface AdmissionRequest {
  requestId: string;
  /** 'viewer': a player will be redirected here; 'relay': a child relay wants to attach. */
  kind: 'viewer' | 'relay';
  app: string;
  stream: string;
  from: string;
  sentAt: number;
}

export interface AdmissionResponse {
  requestId: string;
  admitted: boolean;
  reason?: string;
  viewers: number;
  capacity: number;
}

// ---------------------------------------------------------------- codec core

const packr = new Packr({ useRecords: false, moreTypes: false, encodeUndefinedAsNil: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

/** Thrown inside validators only; converted to MeshMessageError at the boundary. */
class Invalid extends Error {}

type Obj = Record<string, unknown>;

function stripUndefined(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(stripUndefined);
  if (value !== null && typeof value === 'object') {
    const out: Obj = {};
    for (const [k, v] of Object.entries(value as Obj)) {
      if (v !== undefined) out[k] = stripUndefined(v);
    }
    return out;
  }
  return value;
}

function encodeVersioned(v: number, value: object): Buffer {
  return packr.pack({ v, ...(stripUndefined(value) as Obj) });
}

function isPlainObject(x: unknown): x is Obj {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) return false;
  const proto: unknown = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

function decodeVersioned<T>(what: string, version: number, buf: Uint8Array, read: (o: Obj) => T): T | MeshMessageError {
  if (!(buf instanceof Uint8Array)) return new MeshMessageError('MESH_MESSAGE', `${what}: payload is not bytes`);
  if (buf.length === 0) return new MeshMessageError('MESH_MESSAGE', `${what}: empty payload`);
  let raw: unknown;
  try {
    raw = unpackr.unpack(buf);
  } catch (err) {
    return new MeshMessageError('MESH_MESSAGE', `${what}: not msgpack (${err instanceof Error ? err.message.slice(0, 80) : 'decode error'})`);
  }
  try {
    const o = obj(raw, what);
    if (o['v'] !== version) {
      return new MeshMessageError(
        'MESH_MESSAGE',
        `${what}: unsupported schema version ${JSON.stringify(o['v'] ?? null)?.slice(0, 20)} (want ${version})`,
      );
    }
    return read(o);
  } catch (err) {
    if (err instanceof Invalid) return new MeshMessageError('MESH_MESSAGE', `${what}: ${err.message}`);
    return new MeshMessageError('MESH_MESSAGE', `${what}: malformed (${err instanceof Error ? err.message.slice(0, 80) : 'error'})`);
  }
}

// ---------------------------------------------------------------- field readers

function obj(x: unknown, field: string): Obj {
  if (!isPlainObject(x)) throw new Invalid(`${field} must be a map`);
  return x;
}
function str(o: Obj, k: string, max: number, allowEmpty = true): string {
  const x = o[k];
  if (typeof x !== 'string') throw new Invalid(`field '${k}' must be a string`);
  if (x.length > max) throw new Invalid(`field '${k}' longer than ${max}`);
  if (!allowEmpty && x.length === 0) throw new Invalid(`field '${k}' must not be empty`);
  return x;
}
function optStr(o: Obj, k: string, max: number): string | undefined {
  return o[k] == null ? undefined : str(o, k, max);
}
function nodeId(o: Obj, k: string): string {
  const x = o[k];
  if (!isValidNodeId(x)) throw new Invalid(`field '${k}' must be a node id matching ${NODE_ID_PATTERN.source}`);
  return x;
}
function optNodeId(o: Obj, k: string): string | undefined {
  return o[k] == null ? undefined : nodeId(o, k);
}
function num(o: Obj, k: string): number {
  const x = o[k];
  if (typeof x !== 'number' || !Number.isFinite(x) || x < 0) throw new Invalid(`field '${k}' must be a non-negative finite number`);
  return x;
}
function optNum(o: Obj, k: string): number | undefined {
  return o[k] == null ? undefined : num(o, k);
}
function int(o: Obj, k: string, min = 0): number {
  const x = o[k];
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min) throw new Invalid(`field '${k}' must be an integer >= ${min}`);
  return x;
}
function optInt(o: Obj, k: string): number | undefined {
  return o[k] == null ? undefined : int(o, k);
}
function bool(o: Obj, k: string): boolean {
  const x = o[k];
  if (typeof x !== 'boolean') throw new Invalid(`field '${k}' must be a boolean`);
  return x;
}
function roles(o: Obj, k: string): NodeRole[] {
  const x = o[k];
  if (!Array.isArray(x) || x.length > NODE_ROLES.length) throw new Invalid(`field '${k}' must be a list of roles`);
  const out: NodeRole[] = [];
  for (const r of x) {
    if (!NODE_ROLES.includes(r as NodeRole)) throw new Invalid(`field '${k}' has unknown role`);
    if (out.includes(r as NodeRole)) throw new Invalid(`field '${k}' repeats a role`);
    out.push(r as NodeRole);
  }
  return out;
}

// ---------------------------------------------------------------- heartbeat

function readHeartbeat(o: Obj): Heartbeat {
  const a = obj(o['addresses'], 'addresses');
  return {
    node: nodeId(o, 'node'),
    roles: roles(o, 'roles'),
    addresses: { rtmp: str(a, 'rtmp', MAX_ADDRESS), http: str(a, 'http', MAX_ADDRESS) },
    startedAt: num(o, 'startedAt'),
    capacity: int(o, 'capacity'),
    viewers: int(o, 'viewers'),
    publishers: int(o, 'publishers'),
    egressBps: num(o, 'egressBps'),
    ingressBps: num(o, 'ingressBps'),
    cpu: num(o, 'cpu'),
    streamsOwned: int(o, 'streamsOwned'),
    relaysHeld: int(o, 'relaysHeld'),
    draining: bool(o, 'draining'),
    placementsSinceLastHb: int(o, 'placementsSinceLastHb'),
    seq: int(o, 'seq'),
    sentAt: num(o, 'sentAt'),
  };
}
export function encodeHeartbeat(hb: Heartbeat): Buffer {
  return encodeVersioned(MESH_SCHEMA_VERSIONS.heartbeat, hb);
}
export function decodeHeartbeat(buf: Uint8Array): Heartbeat | MeshMessageError {
  return decodeVersioned('heartbeat', MESH_SCHEMA_VERSIONS.heartbeat, buf, readHeartbeat);
}

// ---------------------------------------------------------------- bye

function readBye(o: Obj): Bye {
  const out: Bye = { node: nodeId(o, 'node'), startedAt: num(o, 'startedAt'), seq: int(o, 'seq'), sentAt: num(o, 'sentAt') };
  const reason = optStr(o, 'reason', MAX_TEXT);
  if (reason !== undefined) out.reason = reason;
  return out;
}
export function encodeBye(b: Bye): Buffer {
  return encodeVersioned(MESH_SCHEMA_VERSIONS.bye, b);
}
export function decodeBye(buf: Uint8Array): Bye | MeshMessageError {
  return decodeVersioned('bye', MESH_SCHEMA_VERSIONS.bye, buf, readBye);
}

// ---------------------------------------------------------------- ownership

function readTracks(x: unknown): TracksSummary {
  const t = obj(x, 'tracks');
  const out: TracksSummary = {};
  if (t['video'] != null) {
    const v = obj(t['video'], 'tracks.video');
    const video: VideoTrackSummary = { codec: str(v, 'codec', MAX_CODEC) };
    const width = optInt(v, 'width');
    const height = optInt(v, 'height');
    const fps = optNum(v, 'fps');
    const bitrate = optNum(v, 'bitrate');
    if (width !== undefined) video.width = width;
    if (height !== undefined) video.height = height;
    if (fps !== undefined) video.fps = fps;
    if (bitrate !== undefined) video.bitrate = bitrate;
    out.video = video;
  }
  if (t['audio'] != null) {
    const a = obj(t['audio'], 'tracks.audio');
    const audio: AudioTrackSummary = { codec: str(a, 'codec', MAX_CODEC) };
    const sampleRate = optInt(a, 'sampleRate');
    const channels = optInt(a, 'channels');
    const bitrate = optNum(a, 'bitrate');
    if (sampleRate !== undefined) audio.sampleRate = sampleRate;
    if (channels !== undefined) audio.channels = channels;
    if (bitrate !== undefined) audio.bitrate = bitrate;
    out.audio = audio;
  }
  return out;
}
function readOwnership(o: Obj): OwnershipRecord {
  const r: OwnershipRecord = {
    owner: nodeId(o, 'owner'),
    rtmp: str(o, 'rtmp', MAX_ADDRESS),
    epoch: int(o, 'epoch', 1),
    startedAt: num(o, 'startedAt'),
    renewedAt: num(o, 'renewedAt'),
    tracks: readTracks(o['tracks']),
  };
  return withOpt(r, 'bootId', optStr(o, 'bootId', MAX_BOOT_ID));
}
export function encodeOwnershipRecord(r: OwnershipRecord): Buffer {
  return encodeVersioned(MESH_SCHEMA_VERSIONS.ownership, r);
}
export function decodeOwnershipRecord(buf: Uint8Array): OwnershipRecord | MeshMessageError {
  return decodeVersioned('ownership record', MESH_SCHEMA_VERSIONS.ownership, buf, readOwnership);
}

// ---------------------------------------------------------------- relay claim

function readRelayClaim(o: Obj): RelayClaim {
  const c: RelayClaim = {
    node: nodeId(o, 'node'),
    parent: nodeId(o, 'parent'),
    children: int(o, 'children'),
    rtmp: str(o, 'rtmp', MAX_ADDRESS),
    claimedAt: num(o, 'claimedAt'),
    renewedAt: num(o, 'renewedAt'),
  };
  return withOpt(c, 'bootId', optStr(o, 'bootId', MAX_BOOT_ID));
}
export function encodeRelayClaim(c: RelayClaim): Buffer {
  return encodeVersioned(MESH_SCHEMA_VERSIONS.relayClaim, c);
}
export function decodeRelayClaim(buf: Uint8Array): RelayClaim | MeshMessageError {
  return decodeVersioned('relay claim', MESH_SCHEMA_VERSIONS.relayClaim, buf, readRelayClaim);
}

// ---------------------------------------------------------------- events

function withOpt<T extends object, K extends string, V>(base: T, k: K, v: V | undefined): T {
  if (v !== undefined) (base as Record<string, unknown>)[k] = v;
  return base;
}

function readEvent(o: Obj): MeshEvent {
  const type = o['type'];
  const at = num(o, 'at');
  switch (type) {
    case 'published':
      return { type, at, app: str(o, 'app', MAX_NAME), stream: str(o, 'stream', MAX_NAME), node: nodeId(o, 'node') };
    case 'unpublished':
      return withOpt(
        { type, at, app: str(o, 'app', MAX_NAME), stream: str(o, 'stream', MAX_NAME), node: nodeId(o, 'node') } as UnpublishedEvent,
        'reason',
        optStr(o, 'reason', MAX_TEXT),
      );
    case 'ownershipMoved': {
      const ev: OwnershipMovedEvent = {
        type,
        at,
        app: str(o, 'app', MAX_NAME),
        stream: str(o, 'stream', MAX_NAME),
        to: nodeId(o, 'to'),
        epoch: int(o, 'epoch', 1),
      };
      withOpt(ev, 'from', optNodeId(o, 'from'));
      return withOpt(ev, 'revision', optInt(o, 'revision'));
    }
    case 'standbyPromoted': {
      const ev: StandbyPromotedEvent = { type, at, app: str(o, 'app', MAX_NAME), stream: str(o, 'stream', MAX_NAME), to: nodeId(o, 'to'), reason: str(o, 'reason', MAX_TEXT) };
      withOpt(ev, 'from', optNodeId(o, 'from'));
      return withOpt(ev, 'epoch', optInt(o, 'epoch'));
    }
    case 'relayStarted':
      return {
        type,
        at,
        app: str(o, 'app', MAX_NAME),
        stream: str(o, 'stream', MAX_NAME),
        node: nodeId(o, 'node'),
        parent: nodeId(o, 'parent'),
      };
    case 'relayStopped':
      return withOpt(
        { type, at, app: str(o, 'app', MAX_NAME), stream: str(o, 'stream', MAX_NAME), node: nodeId(o, 'node') } as RelayStoppedEvent,
        'reason',
        optStr(o, 'reason', MAX_TEXT),
      );
    case 'nodeJoined':
      return { type, at, node: nodeId(o, 'node'), roles: roles(o, 'roles') };
    case 'nodeLeft':
      return withOpt({ type, at, node: nodeId(o, 'node') } as NodeLeftEvent, 'reason', optStr(o, 'reason', MAX_TEXT));
    case 'nodeDead':
      return { type, at, node: nodeId(o, 'node'), lastSeenAt: num(o, 'lastSeenAt'), reportedBy: nodeId(o, 'reportedBy') };
    default:
      throw new Invalid(`unknown event type ${JSON.stringify(type ?? null)?.slice(0, 40)}`);
  }
}
export function encodeMeshEvent(e: MeshEvent): Buffer {
  return encodeVersioned(MESH_SCHEMA_VERSIONS.event, e);
}
export function decodeMeshEvent(buf: Uint8Array): MeshEvent | MeshMessageError {
  return decodeVersioned('event', MESH_SCHEMA_VERSIONS.event, buf, readEvent);
}

// ---------------------------------------------------------------- admission

function readAdmissionRequest(o: Obj): AdmissionRequest {
  const kind = o['kind'];
  if (kind !== 'viewer' && kind !== 'relay') throw new Invalid(`field 'kind' must be 'viewer' or 'relay'`);
  return {
    requestId: str(o, 'requestId', 128, false),
    kind,
    app: str(o, 'app', MAX_NAME),
    stream: str(o, 'stream', MAX_NAME),
    from: nodeId(o, 'from'),
    sentAt: num(o, 'sentAt'),
  };
}
function readAdmissionResponse(o: Obj): AdmissionResponse {
  return withOpt(
    {
      requestId: str(o, 'requestId', 128, false),
      admitted: bool(o, 'admitted'),
      viewers: int(o, 'viewers'),
      capacity: int(o, 'capacity'),
    } as AdmissionResponse,
    'reason',
    optStr(o, 'reason', MAX_TEXT),
  );
}
export function encodeAdmissionRequest(r: AdmissionRequest): Buffer {
  return encodeVersioned(MESH_SCHEMA_VERSIONS.admissionRequest, r);
}
export function decodeAdmissionRequest(buf: Uint8Array): AdmissionRequest | MeshMessageError {
  return decodeVersioned('admission request', MESH_SCHEMA_VERSIONS.admissionRequest, buf, readAdmissionRequest);
}
export function encodeAdmissionResponse(r: AdmissionResponse): Buffer {
  return encodeVersioned(MESH_SCHEMA_VERSIONS.admissionResponse, r);
}
export function decodeAdmissionResponse(buf: Uint8Array): AdmissionResponse | MeshMessageError {
  return decodeVersioned('admission response', MESH_SCHEMA_VERSIONS.admissionResponse, buf, readAdmissionResponse);
}

// ---------------------------------------------------------------- generic (meshctl decode)

/**
 * Decode any mesh payload to a plain JSON-able value for inspection
 * (`meshctl decode`): tries each schema in turn and returns the first that
 * validates with its kind, else the raw msgpack value, else the error.
 */
export function decodeAnyMeshMessage(
  buf: Uint8Array,
): { kind: keyof typeof MESH_SCHEMA_VERSIONS; value: unknown } | { kind: 'unknown'; value: unknown } | MeshMessageError {
  const tries: [keyof typeof MESH_SCHEMA_VERSIONS, (b: Uint8Array) => unknown][] = [
    ['heartbeat', decodeHeartbeat],
    ['bye', decodeBye],
    ['ownership', decodeOwnershipRecord],
    ['relayClaim', decodeRelayClaim],
    ['event', decodeMeshEvent],
    ['admissionRequest', decodeAdmissionRequest],
    ['admissionResponse', decodeAdmissionResponse],
  ];
  for (const [kind, dec] of tries) {
    const r = dec(buf);
    if (!(r instanceof MeshMessageError)) return { kind, value: r };
  }
  try {
    return { kind: 'unknown', value: unpackr.unpack(buf) as unknown };
  } catch (err) {
    return new MeshMessageError('MESH_MESSAGE', `not msgpack (${err instanceof Error ? err.message.slice(0, 80) : 'error'})`);
  }
}
