/**
 * The configuration the docs show is configuration the node accepts.
 *
 * Every fenced block in README.md and docs/*.md whose info string is exactly `yaml` is a
 * `meshcast node` config file, or part of one: it is loaded as a file, with no environment, and
 * must load. YAML that is something else (a compose file, a Kubernetes manifest, a Prometheus
 * scrape job) is fenced as ```` ```yml ```` instead (or `yaml` with a second word, e.g.
 * ```` ```yaml compose ````); those are skipped. So a doc block that shows a mesh node must carry its
 * `mesh_secret` (and a `public_host` if it binds a wildcard host), like the node itself.
 * The NATS credential and TLS files a block names (/etc/meshcast/…) need not exist on the
 * machine running the test: the node checks those files last, so a block whose only refusal
 * is an unreadable one of them passed every other rule. The same for a VOD app's root directory
 * (checked just before them).
 *
 * docs/configuration.md is generated from the schema (`npm run docs:config`); it must equal
 * the generator's output, so it never drifts from the settings the node has.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { configurationMarkdown, loadConfig } from '../src/config.ts';

const REPO = resolve(import.meta.dirname, '../../..');
const DOCS = [join(REPO, 'README.md'), ...readdirSync(join(REPO, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => join(REPO, 'docs', f))];

interface Block {
  where: string;
  text: string;
}

/** Config blocks: fences (possibly indented, as in a list) whose info string is just `yaml`. */
function configBlocks(path: string): Block[] {
  const md = readFileSync(path, 'utf8');
  const out: Block[] = [];
  const fence = /^( *)```([^\n`]*)\n([\s\S]*?)^\1```[ \t]*$/gm;
  for (const m of md.matchAll(fence)) {
    const info = m[2]!.trim();
    if (info !== 'yaml') continue;
    const indent = m[1]!.length;
    const text = m[3]!
      .split('\n')
      .map((l) => l.slice(Math.min(indent, l.length - l.trimStart().length)))
      .join('\n');
    const line = md.slice(0, m.index).split('\n').length;
    out.push({ where: `${relative(REPO, path)}:${line}`, text });
  }
  return out;
}

const dir = mkdtempSync(join(tmpdir(), 'mc-docs-cfg-'));

test('the docs hold YAML config blocks to check', () => {
  const all = DOCS.flatMap(configBlocks);
  assert.ok(all.length >= 1, 'at least docs/configuration.md\'s example');
});

for (const path of DOCS) {
  const blocks = configBlocks(path);
  if (blocks.length === 0) continue;
  test(`every config block in ${relative(REPO, path)} loads`, () => {
    const failures: string[] = [];
    blocks.forEach((b, i) => {
      const file = join(dir, `${relative(REPO, path).replace(/\W/g, '_')}-${i}.yaml`);
      writeFileSync(file, b.text);
      try {
        loadConfig({ file, env: {} });
      } catch (err) {
        if (/^config key "mesh\.nats_(auth|tls)\.\w+_file": cannot read /.test((err as Error).message)) return;
        // A VOD app's root (/srv/media) need not exist here either: it is checked just before those files.
        if (/^config key "(apps\.[^"]+|app_defaults)\.vod\.root": "[^"]*" cannot be read: ENOENT/.test((err as Error).message)) return;
        failures.push(`${b.where}: ${(err as Error).message}`);
      }
    });
    assert.deepEqual(failures, []);
  });
}

test('docs/configuration.md is what `npm run docs:config` generates', () => {
  const committed = readFileSync(join(REPO, 'docs/configuration.md'), 'utf8');
  assert.ok(committed === configurationMarkdown(), 'docs/configuration.md is stale: run `npm run docs:config` and commit it');
});
