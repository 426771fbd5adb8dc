import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  createBudgets,
  globToRegExp,
  type BudgetRequest,
  type Budgets,
  type SpendFilter,
} from '../../src/budgets/index.js';
import { BudgetConfig } from '../../src/config/schema.js';
import { createLogger, SILENT_LOGGER } from '../../src/log.js';
import type { RequestRecord } from '../../src/record.js';
import type { RequestStart } from '../../src/sinks/types.js';
import { openAuditLog } from '../../src/sinks/audit/index.js';
import { querySpend } from '../../src/sinks/audit/queries.js';
import { NOOP_HEALTH } from '../../src/sinks/types.js';
import { makeRecord, makeStart } from '../metrics/records.js';

const NOW = Date.parse('2026-11-23T10:00:00Z'); // Monday
const DAY_START = Date.parse('2026-11-23T00:00:00Z');
const CNY = 1_000_000_000; // nanos per yuan

/** A small readable chat body; these tests run without a price book, so no bound is computed. */
const REQ: BudgetRequest = {
  body: { model: 'deepseek-chat', messages: [] },
  bodyUnreadable: false,
  requestBytes: 40,
};

function budget(raw: Record<string, unknown>): BudgetConfig {
  return BudgetConfig.parse({ name: 'team', period: 'day', limit: 1, currency: 'CNY', ...raw });
}

/** A clock the test moves by hand. */
function clock(start = NOW) {
  let t = start;
  return { now: () => t, set: (ms: number) => void (t = ms), advance: (ms: number) => void (t += ms) };
}

/** One request through the gate: check at start, settle with its record. Returns whether it was admitted. */
function run(
  b: Budgets,
  start: Partial<RequestStart>,
  nanos: number | null,
  over: Partial<RequestRecord> = {},
) {
  const s = makeStart({ ts_start: NOW, ...start });
  const d = b.check(s, REQ);
  if (d.blocked) return false;
  const rec = makeRecord({
    id: s.id,
    ts_start: s.ts_start,
    app: s.app,
    upstream: s.upstream,
    request_model: s.request_model,
    cost_nanos: nanos,
    currency: nanos === null ? null : 'CNY',
    cost_source: nanos === null ? 'unpriced' : 'computed',
    ...over,
  });
  d.reservation?.settle(rec);
  return true;
}

describe('budgets: period-to-date spend', () => {
  it('starts from the audit log sum for the current period and scope, then adds settled requests', () => {
    const calls: SpendFilter[] = [];
    const b = createBudgets({
      budgets: [
        budget({ name: 'chat-day', scope: { app: 'chatbot', model: 'deepseek-*', upstream: 'cailag' } }),
      ],
      spend: (f) => {
        calls.push(f);
        return [
          { currency: 'CNY', cost_nanos: 250_000_000n },
          { currency: 'USD', cost_nanos: 999_000_000n }, // other currency, no fx: not added
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
    run(b, inScope, 100_000_000);
    run(b, { ...inScope, request_model: 'gpt-4o' }, 1); // model glob does not match
    run(b, { ...inScope, app: 'batch' }, 1); // other app
    run(b, { ...inScope, upstream: 'dieyu' }, 1); // other upstream
    run(b, inScope, 1, { currency: 'USD' }); // other currency
    run(b, { ...inScope, ts_start: DAY_START - 1 }, 1); // started yesterday
    run(b, inScope, null); // unpriced: unknown, not 0
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

  it('is not a sink: no write(), no name; spend arrives only through settle()', () => {
    const b = createBudgets({ budgets: [budget({})], spend: () => [], now: () => NOW, log: SILENT_LOGGER });
    expect('write' in b).toBe(false);
    expect('name' in b).toBe(false);
  });

  it('a request in scope of an alert budget only still gets a settle handle; out of scope gets none', () => {
    const b = createBudgets({
      budgets: [budget({ name: 'a', scope: { app: 'bot' } })],
      spend: () => [],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    const outside = b.check(makeStart({ app: 'web', ts_start: NOW }), REQ);
    expect(outside).toEqual({ blocked: false });
    const inside = b.check(makeStart({ app: 'bot', ts_start: NOW }), REQ);
    expect(inside.blocked).toBe(false);
    expect(!inside.blocked && inside.reservation).toBeTruthy();
  });

  it('settling the same reservation twice counts the cost once', () => {
    const b = createBudgets({
      budgets: [budget({ action: 'block' })],
      spend: () => [],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    const start = makeStart({ ts_start: NOW });
    const d = b.check(start, REQ);
    if (d.blocked) throw new Error('not expected to block');
    const rec = makeRecord({ id: start.id, ts_start: NOW, cost_nanos: 10_000_000, currency: 'CNY' });
    d.reservation!.settle(rec);
    d.reservation!.settle(rec);
    expect(b.status()[0]).toMatchObject({ spent_nanos: 10_000_000n, reserved_nanos: 0n });
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
      const rows: Array<[Partial<RequestStart>, number]> = [
        [{ request_model: 'gpt-4o' }, 300_000_000],
        [{ request_model: 'gpt-4o-mini' }, 200_000_000],
        [{ request_model: 'deepseek-chat' }, 900_000_000], // out of scope
        [{ request_model: 'gpt-4o', ts_start: DAY_START - 1000 }, 400_000_000], // yesterday
      ];
      for (const [start, nanos] of rows) {
        const s = makeStart({ ts_start: NOW, ...start });
        const rec = makeRecord({
          id: s.id,
          ts_start: s.ts_start,
          request_model: s.request_model,
          cost_nanos: nanos,
          currency: 'CNY',
        });
        first.write(rec);
        const d = live.check(s, REQ);
        if (!d.blocked) d.reservation?.settle(rec);
      }
      expect(live.status()[0]!.spent_nanos).toBe(500_000_000n);
      await first.close();

      const second = openAuditLog(opts);
      try {
        const restarted = createBudgets({
          budgets: config,
          spend: (f) => querySpend(second.db, f),
          now: () => NOW + 60_000,
          log: SILENT_LOGGER,
        });
        expect(restarted.status()[0]!.spent_nanos).toBe(500_000_000n);
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
    // A request that started in November and finishes in December belongs to November.
    const late = makeStart({ ts_start: Date.parse('2026-11-30T15:59:59Z') });
    const d = b.check(late, REQ);
    c.set(Date.parse('2026-11-30T16:00:00Z')); // December 1st, 00:00 in Shanghai
    if (!d.blocked)
      d.reservation!.settle(
        makeRecord({ id: late.id, ts_start: late.ts_start, cost_nanos: 5 * CNY, currency: 'CNY' }),
      );
    run(b, { ts_start: Date.parse('2026-11-30T16:00:00Z') }, 1 * CNY);
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

describe('budgets: warn thresholds and the figures gauges read', () => {
  it('logs each warn_at threshold once per period; status() carries limit and spent for the gauges', () => {
    const lines: string[] = [];
    const log = createLogger('debug', (l) => lines.push(l));
    const c = clock();
    const b = createBudgets({
      budgets: [budget({ name: 'ops', warn_at: [0.8, 0.5], limit: 10 })],
      spend: () => [{ currency: 'CNY', cost_nanos: 4n * BigInt(CNY) }],
      now: c.now,
      log,
    });
    const warnings = () =>
      lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.budget === 'ops');
    expect(warnings()).toEqual([]);

    run(b, {}, 1.5 * CNY); // 5.5 / 10 → crosses 0.5
    run(b, {}, 0.1 * CNY); // still above 0.5: no second line
    expect(warnings().map((w) => [w.msg, w.threshold])).toEqual([['budget warning threshold reached', 0.5]]);
    run(b, {}, 3 * CNY); // 8.6 → crosses 0.8
    run(b, {}, 2 * CNY); // 10.6 → exceeded
    run(b, {}, 1 * CNY);
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
    expect(b.status()[0]).toMatchObject({
      limit_nanos: 10n * BigInt(CNY),
      spent_nanos: 11_600_000_000n,
      warnings_crossed: [0.5, 0.8],
      exceeded: true,
    });

    // Next day: a new period, the thresholds fire again once crossed again.
    c.advance(86_400_000);
    run(b, { ts_start: c.now() }, 6 * CNY);
    expect(
      warnings()
        .slice(3)
        .map((w) => [w.threshold, w.period_start]),
    ).toEqual([[0.5, '2026-11-24']]);
    expect(b.status()[0]!.spent_nanos).toBe(6n * BigInt(CNY));
  });
});

describe('budgets: action block', () => {
  it('blocks a request in scope once spent, with a message naming the budget; out-of-scope requests pass', () => {
    const b = createBudgets({
      budgets: [budget({ name: 'team-a', action: 'block', scope: { app: 'team-a' }, limit: '1.00' })],
      spend: () => [{ currency: 'CNY', cost_nanos: 1_000_000_000n }],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    const d = b.check(makeStart({ app: 'team-a', ts_start: NOW }), REQ);
    expect(d).toEqual({
      blocked: true,
      budget: 'team-a',
      reason: 'exhausted',
      message:
        'tokenmeter budget "team-a" is used up: 1.00 CNY spent of 1.00 CNY this day (since 2026-11-23, UTC). ' +
        'Requests in its scope are blocked until 2026-11-24T00:00:00.000Z; raise the limit in the budgets: config to continue.',
    });
    expect(b.check(makeStart({ app: 'team-b', ts_start: NOW }), REQ)).toEqual({ blocked: false });
  });

  it('alert budgets never block', () => {
    const b = createBudgets({
      budgets: [budget({ action: 'alert' })],
      spend: () => [{ currency: 'CNY', cost_nanos: 5_000_000_000n }],
      now: () => NOW,
      log: SILENT_LOGGER,
    });
    expect(b.check(makeStart({ ts_start: NOW }), REQ).blocked).toBe(false);
    expect(
      b.check(makeStart({ ts_start: NOW }), { bodyUnreadable: true, requestBytes: 40 << 20 }).blocked,
    ).toBe(false);
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
