// Shared by the tools' bins: runs one entry point of the production build (tools/dist, made by
// `npm run build`), or says in one line how to make it. Tests and development run the
// TypeScript sources through tsx instead.
import { existsSync } from 'node:fs';
import { URL, fileURLToPath } from 'node:url';

/** @param {string} name  the entry point, e.g. 'meshctl' for tools/dist/meshctl.mjs */
export async function runBuilt(name) {
  const entry = fileURLToPath(new URL(`../dist/${name}.mjs`, import.meta.url));
  if (!existsSync(entry)) {
    process.stderr.write(`${name}: ${entry} is missing; run npm run build\n`);
    process.exit(1);
  }
  // Stack traces name the TypeScript files and lines (the bundle's source map).
  process.setSourceMapsEnabled(true);
  await import(entry);
}
