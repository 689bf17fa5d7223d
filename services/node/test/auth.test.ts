/** Auth building blocks: signed tokens, static keys, per-app rules, config, rate limits, webhooks. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, configSource, defaultConfig, loadConfig, type NodeConfig, type WebhooksConfig } from '../src/config.ts';
import { mintToken, signToken, tokenPayload, verifyToken } from '../src/auth/token.ts';
import { KeySet } from '../src/auth/static-keys.ts';
import { ConfiguredAuthorizer } from '../src/auth/configured-authorizer.ts';
import { WebhookClient, splitRemote, type HookBody } from '../src/auth/webhooks.ts';
import { diffConfig } from '../src/auth/reload.ts';
import { natsAuthOptions } from '../src/auth/nats-auth.ts';
import { ConnectionLimiter } from '../src/sessions.ts';
import type { StreamRequest } from '../src/media/host.ts';
import { quietLog } from './support.ts';

function file(text: string): string {
  const p = join(mkdtempSync(join(tmpdir(), 'mc-auth-')), 'c.yaml');
  writeFileSync(p, text);
  return p;
}

function req(app: string, stream: string, query = '', extra: Partial<StreamRequest> = {}): StreamRequest {
  return { app, stream, params: new URLSearchParams(query), sessionId: 'r1', remote: '127.0.0.5:40000', protocol: 'rtmp', ...extra };
}

// ---------------------------------------------------------------- tokens

test('mintToken signs "<action>:<app>/<stream>:<exp>" with HMAC-SHA256, and verifyToken accepts it until exp', () => {
  const now = 1_700_000_000_000;
  const t = mintToken({ secret: 's3', action: 'publish', app: 'live', stream: 'cam', ttlSeconds: 60, now });
  assert.equal(t.exp, 1_700_000_060);
  assert.equal(t.sig, createHmac('sha256', 's3').update('publish:live/cam:1700000060').digest('hex'));
  assert.equal(t.query, `exp=1700000060&sig=${t.sig}`);
  assert.equal(tokenPayload('play', 'a', 'b', 5), 'play:a/b:5');
  const p = new URLSearchParams(t.query);
  // An allowed token says until when it holds (HLS re-checks admitted viewers against it).
  assert.deepEqual(verifyToken('s3', 'publish', 'live', 'cam', p, now), { ok: true, validUntil: 1_700_000_061_000 });
  assert.deepEqual(verifyToken('s3', 'publish', 'live', 'cam', p, now + 60_999), { ok: true, validUntil: 1_700_000_061_000 }, 'valid through the exp second');
  const late = verifyToken('s3', 'publish', 'live', 'cam', p, now + 61_000);
  assert.equal(late.ok, false);
  assert.match(!late.ok ? late.reason : '', /expired 1 s ago/);
});

test('a token is refused for another action, app, stream or secret, and when malformed', () => {
  const now = Date.now();
  const p = new URLSearchParams(mintToken({ secret: 's3', action: 'play', app: 'live', stream: 'cam', ttlSeconds: 60, now }).query);
  for (const [secret, action, app, stream] of [
    ['s4', 'play', 'live', 'cam'],
    ['s3', 'publish', 'live', 'cam'],
    ['s3', 'play', 'other', 'cam'],
    ['s3', 'play', 'live', 'cam2'],
  ] as const) {
    const d = verifyToken(secret, action, app, stream, p, now);
    assert.equal(d.ok, false);
    assert.match(!d.ok ? d.reason : '', /signed token invalid/);
  }
  const bad = (q: string): string => {
    const d = verifyToken('s3', 'play', 'live', 'cam', new URLSearchParams(q), now);
    assert.equal(d.ok, false);
    return d.ok ? '' : d.reason;
  };
  assert.match(bad(''), /missing/);
  assert.match(bad(`exp=abc&sig=${'0'.repeat(64)}`), /exp is not a unix time/);
  assert.match(bad('exp=1&sig=xyz'), /not 64 hex digits/);
  // An expired token with a forged signature says "invalid", not "expired".
  assert.match(bad(`exp=1&sig=${'a'.repeat(64)}`), /invalid/);
});

test('mintToken rejects bad input', () => {
  assert.throws(() => mintToken({ secret: '', action: 'play', app: 'a', stream: 'b', ttlSeconds: 1 }), /secret/);
  assert.throws(() => mintToken({ secret: 'x', action: 'view' as 'play', app: 'a', stream: 'b', ttlSeconds: 1 }), /action/);
  assert.throws(() => mintToken({ secret: 'x', action: 'play', app: 'a', stream: 'b', ttlSeconds: 0 }), /ttlSeconds/);
});

test('the documented openssl one-liner gives the same signature', () => {
  let out: string;
  try {
    out = execFileSync('sh', ['-c', `printf '%s' "play:live/cam:1700000060" | openssl dgst -sha256 -hmac "s3cret" | awk '{print $NF}'`], { encoding: 'utf8' });
  } catch (err) {
    assert.fail(`openssl is needed for the documented recipe: ${String(err)}`);
  }
  assert.equal(out.trim(), signToken('s3cret', 'play', 'live', 'cam', 1_700_000_060));
});

// ---------------------------------------------------------------- static keys and rules

test('KeySet matches exact keys only', () => {
  const k = new KeySet(['alpha', 'beta']);
  assert.equal(k.has('alpha'), true);
  assert.equal(k.has('beta'), true);
  assert.equal(k.has('alph'), false);
  assert.equal(k.has('alpha '), false);
  assert.equal(k.has(''), false);
  assert.equal(new KeySet([]).has(''), false);
});

function authCfg(yaml: string): NodeConfig {
  return loadConfig({ file: file(`node_id: t\n${yaml}`) });
}

test('per-app rules: keys, stream keys, tokens, "*" fallback, unlisted apps open', async () => {
  const cfg = authCfg(`
auth:
  token_secret: topsecret
  apps:
    live:
      publish: { keys: ["k1", 12345], stream_keys: { cam: "camkey", two: [a, b] }, tokens: true }
      play: { tokens: true }
    keyonly:
      publish: { keys: [onlykey] }
    "*":
      play: { public: true }
      publish: { keys: [starkey] }
    open:
      publish: { public: true }
`);
  const a = new ConfiguredAuthorizer(cfg, quietLog);
  const ok = async (action: 'publish' | 'play', r: StreamRequest): Promise<void> => assert.equal((await a.authorize(action, r)).ok, true, `${action} ${r.app}/${r.stream}?${r.params}`);
  const no = async (action: 'publish' | 'play', r: StreamRequest, re: RegExp): Promise<void> => {
    const d = await a.authorize(action, r);
    assert.equal(d.ok, false, `${action} ${r.app}/${r.stream}?${r.params} should be refused`);
    assert.match(d.ok ? '' : d.reason, re);
  };
  await ok('publish', req('live', 'x', 'key=k1'));
  await ok('publish', req('live', 'x', 'key=12345'));
  await ok('publish', req('live', 'cam', 'key=camkey'));
  await ok('publish', req('live', 'two', 'key=b'));
  await no('publish', req('live', 'x', 'key=camkey'), /^publish live\/x unauthorised: stream key invalid$/);
  await no('publish', req('live', 'x'), /needs a stream key \(\?key=…\) or a signed token/);
  await ok('publish', req('live', 'x', mintToken({ secret: 'topsecret', action: 'publish', app: 'live', stream: 'x', ttlSeconds: 5 }).query));
  // A bad key alongside a good token is allowed by the token; a bad token is reported as such.
  await ok('publish', req('live', 'x', `key=nope&${mintToken({ secret: 'topsecret', action: 'publish', app: 'live', stream: 'x', ttlSeconds: 5 }).query}`));
  await no('publish', req('live', 'x', mintToken({ secret: 'topsecret', action: 'play', app: 'live', stream: 'x', ttlSeconds: 5 }).query), /signed token invalid for publish live\/x/);
  await ok('play', req('live', 'x', mintToken({ secret: 'topsecret', action: 'play', app: 'live', stream: 'x', ttlSeconds: 5 }).query));
  await no('play', req('live', 'x', 'key=k1'), /needs a signed token/);
  await no('play', req('live', 'x', `exp=${Math.floor(Date.now() / 1000) - 10}&sig=${signToken('topsecret', 'play', 'live', 'x', Math.floor(Date.now() / 1000) - 10)}`), /expired/);
  await ok('publish', req('keyonly', 'x', 'key=onlykey'));
  await no('publish', req('keyonly', 'x', mintToken({ secret: 'topsecret', action: 'publish', app: 'keyonly', stream: 'x', ttlSeconds: 5 }).query), /needs a stream key \(\?key=…\)$/);
  await ok('play', req('keyonly', 'x'));
  await ok('publish', req('other', 'x', 'key=starkey'));
  await no('publish', req('other', 'x', 'key=k1'), /stream key invalid/);
  await ok('play', req('other', 'x'));
  await ok('publish', req('open', 'x'));
});

test('an app with no rule and no "*" is open; the default node is open', async () => {
  const a = new ConfiguredAuthorizer(authCfg('auth:\n  apps:\n    live:\n      publish: { keys: [k] }\n'), quietLog);
  assert.deepEqual(await a.authorize('publish', req('vod', 'x')), { ok: true });
  assert.deepEqual(await a.authorize('play', req('live', 'x')), { ok: true });
  const open = new ConfiguredAuthorizer(loadConfig({ flags: { 'node-id': 'x' } }), quietLog);
  assert.deepEqual(await open.authorize('publish', req('live', 'x')), { ok: true });
});

test('a per-app token secret overrides the global one', async () => {
  const a = new ConfiguredAuthorizer(authCfg('auth:\n  token_secret: g\n  apps:\n    live:\n      token_secret: app\n      play: { tokens: true }\n'), quietLog);
  const q = (secret: string): string => mintToken({ secret, action: 'play', app: 'live', stream: 's', ttlSeconds: 5 }).query;
  assert.equal((await a.authorize('play', req('live', 's', q('app')))).ok, true);
  assert.equal((await a.authorize('play', req('live', 's', q('g')))).ok, false);
});

// ---------------------------------------------------------------- config

test('auth, webhooks and NATS settings: defaults, parsing and environment secrets', () => {
  const d = defaultConfig();
  assert.deepEqual(d.auth, { token_secret: '', apps: {} });
  assert.equal(d.webhooks.timeout_ms, 2000);
  assert.equal(d.webhooks.on_timeout, 'refuse');
  assert.equal(d.limits.connection_rate_per_ip, 0);
  const c = loadConfig({
    file: file(`node_id: t
webhooks:
  on_publish: http://127.0.0.1:9000/hook
  on_play_done: https://hooks.example/done
  timeout_ms: 500
  on_timeout: allow
limits:
  connection_rate_per_ip: 5
  connection_burst_per_ip: 10
mesh:
  nats_auth: { user: u, pass: p }
  nats_tls: { ca_file: /etc/ca.pem }
`),
    env: { MESHCAST_TOKEN_SECRET: 'fromenv', MESHCAST_NATS_PASS: 'envpass' },
  });
  assert.equal(c.webhooks.on_publish, 'http://127.0.0.1:9000/hook');
  assert.equal(c.webhooks.on_timeout, 'allow');
  assert.equal(c.webhooks.timeout_ms, 500);
  assert.equal(c.limits.connection_rate_per_ip, 5);
  assert.equal(c.auth.token_secret, 'fromenv');
  assert.deepEqual(natsAuthOptions(c.mesh), { user: 'u', pass: 'envpass', tls: { caFile: '/etc/ca.pem' } });
  assert.deepEqual(natsAuthOptions(defaultConfig().mesh), {});
  assert.deepEqual(natsAuthOptions({ ...d.mesh, nats_tls: { ...d.mesh.nats_tls, enabled: true } }), { tls: {} });
});

test('auth config mistakes are errors that name the key', () => {
  const bad = (yaml: string, re: RegExp): void => {
    assert.throws(() => authCfg(yaml), (e: unknown) => e instanceof ConfigError && re.test(e.message), yaml);
  };
  bad('auth:\n  apps:\n    live:\n      publish: { key: [x] }\n', /unknown config key "auth\.apps\.live\.publish\.key"/);
  bad('auth:\n  apps:\n    live:\n      pubish: { keys: [x] }\n', /unknown config key "auth\.apps\.live\.pubish"/);
  bad('auth:\n  tokens_secret: x\n', /unknown config key "auth\.tokens_secret"/);
  bad('auth:\n  apps:\n    live:\n      publish: {}\n', /"auth\.apps\.live\.publish": names no credential/);
  bad('auth:\n  apps:\n    live:\n      publish: { keys: [] }\n', /names no credential/);
  bad('auth:\n  apps:\n    live:\n      publish: { public: true, keys: [x] }\n', /cannot be combined/);
  bad('auth:\n  apps:\n    live:\n      play: { tokens: true }\n', /"auth\.apps\.live\.play\.tokens": signed tokens need auth\.token_secret/);
  bad('auth:\n  apps:\n    live:\n      publish: { keys: [""] }\n', /non-empty keys/);
  bad('auth:\n  apps:\n    live:\n      publish: { stream_keys: [x] }\n', /mapping of stream name/);
  bad('webhooks:\n  on_publish: ftp://x/\n', /"webhooks\.on_publish": expected an http/);
  bad('webhooks:\n  on_publish: not a url\n', /"webhooks\.on_publish"/);
  bad('webhooks:\n  on_timeout: maybe\n', /"refuse" or "allow"/);
  bad('webhooks:\n  on_done: http://x/\n', /unknown config key "webhooks\.on_done"/);
  bad('webhooks:\n  timeout_ms: 0\n', /timeout_ms/);
  bad('limits:\n  connection_rate_per_ip: 5\n  connection_burst_per_ip: 0\n', /connection_burst_per_ip/);
  bad('mesh:\n  nats_auth: { user: u }\n', /give both or neither/);
  bad('mesh:\n  nats_auth: { nkey_seed: SUXXX, nkey_file: /x }\n', /one, not both/);
  bad('mesh:\n  nats_auth: { nkey_seed: notaseed }\n', /NKey user seed/);
  bad('mesh:\n  nats_auth: { password: p }\n', /unknown config key "mesh\.nats_auth\.password"/);
});

test('configSource remembers how a config was loaded (for SIGHUP)', () => {
  const f = file('node_id: t\n');
  const c = loadConfig({ file: f, flags: { 'rtmp-port': '1999' } });
  assert.equal(configSource(c)?.file, f);
  assert.equal(configSource(c)?.flags?.['rtmp-port'], '1999');
});

test('diffConfig names changed keys, including keys added to or removed from maps', () => {
  const a = authCfg('auth:\n  apps:\n    live:\n      publish: { keys: [k1] }\n');
  const b = authCfg('auth:\n  apps:\n    live:\n      publish: { keys: [k2] }\n    vod:\n      play: { public: true }\nlimits:\n  max_connections_per_ip: 7\nmedia:\n  flush_ms: 5\n');
  assert.deepEqual(diffConfig(a, b), [
    'auth.apps.live.publish.keys',
    'auth.apps.vod.play.keys',
    'auth.apps.vod.play.public',
    'auth.apps.vod.play.stream_keys',
    'auth.apps.vod.play.tokens',
    'auth.apps.vod.token_secret',
    'limits.max_connections_per_ip',
    'media.flush_ms',
  ]);
});

// ---------------------------------------------------------------- connection rate

test('ConnectionLimiter: a token bucket per address limits the connection rate', () => {
  let now = 0;
  const l = new ConnectionLimiter(1000, 1000, 2, 3, () => now);
  const admit = (ip: string): boolean => {
    const r = l.admit(ip);
    if (r === undefined) l.release(ip);
    return r === undefined;
  };
  assert.deepEqual([admit('a'), admit('a'), admit('a'), admit('a')], [true, true, true, false], 'burst of 3');
  assert.match(l.admit('a') ?? '', /connection rate limit \(2\/s, burst 3\) exceeded for a/);
  assert.equal(admit('b'), true, 'other addresses unaffected');
  now += 500;
  assert.deepEqual([admit('a'), admit('a')], [true, false], '2/s refills one token in 500 ms');
  now += 10_000;
  assert.deepEqual([admit('a'), admit('a'), admit('a'), admit('a')], [true, true, true, false], 'refills to the burst, no more');
  assert.equal(l.refused.rate, 4);
  // Full buckets are swept so the table does not grow with every address ever seen.
  for (let i = 0; i < 100; i++) admit(`10.0.0.${i}`);
  assert.ok(l.trackedAddresses >= 100);
  now += 60_000;
  admit('z');
  assert.equal(l.trackedAddresses, 1);
});

test('ConnectionLimiter.configure changes caps and rate for the next connection', () => {
  const l = new ConnectionLimiter(10, 2);
  assert.equal(l.admit('a'), undefined);
  assert.equal(l.admit('a'), undefined);
  assert.match(l.admit('a') ?? '', /per-address connection limit \(2\)/);
  l.configure({ max_connections: 10, max_connections_per_ip: 3, connection_rate_per_ip: 0, connection_burst_per_ip: 5 });
  assert.equal(l.admit('a'), undefined);
  assert.equal(l.connectionsFrom('a'), 3);
  l.configure({ max_connections: 3, max_connections_per_ip: 10 });
  assert.match(l.admit('b') ?? '', /node connection limit \(3\)/);
  l.release('a');
  assert.equal(l.admit('b'), undefined);
});

// ---------------------------------------------------------------- webhooks

interface HookCall {
  path: string;
  body: HookBody;
  headers: http.IncomingHttpHeaders;
  raw: string;
}

let hookServer: http.Server;
let hookBase = '';
const calls: HookCall[] = [];
let respond: (c: HookCall, res: http.ServerResponse) => void = (_c, res) => res.writeHead(204).end();

before(async () => {
  hookServer = http.createServer((rq, res) => {
    const parts: Buffer[] = [];
    rq.on('data', (d: Buffer) => parts.push(d));
    rq.on('end', () => {
      const raw = Buffer.concat(parts).toString('utf8');
      const call = { path: rq.url ?? '', body: JSON.parse(raw) as HookBody, headers: rq.headers, raw };
      calls.push(call);
      respond(call, res);
    });
  });
  await new Promise<void>((r) => hookServer.listen(0, '127.0.0.1', () => r()));
  const addr = hookServer.address();
  hookBase = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
});

after(async () => {
  hookServer.closeAllConnections();
  await new Promise((r) => hookServer.close(r));
});

async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const addr = s.address();
  await new Promise((r) => s.close(r));
  return typeof addr === 'object' && addr ? addr.port : 0;
}

function hooks(over: Partial<WebhooksConfig>): WebhookClient {
  return new WebhookClient({ ...defaultConfig().webhooks, ...over }, 'node-7', quietLog);
}

test('splitRemote handles IPv4, mapped and bracketed IPv6', () => {
  assert.deepEqual(splitRemote('1.2.3.4:5678'), { ip: '1.2.3.4', port: 5678 });
  assert.deepEqual(splitRemote('::ffff:1.2.3.4:80'), { ip: '::ffff:1.2.3.4', port: 80 });
  assert.deepEqual(splitRemote('[::1]:80'), { ip: '::1', port: 80 });
});

test('on_publish: the JSON body, 2xx allows, non-2xx refuses with the status and body as reason', async () => {
  calls.length = 0;
  const h = hooks({ on_publish: `${hookBase}/pub`, secret: 'hooksecret' });
  respond = (_c, res) => res.writeHead(200).end('ok');
  const r = req('live', 'cam', 'key=abc&x=1', { sessionId: 'r42', remote: '127.0.0.9:5555' });
  assert.deepEqual(await h.check('publish', r), { ok: true });
  assert.deepEqual(await h.check('play', r), { ok: true }, 'no on_play hook: allowed without a call');
  assert.equal(calls.length, 1);
  const c = calls[0]!;
  assert.equal(c.path, '/pub');
  assert.equal(c.headers['content-type'], 'application/json');
  assert.equal(c.headers['x-meshcast-signature'], `sha256=${createHmac('sha256', 'hooksecret').update(c.raw).digest('hex')}`);
  const { time, ...rest } = c.body;
  assert.ok(!Number.isNaN(Date.parse(time)));
  assert.deepEqual(rest, { action: 'publish', app: 'live', stream: 'cam', params: { key: 'abc', x: '1' }, client_id: 'r42', ip: '127.0.0.9', port: 5555, protocol: 'rtmp', node: 'node-7' });
  respond = (_c, res) => res.writeHead(403).end('  banned\n for spam ');
  assert.deepEqual(await h.check('publish', r), { ok: false, reason: 'on_publish hook refused (HTTP 403): banned for spam' });
  respond = (_c, res) => res.writeHead(302, { location: 'http://elsewhere/' }).end();
  assert.deepEqual(await h.check('publish', r), { ok: false, reason: 'on_publish hook refused (HTTP 302)' });
  respond = (_c, res) => res.writeHead(500).end('x'.repeat(10_000));
  const long = await h.check('publish', r);
  assert.ok(!long.ok && long.reason.length < 260, 'reason is bounded');
});

test('a hook that does not answer in time refuses by default, allows with on_timeout: allow', async () => {
  respond = (_c, res) => setTimeout(() => res.writeHead(200).end(), 1000);
  const t0 = Date.now();
  assert.deepEqual(await hooks({ on_play: `${hookBase}/play`, timeout_ms: 200 }).check('play', req('live', 'cam')), { ok: false, reason: 'on_play hook did not answer within 200 ms' });
  assert.ok(Date.now() - t0 < 800);
  assert.deepEqual(await hooks({ on_play: `${hookBase}/play`, timeout_ms: 200, on_timeout: 'allow' }).check('play', req('live', 'cam')), { ok: true });
  // Unreachable hooks follow the same policy.
  const dead = await closedPort();
  const d = await hooks({ on_play: `http://127.0.0.1:${dead}/none`, timeout_ms: 500 }).check('play', req('live', 'cam'));
  assert.equal(d.ok, false);
  assert.match(d.ok ? '' : d.reason, /^on_play hook unreachable \(ECONNREFUSED\)$/);
  assert.deepEqual(await hooks({ on_play: `http://127.0.0.1:${dead}/none`, timeout_ms: 500, on_timeout: 'allow' }).check('play', req('live', 'cam')), { ok: true });
  respond = (_c, res) => res.writeHead(204).end();
});

test('done hooks carry the session summary; drain waits for them', async () => {
  calls.length = 0;
  respond = (_c, res) => setTimeout(() => res.writeHead(204).end(), 100);
  const h = hooks({ on_publish_done: `${hookBase}/pd`, on_play_done: `${hookBase}/vd` });
  h.notifyDone('publish', req('live', 'cam'), { bytesIn: 10, bytesOut: 20, durationMs: 30 });
  h.notifyDone('play', req('live', 'cam', '', { protocol: 'http-flv' }), { bytesIn: 0, bytesOut: 99, durationMs: 5 });
  await h.drain();
  assert.equal(calls.length, 2);
  const pd = calls.find((c) => c.path === '/pd')!.body;
  assert.equal(pd.action, 'publish_done');
  assert.deepEqual([pd.bytes_in, pd.bytes_out, pd.duration_ms], [10, 20, 30]);
  const vd = calls.find((c) => c.path === '/vd')!.body;
  assert.equal(vd.action, 'play_done');
  assert.equal(vd.protocol, 'http-flv');
  respond = (_c, res) => res.writeHead(204).end();
});

test('the authoriser checks keys before calling the hook, and prefixes reasons with the request', async () => {
  calls.length = 0;
  const cfg = authCfg(`auth:\n  apps:\n    live:\n      publish: { keys: [good] }\nwebhooks:\n  on_publish: ${hookBase}/pub\n`);
  const a = new ConfiguredAuthorizer(cfg, quietLog);
  respond = (_c, res) => res.writeHead(403).end('no');
  assert.deepEqual(await a.authorize('publish', req('live', 'cam', 'key=bad')), { ok: false, reason: 'publish live/cam unauthorised: stream key invalid' });
  assert.equal(calls.length, 0, 'the hook is not asked when the key is wrong');
  assert.deepEqual(await a.authorize('publish', req('live', 'cam', 'key=good')), { ok: false, reason: 'publish live/cam unauthorised: on_publish hook refused (HTTP 403): no' });
  assert.equal(calls.length, 1);
  respond = (_c, res) => res.writeHead(204).end();
  assert.deepEqual(await a.authorize('publish', req('live', 'cam', 'key=good')), { ok: true });
});
