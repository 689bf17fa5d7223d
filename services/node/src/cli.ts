/** `meshcast node …`: parse flags, load config, run a node until SIGTERM/SIGINT. */
import { parseArgs } from 'node:util';
import { CONFIG_FLAGS, ConfigError, helpText, loadConfig } from './config.ts';
import { runNode } from './run-node.ts';

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(helpText());
    return command === undefined ? 2 : 0;
  }
  if (command !== 'node') {
    process.stderr.write(`meshcast: unknown command "${command}"; try meshcast node --help\n`);
    return 2;
  }
  const options: Record<string, { type: 'string' }> = { config: { type: 'string' } };
  for (const f of CONFIG_FLAGS) options[f] = { type: 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: rest, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false }));
  } catch (err) {
    process.stderr.write(`meshcast node: ${(err as Error).message.split('\n')[0]}; see meshcast node --help\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(helpText());
    return 0;
  }
  let config;
  try {
    const flags: Record<string, string | undefined> = {};
    for (const f of CONFIG_FLAGS) flags[f] = values[f] as string | undefined;
    config = loadConfig({ file: values.config as string | undefined, flags, env: process.env });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`meshcast node: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  return runNode(config);
}

process.exitCode = await main(process.argv.slice(2));
