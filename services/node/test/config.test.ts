import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, appConfig, loadConfig } from '../src/config.ts';

function file(text: string): string {
  const p = join(mkdtempSync(join(tmpdir(), 'mc-cfg-')), 'c.yaml');
  writeFileSync(p, text);
  return p;
}

test('defaults: RTMP on 1935, HTTP on 8080, both roles, GOP cache on', () => {
  const c = loadConfig({ flags: { 'node-id': 'a' } });
  assert.equal(c.rtmp_port, 1935);
  assert.equal(c.http_port, 8080);
  assert.deepEqual(c.roles, ['ingest', 'playback']);
  assert.equal(c.media.gop_cache, true);
  assert.deepEqual(c.mesh.nats, []);
});

test('file < environment < flags', () => {
  const f = file('node_id: fromfile\nrtmp_port: 1000\nhttp_port: 2000\nmedia:\n  flush_ms: 7\n');
  const c = loadConfig({ file: f, env: { MESHCAST_RTMP_PORT: '1100', MESHCAST_ROLES: 'playback' }, flags: { 'rtmp-port': '1200' } });
  assert.equal(c.node_id, 'fromfile');
  assert.equal(c.rtmp_port, 1200);
  assert.equal(c.http_port, 2000);
  assert.equal(c.media.flush_ms, 7);
  assert.deepEqual(c.roles, ['playback']);
});

test('an unknown key is an error that names it, nested or not', () => {
  assert.throws(() => loadConfig({ file: file('rtmp_prot: 1\n') }), (e: unknown) => e instanceof ConfigError && /"rtmp_prot"/.test(e.message));
  assert.throws(() => loadConfig({ file: file('media:\n  gop_cahce: true\n') }), /"media\.gop_cahce"/);
  assert.throws(() => loadConfig({ file: file('apps:\n  live:\n    duplicate: reject\n') }), /"apps\.live\.duplicate"/);
});

test('wrong types and bad values are named', () => {
  assert.throws(() => loadConfig({ file: file('rtmp_port: abc\n') }), /"rtmp_port": expected a non-negative number/);
  assert.throws(() => loadConfig({ flags: { roles: 'ingest,edge' } }), /roles/);
  assert.throws(() => loadConfig({ flags: { 'node-id': 'a.b' } }), /node_id/);
  assert.throws(() => loadConfig({ file: file('apps:\n  live:\n    duplicate_publish: sometimes\n') }), /"takeover" or "reject"/);
});

test('per-app settings override the defaults', () => {
  const c = loadConfig({ file: file('node_id: x\napps:\n  live:\n    duplicate_publish: reject\n  "*":\n    play_not_found: reject\n') });
  assert.equal(appConfig(c, 'live').duplicate_publish, 'reject');
  assert.equal(appConfig(c, 'live').play_not_found, 'reject');
  assert.equal(appConfig(c, 'other').duplicate_publish, 'takeover');
});

test('comma-separated NATS servers from the environment', () => {
  const c = loadConfig({ env: { MESHCAST_NATS: 'nats://127.0.0.1:4222, nats://127.0.0.1:4223', MESHCAST_NODE_ID: 'n' } });
  assert.deepEqual(c.mesh.nats, ['nats://127.0.0.1:4222', 'nats://127.0.0.1:4223']);
});
