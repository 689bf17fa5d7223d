#!/usr/bin/env node
// Runs the production build (services/node/dist, made by `npm run build`); tests and
// development run the TypeScript sources through tsx instead (node --import tsx src/cli.ts).
import { existsSync } from 'node:fs';
import { URL, fileURLToPath } from 'node:url';

const entry = fileURLToPath(new URL('../dist/meshcast.mjs', import.meta.url));
if (!existsSync(entry)) {
  process.stderr.write(`meshcast: ${entry} is missing; run npm run build\n`);
  process.exit(1);
}
// Stack traces name the TypeScript files and lines (the bundle's source map).
process.setSourceMapsEnabled(true);
await import(entry);
