/**
 * libdatachannel (node-datachannel) as a WHEP client in tests and what it needs that a browser
 * does not: libdatachannel as the offerer races a quick answerer. The node's ICE checks arrive
 * while libdatachannel is still applying the answer, ICE connects at once, and the node's DTLS
 * ClientHello is verified before libdatachannel has stored the answer's fingerprint: "DTLS
 * alert: unknown CA … certificate verify failed", the peer connection failed ~10 ms after the
 * answer, and `setRemoteDescription` throws "Got a remote candidate without ICE transport"
 * (the transports are gone by the time it reaches the candidates). Seen under CPU load, about
 * one peer in 40 to 120 (libdatachannel's Info log). A real player asks again; these clients do
 * too, with a fresh peer.
 */
import type { PeerConnection } from 'node-datachannel';
import { waitFor } from './ports.ts';

/**
 * Applies the node's answer and waits for the peer to connect: true once connected, false when
 * it failed (the race above: try again with a new peer). Any other answer error is thrown.
 */
export async function answerAndConnect(pc: PeerConnection, answer: string, timeoutMs = 10_000): Promise<boolean> {
  try {
    pc.setRemoteDescription(answer, 'answer');
  } catch (err) {
    if (!/remote candidate without ICE transport/.test((err as Error).message)) throw err;
  }
  const state = await waitFor('the WHEP peer connects (or fails)', () => {
    const s = pc.state();
    return s === 'connected' || s === 'failed' || s === 'closed' ? s : undefined;
  }, timeoutMs, 20);
  return state === 'connected';
}

/** Runs `attempt` (a fresh peer each time) until it gives a connected result; at most `tries` times. */
export async function connectWithRetry<T>(attempt: () => Promise<T | undefined>, tries = 3): Promise<T> {
  for (let i = 1; i <= tries; i++) {
    const got = await attempt();
    if (got !== undefined) return got;
    console.log(`# libdatachannel WHEP client: peer ${i} of ${tries} failed its DTLS handshake (the offerer race); asking again`);
  }
  throw new Error(`no WHEP peer connected in ${tries} tries`);
}
