/**
 * Opus packets out of an Ogg stream (RFC 3533 pages, RFC 7845 Ogg Opus) as an encoder writes it
 * to a pipe: bytes arrive in arbitrary pieces; whole packets come out, the identification and
 * comment headers (OpusHead, OpusTags) left out. One logical stream is assumed (ffmpeg's output).
 */
const CAPTURE = Buffer.from('OggS', 'latin1');
const PAGE_HEADER = 27;

export class OggOpusReader {
  private buf: Buffer = Buffer.alloc(0);
  /** A packet continued on the next page. */
  private partial: Buffer[] = [];

  /** Feeds bytes; returns the audio packets completed by them, in order. */
  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      if (this.buf.length < PAGE_HEADER) break;
      if (!this.buf.subarray(0, 4).equals(CAPTURE)) {
        // Resynchronise on the next capture pattern (a pipe never should, but a torn start might).
        const next = this.buf.indexOf(CAPTURE, 1);
        this.buf = next < 0 ? this.buf.subarray(this.buf.length - 3) : this.buf.subarray(next);
        this.partial = [];
        continue;
      }
      const segments = this.buf[26]!;
      if (this.buf.length < PAGE_HEADER + segments) break;
      const lacing = this.buf.subarray(PAGE_HEADER, PAGE_HEADER + segments);
      let bodyLen = 0;
      for (const l of lacing) bodyLen += l;
      const pageLen = PAGE_HEADER + segments + bodyLen;
      if (this.buf.length < pageLen) break;
      const continued = (this.buf[5]! & 0x01) !== 0;
      if (!continued) this.partial = [];
      let off = PAGE_HEADER + segments;
      for (const l of lacing) {
        this.partial.push(this.buf.subarray(off, off + l));
        off += l;
        if (l < 255) {
          const packet = Buffer.concat(this.partial);
          this.partial = [];
          if (!isOpusHeader(packet)) out.push(packet);
        }
      }
      this.buf = this.buf.subarray(pageLen);
    }
    // Packets handed out are views: copy the unread tail so the big buffer is not kept alive.
    if (this.buf.length > 0) this.buf = Buffer.from(this.buf);
    return out;
  }
}

function isOpusHeader(p: Buffer): boolean {
  return p.length >= 8 && (p.subarray(0, 8).toString('latin1') === 'OpusHead' || p.subarray(0, 8).toString('latin1') === 'OpusTags');
}
