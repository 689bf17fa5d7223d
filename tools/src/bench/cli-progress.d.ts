// Minimal typings for the parts of cli-progress (3.x, no bundled types) the benchmark uses.
declare module 'cli-progress' {
  namespace cliProgress {
    interface Options {
      format?: string;
      hideCursor?: boolean;
      clearOnComplete?: boolean;
      stopOnComplete?: boolean;
      barsize?: number;
      fps?: number;
      etaBuffer?: number;
      noTTYOutput?: boolean;
      stream?: NodeJS.WritableStream;
    }
    class SingleBar {
      constructor(opts: Options, preset?: unknown);
      start(total: number, value: number, payload?: Record<string, unknown>): void;
      update(value: number, payload?: Record<string, unknown>): void;
      setTotal(total: number): void;
      stop(): void;
    }
    const Presets: { shades_classic: unknown; shades_grey: unknown; legacy: unknown; rect: unknown };
  }
  export = cliProgress;
}
