/**
 * A minimal WHEP client run in a headless Chromium page: recvonly video + audio, the offer POSTed
 * after ICE gathering, the answer set, frames counted for `watchMs`, then the inbound stats. Plain
 * JavaScript in a string: tsx would wrap a compiled function's inner functions in a helper
 * (`__name`) the page does not have. The peer stays open in `window.__pcs`.
 */
import type { Page } from 'playwright-core';

export interface WhepPlayed {
  status: number;
  location: string | null;
  error?: string;
  /** requestVideoFrameCallback calls during the watch. */
  frames: number;
  framesDecoded: number;
  audioPackets?: number;
  audioCodec?: string;
}

const CLIENT = `async ({ url, watchMs }) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  (window.__pcs ??= []).push(pc);
  const video = document.createElement('video');
  video.muted = true;
  video.autoplay = true;
  document.body.appendChild(video);
  const stream = new MediaStream();
  pc.ontrack = (ev) => { stream.addTrack(ev.track); video.srcObject = stream; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((res) => {
    if (pc.iceGatheringState === 'complete') return res();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res();
    setTimeout(res, 2000);
  });
  const resp = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  const body = await resp.text();
  const out = { status: resp.status, location: resp.headers.get('Location'), frames: 0, framesDecoded: 0 };
  if (resp.status !== 201) { out.error = body; pc.close(); return out; }
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  const onFrame = () => { out.frames++; video.requestVideoFrameCallback(onFrame); };
  video.requestVideoFrameCallback(onFrame);
  await new Promise((r) => setTimeout(r, watchMs));
  const stats = await pc.getStats();
  const codecs = new Map();
  stats.forEach((s) => s.type === 'codec' && codecs.set(s.id, s.mimeType));
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') out.framesDecoded = s.framesDecoded ?? 0;
    if (s.type === 'inbound-rtp' && s.kind === 'audio') { out.audioPackets = s.packetsReceived ?? 0; out.audioCodec = codecs.get(s.codecId); }
  });
  return out;
}`;

export function playWhep(page: Page, url: string, watchMs: number): Promise<WhepPlayed> {
  return page.evaluate(`(${CLIENT})(${JSON.stringify({ url, watchMs })})`) as Promise<WhepPlayed>;
}
