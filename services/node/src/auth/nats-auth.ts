/** NATS credentials and TLS from `mesh.nats_auth` / `mesh.nats_tls`, in the form connectNatsBus takes. */
import type { NatsBusOptions } from '@meshcast/mesh';
import type { MeshConfig } from '../config.ts';

export type NatsAuthOptions = Pick<NatsBusOptions, 'user' | 'pass' | 'token' | 'nkeySeed' | 'nkeyFile' | 'credsFile' | 'tls'>;

export function natsAuthOptions(mesh: Pick<MeshConfig, 'nats_auth' | 'nats_tls'>): NatsAuthOptions {
  const a = mesh.nats_auth;
  const out: NatsAuthOptions = {};
  if (a.user) out.user = a.user;
  if (a.pass) out.pass = a.pass;
  if (a.token) out.token = a.token;
  if (a.nkey_seed) out.nkeySeed = a.nkey_seed;
  if (a.nkey_file) out.nkeyFile = a.nkey_file;
  if (a.creds_file) out.credsFile = a.creds_file;
  const t = mesh.nats_tls;
  if (t.enabled || t.ca_file || t.cert_file || t.key_file || t.handshake_first) {
    const tls: NonNullable<NatsAuthOptions['tls']> = {};
    if (t.ca_file) tls.caFile = t.ca_file;
    if (t.cert_file) tls.certFile = t.cert_file;
    if (t.key_file) tls.keyFile = t.key_file;
    if (t.handshake_first) tls.handshakeFirst = true;
    out.tls = tls;
  }
  return out;
}
