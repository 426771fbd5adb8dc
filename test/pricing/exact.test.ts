import { describe, expect, it } from 'vitest';
import { costInUnits, costNanosScaled, costNanosSmall, smallDecimal } from '../../src/pricing/book.js';
import {
  Dec,
  divRoundHalfUp,
  nanosToUnits,
  nanosToDecimalText,
  scaledInteger,
  unitsToNanos,
} from '../../src/pricing/money.js';
import type { Usage } from '../../src/record.js';
import { mulberry32 } from '../random.js';
import { book, query, table } from './helpers.js';

describe('integer pricing gives the decimal path’s figure (issue 11)', () => {
  it('scaledInteger keeps up to 18 decimals exactly and refuses more or negatives', () => {
    expect(scaledInteger(new Dec('0.0000025'))).toBe(2_500_000_000_000n);
    expect(scaledInteger(new Dec('12'))).toBe(12n * 10n ** 18n);
    expect(scaledInteger(new Dec('0.000000000000000001'))).toBe(1n);
    expect(scaledInteger(new Dec('0.0000000000000000001'))).toBeNull();
    expect(scaledInteger(new Dec('-1'))).toBeNull();
  });

  it('divRoundHalfUp rounds a half up and everything else to the nearest', () => {
    expect(divRoundHalfUp(5n, 2n)).toBe(3n);
    expect(divRoundHalfUp(7n, 3n)).toBe(2n);
    expect(divRoundHalfUp(8n, 3n)).toBe(3n);
    expect(divRoundHalfUp(0n, 9n)).toBe(0n);
  });

  it('nanosToUnits is the double of the exact decimal text', () => {
    const r = mulberry32(7);
    for (let i = 0; i < 20_000; i++) {
      const n = Math.floor(r() * 2 ** 53) * (r() < 0.1 ? -1 : 1);
      expect(nanosToUnits(n)).toBe(Number(nanosToDecimalText(n)));
    }
    expect(nanosToUnits(10n ** 30n)).toBe(1e21);
  });

  it('random tables, usages and multipliers: the same nanos as decimal.js, and the integer path is taken', () => {
    const r = mulberry32(20261201);
    const int = (max: number) => Math.floor(r() * max);
    const decimal = (maxDecimals: number): string => {
      const whole = String(int(r() < 0.7 ? 10 : 100_000));
      const d = int(maxDecimals + 1);
      const frac = Array.from({ length: d }, () => int(10)).join('');
      return d > 0 ? `${whole}.${frac}` : whole;
    };
    let scaledTaken = 0;
    let smallTaken = 0;
    const cases = 600;
    for (let i = 0; i < cases; i++) {
      // One case in ten has a price with more decimals than the scale: the decimal fallback.
      const wide = i % 10 === 0;
      const price = () => decimal(wide && r() < 0.5 ? 22 : 9);
      const lines = [
        `currency: USD`,
        `unit: ${r() < 0.5 ? '1M' : '1K'}`,
        `prices:`,
        `  - model: m`,
        `    input: ${price()}`,
        `    output: ${price()}`,
        `    cache_read: ${price()}`,
        `    cache_write: ${price()}`,
        `    cache_write_1h: ${price()}`,
        ...(r() < 0.5 ? [`    reasoning: ${price()}`] : []),
        ...(r() < 0.2 ? [`    per_request: ${price()}`] : []),
      ];
      const t = table(lines.join('\n') + '\n', `t${i}.yaml`);
      const upstreamMultiplier = r() < 0.5 ? decimal(wide ? 20 : 4) : undefined;
      const b = book([t], {
        multipliers: { app: r() < 0.3 ? { default: decimal(3) } : {} },
        upstreams: [
          {
            name: 'default',
            url: new URL('https://x.example/v1'),
            multiplier: upstreamMultiplier,
            trustReportedCost: false,
          },
        ],
      });
      const output = int(200_000);
      const usage: Usage = {
        input: int(2_000_000),
        output,
        ...(r() < 0.5 ? { cacheRead: int(1_000_000) } : {}),
        ...(r() < 0.3 ? { cacheWrite: int(100_000) } : {}),
        ...(r() < 0.5 ? { reasoning: int(output + 1) } : {}),
      };
      if (usage.cacheWrite !== undefined && r() < 0.5) usage.cacheWrite1h = int(usage.cacheWrite + 1);
      const q = query({ model: 'm', usage });
      const got = b.price(q);

      const match = b.lookup('m', 'default', q.at)!;
      const units = costInUnits(match, usage, q.operation);
      if ('reason' in units) throw new Error(units.reason);
      const want = unitsToNanos(units.units.times(b.multiplierFor('default', 'default', 'm')));
      expect(got.cost_nanos === null ? null : BigInt(got.cost_nanos), `case ${i}: ${lines.join(' | ')}`).toBe(
        Number.isSafeInteger(Number(want)) ? want : null,
      );
      const m = scaledInteger(b.multiplierFor('default', 'default', 'm'));
      if (m !== null && costNanosScaled(match, usage, q.operation, m) !== null) scaledTaken++;
      const sm = smallDecimal(b.multiplierFor('default', 'default', 'm'));
      const small = sm === null ? null : costNanosSmall(match, usage, q.operation, sm);
      if (small !== null) {
        smallTaken++;
        expect('nanos' in small && BigInt(small.nanos), `case ${i}: ${lines.join(' | ')}`).toBe(want);
      }
    }
    // Small prices (few decimals, whole part under 10) fit in safe integers; the rest fall back.
    expect(smallTaken).toBeGreaterThan(cases * 0.1);
    expect(smallTaken).toBeLessThan(scaledTaken);
    // Nine cases in ten have scalable prices; about half of the tenth still do.
    expect(scaledTaken).toBeGreaterThan(cases * 0.85);
    expect(scaledTaken).toBeLessThan(cases);
  });

  it('safe-integer path: gateway-like prices take it, half-up rounding, 1K unit, overflow falls back', () => {
    const cases: Array<[string, string, Usage, string]> = [
      // unit, prices, usage, multiplier → checked against decimal.js below
      [
        '1M',
        'input: 2.5\n    output: 10\n    cache_read: 1.25',
        { input: 1234, output: 567, cacheRead: 89 },
        '1',
      ],
      ['1M', 'input: 14.4\n    output: 57.6', { input: 1_000_001, output: 3 }, '0.8'],
      ['1K', 'input: 0.0015\n    output: 0.002', { input: 333, output: 777 }, '0.55'],
      // 0.5 nanos exactly: rounds up
      ['1M', 'input: 0.0005\n    output: 0', { input: 1, output: 0 }, '1'],
      ['1M', 'input: 0.0004999\n    output: 0', { input: 1, output: 0 }, '1'],
    ];
    for (const [unit, prices, usage, mult] of cases) {
      const t = table(`currency: USD\nunit: ${unit}\nprices:\n  - model: m\n    ${prices}\n`);
      const match = book([t]).lookup('m', 'default', new Date())!;
      const units = costInUnits(match, usage, 'chat');
      if ('reason' in units) throw new Error(units.reason);
      const want = unitsToNanos(units.units.times(new Dec(mult)));
      const small = costNanosSmall(match, usage, 'chat', smallDecimal(new Dec(mult))!);
      expect(small, `${prices} ${mult}`).toEqual({ nanos: Number(want) });
    }
    expect(
      costNanosSmall(
        book([
          table('currency: USD\nunit: 1M\nprices:\n  - model: m\n    input: 0.0005\n    output: 0\n'),
        ]).lookup('m', 'default', new Date())!,
        { input: 1, output: 0 },
        'chat',
        { m: 1, k: 0 },
      ),
    ).toEqual({ nanos: 1 });
    // A product past 2^53 does not fit: the safe-integer path declines, BigInt gives the exact figure.
    const big = table(
      'currency: USD\nunit: 1M\nprices:\n  - model: m\n    input: 9.123456789\n    output: 1\n',
    );
    const bigBook = book([big]);
    const match = bigBook.lookup('m', 'default', new Date())!;
    const usage: Usage = { input: 2_000_000, output: 1 };
    expect(costNanosSmall(match, usage, 'chat', { m: 1, k: 0 })).toBeNull();
    const viaBook = bigBook.price(query({ model: 'm', usage }));
    const units = costInUnits(match, usage, 'chat');
    if ('reason' in units) throw new Error(units.reason);
    expect(BigInt(viaBook.cost_nanos!)).toBe(unitsToNanos(units.units));
    // A multiplier with more decimals than a safe integer holds has no small form.
    expect(smallDecimal(new Dec('0.1234567890123456789'))).toBeNull();
    expect(smallDecimal(new Dec('-1'))).toBeNull();
  });

  it('an unpriceable usage gets the same reason on both paths', () => {
    const t = table('currency: USD\nunit: 1M\nprices:\n  - model: m\n    input: 1\n    output: 2\n');
    const b = book([t]);
    const match = b.lookup('m', 'default', new Date())!;
    for (const usage of [{ input: 1 }, {}, { input: 5, output: 3, reasoning: 4 }] as Usage[]) {
      const dec = costInUnits(match, usage, 'chat');
      const int = costNanosScaled(match, usage, 'chat', 10n ** 18n);
      expect('reason' in dec && int !== null && 'reason' in int && int.reason === dec.reason).toBe(true);
      const small = costNanosSmall(match, usage, 'chat', { m: 1, k: 0 });
      expect('reason' in dec && small !== null && 'reason' in small && small.reason === dec.reason).toBe(
        true,
      );
    }
  });
  it('a count that is not a safe integer takes the decimal path instead of throwing', () => {
    const t = table(
      'currency: USD\nunit: 1M\nprices:\n  - model: m\n    input: 1\n    output: 2\n    per_request: 0.01\n',
    );
    const b = book([t]);
    const match = b.lookup('m', 'default', new Date())!;
    for (const usage of [
      { input: 1.5, output: 2 },
      { input: 1, output: 2, requests: 1.5 },
      { input: 2 ** 53 + 2, output: 1 },
    ] as Usage[]) {
      expect(costNanosScaled(match, usage, 'chat', 10n ** 18n)).toBeNull();
      expect(costNanosSmall(match, usage, 'chat', { m: 1, k: 0 })).toBeNull();
      const units = costInUnits(match, usage, 'chat');
      if ('reason' in units) throw new Error(units.reason);
      const want = unitsToNanos(units.units);
      const got = b.price(query({ model: 'm', usage }));
      expect(got.cost_nanos === null ? null : BigInt(got.cost_nanos)).toBe(
        Number.isSafeInteger(Number(want)) ? want : null,
      );
    }
  });
});
