/**
 * The console's read-only SQL over the audit log: the request list (filters, keyset pagination
 * newest first), one request with its captured bodies, spend per time bucket, and the models seen
 * unpriced. Totals per currency come from `tokenmeter report`'s own `queryReport`, so the console
 * and the CLI print the same numbers. Money is summed in SQL over INTEGER nanos and read as BigInt
 * (`safeIntegers`); unpriced rows (cost NULL) never enter a sum.
 */
import type Database from 'better-sqlite3';
import type { CostSource, ErrorType, Operation, UsageSource } from '../record.js';
import { REQUEST_COLUMN_NAMES, quoteIdent } from '../sinks/audit/migrations.js';

/** Filters of the request list; every field narrows (AND). */
export interface RequestFilter {
  fromMs?: number;
  toMs?: number;
  app?: string;
  model?: string;
  upstream?: string;
  operation?: Operation;
  /** An HTTP status class (`4xx`), an exact status, or `none` (no response head). */
  status?: { class: number } | { exact: number } | 'none';
  /** One error class, `none` (no error) or `any` (any error). */
  errorType?: ErrorType | 'none' | 'any';
  usageSource?: UsageSource;
  /** `none`: the operation has no cost at all (cost_source NULL). */
  costSource?: CostSource | 'none';
}

/** A stored row as better-sqlite3 returns it (booleans as 0/1). */
export type StoredRow = Record<string, string | number | null>;

const COLUMNS = REQUEST_COLUMN_NAMES.map(quoteIdent).join(', ');

function where(f: RequestFilter): { sql: string; params: Array<string | number> } {
  const parts: string[] = [];
  const params: Array<string | number> = [];
  const eq = (column: string, value: string | undefined) => {
    if (value === undefined) return;
    parts.push(`${column} = ?`);
    params.push(value);
  };
  if (f.fromMs !== undefined) {
    parts.push('ts_start >= ?');
    params.push(f.fromMs);
  }
  if (f.toMs !== undefined) {
    parts.push('ts_start < ?');
    params.push(f.toMs);
  }
  eq('app', f.app);
  eq('request_model', f.model);
  eq('upstream', f.upstream);
  eq('operation', f.operation);
  eq('usage_source', f.usageSource);
  if (f.status === 'none') parts.push('http_status IS NULL');
  else if (f.status && 'class' in f.status) {
    parts.push('http_status >= ? AND http_status < ?');
    params.push(f.status.class * 100, f.status.class * 100 + 100);
  } else if (f.status) {
    parts.push('http_status = ?');
    params.push(f.status.exact);
  }
  if (f.errorType === 'none') parts.push('error_type IS NULL');
  else if (f.errorType === 'any') parts.push('error_type IS NOT NULL');
  else eq('error_type', f.errorType);
  if (f.costSource === 'none') parts.push('cost_source IS NULL');
  else eq('cost_source', f.costSource);
  return { sql: parts.length > 0 ? parts.join(' AND ') : '1', params };
}

/**
 * Newest first (ts_start, then id, both descending), at most `limit` rows, strictly after the row
 * `before` in that order (keyset pagination: stable while new rows arrive). Returns undefined when
 * `before` names no row.
 */
export function listRequests(
  db: Database.Database,
  filter: RequestFilter,
  limit: number,
  before?: string,
): StoredRow[] | undefined {
  const w = where(filter);
  let cursor = '';
  const params = [...w.params];
  if (before !== undefined) {
    const at = db.prepare('SELECT ts_start, id FROM requests WHERE id = ?').get(before) as
      { ts_start: number; id: string } | undefined;
    if (!at) return undefined;
    cursor = ' AND (ts_start < ? OR (ts_start = ? AND id < ?))';
    params.push(at.ts_start, at.ts_start, at.id);
  }
  return db
    .prepare(
      `SELECT ${COLUMNS} FROM requests WHERE ${w.sql}${cursor} ORDER BY ts_start DESC, id DESC LIMIT ?`,
    )
    .all(...params, limit) as StoredRow[];
}

export interface CapturedBodies {
  request: string | null;
  response: string | null;
  request_bytes: number | null;
  response_bytes: number | null;
  truncated: boolean;
}

export function getRequest(
  db: Database.Database,
  id: string,
): { row: StoredRow; bodies: CapturedBodies | null } | undefined {
  const row = db.prepare(`SELECT ${COLUMNS} FROM requests WHERE id = ?`).get(id) as StoredRow | undefined;
  if (!row) return undefined;
  const b = db
    .prepare('SELECT request, response, request_bytes, response_bytes, truncated FROM bodies WHERE id = ?')
    .get(id) as (Omit<CapturedBodies, 'truncated'> & { truncated: number }) | undefined;
  return { row, bodies: b ? { ...b, truncated: b.truncated === 1 } : null };
}

export const SPEND_DIMENSIONS = ['app', 'model', 'upstream'] as const;
export type SpendDimension = (typeof SPEND_DIMENSIONS)[number];
const SPEND_DIMENSION_SQL: Record<SpendDimension, string> = {
  app: 'app',
  model: 'request_model',
  upstream: 'upstream',
};

export interface SpendPoint {
  /** Bucket start, epoch ms (UTC-aligned: hours and days since the epoch). */
  t: number;
  key: string | null;
  currency: string;
  cost_nanos: bigint;
  requests: number;
}

/** Priced spend per bucket, per `by` key (or one series when `by` is undefined), per currency. */
export function querySpendSeries(
  db: Database.Database,
  q: { fromMs: number; toMs: number; bucketMs: number; by?: SpendDimension },
): SpendPoint[] {
  const key = q.by ? SPEND_DIMENSION_SQL[q.by] : 'NULL';
  const rows = db
    .prepare(
      `SELECT (ts_start / ?) * ? AS t, ${key} AS key, currency,
         SUM(cost_nanos) AS cost_nanos, COUNT(*) AS requests
       FROM requests
       WHERE ts_start >= ? AND ts_start < ? AND cost_nanos IS NOT NULL AND currency IS NOT NULL
       GROUP BY t, key, currency ORDER BY t, key IS NULL, key, currency`,
    )
    .safeIntegers()
    // BigInt: better-sqlite3 binds a JS number as REAL, and REAL division would not floor.
    .all(BigInt(q.bucketMs), BigInt(q.bucketMs), q.fromMs, q.toMs) as Array<{
    t: bigint;
    key: string | null;
    currency: string;
    cost_nanos: bigint;
    requests: bigint;
  }>;
  return rows.map((r) => ({
    t: Number(r.t),
    key: r.key,
    currency: r.currency,
    cost_nanos: r.cost_nanos,
    requests: Number(r.requests),
  }));
}

export interface UnpricedModel {
  model: string | null;
  upstream: string;
  requests: number;
  last_seen: number;
  /** The newest such request's note (why no price applied, e.g. "no price entry for model …"). */
  reason: string | null;
}

/** Models whose requests in the window had no price (cost_source = 'unpriced'), most requests first. */
export function queryUnpricedModels(
  db: Database.Database,
  fromMs: number,
  toMs: number,
  limit: number,
): UnpricedModel[] {
  return db
    .prepare(
      `SELECT request_model AS model, upstream, COUNT(*) AS requests, MAX(ts_start) AS last_seen,
         (SELECT r2.note FROM requests r2
            WHERE r2.cost_source = 'unpriced' AND r2.upstream = r.upstream
              AND r2.request_model IS r.request_model AND r2.ts_start >= ? AND r2.ts_start < ?
            ORDER BY r2.ts_start DESC LIMIT 1) AS reason
       FROM requests r
       WHERE cost_source = 'unpriced' AND ts_start >= ? AND ts_start < ?
       GROUP BY request_model, upstream
       ORDER BY requests DESC, last_seen DESC
       LIMIT ?`,
    )
    .all(fromMs, toMs, fromMs, toMs, limit) as UnpricedModel[];
}
