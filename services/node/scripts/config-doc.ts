/**
 * `npm run docs:config`: writes docs/configuration.md from the config schema. The docs-config
 * test fails when the committed file differs from this output, so the two cannot drift.
 */
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { configurationMarkdown } from '../src/config/describe.ts';

const out = resolve(import.meta.dirname, '../../../docs/configuration.md');
writeFileSync(out, configurationMarkdown());
process.stdout.write(`wrote ${out}\n`);
