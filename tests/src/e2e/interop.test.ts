/**
 * The project's RTMP client and the static relays against servers that are not meshcast:
 * ffmpeg's RTMP server mode (as a target and as a source) and nginx-rtmp.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RtmpClient } from '@meshcast/node/client';
import { startNginx, type ServerHandle } from '@meshcast/tools';
import { NodeProcess } from '../harness/node-process.ts';
import { FfmpegPublisher, ffprobe, run } from '../harness/ffmpeg.ts';
import { freePort, waitFor } from '../harness/ports.ts';

interface NodeInfo {
  staticRelays: Array<{ kind: string; state: string; connects: number }>;
}

describe('interop with ffmpeg and nginx-rtmp', () => {
  const cleanup: Array<() => Promise<unknown> | void> = [];
  after(async () => {
    for (const c of cleanup.reverse()) await c();
  });

  test('static push restreams a mesh stream to ffmpeg listening as an RTMP server', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mc-push-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const port = await freePort('127.0.0.1');
    const out = join(dir, 'out.flv');
    const target = `rtmp://127.0.0.1:${port}/live/out`;
    const listener = spawn('ffmpeg', ['-hide_banner', '-v', 'error', '-listen', '1', '-i', target, '-t', '3', '-c', 'copy', '-y', out], { stdio: 'ignore' });
    const done = new Promise<number | null>((r) => listener.on('exit', r));
    cleanup.push(() => void listener.kill('SIGKILL'));
    const node = await NodeProcess.start({ config: { static_relays: [{ push: 'live/src', to: target }] } });
    cleanup.push(async () => {
      await node.stop();
      node.cleanup();
    });
    const pub = new FfmpegPublisher(`${node.rtmpUrl}/live/src`, { width: 640, height: 360, fps: 25, gop: 25 });
    cleanup.push(() => pub.stop());
    assert.equal(await done, 0, 'ffmpeg recorded 3 s from the push');
    const probe = await ffprobe(out);
    const v = probe.streams.find((s) => s.codec_type === 'video');
    assert.equal(v?.codec_name, 'h264');
    assert.equal(v?.width, 640);
    assert.equal(probe.streams.find((s) => s.codec_type === 'audio')?.codec_name, 'aac');
    const dec = await run('ffmpeg', ['-v', 'error', '-i', out, '-f', 'null', '-'], 20_000);
    assert.equal(dec.stderr.trim(), '', 'pushed stream decodes cleanly');
    // The target went away (ffmpeg exited after 3 s): the push reconnects when it is back.
    const out2 = join(dir, 'out2.flv');
    const again = spawn('ffmpeg', ['-hide_banner', '-v', 'error', '-listen', '1', '-i', target, '-t', '2', '-c', 'copy', '-y', out2], { stdio: 'ignore' });
    cleanup.push(() => void again.kill('SIGKILL'));
    assert.equal(await new Promise<number | null>((r) => again.on('exit', r)), 0, 'second recording after reconnect');
    assert.equal((await ffprobe(out2)).streams.find((s) => s.codec_type === 'video')?.codec_name, 'h264');
    const info = await node.api<NodeInfo>('/api/v1/node');
    assert.ok(info.staticRelays[0]!.connects >= 2, `push connected ${info.staticRelays[0]!.connects} times`);
  });

  test('the client plays from ffmpeg serving RTMP', async () => {
    const port = await freePort('127.0.0.1');
    const server: ChildProcess = spawn(
      'ffmpeg',
      ['-hide_banner', '-v', 'error', '-re', '-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=25', '-t', '8', '-c:v', 'libx264', '-preset', 'ultrafast', '-g', '25', '-f', 'flv', '-listen', '1', `rtmp://127.0.0.1:${port}/live/x`],
      { stdio: 'ignore' },
    );
    cleanup.push(() => void server.kill('SIGKILL'));
    const frames: number[] = [];
    const client = await waitFor('ffmpeg RTMP server up', async () => RtmpClient.openPlayer(`rtmp://127.0.0.1:${port}/live/x`, { onFrame: (m) => frames.push(m.type), timeoutMs: 3000 }).catch(() => undefined), 10_000, 200);
    await waitFor('video from ffmpeg', () => frames.filter((t) => t === 9).length > 20, 10_000);
    client.close();
  });

  test('static pull brings a stream from nginx-rtmp into the mesh; the client also plays nginx-rtmp directly', async () => {
    let nginx: ServerHandle;
    try {
      nginx = await startNginx({ host: '127.0.0.1' });
    } catch (err) {
      assert.fail(`nginx with libnginx-mod-rtmp is required (scripts/setup-system.sh installs it): ${String(err)}`);
    }
    cleanup.push(() => nginx.stop());
    const origin = `rtmp://127.0.0.1:${nginx.rtmpPort}/live/origin`;
    const pub = new FfmpegPublisher(origin, { width: 320, height: 240, fps: 25, gop: 25 });
    cleanup.push(() => pub.stop());
    const frames: number[] = [];
    const direct = await waitFor('nginx serves the stream', async () => RtmpClient.openPlayer(origin, { onFrame: (m) => frames.push(m.type), timeoutMs: 3000 }).catch(() => undefined), 15_000, 300);
    await waitFor('frames from nginx', () => frames.filter((t) => t === 9).length > 20, 10_000);
    direct.close();
    const node = await NodeProcess.start({ config: { static_relays: [{ pull: origin, as: 'live/pulled' }] } });
    cleanup.push(async () => {
      await node.stop();
      node.cleanup();
    });
    const probe = await waitFor('pulled stream playable', async () => ffprobe(`${node.httpUrl}/live/pulled.flv`, 15_000).catch(() => undefined), 20_000, 500);
    assert.equal(probe.streams.find((s) => s.codec_type === 'video')?.width, 320);
    assert.equal((await node.api<NodeInfo>('/api/v1/node')).staticRelays[0]!.state, 'running');
  });
});
