/**
 * The production build (npm run build → services/node/dist) as the bin, the image and
 * `npm run mesh` run it: a real node process from bin/meshcast.mjs, no tsx. Every other test
 * runs the TypeScript sources; this one proves the bundle starts, answers /healthz, and finds
 * the files it reads beside itself at run time (the dashboard page and the vendored players).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';

const PKG = resolve(import.meta.dirname, '..');
const BIN = join(PKG, 'bin/meshcast.mjs');
const BUNDLE = join(PKG, 'dist/meshcast.mjs');
const HOST = '127.0.3.7';

function freePort(host: string): Promise<number> {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.once('error', rej);
    srv.listen(0, host, () => {
      const a = srv.address();
      srv.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

describe('built bin (services/node/dist)', { timeout: 60_000 }, () => {
  let proc: ChildProcess | undefined;
  after(() => {
    if (proc?.exitCode === null) proc.kill('SIGKILL');
  });

  it('bundles the workspace packages and leaves third-party packages external', () => {
    const code = readFileSync(BUNDLE, 'utf8');
    // A workspace import left in the bundle would load TypeScript at run time.
    assert.doesNotMatch(code, /from ["']@meshcast\//);
    assert.doesNotMatch(code, /from ["']tsx/);
    assert.match(code, /from ["']fastify["']/);
    assert.match(code, /sourceMappingURL=meshcast\.mjs\.map/);
  });

  it('starts, answers /healthz, and serves the dashboard and its vendored players from the bundle layout', async () => {
    const [http, rtmp, admin] = [await freePort(HOST), await freePort(HOST), await freePort(HOST)];
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('MESHCAST_') || k === 'NODE_OPTIONS') delete env[k];
    const t0 = Date.now();
    proc = spawn(process.execPath, [BIN, 'node', '--host', HOST, '--http-port', String(http), '--rtmp-port', String(rtmp), '--admin-host', HOST, '--admin-port', String(admin), '--log-level', 'warn'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    for (;;) {
      assert.equal(proc.exitCode, null, `the built node exited:\n${out}`);
      const r = await fetch(`http://${HOST}:${http}/healthz`).catch(() => undefined);
      if (r?.status === 200) break;
      assert.ok(Date.now() - t0 < 20_000, `no 200 on /healthz within 20 s:\n${out}`);
      await new Promise((res) => setTimeout(res, 50));
    }
    const adminUrl = `http://${HOST}:${admin}`;
    const page = await fetch(`${adminUrl}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<html/i);
    const app = await fetch(`${adminUrl}/dashboard/app.js`);
    assert.equal(app.status, 200);
    for (const vendor of ['hls.js', 'mpegts.js']) {
      const r = await fetch(`${adminUrl}/dashboard/vendor/${vendor}`);
      assert.equal(r.status, 200, vendor);
      assert.ok((await r.arrayBuffer()).byteLength > 100_000, `${vendor} is the library, not a stub`);
    }
    proc.kill('SIGTERM');
    const code = await new Promise<number | null>((res) => proc!.once('exit', (c) => res(c)));
    assert.equal(code, 0, out);
  });

  it('without a build, the bin fails with one line saying how to make it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshcast-nobuild-'));
    try {
      mkdirSync(join(dir, 'bin'));
      copyFileSync(BIN, join(dir, 'bin/meshcast.mjs'));
      const r = spawnSync(process.execPath, [join(dir, 'bin/meshcast.mjs'), '--help'], { encoding: 'utf8' });
      assert.equal(r.status, 1);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /dist\/meshcast\.mjs is missing; run npm run build/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
