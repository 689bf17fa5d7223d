#!/usr/bin/env node
// The production build: bundles a workspace's entry points with esbuild into its dist/, one
// ES module per entry point plus its source map. Our own workspace code (@meshcast/proto,
// mesh, node, tools, whose package exports are TypeScript sources) goes into the bundle;
// every third-party package stays external and is loaded from node_modules at run time
// (pino's transports, fastify's plugins and native addons load files by path, and the image
// keeps exactly the production dependencies). Tests and development keep running the
// sources through tsx; the bins, the Docker image and `npm run mesh` run dist.
//
// Usage: node scripts/build.mjs node|tools   (each workspace's `npm run build` does this;
//        `npm run build` at the root runs both through turbo)
import { build } from 'esbuild';
import { cpSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';

const ROOT = resolve(import.meta.dirname, '..');

/**
 * Per workspace: entry points (output name → source, relative to the workspace) and files the
 * code reads beside itself at run time (source → path in dist). dashboard.ts serves `./public/`
 * relative to its own module, which in the bundle is dist/meshcast.mjs.
 */
const TARGETS = {
  node: {
    dir: 'services/node',
    entries: { meshcast: 'src/cli.ts' },
    copy: { 'src/dashboard/public': 'public' },
  },
  tools: {
    dir: 'tools',
    entries: {
      meshctl: 'src/meshctl/main.ts',
      'meshcast-load': 'src/load-cli/main.ts',
      // forked by meshcast-load (--workers) and by SwarmWorkers: see FROM_SOURCE in src/load/flv-source.ts
      'load-cli-worker': 'src/load-cli/worker.ts',
      'load-worker': 'src/load/worker-main.ts',
      'mesh-up': 'src/mesh-up/main.ts',
      // the compose deployment's demo publisher
      'synthetic-publisher': '../compose/synthetic-publisher.mjs',
    },
    copy: {},
  },
};

/** Workspace packages are bundled; any other bare import (a third-party package) stays external. */
const externalPackages = {
  name: 'external-packages',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith('@meshcast/')) return undefined;
      return { path: args.path, external: true };
    });
  },
};

const name = process.argv[2];
const target = TARGETS[name];
if (!target) {
  process.stderr.write(`usage: node scripts/build.mjs ${Object.keys(TARGETS).join('|')}\n`);
  process.exit(2);
}
const dir = join(ROOT, target.dir);
const outdir = join(dir, 'dist');
// Built beside dist and swapped in whole: a failed build leaves the previous one as it was.
const staging = join(dir, '.dist-build');
const t0 = performance.now();
rmSync(staging, { recursive: true, force: true });
let result;
try {
  result = await build({
    absWorkingDir: ROOT,
    entryPoints: Object.entries(target.entries).map(([out, src]) => ({ out, in: join(dir, src) })),
    outdir: staging,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node22',
    sourcemap: true,
    // Source maps point at the TypeScript files; stack traces name them with --enable-source-maps.
    sourcesContent: false,
    plugins: [externalPackages],
    logLevel: 'warning',
    metafile: true,
  });
} catch {
  // esbuild has printed the errors with their file and line.
  rmSync(staging, { recursive: true, force: true });
  process.stderr.write(`build ${target.dir}: failed\n`);
  process.exit(1);
}
for (const [src, dst] of Object.entries(target.copy)) cpSync(join(dir, src), join(staging, dst), { recursive: true });
rmSync(outdir, { recursive: true, force: true });
renameSync(staging, outdir);
const outputs = Object.entries(result.metafile.outputs).filter(([f]) => f.endsWith('.mjs'));
const kb = Math.round(outputs.reduce((n, [, o]) => n + o.bytes, 0) / 1024);
process.stdout.write(`build ${target.dir}: ${outputs.length} bundle(s), ${kb} KiB, in ${Math.round(performance.now() - t0)} ms → ${target.dir}/dist\n`);
