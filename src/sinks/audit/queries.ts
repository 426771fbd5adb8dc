/**
 * Read queries over the audit log: pure functions of a Database, used by budgets (period-to-date
 * spend that survives restarts) and by `tokenmeter report`. Money is summed in SQL over INTEGER
 * nanos and read as BigInt (`safeIntegers`), never as floats; unpriced rows (cost NULL) are
 * excluded from sums and counted separately so nobody mistakes a partial sum for the bill.
 */
import type Database from 'better-sqlite3';
import type { SpendFilter } from '../../budgets/types.js';

export type { SpendFilter };

export interface CurrencySpend {
  currency: string;
  cost_nanos: bigint;
}

function whereClause(filter: SpendFilter): { sql: string; params: (string | number)[] } {
  const parts = ['ts_start >= ?', 'ts_start < ?'];
  const params: (string | number)[] = [filter.fromMs, filter.toMs];
  if (filter.app !== undefined) {
    parts.push('app = ?');
    params.push(filter.app);
  }
  if (filter.model !== undefined) {
    parts.push('request_model GLOB ?');
    params.push(filter.model);
  }
  if (filter.upstream !== undefined) {
    parts.push('upstream = ?');
    params.push(filter.upstream);
  }
  return { sql: parts.join(' AND '), params };
}

/** Priced spend per currency in the window (rows with a NULL cost are not in the sum). */
export function querySpend(db: Database.Database, filter: SpendFilter): CurrencySpend[] {
  const where = whereClause(filter);
  const rows = db
    .prepare(
      `SELECT currency, SUM(cost_nanos) AS cost_nanos FROM requests
       WHERE ${where.sql} AND cost_nanos IS NOT NULL AND currency IS NOT NULL
       GROUP BY currency ORDER BY currency`,
    )
    .safeIntegers()
    .all(...where.params) as Array<{ currency: string; cost_nanos: bigint }>;
  return rows.map((r) => ({ currency: r.currency, cost_nanos: r.cost_nanos }));
}

/** Requests in the window that no price matched (`cost_source = 'unpriced'`, cost NULL): not in `querySpend`. */
export function countUnpriced(db: Database.Database, filter: SpendFilter): number {
  const where = whereClause(filter);
  const row = db
    .prepare(`SELECT COUNT(*) AS n FROM requests WHERE ${where.sql} AND cost_source = 'unpriced'`)
    .get(...where.params) as { n: number };
  return row.n;
}

export const REPORT_DIMENSIONS = ['app', 'model', 'upstream', 'day'] as const;
export type ReportDimension = (typeof REPORT_DIMENSIONS)[number];

/** How each dimension is computed. `day` is the UTC calendar day of ts_start. */
const DIMENSION_SQL: Record<ReportDimension, string> = {
  app: 'app',
  model: 'request_model',
  upstream: 'upstream',
  day: `strftime('%Y-%m-%d', ts_start / 1000, 'unixepoch')`,
};

export const TOKEN_COLUMNS = [
  'input_tokens',
  'cache_read_tokens',
  'cache_write_tokens',
  'output_tokens',
  'reasoning_tokens',
] as const;
export type TokenColumn = (typeof TOKEN_COLUMNS)[number];

export interface ReportRow {
  /** Values of the requested dimensions, in the order asked (null: e.g. a request without a model). */
  keys: Partial<Record<ReportDimension, string | null>>;
  /** null for requests with no known cost currency (unpriced, or no cost at all). */
  currency: string | null;
  requests: number;
  /** Sum of known costs; null when no request in the group has one. */
  cost_nanos: bigint | null;
  /** Token sums over reported/estimated values; null when no request in the group reported that kind. */
  tokens: Record<TokenColumn, bigint | null>;
  /** Requests whose usage was estimated locally or is missing, and whose cost is unknown. */
  estimated: number;
  missing: number;
  unpriced: number;
  errors: number;
}

export interface ReportQuery {
  fromMs: number;
  toMs: number;
  by: readonly ReportDimension[];
}

/**
 * Groups by the requested dimensions AND currency: money of different currencies never lands in
 * one sum. With `by: []` the rows are the per-currency totals.
 */
export function queryReport(db: Database.Database, q: ReportQuery): ReportRow[] {
  const dims = [...new Set(q.by)];
  const dimSelect = dims.map((d) => `${DIMENSION_SQL[d]} AS dim_${d}`);
  const groupBy = [...dims.map((d) => `dim_${d}`), 'currency'];
  const sql = `
    SELECT ${[...dimSelect, 'currency'].join(', ')},
      COUNT(*) AS requests,
      SUM(cost_nanos) AS cost_nanos,
      ${TOKEN_COLUMNS.map((c) => `SUM(${c}) AS ${c}`).join(',\n      ')},
      COUNT(*) FILTER (WHERE usage_source = 'estimated') AS estimated,
      COUNT(*) FILTER (WHERE usage_source = 'missing') AS missing,
      COUNT(*) FILTER (WHERE cost_source = 'unpriced') AS unpriced,
      COUNT(*) FILTER (WHERE error_type IS NOT NULL) AS errors
    FROM requests
    WHERE ts_start >= ? AND ts_start < ?
    GROUP BY ${groupBy.join(', ')}
    ORDER BY ${groupBy.map((g) => `${g} IS NULL, ${g}`).join(', ')}`;
  const rows = db.prepare(sql).safeIntegers().all(q.fromMs, q.toMs) as Array<
    Record<string, string | bigint | null>
  >;
  return rows.map((r) => {
    const keys: ReportRow['keys'] = {};
    for (const d of dims) keys[d] = (r[`dim_${d}`] as string | null) ?? null;
    const tokens = {} as Record<TokenColumn, bigint | null>;
    for (const c of TOKEN_COLUMNS) tokens[c] = (r[c] as bigint | null) ?? null;
    // COUNT(*) is never NULL; BigInt only because the statement reads every integer safely.
    const count = (name: string): number => Number(r[name] as bigint);
    return {
      keys,
      currency: (r['currency'] as string | null) ?? null,
      requests: count('requests'),
      cost_nanos: (r['cost_nanos'] as bigint | null) ?? null,
      tokens,
      estimated: count('estimated'),
      missing: count('missing'),
      unpriced: count('unpriced'),
      errors: count('errors'),
    };
  });
}

/** Known cost per currency per UTC day, for FX conversion with dated rates. */
export function querySpendByDay(
  db: Database.Database,
  fromMs: number,
  toMs: number,
): Array<{ day: string; currency: string; cost_nanos: bigint }> {
  return db
    .prepare(
      `SELECT ${DIMENSION_SQL.day} AS day, currency, SUM(cost_nanos) AS cost_nanos FROM requests
       WHERE ts_start >= ? AND ts_start < ? AND cost_nanos IS NOT NULL AND currency IS NOT NULL
       GROUP BY day, currency ORDER BY day, currency`,
    )
    .safeIntegers()
    .all(fromMs, toMs) as Array<{ day: string; currency: string; cost_nanos: bigint }>;
}
