/** What tests read off a refusal: the ConfigError of a config load, the reason of a VodError. */
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../src/config.ts';
import { VodError } from '../src/vod/vod-library.ts';

/** The ConfigError a load throws, one line (fails the test when it loads). */
export function configRefusal(input: Parameters<typeof loadConfig>[0]): string {
  try {
    loadConfig(input);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
    return err.message;
  }
  assert.fail('the config loaded');
}

/** The VodError reason `fn` throws, or 'accepted'. */
export function vodRefusalReason(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof VodError, String(err));
    return err.reason;
  }
  return 'accepted';
}
