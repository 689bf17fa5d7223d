/**
 * WHIP (RFC 9725) on the public listener of an ingest node: `POST /:app/:stream/whip` (and SRS's
 * `POST /rtc/v1/whip/?app=&stream=`) takes an SDP offer with H.264 and Opus, and answers `201`
 * with the SDP answer and the publish's resource in `Location`; `DELETE` on the resource ends the
 * publish; `PATCH` (trickle ICE) is answered 405, as for WHEP.
 *
 * The publisher is admitted exactly as an RTMP publisher is (host.admitPublish: node role and
 * limits, allow_publish, stream key or signed token, on_publish, and in a mesh the ownership
 * lease and duplicate_publish), before any WebRTC state is made: a refused offer costs a parse.
 * Then it is a publisher like any other: listed in the session table, kicked by the admin API.
 * WHIP clients send their credential as `Authorization: Bearer <token>`: a token that looks like
 * a query (`exp=…&sig=…`) is read as one, anything else as the stream key (`key=`).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection } from 'node-datachannel';
import { advertiseCandidates, fmtpParams, parseSdpOffer, type OfferedMedia } from '@meshcast/proto';
import { checkName, type StreamRequest } from '../media/host.ts';
import type { PublisherHandle } from '../media/stream-hub.ts';
import { newSessionId } from '../sessions.ts';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import { KEY_PARAM } from '../auth/configured-authorizer.ts';
import { WhipSession, type WhipTracks } from './whip-session.ts';
import { webrtcBindAddress } from './start-checks.ts';

/** Largest SDP offer read: a browser's is 3-6 KiB; anything near this is not an offer. */
export const MAX_OFFER_BYTES = 64 * 1024;

/** Why a WHIP offer is refused, with its HTTP status: one place, used by the routes and the docs' table. */
export const WHIP_REFUSALS = {
  badOffer: { status: 400, code: 'WHIP.BadOffer', text: 'the body must be an SDP offer (Content-Type: application/sdp) with a sending video m-section' },
  noH264: { status: 406, code: 'WHIP.NoH264', text: 'the offer has no H.264 with packetization-mode=1 in its video m-section (publish H.264: OBS "WebRTC" with x264/NVENC H.264, or a browser that offers it)' },
} as const;

/** The HTTP status of a publish refusal (host.admitPublish's onStatus code), decided once here. */
export function whipRefusalStatus(code: string, description: string): number {
  if (code.endsWith('Unauthorized')) return 401;
  if (code.endsWith('BadName')) return 409; // the stream is published already (duplicate_publish: reject, or a third encoder)
  if (/draining|full/.test(description)) return 503;
  return 403;
}

/** Peer connections of every node in this process (libdatachannel is one per process). */
let livePeers = 0;

interface Resource {
  session: WhipSession;
  secret: Buffer;
}

export const WHIP_FEATURE: HttpFeature = {
  name: 'whip',
  surface: 'public',
  register(app: FastifyInstance, ctx: HttpFeatureContext): void {
    const cfg = ctx.host.config.webrtc;
    if (!cfg.enabled || !ctx.host.config.roles.includes('ingest')) return;
    const resources = new Map<string, Resource>();
    let peersCreated = 0;
    const advertised = (): string[] => {
      const c = ctx.host.config;
      const own = c.public_host || (c.host === '0.0.0.0' || c.host === '::' ? '127.0.0.1' : c.host);
      return [own, ...cfg.candidates.filter((a) => a !== own)];
    };

    app.addHook('onClose', async () => {
      for (const r of [...resources.values()]) r.session.close('the node is shutting down');
      if (peersCreated > 0 && livePeers === 0) nodeDataChannel.cleanup();
    });

    // WHEP registers the same parser when it is on; either feature may come first.
    if (!app.hasContentTypeParser('application/sdp')) {
      app.addContentTypeParser(['application/sdp', 'application/trickle-ice-sdpfrag'], { parseAs: 'string' }, (_req, body, done) => done(null, body));
    }

    const opts = { bodyLimit: MAX_OFFER_BYTES };
    app.post<{ Params: { app: string; stream: string } }>('/:app/:stream/whip', opts, (req, reply) => offer(req, reply, req.params.app, req.params.stream));
    app.post<{ Querystring: { app?: string; stream?: string } }>('/rtc/v1/whip/', opts, (req, reply) => offer(req, reply, req.query.app ?? '', req.query.stream ?? ''));
    app.delete<{ Params: { id: string } }>('/whip/session/:id', async (req, reply) => {
      const r = find(req.params.id);
      if (!r) return reply.code(404).send({ error: 'no such WHIP session' });
      r.session.close('the publisher ended the session (DELETE)');
      return reply.code(200).send();
    });
    app.patch('/whip/session/:id', async (_req, reply) =>
      reply.code(405).header('Allow', 'DELETE').send({ error: 'trickle ICE is not supported: the answer carries all of the node\'s candidates' }),
    );
    app.options('/whip/session/:id', async (_req, reply) => reply.code(204).header('Access-Control-Allow-Methods', 'DELETE, OPTIONS').header('Access-Control-Allow-Headers', '*').send());
    app.options('/:app/:stream/whip', async (_req, reply) =>
      reply.code(204).header('Access-Control-Allow-Methods', 'POST, OPTIONS').header('Access-Control-Allow-Headers', '*').header('Access-Control-Expose-Headers', 'Location').send(),
    );

    /** A resource id is `<session id>.<secret>`: only the publisher that got the Location may end it. */
    function find(resourceId: string): Resource | undefined {
      const [id, secretHex] = resourceId.split('.');
      const r = id ? resources.get(id) : undefined;
      if (!r || !secretHex) return undefined;
      const given = Buffer.from(secretHex, 'hex');
      return given.length === r.secret.length && timingSafeEqual(given, r.secret) ? r : undefined;
    }

    async function offer(req: FastifyRequest, reply: FastifyReply, appName: string, stream: string): Promise<void> {
      void reply.header('Access-Control-Expose-Headers', 'Location');
      const maxBytes = ctx.host.config.limits.max_stream_name_bytes;
      const problem = checkName('app', appName, maxBytes) ?? checkName('stream', stream, maxBytes);
      if (problem) return void reply.code(400).send({ error: problem });
      const sdp = typeof req.body === 'string' ? req.body : '';
      const media = parseSdpOffer(sdp);
      const video = media.find((m) => m.kind === 'video' && (m.direction === 'sendonly' || m.direction === 'sendrecv'));
      if (!video) return refuse(reply, 'badOffer');
      const h264 = chooseIngestH264(video);
      if (!h264) return refuse(reply, 'noH264');
      const audioMedia = media.find((m) => m.kind === 'audio' && (m.direction === 'sendonly' || m.direction === 'sendrecv'));
      const opus = audioMedia?.formats.find((f) => f.codec.toLowerCase() === 'opus' && f.clockRate === 48000);

      const remoteIp = req.socket.remoteAddress ?? 'unknown';
      const refused = ctx.limiter.admit(remoteIp);
      if (refused) return void reply.code(503).send({ error: refused });
      const id = newSessionId('p');
      const params = publishParams(req);
      const sreq: StreamRequest = { app: appName, stream, params, sessionId: id, remote: `${remoteIp}:${req.socket.remotePort ?? 0}`, protocol: 'whip' };

      // Admission first: a refused publisher costs an SDP parse, never a peer connection.
      let session: WhipSession | undefined;
      let evictedEarly: string | undefined;
      const handle: PublisherHandle = {
        id,
        kind: 'whip',
        evict: (reason) => (session ? session.close(`publisher evicted: ${reason}`) : (evictedEarly = reason)),
      };
      let admission;
      try {
        admission = await ctx.host.admitPublish(sreq, handle);
      } catch (err) {
        ctx.limiter.release(remoteIp);
        throw err;
      }
      if (!admission.ok) {
        ctx.limiter.release(remoteIp);
        ctx.host.log.info({ app: appName, stream, session: id, code: admission.code, reason: admission.description }, 'WHIP publish refused');
        const status = whipRefusalStatus(admission.code, admission.description);
        if (status === 401) void reply.header('WWW-Authenticate', 'Bearer');
        return void reply.code(status).send({ error: admission.description, code: admission.code });
      }
      const hub = admission.hub;
      const giveBack = (): void => {
        ctx.limiter.release(remoteIp);
        ctx.host.endPublish(hub, handle);
        ctx.host.sessionDone('publish', sreq, { bytesIn: 0, bytesOut: 0, durationMs: 0 });
      };
      if (evictedEarly !== undefined || req.raw.socket.destroyed) {
        giveBack();
        if (req.raw.socket.destroyed) return;
        return void reply.code(409).send({ error: `taken over before the answer: ${evictedEarly}`, code: 'NetStream.Publish.BadName' });
      }

      let pc: PeerConnection | undefined;
      let answer: string;
      try {
        pc = new nodeDataChannel.PeerConnection(id, {
          iceServers: [],
          enableIceUdpMux: true,
          portRangeBegin: cfg.udp_port,
          portRangeEnd: cfg.udp_port,
          bindAddress: webrtcBindAddress(ctx.host.config.host),
          disableAutoNegotiation: true,
        });
        peersCreated++;
        livePeers++;
        pc.setRemoteDescription(sdp, 'offer');
        const v = new nodeDataChannel.Video(video.mid, 'RecvOnly');
        v.addH264Codec(h264.pt, h264.fmtp);
        const vtrack = pc.addTrack(v);
        // RTCP receiver reports, and the PLI that requestKeyframe() sends.
        vtrack.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
        const tracks: WhipTracks = { pc, video: vtrack, videoPt: h264.pt };
        if (audioMedia && opus) {
          const a = new nodeDataChannel.Audio(audioMedia.mid, 'RecvOnly');
          a.addOpusCodec(opus.pt, opus.fmtp || 'minptime=10;useinbandfec=1');
          const atrack = pc.addTrack(a);
          atrack.setMediaHandler(new nodeDataChannel.RtcpReceivingSession());
          tracks.audio = { track: atrack, pt: opus.pt };
        }
        pc.setLocalDescription('answer');
        const local = pc.localDescription();
        if (!local) throw new Error('no local description after setLocalDescription');
        answer = advertiseCandidates(local.sdp, advertised(), cfg.udp_port);
        session = new WhipSession(id, tracks, hub, handle, sreq, ctx.host, (s) => {
          ctx.host.sessions.remove(s);
          resources.delete(s.id);
          livePeers--;
          ctx.limiter.release(remoteIp);
        });
      } catch (err) {
        if (pc) {
          pc.close();
          livePeers--;
        }
        giveBack();
        ctx.host.log.warn({ err: (err as Error).message, app: appName, stream, session: id }, 'WHIP offer could not be answered');
        return void reply.code(400).send({ error: `the offer could not be answered: ${(err as Error).message}`, code: 'WHIP.Negotiation' });
      }
      const secret = randomBytes(16);
      resources.set(id, { session, secret });
      ctx.host.sessions.add(session);
      session.start(cfg.session_timeout_s * 1000);
      ctx.host.log.info({ app: appName, stream, session: id, audio: Boolean(opus), standby: admission.standby ?? false }, 'WHIP publish admitted');
      return void reply
        .code(201)
        .header('Content-Type', 'application/sdp')
        .header('Location', `/whip/session/${id}.${secret.toString('hex')}`)
        .send(answer);
    }
  },
};

function refuse(reply: FastifyReply, why: keyof typeof WHIP_REFUSALS): void {
  const r = WHIP_REFUSALS[why];
  void reply.code(r.status).send({ error: r.text, code: r.code });
}

/**
 * The query's parameters (without SRS's app and stream), and the `Authorization: Bearer` credential
 * WHIP clients send, added as the query parameters it stands for. Given both ways, a name repeats
 * and the authoriser refuses it (one value per name, auth/params.ts).
 */
function publishParams(req: FastifyRequest): URLSearchParams {
  const params = new URLSearchParams((req.raw.url ?? '').split('?')[1] ?? '');
  params.delete('app');
  params.delete('stream');
  const auth = req.headers.authorization;
  const m = typeof auth === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(auth) : null;
  if (m) {
    const token = m[1]!;
    if (/(^|&)sig=/.test(token)) for (const [k, v] of new URLSearchParams(token)) params.append(k, v);
    else params.append(KEY_PARAM, token);
  }
  return params;
}

/** The offered H.264 to receive: packetization-mode 1 (FU-A and STAP-A), constrained baseline first (what every encoder sends without B-frames). */
function chooseIngestH264(video: OfferedMedia): { pt: number; fmtp: string } | undefined {
  const mode1 = video.formats.filter((f) => f.codec.toUpperCase() === 'H264' && fmtpParams(f.fmtp).get('packetization-mode') === '1');
  const plid = (f: (typeof mode1)[number]): string => (fmtpParams(f.fmtp).get('profile-level-id') ?? '').toLowerCase();
  const f = mode1.find((x) => plid(x).startsWith('42e0')) ?? mode1.find((x) => plid(x).startsWith('42')) ?? mode1[0];
  return f ? { pt: f.pt, fmtp: f.fmtp } : undefined;
}
