/**
 * Opus packets into an Ogg stream (RFC 3533 pages, RFC 7845 Ogg Opus) for a decoder that reads
 * Ogg from a pipe (WHIP ingest hands ffmpeg the peer's Opus this way). One packet per page, so
 * nothing waits in the writer; each page's granule position is the sample position at the end
 * of its packet (48 kHz), taken from the RTP clock, so a gap in the input stays a gap in time.
 */

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let j = 0; j < 8; j++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    t[i] = r >>> 0;
  }
  return t;
})();

/** Ogg's page checksum: CRC-32, polynomial 0x04c11db7, not reflected, initial value 0 (RFC 3533 §6). */
export function oggCrc(buf: Buffer): number {
  let crc = 0;
  for (const b of buf) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ b) & 0xff]!) >>> 0;
  return crc;
}

/** Samples (at 48 kHz) one Opus packet holds, from its TOC byte (RFC 6716 §3.1); 0 for a malformed one. */
export function opusPacketSamples(p: Buffer): number {
  if (p.length < 1) return 0;
  const config = p[0]! >> 3;
  let frame: number;
  if (config < 12) frame = [480, 960, 1920, 2880][config & 3]!; // SILK: 10, 20, 40, 60 ms
  else if (config < 16) frame = config & 1 ? 960 : 480; // hybrid: 10, 20 ms
  else frame = [120, 240, 480, 960][config & 3]!; // CELT: 2.5, 5, 10, 20 ms
  const code = p[0]! & 3;
  const count = code === 0 ? 1 : code === 1 || code === 2 ? 2 : p.length >= 2 ? p[1]! & 0x3f : 0;
  return frame * count;
}

/** Largest packet one page with one packet can hold (255 lacing values of 255). */
export const OGG_MAX_PACKET = 255 * 255 - 1;

export class OggOpusWriter {
  private sequence = 0;

  constructor(
    private readonly serial = 0x6d657368,
    private readonly channels = 2,
  ) {}

  /** The identification and comment header pages (RFC 7845 §5): what a decoder reads first. */
  headers(): Buffer {
    const head = Buffer.alloc(19);
    head.write('OpusHead', 0, 'latin1');
    head[8] = 1; // version
    head[9] = this.channels;
    head.writeUInt16LE(0, 10); // pre-skip: a WebRTC encoder's packets start with real audio
    head.writeUInt32LE(48000, 12);
    head.writeInt16LE(0, 16);
    head[18] = 0; // mapping family 0: mono or stereo
    const vendor = Buffer.from('meshcast', 'latin1');
    const tags = Buffer.alloc(8 + 4 + vendor.length + 4);
    tags.write('OpusTags', 0, 'latin1');
    tags.writeUInt32LE(vendor.length, 8);
    vendor.copy(tags, 12);
    tags.writeUInt32LE(0, 12 + vendor.length);
    return Buffer.concat([this.page(head, 0n, 0x02), this.page(tags, 0n, 0)]);
  }

  /** One audio packet as a page; `granule` is the sample position at its end. */
  packet(p: Buffer, granule: bigint): Buffer {
    if (p.length > OGG_MAX_PACKET) throw new RangeError(`Opus packet of ${p.length} bytes does not fit one Ogg page`);
    return this.page(p, granule, 0);
  }

  private page(body: Buffer, granule: bigint, flags: number): Buffer {
    const lacing: number[] = [];
    let left = body.length;
    while (left >= 255) {
      lacing.push(255);
      left -= 255;
    }
    lacing.push(left);
    const out = Buffer.alloc(27 + lacing.length + body.length);
    out.write('OggS', 0, 'latin1');
    out[4] = 0;
    out[5] = flags;
    out.writeBigUInt64LE(granule, 6);
    out.writeUInt32LE(this.serial, 14);
    out.writeUInt32LE(this.sequence++, 18);
    out[26] = lacing.length;
    Buffer.from(lacing).copy(out, 27);
    body.copy(out, 27 + lacing.length);
    out.writeUInt32LE(oggCrc(out), 22);
    return out;
  }
}
