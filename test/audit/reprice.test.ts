/**
 * Issue 13 re-pricing: `tokenmeter reprice` recomputes cost for audit rows in a window, shows the
 * difference per currency, writes rows + history in one transaction, and is idempotent.
 * (The end-to-end run against a real serve is test/e2e/reprice.test.ts.)
 */
import { writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { repriceCommand } from '../../src/cli/reprice.js';
import { UsageError } from '../../src/errors.js';
import { openWriterConnection } from '../../src/sinks/audit/connection.js';
import { DAY_MS, openDatabase, pruneBefore } from '../../src/sinks/audit/migrations.js';
import { recordToRow } from '../../src/sinks/audit/row.js';
import type { RequestRecord } from '../../src/record.js';
import { fullRecord, tempDir, type TempDir } from './records.js';

const NOW = Date.UTC(2026, 10, 30);
const TS = NOW - 2 * DAY_MS;

// The price the rows were written under (A) and today's (B): deepseek-chat input 0.81 → 1.62.
const B = `currency: CNY
prices:
  - { model: deepseek-chat, input: 1.62, output: 1.62, cache_read: 0.081 }
  - { model: new-model, input: 1, output: 1 }
`;

let tmp: TempDir;
let db: string;
let prices: string;

const base = (over: Partial<RequestRecord>): RequestRecord =>
  fullRecord({
    ts_start: TS,
    upstream: 'default',
    request_model: 'deepseek-chat',
    input_tokens: 400,
    cache_read_tokens: 600,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    output_tokens: 500,
    reasoning_tokens: null,
    images: null,
    // 400 × 0.81 + 600 × 0.081 + 500 × 1.62 = 1182.6 per 1M (§5.6), no multiplier
    cost_nanos: 1_182_600,
    currency: 'CNY',
    cost_source: 'computed',
    price_id: 'a.yaml#deepseek-chat@always',
    price_match: 'exact',
    multiplier: '1',
    ...over,
  });

function seed(records: RequestRecord[]): void {
  const w = openWriterConnection(db, 1000);
  w.insertBatch(records.map((r) => recordToRow(r)));
  w.close();
}

function query<T>(sql: string): T[] {
  const d = openDatabase(db);
  try {
    return d.prepare(sql).all() as T[];
  } finally {
    d.close();
  }
}

const run = (over: Record<string, unknown> = {}) =>
  repriceCommand({ db, prices: [prices], presets: false, since: '30d', ...over }, {}, tmp.dir, NOW);

beforeEach(() => {
  tmp = tempDir();
  db = tmp.file('audit.db');
  prices = tmp.file('b.yaml');
  writeFileSync(prices, B);
});
afterEach(() => tmp.cleanup());

describe('reprice', () => {
  it('dry run: per-currency difference, nothing written', () => {
    seed([
      base({ id: 'r1' }),
      base({
        id: 'r2',
        request_model: 'new-model',
        cost_nanos: null,
        currency: null,
        cost_source: 'unpriced',
        price_id: null,
        price_match: null,
        multiplier: null,
        input_tokens: 1000,
        cache_read_tokens: null,
        output_tokens: 0,
      }),
      base({
        id: 'r3',
        request_model: 'gone',
        cost_nanos: 5_000,
        currency: 'USD',
        price_id: 'old.yaml#gone@always',
      }),
      base({ id: 'r4', cost_source: 'upstream', cost_nanos: 999 }), // the gateway's figure: kept
      base({
        id: 'r5',
        usage_source: 'missing',
        cost_nanos: null,
        currency: null,
        cost_source: null,
        price_id: null,
        price_match: null,
      }),
      base({ id: 'r6', ts_start: NOW - 40 * DAY_MS }), // outside the window
    ]);
    const { out, err } = run({ dryRun: true, format: 'json' });
    expect(err).toMatch(/upstream default is not in the config/);
    const report = JSON.parse(out) as Record<string, unknown>;
    // r1: 400 × 1.62 + 600 × 0.081 + 500 × 1.62 = 1,506.6 per 1M → 1,506,600 nanos (+324,000)
    // r2: newly priced, 1,000 × 1 = 1,000 per 1M → 1,000,000 nanos
    expect(report).toMatchObject({
      examined: 3,
      changed: 3,
      currencies: [
        {
          currency: 'CNY',
          rows: 2,
          old_total: '0.0011826',
          new_total: '0.0025066',
          difference: '0.001324',
          changed: 2,
          newly_priced: 1,
          newly_unpriced: 0,
        },
        {
          currency: 'USD',
          rows: 1,
          old_total: '0.000005',
          new_total: '0.00',
          difference: '-0.000005',
          changed: 1,
          newly_priced: 0,
          newly_unpriced: 1,
        },
      ],
      unpriced_before: 1,
      unpriced_after: 1,
      repricing_id: null,
      updated: 0,
    });
    expect(query('SELECT id, cost_nanos FROM requests ORDER BY id')).toEqual([
      { id: 'r1', cost_nanos: 1_182_600 },
      { id: 'r2', cost_nanos: null },
      { id: 'r3', cost_nanos: 5_000 },
      { id: 'r4', cost_nanos: 999 },
      { id: 'r5', cost_nanos: null },
      { id: 'r6', cost_nanos: 1_182_600 },
    ]);
    expect(query('SELECT * FROM repricings')).toEqual([]);
  });

  it('writes rows and a history that keeps the originals; a second run changes nothing', () => {
    seed([
      base({ id: 'r1' }),
      base({
        id: 'r3',
        request_model: 'gone',
        cost_nanos: 5_000,
        currency: 'USD',
        price_id: 'old.yaml#gone@always',
      }),
    ]);
    const first = run();
    expect(first.out).toMatch(
      /^reprice 2026-10-31T00:00:00.000Z \.\. 2026-11-30T00:00:00.000Z with .*b\.yaml \([0-9a-f]{12}\)\n2 rows examined, 2 would change\n/,
    );
    expect(first.out).toMatch(/^CNY +1 +0\.0011826 +0\.0015066 +\+0\.000324 +1 +0 +0$/m);
    expect(first.out).toMatch(/^USD +1 +0\.000005 +0\.00 +-0\.000005 +1 +0 +1$/m);
    expect(first.out).toMatch(
      /repricing 1: 2 rows updated; their previous cost is kept in repricing_history\n$/,
    );

    expect(
      query(
        'SELECT id, cost_nanos, currency, cost_source, price_id, price_match, multiplier FROM requests ORDER BY id',
      ),
    ).toEqual([
      {
        id: 'r1',
        cost_nanos: 1_506_600,
        currency: 'CNY',
        cost_source: 'computed',
        price_id: 'b.yaml#deepseek-chat@always',
        price_match: 'exact',
        multiplier: '1',
      },
      {
        id: 'r3',
        cost_nanos: null,
        currency: null,
        cost_source: 'unpriced',
        price_id: null,
        price_match: null,
        multiplier: null,
      },
    ]);
    expect(
      query(
        'SELECT repricing_id, request_id, old_cost_nanos, old_currency, old_cost_source, old_price_id, old_price_match, new_cost_nanos, new_price_id FROM repricing_history ORDER BY request_id',
      ),
    ).toEqual([
      {
        repricing_id: 1,
        request_id: 'r1',
        old_cost_nanos: 1_182_600,
        old_currency: 'CNY',
        old_cost_source: 'computed',
        old_price_id: 'a.yaml#deepseek-chat@always',
        old_price_match: 'exact',
        new_cost_nanos: 1_506_600,
        new_price_id: 'b.yaml#deepseek-chat@always',
      },
      {
        repricing_id: 1,
        request_id: 'r3',
        old_cost_nanos: 5_000,
        old_currency: 'USD',
        old_cost_source: 'computed',
        old_price_id: 'old.yaml#gone@always',
        old_price_match: 'exact',
        new_cost_nanos: null,
        new_price_id: null,
      },
    ]);
    const runs = query<{ rows_examined: number; rows_changed: number; tables: string }>(
      'SELECT * FROM repricings',
    );
    expect(runs).toHaveLength(1);
    expect(runs[0]).toMatchObject({ rows_examined: 2, rows_changed: 2 });
    expect(JSON.parse(runs[0]!.tables)).toEqual([
      { file: prices, origin: 'user', sha256: expect.stringMatching(/^[0-9a-f]{64}$/) },
    ]);

    const second = run();
    expect(second.out).toMatch(/2 rows examined, 0 would change\n/);
    expect(second.out).toMatch(/nothing to change\n$/);
    expect(query('SELECT COUNT(*) AS n FROM repricings')).toEqual([{ n: 1 }]);
    expect(query('SELECT COUNT(*) AS n FROM repricing_history')).toEqual([{ n: 2 }]);
  });

  it('reads the window in pages: rows sharing one ts_start across a page boundary are each repriced once', () => {
    // 2,001 rows at one ts_start and 4 a millisecond later: the 2,000-row page boundary falls inside
    // the tie, so the keyset (ts_start, id) must carry on from the last id of the page.
    const ids = Array.from({ length: 2005 }, (_v, i) => `p${String(i).padStart(5, '0')}`);
    seed(ids.map((id, i) => base({ id, ts_start: i < 2001 ? TS : TS + 1 })));
    const out = run().out;
    expect(out).toMatch(/^2005 rows examined, 2005 would change$/m);
    expect(out).toMatch(/repricing 1: 2005 rows updated/);
    const rows = query<{ n: number; changed: number }>(
      'SELECT count(*) AS n, sum(cost_nanos = 1506600) AS changed FROM requests',
    );
    expect(rows).toEqual([{ n: 2005, changed: 2005 }]);
    expect(query<{ n: number }>('SELECT count(*) AS n FROM repricing_history')).toEqual([{ n: 2005 }]);
  });

  it('db prune removes the history of pruned rows', () => {
    seed([base({ id: 'r1' })]);
    run();
    const d = openDatabase(db);
    pruneBefore(d, NOW);
    expect(d.prepare('SELECT COUNT(*) AS n FROM repricing_history').get()).toEqual({ n: 0 });
    d.close();
  });

  it('bad flags are usage errors (exit 2); a missing DB is a DB error (exit 1)', () => {
    seed([]);
    expect(() => run({ since: undefined })).toThrow(UsageError);
    expect(() => run({ since: 'lately' })).toThrow(/--since: expected 24h, 7d/);
    expect(() => run({ since: '1d', until: '2d' })).toThrow(/--since must be before --until/);
    try {
      run({ db: tmp.file('missing.db') });
      expect.unreachable();
    } catch (err) {
      expect((err as { exitCode: number }).exitCode).toBe(1);
    }
  });
});
