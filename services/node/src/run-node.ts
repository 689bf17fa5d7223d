/** Runs one node as a process: start, then stop cleanly on SIGTERM/SIGINT and exit 0. */
import type { NodeConfig } from './config.ts';
import { createLogger } from './log.ts';
import { startNode } from './start-node.ts';

export async function runNode(config: NodeConfig): Promise<number> {
  const log = createLogger(config.node_id, config.log_level);
  let node;
  try {
    node = await startNode(config, log);
  } catch (err) {
    log.fatal({ err }, 'node failed to start');
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
        .then(() => {
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
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}
