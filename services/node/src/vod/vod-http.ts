/**
 * VOD files over HTTP on the public listener: `GET`/`HEAD /<app>/<dir>/<file>.mp4` (or `.m4v`,
 * `.flv`) progressive, with `Range` (one range: 206 with Content-Range; 416 when it is past the
 * end), for a `<video>` tag, ffmpeg or a download.
 *
 * A VOD app's paths are all served from here, whatever route matched them: `/:app/:file` (the
 * live HTTP-FLV route, http-server.ts) and `/:app/:stream/:file` (the HLS route) hand a VOD app's
 * requests over, and `/:app/*` catches deeper paths. So `/vod/clip.flv` in a VOD app is the file,
 * never a live stream. A path that goes on past the file (`/vod/clip.mp4/index.m3u8`) is one of
 * the file's sub-resources, served by a {@link VodSubRoute} (HLS VOD registers one).
 *
 * Viewers pass the app's play rules (MediaHost.admitVodPlay: roles, allow_play, keys, signed
 * tokens for the file's checked name, e.g. `dir/file.mp4`, the on_play webhook with protocol
 * `vod`). Another node copying the file into its cache (vod-remote.ts) shows a mesh pull
 * credential instead and gets only files under this node's root.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import { checkName, type MediaHost, type StreamRequest } from '../media/host.ts';
import { parseRange } from '../recording/recording-feature.ts';
import { newSessionId } from '../sessions.ts';
import { checkVodPull, VOD_PULL_HEADER } from './vod-remote.ts';
import { vodHttpStatus, VodError, type VodFile, type VodFormat, type LocalVodLibrary } from './vod-library.ts';

const CONTENT_TYPES: Record<VodFormat, string> = { mp4: 'video/mp4', flv: 'video/x-flv' };
const FILE_SEGMENT = /\.(mp4|m4v|flv)$/i;

/** A resource under a VOD file's path (`/<app>/<file>/<sub>`), e.g. HLS VOD's playlist and segments. */
export interface VodSubRoute {
  /**
   * Serves `sub` of `file` (the viewer is already admitted and the file resolved) and returns
   * true, or returns false when `sub` is not one of its paths (the next route is asked; none → 404).
   */
  serve(host: MediaHost, req: FastifyRequest, reply: FastifyReply, file: VodFile, sub: string, viewer: StreamRequest): Promise<boolean>;
}

/** Sub-resource routes of VOD files, asked in order (modules add theirs when loaded). */
export const VOD_SUB_ROUTES: VodSubRoute[] = [];

function queryOf(url: string | undefined): string {
  const q = (url ?? '').indexOf('?');
  return q < 0 ? '' : (url ?? '').slice(q + 1);
}

/**
 * Answers a request for `rest` (the path after the app, as the router decoded it) of VOD app
 * `app`. Every refusal is logged here, once, with the session and file.
 */
export async function serveVodHttp(host: MediaHost, req: FastifyRequest, reply: FastifyReply, app: string, rest: string): Promise<FastifyReply> {
  const library = host.vod as LocalVodLibrary | undefined;
  if (!library?.isVodApp(app)) return reply.code(404).send({ error: 'not found' });
  const sessionId = newSessionId('v');
  const remote = `${req.socket.remoteAddress ?? 'unknown'}:${req.socket.remotePort ?? 0}`;
  const log = host.log.child({ app, session: sessionId, remote, protocol: 'vod' });
  const refuse = (status: number, error: string, extra: Record<string, unknown> = {}): FastifyReply => {
    (status === 400 || status === 403 ? log.warn.bind(log) : log.info.bind(log))({ path: rest.slice(0, 300), status, ...extra }, `VOD request refused: ${error}`);
    return reply.code(status).send({ error });
  };
  const problem = checkName('app', app, host.config.limits.max_stream_name_bytes) ?? checkName('stream', rest, host.config.limits.max_stream_name_bytes);
  if (problem) return refuse(400, problem);

  // The file is the path up to the first segment with a media extension; anything after it is a sub-resource.
  const segments = rest.split('/');
  const at = segments.findIndex((s) => FILE_SEGMENT.test(s));
  if (at < 0) return refuse(404, 'not a VOD file path (expected …/<file>.mp4, .m4v or .flv)');
  const requestName = segments.slice(0, at + 1).join('/');
  const sub = segments.slice(at + 1).join('/');

  let name: string;
  try {
    name = library.checkedName(app, requestName).name;
  } catch (err) {
    if (err instanceof VodError) return refuse(vodHttpStatus(err.reason), err.message, { reason: err.reason });
    throw err;
  }

  const pull = req.headers[VOD_PULL_HEADER];
  if (pull !== undefined) {
    // Another node copying the file into its cache: its own root's files only, never onward.
    const check = checkVodPull((v) => host.verifyMeshCredential(v), pull, app, name);
    if (!check.ok) return refuse(403, `VOD pull refused: ${check.reason}`);
    let file: VodFile | undefined;
    try {
      file = await library.localFile(app, name);
    } catch (err) {
      if (err instanceof VodError) return refuse(vodHttpStatus(err.reason), err.message, { reason: err.reason, peer: check.node });
      throw err;
    }
    if (!file) return refuse(404, `no VOD file ${app}/${name} on this node`, { peer: check.node });
    log.debug({ file: name, peer: check.node }, 'VOD file sent to another node');
    await sendFile(req, reply, file, log);
    return reply;
  }

  const viewer: StreamRequest = { app, stream: name, params: new URLSearchParams(queryOf(req.raw.url)), sessionId, remote, protocol: 'vod' };
  const refused = await host.admitVodPlay(viewer);
  if (refused) return refuse(refused.code.endsWith('Unauthorized') ? 403 : refused.description === 'node is draining' ? 503 : 403, refused.description, { code: refused.code });
  let file: VodFile;
  try {
    file = await library.resolve(app, requestName);
  } catch (err) {
    if (err instanceof VodError) return refuse(vodHttpStatus(err.reason), err.message, { reason: err.reason });
    throw err;
  }
  if (sub !== '') {
    for (const r of VOD_SUB_ROUTES) if (await r.serve(host, req, reply, file, sub, viewer)) return reply;
    return refuse(404, `no ${JSON.stringify(sub.slice(0, 100))} under VOD file ${app}/${name}`);
  }
  const started = Date.now();
  const length = await sendFile(req, reply, file, log);
  // on_play_done for every answered request, with the bytes the reply carried (all of them only if it finished).
  reply.raw.once('close', () => host.sessionDone('play', viewer, { bytesIn: 0, bytesOut: reply.raw.writableFinished ? length : 0, durationMs: Date.now() - started }));
  return reply;
}

/** The file, whole or one range of it, from an open descriptor (a cache eviction or an operator replacing the file cannot change what this reply sends). */
async function sendFile(req: FastifyRequest, reply: FastifyReply, file: VodFile, log: MediaHost['log']): Promise<number> {
  let fh;
  try {
    fh = await open(file.path, 'r');
  } catch (err) {
    log.warn({ file: file.name, err: String(err) }, 'VOD file could not be opened');
    void reply.code(404).send({ error: `no VOD file ${file.app}/${file.name}` });
    return 0;
  }
  const st = await fh.stat();
  const size = st.size;
  const etag = `"${size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
  void reply
    .header('Content-Type', CONTENT_TYPES[file.format])
    .header('Accept-Ranges', 'bytes')
    .header('ETag', etag)
    .header('Last-Modified', st.mtime.toUTCString())
    .header('Cache-Control', 'no-cache');
  const ifRange = req.headers['if-range'];
  const range = ifRange === undefined || ifRange === etag ? parseRange(req.headers.range, size) : undefined;
  if (range === 'unsatisfiable') {
    await fh.close();
    void reply.code(416).header('Content-Range', `bytes */${size}`).send();
    return 0;
  }
  const start = range?.start ?? 0;
  const end = range?.end ?? size - 1;
  const length = size === 0 ? 0 : end - start + 1;
  if (range) void reply.code(206).header('Content-Range', `bytes ${start}-${end}/${size}`);
  void reply.header('Content-Length', String(length));
  if (req.method === 'HEAD' || length === 0) {
    await fh.close();
    // An empty stream: fastify's HEAD handling keeps our Content-Length for a stream (an empty body would set 0).
    void reply.send(Readable.from([]));
    return 0;
  }
  void reply.send(fh.createReadStream({ start, end }));
  return length;
}

/** `/:app/*`: VOD paths deeper than the live routes' (`/vod/a/b/file.mp4`). */
export const VOD_HTTP_FEATURE: HttpFeature = {
  name: 'vod',
  surface: 'public',
  register(app: FastifyInstance, ctx: HttpFeatureContext) {
    app.get<{ Params: { app: string; '*': string } }>('/:app/*', (req, reply) => serveVodHttp(ctx.host, req, reply, req.params.app, req.params['*']));
  },
};
