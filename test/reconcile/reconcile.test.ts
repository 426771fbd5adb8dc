/**
 * Billed vs metered over a real audit DB (issue 13): snapshots + request rows → per-key lines, the
 * drift, its explanation (causes first, then the fitted multiplier), per-request reported costs,
 * trusted costs metered by our own figure, the table and JSON output.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openWriterConnection, type WriterConnection } from '../../src/sinks/audit/connection.js';
import { billingSnapshotSql, type BillingSnapshotRow } from '../../src/sinks/audit/billing.js';
import { recordToRow } from '../../src/sinks/audit/row.js';
import { buildReconciliation } from '../../src/reconcile/reconcile.js';
import { formatReconcileTable, reconciliationToJson } from '../../src/reconcile/format.js';
import type { RequestRecord } from '../../src/record.js';
import { fullRecord } from '../audit/records.js';

const T0 = Date.UTC(2026, 10, 30, 8, 0, 0);
const KEY = 'aaaaaaaaaaaa';
const N = 1_000_000_000n;

let conn: WriterConnection;
beforeEach(() => {
  conn = openWriterConnection(':memory:', 50);
});
afterEach(() => conn.close());

function row(overrides: Partial<RequestRecord>): void {
  const tsStart = overrides.ts_start ?? T0 + 60_000;
  conn.insertRow(
    recordToRow(
      fullRecord({
        ts_end: tsStart + 1000,
        upstream: 'dieyu',
        key_id: KEY,
        ts_start: T0 + 60_000,
        multiplier: '1',
        upstream_reported_cost_nanos: null,
        upstream_reported_currency: null,
        ...overrides,
      }),
    ),
  );
}

function snapshot(s: Partial<BillingSnapshotRow> & { ts: number }): void {
  conn.db.exec(
    billingSnapshotSql({ upstream: 'dieyu', key_id: KEY, source: 'balance', currency: 'CNY', ...s }),
  );
}

/** 4 reported requests at 0.36 CNY, 2 answered without usage, 1 aborted, 1 missing, 1 unpriced. */
function traffic(): void {
  for (let i = 0; i < 4; i++) row({ cost_nanos: 360_000_000 });
  row({ usage_source: 'estimated', cost_nanos: 100_000 });
  row({ usage_source: 'estimated', cost_nanos: 100_000 });
  row({ usage_source: 'estimated', error_type: 'client_abort', cost_nanos: 50_000 });
  row({ usage_source: 'missing', cost_nanos: null, currency: null, cost_source: null, multiplier: null });
  row({ cost_source: 'unpriced', cost_nanos: null, currency: null, multiplier: null });
  // Another key and another upstream: not in this key's metered.
  row({ key_id: 'bbbbbbbbbbbb', cost_nanos: 999_000_000 });
  row({ upstream: 'other', cost_nanos: 999_000_000 });
}

describe('billed vs metered from balance snapshots', () => {
  it('names the drift, its size, its causes and the fitted multiplier', () => {
    traffic();
    // metered = 4 × 0.36 + 0.0002 + 0.00005 = 1.44025; billed ×1.25 of it = 1.8003125
    snapshot({ ts: T0, balance_nanos: 138_500_000_000n, daily_used_nanos: 3_250_000_000n });
    snapshot({ ts: T0 + 120_000, balance_nanos: 136_699_687_500n, daily_used_nanos: 5_050_312_500n });
    const r = buildReconciliation(conn.db, { fromMs: T0 - 3_600_000, toMs: T0 + 3_600_000 });
    expect(r.lines).toHaveLength(1);
    const l = r.lines[0]!;
    expect(l).toMatchObject({
      upstream: 'dieyu',
      key_id: KEY,
      source: 'balance',
      counter: 'daily_used',
      scope: 'key',
      currency: 'CNY',
      fromMs: T0,
      toMs: T0 + 120_000,
      billed_nanos: 1_800_312_500n,
      ratio: '1.25',
      gap_nanos: 360_062_500n,
      drifting: true,
      suggested_multiplier: '1.25',
    });
    expect(l.metered).toMatchObject({
      nanos: 1_440_250_000n,
      requests: 9,
      priced: 7,
      estimated: { requests: 2, nanos: 200_000n },
      unanswered: { requests: 1, nanos: 50_000n, unknown: 0 },
      missing: 1,
      unpriced: 1,
      multipliers: ['1'],
    });
    const text = l.explanation.join('\n');
    expect(text).toContain('billed 1.8003125 CNY vs metered 1.44025 CNY: +0.3600625 CNY (+25.0 %');
    expect(text).toContain('2 requests not in metered (cost unknown: 1 with missing usage, 1 unpriced)');
    expect(text).toContain('2 requests answered without usage');
    expect(text).toContain('1 request billed but never answered');
    expect(text).toContain('the gateway bills ×1.25 of your table: set `multiplier: 1.25` on upstream dieyu');
    // Causes come before the fitted multiplier.
    expect(text.indexOf('never answered')).toBeLessThan(text.indexOf('×1.25 of your table'));

    const table = formatReconcileTable(r);
    expect(table).toMatch(
      /dieyu\s+aaaaaaaaaaaa\s+balance\s+CNY\s+1\.8003125\s+1\.44025\s+\+25\.0%\s+9\s+2\s+1\s+1\s+1/,
    );
    const json = reconciliationToJson(r) as { lines: Array<Record<string, unknown>> };
    expect(json.lines[0]).toMatchObject({
      billed: '1.8003125',
      billed_nanos: '1800312500',
      metered: '1.44025',
      ratio: '1.25',
      fitted_multiplier: '1.25',
    });
  });

  it('a matching bill says so; the window starts at the last poll before --since', () => {
    row({ cost_nanos: 360_000_000, ts_start: T0 + 1000 });
    snapshot({ ts: T0 - 10 * 60_000, daily_used_nanos: 0n });
    snapshot({ ts: T0 + 120_000, daily_used_nanos: 360_000_000n });
    const [l] = buildReconciliation(conn.db, { fromMs: T0, toMs: T0 + 3_600_000 }).lines;
    expect(l).toMatchObject({ fromMs: T0 - 10 * 60_000, ratio: '1', drifting: false, fitted: null });
    expect(l!.explanation[1]).toBe('billed matches metered within ±2 %');
  });

  it('one poll: billed not known yet', () => {
    snapshot({ ts: T0, daily_used_nanos: 0n });
    const [l] = buildReconciliation(conn.db, { fromMs: T0 - 1, toMs: T0 + 1 }).lines;
    expect(l!.billed_nanos).toBeNull();
    expect(l!.explanation).toEqual(['billed is not known yet: 1 poll in the window, two are needed']);
  });

  it('balance deltas are tenant-wide (every key), top-ups excluded and explained', () => {
    row({ cost_nanos: 1_000_000_000 });
    row({ key_id: 'bbbbbbbbbbbb', cost_nanos: 1_000_000_000 });
    snapshot({ ts: T0, source: 'balance_delta', balance_nanos: 100n * N });
    snapshot({ ts: T0 + 100_000, source: 'balance_delta', balance_nanos: 149n * N }); // +50 top-up, -1 spent
    snapshot({ ts: T0 + 200_000, source: 'balance_delta', balance_nanos: 147n * N }); // -2
    const [l] = buildReconciliation(conn.db, { fromMs: T0 - 1, toMs: T0 + 300_000 }).lines;
    expect(l).toMatchObject({
      scope: 'upstream',
      counter: 'balance',
      billed_nanos: 2n * N,
      top_ups: 1,
      top_up_nanos: 49n * N,
    });
    expect(l!.metered.nanos).toBe(2n * N);
    expect(l!.explanation.join('\n')).toContain('1 top-up (balance rose by 49.00 CNY) excluded from billed');
  });
});

describe('per-request reported costs', () => {
  it('reported cost vs our computed cost of the same requests, also when the reported one is trusted', () => {
    row({
      upstream: 'or',
      cost_nanos: 1_000_000,
      upstream_reported_cost_nanos: 1_200_000,
      upstream_reported_currency: 'CNY',
    });
    // trust_reported_cost: cost_nanos is the gateway's figure, ours is kept in computed_cost_nanos.
    row({
      upstream: 'or',
      cost_source: 'upstream',
      cost_nanos: 1_200_000,
      computed_cost_nanos: 1_000_000,
      computed_currency: 'CNY',
      upstream_reported_cost_nanos: 1_200_000,
      upstream_reported_currency: 'CNY',
    });
    row({ upstream: 'or', cost_nanos: 5_000_000 }); // no reported cost: not in this comparison
    const [l] = buildReconciliation(conn.db, { fromMs: T0, toMs: T0 + 3_600_000, upstream: 'or' }).lines;
    expect(l).toMatchObject({
      source: 'reported',
      counter: 'reported_cost',
      billed_nanos: 2_400_000n,
      ratio: '1.2',
      suggested_multiplier: '1.2',
    });
    expect(l!.metered.nanos).toBe(2_000_000n);
  });
});
