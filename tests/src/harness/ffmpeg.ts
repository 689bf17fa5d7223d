/** Real ffmpeg/ffprobe as publisher and players. */
import { spawn, type ChildProcess } from 'node:child_process';

export interface PublishOptions {
  width?: number;
  height?: number;
  fps?: number;
  gop?: number;
  seconds?: number;
  bitrate?: string;
  /** B-frames between references (x264 `-bf`); absent = none (zerolatency). */
  bframes?: number;
}

export class FfmpegPublisher {
  readonly proc: ChildProcess;
  stderr = '';
  exitCode: number | null | undefined;
  readonly exited: Promise<number | null>;

  constructor(url: string, o: PublishOptions = {}) {
    const w = o.width ?? 640;
    const h = o.height ?? 360;
    const fps = o.fps ?? 30;
    const args = [
      '-hide_banner', '-loglevel', 'error', '-nostdin', '-re',
      '-f', 'lavfi', '-i', `testsrc2=size=${w}x${h}:rate=${fps}`,
      '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100',
      ...(o.seconds ? ['-t', String(o.seconds)] : []),
      '-c:v', 'libx264', '-preset', 'ultrafast', ...(o.bframes ? ['-bf', String(o.bframes)] : ['-tune', 'zerolatency']), '-pix_fmt', 'yuv420p',
      '-g', String(o.gop ?? fps), '-b:v', o.bitrate ?? '800k',
      '-c:a', 'aac', '-b:a', '64k', '-ar', '44100', '-ac', '2',
      '-f', 'flv', url,
    ];
    this.proc = spawn('ffmpeg', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr!.on('data', (d: Buffer) => {
      if (this.stderr.length < 20_000) this.stderr += d.toString();
    });
    this.exited = new Promise((res) => this.proc.on('exit', (code) => { this.exitCode = code; res(code); }));
  }

  async stop(): Promise<void> {
    if (this.exitCode !== undefined) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }
}

export interface ProbeResult {
  streams: Array<{ codec_type: string; codec_name: string; width?: number; height?: number; r_frame_rate?: string; avg_frame_rate?: string; sample_rate?: string; channels?: number }>;
}

export function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

export async function ffprobe(url: string, timeoutMs = 20_000): Promise<ProbeResult> {
  const r = await run('ffprobe', ['-v', 'error', '-rw_timeout', '10000000', '-show_streams', '-of', 'json', url], timeoutMs);
  if (r.code !== 0) throw new Error(`ffprobe ${url} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as ProbeResult;
}

/** Reads `seconds` of media with ffmpeg and decodes it; returns ffmpeg's error output and the frame count. */
export async function ffmpegDecode(url: string, seconds: number, timeoutMs = 30_000): Promise<{ code: number | null; errors: string; frames: number }> {
  const r = await run('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-stats', '-rw_timeout', '10000000', '-i', url, '-t', String(seconds), '-f', 'null', '-'], timeoutMs);
  const m = [...r.stderr.matchAll(/frame=\s*(\d+)/g)].pop();
  const errors = r.stderr.split(/\r|\n/).filter((l) => l.trim() !== '' && !/^frame=/.test(l.trim())).join('\n');
  return { code: r.code, errors, frames: m ? Number(m[1]) : 0 };
}
