/**
 * `meshctl decode`: one control-plane payload (msgpack) to JSON. The schema is found by
 * trying every decoder (mesh messages, then node-control RPCs), or taken from the subject
 * it travelled on (`--subject`, e.g. `meshcast.node.edge-1.hb`, `$KV.meshcast-streams.live.demo`).
 */
import { Unpackr } from 'msgpackr';
import {
  decodeAdmissionRequest,
  decodeAdmissionResponse,
  decodeAnyMeshMessage,
  decodeBye,
  decodeHeartbeat,
  decodeMeshEvent,
  decodeOwnershipRecord,
  decodeRelayClaim,
  MeshMessageError,
} from '@meshcast/proto';
import { peelSeal } from '@meshcast/mesh';
import { decodeControlMessage } from './control-messages.ts';

export interface Decoded {
  /** heartbeat, bye, ownership, relayClaim, event, admissionRequest, admissionResponse, control, or unknown (valid msgpack, no schema matched). */
  schema: string;
  value: unknown;
  /** When the payload came in a mesh seal: the seal's time (ms). Not verified: decode needs no secret. */
  sealedAt?: number;
}

type Decoder = (b: Uint8Array) => unknown;

const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

/** Decoders that fit a subject (first match wins), or undefined when the subject says nothing. */
function decodersForSubject(subject: string): Array<[string, Decoder]> | undefined {
  const t = subject.split('.');
  const last = t[t.length - 1];
  if (subject.startsWith('$KV.')) {
    const bucket = t[1] ?? '';
    if (bucket.endsWith('-streams')) return [['ownership', decodeOwnershipRecord]];
    if (bucket.endsWith('-relays')) return [['relayClaim', decodeRelayClaim]];
    return undefined;
  }
  const nodeAt = t.indexOf('node');
  if (nodeAt >= 0 && t.length === nodeAt + 3 && last === 'hb') return [['heartbeat', decodeHeartbeat]];
  if (nodeAt >= 0 && t.length === nodeAt + 3 && last === 'bye') return [['bye', decodeBye]];
  if (nodeAt >= 0 && t[nodeAt + 2] === 'rpc') {
    if (t[nodeAt + 3] === 'admit') return [['admissionRequest', decodeAdmissionRequest]];
    return [['control', decodeControlMessage]];
  }
  if (t.includes('events')) return [['event', decodeMeshEvent]];
  // Replies to requests arrive on inboxes: admission answers or control results.
  if (t[0] === '_INBOX') return [['admissionResponse', decodeAdmissionResponse], ['control', decodeControlMessage]];
  return undefined;
}

function decodeAnyFirst(buf: Uint8Array): Decoded | Error {
  const r = decodeAnyMeshMessage(buf);
  if (r instanceof MeshMessageError) return r;
  if (r.kind !== 'unknown') return { schema: r.kind, value: r.value };
  const c = decodeControlMessage(buf);
  if (!(c instanceof Error)) return { schema: 'control', value: c };
  return { schema: 'unknown', value: r.value };
}

/** Decodes one payload. An Error when it is not msgpack at all, or does not fit the subject's schema. */
export function decodePayload(input: Uint8Array, subject?: string): Decoded | Error {
  // Nodes on NATS seal every payload (sealed-bus.ts); what is inside is the same msgpack.
  const sealed = peelSeal(input);
  if (sealed) {
    const r = decodePayload(sealed.payload, subject);
    return r instanceof Error ? r : { ...r, sealedAt: sealed.ts };
  }
  const buf = input;
  if (buf.length === 0) return new Error('empty payload');
  const decoders = subject ? decodersForSubject(subject) : undefined;
  if (!decoders) return decodeAnyFirst(buf);
  const errors: string[] = [];
  for (const [schema, dec] of decoders) {
    const v = dec(buf);
    if (v instanceof Error) errors.push(v.message);
    else return { schema, value: v };
  }
  let raw: unknown;
  try {
    raw = unpackr.unpack(buf);
  } catch {
    return new Error(errors.join('; '));
  }
  return new Error(`${errors.join('; ')} — raw value: ${JSON.stringify(raw)?.slice(0, 300)}`);
}

/** Input encodings accepted on stdin: raw bytes (what `nats sub --translate` pipes), hex or base64 text. */
export function readInput(data: Buffer, input: 'raw' | 'hex' | 'base64'): Buffer | Error {
  if (input === 'raw') return data;
  const text = data.toString('latin1').replace(/\s+/g, '');
  if (input === 'hex') {
    if (!/^([0-9a-fA-F]{2})*$/.test(text)) return new Error('input is not hex');
    return Buffer.from(text, 'hex');
  }
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text)) return new Error('input is not base64');
  return Buffer.from(text, 'base64');
}
