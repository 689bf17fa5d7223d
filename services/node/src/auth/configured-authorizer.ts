/**
 * The node's authoriser as configured: per-app static keys and signed tokens (auth:), then
 * the on_publish/on_play webhooks (webhooks:). Both must allow. `configure` swaps the rules
 * atomically (SIGHUP); a check already under way finishes with the rules it started with.
 */
import type { AuthConfig, AuthRule, NodeConfig, WebhooksConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { StreamRequest } from '../media/host.ts';
import type { AuthAction, AuthDecision, Authorizer, SessionSummary } from './authorizer.ts';
import { repeatedParam, repeatedParamReason } from './params.ts';
import { KeySet } from './static-keys.ts';
import { verifyToken } from './token.ts';
import { WebhookClient } from './webhooks.ts';

/** The query parameter that carries a static key. */
export const KEY_PARAM = 'key';

interface CompiledRule {
  public: boolean;
  keys: KeySet;
  streamKeys: Map<string, KeySet>;
  tokens: boolean;
  secret: string;
}

type CompiledApps = Map<string, { publish?: CompiledRule; play?: CompiledRule }>;

function compileRule(rule: AuthRule, secret: string): CompiledRule {
  return {
    public: rule.public,
    keys: new KeySet(rule.keys),
    streamKeys: new Map(Object.entries(rule.stream_keys).map(([stream, keys]) => [stream, new KeySet(keys)])),
    tokens: rule.tokens,
    secret,
  };
}

function compile(auth: AuthConfig): CompiledApps {
  const out: CompiledApps = new Map();
  for (const [app, a] of Object.entries(auth.apps)) {
    const secret = a.token_secret || auth.token_secret;
    const entry: { publish?: CompiledRule; play?: CompiledRule } = {};
    if (a.publish) entry.publish = compileRule(a.publish, secret);
    if (a.play) entry.play = compileRule(a.play, secret);
    out.set(app, entry);
  }
  return out;
}

/** Checks one request against one rule (keys and tokens); pure apart from the clock. */
export function checkRule(rule: CompiledRule, action: AuthAction, req: StreamRequest, now = Date.now()): AuthDecision {
  if (rule.public) return { ok: true };
  const streamKeys = rule.streamKeys.get(req.stream);
  const takesKeys = rule.keys.size > 0 || (streamKeys?.size ?? 0) > 0;
  const key = req.params.get(KEY_PARAM);
  let keyReason: string | undefined;
  if (takesKeys && key !== null) {
    // Both sets are always checked, so timing does not tell a stream key from an app key.
    const app = rule.keys.has(key);
    const stream = streamKeys?.has(key) ?? false;
    if (app || stream) return { ok: true };
    keyReason = 'stream key invalid';
  }
  let tokenReason: string | undefined;
  if (rule.tokens && (req.params.has('sig') || req.params.has('exp'))) {
    const d = verifyToken(rule.secret, action, req.app, req.stream, req.params, now);
    if (d.ok) return d;
    tokenReason = d.reason;
  }
  const reason =
    tokenReason ??
    keyReason ??
    (takesKeys && rule.tokens
      ? `needs a stream key (?${KEY_PARAM}=…) or a signed token (?exp=…&sig=…)`
      : takesKeys
        ? `needs a stream key (?${KEY_PARAM}=…)`
        : 'needs a signed token (?exp=…&sig=…)');
  return { ok: false, reason };
}

export class ConfiguredAuthorizer implements Authorizer {
  private apps: CompiledApps;
  private readonly hooks: WebhookClient;
  private readonly log: Logger;

  constructor(config: Pick<NodeConfig, 'node_id' | 'auth' | 'webhooks'>, log: Logger) {
    this.log = log.child({ component: 'auth' });
    this.apps = compile(config.auth);
    this.hooks = new WebhookClient(config.webhooks, config.node_id, this.log);
  }

  /** Replaces the rules and hooks (SIGHUP reload). */
  configure(auth: AuthConfig, webhooks: WebhooksConfig): void {
    this.apps = compile(auth);
    this.hooks.configure(webhooks);
  }

  /** The rule for an action of an app: the app's own, else "*"'s, else none (open). */
  private ruleFor(app: string, action: AuthAction): CompiledRule | undefined {
    return this.apps.get(app)?.[action] ?? this.apps.get('*')?.[action];
  }

  async authorize(action: AuthAction, req: StreamRequest): Promise<AuthDecision> {
    const rule = this.ruleFor(req.app, action);
    // Whenever a key, a token or a hook reads the parameters, a repeated name is refused (params.ts).
    const readsParams = (rule !== undefined && !rule.public) || this.hooks.asks(action);
    const repeated = readsParams ? repeatedParam(req.params) : undefined;
    let d: AuthDecision = repeated !== undefined ? { ok: false, reason: repeatedParamReason(repeated) } : rule ? checkRule(rule, action, req) : { ok: true };
    if (d.ok) {
      const validUntil = d.validUntil;
      d = await this.hooks.check(action, req);
      if (d.ok && validUntil !== undefined) d = { ok: true, validUntil };
    }
    if (!d.ok) {
      const reason = `${action} ${req.app}/${req.stream} unauthorised: ${d.reason}`;
      this.log.info({ action, app: req.app, stream: req.stream, remote: req.remote, session: req.sessionId, protocol: req.protocol, reason: d.reason }, 'authorisation refused');
      return { ok: false, reason };
    }
    this.log.debug({ action, app: req.app, stream: req.stream, remote: req.remote, session: req.sessionId }, 'authorised');
    if (d.validUntil !== undefined) req.authorizedUntil = d.validUntil;
    return d;
  }

  done(action: AuthAction, req: StreamRequest, summary: SessionSummary): void {
    this.hooks.notifyDone(action, req, summary);
  }

  /** Waits briefly for done notifications still in flight (on shutdown). */
  drain(): Promise<void> {
    return this.hooks.drain();
  }
}
