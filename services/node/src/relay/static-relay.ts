/**
 * Static relays for interop with servers outside the mesh (a crtmpserver or nginx-rtmp
 * master, a CDN ingest). A pull brings an outside RTMP stream in as a mesh stream (it is
 * published here, so this node owns it); a push sends a mesh stream out (restreaming).
 * Both reconnect with backoff for as long as the node runs.
 */
import { asAmfObject, decodeAmf0, type AmfValue, type RtmpMessage } from '@meshcast/proto';
import { RtmpClient } from '../client/rtmp-client.ts';
import type { StaticRelayConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import { FRAME_AUDIO, FRAME_DATA, FRAME_VIDEO, type MediaFrame } from '../media/frame.ts';
import type { MediaHost, StreamRequest } from '../media/host.ts';
import type { FrameListener, PublisherHandle, StreamHub } from '../media/stream-hub.ts';

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;
/** A push target this far behind gets frames dropped until the next keyframe. */
const PUSH_QUEUE_BYTES = 8 * 1024 * 1024;

type RelayLinkState =
  | { kind: 'connecting' }
  | { kind: 'running'; client: RtmpClient; since: number }
  | { kind: 'waiting'; timer: NodeJS.Timeout }
  | { kind: 'stopped' };

export interface StaticRelayStatus {
  kind: 'pull' | 'push';
  url: string;
  app: string;
  stream: string;
  state: RelayLinkState['kind'];
  connects: number;
  lastError: string | undefined;
}

abstract class StaticRelayLink {
  protected state: RelayLinkState = { kind: 'connecting' };
  protected backoff = MIN_BACKOFF_MS;
  protected connects = 0;
  protected lastError: string | undefined;
  protected readonly log: Logger;

  constructor(
    protected readonly cfg: StaticRelayConfig,
    protected readonly host: MediaHost,
  ) {
    this.log = host.log.child({ component: `static-${cfg.kind}`, app: cfg.app, stream: cfg.stream, url: cfg.url });
  }

  start(): void {
    this.attempt();
  }

  protected abstract open(): Promise<RtmpClient>;
  protected abstract onUp(client: RtmpClient): void;
  protected abstract onDown(): void;

  private attempt(): void {
    if (this.state.kind === 'stopped') return;
    this.state = { kind: 'connecting' };
    this.open().then(
      (client) => {
        if (this.state.kind === 'stopped') {
          client.close('relay stopped');
          return;
        }
        this.connects++;
        this.backoff = MIN_BACKOFF_MS;
        this.state = { kind: 'running', client, since: Date.now() };
        client.once('close', (reason: string) => this.lost(reason));
        this.log.info('static relay connected');
        this.onUp(client);
      },
      (err: unknown) => this.lost(err instanceof Error ? err.message : String(err)),
    );
  }

  private lost(reason: string): void {
    if (this.state.kind === 'stopped' || this.state.kind === 'waiting') return;
    if (this.state.kind === 'running') this.onDown();
    this.lastError = reason;
    const delay = this.backoff;
    this.backoff = Math.min(MAX_BACKOFF_MS, this.backoff * 2);
    this.log.warn({ reason, retryInMs: delay }, 'static relay down; reconnecting');
    const timer = setTimeout(() => this.attempt(), delay);
    timer.unref();
    this.state = { kind: 'waiting', timer };
  }

  stop(): void {
    const s = this.state;
    this.state = { kind: 'stopped' };
    if (s.kind === 'waiting') clearTimeout(s.timer);
    if (s.kind === 'running') {
      s.client.removeAllListeners('close');
      s.client.close('node stopping');
      this.onDown();
    }
  }

  status(): StaticRelayStatus {
    return { kind: this.cfg.kind, url: this.cfg.url, app: this.cfg.app, stream: this.cfg.stream, state: this.state.kind, connects: this.connects, lastError: this.lastError };
  }

  protected request(): StreamRequest {
    return { app: this.cfg.app, stream: this.cfg.stream, params: new URLSearchParams(), sessionId: `static-${this.cfg.kind}`, remote: this.cfg.url, protocol: 'rtmp' };
  }
}

/** Pulls an outside RTMP stream and publishes it into the mesh under app/stream. */
export class StaticPull extends StaticRelayLink {
  private hub: StreamHub | undefined;
  private readonly handle: PublisherHandle = {
    id: `static-pull:${this.cfg.app}/${this.cfg.stream}`,
    kind: 'pull',
    evict: (reason) => {
      this.log.warn({ reason }, 'static pull evicted');
      if (this.state.kind === 'running') this.state.client.close(`evicted: ${reason}`);
    },
  };

  protected async open(): Promise<RtmpClient> {
    const early: RtmpMessage[] = [];
    const client = await RtmpClient.openPlayer(this.cfg.url, { timeoutMs: 5000, onFrame: (m) => early.push(m) });
    const admission = await this.host.admitPublish(this.request(), this.handle);
    if (!admission.ok) {
      client.close();
      throw new Error(`cannot publish ${this.cfg.app}/${this.cfg.stream} here: ${admission.description}`);
    }
    this.hub = admission.hub;
    for (const m of early) this.onFrame(m);
    client.onFrame = (m) => this.onFrame(m);
    return client;
  }

  private onFrame(m: RtmpMessage): void {
    const hub = this.hub;
    if (!hub) return;
    if (m.type === FRAME_DATA) {
      const v = decodeAmf0(m.payload);
      if (v instanceof Error || v[0] === '|RtmpSampleAccess') return;
      const meta = v[0] === 'onMetaData' ? asAmfObject(v[1] as AmfValue) : undefined;
      if (meta) hub.setMetadata(meta);
      else hub.ingest(FRAME_DATA, m.timestamp, m.payload);
      return;
    }
    if (m.type === FRAME_AUDIO || m.type === FRAME_VIDEO) hub.ingest(m.type, m.timestamp, m.payload);
  }

  protected onUp(): void {}

  protected onDown(): void {
    const hub = this.hub;
    this.hub = undefined;
    if (hub) this.host.endPublish(hub, this.handle);
  }
}

/** Sends a mesh stream (local or relayed here) to an outside RTMP URL. */
export class StaticPush extends StaticRelayLink {
  private hub: StreamHub | undefined;
  private waitingForKey = true;
  private readonly listener: FrameListener = (frames) => this.forward(frames);

  protected async open(): Promise<RtmpClient> {
    const admission = await this.host.admitPlay({ ...this.request(), protocol: 'rtmp' });
    if (!admission.ok) throw new Error(`cannot watch ${this.cfg.app}/${this.cfg.stream}: ${admission.description}`);
    this.hub = admission.hub;
    // Keep the stream (and any relay feeding it) alive while we push, even before the target answers.
    this.hub.addFrameListener(this.listener);
    try {
      return await RtmpClient.openPublisher(this.cfg.url, { timeoutMs: 5000 });
    } catch (err) {
      this.release();
      throw err;
    }
  }

  protected onUp(): void {
    // A fresh target connection starts with metadata, sequence headers and the GOP so far.
    this.waitingForKey = true;
    if (this.hub) this.forward(this.hub.snapshot());
  }

  private forward(frames: readonly MediaFrame[]): void {
    if (this.state.kind !== 'running') return;
    const client = this.state.client;
    for (const f of frames) {
      if (f.type === FRAME_VIDEO && f.isKeyframe) {
        if (client.bufferedBytes > PUSH_QUEUE_BYTES) continue;
        this.waitingForKey = false;
      }
      if (this.waitingForKey && !f.isSequenceHeader) continue;
      if (!f.isSequenceHeader && client.bufferedBytes > PUSH_QUEUE_BYTES) {
        this.waitingForKey = true;
        continue;
      }
      client.sendMedia(f.type, f.timestamp, f.payload);
    }
  }

  private release(): void {
    const hub = this.hub;
    this.hub = undefined;
    if (hub) {
      hub.removeFrameListener(this.listener);
      this.host.endPlay(hub);
    }
  }

  protected onDown(): void {
    this.release();
  }
}

export function startStaticRelays(configs: readonly StaticRelayConfig[], host: MediaHost): StaticRelayLink[] {
  return configs.map((c) => {
    const link = c.kind === 'pull' ? new StaticPull(c, host) : new StaticPush(c, host);
    link.start();
    return link;
  });
}

export type { StaticRelayLink };
