/** `meshctl` entry point: process glue around runMeshctl. */
import { runMeshctl } from './cli.ts';

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const abort = new AbortController();
let firstSignalAt = 0;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (firstSignalAt === 0) {
      firstSignalAt = Date.now();
      abort.abort();
    } else if (Date.now() - firstSignalAt > 1500) process.exit(130); // a relayed copy of the first one is not "again"
  });
}

const code = await runMeshctl(process.argv.slice(2), {
  out: (t) => process.stdout.write(`${t}\n`),
  err: (t) => process.stderr.write(`${t}\n`),
  readStdin,
  env: process.env,
  signal: abort.signal,
  stdoutIsTTY: Boolean(process.stdout.isTTY),
});
process.exitCode = code;
// Anything the NATS client left behind must not keep a one-shot command alive.
setTimeout(() => process.exit(code), 500).unref();
