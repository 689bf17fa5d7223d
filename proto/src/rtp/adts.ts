/**
 * AAC frames out of an ADTS stream (ISO/IEC 13818-7 §6.2, ISO/IEC 14496-3 §1.A.2) as an encoder
 * writes it to a pipe, in arbitrary pieces, and the FLV audio payloads they become (the sequence
 * header's AudioSpecificConfig built from the ADTS header, then raw frames).
 */

export interface AdtsFrame {
  /** MPEG-4 audio object type (2 = AAC LC). */
  objectType: number;
  sampleRate: number;
  /** Index into the MPEG-4 sampling frequency table. */
  frequencyIndex: number;
  channels: number;
  /** The raw AAC frame (no ADTS header). */
  data: Buffer;
}

const RATES = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];
/** A frame longer than this is a corrupt header (8191 is the 13-bit field's maximum anyway). */
const MAX_FRAME = 8191;

export class AdtsReader {
  private buf: Buffer = Buffer.alloc(0);

  /** Feeds bytes; returns the frames they complete, in order. Bytes before a sync word are skipped. */
  push(chunk: Buffer): AdtsFrame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: AdtsFrame[] = [];
    for (;;) {
      if (this.buf.length < 7) break;
      if (this.buf[0] !== 0xff || (this.buf[1]! & 0xf6) !== 0xf0) {
        // Resynchronise on the next sync word (layer 0).
        let next = -1;
        for (let i = 1; i + 1 < this.buf.length; i++) {
          if (this.buf[i] === 0xff && (this.buf[i + 1]! & 0xf6) === 0xf0) {
            next = i;
            break;
          }
        }
        this.buf = next < 0 ? this.buf.subarray(this.buf.length - 1) : this.buf.subarray(next);
        continue;
      }
      const b = this.buf;
      const protectionAbsent = b[1]! & 1;
      const headerLen = protectionAbsent ? 7 : 9;
      const frameLen = ((b[3]! & 0x03) << 11) | (b[4]! << 3) | (b[5]! >> 5);
      const frequencyIndex = (b[2]! >> 2) & 0x0f;
      if (frameLen < headerLen || frameLen > MAX_FRAME || frequencyIndex >= RATES.length) {
        this.buf = this.buf.subarray(1);
        continue;
      }
      if (b.length < frameLen) break;
      out.push({
        objectType: (b[2]! >> 6) + 1,
        frequencyIndex,
        sampleRate: RATES[frequencyIndex]!,
        channels: ((b[2]! & 0x01) << 2) | (b[3]! >> 6),
        data: Buffer.from(b.subarray(headerLen, frameLen)),
      });
      this.buf = b.subarray(frameLen);
    }
    if (this.buf.length > 0) this.buf = Buffer.from(this.buf);
    return out;
  }
}

/** The AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) of an ADTS frame's stream. */
export function adtsAudioSpecificConfig(f: Pick<AdtsFrame, 'objectType' | 'frequencyIndex' | 'channels'>): Buffer {
  const v = (f.objectType << 11) | (f.frequencyIndex << 7) | (f.channels << 3);
  return Buffer.from([v >> 8, v & 0xff]);
}

/** FLV's AAC sound-format byte: AAC, "44 kHz", 16-bit, stereo (FLV requires these for AAC; the config says the truth). */
const FLV_AAC = 0xaf;

export function flvAacSequenceHeader(asc: Buffer): Buffer {
  return Buffer.concat([Buffer.from([FLV_AAC, 0]), asc]);
}

export function flvAacFrame(data: Buffer): Buffer {
  return Buffer.concat([Buffer.from([FLV_AAC, 1]), data]);
}
