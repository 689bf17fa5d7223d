/**
 * Recording segments as FLV files, with the project's own FLV writer and reader: each segment
 * is self-contained (header, metadata, sequence headers, then media from a keyframe) and its
 * timestamps start at 0, so any player opens any segment on its own.
 */
import { encodeFlvHeader, encodeFlvTag, FlvDecoder, type FlvTag } from '@meshcast/proto';

export function flvFileHeader(audio: boolean, video: boolean): Buffer {
  return encodeFlvHeader({ audio, video }); // with PreviousTagSize0
}

export { encodeFlvTag };

/** Every tag of an FLV file; an error names what is wrong with it. A file cut short (its writer died) yields the tags it holds whole. */
export function readFlvTags(data: Buffer): FlvTag[] {
  const dec = new FlvDecoder();
  const tags = dec.push(data);
  if (!Array.isArray(tags)) throw new Error(`not a readable FLV segment: ${tags.message}`);
  return tags;
}

/**
 * The timestamp of the last whole tag of an FLV file, from its tail (the last PreviousTagSize
 * and the tag header it points to); undefined when the tail is not a whole tag (a file cut
 * short, which the caller then reads whole).
 */
export function lastTagTimestamp(tail: Buffer, fileSize: number): number | undefined {
  if (tail.length < 4) return undefined;
  const prev = tail.readUInt32BE(tail.length - 4);
  const at = tail.length - 4 - prev;
  if (prev < 11 || at < 0 || fileSize - 4 - prev < 13) return undefined;
  const type = tail[at]!;
  const size = (tail[at + 1]! << 16) | (tail[at + 2]! << 8) | tail[at + 3]!;
  if ((type !== 8 && type !== 9 && type !== 18) || size !== prev - 11) return undefined;
  const ts = (tail[at + 4]! << 16) | (tail[at + 5]! << 8) | tail[at + 6]! | (tail[at + 7]! << 24);
  return ts >>> 0;
}
