/**
 * `npm run mesh`: started as a user would (its own process group, like a terminal job), it
 * prints its URLs, a publish to an ingest node plays from a playback node, and one Ctrl-C
 * (SIGINT to the group) stops every process it started and removes its temp dir.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { RtmpClient, startSyntheticPublisher, syntheticFrameNumber } from '@meshcast/node/client';

const REPO = resolve(import.meta.dirname, '../..');

function refuses(host: string, port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = net.connect({ host, port }, () => {
      s.destroy();
      res(false);
    });
    s.on('error', () => res(true));
  });
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('npm run mesh', { timeout: 60_000 }, () => {
  let proc: ChildProcess | undefined;

  after(() => {
    // Only if the test failed half-way: the group we started, nothing else.
    if (proc?.pid && groupAlive(proc.pid)) process.kill(-proc.pid, 'SIGKILL');
  });

  it('starts NATS + 2 ingest + 3 playback nodes, prints URLs, carries a stream, and Ctrl-C cleans up', async () => {
    proc = spawn('npm', ['run', 'mesh', '--silent', '--', '--ports', 'auto'], { cwd: REPO, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => proc!.on('exit', (code, signal) => res({ code, signal })));
    const t0 = Date.now();
    while (!out.includes('Ctrl-C stops everything')) {
      assert.ok(Date.now() - t0 < 40_000, `mesh did not come up:\n${out}\n${err}`);
      assert.equal(proc.exitCode, null, `mesh exited early:\n${out}\n${err}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(out, /meshcast mesh is up: 2 ingest nodes, 3 playback nodes, NATS nats:\/\/127\.0\.0\.1:\d+/);
    const publish = /publish\s+(rtmp:\/\/127\.0\.0\.11:\d+)\/live\/<key>\s+\(ingest-1\)/.exec(out)?.[1];
    const plays = [...out.matchAll(/(rtmp:\/\/127\.0\.0\.2\d:\d+)\/live\/<key>\s+(http:\/\/127\.0\.0\.2\d:\d+)\/live\/<key>\.flv\s+\((edge-\d)\)/g)];
    const dashboard = /dashboard (http:\/\/127\.0\.0\.21:\d+)\//.exec(out)?.[1];
    const natsUrl = /NATS (nats:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
    const stateDir = /state in (\S+) \(removed on exit\)/.exec(out)?.[1];
    assert.ok(publish && dashboard && natsUrl && stateDir, out);
    assert.deepEqual(plays.map((m) => m[3]), ['edge-1', 'edge-2', 'edge-3']);
    assert.ok(existsSync(stateDir));
    assert.equal((await fetch(`${dashboard}/`)).status, 200);
    // The dashboard is on edge-1's admin listener, not on its public one (which serves media only).
    assert.notEqual(dashboard, plays[0]![2]);
    assert.equal((await fetch(`${plays[0]![2]}/`)).status, 404);
    const admins = [...out.matchAll(/admin\s+(http:\/\/127\.0\.0\.\d+:\d+)\/\s+\(([\w-]+)\)/g)];
    assert.deepEqual(admins.map((m) => m[2]), ['ingest-1', 'ingest-2', 'edge-1', 'edge-2', 'edge-3']);
    assert.equal(admins[2]![1], dashboard);

    const pub = await startSyntheticPublisher(`${publish}/live/demo`);
    let frames = 0;
    const viewer = await RtmpClient.openPlayer(`${plays[1]![1]}/live/demo`, { onFrame: (m) => void (syntheticFrameNumber(m.type, m.payload) !== undefined && frames++) });
    const t1 = Date.now();
    while (frames < 30) {
      assert.ok(Date.now() - t1 < 10_000, `only ${frames} frames through edge-2`);
      await new Promise((r) => setTimeout(r, 50));
    }
    viewer.close();
    pub.stop();

    // Ctrl-C: the terminal signals the whole foreground group.
    process.kill(-proc.pid!, 'SIGINT');
    const { code, signal } = await exited;
    // npm itself dies of the SIGINT (as in a terminal); the launcher behind it finishes its clean stop.
    assert.ok(code === 0 || signal === 'SIGINT', `npm: ${code ?? signal}\n${out}\n${err}`);
    const t2 = Date.now();
    while (!out.includes('stopped; removed ') || groupAlive(proc.pid!)) {
      assert.ok(Date.now() - t2 < 20_000, `not stopped:\n${out}\n${err}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.doesNotMatch(err, /exited \(\d+\) while the mesh was running|killing everything/);
    assert.ok(!existsSync(stateDir), 'temp dir removed');
    const nats = new URL(natsUrl);
    assert.ok(await refuses(nats.hostname, Number(nats.port)), 'NATS stopped');
    for (const m of plays) {
      const u = new URL(m[2]!);
      assert.ok(await refuses(u.hostname, Number(u.port)), `${m[3]} stopped`);
    }
    assert.ok(!groupAlive(proc.pid!), 'nothing left in the process group');
  });

  it('says how to install nats-server when it is missing', async () => {
    // A PATH with node and nothing else.
    const dir = mkdtempSync(join(tmpdir(), 'mesh-nonats-'));
    symlinkSync(process.execPath, join(dir, 'node'));
    try {
      const r = await new Promise<{ code: number | null; err: string }>((res) => {
        const p = spawn(process.execPath, ['--import', 'tsx', 'tools/src/mesh-up/main.ts'], { cwd: REPO, env: { ...process.env, PATH: dir }, stdio: ['ignore', 'pipe', 'pipe'] });
        let e = '';
        p.stderr.on('data', (d: Buffer) => (e += d.toString()));
        p.on('exit', (code) => res({ code, err: e }));
      });
      assert.equal(r.code, 1);
      assert.match(r.err, /nats-server is not installed[\s\S]*sudo apt-get install nats-server/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
