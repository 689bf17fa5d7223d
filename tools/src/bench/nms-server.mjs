// Starts node-media-server v4 programmatically for the benchmark: RTMP only (no HTTP/WS,
// no webadmin, no recording), bound to one loopback address, its store in a temp dir.
// usage: node nms-server.mjs --host 127.0.0.1 --port 19350 --dir /tmp/x [--log warn|info]
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { setTimeout } from 'node:timers';
import NodeMediaServer from 'node-media-server';
import logger from 'node-media-server/src/core/logger.js';

const { values } = parseArgs({
  options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string' }, dir: { type: 'string' }, log: { type: 'string', default: 'warn' } },
});
const port = Number(values.port);
if (!Number.isInteger(port) || port <= 0 || !values.dir) {
  console.error('usage: nms-server.mjs --host H --port P --dir DIR [--log warn|info]');
  process.exit(2);
}

const config = {
  bind: values.host,
  rtmp: { port },
  // No http/https/rtmps sections: NMS only creates the servers that have a port.
  store: { path: join(values.dir, 'data') },
  record: { auto: false, path: join(values.dir, 'record') },
  notify: { url: '' },
  auth: { play: false, publish: false, secret: 'bench' },
  webadmin: { enable: false },
};

const nms = new NodeMediaServer(config, join(values.dir, 'nms-config.json'));
// The constructor sets the shared logger to 'debug'; put it back to what we were asked for.
logger.level = values.log;
await nms.run();

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  const t = setTimeout(() => process.exit(0), 3000);
  t.unref();
  await nms.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
