/**
 * HttpFlvSwarm: N HTTP-FLV viewers (plain node:http GETs, no keep-alive, redirects followed)
 * read with proto's FlvDecoder. The ramp, the counters and the measurement window are the load
 * library's SwarmCore, so the report is the same as the RTMP ViewerSwarm's.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import { FlvDecoder, FlvError } from '@meshcast/proto';
import { SwarmCore, ViewerTally } from '../load/index.ts';

const MAX_REDIRECTS = 3;

class FlvViewer extends ViewerTally {
  req: ClientRequest | undefined;
  res: IncomingMessage | undefined;
  readonly decoder = new FlvDecoder();
}

export class HttpFlvSwarm extends SwarmCore<FlvViewer> {
  protected newViewer(): FlvViewer {
    return new FlvViewer(this);
  }

  protected open(v: FlvViewer, i: number): void {
    const localAddress = this.localAddress(i);
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    const timer = setTimeout(() => {
      if (v.state !== 'connecting') return;
      this.fail(v, v.res ? 'play:TIMEOUT' : 'connect:TIMEOUT');
      v.req?.destroy();
    }, timeoutMs);
    const get = (url: string, hops: number): void => {
      let req: ClientRequest;
      try {
        req = http.get(url, { agent: false, headers: { 'User-Agent': 'meshcast-load', Connection: 'close' }, ...(localAddress ? { localAddress } : {}) });
      } catch (err) {
        clearTimeout(timer);
        this.fail(v, `connect:${(err as Error).message.slice(0, 40)}`);
        return;
      }
      v.req = req;
      req.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (this.stopping) return;
        if (v.state === 'playing') this.fail(v, `closed:${err.code ?? 'ERROR'}`);
        else this.fail(v, `connect:${err.code ?? err.message.slice(0, 40)}`);
      });
      req.on('response', (res) => {
        const loc = res.headers.location;
        if (res.statusCode && res.statusCode >= 300 && res.statusCode < 400 && loc) {
          res.resume();
          if (hops >= MAX_REDIRECTS) {
            clearTimeout(timer);
            this.fail(v, 'play:TOO_MANY_REDIRECTS');
            return;
          }
          get(new URL(loc, url).toString(), hops + 1);
          return;
        }
        if (res.statusCode !== 200) {
          clearTimeout(timer);
          res.resume();
          this.fail(v, `play:HTTP${res.statusCode ?? 0}`);
          req.destroy();
          return;
        }
        clearTimeout(timer);
        v.res = res;
        if (this.stopping) {
          req.destroy();
          return;
        }
        if (v.state === 'connecting') {
          v.state = 'playing';
          this.playing++;
        }
        res.on('data', (chunk: Buffer) => {
          const tags = v.decoder.push(chunk);
          if (tags instanceof FlvError) {
            this.fail(v, `play:${tags.code}`);
            req.destroy();
            return;
          }
          for (const t of tags) v.onMedia(t.type, t.timestamp, t.payload);
        });
        const closed = (): void => {
          if (v.state === 'playing' && !this.stopping) this.fail(v, 'closed:connection closed by server');
        };
        res.on('end', closed);
        res.on('close', closed);
      });
    };
    get(this.opts.url, 0);
  }

  protected close(v: FlvViewer): void {
    v.req?.destroy();
  }
}
