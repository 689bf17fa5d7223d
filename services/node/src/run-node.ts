/**
 * Runs one node as a process: start, then stop cleanly on SIGTERM/SIGINT and exit 0.
 * SIGHUP re-reads the config and applies its auth, webhooks and limits sections.
 */
import { ConfigError, configSource, configWarnings, loadConfig, type NodeConfig } from './config.ts';
import { ConfiguredAuthorizer } from './auth/configured-authorizer.ts';
import { reloadFromSource } from './auth/reload.ts';
import { createLogger } from './log.ts';
import { startNode } from './start-node.ts';

export async function runNode(config: NodeConfig): Promise<number> {
  const log = createLogger(config.node_id, config.log_level);
  for (const w of configWarnings(config)) log.warn({ setting: w.setting }, w.message);
  let node;
  try {
    node = await startNode(config, log);
  } catch (err) {
    // A setting found wrong only now (a port taken): one line naming it, as at config load.
    if (err instanceof ConfigError) log.fatal(`node failed to start: ${err.message}`);
    else log.fatal({ err }, 'node failed to start');
    log.flush();
    return 1;
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'signal received; draining');
      const force = setTimeout(() => {
        log.error('shutdown took too long; exiting');
        log.flush();
        resolve(1);
      }, 15_000);
      force.unref();
      node
        .stop(`node received ${signal}`)
        .then(async () => {
          if (node.authorizer instanceof ConfiguredAuthorizer) await node.authorizer.drain();
          clearTimeout(force);
          log.flush();
          resolve(0);
        })
        .catch((err: unknown) => {
          log.error({ err }, 'error while stopping');
          log.flush();
          resolve(1);
        });
    };
    const source = configSource(config);
    const reload = (): void => {
      if (stopping) return;
      log.info({ file: source?.file ?? source?.env?.MESHCAST_CONFIG }, 'SIGHUP received; reloading config');
      reloadFromSource(node, log, () => loadConfig(source ?? {}));
    };
    process.on('SIGHUP', reload);
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}
