#!/usr/bin/env node
// The compose deployment's demo publisher: publishes the project's synthetic source (30 fps
// video with numbered frames + audio) to the first RTMP URL given; when that connection closes
// or cannot be opened it moves on to the next URL, continuing frame numbers and timestamps.
// That is what a real encoder with backup ingest URLs does, and in the mesh the republish on
// another ingest node takes the stream over (docs/design.md, "publisher reconnect = takeover").
//
// It is a build input (`npm run build` bundles it into tools/dist/synthetic-publisher.mjs,
// which the image runs): @meshcast/node/client exports TypeScript sources. From a checkout,
// `node --import tsx compose/synthetic-publisher.mjs URL…` runs it directly.
//
// Usage: node tools/dist/synthetic-publisher.mjs rtmp://ingest1:1935/live/demo [rtmp://ingest2:1935/live/demo …]
//        (or MESHCAST_PUBLISH_URLS="url1,url2")
import { setTimeout as sleep } from 'node:timers/promises';
import { startSyntheticPublisher } from '@meshcast/node/client';

const urls = process.argv.slice(2).length > 0 ? process.argv.slice(2) : (process.env.MESHCAST_PUBLISH_URLS ?? '').split(',').filter(Boolean);
if (urls.length === 0) {
  process.stderr.write('usage: synthetic-publisher.mjs RTMP_URL [RTMP_URL …]\n');
  process.exit(2);
}
const log = (msg) => process.stdout.write(`${new Date().toISOString()} synthetic-publisher: ${msg}\n`);

let stopping = false;
let current;
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    stopping = true;
    current?.stop();
    process.exit(0);
  });
}

let frame = 0;
let ts = 0;
for (let i = 0; !stopping; i++) {
  const url = urls[i % urls.length];
  try {
    current = await startSyntheticPublisher(url, { firstFrame: frame, startTs: ts, timeoutMs: 5000 });
    log(`publishing to ${url} from frame ${frame}`);
    const startedTs = ts;
    const reason = await new Promise((resolve) => current.client.once('close', resolve));
    frame += current.sent();
    ts = startedTs + Math.round(current.sent() * 33.333) + 33;
    log(`connection to ${url} closed (${reason}) after ${current.sent()} frames`);
  } catch (err) {
    log(`cannot publish to ${url}: ${err instanceof Error ? err.message : String(err)}`);
  }
  await sleep(1000);
}
