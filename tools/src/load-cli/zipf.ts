/** Spreading viewers over streams: Zipf popularity, whole-viewer apportionment, a seeded shuffle. */

/** Popularity of K streams ranked 1..K: P(k) ∝ 1 / k^s (s = 0: all equal). Sums to 1. */
export function zipfWeights(k: number, s: number): number[] {
  const raw = Array.from({ length: k }, (_, i) => 1 / Math.pow(i + 1, s));
  const sum = raw.reduce((a, b) => a + b, 0);
  return raw.map((w) => w / sum);
}

/**
 * Splits `total` into whole counts proportional to `weights` (largest remainder, ties to the
 * lower index): the counts sum to `total` exactly and never differ from the share by a viewer or more.
 */
export function apportion(total: number, weights: number[]): number[] {
  const sum = weights.reduce((a, b) => a + b, 0);
  if (weights.length === 0) return [];
  if (!(sum > 0)) return weights.map((_, i) => (i === 0 ? total : 0));
  const exact = weights.map((w) => (w / sum) * total);
  const out = exact.map(Math.floor);
  let left = total - out.reduce((a, b) => a + b, 0);
  const order = exact.map((x, i) => ({ i, r: x - Math.floor(x) })).sort((a, b) => b.r - a.r || a.i - b.i);
  for (const { i } of order) {
    if (left <= 0) break;
    out[i]!++;
    left--;
  }
  return out;
}

/** mulberry32: a small seeded PRNG, so runs with the same options are the same. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** counts [2, 1] → a shuffled list of stream indexes like [0, 1, 0] (arrival order of viewers). */
export function arrivalOrder(counts: number[], seed = 1): number[] {
  const list: number[] = [];
  counts.forEach((n, i) => {
    for (let j = 0; j < n; j++) list.push(i);
  });
  const rnd = seededRandom(seed);
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [list[i], list[j]] = [list[j]!, list[i]!];
  }
  return list;
}
