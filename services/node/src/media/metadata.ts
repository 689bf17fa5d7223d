/**
 * What a node keeps of a publisher's onMetaData: a sanitised, size-bounded copy taken when it
 * arrives. The copy goes to every viewer and into every stream listing and dashboard answer, so
 * it must not carry what a publisher chose to make expensive (a reference-expanded tree, a
 * megabyte string): only scalars and short strings survive, under a bounded number of keys.
 */
import type { AmfObject, AmfValue } from '@meshcast/proto';

export const METADATA_MAX_KEYS = 64;
export const METADATA_MAX_KEY_CHARS = 64;
export const METADATA_MAX_STRING_CHARS = 256;

/** Scalars (numbers, booleans, null) and strings cut to METADATA_MAX_STRING_CHARS; nested values and long keys are dropped. */
export function sanitizeMetadata(meta: AmfObject): AmfObject {
  const out: AmfObject = {};
  let keys = 0;
  // for…in over own enumerable keys, stopping early: a hostile object may have 65,536 of them.
  for (const key in meta) {
    if (!Object.prototype.hasOwnProperty.call(meta, key)) continue;
    if (keys >= METADATA_MAX_KEYS) break;
    if (key.length > METADATA_MAX_KEY_CHARS || key === '__proto__') continue;
    const v: AmfValue = meta[key];
    if (typeof v === 'number' || typeof v === 'boolean' || v === null) out[key] = v;
    else if (typeof v === 'string') out[key] = v.length > METADATA_MAX_STRING_CHARS ? v.slice(0, METADATA_MAX_STRING_CHARS) : v;
    else continue;
    keys++;
  }
  return out;
}
