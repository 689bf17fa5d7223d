/** Builds and starts a node from its config: the media node, plus the mesh when configured. */
import type { NodeConfig } from './config.ts';
import type { Logger } from './log.ts';
import { MediaNode } from './media-node.ts';

export async function startNode(config: NodeConfig, log: Logger): Promise<MediaNode> {
  const node = new MediaNode(config, log);
  await node.start();
  return node;
}
