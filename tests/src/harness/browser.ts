/**
 * Headless Chromium for tests: the system's browser (Debian's `chromium`, installed by
 * scripts/setup-system.sh) driven by playwright-core. Nothing is downloaded: playwright's
 * own browser builds are never used. Each launch gets a fresh profile directory, removed on close.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/** Where the browser is: MESHCAST_CHROMIUM, else Debian's path. */
export const CHROMIUM_PATH = process.env.MESHCAST_CHROMIUM ?? '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Muted media may autoplay anyway; this keeps a test independent of the policy.
  '--autoplay-policy=no-user-gesture-required',
];

/** Why the browser cannot run here, or undefined when it can (tests skip with this reason). */
export function browserUnavailable(): string | undefined {
  if (!existsSync(CHROMIUM_PATH)) return `no Chromium at ${CHROMIUM_PATH} (run scripts/setup-system.sh, or set MESHCAST_CHROMIUM)`;
  return undefined;
}

export interface HeadlessBrowser {
  readonly context: BrowserContext;
  /** Opens a page; browser console errors and page errors are collected in `errors`. */
  newPage(): Promise<Page>;
  readonly errors: string[];
  close(): Promise<void>;
}

/** `args`: extra Chromium switches (e.g. a fake camera and microphone for a publishing test). */
export async function launchBrowser(opts: { viewport?: { width: number; height: number }; args?: string[] } = {}): Promise<HeadlessBrowser> {
  const profile = mkdtempSync(join(tmpdir(), 'meshcast-chromium-'));
  let context: BrowserContext;
  try {
    // A persistent context is how playwright takes a profile directory (--user-data-dir).
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: [...ARGS, ...(opts.args ?? [])],
      viewport: opts.viewport ?? { width: 1440, height: 1000 },
      deviceScaleFactor: 1,
      timeout: 30_000,
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    throw err;
  }
  const errors: string[] = [];
  return {
    context,
    errors,
    async newPage() {
      const page = await context.newPage();
      page.on('console', (m) => {
        if (m.type() === 'error') errors.push(`console: ${m.text()}`);
      });
      page.on('pageerror', (e) => errors.push(`page: ${e.message}`));
      return page;
    },
    async close() {
      await context.close().catch(() => undefined);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
