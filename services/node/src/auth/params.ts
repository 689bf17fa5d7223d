/**
 * The one rule for query parameters that carry credentials or anything a webhook may read:
 * a name given more than once is refused. RTMP joins the app's query and the stream name's
 * query into one list (a name in both counts twice), HTTP-FLV, WS-FLV and HLS take the URL's
 * query as it is, and the authoriser refuses any repeated name before it looks at a key, a
 * token or asks a webhook. So the node's own checks and the webhook never see two different
 * values for one name, and no parser's choice of "first" or "last" can be played against
 * another's (HTTP parameter pollution).
 */

/** The app's query then the stream name's query, every pair kept (RTMP). */
export function joinParams(first: URLSearchParams, second: URLSearchParams): URLSearchParams {
  const out = new URLSearchParams(first);
  for (const [k, v] of second) out.append(k, v);
  return out;
}

/** The first parameter name that occurs more than once (names compared after percent-decoding), if any. */
export function repeatedParam(params: URLSearchParams): string | undefined {
  const seen = new Set<string>();
  for (const k of params.keys()) {
    if (seen.has(k)) return k;
    seen.add(k);
  }
  return undefined;
}

/** The refusal reason for a repeated name (shown to the client; the name is cut short). */
export function repeatedParamReason(name: string): string {
  const shown = name.length > 32 ? `${name.slice(0, 32)}…` : name;
  return `query parameter "${shown}" is given more than once`;
}

/** Parameters as the webhook body carries them: one value per name (repeated names never get this far). */
export function paramsRecord(params: URLSearchParams): Record<string, string> {
  const seen = new Set<string>();
  const first: Array<[string, string]> = [];
  for (const [k, v] of params) {
    if (seen.has(k)) continue;
    seen.add(k);
    first.push([k, v]);
  }
  // fromEntries defines properties: a parameter called "__proto__" stays a plain field.
  return Object.fromEntries(first);
}
