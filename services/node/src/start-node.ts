/** Builds and starts a node from its config: the media node and its mesh membership. */
import type { MemoryBusNetwork } from '@meshcast/mesh';
import type { NodeConfig } from './config.ts';
import type { Logger } from './log.ts';
import { MediaNode } from './media-node.ts';
import { NodeMesh } from './mesh/node-mesh.ts';
import { ConfiguredAuthorizer } from './auth/configured-authorizer.ts';
import { joinVodMesh } from './vod/vod-remote.ts';
import { hasRecordingsVodApps, RecordingsVodSource } from './vod/vod-recordings.ts';
import { recordingServiceOf } from './recording/recording-feature.ts';

export interface StartOptions {
  /** In-process bus to join when no NATS is configured (tests run several nodes in one process). */
  network?: MemoryBusNetwork;
}

export async function startNode(config: NodeConfig, log: Logger, opts: StartOptions = {}): Promise<MediaNode> {
  const node = new MediaNode(config, log);
  node.authorizer = new ConfiguredAuthorizer(config, log);
  node.limiter.configure(config.limits);
  try {
    await node.start({
      beforeHttp: async () => {
        const mesh = await NodeMesh.start(node, opts.network);
        node.attachMesh(mesh);
        // VOD files this node does not hold are found on, and copied from, other nodes (vod-remote.ts).
        const vodRemote = await joinVodMesh({ bus: mesh.bus, config, library: node.vod, selfUrl: () => `http://${config.public_host}:${node.httpPort}`, log });
        // VOD apps serving recordings stitch them into the same cache (vod-recordings.ts).
        if (vodRemote && hasRecordingsVodApps(config)) {
          node.vod.recordings = new RecordingsVodSource({ cache: vodRemote.cache, reader: () => recordingServiceOf(node, node.registry), maxPlaybackMs: config.recording.max_playback_s * 1000, log });
        }
      },
    });
  } catch (err) {
    await node.stop('node failed to start');
    throw err;
  }
  return node;
}
