/** `meshcast-load` entry point. */
import { parseLoadArgs, UsageError, USAGE } from './options.ts';
import { ProgressUi, renderReport } from './report.ts';
import { LoadAborted, runLoad } from './runner.ts';

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

const code = await main(process.argv.slice(2));
process.exit(code);
