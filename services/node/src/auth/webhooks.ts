/**
 * HTTP webhooks, after nginx-rtmp's on_publish/on_play and SRS's http_hooks: the node POSTs
 * a JSON description of the session; a 2xx answer allows it, anything else refuses it (the
 * first 200 characters of the answer's body become the refusal reason). A hook that does not
 * answer in time (or cannot be reached) refuses, unless `on_timeout: allow`. The *_done hooks
 * are notifications: their answer is logged, not acted on.
 */
import { createHmac } from 'node:crypto';
import type { WebhooksConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { StreamRequest } from '../media/host.ts';
import type { AuthAction, AuthDecision, SessionSummary } from './authorizer.ts';
import { paramsRecord } from './params.ts';

export type HookAction = 'publish' | 'play' | 'publish_done' | 'play_done';

/** The JSON body of every hook request. */
export interface HookBody {
  action: HookAction;
  app: string;
  stream: string;
  /** Query parameters of the app and stream name (`?key=…`, `?exp=…&sig=…`, anything else the client sent). */
  params: Record<string, string>;
  client_id: string;
  ip: string;
  port: number;
  protocol: StreamRequest['protocol'];
  node: string;
  time: string;
  /** *_done only. */
  bytes_in?: number;
  bytes_out?: number;
  duration_ms?: number;
}

const MAX_REASON = 200;

/** `1.2.3.4:5678`, `::ffff:1.2.3.4:5678`, `[::1]:5678` → address and port. */
export function splitRemote(remote: string): { ip: string; port: number } {
  const i = remote.lastIndexOf(':');
  if (i < 0) return { ip: remote, port: 0 };
  const port = Number(remote.slice(i + 1));
  return { ip: remote.slice(0, i).replace(/^\[|\]$/g, ''), port: Number.isFinite(port) ? port : 0 };
}

export function hookBody(action: HookAction, req: StreamRequest, node: string, summary?: SessionSummary): HookBody {
  const { ip, port } = splitRemote(req.remote);
  const body: HookBody = {
    action,
    app: req.app,
    stream: req.stream,
    params: paramsRecord(req.params),
    client_id: req.sessionId,
    ip,
    port,
    protocol: req.protocol,
    node,
    time: new Date().toISOString(),
  };
  if (summary) {
    body.bytes_in = summary.bytesIn;
    body.bytes_out = summary.bytesOut;
    body.duration_ms = summary.durationMs;
  }
  return body;
}

async function readCapped(res: Response, max: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    while (n < max) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      n += value.length;
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(parts).subarray(0, max).toString('utf8');
}

type HookResult = { kind: 'answer'; status: number; body: string } | { kind: 'timeout' } | { kind: 'unreachable'; error: string };

export class WebhookClient {
  private readonly inflight = new Set<Promise<unknown>>();

  constructor(
    private cfg: WebhooksConfig,
    private readonly nodeId: string,
    private readonly log: Logger,
  ) {}

  configure(cfg: WebhooksConfig): void {
    this.cfg = cfg;
  }

  private async post(url: string, body: HookBody, cfg: WebhooksConfig): Promise<HookResult> {
    const text = JSON.stringify(body);
    const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': 'meshcast' };
    if (cfg.secret) headers['x-meshcast-signature'] = `sha256=${createHmac('sha256', cfg.secret).update(text).digest('hex')}`;
    const signal = AbortSignal.timeout(cfg.timeout_ms);
    try {
      const res = await fetch(url, { method: 'POST', headers, body: text, redirect: 'manual', signal });
      const answer = await readCapped(res, 4096);
      return { kind: 'answer', status: res.status, body: answer };
    } catch (err) {
      if (signal.aborted) return { kind: 'timeout' };
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      return { kind: 'unreachable', error: cause?.code ?? cause?.message ?? (err as Error).message };
    }
  }

  /** Whether an on_publish / on_play hook is configured for the action. */
  asks(action: AuthAction): boolean {
    return Boolean(action === 'publish' ? this.cfg.on_publish : this.cfg.on_play);
  }

  /** on_publish / on_play: allows when no hook is configured for the action. */
  async check(action: AuthAction, req: StreamRequest): Promise<AuthDecision> {
    const cfg = this.cfg;
    const url = action === 'publish' ? cfg.on_publish : cfg.on_play;
    if (!url) return { ok: true };
    const hook = `on_${action}`;
    const r = await this.post(url, hookBody(action, req, this.nodeId), cfg);
    if (r.kind === 'answer') {
      if (r.status >= 200 && r.status < 300) return { ok: true };
      const said = r.body.replace(/\s+/g, ' ').trim().slice(0, MAX_REASON);
      return { ok: false, reason: `${hook} hook refused (HTTP ${r.status})${said ? `: ${said}` : ''}` };
    }
    const what = r.kind === 'timeout' ? `did not answer within ${cfg.timeout_ms} ms` : `unreachable (${r.error})`;
    if (cfg.on_timeout === 'allow') {
      this.log.warn({ hook, url, app: req.app, stream: req.stream }, `${hook} hook ${what}; allowing (webhooks.on_timeout: allow)`);
      return { ok: true };
    }
    return { ok: false, reason: `${hook} hook ${what}` };
  }

  /** on_publish_done / on_play_done: fire and forget (failures are logged). */
  notifyDone(action: AuthAction, req: StreamRequest, summary: SessionSummary): void {
    const cfg = this.cfg;
    const url = action === 'publish' ? cfg.on_publish_done : cfg.on_play_done;
    if (!url) return;
    const hook = `on_${action}_done`;
    const p = this.post(url, hookBody(`${action}_done`, req, this.nodeId, summary), cfg).then((r) => {
      if (r.kind === 'answer' && r.status >= 200 && r.status < 300) return;
      const what = r.kind === 'answer' ? `answered HTTP ${r.status}` : r.kind === 'timeout' ? `did not answer within ${cfg.timeout_ms} ms` : `unreachable (${r.error})`;
      this.log.warn({ hook, url, app: req.app, stream: req.stream, session: req.sessionId }, `${hook} hook ${what}`);
    });
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
  }

  /** Waits (bounded by the hook timeout) for done notifications still being sent. */
  async drain(): Promise<void> {
    if (this.inflight.size === 0) return;
    await Promise.race([Promise.allSettled([...this.inflight]), new Promise((r) => setTimeout(r, this.cfg.timeout_ms + 100).unref())]);
  }
}
