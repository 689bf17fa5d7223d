/** Linux /proc sampling: CPU time and RSS of a process and its descendants. */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

let clkTck: number | undefined;
/** Clock ticks per second (utime/stime unit), from `getconf CLK_TCK`, default 100. */
export function clockTicks(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** Parses /proc/<pid>/stat: the command may contain spaces and parentheses, so split after the last ')'. */
export function parseStat(text: string): { ppid: number; utime: number; stime: number } {
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
  return { ppid: Number(rest[1]), utime: Number(rest[11]), stime: Number(rest[12]) };
}

function readStat(pid: number): { ppid: number; utime: number; stime: number } | undefined {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** `pid` and all its descendants that are alive now. */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [pid];
  }
  for (const e of entries) {
    const p = Number(e);
    if (!Number.isInteger(p) || p <= 0) continue;
    const st = readStat(p);
    if (!st) continue;
    const list = children.get(st.ppid);
    if (list) list.push(p);
    else children.set(st.ppid, [p]);
  }
  const out: number[] = [];
  const stack = [pid];
  while (stack.length > 0) {
    const p = stack.pop()!;
    out.push(p);
    for (const c of children.get(p) ?? []) stack.push(c);
  }
  return out;
}

/** CPU seconds (user+system) used so far by each pid. Dead pids are left out. */
export function cpuSeconds(pids: number[]): Map<number, number> {
  const tck = clockTicks();
  const out = new Map<number, number>();
  for (const p of pids) {
    const st = readStat(p);
    if (st) out.set(p, (st.utime + st.stime) / tck);
  }
  return out;
}

/** VmRSS of a process in bytes (0 when gone). */
export function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * Measures a process tree over a window: CPU (sum over the tree, processes that appear
 * during the window count from zero) and the largest summed RSS seen by periodic samples.
 */
export class TreeMeter {
  private cpu0 = new Map<number, number>();
  private t0 = 0;
  private timer: NodeJS.Timeout | undefined;
  maxRss = 0;
  samples = 0;

  constructor(private readonly rootPid: number) {}

  start(sampleEveryMs = 500): void {
    this.t0 = performance.now();
    this.cpu0 = cpuSeconds(processTree(this.rootPid));
    this.maxRss = 0;
    this.sampleRss();
    this.timer = setInterval(() => this.sampleRss(), sampleEveryMs);
  }

  private sampleRss(): void {
    let sum = 0;
    for (const p of processTree(this.rootPid)) sum += rssBytes(p);
    this.samples++;
    if (sum > this.maxRss) this.maxRss = sum;
  }

  /** Stops and returns CPU % of one core over the window, the peak RSS and the pids measured. */
  stop(): { cpuPct: number; cpuSeconds: number; seconds: number; maxRssBytes: number; pids: number[] } {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sampleRss();
    const pids = processTree(this.rootPid);
    const cpu1 = cpuSeconds(pids);
    const seconds = (performance.now() - this.t0) / 1000;
    let used = 0;
    for (const [p, c] of cpu1) used += c - (this.cpu0.get(p) ?? 0);
    return { cpuPct: seconds > 0 ? (used / seconds) * 100 : 0, cpuSeconds: used, seconds, maxRssBytes: this.maxRss, pids };
  }
}
