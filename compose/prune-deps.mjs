#!/usr/bin/env node
// Build-stage step of compose/Dockerfile: turns a copy of the repository's installed tree into
// what a node needs at run time. Removes every package package-lock.json marks as a dev
// dependency (typescript, eslint, turbo, playwright, …), workspace links to packages the image
// does not hold (tests), caches, the .bin links and the workspaces' test folders.
// Usage: node prune-deps.mjs DIR   (DIR holds package.json, package-lock.json, node_modules)
import { existsSync, lstatSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2] ?? '.';
const lock = JSON.parse(readFileSync(join(dir, 'package-lock.json'), 'utf8'));
if (!lock.packages) throw new Error('prune-deps: package-lock.json has no "packages" (lockfile v2+ needed)');

let removed = 0;
for (const [path, meta] of Object.entries(lock.packages)) {
  if (!path.includes('node_modules/')) continue;
  const full = join(dir, path);
  if (!existsSync(full) && !isLink(full)) continue;
  // A link to a workspace the image does not carry (tests/) would dangle.
  const dangling = meta.link === true && !existsSync(join(dir, meta.resolved ?? ''));
  if (meta.dev === true || meta.devOptional === true || dangling) {
    rmSync(full, { recursive: true, force: true });
    removed++;
  }
}
for (const extra of ['node_modules/.bin', 'node_modules/.cache', 'node_modules/.package-lock.json']) rmSync(join(dir, extra), { recursive: true, force: true });
// Empty scope folders left behind (e.g. @typescript-eslint).
for (const name of readdirSync(join(dir, 'node_modules'))) {
  const p = join(dir, 'node_modules', name);
  if (name.startsWith('@') && readdirSync(p).length === 0) rmSync(p, { recursive: true });
}
for (const ws of lock.packages['']?.workspaces ?? []) {
  rmSync(join(dir, ws, 'test'), { recursive: true, force: true });
  rmSync(join(dir, ws, 'node_modules', '.cache'), { recursive: true, force: true });
}
process.stdout.write(`prune-deps: removed ${removed} development packages\n`);

function isLink(p) {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
