import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createBudgets, globToRegExp, type SpendFilter } from '../../src/budgets/index.js';
import { BudgetConfig } from '../../src/config/schema.js';
import { createLogger, SILENT_LOGGER } from '../../src/log.js';
import type { RequestRecord } from '../../src/record.js';
import { openAuditLog } from '../../src/sinks/audit/index.js';
import { queryRecentCosts, querySpend } from '../../src/sinks/audit/queries.js';
import { createMetricsSink } from '../../src/sinks/metrics.js';
import { NOOP_HEALTH } from '../../src/sinks/types.js';
import { parseExposition, valueOf } from '../metrics/exposition.js';
import { makeRecord, makeStart } from '../metrics/records.js';

const NOW = Date.parse('2026-11-23T10:00:00Z'); // Monday
const DAY_START = Date.parse('2026-11-23T00:00:00Z');
const CNY = 1_000_000_000; // nanos per yuan

function budget(raw: Record<string, unknown>): BudgetConfig {
  return BudgetConfig.parse({ name: 'team', period: 'day', limit: 1, currency: 'CNY', ...raw });
}

/** A clock the test moves by hand. */
function clock(start = NOW) {
  let t = start;
  return { now: () => t, set: (ms: number) => void (t = ms), advance: (ms: number) => void (t += ms) };
}

function cost(nanos: number, over: Partial<RequestRecord> = {}): RequestRecord {
  return makeRecord({ ts_start: NOW, cost_nanos: nanos, currency: 'CNY', ...over });
}

describe('budgets: period-to-date spend', () => {
  it('starts from the audit log sum for the current period and scope, then adds live records', () => {
    const calls: SpendFilter[] = [];
    const b = createBudgets({
      budgets: [
        budget({ name: 'chat-day', scope: { app: 'chatbot', model: 'deepseek-*', upstream: 'cailag' } }),
      ],
      spend: (f) => {
        calls.push(f);
        return [
          { currency: 'CNY', cost_nanos: 250_000_000n },
          { currency: 'USD', cost_nanos: 999_000_000n }, // other currency: not added
        ];
      },
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    expect(calls).toEqual([
      { app: 'chatbot', model: 'deepseek-*', upstream: 'cailag', fromMs: DAY_START, toMs: NOW },
    ]);
    expect(b.status()[0]!.spent_nanos).toBe(250_000_000n);

    const inScope = { app: 'chatbot', upstream: 'cailag', request_model: 'deepseek-chat' };
    b.write(cost(100_000_000, inScope));
    b.write(cost(1, { ...inScope, request_model: 'gpt-4o' })); // model glob does not match
    b.write(cost(1, { ...inScope, app: 'batch' })); // other app
    b.write(cost(1, { ...inScope, upstream: 'dieyu' })); // other upstream
    b.write(cost(1, { ...inScope, currency: 'USD' })); // other currency
    b.write(cost(1, { ...inScope, ts_start: DAY_START - 1 })); // yesterday
    b.write(
      makeRecord({ ...inScope, ts_start: NOW, cost_nanos: null, currency: null, cost_source: 'unpriced' }),
    );
    const s = b.status()[0]!;
    expect(s.spent_nanos).toBe(350_000_000n);
    expect(s.limit_nanos).toBe(1_000_000_000n);
    expect(s.ratio).toBeCloseTo(0.35, 12);
    expect(s).toMatchObject({
      name: 'chat-day',
      period: 'day',
      timezone: 'UTC',
      currency: 'CNY',
      period_start: DAY_START,
      period_end: DAY_START + 86_400_000,
      period_start_date: '2026-11-23',
      warnings_crossed: [],
      exceeded: false,
    });
    // 10 h into a 24 h day: 0.35 × 24/10 = 0.84.
    expect(s.projected_nanos).toBe(840_000_000n);
  });

  it('counts a record once even when both write() and settle() see it, in either order', () => {
    const b = createBudgets({
      budgets: [budget({ action: 'block' })],
      spend: () => [],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    for (const order of ['write-first', 'settle-first'] as const) {
      const start = makeStart({ ts_start: NOW });
      const d = b.check(start);
      if (d.blocked) throw new Error('not expected to block');
      const rec = cost(10_000_000, { id: start.id });
      if (order === 'write-first') {
        b.write(rec);
        d.reservation!.settle(rec);
      } else {
        d.reservation!.settle(rec);
        b.write(rec);
      }
    }
    const s = b.status()[0]!;
    expect(s.spent_nanos).toBe(20_000_000n);
    expect(s.reserved_nanos).toBe(0n);
  });

  it('survives a restart: spend is recomputed from a real SQLite audit log', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tokenmeter-budgets-'));
    try {
      const path = join(dir, 'audit.db');
      const opts = {
        path,
        queueSize: 100,
        batchSize: 10,
        flushIntervalMs: 10,
        retentionDays: 3650,
        captureBodies: false,
        captureMaxBytes: 0,
        redactPatterns: [],
        health: NOOP_HEALTH,
        log: SILENT_LOGGER,
        now: () => NOW,
      };
      const first = openAuditLog(opts);
      const config = [budget({ name: 'gpt', scope: { model: 'gpt-*' }, limit: '2.5' })];
      const live = createBudgets({
        budgets: config,
        spend: (f) => querySpend(first.db, f),
        now: () => NOW,
        log: SILENT_LOGGER,
      });
      const records = [
        cost(300_000_000, { request_model: 'gpt-4o' }),
        cost(200_000_000, { request_model: 'gpt-4o-mini' }),
        cost(900_000_000, { request_model: 'deepseek-chat' }), // out of scope
        cost(400_000_000, { request_model: 'gpt-4o', ts_start: DAY_START - 1000 }), // yesterday
      ];
      for (const r of records) {
        first.write(r);
        live.write(r);
      }
      expect(live.status()[0]!.spent_nanos).toBe(500_000_000n);
      await first.close();

      const second = openAuditLog(opts);
      try {
        const restarted = createBudgets({
          budgets: config,
          spend: (f) => querySpend(second.db, f),
          recentCosts: (f, currency, n) => queryRecentCosts(second.db, f, currency, n),
          now: () => NOW + 60_000,
          log: SILENT_LOGGER,
        });
        expect(restarted.status()[0]!.spent_nanos).toBe(500_000_000n);
        // Recent in-scope costs (30-day lookback, newest first), for the reservation estimate.
        const recent = queryRecentCosts(
          second.db,
          { model: 'gpt-*', fromMs: NOW - 86_400_000, toMs: NOW + 1 },
          'CNY',
          20,
        );
        expect(recent.sort()).toEqual([200_000_000n, 300_000_000n, 400_000_000n].sort());
      } finally {
        await second.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('starts a new period from zero at the boundary in the budget time zone', () => {
    const c = clock(Date.parse('2026-11-30T15:00:00Z')); // Nov 30, 23:00 in Shanghai
    const b = createBudgets({
      budgets: [budget({ period: 'month', timezone: 'Asia/Shanghai', limit: 100 })],
      spend: () => [{ currency: 'CNY', cost_nanos: 42n * BigInt(CNY) }],
      now: c.now,
      log: SILENT_LOGGER,
    });
    expect(b.status()[0]!).toMatchObject({ spent_nanos: 42n * BigInt(CNY), period_start_date: '2026-11-01' });
    c.set(Date.parse('2026-11-30T16:00:00Z')); // December 1st, 00:00 in Shanghai
    b.write(cost(5 * CNY, { ts_start: Date.parse('2026-11-30T15:59:59Z') })); // started in November
    b.write(cost(1 * CNY, { ts_start: Date.parse('2026-11-30T16:00:00Z') }));
    const s = b.status()[0]!;
    expect(s.period_start_date).toBe('2026-12-01');
    expect(s.spent_nanos).toBe(1n * BigInt(CNY));
  });

  it('rejects an unknown time zone at startup, naming the budget', () => {
    expect(() =>
      createBudgets({
        budgets: [budget({ timezone: 'Asia/Atlantis' })],
        spend: () => [],
        log: SILENT_LOGGER,
      }),
    ).toThrow(/budget "team": unknown time zone "Asia\/Atlantis"/);
  });
});

describe('budgets: warn thresholds and gauges', () => {
  it('logs each warn_at threshold once per period, and publishes limit/spent gauges', async () => {
    const lines: string[] = [];
    const log = createLogger('debug', (l) => lines.push(l));
    const metrics = createMetricsSink({ maxModels: 10, maxApps: 10, apps: [] });
    const c = clock();
    const b = createBudgets({
      budgets: [budget({ name: 'ops', warn_at: [0.8, 0.5], limit: 10 })],
      spend: () => [{ currency: 'CNY', cost_nanos: 4n * BigInt(CNY) }],
      metrics,
      now: c.now,
      log,
    });
    const warnings = () =>
      lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.budget === 'ops');
    expect(warnings()).toEqual([]);

    b.write(cost(1.5 * CNY)); // 5.5 / 10 → crosses 0.5
    b.write(cost(0.1 * CNY)); // still above 0.5: no second line
    expect(warnings().map((w) => [w.msg, w.threshold])).toEqual([['budget warning threshold reached', 0.5]]);
    b.write(cost(3 * CNY)); // 8.6 → crosses 0.8
    b.write(cost(2 * CNY)); // 10.6 → exceeded
    b.write(cost(1 * CNY));
    expect(warnings().map((w) => [w.msg, w.threshold ?? null])).toEqual([
      ['budget warning threshold reached', 0.5],
      ['budget warning threshold reached', 0.8],
      ['budget exceeded', null],
    ]);
    expect(warnings()[0]).toMatchObject({
      spent: '5.50 CNY',
      limit: '10.00 CNY',
      period_start: '2026-11-23',
    });
    expect(b.status()[0]!.warnings_crossed).toEqual([0.5, 0.8]);
    expect(b.status()[0]!.exceeded).toBe(true);

    let e = parseExposition((await metrics.render()).body);
    expect(valueOf(e, 'tokenmeter_budget_limit', { budget: 'ops', currency: 'CNY' })).toBe(10);
    expect(valueOf(e, 'tokenmeter_budget_spent', { budget: 'ops', currency: 'CNY' })).toBe(11.6);

    // Next day: a new period, the thresholds fire again once crossed again.
    c.advance(86_400_000);
    b.write(cost(6 * CNY, { ts_start: c.now() }));
    expect(
      warnings()
        .slice(3)
        .map((w) => [w.threshold, w.period_start]),
    ).toEqual([[0.5, '2026-11-24']]);
    e = parseExposition((await metrics.render()).body);
    expect(valueOf(e, 'tokenmeter_budget_spent', { budget: 'ops', currency: 'CNY' })).toBe(6);
  });
});

describe('budgets: action block with reserve-then-settle', () => {
  it('blocks a request in scope once spent, with a message naming the budget; out-of-scope requests pass', () => {
    const b = createBudgets({
      budgets: [budget({ name: 'team-a', action: 'block', scope: { app: 'team-a' }, limit: '1.00' })],
      spend: () => [{ currency: 'CNY', cost_nanos: 1_000_000_000n }],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    const d = b.check(makeStart({ app: 'team-a' }));
    expect(d).toEqual({
      blocked: true,
      budget: 'team-a',
      message:
        'tokenmeter budget "team-a" is used up: 1.00 CNY spent of 1.00 CNY this day (since 2026-11-23, UTC). ' +
        'Requests in its scope are blocked until 2026-11-24T00:00:00.000Z; raise the limit in the budgets: config to continue.',
    });
    expect(b.check(makeStart({ app: 'team-b' }))).toEqual({ blocked: false });
  });

  it('alert budgets never block', () => {
    const b = createBudgets({
      budgets: [budget({ action: 'alert' })],
      spend: () => [{ currency: 'CNY', cost_nanos: 5_000_000_000n }],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    expect(b.check(makeStart()).blocked).toBe(false);
  });

  it('an unpriced record releases its reservation and adds nothing', () => {
    const b = createBudgets({
      budgets: [budget({ action: 'block' })],
      spend: () => [],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    const start = makeStart();
    const d = b.check(start);
    if (d.blocked) throw new Error('unexpected block');
    // Before any cost was seen the estimate is 1% of the limit.
    expect(b.status()[0]!.reserved_nanos).toBe(10_000_000n);
    d.reservation!.settle(
      makeRecord({ id: start.id, ts_start: NOW, cost_nanos: null, currency: null, cost_source: 'unpriced' }),
    );
    expect(b.status()[0]).toMatchObject({ reserved_nanos: 0n, spent_nanos: 0n });
  });

  it('50 concurrent requests against a nearly spent budget overshoot it by at most one estimate', async () => {
    const limit = 1_000_000_000n; // ¥1.00
    const b = createBudgets({
      budgets: [budget({ name: 'tight', action: 'block', limit: '1.00' })],
      spend: () => [{ currency: 'CNY', cost_nanos: 980_000_000n }],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    // Two finished requests teach the estimate: the largest recent cost, ¥0.004.
    b.write(cost(4_000_000));
    b.write(cost(3_000_000));
    expect(b.status()[0]!.spent_nanos).toBe(987_000_000n);
    const estimate = 4_000_000n;

    let admitted = 0;
    let blocked = 0;
    let maxCommitted = 0n;
    const requests = Array.from({ length: 50 }, async (_, i) => {
      const start = makeStart({ ts_start: NOW });
      const d = b.check(start); // all 50 checks run before any of them settles
      if (d.blocked) {
        blocked += 1;
        expect(d.budget).toBe('tight');
        return;
      }
      admitted += 1;
      const s = b.status()[0]!;
      if (s.spent_nanos + s.reserved_nanos > maxCommitted) maxCommitted = s.spent_nanos + s.reserved_nanos;
      await new Promise((r) => setTimeout(r, 1 + (i % 7)));
      // Real costs vary but stay within the estimate (the estimate is the largest recent cost).
      const real = Number(estimate) - (i % 3) * 1_000_000;
      const rec = cost(real, { id: start.id });
      b.write(rec);
      d.reservation!.settle(rec);
    });
    await Promise.all(requests);

    const final = b.status()[0]!;
    // 0.987 → admitted at 0.987, 0.991, 0.995, 0.999; the 5th would start at 1.003 ≥ limit.
    expect(admitted).toBe(4);
    expect(blocked).toBe(46);
    expect(final.reserved_nanos).toBe(0n);
    expect(maxCommitted).toBeLessThanOrEqual(limit + estimate);
    expect(final.spent_nanos).toBeLessThanOrEqual(limit + estimate);
    expect(final.spent_nanos).toBeGreaterThan(limit - estimate); // the budget was actually used
    // And from now on every request in scope is blocked.
    expect(b.check(makeStart()).blocked).toBe(true);
  });

  it('a settled reservation frees room for the next request', () => {
    const b = createBudgets({
      budgets: [budget({ action: 'block', limit: '1.00' })],
      spend: () => [{ currency: 'CNY', cost_nanos: 985_000_000n }],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    // Default estimate 1% = ¥0.01: admitted at 0.985 and 0.995; the third would start at 1.005.
    const first = makeStart();
    const d1 = b.check(first);
    const d2 = b.check(makeStart());
    const d3 = b.check(makeStart());
    expect([d1.blocked, d2.blocked, d3.blocked]).toEqual([false, false, true]);
    // The first one turned out cheap: settling it frees its reservation.
    if (d1.blocked) throw new Error('unreachable');
    d1.reservation!.settle(cost(1_000_000, { id: first.id }));
    expect(b.check(makeStart()).blocked).toBe(false);
  });
});

describe('budget scope globs (SQLite GLOB semantics)', () => {
  it('matches like the audit log query', () => {
    expect(globToRegExp('gpt-*').test('gpt-4o')).toBe(true);
    expect(globToRegExp('gpt-*').test('GPT-4o')).toBe(false); // case-sensitive, as GLOB
    expect(globToRegExp('gpt-?o').test('gpt-4o')).toBe(true);
    expect(globToRegExp('claude-[0-9]*').test('claude-3-opus')).toBe(true);
    expect(globToRegExp('claude-[^0-9]*').test('claude-3-opus')).toBe(false);
    expect(globToRegExp('a.b+(c)').test('a.b+(c)')).toBe(true);
    expect(globToRegExp('a.b').test('axb')).toBe(false);
  });
});

describe('budgets: the reservation estimate survives a restart', () => {
  it('seeds the estimate from recent costs in the audit log, not the 1%-of-limit guess', () => {
    const admitted = (recentCosts?: () => bigint[]) => {
      const b = createBudgets({
        budgets: [budget({ action: 'block' })],
        spend: () => [{ currency: 'CNY', cost_nanos: 900_000_000n }], // 0.90 of 1.00 spent
        recentCosts,
        now: () => NOW,
        log: SILENT_LOGGER,
      });
      let n = 0;
      for (let i = 0; i < 20; i++) if (!b.check(makeStart({ ts_start: NOW })).blocked) n++;
      return n;
    };
    // Typical request costs 0.05: 0.90 → 0.95 → 1.00, then blocked.
    expect(admitted(() => [50_000_000n, 20_000_000n])).toBe(2);
    // Without history the estimate is 1% of the limit: ten requests get in before the block.
    expect(admitted()).toBe(10);
  });
});
