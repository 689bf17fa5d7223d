#!/usr/bin/env node
// Runs tools/dist/meshctl.mjs (npm run build); from a checkout without a build: node --import tsx tools/src/meshctl/main.ts
import { runBuilt } from './run-built.mjs';

await runBuilt('meshctl');
