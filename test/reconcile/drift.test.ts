/**
 * The drift math of billed vs metered (issue 13, docs/reconcile.md): counters that reset, balances
 * that are topped up, the fitted round ratio, exact money.
 */
import { describe, expect, it } from 'vitest';
import { billedBetween, billedFrom, chooseCounter, driftRatio, fitRatio } from '../../src/reconcile/drift.js';
import type { BillingSnapshot } from '../../src/reconcile/types.js';
import { Dec } from '../../src/pricing/money.js';

const N = 1_000_000_000n; // nanos per unit

function snap(ts: number, figures: Partial<BillingSnapshot>): BillingSnapshot {
  return { ts, upstream: 'dieyu', key_id: 'abc123abc123', source: 'balance', currency: 'CNY', ...figures };
}

describe('billed from cumulative counters', () => {
  it('adds increases between polls, exactly (no float ever)', () => {
    // 0.1 + 0.2 is not 0.3 in floats; in nanos it is.
    const series = [
      snap(1, { daily_used_nanos: 3_250_000_000n }),
      snap(2, { daily_used_nanos: 3_350_000_000n }),
      snap(3, { daily_used_nanos: 3_550_000_000n }),
    ];
    const b = billedFrom(series, 'daily_used')!;
    expect(b.nanos).toBe(300_000_000n);
    expect(b).toMatchObject({
      counter: 'daily_used',
      currency: 'CNY',
      fromMs: 1,
      toMs: 3,
      snapshots: 3,
      resets: 0,
    });
  });

  it('a counter that drops is a new period: the later value is billed, never a negative charge', () => {
    const series = [
      snap(1, { daily_used_nanos: 19n * N }),
      snap(2, { daily_used_nanos: 20n * N }), // +1
      snap(3, { daily_used_nanos: 2n * N }), // reset at midnight, then 2 used
      snap(4, { daily_used_nanos: 5n * N }), // +3
    ];
    const b = billedFrom(series, 'daily_used')!;
    expect(b.nanos).toBe(6n * N);
    expect(b.resets).toBe(1);
  });

  it('a counter past its stated daily_reset_at is a new period even when it did not drop', () => {
    const series = [
      snap(1000, { daily_used_nanos: 1n * N, daily_reset_at: 1500 }),
      snap(2000, { daily_used_nanos: 4n * N, daily_reset_at: 90_000 }),
    ];
    expect(billedFrom(series, 'daily_used')).toMatchObject({ nanos: 4n * N, resets: 1 });
  });

  it('one poll bills nothing yet', () => {
    expect(billedFrom([snap(1, { daily_used_nanos: 1n })], 'daily_used')).toBeUndefined();
  });
});

describe('billed from balance deltas', () => {
  it('adds drops; a rise is a top-up, excluded and reported', () => {
    const series = [
      snap(1, { balance_nanos: 100n * N }),
      snap(2, { balance_nanos: 98n * N }), // -2 spent
      snap(3, { balance_nanos: 148n * N }), // +50 top-up
      snap(4, { balance_nanos: 147_500_000_000n }), // -0.5 spent
    ];
    const b = billedFrom(series, 'balance')!;
    expect(b.nanos).toBe(2_500_000_000n);
    expect(b.topUps).toBe(1);
    expect(b.topUpNanos).toBe(50n * N);
  });

  it('billedBetween is the metric increment of one pair', () => {
    expect(billedBetween(snap(1, { balance_nanos: 10n }), snap(2, { balance_nanos: 4n }), 'balance')).toBe(
      6n,
    );
    expect(billedBetween(snap(1, { balance_nanos: 4n }), snap(2, { balance_nanos: 10n }), 'balance')).toBe(
      0n,
    );
  });
});

describe('which counter a source uses', () => {
  it('balance: monthly when every snapshot states it, else daily, else the balance', () => {
    const both = [snap(1, { monthly_used_nanos: 1n, daily_used_nanos: 1n, balance_nanos: 1n })];
    expect(chooseCounter('balance', both)).toBe('monthly_used');
    const daily = [
      snap(1, { daily_used_nanos: 1n, balance_nanos: 1n }),
      snap(2, { monthly_used_nanos: 1n, daily_used_nanos: 2n, balance_nanos: 1n }),
    ];
    expect(chooseCounter('balance', daily)).toBe('daily_used');
    expect(chooseCounter('balance', [snap(1, { balance_nanos: 1n })])).toBe('balance');
    expect(chooseCounter('balance_delta', both)).toBe('balance');
    expect(chooseCounter('oneapi', [snap(1, { total_used_nanos: 1n })])).toBe('total_used');
    expect(chooseCounter('newapi', [snap(1, { balance_nanos: 1n })])).toBeUndefined();
  });
});

describe('drift ratio and the fitted multiplier', () => {
  it('ratio is exact; none when nothing was metered', () => {
    expect(driftRatio(450_000_000n, 360_000_000n)!.toFixed()).toBe('1.25');
    expect(driftRatio(1n, 0n)).toBeNull();
  });

  it('fits the nearest round ratio within ±2 %', () => {
    expect(fitRatio(new Dec('1.2493'))?.value).toBe('1.25');
    expect(fitRatio(new Dec('0.8012'))?.value).toBe('0.8');
    expect(fitRatio(new Dec('0.874'))?.value).toBe('0.88');
    expect(fitRatio(new Dec('2.03'))?.value).toBe('2');
  });

  it('a ratio within ±2 % of 1 is a match, not a multiplier; far from any round value nothing fits', () => {
    expect(fitRatio(new Dec('1.015'))).toBeUndefined();
    expect(fitRatio(new Dec('0.985'))).toBeUndefined();
    expect(fitRatio(new Dec('1.4'))).toBeUndefined();
    expect(fitRatio(new Dec('3.5'))).toBeUndefined();
  });
});
