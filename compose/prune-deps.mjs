#!/usr/bin/env node
// Build-stage step of compose/Dockerfile: turns a copy of the repository's installed
// node_modules into the production dependencies alone, without a registry. Removes every
// package package-lock.json marks as a development dependency (typescript, tsx, esbuild,
// eslint, turbo, playwright, node-media-server, …): the same set `npm ci --omit=dev` leaves
// out. Also removes the links to the workspace packages (the bundles in */dist carry our own
// code), caches and the .bin links.
// Usage: node prune-deps.mjs DIR   (DIR holds package-lock.json and node_modules)
import { existsSync, lstatSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2] ?? '.';
const lock = JSON.parse(readFileSync(join(dir, 'package-lock.json'), 'utf8'));
if (!lock.packages) throw new Error('prune-deps: package-lock.json has no "packages" (lockfile v2+ needed)');

let dev = 0;
let links = 0;
for (const [path, meta] of Object.entries(lock.packages)) {
  if (!path.includes('node_modules/')) continue;
  const full = join(dir, path);
  if (!existsSync(full) && !isLink(full)) continue;
  if (meta.link === true) {
    rmSync(full, { recursive: true, force: true });
    links++;
  } else if (meta.dev === true || meta.devOptional === true) {
    rmSync(full, { recursive: true, force: true });
    dev++;
  }
}
for (const extra of ['node_modules/.bin', 'node_modules/.cache', 'node_modules/.package-lock.json']) rmSync(join(dir, extra), { recursive: true, force: true });
// Empty scope folders left behind (e.g. @typescript-eslint, @meshcast).
for (const name of readdirSync(join(dir, 'node_modules'))) {
  const p = join(dir, 'node_modules', name);
  if (name.startsWith('@') && readdirSync(p).length === 0) rmSync(p, { recursive: true });
}
// What must never reach the image: a compiler or a dev tool that became a production
// dependency by mistake fails the build here.
const forbidden = ['typescript', 'tsx', 'esbuild', 'eslint', 'turbo', 'node-media-server', 'playwright-core'].filter((p) => existsSync(join(dir, 'node_modules', p)));
if (forbidden.length > 0) {
  process.stderr.write(`prune-deps: development packages are production dependencies: ${forbidden.join(', ')} (see package.json)\n`);
  process.exit(1);
}
process.stdout.write(`prune-deps: removed ${dev} development packages and ${links} workspace links; ${readdirSync(join(dir, 'node_modules')).length} entries left\n`);

function isLink(p) {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
