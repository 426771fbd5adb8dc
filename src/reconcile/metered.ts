/**
 * The metered side of billed vs metered, and the stored billing snapshots: read queries over the
 * audit log, pure functions of a Database (the CLI's connection, the console's reader thread, the
 * serve read connection). Money is summed in SQL over INTEGER nanos and read as BigInt.
 *
 * "Metered" is our table's cost: `cost_nanos`, or `computed_cost_nanos` on rows whose cost is a
 * trusted upstream figure (`cost_source = 'upstream'`), each in its own currency.
 */
import type Database from 'better-sqlite3';
import type { BillingSourceName } from '../config/schema.js';
import type { BillingSnapshot } from './types.js';

/** A window (requests that ended in (fromMs, toMs]) and scope. `keyId` undefined: every key of the upstream. */
export interface MeteredScope {
  upstream: string;
  keyId?: string | null;
  fromMs: number;
  toMs: number;
}

export interface CountAndNanos {
  requests: number;
  /** Metered cost of those requests whose cost is known (per currency, see MeteredTotals). */
  nanos: bigint;
}

/** Metered over a scope, for one currency, plus the counts that explain a gap. */
export interface MeteredTotals {
  currency: string;
  /** Every request of the scope (any currency, priced or not). */
  requests: number;
  /** Sum of the known metered costs in `currency`. */
  nanos: bigint;
  /** Requests with a known metered cost in `currency`. */
  priced: number;
  /** Answered (no error) but usage not reported: metered from a local token estimate. */
  estimated: CountAndNanos;
  /**
   * Reached the upstream, never answered in full (timeout, client abort, network): billed maybe,
   * metered from the estimated input; `unknown` of them have no metered cost at all.
   */
  unanswered: CountAndNanos & { unknown: number };
  /** Usage missing (cost unknown), answered requests. */
  missing: number;
  /** No price entry matched or usage incomplete (cost unknown), answered requests. */
  unpriced: number;
  /** Trusted upstream cost, our own figure not kept (rows written before schema 4). */
  uncomputed: number;
  /** Metered costs in other currencies (not comparable without fx), per currency. */
  otherCurrencies: Record<string, string>;
  /** Distinct multiplier stacks of the priced rows (usually one). */
  multipliers: string[];
}

const METERED_NANOS = `CASE WHEN cost_source = 'upstream' THEN computed_cost_nanos ELSE cost_nanos END`;
const METERED_CURRENCY = `CASE WHEN cost_source = 'upstream' THEN computed_currency ELSE currency END`;
const UNANSWERED = `(COALESCE(error_type, '') IN ('timeout', 'client_abort', 'network') AND usage_source IN ('estimated', 'missing'))`;

/**
 * A gateway charges a request when it ends, so a request belongs to the window its end falls in:
 * `ts_end` in (from, to]. `ts_start` bounds the scan to the `ts_start` index (no request runs
 * longer than a day: idle timeouts end it).
 */
const END_IN_WINDOW = 'ts_end > ? AND ts_end <= ? AND ts_start >= ? AND ts_start <= ?';
const endParams = (fromMs: number, toMs: number): number[] => [fromMs, toMs, fromMs - MAX_REQUEST_MS, toMs];
const MAX_REQUEST_MS = 86_400_000;

function scopeWhere(s: MeteredScope): { sql: string; params: (string | number)[] } {
  const parts = ['upstream = ?', END_IN_WINDOW];
  const params: (string | number)[] = [s.upstream, ...endParams(s.fromMs, s.toMs)];
  if (s.keyId !== undefined) {
    if (s.keyId === null) parts.push('key_id IS NULL');
    else {
      parts.push('key_id = ?');
      params.push(s.keyId);
    }
  }
  return { sql: parts.join(' AND '), params };
}

/** Metered totals of a scope in `currency` (the billed side's currency). */
export function queryMetered(db: Database.Database, scope: MeteredScope, currency: string): MeteredTotals {
  const w = scopeWhere(scope);
  const rows = db
    .prepare(
      `SELECT ${METERED_CURRENCY} AS mc,
        COUNT(*) AS requests,
        SUM(${METERED_NANOS}) AS nanos,
        COUNT(${METERED_NANOS}) AS priced,
        COUNT(*) FILTER (WHERE usage_source = 'estimated' AND NOT ${UNANSWERED}) AS est_n,
        SUM(${METERED_NANOS}) FILTER (WHERE usage_source = 'estimated' AND NOT ${UNANSWERED}) AS est_nanos,
        COUNT(*) FILTER (WHERE ${UNANSWERED}) AS una_n,
        SUM(${METERED_NANOS}) FILTER (WHERE ${UNANSWERED}) AS una_nanos,
        COUNT(*) FILTER (WHERE usage_source = 'missing' AND NOT ${UNANSWERED}) AS missing,
        COUNT(*) FILTER (WHERE ${UNANSWERED} AND ${METERED_NANOS} IS NULL) AS una_unknown,
        COUNT(*) FILTER (WHERE cost_source = 'unpriced' AND NOT ${UNANSWERED}) AS unpriced,
        COUNT(*) FILTER (WHERE cost_source = 'upstream' AND computed_cost_nanos IS NULL) AS uncomputed
      FROM requests WHERE ${w.sql} GROUP BY mc`,
    )
    .safeIntegers()
    .all(...w.params) as Array<Record<string, bigint | string | null>>;
  const n = (v: bigint | string | null | undefined): number => (typeof v === 'bigint' ? Number(v) : 0);
  const big = (v: bigint | string | null | undefined): bigint => (typeof v === 'bigint' ? v : 0n);
  const out: MeteredTotals = {
    currency,
    requests: 0,
    nanos: 0n,
    priced: 0,
    estimated: { requests: 0, nanos: 0n },
    unanswered: { requests: 0, nanos: 0n, unknown: 0 },
    missing: 0,
    unpriced: 0,
    uncomputed: 0,
    otherCurrencies: {},
    multipliers: [],
  };
  for (const r of rows) {
    out.requests += n(r.requests);
    out.estimated.requests += n(r.est_n);
    out.unanswered.requests += n(r.una_n);
    out.unanswered.unknown += n(r.una_unknown);
    out.missing += n(r.missing);
    out.unpriced += n(r.unpriced);
    out.uncomputed += n(r.uncomputed);
    if (r.mc === currency) {
      out.nanos = big(r.nanos);
      out.priced = n(r.priced);
      out.estimated.nanos = big(r.est_nanos);
      out.unanswered.nanos = big(r.una_nanos);
    } else if (typeof r.mc === 'string' && r.nanos !== null)
      out.otherCurrencies[r.mc] = big(r.nanos).toString();
  }
  out.multipliers = (
    db
      .prepare(
        `SELECT DISTINCT multiplier FROM requests WHERE ${w.sql} AND multiplier IS NOT NULL AND ${METERED_CURRENCY} = ? LIMIT 5`,
      )
      .all(...w.params, currency) as Array<{ multiplier: string }>
  ).map((r) => r.multiplier);
  return out;
}

/** Per-request reported costs (body `usage.cost`) of a scope, per key and currency: the "reported" billed source. */
export interface ReportedCostGroup {
  upstream: string;
  key_id: string | null;
  currency: string;
  requests: number;
  reported_nanos: bigint;
  /** Our metered cost of the same requests, in the same currency (rows whose metered currency differs are not in it). */
  metered_nanos: bigint;
  /** Of `requests`, how many have a metered cost in `currency`. */
  metered_requests: number;
  fromMs: number;
  toMs: number;
}

export function queryReportedCosts(
  db: Database.Database,
  fromMs: number,
  toMs: number,
  upstream?: string,
): ReportedCostGroup[] {
  const params: (string | number)[] = endParams(fromMs, toMs);
  if (upstream !== undefined) params.push(upstream);
  const rows = db
    .prepare(
      `SELECT upstream, key_id, upstream_reported_currency AS currency, COUNT(*) AS requests,
        SUM(upstream_reported_cost_nanos) AS reported_nanos,
        SUM(${METERED_NANOS}) FILTER (WHERE ${METERED_CURRENCY} = upstream_reported_currency) AS metered_nanos,
        COUNT(${METERED_NANOS}) FILTER (WHERE ${METERED_CURRENCY} = upstream_reported_currency) AS metered_requests,
        MIN(ts_end) - 1 AS from_ms, MAX(ts_end) AS to_ms
      FROM requests
      WHERE ${END_IN_WINDOW} ${upstream !== undefined ? 'AND upstream = ?' : ''}
        AND upstream_reported_cost_nanos IS NOT NULL AND upstream_reported_currency IS NOT NULL
      GROUP BY upstream, key_id, upstream_reported_currency
      ORDER BY upstream, key_id IS NULL, key_id, currency`,
    )
    .safeIntegers()
    .all(...params) as Array<Record<string, bigint | string | null>>;
  return rows.map((r) => ({
    upstream: r.upstream as string,
    key_id: (r.key_id as string | null) ?? null,
    currency: r.currency as string,
    requests: Number(r.requests as bigint),
    reported_nanos: (r.reported_nanos as bigint | null) ?? 0n,
    metered_nanos: (r.metered_nanos as bigint | null) ?? 0n,
    metered_requests: Number(r.metered_requests as bigint),
    fromMs: Number(r.from_ms as bigint),
    toMs: Number(r.to_ms as bigint),
  }));
}

/** One series of snapshots: one upstream, key and source. */
export interface SnapshotSeries {
  upstream: string;
  key_id: string | null;
  source: BillingSourceName;
  /** Oldest first: the last snapshot before the window (the baseline), then those inside it. */
  snapshots: BillingSnapshot[];
}

const SNAPSHOT_COLUMNS = `ts, upstream, key_id, source, currency, balance_nanos, daily_used_nanos,
  monthly_used_nanos, total_used_nanos, granted_nanos, daily_reset_at, monthly_reset_at`;

function toSnapshot(r: Record<string, bigint | string | null>): BillingSnapshot {
  const opt = (v: bigint | string | null | undefined): bigint | undefined =>
    typeof v === 'bigint' ? v : undefined;
  const ms = (v: bigint | string | null | undefined): number | undefined =>
    typeof v === 'bigint' ? Number(v) : undefined;
  return {
    ts: Number(r.ts as bigint),
    upstream: r.upstream as string,
    key_id: (r.key_id as string | null) ?? null,
    source: r.source as BillingSourceName,
    currency: r.currency as string,
    balance_nanos: opt(r.balance_nanos),
    daily_used_nanos: opt(r.daily_used_nanos),
    monthly_used_nanos: opt(r.monthly_used_nanos),
    total_used_nanos: opt(r.total_used_nanos),
    granted_nanos: opt(r.granted_nanos),
    daily_reset_at: ms(r.daily_reset_at),
    monthly_reset_at: ms(r.monthly_reset_at),
  };
}

/**
 * The snapshot series with a snapshot at or before `toMs`, each with its baseline (the latest
 * snapshot before `fromMs`, so a window starting between two polls still has a starting figure).
 */
export function querySnapshotSeries(
  db: Database.Database,
  fromMs: number,
  toMs: number,
  upstream?: string,
): SnapshotSeries[] {
  const hasTable = db
    .prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'billing_snapshots'`)
    .get();
  if (!hasTable) return [];
  const filter = upstream !== undefined ? 'AND upstream = ?' : '';
  const extra = upstream !== undefined ? [upstream] : [];
  const keys = db
    .prepare(
      `SELECT DISTINCT upstream, key_id, source FROM billing_snapshots WHERE ts <= ? ${filter}
       ORDER BY upstream, key_id, source`,
    )
    .all(toMs, ...extra) as Array<{ upstream: string; key_id: string | null; source: BillingSourceName }>;
  const same = 'upstream = ? AND key_id IS ? AND source = ?';
  const baseline = db
    .prepare(
      `SELECT ${SNAPSHOT_COLUMNS} FROM billing_snapshots WHERE ${same} AND ts < ? ORDER BY ts DESC, id DESC LIMIT 1`,
    )
    .safeIntegers();
  const inside = db
    .prepare(
      `SELECT ${SNAPSHOT_COLUMNS} FROM billing_snapshots WHERE ${same} AND ts >= ? AND ts <= ? ORDER BY ts, id`,
    )
    .safeIntegers();
  return keys.map((k) => {
    const base = baseline.get(k.upstream, k.key_id, k.source, fromMs) as
      Record<string, bigint | string | null> | undefined;
    const rest = inside.all(k.upstream, k.key_id, k.source, fromMs, toMs) as Array<
      Record<string, bigint | string | null>
    >;
    return { ...k, snapshots: [...(base ? [base] : []), ...rest].map(toSnapshot) };
  });
}
