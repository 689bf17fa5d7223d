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

type MintFn = (input: { secret: string; action: 'publish' | 'play'; app: string; stream: string; ttlSeconds: number }) => MintedToken;

/** The node package's mintToken (loaded on first use: it pulls in the whole node package). */
export async function loadMintToken(): Promise<MintFn> {
  const mod = (await import('@meshcast/node')) as Record<string, unknown>;
  const fn = mod['mintToken'];
  if (typeof fn !== 'function') {
    throw new MeshctlError('meshctl token: this checkout\'s @meshcast/node does not export mintToken (services/node/src/auth/token.ts); add it to services/node/src/index.ts');
  }
  return fn as MintFn;
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
  const mint = await loadMintToken();
  return mint({ secret, action: o.action, app: o.app, stream: o.stream, ttlSeconds: o.ttlSeconds });
}
