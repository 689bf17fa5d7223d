/**
 * How one node's dashboard shows a peer its mesh credential over HTTP (the same HMAC a relay
 * carries in its RTMP connect): `X-Meshcast-Credential: <node> <ts> <sig>`. The peer serves
 * its per-stream viewer counts on its public listener only to a request carrying one.
 */
import type { MeshCredential } from '../mesh/mesh-credential.ts';

export const MESH_CREDENTIAL_HEADER = 'x-meshcast-credential';

export function encodeCredentialHeader(c: MeshCredential): string {
  return `${c.node} ${c.ts} ${c.sig}`;
}

/** The credential in a header value, or undefined when it is not one (verification is the caller's). */
export function decodeCredentialHeader(value: string | string[] | undefined): MeshCredential | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  const parts = v?.split(' ');
  if (!parts || parts.length !== 3) return undefined;
  const ts = Number(parts[1]);
  return Number.isSafeInteger(ts) ? { node: parts[0]!, ts, sig: parts[2]! } : undefined;
}
