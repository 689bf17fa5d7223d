/** `meshcast-load` entry point. */
import { parseLoadArgs, UsageError, USAGE, type LoadOptions } from './options.ts';
import { ProgressUi, renderReport } from './report.ts';
import { LoadAborted, runLoad } from './runner.ts';
import { renderVodReport, runVodLoad } from './vod-swarm.ts';

async function main(argv: string[]): Promise<number> {
  let opts;
  try {
    opts = parseLoadArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`meshcast-load: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  if (opts === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (opts.vod) return runVod(opts);
  const ui = new ProgressUi(opts.quiet ? 'quiet' : process.stderr.isTTY ? 'tty' : 'lines');
  const abort = new AbortController();
  let firstSignalAt = 0;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (firstSignalAt === 0) {
        firstSignalAt = Date.now();
        ui.log('stopping (Ctrl-C again to quit at once)…');
        abort.abort();
      } else if (Date.now() - firstSignalAt > 1500) process.exit(130); // a relayed copy of the first one is not "again"
    });
  }
  try {
    const report = await runLoad(opts, ui, abort.signal);
    if (opts.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    else process.stdout.write(`${renderReport(report)}\n`);
    return report.ok ? 0 : 1;
  } catch (err) {
    if (err instanceof LoadAborted) {
      process.stderr.write('meshcast-load: interrupted\n');
      return 130;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`meshcast-load: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`meshcast-load: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

/** `--vod URL`: N viewers of one file (vod-swarm.ts). */
async function runVod(opts: LoadOptions): Promise<number> {
  const abort = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => abort.abort());
  const log = (line: string): void => {
    if (!opts.quiet) process.stderr.write(`${line}\n`);
  };
  try {
    const report = await runVodLoad({ ...opts, vod: opts.vod! }, log, abort.signal);
    process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : `${renderVodReport(report)}\n`);
    return report.ok ? 0 : 1;
  } catch (err) {
    if (err instanceof LoadAborted) return 130;
    process.stderr.write(`meshcast-load: ${err instanceof Error ? err.message : String(err)}\n`);
    return err instanceof UsageError ? 2 : 1;
  }
}

const code = await main(process.argv.slice(2));
process.exit(code);
