/**
 * Shared block budgets (issue 14, docs/fleet.md "Shared budgets") against a real PostgreSQL: three
 * hosts' gates share one fleet ledger; together they never overshoot; settle replaces the bound
 * with the real cost; a crashed host's reservations expire; an unreachable Postgres applies each
 * budget's on_unreachable, and reservations work again once it is back.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBudgets, type BudgetRequest, type Budgets } from '../../src/budgets/index.js';
import { BudgetConfig } from '../../src/config/schema.js';
import { loadSettings } from '../../src/config/load.js';
import type { SharedHold } from '../../src/budgets/types.js';
import { openPgBudgetLedger, type PgBudgetLedger } from '../../src/fleet/budget-ledger.js';
import { SILENT_LOGGER } from '../../src/log.js';
import type { RequestStart } from '../../src/sinks/types.js';
import { tempDir } from '../audit/records.js';
import { makeRecord, makeStart } from '../metrics/records.js';
import { book, table } from '../pricing/helpers.js';
import { fleetSettings, waitFor } from './fixtures.js';
import { skipWithoutPostgres, startPostgres, type PgServer } from './postgres.js';

const NOW = Date.parse('2026-11-23T10:00:00Z');
const PRICES = table(
  'currency: USD\nunit: 1M\nprices:\n  - {model: gpt-4o, input: 2.5, output: 10, max_output_tokens: 16384}\n',
);
const priceBook = book([PRICES], {
  upstreams: [{ name: 'default', url: new URL('https://gw.example/v1'), trustReportedCost: false }],
});

function budget(name: string, raw: Record<string, unknown> = {}): BudgetConfig {
  return BudgetConfig.parse({ name, period: 'day', limit: '0.05', currency: 'USD', action: 'block', ...raw });
}

const start = (): RequestStart =>
  makeStart({ ts_start: NOW, upstream: 'default', request_model: 'gpt-4o', app: 'bot' });

/** ≈ $0.0152 at most (1500 output tokens at $10/1M plus the prompt's bytes at $2.5/1M). */
function chat(maxTokens = 1500): BudgetRequest {
  const body = { model: 'gpt-4o', max_tokens: maxTokens, messages: [{ role: 'user', content: 'Hi there.' }] };
  return { body, bodyUnreadable: false, requestBytes: Buffer.byteLength(JSON.stringify(body)) };
}

function recorder() {
  const m = { fallbacks: new Map<string, number>(), settleFailures: 0 };
  return {
    m,
    metrics: {
      fallback: (b: string) => void m.fallbacks.set(b, (m.fallbacks.get(b) ?? 0) + 1),
      settleFailure: () => void m.settleFailures++,
    },
  };
}

describe('on_unreachable config', () => {
  it('is accepted on a block budget and refused with file:line:field on an alert budget', () => {
    expect(budget('a', { on_unreachable: 'block' }).on_unreachable).toBe('block');
    const t = tempDir();
    try {
      const file = join(t.dir, 'tokenmeter.yaml');
      writeFileSync(
        file,
        'budgets:\n  - name: a\n    period: day\n    limit: "1"\n    currency: USD\n    on_unreachable: local\n',
      );
      expect(() => loadSettings({ config: file }, {}, t.dir)).toThrow(
        /tokenmeter\.yaml:6:\d+: budgets\[0\]\.on_unreachable: on_unreachable applies only to action: block/,
      );
    } finally {
      t.cleanup();
    }
  });
});

describe.skipIf(skipWithoutPostgres())('shared block budgets (real Postgres)', () => {
  let server: PgServer;
  const open: PgBudgetLedger[] = [];

  beforeAll(async () => {
    server = await startPostgres();
  }, 60_000);

  afterAll(async () => {
    await Promise.all(open.map((l) => l.close()));
    await server?.stop();
  });

  function host(
    name: string,
    configs: BudgetConfig[],
    over: { ttlMs?: number; timeoutMs?: number } = {},
  ): { gate: Budgets; ledger: PgBudgetLedger; m: ReturnType<typeof recorder>['m'] } {
    const r = recorder();
    const fleet = { ...fleetSettings(server.url), host: name };
    fleet.reservationTtlMs = over.ttlMs ?? 600_000;
    fleet.budgetTimeoutMs = over.timeoutMs ?? 2_000;
    const ledger = openPgBudgetLedger({ fleet, metrics: r.metrics, log: SILENT_LOGGER, settleBackoffMs: 20 });
    open.push(ledger);
    const gate = createBudgets({
      budgets: configs,
      spend: () => [],
      priceBook,
      now: () => NOW,
      shared: ledger,
      log: SILENT_LOGGER,
    });
    return { gate, ledger, m: r.m };
  }

  /** Checks a request and waits for the fleet's verdict: the reservation to settle, or null when blocked. */
  async function admit(gate: Budgets, request = chat()) {
    const s = start();
    const d = gate.check(s, request);
    if (d.blocked) return { blocked: d, s };
    const verdict = d.pending ? await d.pending : undefined;
    if (verdict) {
      d.reservation?.settle(makeRecord({ ...s, cost_nanos: null, currency: null }));
      return { blocked: verdict, s };
    }
    return { reservation: d.reservation!, s };
  }

  async function books(budgetName: string) {
    const admin = await server.connect();
    try {
      return await booksOf(admin, budgetName);
    } finally {
      await admin.end();
    }
  }

  async function booksOf(admin: pg.Client, budgetName: string) {
    const spent = await admin.query<{ spent: string }>(
      'SELECT coalesce(sum(spent_nanos), 0)::text AS spent FROM budget_ledger WHERE budget = $1',
      [budgetName],
    );
    const held = await admin.query<{ held: string; n: string }>(
      `SELECT coalesce(sum(amount_nanos), 0)::text AS held, count(*)::text AS n FROM budget_reservations
       WHERE budget = $1 AND expires_at > now()`,
      [budgetName],
    );
    return {
      spent: BigInt(spent.rows[0]!.spent),
      held: BigInt(held.rows[0]!.held),
      n: Number(held.rows[0]!.n),
    };
  }

  it('60+ concurrent requests across three hosts never push spent past the limit; settle replaces bounds', async () => {
    const hosts = ['web-1', 'web-2', 'web-3'].map((h) => host(h, [budget('shared-day')]));
    const limit = 50_000_000n;
    let admittedTotal = 0;
    // Waves of 66 concurrent requests (22 per host); every admitted one settles at 60 % of its bound.
    for (let wave = 0; wave < 4; wave++) {
      const results = await Promise.all(Array.from({ length: 66 }, (_v, i) => admit(hosts[i % 3]!.gate)));
      const admitted = results.filter((r) => r.reservation);
      // While they are all in flight: fleet spent + held never exceeds the limit.
      const during = await books('shared-day');
      expect(during.spent + during.held).toBeLessThanOrEqual(limit);
      expect(during.n).toBe(admitted.length);
      // Each host alone would admit three of these; together they admit at most three minus what is spent.
      expect(admitted.length).toBeLessThanOrEqual(3);
      for (const r of results.filter((x) => x.blocked)) {
        expect(r.blocked).toMatchObject({ budget: 'shared-day', reason: 'exhausted' });
        // Refused by the host's own view or by the fleet's books: both name the budget.
        expect(r.blocked!.message).toMatch(/budget "shared-day"/);
      }
      admittedTotal += admitted.length;
      for (const r of admitted)
        r.reservation!.settle(makeRecord({ ...r.s, cost_nanos: 9_000_000, currency: 'USD' }));
      await waitFor(async () => (await books('shared-day')).n === 0);
      const after = await books('shared-day');
      expect(after.spent).toBe(9_000_000n * BigInt(admittedTotal));
      expect(after.spent).toBeLessThanOrEqual(limit);
    }
    // Bound ≈ $0.0152, real $0.009: 3 fit at first ($0.0456), then one more on $0.027 spent, then
    // none on $0.036 ($0.036 + $0.0152 > $0.05).
    expect(admittedTotal).toBe(4);
    for (const h of hosts) expect(h.m.fallbacks.size).toBe(0);
  }, 30_000);

  it('settle is idempotent: the same request settled twice (a retry after a lost COMMIT reply) adds its cost once', async () => {
    const { ledger } = host('idem', []);
    const hold: SharedHold = {
      budget: 'idem-day',
      periodStart: Date.parse('2026-11-23T00:00:00Z'),
      periodKey: '2026-11-23',
      periodEnd: Date.parse('2026-11-24T00:00:00Z'),
      timezone: 'UTC',
      period: 'day',
      currency: 'USD',
      limit: 50_000_000n,
      amount: 10_000_000n,
      onUnreachable: 'block',
    };
    expect(await ledger.reserve('req-idem-1', [hold])).toEqual({ admitted: true, reserved: true });
    ledger.settle('req-idem-1', true, [{ hold, cost: 7_000_000n }]);
    await waitFor(async () => (await books('idem-day')).n === 0);
    // The retry: same id, same cost, after the first one committed.
    ledger.settle('req-idem-1', true, [{ hold, cost: 7_000_000n }]);
    // An unreserved (on_unreachable: local) settle of another request, twice, also counts once.
    ledger.settle('req-idem-2', false, [{ hold, cost: 1_000_000n }]);
    ledger.settle('req-idem-2', false, [{ hold, cost: 1_000_000n }]);
    const admin = await server.connect();
    try {
      await waitFor(async () => {
        const r = await admin.query<{ n: string }>(
          "SELECT count(*)::text AS n FROM budget_settlements WHERE budget = 'idem-day'",
        );
        return r.rows[0]!.n === '2';
      });
      // Both retries have run (they are queued behind the first ones on the same pool): wait for them.
      await ledger.close();
      expect((await booksOf(admin, 'idem-day')).spent).toBe(8_000_000n);
      const rows = await admin.query<{ reservation_id: string }>(
        "SELECT reservation_id FROM budget_settlements WHERE budget = 'idem-day' ORDER BY 1",
      );
      expect(rows.rows.map((r) => r.reservation_id)).toEqual(['req-idem-1', 'req-idem-2']);
    } finally {
      await admin.end();
    }
  });

  it('settlement rows are pruned with the expired reservations once older than the retry window', async () => {
    const { gate } = host('prune', [budget('prune-day')]);
    const admin = await server.connect();
    try {
      await admin.query(
        "INSERT INTO budget_settlements (reservation_id, budget, settled_at) VALUES ('old', 'prune-day', now() - interval '1 day'), ('new', 'prune-day', now())",
      );
      const r = await admit(gate);
      expect(r.reservation).toBeDefined();
      const left = await admin.query<{ reservation_id: string }>(
        "SELECT reservation_id FROM budget_settlements WHERE budget = 'prune-day' ORDER BY 1",
      );
      expect(left.rows.map((x) => x.reservation_id)).toEqual(['new']);
    } finally {
      await admin.end();
    }
  });

  it("a crashed host's reservation stops counting after fleet.reservation_ttl", async () => {
    const crashed = host('crashed', [budget('ttl-day', { limit: '0.02' })], { ttlMs: 400 });
    const other = host('alive', [budget('ttl-day', { limit: '0.02' })], { ttlMs: 400 });
    const held = await admit(crashed.gate);
    expect(held.reservation).toBeDefined(); // never settled: the host "was SIGKILLed"
    const refused = await admit(other.gate);
    expect(refused.blocked).toMatchObject({ budget: 'ttl-day', reason: 'exhausted' });
    await new Promise((r) => setTimeout(r, 500));
    const later = await admit(other.gate);
    expect(later.reservation).toBeDefined();
    expect((await books('ttl-day')).n).toBe(1);
  });

  it('Postgres stopped: local keeps admitting and counts the fallback, block refuses; then it recovers', async () => {
    const local = host('h-local', [budget('fb-local', { on_unreachable: 'local' })], { timeoutMs: 500 });
    const strict = host('h-block', [budget('fb-block', { on_unreachable: 'block' })], { timeoutMs: 500 });
    // Warm both pools (and the schema) first.
    expect((await admit(local.gate)).reservation).toBeDefined();
    expect((await admit(strict.gate)).reservation).toBeDefined();

    await server.stopServer();
    try {
      const t0 = Date.now();
      const l = await admit(local.gate);
      expect(l.reservation).toBeDefined();
      expect(local.m.fallbacks.get('fb-local')).toBe(1);
      const b = await admit(strict.gate);
      expect(b.blocked).toMatchObject({ budget: 'fb-block', reason: 'exhausted' });
      expect(b.blocked!.message).toMatch(/fleet budget ledger .* is unreachable/);
      expect(Date.now() - t0).toBeLessThan(3_000);
      // The local view still holds the line: with two in flight, a third bound does not fit locally.
      const l2 = await admit(local.gate);
      expect(l2.reservation).toBeDefined();
      const l3 = await admit(local.gate);
      expect(l3.blocked).toMatchObject({ budget: 'fb-local' });
    } finally {
      await server.startServer();
    }
    let again: Awaited<ReturnType<typeof admit>> | undefined;
    await waitFor(async () => {
      again = await admit(strict.gate);
      if (again.reservation) return true;
      return false;
    });
    await waitFor(async () => {
      const before = local.m.fallbacks.get('fb-local') ?? 0;
      const r = await admit(local.gate, chat(10));
      r.reservation?.settle(makeRecord({ ...r.s, cost_nanos: 1, currency: 'USD' }));
      return r.reservation !== undefined && (local.m.fallbacks.get('fb-local') ?? 0) === before;
    });
    expect((await books('fb-block')).n).toBeGreaterThanOrEqual(1);
  }, 40_000);
});
