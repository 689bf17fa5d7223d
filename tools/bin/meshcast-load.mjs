#!/usr/bin/env node
// Runs tools/dist/meshcast-load.mjs (npm run build); from a checkout without a build: node --import tsx tools/src/load-cli/main.ts
import { runBuilt } from './run-built.mjs';

await runBuilt('meshcast-load');
