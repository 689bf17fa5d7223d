/** RtcpWatchdog under a hand-driven clock: silence for the timeout ends the session, RTCP keeps it, 0 turns it off. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RtcpWatchdog, type WatchdogClock } from '../src/webrtc/rtcp-watchdog.ts';

class ManualClock implements WatchdogClock {
  t = 1_000_000;
  private timers: Array<{ ms: number; next: number; fn: () => void; live: boolean }> = [];
  now(): number {
    return this.t;
  }
  every(ms: number, fn: () => void): { stop(): void } {
    const timer = { ms, next: this.t + ms, fn, live: true };
    this.timers.push(timer);
    return { stop: () => void (timer.live = false) };
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.live && x.next <= end).sort((a, b) => a.next - b.next)[0];
      if (!due) break;
      this.t = due.next;
      due.next += due.ms;
      due.fn();
    }
    this.t = end;
  }
  get live(): number {
    return this.timers.filter((x) => x.live).length;
  }
}

describe('RtcpWatchdog', () => {
  it('ends a peer silent for the timeout, once, and stops its timer', () => {
    const clock = new ManualClock();
    const silent: number[] = [];
    const w = new RtcpWatchdog(10_000, (ms) => silent.push(ms), clock);
    w.start();
    clock.advance(9_000);
    assert.deepEqual(silent, [], 'not yet');
    clock.advance(3_000);
    assert.equal(silent.length, 1);
    assert.ok(silent[0]! >= 10_000 && silent[0]! <= 11_000, `noticed after ${silent[0]} ms`);
    clock.advance(30_000);
    assert.equal(silent.length, 1, 'reported once');
    assert.equal(clock.live, 0, 'no timer left');
  });

  it('keeps a peer that sends RTCP, and counts from its last packet', () => {
    const clock = new ManualClock();
    const silent: number[] = [];
    const w = new RtcpWatchdog(10_000, (ms) => silent.push(ms), clock);
    w.start();
    for (let i = 0; i < 60; i++) {
      clock.advance(1_000);
      w.heard();
    }
    assert.deepEqual(silent, []);
    clock.advance(9_500);
    assert.deepEqual(silent, []);
    clock.advance(1_000);
    assert.equal(silent.length, 1);
    w.stop();
  });

  it('0 turns it off; stop() before the timeout reports nothing', () => {
    const clock = new ManualClock();
    const silent: number[] = [];
    const off = new RtcpWatchdog(0, (ms) => silent.push(ms), clock);
    off.start();
    assert.equal(clock.live, 0);
    const w = new RtcpWatchdog(2_000, (ms) => silent.push(ms), clock);
    w.start();
    clock.advance(1_000);
    w.stop();
    clock.advance(60_000);
    assert.deepEqual(silent, []);
  });
});
