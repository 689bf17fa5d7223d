/** Static stream keys, compared in constant time. */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

// Keys are compared as HMACs under a per-process random key: equal length whatever the key,
// and the comparison time says nothing about how much of a guess was right.
const PEPPER = randomBytes(32);

function digest(s: string): Buffer {
  return createHmac('sha256', PEPPER).update(s).digest();
}

export class KeySet {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.map(digest);
  }

  get size(): number {
    return this.digests.length;
  }

  /** True when `presented` equals one of the keys. Every key is compared, match or not. */
  has(presented: string): boolean {
    const d = digest(presented);
    let found = false;
    for (const k of this.digests) {
      if (timingSafeEqual(k, d)) found = true;
    }
    return found;
  }
}
