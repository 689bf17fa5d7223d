/**
 * Live reload (SIGHUP) of the sections that can change without dropping anyone: auth,
 * webhooks and limits. Other changed keys are reported as needing a restart and left alone.
 */
import type { NodeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { MediaNode } from '../media-node.ts';
import { ConfiguredAuthorizer } from './configured-authorizer.ts';

export const RELOADABLE_SECTIONS = ['auth', 'webhooks', 'limits'] as const;

export interface ReloadResult {
  /** Changed keys that were applied (paths only: values may be secrets). */
  applied: string[];
  /** Changed keys that only take effect after a restart. */
  needRestart: string[];
}

/** Leaf paths of a config tree with their JSON-encoded values. */
function flatten(value: unknown, prefix: string, out: Map<string, string>): Map<string, string> {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0 && prefix) out.set(prefix, '{}');
    for (const [k, v] of entries) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, JSON.stringify(value));
  }
  return out;
}

/** Keys whose values differ between two configs. */
export function diffConfig(a: NodeConfig, b: NodeConfig): string[] {
  const fa = flatten(a, '', new Map());
  const fb = flatten(b, '', new Map());
  const changed = new Set<string>();
  for (const [k, v] of fa) if (fb.get(k) !== v) changed.add(k);
  for (const k of fb.keys()) if (!fa.has(k)) changed.add(k);
  return [...changed].sort();
}

function isReloadable(path: string): boolean {
  return RELOADABLE_SECTIONS.some((s) => path === s || path.startsWith(`${s}.`));
}

/** Applies `next`'s auth, webhooks and limits to a running node. */
export function applyReload(node: MediaNode, next: NodeConfig): ReloadResult {
  const cur = node.config;
  const changed = diffConfig(cur, next);
  const applied = changed.filter(isReloadable);
  const needRestart = changed.filter((p) => !isReloadable(p));
  // The node and its sessions read config.limits when they need it: update it in place.
  Object.assign(cur.limits, next.limits);
  cur.auth = next.auth;
  cur.webhooks = next.webhooks;
  node.limiter.configure(next.limits);
  if (node.authorizer instanceof ConfiguredAuthorizer) node.authorizer.configure(next.auth, next.webhooks);
  return { applied, needRestart };
}

/** Loads, applies and logs; an invalid new config is logged and the running one kept. */
export function reloadFromSource(node: MediaNode, log: Logger, load: () => NodeConfig): ReloadResult | undefined {
  let next: NodeConfig;
  try {
    next = load();
  } catch (err) {
    log.error({ err: (err as Error).message }, 'config reload failed; keeping the running config');
    return undefined;
  }
  const r = applyReload(node, next);
  if (r.needRestart.length > 0) log.warn({ keys: r.needRestart }, 'config reload: these changes take effect only after a restart');
  log.info({ changed: r.applied }, r.applied.length > 0 ? 'config reloaded' : 'config reloaded; nothing to change');
  return r;
}
