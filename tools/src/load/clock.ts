/**
 * Wall-clock stamps the load publisher embeds in the stream, as AMF0 data messages
 * `['onMeshcastClock', Date.now()]` (RTMP type 18), so viewers on the same machine can
 * measure glass-to-glass latency. Detection on the viewer side is a few byte compares.
 */
import { encodeAmf0 } from '@meshcast/proto';

export const CLOCK_EVENT = 'onMeshcastClock';
const NAME = Buffer.from(CLOCK_EVENT, 'latin1');
// AMF0: 0x02 u16 len "onMeshcastClock" 0x00 f64
const NUM_MARKER_AT = 3 + NAME.length;
const CLOCK_PAYLOAD_LEN = NUM_MARKER_AT + 9;

export function encodeClockStamp(ms = Date.now()): Buffer {
  return encodeAmf0([CLOCK_EVENT, ms]);
}

/** The stamp in a data message payload, or -1 when it is not a clock stamp. */
export function readClockStamp(payload: Buffer): number {
  if (payload.length < CLOCK_PAYLOAD_LEN || payload[0] !== 0x02 || payload[1] !== 0 || payload[2] !== NAME.length) return -1;
  if (payload.compare(NAME, 0, NAME.length, 3, NUM_MARKER_AT) !== 0) return -1;
  if (payload[NUM_MARKER_AT] !== 0x00) return -1;
  return payload.readDoubleBE(NUM_MARKER_AT + 1);
}
