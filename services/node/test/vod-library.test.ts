import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, symlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalVodLibrary, parseVodName, VodError } from '../src/vod/vod-library.ts';
import { vodRefusalReason as refusal } from './refusals.ts';


test('request names: FMS/crtmpserver forms map to a relative file and format', () => {
  assert.deepEqual(parseVodName('mp4:dir/file.mp4'), { name: 'dir/file.mp4', format: 'mp4' });
  assert.deepEqual(parseVodName('MP4:dir/file'), { name: 'dir/file.mp4', format: 'mp4' });
  assert.deepEqual(parseVodName('mp4:clip.m4v'), { name: 'clip.m4v', format: 'mp4' });
  assert.deepEqual(parseVodName('flv:file.flv'), { name: 'file.flv', format: 'flv' });
  assert.deepEqual(parseVodName('flv:file'), { name: 'file.flv', format: 'flv' });
  assert.deepEqual(parseVodName('file.flv'), { name: 'file.flv', format: 'flv' });
  assert.deepEqual(parseVodName('file'), { name: 'file.flv', format: 'flv' });
  assert.deepEqual(parseVodName('show.2024'), { name: 'show.2024.flv', format: 'flv' });
  assert.deepEqual(parseVodName('a/b c/file.mp4'), { name: 'a/b c/file.mp4', format: 'mp4' });
});

test('request names: every traversal, encoding trick, absolute path and hidden file is bad_path', () => {
  const bad = [
    '../etc/passwd',
    'mp4:../x.mp4',
    'dir/../../x.mp4',
    '..',
    'a/./b.mp4',
    '/etc/passwd',
    'mp4:/abs/file.mp4',
    '%2e%2e%2fx.mp4',
    '%252e%252e%252fx.mp4',
    '..%2fx.mp4',
    '..\\x.mp4',
    'dir\\file.mp4',
    'file\u0000.mp4',
    'file.mp4\u0000.flv',
    '.hidden.mp4',
    'dir/.git/config',
    'a//b.mp4',
    'dir/',
    '',
    'mp4:',
    'C:/x.mp4',
    'file.mp4?x=1',
    'mp4:file.flv',
    'flv:file.mp4',
  ];
  for (const name of bad) assert.equal(refusal(() => parseVodName(name)), 'bad_path', JSON.stringify(name));
});

test('resolve: files under the root; a symlink out of the root is bad_path; missing is not_found; other apps are not VOD', async () => {
  const base = await mkdtemp(join(tmpdir(), 'vodlib-'));
  try {
    const root = join(base, 'root');
    await mkdir(join(root, 'dir'), { recursive: true });
    await writeFile(join(root, 'dir', 'file.mp4'), Buffer.alloc(1234));
    await writeFile(join(root, 'clip.flv'), Buffer.alloc(10));
    await writeFile(join(base, 'secret.mp4'), 'secret');
    await symlink(join(base, 'secret.mp4'), join(root, 'escape.mp4'));
    await symlink(base, join(root, 'updir'));
    await symlink(join(root, 'dir', 'file.mp4'), join(root, 'inside.mp4'));
    await mkdir(join(root, 'folder.mp4'));
    const lib = new LocalVodLibrary({ appSource: (app) => (app === 'vod' ? { root } : undefined) });
    assert.equal(lib.isVodApp('vod'), true);
    assert.equal(lib.isVodApp('live'), false);
    const f = await lib.resolve('vod', 'mp4:dir/file.mp4');
    assert.equal(f.size, 1234);
    assert.equal(f.format, 'mp4');
    assert.equal(f.name, 'dir/file.mp4');
    assert.ok(f.path.endsWith(join('dir', 'file.mp4')));
    assert.equal((await lib.resolve('vod', 'clip')).format, 'flv');
    assert.equal((await lib.resolve('vod', 'inside.mp4')).size, 1234, 'a symlink that stays inside the root is served');
    const reason = async (name: string, app = 'vod'): Promise<string> => {
      try {
        await lib.resolve(app, name);
        return 'accepted';
      } catch (err) {
        assert.ok(err instanceof VodError, String(err));
        return err.reason;
      }
    };
    assert.equal(await reason('escape.mp4'), 'bad_path');
    assert.equal(await reason('updir/secret.mp4'), 'bad_path');
    assert.equal(await reason('../secret.mp4'), 'bad_path');
    assert.equal(await reason('nothere.mp4'), 'not_found');
    assert.equal(await reason('folder.mp4'), 'not_found');
    assert.equal(await reason('dir/file.mp4', 'live'), 'not_vod_app');
  } finally {
    await rm(base, { recursive: true, force: true });
  }
});

test('config: a VOD root that is missing or not a directory, a root-less app without a mesh, a tiny cache: one line naming the setting', async () => {
  const { loadConfig, appConfig } = await import('../src/config.ts');
  const base = await mkdtemp(join(tmpdir(), 'vodcfg-'));
  try {
    await writeFile(join(base, 'file'), 'x');
    const fails = (inline: Record<string, unknown>, re: RegExp): void => {
      assert.throws(() => loadConfig({ inline }), (err: Error) => re.test(err.message) && !err.message.includes('\n'));
    };
    fails({ apps: { vod: { vod: { root: join(base, 'missing') } } } }, /config key "apps\.vod\.vod\.root": .*cannot be read/);
    fails({ apps: { vod: { vod: { root: join(base, 'file') } } } }, /config key "apps\.vod\.vod\.root": .*is not a directory/);
    fails({ apps: { vod: { vod: true } } }, /config key "apps\.vod\.vod\.root": is empty, and without a mesh/);
    fails({ apps: { vod: { vod: { root: base } } }, vod: { cache_max_bytes: 1000 } }, /config key "vod\.cache_max_bytes": expected at least 1048576/);
    fails({ apps: { vod: { vod: { root: base } } }, vod: { cache_dir: join(base, 'file', 'cache') } }, /config key "vod\.cache_dir": .*file is not a directory/);
    // Without a VOD app the cache directory is never made, so it is not checked.
    assert.doesNotThrow(() => loadConfig({ inline: { vod: { cache_dir: join(base, 'file', 'cache') } } }));
    const c = loadConfig({ inline: { apps: { vod: { vod: { root: base } } } } });
    assert.deepEqual(appConfig(c, 'vod').vod, { root: base, remote: true });
    assert.equal(appConfig(c, 'live').vod, false);
  } finally {
    await rm(base, { recursive: true, force: true });
  }
});
