/**
 * TokenGuessThrottle (src/console/auth.ts): the lock after 5 wrong tokens, its end with the window
 * that began at the first failure, a success clearing the address, and the bound on addresses.
 */
import { describe, expect, it } from 'vitest';
import { TokenGuessThrottle } from '../../src/console/auth.js';

describe('TokenGuessThrottle', () => {
  it('locks an address after 5 failures within the window, until that window ends', () => {
    let now = 1_000_000;
    const t = new TokenGuessThrottle(() => now);
    for (let i = 1; i <= 4; i++) {
      expect(t.failed('10.0.0.1')).toBe(false);
      now += 1_000;
    }
    expect(t.lockedFor('10.0.0.1')).toBe(0);
    expect(t.failed('10.0.0.1')).toBe(true); // the 5th locks (logged once)
    expect(t.lockedFor('10.0.0.1')).toBe(60_000 - 4_000);
    expect(t.lockedFor('10.0.0.2')).toBe(0); // other addresses are not affected
    now += 55_999;
    expect(t.lockedFor('10.0.0.1')).toBe(1);
    now += 1;
    expect(t.lockedFor('10.0.0.1')).toBe(0);
    expect(t.failed('10.0.0.1')).toBe(false); // a new window starts
  });

  it('failures spread over more than the window never lock; a success clears the count', () => {
    let now = 0;
    const t = new TokenGuessThrottle(() => now);
    for (let i = 0; i < 20; i++) {
      expect(t.failed('a')).toBe(false);
      now += 15_000; // 4 per minute
    }
    for (let i = 0; i < 4; i++) t.failed('b');
    t.succeeded('b');
    for (let i = 0; i < 4; i++) expect(t.failed('b')).toBe(false);
    expect(t.lockedFor('b')).toBe(0);
  });

  it('tracks at most maxTracked addresses, forgetting the oldest', () => {
    const t = new TokenGuessThrottle(() => 0, 2, 60_000, 3);
    t.failed('a');
    t.failed('a');
    expect(t.lockedFor('a')).toBe(60_000);
    for (const x of ['b', 'c', 'd']) t.failed(x);
    expect(t.lockedFor('a')).toBe(0); // evicted by the fourth address
  });
});
