import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { loadConfig } from '../src/config.ts';
import { NothingToStitchError, type StitchedMp4 } from '../src/recording/mp4.ts';
import type { SegmentInfo } from '../src/recording/store.ts';
import { VodCache } from '../src/vod/vod-cache.ts';
import { LocalVodLibrary, vodLibraryFor, VodError } from '../src/vod/vod-library.ts';
import { configRefusal as refusal, vodRefusalReason as reason } from './refusals.ts';
import { formatStamp, hasRecordingsVodApps, parseRecordingName, parseStamp, recordedWindow, RecordingsVodSource, REUSE_MS, type RecordingsReader } from '../src/vod/vod-recordings.ts';

const log = pino({ level: 'silent' });


test('recording names: <stream>.mp4 in every protocol\'s form is the latest span; <stream>@<UTC>.mp4 a time', () => {
  for (const n of ['cam1.mp4', 'mp4:cam1.mp4', 'MP4:cam1', 'cam1', 'cam1.MP4']) assert.deepEqual(parseRecordingName(n, 1024), { name: 'cam1.mp4', stream: 'cam1', atMs: undefined }, n);
  const at = Date.UTC(2026, 11, 5, 16, 0, 0);
  assert.deepEqual(parseRecordingName('cam1@20261205T160000Z.mp4', 1024), { name: 'cam1@20261205T160000Z.mp4', stream: 'cam1', atMs: at });
  assert.deepEqual(parseRecordingName('mp4:cam1@20261205T160000Z', 1024), { name: 'cam1@20261205T160000Z.mp4', stream: 'cam1', atMs: at });
  // Only a time after the last "@" is one: a stream name may hold "@" itself.
  assert.deepEqual(parseRecordingName('me@home@20261205T160000Z.mp4', 1024), { name: 'me@home@20261205T160000Z.mp4', stream: 'me@home', atMs: at });
  assert.deepEqual(parseRecordingName('me@home.mp4', 1024), { name: 'me@home.mp4', stream: 'me@home', atMs: undefined });
  assert.equal(parseStamp('20261205T160000Z'), at);
  assert.equal(formatStamp(at + 999), '20261205T160000Z');
});

test('recording names: path rules, a bad time, a "/", a non-MP4 name and a bad stream name are bad_path', () => {
  const bad = [
    '../cam1.mp4',
    'mp4:../x',
    '%2e%2e%2fcam1.mp4',
    '/etc/passwd.mp4',
    'dir/cam1.mp4',
    '.hidden.mp4',
    'cam1:x.mp4',
    'cam1@2026-12-05T16:00:00Z.mp4',
    'cam1@20261205T1600Z.mp4',
    'cam1@20261332T160000Z.mp4',
    'cam1@20261205T250000Z.mp4',
    '@20261205T160000Z.mp4',
    'cam1.flv',
    'flv:cam1',
    'cam1.m4v',
    '.mp4',
    'a\u0000b.mp4',
  ];
  for (const n of bad) assert.equal(reason(() => parseRecordingName(n, 1024)), 'bad_path', n);
  assert.equal(reason(() => parseRecordingName(`${'x'.repeat(20)}.mp4`, 10)), 'bad_path', 'longer than the stream name limit');
});

function seg(startMs: number, durationMs: number, stream = 's'): SegmentInfo {
  return { app: 'live', stream, startMs, durationMs, node: 'n1', format: 'flv', key: `live/${stream}/${startMs}_n1.flv`, bytes: 100 };
}

test('recordedWindow: the latest span from its start, or the span holding a time from that time; at most max', () => {
  const segs = [seg(0, 10_000), seg(10_200, 10_000), seg(60_000, 5_000), seg(65_100, 5_000)];
  assert.deepEqual(recordedWindow(segs, undefined, 600_000), { fromMs: 60_000, durationMs: 10_100 });
  assert.deepEqual(recordedWindow(segs, undefined, 4_000), { fromMs: 60_000, durationMs: 4_000 });
  assert.deepEqual(recordedWindow(segs, 5_000, 600_000), { fromMs: 5_000, durationMs: 15_200 });
  assert.deepEqual(recordedWindow(segs, 5_000, 3_000), { fromMs: 5_000, durationMs: 3_000 });
  assert.equal(recordedWindow(segs, 40_000, 600_000), undefined, 'a time between spans');
  assert.equal(recordedWindow(segs, 70_100, 600_000), undefined, 'the end itself holds nothing');
  assert.equal(recordedWindow([], undefined, 600_000), undefined);
});

/** A RecordingService stand-in: segments as given, and an "MP4" naming the window it was asked for. */
class FakeReader implements RecordingsReader {
  segs: SegmentInfo[] = [];
  stitches: Array<[number, number]> = [];
  async segments(app: string, stream: string): Promise<SegmentInfo[]> {
    return this.segs.filter((s) => s.app === app && s.stream === stream);
  }
  async mp4(_app: string, _stream: string, fromMs: number, durationMs: number): Promise<StitchedMp4> {
    this.stitches.push([fromMs, durationMs]);
    if (!this.segs.some((s) => s.startMs < fromMs + durationMs)) throw new NothingToStitchError('none');
    return { data: Buffer.from(`${fromMs}+${durationMs}`), startMs: fromMs, durationMs };
  }
}

test('RecordingsVodSource: one stitch per window into the cache; a grown span gets a new file after the reuse window; none → not_found', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mc-vodrec-'));
  try {
    const cache = new VodCache(dir, 1024 * 1024, log);
    const reader = new FakeReader();
    let now = 1_000_000;
    const source = new RecordingsVodSource({ cache, reader: () => reader, maxPlaybackMs: 600_000, log, now: () => now });
    const lib = new LocalVodLibrary({ appSource: (app) => (app === 'rec' ? { root: '', recordings: 'live' } : undefined) });
    lib.recordings = source;
    reader.segs = [seg(0, 8_000), seg(8_000, 2_000)];

    const [a, b] = await Promise.all([lib.resolve('rec', 'mp4:s'), lib.resolve('rec', 's.mp4')]);
    assert.equal(a.path, b.path, 'two viewers at once: one file');
    assert.deepEqual({ name: a.name, format: a.format }, { name: 's.mp4', format: 'mp4' });
    assert.equal(await readFile(a.path, 'utf8'), '0+10000');
    assert.deepEqual(reader.stitches, [[0, 10_000]]);

    // The span grows (still recording): within the reuse window the same file, after it a longer one.
    reader.segs.push(seg(10_000, 2_000));
    now += 1000;
    assert.equal((await lib.resolve('rec', 's')).path, a.path);
    now += REUSE_MS;
    const grown = await lib.resolve('rec', 's');
    assert.notEqual(grown.path, a.path);
    assert.equal(await readFile(grown.path, 'utf8'), '0+12000');

    const at = await lib.resolve('rec', `s@${formatStamp(5_000)}.mp4`);
    assert.equal(at.name, 's@19700101T000005Z.mp4');
    assert.equal(await readFile(at.path, 'utf8'), '5000+7000');
    assert.equal(cache.snapshot().fetches, 3);

    await assert.rejects(lib.resolve('rec', 'nobody.mp4'), (e: unknown) => e instanceof VodError && e.reason === 'not_found');
    await assert.rejects(lib.resolve('rec', `s@${formatStamp(100_000)}.mp4`), (e: unknown) => e instanceof VodError && e.reason === 'not_found');
    await assert.rejects(lib.resolve('rec', '../s.mp4'), (e: unknown) => e instanceof VodError && e.reason === 'bad_path');
    assert.deepEqual(lib.refusals, { bad_path: 1, not_found: 2, not_vod_app: 0, unavailable: 0 });
    // The name the play rules see.
    assert.deepEqual(lib.checkedName('rec', 'mp4:s'), { name: 's.mp4', format: 'mp4' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});


test('config: vod {recordings} loads; with a root, naming an app that does not record, or a VOD app (itself) it fails at start naming the setting', () => {
  const ok = loadConfig({ inline: { apps: { live: { record: true }, rec: { vod: { recordings: 'live' } } } } });
  assert.equal(ok.apps.rec!.vod && ok.apps.rec!.vod.recordings, 'live');
  assert.ok(hasRecordingsVodApps(ok));
  assert.deepEqual(vodLibraryFor(ok).checkedName('rec', 'cam'), { name: 'cam.mp4', format: 'mp4' }, 'a bare name is the MP4 in a recordings app');
  // record from app_defaults counts.
  loadConfig({ inline: { app_defaults: { record: true }, apps: { rec: { vod: { recordings: 'live' }, record: false } } } });
  // The existing forms are unchanged.
  const files = loadConfig({ inline: { apps: { vod: { vod: { root: '.' } } } } });
  assert.deepEqual(files.apps.vod!.vod, { root: '.', remote: true });
  assert.ok(!hasRecordingsVodApps(files));
  assert.deepEqual(vodLibraryFor(files).checkedName('vod', 'cam'), { name: 'cam.flv', format: 'flv' }, 'and the FLV in a file app');

  assert.match(refusal({ inline: { apps: { live: { record: true }, rec: { vod: { recordings: 'live', root: '.' } } } } }), /^config key "apps\.rec\.vod": .*both recordings/);
  assert.match(refusal({ inline: { apps: { live: {}, rec: { vod: { recordings: 'live' } } } } }), /^config key "apps\.rec\.vod\.recordings": .*no record/);
  assert.match(refusal({ inline: { app_defaults: { record: true }, apps: { rec: { vod: { recordings: 'rec' } } } } }), /^config key "apps\.rec\.vod\.recordings": .*VOD app \(itself\)/);
  assert.match(refusal({ inline: { apps: { files: { vod: { root: '.' }, record: true }, rec: { vod: { recordings: 'files' } } } } }), /^config key "apps\.rec\.vod\.recordings": .*"files", which is a VOD app/);
  assert.match(refusal({ inline: { app_defaults: { record: true, vod: { recordings: 'live' } } } }), /^config key "app_defaults\.vod\.recordings": .*VOD app/);
  assert.match(refusal({ inline: { apps: { rec: { vod: { recordings: 7 } } } } }), /^config key "apps\.rec\.vod\.recordings": .*no record/);
});
