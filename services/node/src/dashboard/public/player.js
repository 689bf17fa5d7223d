// The in-page player: mpegts.js for HTTP-FLV, hls.js for HLS (or the browser's own HLS
// where it has one), the browser's own RTCPeerConnection for WebRTC (WHEP). Both libraries are
// served by the node itself and loaded on first use.

const LIBS = {
  flv: { src: '/dashboard/vendor/mpegts.js', global: 'mpegts' },
  hls: { src: '/dashboard/vendor/hls.js', global: 'Hls' },
};
const loading = new Map();
const LABELS = { flv: 'HTTP-FLV', hls: 'HLS', whep: 'WebRTC' };

function loadLibrary(kind) {
  const lib = LIBS[kind];
  if (window[lib.global]) return Promise.resolve(window[lib.global]);
  if (!loading.has(kind)) {
    loading.set(
      kind,
      new Promise((resolve, reject) => {
        const script = document.createElement('script');
        script.src = lib.src;
        script.async = true;
        script.addEventListener('load', () => (window[lib.global] ? resolve(window[lib.global]) : reject(new Error(`${lib.src} did not load`))));
        script.addEventListener('error', () => {
          loading.delete(kind);
          reject(new Error(`cannot load ${lib.src}`));
        });
        document.head.append(script);
      }),
    );
  }
  return loading.get(kind);
}

/** Media URL of a stream on a node: `base` is the node's public HTTP address. */
export function mediaUrl(base, app, stream, protocol) {
  const path = `${encodeURIComponent(app)}/${stream.split('/').map(encodeURIComponent).join('/')}`;
  if (protocol === 'whep') return `${base}/${path}/whep`;
  return protocol === 'hls' ? `${base}/${path}/index.m3u8` : `${base}/${path}.flv`;
}

/** How long a WebRTC connection may stay `disconnected` before the player gives up on that node. */
const WHEP_DISCONNECTED_GRACE_MS = 1000;
/** How long the player keeps asking the route API for another node after its node was lost. */
const WHEP_REROUTE_FOR_MS = 30_000;

/**
 * Asks the route API (`GET /api/v1/route/:app/:stream` on each of `bases` in turn) for a WHEP URL
 * on a node other than `avoid`'s. The answer's first candidate and its `next` list are tried in
 * order: until the mesh has declared the lost node dead, placement may still name it.
 */
export async function rerouteWhep(bases, app, stream, avoid) {
  const lost = new URL(avoid).origin;
  const path = `/api/v1/route/${encodeURIComponent(app)}/${stream.split('/').map(encodeURIComponent).join('/')}`;
  for (const base of bases) {
    try {
      const res = await fetch(`${base}${path}`, { signal: window.AbortSignal.timeout(2000) });
      if (!res.ok) continue;
      const answer = await res.json();
      const pick = [answer, ...(answer.next || [])].find((c) => c.whep && new URL(c.whep).origin !== lost);
      if (pick) return { whep: pick.whep, node: pick.node };
    } catch {
      // That node is down or slow: the next one may answer.
    }
  }
  return null;
}

export class Player {
  /** `ui` holds the elements the player drives: video, placeholder, title, stop, status, res, time, buffer, dropped. */
  constructor(ui) {
    this.ui = ui;
    this.engine = null;
    this.current = null;
    this.generation = 0;
    this.statsTimer = null;
    ui.stop.addEventListener('click', () => this.stop());
    ui.video.addEventListener('playing', () => this.setStatus('playing', 'playing'));
    ui.video.addEventListener('waiting', () => this.current && this.setStatus('buffering…'));
  }

  /**
   * Plays `{ app, stream, key, protocol, base, via, routeBases }`; replaces whatever was playing.
   * `routeBases`: nodes whose route API to ask for another node when a WebRTC node is lost.
   */
  async play(target) {
    this.stop();
    const generation = ++this.generation;
    this.current = target;
    const { ui } = this;
    ui.placeholder.hidden = true;
    ui.video.controls = true;
    ui.stop.disabled = false;
    ui.title.textContent = `${target.key} · ${LABELS[target.protocol]} · from ${target.via}`;
    this.setStatus('loading player…');
    const url = mediaUrl(target.base, target.app, target.stream, target.protocol);
    try {
      if (target.protocol === 'whep') {
        this.setStatus('connecting…');
        const engine = await this.startWhep(url);
        if (generation !== this.generation) {
          engine.destroy(); // replaced or stopped while negotiating
          return;
        }
        this.engine = engine;
      } else {
        const lib = await loadLibrary(target.protocol);
        if (generation !== this.generation) return;
        this.setStatus('connecting…');
        this.engine = target.protocol === 'hls' ? this.startHls(lib, url) : this.startFlv(lib, url);
      }
    } catch (err) {
      if (generation === this.generation) this.fail(err instanceof Error ? err.message : String(err));
      return;
    }
    this.statsTimer = setInterval(() => this.updateStats(), 500);
    ui.video.muted = true;
    ui.video.play().catch(() => {
      // Autoplay may wait for the first media; the `playing` event updates the status.
    });
  }

  startFlv(mpegts, url) {
    if (!mpegts.getFeatureList().mseLivePlayback) throw new Error('this browser cannot play HTTP-FLV (no MediaSource)');
    const player = mpegts.createPlayer(
      { type: 'flv', isLive: true, url, hasAudio: true, hasVideo: true },
      { enableWorker: false, enableStashBuffer: false, lazyLoad: false, liveSync: true, liveSyncMaxLatency: 3, liveSyncTargetLatency: 1.5, autoCleanupSourceBuffer: true },
    );
    player.on(mpegts.Events.ERROR, (type, detail, info) => {
      const code = info && info.code ? ` ${info.code}` : '';
      this.fail(`${type}: ${detail}${code}${info && info.msg ? ` (${info.msg})` : ''}`);
    });
    player.on(mpegts.Events.LOADING_COMPLETE, () => this.current && this.setStatus('stream ended'));
    player.attachMediaElement(this.ui.video);
    player.load();
    return { destroy: () => player.destroy() };
  }

  /** WHEP (RFC 9725): a recvonly offer POSTed once ICE gathering is done; the session is DELETEd on stop. */
  async startWhep(url) {
    if (typeof window.RTCPeerConnection !== 'function') throw new Error('this browser has no WebRTC');
    const pc = new window.RTCPeerConnection();
    let resource = null;
    const engine = {
      destroy: () => {
        pc.close();
        if (resource) void fetch(resource, { method: 'DELETE' }).catch(() => undefined);
        this.ui.video.srcObject = null;
      },
    };
    try {
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
      const media = new window.MediaStream();
      pc.addEventListener('track', (e) => {
        media.addTrack(e.track);
        this.ui.video.srcObject = media;
      });
      let graceTimer = null;
      pc.addEventListener('connectionstatechange', () => {
        clearTimeout(graceTimer);
        if (this.engine !== engine) return;
        // A node that dies stops answering ICE consent checks: `disconnected` within seconds, `failed` much later.
        if (pc.connectionState === 'failed') void this.rerouteWhep(engine, url);
        else if (pc.connectionState === 'disconnected') graceTimer = setTimeout(() => this.engine === engine && void this.rerouteWhep(engine, url), WHEP_DISCONNECTED_GRACE_MS);
      });
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((resolve) => {
        if (pc.iceGatheringState === 'complete') return resolve();
        pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
        setTimeout(resolve, 2000);
      });
      const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
      const body = await res.text();
      if (res.status !== 201) {
        let reason = body;
        try {
          reason = JSON.parse(body).error || body;
        } catch {
          // not JSON: shown as it is
        }
        throw new Error(`WHEP ${res.status}: ${reason}`);
      }
      const location = res.headers.get('Location');
      if (location) resource = new URL(location, url).href;
      await pc.setRemoteDescription({ type: 'answer', sdp: body });
      return engine;
    } catch (err) {
      engine.destroy();
      throw err;
    }
  }

  /** The WebRTC node was lost: ask the route API for another node and play from it (the session on the lost node is ended). */
  async rerouteWhep(engine, lostUrl) {
    const target = this.current;
    const generation = this.generation;
    if (!target || this.engine !== engine) return;
    this.engine = null;
    engine.destroy();
    const bases = [...new Set([...(target.routeBases || []), target.base])];
    const until = Date.now() + WHEP_REROUTE_FOR_MS;
    while (generation === this.generation) {
      this.setStatus('WebRTC node lost; asking the route API for another…');
      const next = await rerouteWhep(bases, target.app, target.stream, lostUrl);
      if (generation !== this.generation) return;
      if (next) {
        try {
          const fresh = await this.startWhep(next.whep);
          if (generation !== this.generation) {
            fresh.destroy();
            return;
          }
          this.engine = fresh;
          this.ui.title.textContent = `${target.key} · ${LABELS.whep} · from ${next.node} (rerouted)`;
          this.setStatus('connecting…');
          this.ui.video.play().catch(() => undefined);
          return;
        } catch (err) {
          this.setStatus(err instanceof Error ? err.message : String(err), 'error');
        }
      }
      if (Date.now() > until) return this.fail('WebRTC node lost, and the route API named no other node');
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  startHls(Hls, url) {
    const video = this.ui.video;
    if (!Hls.isSupported()) {
      if (video.canPlayType('application/vnd.apple.mpegurl')) {
        video.src = url;
        return { destroy: () => video.removeAttribute('src') };
      }
      throw new Error('this browser cannot play HLS');
    }
    const hls = new Hls({ liveSyncDurationCount: 3, liveMaxLatencyDurationCount: 8, manifestLoadingMaxRetry: 2, levelLoadingMaxRetry: 4 });
    hls.on(Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      const status = data.response && data.response.code;
      if (data.details === 'manifestLoadError' && status === 404) this.fail('HLS is not available for this stream on that node (404)');
      else this.fail(`${data.type}: ${data.details}${status ? ` (HTTP ${status})` : ''}`);
    });
    hls.loadSource(url);
    hls.attachMedia(video);
    return { destroy: () => hls.destroy() };
  }

  stop() {
    this.generation++;
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    if (this.engine) {
      try {
        this.engine.destroy();
      } catch {
        // A player that failed half-way may not destroy cleanly; the element is reset below.
      }
    }
    this.engine = null;
    this.current = null;
    const { ui } = this;
    ui.video.srcObject = null;
    ui.video.removeAttribute('src');
    ui.video.load();
    ui.video.controls = false;
    ui.placeholder.hidden = false;
    ui.stop.disabled = true;
    ui.title.textContent = 'nothing playing';
    this.setStatus('idle');
    for (const el of [ui.res, ui.time, ui.buffer, ui.dropped]) el.textContent = '–';
  }

  fail(message) {
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    this.setStatus(message, 'error');
  }

  setStatus(text, kind = '') {
    this.ui.status.textContent = text;
    this.ui.status.className = kind;
    this.ui.status.title = text;
  }

  updateStats() {
    const { video, res, time, buffer, dropped } = this.ui;
    res.textContent = video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : '–';
    time.textContent = `${video.currentTime.toFixed(1)} s`;
    const b = video.buffered;
    buffer.textContent = b.length > 0 ? `${Math.max(0, b.end(b.length - 1) - video.currentTime).toFixed(1)} s` : '–';
    const q = typeof video.getVideoPlaybackQuality === 'function' ? video.getVideoPlaybackQuality() : null;
    dropped.textContent = q ? `${q.droppedVideoFrames} / ${q.totalVideoFrames}` : '–';
  }
}
