/**
 * Budgets as a gate (issue 11): reserve the most a request can cost, fail closed, never bypassed by
 * an unreadable body. A real price book prices the bound.
 */
import { describe, expect, it, vi } from 'vitest';
import { createBudgets, type BudgetRequest, type Budgets } from '../../src/budgets/index.js';
import { BudgetConfig } from '../../src/config/schema.js';
import { TokenmeterError } from '../../src/errors.js';
import { createLogger, SILENT_LOGGER } from '../../src/log.js';
import type { RequestStart } from '../../src/sinks/types.js';
import { makeRecord, makeStart } from '../metrics/records.js';
import { book, table } from '../pricing/helpers.js';

const NOW = Date.parse('2026-11-23T10:00:00Z');

const PRICES = table(
  'currency: USD\nunit: 1M\nprices:\n' +
    '  - {model: gpt-4o, input: 2.5, output: 10, cache_read: 1.25, max_output_tokens: 16384}\n' +
    '  - {model: deepseek-chat, currency: CNY, input: 2, output: 8, max_output_tokens: 8192}\n',
);
const UPSTREAMS = [{ name: 'default', url: new URL('https://gw.example/v1'), trustReportedCost: false }];
const priceBook = book([PRICES], { upstreams: UPSTREAMS });

function budget(raw: Record<string, unknown>): BudgetConfig {
  return BudgetConfig.parse({
    name: 'tight',
    period: 'day',
    limit: '0.05',
    currency: 'USD',
    action: 'block',
    ...raw,
  });
}

function start(over: Partial<RequestStart> = {}): RequestStart {
  return makeStart({ ts_start: NOW, upstream: 'default', request_model: 'gpt-4o', app: 'bot', ...over });
}

function chat(
  maxTokens: number | undefined,
  content = 'Summarise the quarterly report in three bullet points.',
): BudgetRequest {
  const body: Record<string, unknown> = { model: 'gpt-4o', messages: [{ role: 'user', content }] };
  if (maxTokens !== undefined) body.max_tokens = maxTokens;
  return { body, bodyUnreadable: false, requestBytes: Buffer.byteLength(JSON.stringify(body)) };
}

function gate(over: Partial<Parameters<typeof createBudgets>[0]> = {}): Budgets {
  return createBudgets({
    budgets: [budget({})],
    spend: () => [],
    priceBook,
    now: () => NOW,
    log: SILENT_LOGGER,
    ...over,
  });
}

describe('block budgets reserve the most a request can cost', () => {
  it('100 concurrent requests at ~$0.015 against $0.05/day: admitted ≤ floor(limit / bound), spent ≤ limit', async () => {
    const b = gate();
    const request = chat(1500);
    const limit = 50_000_000n; // $0.05
    // Every check runs before any request settles: the worst case for a gate.
    const admitted: Array<{ s: RequestStart; settle: (real: number) => void }> = [];
    let blocked = 0;
    let bound = 0n;
    for (let i = 0; i < 100; i++) {
      const s = start();
      const before = b.status()[0]!.reserved_nanos;
      const d = b.check(s, request);
      if (d.blocked) {
        blocked += 1;
        expect(d).toMatchObject({ budget: 'tight', reason: 'exhausted' });
        continue;
      }
      bound = b.status()[0]!.reserved_nanos - before;
      const reservation = d.reservation!;
      admitted.push({
        s,
        settle: (real) =>
          reservation.settle(
            makeRecord({
              id: s.id,
              ts_start: NOW,
              upstream: 'default',
              app: 'bot',
              request_model: 'gpt-4o',
              cost_nanos: real,
              currency: 'USD',
            }),
          ),
      });
    }
    // The bound: ~120 body bytes as input at $2.5/1M plus 1500 output at $10/1M ≈ $0.0153.
    expect(bound).toBeGreaterThan(15_000_000n);
    expect(bound).toBeLessThan(16_000_000n);
    expect(admitted.length).toBeGreaterThan(0);
    expect(BigInt(admitted.length)).toBeLessThanOrEqual(limit / bound);
    expect(blocked).toBe(100 - admitted.length);

    // The upstream answers in any order; each real cost (~$0.015) is within its bound.
    await Promise.all(
      admitted.map(
        (a, i) =>
          new Promise<void>((resolve) =>
            setTimeout(
              () => {
                a.settle(14_950_000 + (i % 3) * 10_000);
                resolve();
              },
              1 + (i % 5),
            ),
          ),
      ),
    );
    const s = b.status()[0]!;
    expect(s.reserved_nanos).toBe(0n);
    expect(s.spent_nanos).toBeLessThanOrEqual(limit);
    expect(s.spent_nanos).toBeGreaterThan(0n);
  });

  it('a request whose bound alone exceeds what is left is blocked, with a message saying so', () => {
    const b = gate({ spend: () => [{ currency: 'USD', cost_nanos: 40_000_000n }] }); // $0.04 of $0.05 spent
    // 1500 output tokens ≈ $0.0153 > $0.01 left.
    const d = b.check(start(), chat(1500));
    expect(d.blocked).toBe(true);
    if (!d.blocked) return;
    expect(d.reason).toBe('exhausted');
    expect(d.message).toContain('tokenmeter budget "tight"');
    expect(d.message).toMatch(/could cost up to 0\.015\d* USD/);
    expect(d.message).toContain('0.01 USD left');
    expect(d.message).toMatch(/max_tokens/);
    // A smaller max_tokens fits: 500 output ≈ $0.0053.
    expect(b.check(start(), chat(500)).blocked).toBe(false);
  });

  it('without max_tokens the model maximum is reserved (16384 output tokens of gpt-4o ≈ $0.16 > $0.05)', () => {
    const d = gate().check(start(), chat(undefined));
    expect(d).toMatchObject({ blocked: true, reason: 'exhausted' });
  });

  it('a settled reservation frees room for the next request', () => {
    const b = gate();
    const first = start();
    const d1 = b.check(first, chat(1500));
    const d2 = b.check(start(), chat(1500));
    const d3 = b.check(start(), chat(1500));
    const d4 = b.check(start(), chat(1500));
    expect([d1.blocked, d2.blocked, d3.blocked, d4.blocked]).toEqual([false, false, false, true]);
    if (d1.blocked) throw new Error('unreachable');
    d1.reservation!.settle(
      makeRecord({
        id: first.id,
        ts_start: NOW,
        app: 'bot',
        upstream: 'default',
        request_model: 'gpt-4o',
        cost_nanos: 1_000_000,
        currency: 'USD',
      }),
    );
    expect(b.check(start(), chat(1500)).blocked).toBe(false);
  });

  it('the bound is computed only when a block budget has the request in scope', () => {
    const spy = vi.spyOn(priceBook, 'maxCost');
    try {
      const b = gate({
        budgets: [budget({ scope: { app: 'bot' } }), budget({ name: 'watch', action: 'alert' })],
      });
      b.check(start({ app: 'web' }), chat(1500)); // only the alert budget: no bound
      expect(spy).not.toHaveBeenCalled();
      b.check(start({ app: 'bot' }), chat(1500));
      expect(spy).toHaveBeenCalledTimes(1);
    } finally {
      spy.mockRestore();
    }
  });

  it('an unpriced model reserves nothing (its spend is never counted) and is logged once', () => {
    const lines: string[] = [];
    const b = gate({ log: createLogger('debug', (l) => lines.push(l)) });
    for (let i = 0; i < 3; i++) {
      const d = b.check(start({ request_model: 'mystery-model' }), chat(1500));
      expect(d.blocked).toBe(false);
    }
    expect(b.status()[0]!.reserved_nanos).toBe(0n);
    const logged = lines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.budget === 'tight');
    expect(logged).toHaveLength(1);
    expect(logged[0]!.msg).toMatch(/unpriced/);
  });

  it('a bound in another currency is converted with fx:, and so is the settled cost', () => {
    const b = gate({
      budgets: [budget({ currency: 'USD', limit: '1' })],
      fx: [{ from: 'CNY', to: 'USD', rate: '0.14' }],
    });
    const s = start({ request_model: 'deepseek-chat' });
    const body = { model: 'deepseek-chat', messages: [], max_tokens: 1000 };
    const d = b.check(s, { body, bodyUnreadable: false, requestBytes: JSON.stringify(body).length });
    if (d.blocked) throw new Error('unexpected block');
    // (≈50 input × ¥2 + 1000 × ¥8) / 1M ≈ ¥0.0081 → ≈ $0.00113
    const reserved = b.status()[0]!.reserved_nanos;
    expect(reserved).toBeGreaterThan(1_120_000n);
    expect(reserved).toBeLessThan(1_140_000n);
    d.reservation!.settle(
      makeRecord({
        id: s.id,
        ts_start: NOW,
        app: 'bot',
        upstream: 'default',
        request_model: 'deepseek-chat',
        cost_nanos: 7_000_000,
        currency: 'CNY',
      }),
    );
    expect(b.status()[0]).toMatchObject({ reserved_nanos: 0n, spent_nanos: 980_000n }); // ¥0.007 × 0.14
  });

  it('a bound in another currency without an fx: rate blocks, saying what to configure', () => {
    const d = gate({ budgets: [budget({ limit: '100' })] }).check(
      start({ request_model: 'deepseek-chat' }),
      chat(10),
    );
    expect(d).toMatchObject({ blocked: true, reason: 'exhausted' });
    if (d.blocked) expect(d.message).toMatch(/priced in CNY.*fx:/);
  });

  it('a reservation from the previous period settles without corrupting the new one', () => {
    let t = Date.parse('2026-11-23T23:59:59Z');
    const b = gate({ now: () => t, budgets: [budget({ limit: '1' })] });
    const s = start({ ts_start: t });
    const d = b.check(s, chat(1500));
    if (d.blocked) throw new Error('unexpected block');
    t += 2000; // next day
    expect(b.status()[0]!.reserved_nanos).toBe(0n);
    const s2 = start({ ts_start: t });
    const d2 = b.check(s2, chat(1500));
    expect(d2.blocked).toBe(false);
    const inFlight = b.status()[0]!.reserved_nanos;
    d.reservation!.settle(
      makeRecord({
        id: s.id,
        ts_start: s.ts_start,
        app: 'bot',
        upstream: 'default',
        request_model: 'gpt-4o',
        cost_nanos: 15_000_000,
        currency: 'USD',
      }),
    );
    expect(b.status()[0]).toMatchObject({ reserved_nanos: inFlight, spent_nanos: 0n });
  });
});

describe('an unreadable body never bypasses a block budget', () => {
  const unreadable: BudgetRequest = { bodyUnreadable: true, requestBytes: 33 * 1024 * 1024 };

  it('is refused as unmeterable, naming the budget, the cap and what to do', () => {
    const b = gate({ maxRequestBodyBytes: 32 * 1024 * 1024 });
    const d = b.check(start({ request_model: null }), unreadable);
    expect(d).toMatchObject({ blocked: true, budget: 'tight', reason: 'unmeterable' });
    if (!d.blocked) return;
    expect(d.message).toContain('budget "tight"');
    expect(d.message).toContain('limits.max_request_body');
    expect(d.message).toContain('32 MiB');
    expect(b.status()[0]!.reserved_nanos).toBe(0n);
  });

  it('a model-scoped block budget treats an unknown model as in scope', () => {
    const b = gate({ budgets: [budget({ scope: { model: 'gpt-*' } })] });
    expect(b.check(start({ request_model: null }), unreadable)).toMatchObject({
      blocked: true,
      reason: 'unmeterable',
    });
    // A readable request for another model is out of scope.
    expect(b.check(start({ request_model: 'claude-x' }), chat(10))).toEqual({ blocked: false });
  });

  it('only alert budgets in scope: admitted, and its spend still reaches them', () => {
    const b = gate({ budgets: [budget({ name: 'watch', action: 'alert' })] });
    const s = start({ request_model: null });
    const d = b.check(s, unreadable);
    if (d.blocked) throw new Error('alert budgets never block');
    d.reservation!.settle(
      makeRecord({
        id: s.id,
        ts_start: NOW,
        app: 'bot',
        upstream: 'default',
        request_model: null,
        cost_nanos: 2_000_000,
        currency: 'USD',
      }),
    );
    expect(b.status()[0]!.spent_nanos).toBe(2_000_000n);
  });
});

describe('fail closed: a block budget whose period spend cannot be read does not start', () => {
  const broken = () => {
    throw new Error('SQLITE_CORRUPT: database disk image is malformed');
  };

  it('createBudgets throws a TokenmeterError naming the budget, the DB error and what to do', () => {
    let error: unknown;
    try {
      gate({ spend: broken });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(TokenmeterError);
    const e = error as TokenmeterError;
    expect(e.code).toBe('DB_ERROR');
    expect(e.message).toContain('budget "tight"');
    expect(e.message).toContain('SQLITE_CORRUPT');
    expect(e.message).toContain('action: alert');
    expect(e.message).not.toContain('\n');
  });

  it('an alert budget starts from zero with an error log', () => {
    const lines: string[] = [];
    const b = gate({
      budgets: [budget({ action: 'alert' })],
      spend: broken,
      log: createLogger('debug', (l) => lines.push(l)),
    });
    expect(b.status()[0]!.spent_nanos).toBe(0n);
    const errors = lines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.level === 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ budget: 'tight' });
  });
});

describe('the old estimate is gone', () => {
  it('a fresh block budget no longer admits 100 requests at 1% of the limit each', () => {
    const b = gate({ budgets: [budget({ limit: '0.05' })] });
    let n = 0;
    for (let i = 0; i < 100; i++) if (!b.check(start(), chat(1500)).blocked) n++;
    expect(n).toBeLessThanOrEqual(3);
  });
});
