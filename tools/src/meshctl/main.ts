/** `meshctl` entry point: process glue around runMeshctl. */
import { runMeshctl } from './cli.ts';

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const abort = new AbortController();
let interrupted = 0;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (++interrupted > 1) process.exit(130);
    abort.abort();
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
