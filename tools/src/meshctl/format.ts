/** Plain-text output helpers: aligned tables, durations, rates, the relay tree. */

export type Align = 'l' | 'r';

/** Aligned columns separated by two spaces; `align` per column (default left). No trailing spaces. */
export function table(headers: string[], rows: string[][], align: Align[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (align[i] === 'r' ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** 950 ms → "0.9s"; 75 s → "1m15s"; 2 h → "2h00m". */
export function duration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '-';
  const s = Math.floor(ms / 1000);
  if (s < 10) return `${(ms / 1000).toFixed(1)}s`;
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

export function mbps(bps: number): string {
  return (bps / 1e6).toFixed(bps >= 1e8 ? 0 : bps >= 1e7 ? 1 : 2);
}

export function pct(x: number): string {
  return `${Math.round(x * 100)}%`;
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

export interface TreeNode {
  label: string;
  children: TreeNode[];
}

/** Draws a tree with box-drawing characters, the root on the first line. */
export function drawTree(root: TreeNode): string {
  const out: string[] = [root.label];
  const walk = (n: TreeNode, prefix: string): void => {
    n.children.forEach((c, i) => {
      const last = i === n.children.length - 1;
      out.push(`${prefix}${last ? '└── ' : '├── '}${c.label}`);
      walk(c, `${prefix}${last ? '    ' : '│   '}`);
    });
  };
  walk(root, '');
  return out.join('\n');
}

/** JSON with byte arrays shown as base64 (msgpack bin values), bigints as strings. */
export function toJson(value: unknown, pretty: boolean): string {
  return JSON.stringify(
    value,
    (_k, v: unknown) => {
      if (v instanceof Uint8Array) return { $base64: Buffer.from(v).toString('base64') };
      if (v !== null && typeof v === 'object' && (v as { type?: unknown }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)) {
        return { $base64: Buffer.from((v as { data: number[] }).data).toString('base64') };
      }
      if (typeof v === 'bigint') return v.toString();
      if (v instanceof Map) return Object.fromEntries(v);
      return v;
    },
    pretty ? 2 : undefined,
  );
}
