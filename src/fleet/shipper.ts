/**
 * The fleet audit shipper (issue 14, DESIGN.md §13, docs/fleet.md): tails the local SQLite audit
 * log, which stays this host's source of truth, and upserts its rows into the fleet Postgres.
 *
 * - Order: SQLite `rowid`. The writer inserts batches whose `ts_start` order is not insertion
 *   order (a long stream ends after a short one), but rowids grow with every insert and a batch
 *   commits whole, so "rowid > mark" never skips a row that commits later.
 * - Exactly once: each batch is one Postgres transaction of `INSERT … ON CONFLICT (id) DO UPDATE`;
 *   the mark (./mark.ts) advances only after COMMIT. A crash between the two re-ships the batch,
 *   which overwrites the same rows with the same values.
 * - Failures: counted, retried with exponential backoff (capped at 30 s); rows wait in SQLite.
 *   Nothing here runs on the request path: a timer, a read-only SQLite connection, a pg pool.
 * - A Postgres schema newer than this code stops the shipper (logged); serve keeps serving.
 * - Retention (DESIGN.md §6 on the fleet side): every `retentionIntervalMs` the shipper deletes
 *   Postgres rows older than `retention_days` in bounded batches (./queries.ts). Every sidecar does
 *   it; the deletes are idempotent and skip rows another sidecar is deleting (SKIP LOCKED).
 */
import type Database from 'better-sqlite3';
import pg from 'pg';
import type { FleetSettings } from '../config/types.js';
import { TokenmeterError } from '../errors.js';
import type { Logger } from '../log.js';
import { DAY_MS, quoteIdent, REQUEST_COLUMN_NAMES, REQUEST_COLUMNS } from '../sinks/audit/migrations.js';
import { openSqlite } from '../sinks/audit/sqlite.js';
import type { FleetShipMetrics } from '../sinks/metrics.js';
import { markPathFor, readMark, validateMark, writeMark, type ShipMark } from './mark.js';
import { migratePg, PG_REQUEST_COLUMNS } from './pg-schema.js';
import { pruneFleetBefore } from './queries.js';
import { redactSecret, redactUrl } from './redact.js';

export const MAX_BACKOFF_MS = 30_000;

export interface ShipperOptions {
  /** The SQLite audit log file (not ':memory:': another connection cannot see it). */
  dbPath: string;
  fleet: FleetSettings;
  metrics: FleetShipMetrics;
  log: Logger;
  /** Default `<dbPath>.fleet-ship.json`. */
  markPath?: string;
  maxBackoffMs?: number;
  /** Delete fleet rows older than this many days (serve passes `retention_days`); 0/absent: never. */
  retentionDays?: number;
  /** How often retention runs; default hourly, like the local log's. */
  retentionIntervalMs?: number;
}

export const FLEET_RETENTION_INTERVAL_MS = 3_600_000;

export type ShipperState = 'starting' | 'shipping' | 'backing-off' | 'refused' | 'stopped';

/** What the console's fleet page shows about this host's own shipping (docs/console.md). */
export interface ShipperStatus {
  state: ShipperState;
  /** Rows committed to Postgres by this shipper since it started. */
  shipped: number;
  /** Local rows not yet in Postgres as of the last pass (the lag gauge); undefined before one. */
  lagRows: number | undefined;
  /** Failed passes in a row; 0 once one succeeds. */
  failures: number;
  /** Epoch ms of the last pass that reached Postgres (shipped a batch, or found nothing new). */
  lastSuccessMs: number | undefined;
}

export interface Shipper {
  state(): ShipperState;
  /** Rows committed to Postgres by this shipper since it started. */
  shipped(): number;
  status(): ShipperStatus;
  /** Stops the loop after the batch in flight (if any) and closes the pool. */
  stop(): Promise<void>;
}

const SELECT_AFTER = `SELECT rowid AS rowid_, ${REQUEST_COLUMN_NAMES.map(quoteIdent).join(', ')}
  FROM requests WHERE rowid > ? ORDER BY rowid LIMIT ?`;

const UPSERT_PREFIX = `INSERT INTO requests (${PG_REQUEST_COLUMNS.map(quoteIdent).join(', ')}) VALUES `;
// DO UPDATE, not DO NOTHING: a re-shipped row (mark reset, or a future re-ship after
// `tokenmeter reprice`) converges to what the local log says now.
const UPSERT_SUFFIX = ` ON CONFLICT (id) DO UPDATE SET ${PG_REQUEST_COLUMNS.filter((c) => c !== 'id')
  .map((c) => `${quoteIdent(c)} = EXCLUDED.${quoteIdent(c)}`)
  .join(', ')}`;

type SqliteRow = Record<string, bigint | string | number | null | Buffer>;

/** One SQLite row as Postgres parameters: integers as exact decimal strings, 0/1 as booleans. */
function toParams(row: SqliteRow, host: string): Array<string | boolean | null> {
  const out: Array<string | boolean | null> = REQUEST_COLUMN_NAMES.map((c) => {
    const v = row[c];
    if (v === null || v === undefined) return null;
    if (REQUEST_COLUMNS[c].kind === 'bool') return Number(v) !== 0;
    return typeof v === 'string' ? v : String(v);
  });
  out.push(host);
  return out;
}

function upsertSql(rows: number): string {
  const n = PG_REQUEST_COLUMNS.length;
  const tuples: string[] = [];
  for (let r = 0; r < rows; r++) {
    tuples.push(`(${PG_REQUEST_COLUMNS.map((_c, i) => `$${r * n + i + 1}`).join(', ')})`);
  }
  return UPSERT_PREFIX + tuples.join(', ') + UPSERT_SUFFIX;
}

export function startShipper(opts: ShipperOptions): Shipper {
  return new FleetShipper(opts);
}

class FleetShipper implements Shipper {
  private current: ShipperState = 'starting';
  private shippedRows = 0;
  private failures = 0;
  private lagRows: number | undefined;
  private lastSuccessMs: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  private retentionTimer: NodeJS.Timeout | undefined;
  private pruning: Promise<void> | undefined;
  private running: Promise<void> | undefined;
  private readonly pool: pg.Pool;
  private sqlite: Database.Database | undefined;
  private mark: ShipMark | undefined;
  private migrated = false;
  private readonly markPath: string;
  private readonly url: string;

  constructor(private readonly opts: ShipperOptions) {
    this.url = opts.fleet.postgres.url;
    this.markPath = opts.markPath ?? markPathFor(opts.dbPath);
    this.pool = new pg.Pool({
      connectionString: this.url,
      max: opts.fleet.postgres.poolSize,
      connectionTimeoutMillis: 5_000,
      idleTimeoutMillis: 30_000,
    });
    // An idle client losing its server emits here; unhandled, it would crash the process.
    this.pool.on('error', (err) => this.logFailure('fleet Postgres connection lost', err));
    // ... and so would a checked-out client losing it between queries; a query in flight still
    // rejects, and that failure is counted where it happens.
    this.pool.on('connect', (c) => c.on('error', () => undefined));
    opts.log.info('fleet shipper started', { postgres: redactUrl(this.url), host: opts.fleet.host });
    this.schedule(0);
    if ((opts.retentionDays ?? 0) > 0) {
      this.retentionTimer = setInterval(() => {
        this.pruning ??= this.prune().finally(() => (this.pruning = undefined));
      }, opts.retentionIntervalMs ?? FLEET_RETENTION_INTERVAL_MS);
      this.retentionTimer.unref();
    }
  }

  /** One retention pass; failures are logged and retried at the next interval. */
  private async prune(): Promise<void> {
    if (!this.migrated || this.current === 'stopped') return; // no table yet, or shutting down
    const cutoff = Date.now() - this.opts.retentionDays! * DAY_MS;
    try {
      const client = await this.pool.connect();
      try {
        const deleted = await pruneFleetBefore(client, cutoff);
        if (deleted > 0) this.opts.log.info('fleet retention pruned rows', { deleted });
      } finally {
        client.release();
      }
    } catch (err) {
      this.logFailure('fleet retention failed; retried at the next interval', err);
    }
  }

  state(): ShipperState {
    return this.current;
  }

  shipped(): number {
    return this.shippedRows;
  }

  status(): ShipperStatus {
    return {
      state: this.current,
      shipped: this.shippedRows,
      lagRows: this.lagRows,
      failures: this.failures,
      lastSuccessMs: this.lastSuccessMs,
    };
  }

  async stop(): Promise<void> {
    if (this.current === 'stopped') return;
    const wasRunning = this.running;
    this.current = 'stopped';
    clearTimeout(this.timer);
    clearInterval(this.retentionTimer);
    await wasRunning?.catch(() => undefined);
    await this.pruning;
    await this.pool.end().catch(() => undefined);
    this.sqlite?.close();
  }

  private schedule(ms: number): void {
    if (this.current === 'stopped' || this.current === 'refused') return;
    this.timer = setTimeout(() => {
      this.running = this.tick().finally(() => (this.running = undefined));
    }, ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    let next = this.opts.fleet.postgres.shipIntervalMs;
    try {
      const full = await this.shipBatch();
      if (this.current === 'stopped') return;
      this.failures = 0;
      this.lastSuccessMs = Date.now();
      this.current = 'shipping';
      if (full) next = 0; // behind: keep going without waiting
    } catch (err) {
      if (this.current === 'stopped') return;
      if (err instanceof TokenmeterError && err.code === 'DB_SCHEMA_TOO_NEW') {
        this.current = 'refused';
        this.opts.metrics.failure();
        this.opts.log.error('fleet shipper not started', { error: redactSecret(err.message, this.url) });
        return;
      }
      this.failures++;
      this.current = 'backing-off';
      this.opts.metrics.failure();
      this.logFailure('fleet shipping failed; rows stay in the local audit log and are retried', err);
      next = Math.min(
        this.opts.maxBackoffMs ?? MAX_BACKOFF_MS,
        Math.max(100, this.opts.fleet.postgres.shipIntervalMs) * 2 ** (this.failures - 1),
      );
    }
    this.updateLag();
    this.schedule(next);
  }

  /** Ships one batch; true when it was full (more rows are probably waiting). */
  private async shipBatch(): Promise<boolean> {
    const db = this.openLocal();
    // Read the mark first so the lag gauge is right even while Postgres is unreachable.
    const mark = (this.mark ??= validateMark(db, readMark(this.markPath)));
    if (!this.migrated) {
      const client = await this.pool.connect();
      try {
        await migratePg(client);
        this.migrated = true;
      } finally {
        client.release();
      }
    }
    const limit = this.opts.fleet.postgres.batchSize;
    const rows = db.prepare(SELECT_AFTER).safeIntegers(true).all(mark.rowid, limit) as SqliteRow[];
    if (rows.length === 0) return false;
    const params = rows.flatMap((r) => toParams(r, this.opts.fleet.host));
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(upsertSql(rows.length), params);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
    const last = rows[rows.length - 1]!;
    const next: ShipMark = { rowid: last.rowid_ as bigint, id: last.id as string };
    await writeMark(this.markPath, next);
    this.mark = next;
    this.shippedRows += rows.length;
    this.opts.metrics.shipped(rows.length);
    return rows.length === limit;
  }

  /** The read-only connection, opened on first use: serve's writer creates the file first. */
  private openLocal(): Database.Database {
    if (this.sqlite === undefined) {
      const db = openSqlite(this.opts.dbPath, { readonly: true, fileMustExist: true });
      db.pragma('busy_timeout = 0');
      this.sqlite = db;
    }
    return this.sqlite;
  }

  private updateLag(): void {
    if (this.sqlite === undefined || this.mark === undefined) return;
    try {
      const r = this.sqlite
        .prepare('SELECT count(*) AS n FROM requests WHERE rowid > ?')
        .get(this.mark.rowid) as {
        n: number;
      };
      this.lagRows = r.n;
      this.opts.metrics.lag(r.n);
    } catch {
      // The gauge keeps its last value; the next tick tries again.
    }
  }

  private logFailure(msg: string, err: unknown): void {
    const text = err instanceof Error ? err.message : String(err);
    this.opts.log.warn(msg, {
      postgres: redactUrl(this.url),
      error: redactSecret(text, this.url),
      failures: this.failures,
    });
  }
}
