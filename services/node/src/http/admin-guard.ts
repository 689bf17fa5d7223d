/**
 * Who may talk to the admin listener. It sends no CORS headers, so a page on another origin
 * cannot read its answers; these checks also stop such a page from *sending* anything there:
 *
 * - an `Origin` header that is not the listener's own origin (`http(s)://` + the Host header
 *   the request was sent with) is refused, whatever the method — that covers CSRF and
 *   preflights (browsers send no Origin on their own same-origin GETs);
 * - without a token, the `Host` header must be an IP literal or `localhost`: a DNS-rebinding
 *   page reaches the listener under its own host name, and is refused;
 * - with a token, every API request carries `Authorization: Bearer <token>` (or, on a GET only,
 *   `?access_token=<token>`, for EventSource, which cannot set headers). The dashboard page,
 *   its static assets and the health probes load without it.
 *
 * Pure functions of the request's method, URL and headers; the listener maps a refusal to its
 * status and JSON body.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

export interface AdminRequest {
  method: string;
  /** Path and query, as sent. */
  url: string;
  headers: Record<string, string | string[] | undefined>;
}

export type AdminRefusal = { status: 401 | 403; error: string };

/** Paths anyone who can reach the listener may load: health probes, the dashboard page and its assets (data comes from the API). */
function tokenFree(path: string): boolean {
  return path === '/' || path === '/healthz' || path === '/readyz' || path.startsWith('/dashboard/');
}

const header = (h: AdminRequest['headers'], name: string): string | undefined => {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
};

/** The host name of a Host header, without port and IPv6 brackets. */
function hostName(host: string): string {
  if (host.startsWith('[')) return host.slice(1, host.indexOf(']') > 0 ? host.indexOf(']') : undefined);
  const colon = host.lastIndexOf(':');
  return colon >= 0 ? host.slice(0, colon) : host;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Constant-time comparison: equal-length digests, so neither content nor length leaks through timing. */
export function tokenMatches(expected: string, presented: string | undefined): boolean {
  if (presented === undefined) return false;
  return timingSafeEqual(digest(expected), digest(presented));
}

function presentedToken(req: AdminRequest): string | undefined {
  const auth = header(req.headers, 'authorization');
  if (auth !== undefined) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    return m ? m[1] : '';
  }
  if (req.method !== 'GET') return undefined;
  const q = req.url.indexOf('?');
  return q >= 0 ? (new URLSearchParams(req.url.slice(q + 1)).get('access_token') ?? undefined) : undefined;
}

/** Undefined when the request may proceed; else why not. */
export function checkAdminRequest(req: AdminRequest, token: string): AdminRefusal | undefined {
  const host = header(req.headers, 'host') ?? '';
  const origin = header(req.headers, 'origin');
  // https too: the listener may sit behind a TLS-terminating proxy that keeps the Host header.
  if (origin !== undefined && origin !== `http://${host}` && origin !== `https://${host}`) {
    return { status: 403, error: `cross-origin request refused: the admin API only answers its own origin (http://${host}), not ${origin}` };
  }
  if (token === '') {
    const name = hostName(host);
    if (name !== 'localhost' && isIP(name) === 0) {
      return { status: 403, error: `request for host ${JSON.stringify(host)} refused: without admin.token the admin API answers only requests addressed to an IP address or localhost` };
    }
    return undefined;
  }
  const path = req.url.split('?')[0] ?? '';
  if (tokenFree(path) && (req.method === 'GET' || req.method === 'HEAD')) return undefined;
  if (!tokenMatches(token, presentedToken(req))) {
    return { status: 401, error: 'admin token required: send Authorization: Bearer <admin.token>' };
  }
  return undefined;
}
