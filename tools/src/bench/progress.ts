/** Progress display: a cli-progress bar on a TTY, plain timestamped lines otherwise. */
import cliProgress from 'cli-progress';

export class Progress {
  private bar: cliProgress.SingleBar | undefined;
  private lastLine = '';
  private total = 1;
  private done = 0;

  constructor(private readonly tty = Boolean(process.stderr.isTTY)) {}

  start(totalRuns: number): void {
    this.total = Math.max(1, totalRuns);
    if (this.tty) {
      this.bar = new cliProgress.SingleBar(
        { format: '{bar} {percentage}% | run {run}/{runs} | {phase}', hideCursor: true, barsize: 30, fps: 5, etaBuffer: 50 },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(this.total * 100, 0, { run: 0, runs: this.total, phase: 'starting' });
    }
  }

  /** `fraction` of the current run done (0..1), `phase` a short description; `detail` is shown on a TTY only. */
  update(run: number, fraction: number, phase: string, detail = ''): void {
    this.done = run - 1 + Math.min(1, Math.max(0, fraction));
    if (this.bar) {
      this.bar.update(Math.round(this.done * 100), { run, runs: this.total, phase: detail ? `${phase} ${detail}` : phase });
      return;
    }
    const line = `run ${run}/${this.total}: ${phase}`;
    if (line !== this.lastLine) {
      this.lastLine = line;
      process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
    }
  }

  /** A line that stays (printed above the bar). */
  log(text: string): void {
    if (this.bar) {
      this.bar.stop();
      process.stderr.write(`${text}\n`);
      this.bar.start(this.total * 100, Math.round(this.done * 100), { run: Math.ceil(this.done) || 1, runs: this.total, phase: '' });
    } else process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${text}\n`);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}
