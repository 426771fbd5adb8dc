/**
 * What the console's reader thread (reader-thread.ts) runs: its read-only connection to the audit
 * log, and the named operations the API asks for, each a pure function of that connection and of
 * plain arguments. Every answer is JSON-able, because it crosses the thread boundary as JSON text:
 * money as exact decimal text or integer-nanos strings (never a float), no BigInt, no undefined
 * (null instead). `JSON.stringify` throws on a BigInt, so a query that forgot to convert one fails
 * loudly instead of losing precision.
 */
import type Database from 'better-sqlite3';
import { openSqlite } from '../sinks/audit/sqlite.js';
import { buildReport, reportToJson, type ReportOptions } from '../cli/report.js';
import { reconciliationToJson } from '../reconcile/format.js';
import { buildReconciliation, type ReconcileOptions } from '../reconcile/reconcile.js';
import { trackFile } from '../sinks/audit/connection.js';
import {
  getRequest,
  listRequests,
  querySpendSeries,
  queryUnpricedModels,
  type CapturedBodies,
  type RequestFilter,
  type SpendDimension,
  type StoredRow,
  type UnpricedModel,
} from './queries.js';

/** `tokenmeter report --format json` as an object (`reportToJson`). */
export type ReportJson = Record<string, unknown>;

/** One named operation and its arguments, as the main thread posts it. */
export type ReaderQuery =
  | { op: 'listRequests'; filter: RequestFilter; limit: number; before?: string }
  | { op: 'getRequest'; id: string }
  /** The spend page's series and, for the same window, `report`'s groups and totals. */
  | { op: 'spend'; fromMs: number; toMs: number; bucketMs: number; by?: SpendDimension }
  | { op: 'report'; options: ReportOptions }
  | { op: 'unpricedModels'; fromMs: number; toMs: number; limit: number }
  /** `tokenmeter reconcile --format json` for the window (docs/reconcile.md). */
  | { op: 'reconcile'; options: ReconcileOptions };

export type ReaderOp = ReaderQuery['op'];

/** A spend point as it crosses: `cost_nanos` an exact integer string (SQL sums are BigInt). */
export interface SpendPointJson {
  t: number;
  key: string | null;
  currency: string;
  cost_nanos: string;
  requests: number;
}

/** What each operation answers (null where the query functions answer undefined). */
export interface ReaderAnswers {
  /** null: `before` names no row. Rows are read without safeIntegers: the writer stores safe integers only. */
  listRequests: StoredRow[] | null;
  getRequest: { row: StoredRow; bodies: CapturedBodies | null } | null;
  spend: { points: SpendPointJson[]; report: ReportJson };
  report: ReportJson;
  unpricedModels: UnpricedModel[];
  reconcile: Record<string, unknown>;
}

/** Runs one operation; throws what the query throws. */
export function runOperation(db: Database.Database, q: ReaderQuery): ReaderAnswers[ReaderOp] {
  switch (q.op) {
    case 'listRequests':
      return listRequests(db, q.filter, q.limit, q.before) ?? null;
    case 'getRequest':
      return getRequest(db, q.id) ?? null;
    case 'spend': {
      const points = querySpendSeries(db, q).map((p) => ({ ...p, cost_nanos: p.cost_nanos.toString() }));
      // Totals per currency: `tokenmeter report`'s own query and JSON for the same window.
      const report = reportToJson(
        buildReport(db, { fromMs: q.fromMs, toMs: q.toMs, by: q.by ? [q.by] : [] }),
      );
      return { points, report };
    }
    case 'report':
      return reportToJson(buildReport(db, q.options));
    case 'unpricedModels':
      return queryUnpricedModels(db, q.fromMs, q.toMs, q.limit);
    case 'reconcile':
      return reconciliationToJson(buildReconciliation(db, q.options));
  }
}

/**
 * The reader thread's own connection, opened on first use (WAL lets it read while the writer
 * thread writes). Read-only at the SQLite level (`readonly: true`), so no console code path can
 * change the log even by mistake. When the path no longer names the file it opened (deleted or
 * replaced while serving; the writer then reopens a new file there) it is reopened, like the audit
 * sink's own read connection.
 */
export class ReadOnlyAudit {
  private conn: { db: Database.Database; detached(): boolean } | undefined;

  constructor(
    private readonly path: string,
    private readonly busyTimeoutMs: number,
  ) {}

  /** The connection, opened (or reopened) now. Throws if it cannot open. */
  db(): Database.Database {
    if (this.conn?.detached()) this.close();
    if (!this.conn) {
      const db = openSqlite(this.path, { readonly: true, fileMustExist: true });
      try {
        db.pragma(`busy_timeout = ${this.busyTimeoutMs}`);
      } catch (err) {
        db.close();
        throw err;
      }
      const file = trackFile(this.path);
      this.conn = { db, detached: () => file.detached() };
    }
    return this.conn.db;
  }

  close(): void {
    const c = this.conn;
    this.conn = undefined;
    try {
      c?.db.close();
    } catch {
      // Closing a read-only connection can only fail on a file already gone; nothing to keep.
    }
  }
}
