/**
 * WHEP (RFC 9725) on the public listener: `POST /:app/:stream/whep` (and SRS's
 * `POST /rtc/v1/whep/?app=&stream=`) takes an SDP offer and answers `201` with the SDP answer and
 * the session resource in `Location`; `DELETE` on the resource ends the session; `PATCH` (trickle
 * ICE) is answered 405: the answer carries the node's complete candidates, and the browser's own
 * are learnt from its connectivity checks (peer-reflexive).
 *
 * A viewer is admitted exactly as an HTTP-FLV viewer is (host.admitPlay: play key/token, on_play,
 * limits, relay start and waiting in a mesh), then listed in the session table, so the admin
 * API lists and kicks it like any other.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import nodeDataChannel from 'node-datachannel';
import type { PeerConnection } from 'node-datachannel';
import { advertiseCandidates, chooseH264, classifyAudioTag, classifyVideoTag, CodecConfigError, fmtpParams, offersCodec, parseAvcDecoderConfig, parseSdpOffer, profileLevelId, vp9ConfigProfile } from '@meshcast/proto';
import { checkName, type StreamRequest } from '../media/host.ts';
import type { MediaFrame } from '../media/frame.ts';
import { appConfig } from '../config.ts';
import type { Socket } from 'node:net';
import type { StreamHub } from '../media/stream-hub.ts';
import { newSessionId } from '../sessions.ts';
import type { HttpFeature, HttpFeatureContext } from '../http/features.ts';
import { attachAudioChain, attachVideoChain, newSsrc, WhepSession, type PassthroughCodec, type WhepTrackSetup } from './whep-session.ts';
import { OpusTranscoder } from './opus-transcoder.ts';
import { whipOpusOf } from './whip-session.ts';
import { webrtcBindAddress } from './start-checks.ts';

/** Why a WHEP request cannot be served, with its HTTP status: one place, used by the routes and the docs' table. */
export const WHEP_REFUSALS = {
  bFrames: { status: 422, code: 'WHEP.BFrames', text: 'the source uses B-frames (composition time offsets), which WebRTC cannot play in order; publish without B-frames (x264: -bf 0 or a baseline profile)' },
  noH264: { status: 406, code: 'WHEP.NoH264', text: 'the offer has no H.264 with packetization-mode=1 in a video m-section' },
  codec: { status: 415, code: 'WHEP.Codec', text: 'the stream\'s video codec cannot be sent to this viewer: this node passes through H.264, and H.265, AV1 or VP9 when the offer has it' },
  notLive: { status: 504, code: 'WHEP.NotLive', text: 'the stream has no video yet (play_wait_ms ran out)' },
  badOffer: { status: 400, code: 'WHEP.BadOffer', text: 'the body must be an SDP offer (Content-Type: application/sdp) with a video m-section' },
} as const;

const FOURCC: Record<string, string> = { hevc: 'H265', av1: 'AV1', vp9: 'VP9' };

/** Peer connections of every node in this process (libdatachannel is one per process). */
let livePeers = 0;

interface Resource {
  session: WhepSession;
  secret: Buffer;
}

export const WHEP_FEATURE: HttpFeature = {
  name: 'whep',
  surface: 'public',
  register(app: FastifyInstance, ctx: HttpFeatureContext): void {
    const cfg = ctx.host.config.webrtc;
    if (!cfg.enabled) return;
    const resources = new Map<string, Resource>();
    let peersCreated = 0;
    /** One AAC→Opus transcoder per stream on this node, while it has WebRTC viewers. */
    const transcoders = new Map<StreamHub, OpusTranscoder>();
    const transcoderFor = (hub: StreamHub): OpusTranscoder => {
      let t = transcoders.get(hub);
      if (!t) {
        t = new OpusTranscoder(
          hub,
          ctx.host.log,
          (idle) => {
            if (transcoders.get(hub) === idle) transcoders.delete(hub);
          },
          cfg.ffmpeg,
        );
        transcoders.set(hub, t);
      }
      return t;
    };
    const advertised = (): string[] => {
      const c = ctx.host.config;
      const own = c.public_host || (c.host === '0.0.0.0' || c.host === '::' ? '127.0.0.1' : c.host);
      return [own, ...cfg.candidates.filter((a) => a !== own)];
    };

    // The listener closing (drain, shutdown): peers and transcoders end, and libdatachannel's
    // threads stop, which would otherwise keep the process alive.
    app.addHook('onClose', async () => {
      for (const r of [...resources.values()]) r.session.close('the node is shutting down');
      for (const t of transcoders.values()) t.stop('the node is shutting down');
      transcoders.clear();
      // Process-wide: only once this node's peers are gone, and only if it ever had one (in-process test nodes share the library).
      if (peersCreated > 0 && livePeers === 0) nodeDataChannel.cleanup();
    });

    app.addContentTypeParser(['application/sdp', 'application/trickle-ice-sdpfrag'], { parseAs: 'string' }, (_req, body, done) => done(null, body));

    app.post<{ Params: { app: string; stream: string } }>('/:app/:stream/whep', (req, reply) => offer(req, reply, req.params.app, req.params.stream));
    app.post<{ Querystring: { app?: string; stream?: string } }>('/rtc/v1/whep/', (req, reply) => offer(req, reply, req.query.app ?? '', req.query.stream ?? ''));
    app.delete<{ Params: { id: string } }>('/whep/session/:id', async (req, reply) => {
      const r = find(req.params.id);
      if (!r) return reply.code(404).send({ error: 'no such WHEP session' });
      r.session.close('the viewer ended the session (DELETE)');
      return reply.code(200).send();
    });
    app.patch('/whep/session/:id', async (_req, reply) =>
      reply.code(405).header('Allow', 'DELETE').send({ error: 'trickle ICE is not supported: the answer carries all of the node\'s candidates' }),
    );
    app.options('/whep/session/:id', async (_req, reply) => reply.code(204).header('Access-Control-Allow-Methods', 'DELETE, OPTIONS').header('Access-Control-Allow-Headers', '*').send());
    app.options('/:app/:stream/whep', async (_req, reply) =>
      reply.code(204).header('Access-Control-Allow-Methods', 'POST, OPTIONS').header('Access-Control-Allow-Headers', '*').header('Access-Control-Expose-Headers', 'Location').send(),
    );

    /** A resource id is `<session id>.<secret>`: only the viewer that got the Location may end it. */
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
      const video = media.find((m) => m.kind === 'video' && m.direction !== 'inactive' && m.direction !== 'sendonly');
      if (!video) return refuse(reply, 'badOffer');

      const remoteIp = req.socket.remoteAddress ?? 'unknown';
      const refused = ctx.limiter.admit(remoteIp);
      if (refused) return void reply.code(503).send({ error: refused });
      const id = newSessionId('w');
      const params = new URLSearchParams((req.raw.url ?? '').split('?')[1] ?? '');
      params.delete('app');
      params.delete('stream');
      const sreq: StreamRequest = { app: appName, stream, params, sessionId: id, remote: `${remoteIp}:${req.socket.remotePort ?? 0}`, protocol: 'whep' };
      let admission;
      try {
        admission = await ctx.host.admitPlay(sreq);
      } catch (err) {
        ctx.limiter.release(remoteIp);
        throw err;
      }
      if (!admission.ok) {
        ctx.limiter.release(remoteIp);
        // 307: the viewer posts its offer again to the node named (a 302 may become a GET).
        if (admission.redirect) return void reply.redirect(admission.redirect.replace(/\.flv(\?|$)/, '/whep$1'), 307);
        const status = admission.code.endsWith('StreamNotFound') ? 404 : 403;
        return void reply.code(status).send({ error: admission.description, code: admission.code });
      }
      const hub = admission.hub;
      const giveBack = (): void => {
        ctx.limiter.release(remoteIp);
        ctx.host.endPlay(hub);
        ctx.host.sessionDone('play', sreq, { bytesIn: 0, bytesOut: 0, durationMs: 0 });
      };

      // The answer names the stream's profile and audio: a stream not live yet (waiting, or a relay
      // starting) is waited for as HTTP-FLV viewers wait, up to the app's play_wait_ms (0: until the viewer gives up).
      const waitMs = appConfig(ctx.host.config, appName).play_wait_ms;
      const live = await untilVideo(hub, waitMs, req.raw.socket);
      if (!live) {
        giveBack();
        if (req.raw.socket.destroyed) return;
        return refuse(reply, 'notLive', `nothing within ${waitMs} ms`);
      }
      const choice = codecChoice(hub, video);
      if ('refusal' in choice) {
        giveBack();
        if (choice.refusal === 'bFrames') ctx.host.log.info({ app: appName, stream, session: id }, 'WHEP viewer refused: the source uses B-frames');
        return refuse(reply, choice.refusal, choice.detail);
      }

      let pc: PeerConnection | undefined;
      let answer: string;
      let session: WhepSession;
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
        const v = new nodeDataChannel.Video(video.mid, 'SendOnly');
        // libdatachannel takes the offer's fmtp as given; without one, its own H.265 line.
        if (choice.codec === 'avc') v.addH264Codec(choice.pt, choice.fmtp);
        else if (choice.fmtp) v.addVideoCodec(choice.pt, FOURCC[choice.codec]!, choice.fmtp);
        else if (choice.codec === 'hevc') v.addH265Codec(choice.pt);
        else if (choice.codec === 'vp9') v.addVP9Codec(choice.pt);
        else v.addAV1Codec(choice.pt);
        const ssrc = newSsrc();
        v.addSSRC(ssrc, 'meshcast', `meshcast-${id}`, `video-${id}`);
        const track = pc.addTrack(v);
        const rtpConfig = attachVideoChain(track, ssrc, choice.pt, choice.codec);
        let audio: WhepTrackSetup['audio'];
        const opus = audioChoice(hub, media);
        if (opus) {
          const a = new nodeDataChannel.Audio(opus.mid, 'SendOnly');
          a.addOpusCodec(opus.pt, 'minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1');
          const assrc = newSsrc();
          a.addSSRC(assrc, 'meshcast', `meshcast-${id}`, `audio-${id}`);
          const atrack = pc.addTrack(a);
          audio = { track: atrack, rtpConfig: attachAudioChain(atrack, assrc, opus.pt), transcoder: whipOpusOf(hub) ?? transcoderFor(hub) };
        }
        pc.setLocalDescription('answer');
        const local = pc.localDescription();
        if (!local) throw new Error('no local description after setLocalDescription');
        answer = advertiseCandidates(local.sdp, advertised(), cfg.udp_port);
        session = new WhepSession(id, { pc, track, rtpConfig, ssrc, payloadType: choice.pt, codec: choice.codec, audio }, hub, sreq, ctx.host, (s) => {
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
        ctx.host.log.warn({ err: (err as Error).message, app: appName, stream, session: id }, 'WHEP offer could not be answered');
        return void reply.code(400).send({ error: `the offer could not be answered: ${(err as Error).message}`, code: 'WHEP.Negotiation' });
      }
      const secret = randomBytes(16);
      resources.set(id, { session, secret });
      ctx.host.sessions.add(session);
      session.start(cfg.session_timeout_s * 1000, cfg.rtcp_timeout_s * 1000);
      return void reply
        .code(201)
        .header('Content-Type', 'application/sdp')
        .header('Location', `/whep/session/${id}.${secret.toString('hex')}`)
        .send(answer);
    }
  },
};

function refuse(reply: FastifyReply, why: keyof typeof WHEP_REFUSALS, detail?: string): void {
  const r = WHEP_REFUSALS[why];
  void reply.code(r.status).send({ error: detail ? `${r.text}: ${detail}` : r.text, code: r.code });
}

/** The offered Opus payload type to send the stream's audio as, when the stream's audio is AAC (anything else is not transcoded). */
function audioChoice(hub: StreamHub, media: ReturnType<typeof parseSdpOffer>): { mid: string; pt: number } | undefined {
  // A stream published over WHIP on this node has Opus already (whip-session.ts); otherwise only AAC is transcoded.
  if (!whipOpusOf(hub)) {
    const header = hub.snapshot().find((f) => f.type === 8 && f.isSequenceHeader);
    if (!header) return undefined;
    const tag = classifyAudioTag(header.payload);
    if (tag instanceof CodecConfigError || tag.codec !== 'aac') return undefined;
  }
  const m = media.find((x) => x.kind === 'audio' && (x.direction === 'recvonly' || x.direction === 'sendrecv'));
  const f = m?.formats.find((x) => x.codec.toLowerCase() === 'opus' && x.clockRate === 48000);
  return m && f ? { mid: m.mid, pt: f.pt } : undefined;
}

/** Resolves true once the hub has video to start a viewer on (a decoder configuration and a keyframe); false when `waitMs` (0 = no limit) passes or the viewer hangs up. */
function untilVideo(hub: StreamHub, waitMs: number, socket: Socket): Promise<boolean> {
  const hasConfig = (): boolean => hub.snapshot().some((f) => f.type === 9 && f.isSequenceHeader);
  if (hub.isLive && hasConfig() && hub.snapshot().some((f) => f.type === 9 && f.isKeyframe)) return Promise.resolve(true);
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      hub.removeFrameListener(onFrames);
      socket.off('close', onGone);
      resolve(ok);
    };
    const onFrames = (frames: readonly MediaFrame[]): void => {
      // Without a GOP cache the viewer starts on the next keyframe anyway: a configuration and a keyframe seen is enough.
      if (frames.some((f) => f.type === 9 && f.isKeyframe) && hasConfig()) done(true);
    };
    const onGone = (): void => done(false);
    hub.addFrameListener(onFrames);
    socket.once('close', onGone);
    if (waitMs > 0) timer = setTimeout(() => done(false), waitMs);
  });
}

type Choice = { codec: PassthroughCodec; pt: number; fmtp: string } | { refusal: keyof typeof WHEP_REFUSALS; detail?: string };

/** The offer's video codecs, for a refusal's reason ("H264, VP8, AV1"). */
function offeredVideoCodecs(video: ReturnType<typeof parseSdpOffer>[number]): string {
  const names = [...new Set(video.formats.map((f) => f.codec.toUpperCase()).filter((c) => !['RTX', 'RED', 'ULPFEC', 'FLEXFEC-03'].includes(c)))];
  return names.length > 0 ? names.join(', ') : 'no video codec';
}

/** What to answer for this stream and this offer: the H.264 payload type, or why not. */
function codecChoice(hub: StreamHub, video: ReturnType<typeof parseSdpOffer>[number]): Choice {
  if (hub.bFrames) return { refusal: 'bFrames' };
  let plid = '42e01f';
  const header = hub.snapshot().find((f) => f.type === 9 && f.isSequenceHeader);
  if (header) {
    const tag = classifyVideoTag(header.payload);
    if (!(tag instanceof CodecConfigError)) {
      const codec = tag.codec;
      if (codec === 'hevc' || codec === 'av1' || codec === 'vp9') {
        // H.265 (RFC 7798), AV1 and VP9 (RFC 9628) over RTP: the browser's own format line is answered as offered.
        const rtpName = FOURCC[codec]!;
        // VP9: the format of the stream's profile (a format without profile-id is profile 0: RFC 9628's media type parameters).
        const vp9Profile = codec === 'vp9' ? (vp9ConfigProfile(header.payload.subarray(tag.dataOffset, tag.dataOffset + tag.dataLength)) ?? 0) : undefined;
        const f = video.formats.find((x) => x.codec.toUpperCase() === rtpName && x.clockRate === 90000 && (vp9Profile === undefined || Number(fmtpParams(x.fmtp).get('profile-id') ?? 0) === vp9Profile));
        if (f) return { codec, pt: f.pt, fmtp: f.fmtp };
        if (vp9Profile !== undefined && offersCodec(video, rtpName)) {
          return { refusal: 'codec', detail: `the stream's video is VP9 profile ${vp9Profile}; the offer has VP9 but not that profile (the offer has ${offeredVideoCodecs(video)})` };
        }
      }
      if (tag.codec !== 'avc') {
        const name = FOURCC[tag.codec] ?? tag.codec;
        const why = codec === 'hevc' || codec === 'av1' || codec === 'vp9' || !offersCodec(video, name) ? 'the offer does not have it' : `the offer has it, but this node passes through only H.264, H.265, AV1 and VP9`;
        return { refusal: 'codec', detail: `the stream's video is ${name}; ${why} (the offer has ${offeredVideoCodecs(video)})` };
      }
      const cfg = parseAvcDecoderConfig(header.payload.subarray(tag.dataOffset, tag.dataOffset + tag.dataLength));
      if (!(cfg instanceof CodecConfigError) && cfg.sps[0]) plid = profileLevelId(cfg.sps[0]);
    }
  }
  const f = chooseH264(video, plid);
  if (!f) return { refusal: 'noH264' };
  // The answer names the stream's own profile and level: the browser's decoder takes any it offered.
  return { codec: 'avc', pt: f.pt, fmtp: `level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=${plid}` };
}
