/**
 * Deterministic string hashing for rendezvous (HRW) scores. Pure, identical
 * on every node and platform: UTF-8 bytes → two independent MurmurHash3
 * (x86, 32-bit) lanes → 53 bits → a uniform number in (0, 1).
 */
const enc = new TextEncoder();

function murmur3(bytes: Uint8Array, seed: number): number {
  let h = seed >>> 0;
  const n = bytes.length;
  const blocks = n & ~3;
  for (let i = 0; i < blocks; i += 4) {
    let k = (bytes[i] as number) | ((bytes[i + 1] as number) << 8) | ((bytes[i + 2] as number) << 16) | ((bytes[i + 3] as number) << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const rem = n & 3;
  if (rem > 0) {
    let k = 0;
    if (rem === 3) k ^= (bytes[blocks + 2] as number) << 16;
    if (rem >= 2) k ^= (bytes[blocks + 1] as number) << 8;
    k ^= bytes[blocks] as number;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= n;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** 53-bit hash of a string (safe integer). */
export function hash53(s: string): number {
  const b = enc.encode(s);
  const hi = murmur3(b, 0x9747b28c) >>> 11; // 21 bits
  const lo = murmur3(b, 0x5bd1e995); // 32 bits
  return hi * 0x1_0000_0000 + lo;
}

/** Uniform in the open interval (0, 1). */
export function hash01(s: string): number {
  return (hash53(s) + 0.5) / 2 ** 53;
}

/**
 * Weighted rendezvous score (Schindelhauer & Schomaker): `-w / ln(u)` with
 * u = hash01(key|node). Highest wins; a node with twice the weight wins
 * twice as often; removing a node only moves the keys it won.
 */
export function hrwScore(key: string, node: string, weight: number): number {
  if (!(weight > 0)) return 0;
  return -weight / Math.log(hash01(`${key}|${node}`));
}
