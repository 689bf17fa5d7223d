/**
 * Seeded PRNG for the placement simulation: sfc32 (Chris Doty-Humphrey's small fast
 * counting generator), seeded through splitmix32 from (seed, lane). Separate lanes give
 * independent sequences, so e.g. the arrival sequence does not depend on how many
 * departures or reconnects a strategy caused.
 */
function splitmix32(x: number): () => number {
  let s = x >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(seed: number, lane = 0) {
    const sm = splitmix32((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(lane + 1, 0x85ebca77)) >>> 0);
    this.#a = sm();
    this.#b = sm();
    this.#c = sm();
    this.#d = sm();
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0;
    this.#d = (this.#d + 1) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#c = (this.#c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** Zipf(s) popularity over ranks 1..n: sample() returns a 0-based rank. */
export class Zipf {
  readonly cdf: Float64Array;
  readonly probs: Float64Array;

  constructor(
    readonly n: number,
    readonly s: number,
  ) {
    this.cdf = new Float64Array(n);
    this.probs = new Float64Array(n);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += 1 / Math.pow(i + 1, s);
    let acc = 0;
    for (let i = 0; i < n; i++) {
      const p = 1 / Math.pow(i + 1, s) / sum;
      this.probs[i] = p;
      acc += p;
      this.cdf[i] = acc;
    }
    this.cdf[n - 1] = 1;
  }

  /** Rank for a uniform u in [0, 1). */
  rank(u: number): number {
    const cdf = this.cdf;
    let lo = 0;
    let hi = this.n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((cdf[mid] as number) > u) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
}
