import { describe, expect, it } from 'vitest';
import {
  convertNanos,
  Dec,
  formatNanos,
  nanosToUnits,
  sumNanos,
  unitsToNanos,
} from '../../src/pricing/money.js';

describe('money', () => {
  it('rounds half-up once to nanos', () => {
    expect(unitsToNanos(new Dec('0.0000000005'))).toBe(1n);
    expect(unitsToNanos(new Dec('0.0000000004999'))).toBe(0n);
    expect(unitsToNanos(new Dec('0.0011826'))).toBe(1182600n);
  });

  it('formats exact decimal text, trimming zeros but keeping two decimals', () => {
    expect(formatNanos(1182600, 'CNY')).toBe('0.0011826 CNY');
    expect(formatNanos(1_000_000_000n)).toBe('1.00');
    expect(formatNanos(1_500_000_000)).toBe('1.50');
    expect(formatNanos(11_850_000, 'USD')).toBe('0.01185 USD');
    expect(formatNanos(1)).toBe('0.000000001');
  });

  it('sums exactly where floats drift', () => {
    // 0.1 + 0.2 in nanos, ten million times: exact.
    const many = Array.from({ length: 1000 }, () => 100_000_000);
    expect(sumNanos(many)).toBe(100_000_000_000n);
    expect(sumNanos([100_000_000, 200_000_000n])).toBe(300_000_000n);
    expect(nanosToUnits(300_000_000n)).toBe(0.3);
  });

  it('converts with the latest rate on or before the day, or the inverse, or null', () => {
    const fx = [
      { from: 'USD', to: 'CNY', rate: '7.1', date: '2026-01-01' },
      { from: 'USD', to: 'CNY', rate: '7.3', date: '2026-06-01' },
      { from: 'EUR', to: 'USD', rate: '1.25' },
    ];
    expect(convertNanos(1_000_000_000, 'USD', 'CNY', fx, '2026-05-31')).toBe(7_100_000_000n);
    expect(convertNanos(1_000_000_000, 'USD', 'CNY', fx, '2026-06-01')).toBe(7_300_000_000n);
    expect(convertNanos(1_000_000_000, 'USD', 'CNY', fx, '2025-12-31')).toBeNull();
    expect(convertNanos(7_300_000_000, 'CNY', 'USD', fx, '2026-07-01')).toBe(1_000_000_000n);
    expect(convertNanos(1_000_000_000, 'USD', 'EUR', fx, '2026-07-01')).toBe(800_000_000n);
    expect(convertNanos(5, 'JPY', 'USD', fx, '2026-07-01')).toBeNull();
    expect(convertNanos(5, 'CNY', 'CNY', [], '2026-07-01')).toBe(5n);
  });
});
