/**
 * Each billing source against the fake gateway's real HTTP endpoints (test/fake-gateway/billing.ts):
 * seed 004's /v1/balance, one-api's /dashboard/billing/*, new-api's /api/usage/token; and the
 * parsers' refusals.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BillingSettings } from '../../src/config/types.js';
import {
  fetchFigures,
  parseDieyuBalance,
  parseNewApiTokenUsage,
  parseOneApiUsage,
} from '../../src/reconcile/sources.js';
import { startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';

const KEY = 'sk-billing-sources';
const N = 1_000_000_000n;

function billing(source: BillingSettings['source'], extra: Partial<BillingSettings> = {}): BillingSettings {
  return {
    source,
    intervalMs: 60_000,
    apiKey: KEY,
    currency: source === 'oneapi' || source === 'newapi' ? 'USD' : undefined,
    quotaPerUnit: 500_000,
    windowMs: 86_400_000,
    ...extra,
  };
}

let gw: FakeGateway;
beforeAll(async () => {
  gw = await startFakeGateway({ billing: { currency: 'CNY' } });
});
afterAll(() => gw.close());

const fetchFor = (b: BillingSettings) =>
  fetchFigures({ upstreamUrl: new URL(`${gw.url}/v1`), headers: {}, billing: b });

describe('billing sources against the fake gateway', () => {
  it('balance (seed 004): tenant balance and the key daily_used, growing with what it charged', async () => {
    const before = await fetchFor(billing('balance'));
    expect(before).toMatchObject({
      currency: 'CNY',
      balance_nanos: 138_500_000_000n,
      daily_used_nanos: 3_250_000_000n,
    });
    expect(before.monthly_used_nanos).toBeUndefined();
    expect(before.daily_reset_at).toBeGreaterThan(Date.now());
    gw.billing.charge(KEY, 'req-x', { prompt: 100_000, completion: 20_000 }, { multiplier: '1.25' });
    // (100000 × 2 + 20000 × 8) / 1M × 1.25 = 0.45 CNY
    const after = await fetchFor(billing('balance'));
    expect(after.daily_used_nanos! - before.daily_used_nanos!).toBe(450_000_000n);
    expect(before.balance_nanos! - after.balance_nanos!).toBe(450_000_000n);
  });

  it('oneapi: total_usage in cents becomes currency units; the subscription hard limit is the grant', async () => {
    const f = await fetchFor(billing('oneapi'));
    expect(f.currency).toBe('USD');
    expect(f.total_used_nanos).toBe(gw.billing.quotaNanos(KEY));
    expect(f.total_used_nanos).toBe(450_000_000n);
    expect(f.granted_nanos).toBe(1000n * N);
    // Also at the root (one-api serves both), as a configured absolute URL.
    const v1 = await fetchFor(billing('oneapi', { path: `${gw.url}/dashboard/billing/usage` }));
    expect(v1.total_used_nanos).toBe(450_000_000n);
  });

  it('newapi: quota units / quota_per_unit', async () => {
    const f = await fetchFor(billing('newapi'));
    expect(f).toMatchObject({ currency: 'USD', total_used_nanos: 450_000_000n, granted_nanos: 1000n * N });
    expect(f.balance_nanos).toBe(1000n * N - 450_000_000n);
  });

  it('a bad key is an HTTP error, not a figure', async () => {
    await expect(fetchFor(billing('balance', { apiKey: 'sk-bad' }))).rejects.toThrow(/HTTP 401/);
  });
});

describe('parsers refuse what they cannot read', () => {
  it('balance needs a currency and at least one figure', () => {
    expect(() => parseDieyuBalance({ balance: 1 })).toThrow(/currency/);
    expect(() => parseDieyuBalance({ currency: 'CNY' })).toThrow(/none of/);
    expect(parseDieyuBalance({ balance: 1 }, 'CNY').balance_nanos).toBe(N);
  });

  it('one-api answers errors with HTTP 200 and an error object', () => {
    expect(() => parseOneApiUsage({ error: { message: 'quota lookup failed' } }, 'USD')).toThrow(
      /quota lookup/,
    );
    expect(parseOneApiUsage({ object: 'list', total_usage: 2500 }, 'USD').total_used_nanos).toBe(25n * N);
  });

  it('new-api: unlimited quota has no grant; an error body is refused', () => {
    const f = parseNewApiTokenUsage(
      { code: true, data: { total_used: 500_000, unlimited_quota: true } },
      'USD',
      500_000,
    );
    expect(f).toMatchObject({ total_used_nanos: N, granted_nanos: undefined });
    expect(() =>
      parseNewApiTokenUsage({ success: false, message: 'token not found' }, 'USD', 500_000),
    ).toThrow(/token not found/);
  });
});
