/**
 * `meshctl token`: signed, expiring publish/play tokens, minted by the node's own
 * `mintToken` (services/node/src/auth/token.ts) so the two can never disagree.
 */
import { readFileSync } from 'node:fs';
import { MeshctlError } from './mesh-view.ts';

export interface MintedToken {
  exp: number;
  sig: string;
  query: string;
}

export function tokenSecret(env: NodeJS.ProcessEnv, secretFile: string | undefined): string {
  if (secretFile) {
    let s: string;
    try {
      s = readFileSync(secretFile, 'utf8').trim();
    } catch (err) {
      throw new MeshctlError(`meshctl token: cannot read ${secretFile}: ${(err as Error).message}`);
    }
    if (!s) throw new MeshctlError(`meshctl token: ${secretFile} is empty`);
    return s;
  }
  const s = env['MESHCAST_TOKEN_SECRET'];
  if (!s) throw new MeshctlError('meshctl token: no secret: set MESHCAST_TOKEN_SECRET (the nodes\' auth.token_secret) or pass --secret-file FILE', 2);
  return s;
}

export async function mintStreamToken(o: {
  env: NodeJS.ProcessEnv;
  secretFile: string | undefined;
  action: 'publish' | 'play';
  app: string;
  stream: string;
  ttlSeconds: number;
}): Promise<MintedToken> {
  const secret = tokenSecret(o.env, o.secretFile);
  // Loaded on use: the node package is heavy, and no other command needs it.
  const { mintToken } = await import('@meshcast/node');
  return mintToken({ secret, action: o.action, app: o.app, stream: o.stream, ttlSeconds: o.ttlSeconds });
}
