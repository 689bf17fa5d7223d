import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { MeshMessageError } from '../src/errors.ts';
import {
  MESH_EVENT_TYPES,
  decodeAdmissionRequest,
  decodeAdmissionResponse,
  decodeAnyMeshMessage,
  decodeBye,
  decodeHeartbeat,
  decodeMeshEvent,
  decodeOwnershipRecord,
  decodeRelayClaim,
  encodeAdmissionRequest,
  encodeAdmissionResponse,
  encodeBye,
  encodeHeartbeat,
  encodeMeshEvent,
  encodeOwnershipRecord,
  encodeRelayClaim,
  type AdmissionRequest,
  type AdmissionResponse,
  type Bye,
  type Heartbeat,
  type MeshEvent,
  type NodeRole,
  type OwnershipRecord,
  type RelayClaim,
  type TracksSummary,
} from '../src/mesh-messages.ts';

const rawPackr = new Packr({ useRecords: false });

const nodeId = fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/);
const nonNeg = fc.double({ min: 0, max: 1e15, noNaN: true }).map((x) => Math.abs(x));
const nat = fc.maxSafeNat();
const text = fc.string({ maxLength: 200, unit: 'grapheme' });
const rolesArb = fc.subarray<NodeRole>(['ingest', 'playback']);
const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });

function dropUndefined<T extends object>(o: T): T {
  return JSON.parse(JSON.stringify(o)) as T;
}

const heartbeatArb: fc.Arbitrary<Heartbeat> = fc.record({
  node: nodeId,
  roles: rolesArb,
  addresses: fc.record({ rtmp: text, http: text }),
  startedAt: nonNeg,
  capacity: nat,
  viewers: nat,
  publishers: nat,
  egressBps: nonNeg,
  ingressBps: nonNeg,
  cpu: nonNeg,
  streamsOwned: nat,
  relaysHeld: nat,
  draining: fc.boolean(),
  placementsSinceLastHb: nat,
  seq: nat,
  sentAt: nonNeg,
}).map(dropUndefined);

const byeArb: fc.Arbitrary<Bye> = fc
  .record({ node: nodeId, startedAt: nonNeg, seq: nat, sentAt: nonNeg, reason: opt(text) })
  .map(dropUndefined);

const tracksArb: fc.Arbitrary<TracksSummary> = fc
  .record({
    video: opt(
      fc.record({
        codec: fc.string({ maxLength: 16 }),
        width: opt(nat),
        height: opt(nat),
        fps: opt(nonNeg),
        bitrate: opt(nonNeg),
      }),
    ),
    audio: opt(
      fc.record({ codec: fc.string({ maxLength: 16 }), sampleRate: opt(nat), channels: opt(nat), bitrate: opt(nonNeg) }),
    ),
  })
  .map(dropUndefined);

const ownershipArb: fc.Arbitrary<OwnershipRecord> = fc.record({
  owner: nodeId,
  rtmp: text,
  epoch: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  startedAt: nonNeg,
  renewedAt: nonNeg,
  tracks: tracksArb,
}).map(dropUndefined);

const relayClaimArb: fc.Arbitrary<RelayClaim> = fc.record({
  node: nodeId,
  parent: nodeId,
  children: nat,
  rtmp: text,
  claimedAt: nonNeg,
  renewedAt: nonNeg,
}).map(dropUndefined);

const name = fc.string({ maxLength: 100, unit: 'binary' });
const eventArb: fc.Arbitrary<MeshEvent> = fc
  .oneof(
    fc.record({ type: fc.constant('published' as const), at: nonNeg, app: name, stream: name, node: nodeId }),
    fc.record({ type: fc.constant('unpublished' as const), at: nonNeg, app: name, stream: name, node: nodeId, reason: opt(text) }),
    fc.record({
      type: fc.constant('ownershipMoved' as const),
      at: nonNeg,
      app: name,
      stream: name,
      from: opt(nodeId),
      to: nodeId,
      epoch: fc.integer({ min: 1, max: 1e9 }),
      revision: opt(nat),
    }),
    fc.record({
      type: fc.constant('standbyPromoted' as const),
      at: nonNeg,
      app: name,
      stream: name,
      from: opt(nodeId),
      to: nodeId,
      epoch: opt(fc.integer({ min: 1, max: 1e9 })),
      reason: text,
    }),
    fc.record({ type: fc.constant('relayStarted' as const), at: nonNeg, app: name, stream: name, node: nodeId, parent: nodeId }),
    fc.record({ type: fc.constant('relayStopped' as const), at: nonNeg, app: name, stream: name, node: nodeId, reason: opt(text) }),
    fc.record({ type: fc.constant('nodeJoined' as const), at: nonNeg, node: nodeId, roles: rolesArb }),
    fc.record({ type: fc.constant('nodeLeft' as const), at: nonNeg, node: nodeId, reason: opt(text) }),
    fc.record({ type: fc.constant('nodeDead' as const), at: nonNeg, node: nodeId, lastSeenAt: nonNeg, reportedBy: nodeId }),
  )
  .map((e) => dropUndefined(e as MeshEvent));

const admissionRequestArb: fc.Arbitrary<AdmissionRequest> = fc.record({
  requestId: fc.string({ minLength: 1, maxLength: 40 }),
  kind: fc.constantFrom('viewer' as const, 'relay' as const),
  app: name,
  stream: name,
  from: nodeId,
  sentAt: nonNeg,
}).map(dropUndefined);
const admissionResponseArb: fc.Arbitrary<AdmissionResponse> = fc
  .record({ requestId: fc.string({ minLength: 1, maxLength: 40 }), admitted: fc.boolean(), reason: opt(text), viewers: nat, capacity: nat })
  .map(dropUndefined);

interface Codec<T> {
  name: string;
  arb: fc.Arbitrary<T>;
  enc: (v: T) => Uint8Array;
  dec: (b: Uint8Array) => T | MeshMessageError;
}
const codecs: Codec<never>[] = [
  { name: 'heartbeat', arb: heartbeatArb, enc: encodeHeartbeat, dec: decodeHeartbeat },
  { name: 'bye', arb: byeArb, enc: encodeBye, dec: decodeBye },
  { name: 'ownership', arb: ownershipArb, enc: encodeOwnershipRecord, dec: decodeOwnershipRecord },
  { name: 'relayClaim', arb: relayClaimArb, enc: encodeRelayClaim, dec: decodeRelayClaim },
  { name: 'event', arb: eventArb, enc: encodeMeshEvent, dec: decodeMeshEvent },
  { name: 'admissionRequest', arb: admissionRequestArb, enc: encodeAdmissionRequest, dec: decodeAdmissionRequest },
  { name: 'admissionResponse', arb: admissionResponseArb, enc: encodeAdmissionResponse, dec: decodeAdmissionResponse },
] as unknown as Codec<never>[];

for (const c of codecs) {
  test(`${c.name}: encode/decode round trip (property)`, () => {
    fc.assert(
      fc.property(c.arb as fc.Arbitrary<unknown>, (v) => {
        const buf = (c.enc as (v: unknown) => Uint8Array)(v);
        const back = c.dec(buf);
        assert.ok(!(back instanceof MeshMessageError), back instanceof MeshMessageError ? back.message : '');
        assert.deepStrictEqual(back, v);
      }),
      { numRuns: 300 },
    );
  });

  test(`${c.name}: random bytes never throw, give an error or a valid value`, () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const r = c.dec(bytes);
        if (!(r instanceof MeshMessageError)) {
          // astronomically unlikely, but if it validates it must re-encode to the same value
          assert.deepStrictEqual(c.dec((c.enc as (v: unknown) => Uint8Array)(r)), r);
        } else {
          assert.equal(r.code, 'MESH_MESSAGE');
        }
      }),
      { numRuns: 500 },
    );
  });

  test(`${c.name}: any msgpack value of the wrong shape is an error, never a throw`, () => {
    fc.assert(
      fc.property(fc.anything({ maxDepth: 3 }), (x) => {
        let buf: Uint8Array;
        try {
          buf = rawPackr.pack(x);
        } catch {
          return; // not packable; irrelevant
        }
        const r = c.dec(buf);
        assert.ok(r instanceof MeshMessageError);
      }),
      { numRuns: 300 },
    );
  });

  test(`${c.name}: wrong version or a field of the wrong type is rejected`, () => {
    fc.assert(
      fc.property(
        c.arb as fc.Arbitrary<unknown>,
        fc.constantFrom<unknown>('x', -1, true, [], { a: 1 }, Number.NaN),
        fc.nat(),
        (v, bad, pick) => {
          const raw = rawPackr.unpack((c.enc as (v: unknown) => Uint8Array)(v)) as Record<string, unknown>;
          const wrongVersion = c.dec(rawPackr.pack({ ...raw, v: 2 }));
          assert.ok(wrongVersion instanceof MeshMessageError);
          assert.match(wrongVersion.message, /version/);
          const noVersion = { ...raw };
          delete noVersion['v'];
          assert.ok(c.dec(rawPackr.pack(noVersion)) instanceof MeshMessageError);
          // replace one required field with a value of an incompatible type
          const keys = Object.keys(raw).filter((k) => k !== 'v');
          const k = keys[pick % keys.length] as string;
          const orig = raw[k];
          const isNum = typeof bad === 'number' && !Number.isNaN(bad) && bad >= 0;
          const incompatible =
            (typeof orig === 'number' && !isNum) ||
            (typeof orig === 'string' && typeof bad !== 'string') ||
            (typeof orig === 'boolean' && typeof bad !== 'boolean') ||
            (Array.isArray(orig) && !Array.isArray(bad)) ||
            (typeof orig === 'object' && orig !== null && !Array.isArray(orig) && (typeof bad !== 'object' || Array.isArray(bad)));
          if (!incompatible) return;
          const mutated = c.dec(rawPackr.pack({ ...raw, [k]: bad }));
          assert.ok(mutated instanceof MeshMessageError, `field ${k}=${String(bad)} should be rejected`);
        },
      ),
      { numRuns: 300 },
    );
  });
}

test('heartbeat: concrete garbage cases give clear errors', () => {
  const ok: Heartbeat = {
    node: 'edge-1',
    roles: ['playback'],
    addresses: { rtmp: 'rtmp://127.0.0.1:1935', http: 'http://127.0.0.1:8080' },
    startedAt: 1,
    capacity: 100,
    viewers: 3,
    publishers: 0,
    egressBps: 1e6,
    ingressBps: 0,
    cpu: 0.2,
    streamsOwned: 0,
    relaysHeld: 1,
    draining: false,
    placementsSinceLastHb: 0,
    seq: 7,
    sentAt: Date.now(),
  };
  assert.deepStrictEqual(decodeHeartbeat(encodeHeartbeat(ok)), ok);
  const cases: [unknown, RegExp][] = [
    [{ ...ok, node: 'a.b' }, /node id/],
    [{ ...ok, node: '*' }, /node id/],
    [{ ...ok, roles: ['origin'] }, /role/],
    [{ ...ok, roles: ['ingest', 'ingest'] }, /repeats/],
    [{ ...ok, viewers: -1 }, /viewers/],
    [{ ...ok, viewers: 1.5 }, /viewers/],
    [{ ...ok, draining: 'no' }, /draining/],
    [{ ...ok, addresses: 'x' }, /addresses/],
  ];
  for (const [bad, re] of cases) {
    const r = decodeHeartbeat(rawPackr.pack({ v: 1, ...(bad as object) }));
    assert.ok(r instanceof MeshMessageError);
    assert.match(r.message, re);
  }
  for (const junk of [Buffer.alloc(0), Buffer.from('hello world'), Buffer.from([0xc1]), Buffer.from([0x81, 0xa1])]) {
    assert.ok(decodeHeartbeat(junk) instanceof MeshMessageError);
  }
  // trailing bytes after a valid message are rejected too
  assert.ok(decodeHeartbeat(Buffer.concat([encodeHeartbeat(ok), Buffer.from([0])])) instanceof MeshMessageError);
  // __proto__ on the wire cannot pollute anything
  const polluted = decodeHeartbeat(rawPackr.pack({ v: 1, ...ok, __proto__: { polluted: true } }));
  assert.ok(!(polluted instanceof MeshMessageError));
  assert.equal((polluted as unknown as Record<string, unknown>)['polluted'], undefined);
  assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
});

test('events: every event type has a schema and unknown types are rejected', () => {
  assert.equal(MESH_EVENT_TYPES.length, 9);
  assert.ok(MESH_EVENT_TYPES.includes('standbyPromoted'));
  const r = decodeMeshEvent(rawPackr.pack({ v: 1, type: 'exploded', at: 1 }));
  assert.ok(r instanceof MeshMessageError);
  assert.match(r.message, /unknown event type/);
});

test('decodeAnyMeshMessage identifies kinds for meshctl decode', () => {
  const claim: RelayClaim = { node: 'e2', parent: 'o1', children: 0, rtmp: 'rtmp://x', claimedAt: 1, renewedAt: 2 };
  const r = decodeAnyMeshMessage(encodeRelayClaim(claim));
  assert.ok(!(r instanceof MeshMessageError));
  assert.equal(r.kind, 'relayClaim');
  assert.deepStrictEqual(r.value, claim);
  const u = decodeAnyMeshMessage(rawPackr.pack({ hello: 1 }));
  assert.ok(!(u instanceof MeshMessageError));
  assert.equal(u.kind, 'unknown');
  assert.ok(decodeAnyMeshMessage(Buffer.from([0x81])) instanceof MeshMessageError);
});
