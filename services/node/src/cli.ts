/** `meshcast node …`: parse flags, load config, run a node until SIGTERM/SIGINT. */
import { parseArgs } from 'node:util';
import { CONFIG_FLAGS, ConfigError, loadConfig } from './config.ts';
import { runNode } from './run-node.ts';

const USAGE = `usage: meshcast node [options]

  --config FILE        YAML config file (MESHCAST_CONFIG)
  --node-id ID         node id, [A-Za-z0-9_-] (MESHCAST_NODE_ID)
  --host ADDR          listen address (MESHCAST_HOST, default 0.0.0.0)
  --public-host ADDR   address peers and redirected viewers use (MESHCAST_PUBLIC_HOST)
  --rtmp-port N        RTMP port (MESHCAST_RTMP_PORT, default 1935)
  --http-port N        HTTP port for HTTP-FLV, API, metrics (MESHCAST_HTTP_PORT, default 8080)
  --roles LIST         ingest,playback (MESHCAST_ROLES, default both)
  --nats URLS          comma-separated NATS servers; none = in-process bus (MESHCAST_NATS)
  --mesh-secret S      shared secret for inter-node pulls (MESHCAST_MESH_SECRET)
  --relay-fanout N     relay tree fan-out cap (MESHCAST_RELAY_FANOUT, default 8)
  --capacity N         viewers this node advertises it can take (MESHCAST_CAPACITY)
  --log-level L        pino level (MESHCAST_LOG_LEVEL, default info)
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command !== 'node') {
    process.stderr.write(`meshcast: unknown command "${command}"\n\n${USAGE}`);
    return 2;
  }
  const options: Record<string, { type: 'string' }> = { config: { type: 'string' } };
  for (const f of CONFIG_FLAGS) options[f] = { type: 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: rest, options: { ...options, help: { type: 'boolean' } }, strict: true, allowPositionals: false }));
  } catch (err) {
    process.stderr.write(`meshcast node: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
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
