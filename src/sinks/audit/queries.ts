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

/** Dimensions of the local report. */
export const REPORT_DIMENSIONS = ['app', 'model', 'upstream', 'day'] as const;
/** `report --fleet` adds `host`: which sidecar shipped the row (src/fleet/, docs/fleet.md). */
export const FLEET_REPORT_DIMENSIONS = [...REPORT_DIMENSIONS, 'host'] as const;
export type ReportDimension = (typeof FLEET_REPORT_DIMENSIONS)[number];

/**
 * What differs between the SQLite and the Postgres report query; everything else (grouping by
 * currency, the sums, the caveat counts, reading rows) is one implementation for both.
 */
export interface ReportDialect {
  /** SQL per dimension; undefined = not available in this store (SQLite has no `host`). */
  dimension: Readonly<Record<ReportDimension, string | undefined>>;
  /** The two window bounds (ts_start >= from AND ts_start < to). */
  bounds: readonly [string, string];
  /** ORDER BY terms for one grouping expression: NULLs last, then byte order. */
  order(expr: string): string;
}

/** How each dimension is computed in SQLite. `day` is the UTC calendar day of ts_start. */
export const SQLITE_REPORT_DIALECT: ReportDialect = {
  dimension: {
    app: 'app',
    model: 'request_model',
    upstream: 'upstream',
    day: `strftime('%Y-%m-%d', ts_start / 1000, 'unixepoch')`,
    host: undefined,
  },
  bounds: ['?', '?'],
  order: (e) => `${e} IS NULL, ${e}`,
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

function dimensionSql(dialect: ReportDialect, d: ReportDimension): string {
  const sql = dialect.dimension[d];
  if (sql === undefined) throw new Error(`report dimension ${d} is not available in this store`);
  return sql;
}

/**
 * Groups by the requested dimensions AND currency: money of different currencies never lands in
 * one sum. With `by: []` the rows are the per-currency totals. Every sum is over integer columns
 * (SQLite INTEGER read as BigInt, Postgres `sum(bigint)` = numeric read as text): exact.
 */
export function reportSql(dialect: ReportDialect, by: readonly ReportDimension[]): string {
  const dims = [...new Set(by)];
  const groupExprs = [...dims.map((d) => dimensionSql(dialect, d)), 'currency'];
  return `
    SELECT ${[...dims.map((d) => `${dimensionSql(dialect, d)} AS dim_${d}`), 'currency'].join(', ')},
      COUNT(*) AS requests,
      SUM(cost_nanos) AS cost_nanos,
      ${TOKEN_COLUMNS.map((c) => `SUM(${c}) AS ${c}`).join(',\n      ')},
      COUNT(*) FILTER (WHERE usage_source = 'estimated') AS estimated,
      COUNT(*) FILTER (WHERE usage_source = 'missing') AS missing,
      COUNT(*) FILTER (WHERE cost_source = 'unpriced') AS unpriced,
      COUNT(*) FILTER (WHERE error_type IS NOT NULL) AS errors
    FROM requests
    WHERE ts_start >= ${dialect.bounds[0]} AND ts_start < ${dialect.bounds[1]}
    GROUP BY ${groupExprs.join(', ')}
    ORDER BY ${groupExprs.map((g) => dialect.order(g)).join(', ')}`;
}

/** An integer aggregate as the driver returns it: BigInt (SQLite safeIntegers) or text (pg). */
type SqlInteger = bigint | string | number;
const toBigInt = (v: SqlInteger | null | undefined): bigint | null =>
  v === null || v === undefined ? null : BigInt(v);

/** One result row of `reportSql`, from either store. */
export function reportRowFromSql(
  r: Record<string, SqlInteger | null>,
  by: readonly ReportDimension[],
): ReportRow {
  const keys: ReportRow['keys'] = {};
  for (const d of new Set(by)) keys[d] = (r[`dim_${d}`] as string | null) ?? null;
  const tokens = {} as Record<TokenColumn, bigint | null>;
  for (const c of TOKEN_COLUMNS) tokens[c] = toBigInt(r[c]);
  // COUNT(*) is never NULL, and a count of rows fits a number.
  const count = (name: string): number => Number(r[name]);
  return {
    keys,
    currency: (r['currency'] as string | null) ?? null,
    requests: count('requests'),
    cost_nanos: toBigInt(r['cost_nanos']),
    tokens,
    estimated: count('estimated'),
    missing: count('missing'),
    unpriced: count('unpriced'),
    errors: count('errors'),
  };
}

export function queryReport(db: Database.Database, q: ReportQuery): ReportRow[] {
  const rows = db
    .prepare(reportSql(SQLITE_REPORT_DIALECT, q.by))
    .safeIntegers()
    .all(q.fromMs, q.toMs) as Array<Record<string, SqlInteger | null>>;
  return rows.map((r) => reportRowFromSql(r, q.by));
}

/** Known cost per currency per UTC day (for FX conversion with dated rates), in either store. */
export function spendByDaySql(dialect: ReportDialect): string {
  return `SELECT ${dimensionSql(dialect, 'day')} AS day, currency, SUM(cost_nanos) AS cost_nanos FROM requests
       WHERE ts_start >= ${dialect.bounds[0]} AND ts_start < ${dialect.bounds[1]}
         AND cost_nanos IS NOT NULL AND currency IS NOT NULL
       GROUP BY ${dimensionSql(dialect, 'day')}, currency
       ORDER BY ${dimensionSql(dialect, 'day')}, currency`;
}

/** Known cost per currency per UTC day in the local log. */
export function querySpendByDay(
  db: Database.Database,
  fromMs: number,
  toMs: number,
): Array<{ day: string; currency: string; cost_nanos: bigint }> {
  return db.prepare(spendByDaySql(SQLITE_REPORT_DIALECT)).safeIntegers().all(fromMs, toMs) as Array<{
    day: string;
    currency: string;
    cost_nanos: bigint;
  }>;
}
