/**
 * Fleet reads and retention over the Postgres `requests` table (docs/fleet.md, issue 14): the same
 * report query as the local log (src/sinks/audit/queries.ts `reportSql`) in the Postgres dialect,
 * and bounded-batch deletion of rows older than the retention window.
 *
 * Exactness: `sum(bigint)` is `numeric` in Postgres and node-postgres returns numeric and bigint as
 * text, so every nanos and token sum reaches BigInt without passing through a float.
 */
import type pg from 'pg';
import {
  reportRowFromSql,
  reportSql,
  spendByDaySql,
  type ReportDialect,
  type ReportQuery,
  type ReportRow,
} from '../sinks/audit/queries.js';

/**
 * `day` from integer milliseconds without a float (timestamp without time zone = UTC), and text
 * ordered by bytes (`COLLATE "C"`) so groups come out in the same order as SQLite's.
 */
export const PG_REPORT_DIALECT: ReportDialect = {
  dimension: {
    app: 'app',
    model: 'request_model',
    upstream: 'upstream',
    day: `to_char(TIMESTAMP 'epoch' + ts_start * INTERVAL '1 millisecond', 'YYYY-MM-DD')`,
    host: 'host',
  },
  bounds: ['$1', '$2'],
  order: (e) => `${e} COLLATE "C" NULLS LAST`,
};

type PgRow = Record<string, string | number | null>;

export async function queryFleetReport(client: pg.ClientBase, q: ReportQuery): Promise<ReportRow[]> {
  const r = await client.query<PgRow>(reportSql(PG_REPORT_DIALECT, q.by), [q.fromMs, q.toMs]);
  return r.rows.map((row) => reportRowFromSql(row, q.by));
}

export async function queryFleetSpendByDay(
  client: pg.ClientBase,
  fromMs: number,
  toMs: number,
): Promise<Array<{ day: string; currency: string; cost_nanos: bigint }>> {
  const r = await client.query<{ day: string; currency: string; cost_nanos: string }>(
    spendByDaySql(PG_REPORT_DIALECT),
    [fromMs, toMs],
  );
  return r.rows.map((row) => ({ day: row.day, currency: row.currency, cost_nanos: BigInt(row.cost_nanos) }));
}

/** What one host has shipped: its rows in Postgres and its newest record's start. */
export interface FleetHostRows {
  host: string;
  rows: number;
  /** Epoch ms of the newest `ts_start` (a sidecar that stopped shipping falls behind the others). */
  newestMs: number;
}

/**
 * Every host's rows in the fleet table, in byte order of the name. Over the whole table, not a
 * window: a host that stopped shipping last week must still show up (an index-only scan of
 * `(host, ts_start)`; callers bound it with a statement timeout).
 */
export async function queryFleetHosts(client: pg.ClientBase): Promise<FleetHostRows[]> {
  const r = await client.query<{ host: string; rows: string; newest: string }>(
    `SELECT host, count(*) AS rows, max(ts_start) AS newest
     FROM requests GROUP BY host ORDER BY host COLLATE "C"`,
  );
  // bigint arrives as text; row counts and epoch ms are far below 2^53.
  return r.rows.map((row) => ({ host: row.host, rows: Number(row.rows), newestMs: Number(row.newest) }));
}

/** Rows deleted per statement: short transactions, so shipping sidecars never wait long on locks. */
export const PRUNE_BATCH_ROWS = 5_000;

/**
 * Deletes fleet rows with `ts_start` before the cutoff, in batches of `batchRows` (each its own
 * statement, autocommitted) until a batch comes back short. Uses the `(ts_start)` index.
 */
export async function pruneFleetBefore(
  client: pg.ClientBase,
  cutoffMs: number,
  batchRows: number = PRUNE_BATCH_ROWS,
): Promise<number> {
  let total = 0;
  for (;;) {
    const r = await client.query(
      `DELETE FROM requests WHERE id IN (
         SELECT id FROM requests WHERE ts_start < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`,
      [cutoffMs, batchRows],
    );
    const n = r.rowCount ?? 0;
    total += n;
    if (n < batchRows) return total;
  }
}
