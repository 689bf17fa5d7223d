#!/usr/bin/env node
// `npm run mesh`: the local mesh launcher from the production build (tools/dist/mesh-up.mjs),
// which starts built nodes (services/node/dist). Run `npm run build` first.
import { runBuilt } from './run-built.mjs';

await runBuilt('mesh-up');
