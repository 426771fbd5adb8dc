/**
 * The write side of the audit log: owns the write connection and turns one job (a batch of rows,
 * captured bodies, a retention cutoff) into one result. It runs inside the writer thread
 * (`writer-thread.ts`), or on the main thread for ':memory:' and as the fallback when the thread
 * cannot start. No queue, no timers, no logging, no counters: the main thread keeps all of those
 * and decides from the result what to retry, drop, count and log (docs/audit.md, "Writer thread").
 */
import type Database from 'better-sqlite3';
import { fileIdentity, openWriterConnection, type BodyRow, type WriterConnection } from './connection.js';
import { clearServeMarker, writeServeMarker } from './marker.js';
import { pruneBefore } from './migrations.js';
import { createRedactor, redactAndTruncate, type Redactor } from './redact.js';
import { ROW_INDEX, type Row } from './row.js';

export interface WriterSetup {
  path: string;
  busyTimeoutMs: number;
  captureMaxBytes: number;
  redactPatterns: string[];
  /** This serve's `serve_running` marker: written into a DB reopened after a loss, cleared at close. */
  markerValue?: string;
  /** The DB's own key secret, copied into a DB reopened after a loss so key_ids stay stable. */
  dbSecret?: string;
  /**
   * "dev:ino" of the file the main thread has open. A writer that starts later (the thread, a
   * restart, the fallback) opens only that file: a different one at the path is a loss to report
   * first, so the main thread closes its handle before anything new is opened there.
   */
  expectFile?: string;
  /**
   * The writer thread lowers its own CPU priority (docs/audit.md, "Writer thread priority"): its
   * commits then yield the cores at once to the proxy's requests. Unset on the main thread.
   */
  lowPriority?: boolean;
}

/** A captured body as queued: the bytes (already capped) and the original lengths. */
export interface BodyJob {
  id: string;
  ts: number;
  request?: Uint8Array;
  response?: Uint8Array;
  requestBytes: number | null;
  responseBytes: number | null;
}

export interface WriteJob {
  rows: readonly Row[];
  bodies: BodyJob[];
  /**
   * These rows were in flight when the previous writer thread died: it may have committed them
   * before dying, so a duplicate id here is the row already stored, not a bad row.
   */
  resent: boolean;
  /** Delete request rows and bodies older than this (epoch ms). */
  pruneBefore?: number;
}

/** An error as it crosses the thread boundary: the SQLite code decides the failure kind. */
export interface WriteError {
  code?: string;
  message: string;
}

export interface BadRow {
  id: string | null;
  message: string;
}

export type RecordsOutcome =
  /** Committed, except `bad` (rejected by the DB; dropped) and `alreadyStored` (resent duplicates). */
  | { status: 'written'; bad: BadRow[]; alreadyStored: number }
  /**
   * The file at the path is not the one the connection wrote to (deleted or replaced): nothing of
   * this job counts as stored. The connection is closed; the next job reopens the path.
   */
  | { status: 'lost' }
  /** Nothing committed; `reopening` when the failure was opening a new file at the path. */
  | { status: 'failed'; error: WriteError; reopening: boolean };

export type BodiesOutcome =
  | { status: 'none' | 'written' }
  | { status: 'rejected'; message: string }
  | { status: 'failed'; error: WriteError };

export interface JobResult {
  /** A new DB was opened at the path before this job was written. */
  reopened?: { otherSecret: boolean };
  records: RecordsOutcome;
  bodies: BodiesOutcome;
  pruned?: { deleted: number } | { error: string };
}

/** SQLite error codes grouped into the failure kinds the main thread logs once each. */
export function failureKind(err: { code?: unknown }): string {
  const code = err.code;
  if (typeof code !== 'string') return 'error';
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) return 'locked';
  if (
    code.startsWith('SQLITE_READONLY') ||
    code.startsWith('SQLITE_CANTOPEN') ||
    code.startsWith('SQLITE_PERM')
  )
    return 'read_only';
  if (code.startsWith('SQLITE_FULL')) return 'full';
  if (
    code.startsWith('SQLITE_CONSTRAINT') ||
    code.startsWith('SQLITE_MISMATCH') ||
    code.startsWith('SQLITE_TOOBIG')
  )
    return 'invalid_row';
  if (code.startsWith('SQLITE_IOERR')) return 'io';
  return code.toLowerCase();
}

/** A problem with one row's values (not with the DB): dropping that row is right, retrying is not. */
function isRowError(err: unknown): boolean {
  return (
    failureKind(err as { code?: unknown }) === 'invalid_row' ||
    err instanceof TypeError ||
    err instanceof RangeError
  );
}

function toWriteError(err: unknown): WriteError {
  const code = (err as { code?: unknown }).code;
  return { code: typeof code === 'string' ? code : undefined, message: (err as Error).message };
}

const NO_BODIES: BodiesOutcome = { status: 'none' };

function failed(err: unknown, reopening: boolean): JobResult {
  return { records: { status: 'failed', error: toWriteError(err), reopening }, bodies: NO_BODIES };
}

/**
 * `open`: writing. `unopened`: the first open failed (a lock, say) at a path that still names the
 * main thread's file; retried at each job. `lossUnreported`: the file at the path is not that
 * file; the next job says so. `lost`: said; the next job opens a new file at the path.
 */
type WriterState = 'open' | 'unopened' | 'lossUnreported' | 'lost';

export class AuditWriter {
  private conn: WriterConnection | undefined;
  private state: WriterState = 'unopened';
  /** The last connection, closed or not: `db` stays a connection (a read there throws once closed). */
  private lastDb: Database.Database | undefined;
  private redactor: Redactor | undefined;

  /** `conn`: an already open connection (the main thread's own, when it writes itself). */
  constructor(
    private readonly setup: WriterSetup,
    conn?: WriterConnection,
  ) {
    if (conn) this.adopt(conn);
    else this.openExisting();
  }

  /** The write connection (the main thread reads through it when it writes itself). */
  get db(): Database.Database | undefined {
    return this.lastDb;
  }

  /** True when the connection no longer names the file at the path (or there is none since a loss). */
  detached(): boolean {
    if (this.state === 'unopened') return false;
    return this.conn === undefined || this.conn.detached();
  }

  run(job: WriteJob): JobResult {
    let reopened: JobResult['reopened'];
    if (this.state === 'unopened') {
      const err = this.openExisting();
      if (err !== undefined) return failed(err, false);
    }
    if (this.state === 'lossUnreported') {
      this.state = 'lost';
      return { records: { status: 'lost' }, bodies: NO_BODIES };
    }
    if (this.state === 'lost') {
      try {
        reopened = this.reopen();
      } catch (err) {
        return failed(err, true);
      }
    } else if (this.conn!.detached()) {
      // One stat before and one after the commit (a few µs per batch): rows are never written to a
      // deleted file once we can know it is deleted.
      return this.release();
    }
    const conn = this.conn!;
    let records: RecordsOutcome;
    try {
      records = this.writeRows(conn, job);
    } catch (err) {
      return { ...failed(err, false), reopened };
    }
    // Deleted during the batch: these rows may be in the unlinked file only. They stay queued for
    // the new file (a row may then be in both files, never in neither).
    if (conn.detached()) return { ...this.release(), reopened };
    const result: JobResult = { reopened, records, bodies: this.writeBodies(conn, job.bodies) };
    if (job.pruneBefore !== undefined) {
      try {
        result.pruned = { deleted: pruneBefore(conn.db, job.pruneBefore) };
      } catch (err) {
        result.pruned = { error: (err as Error).message };
      }
    }
    return result;
  }

  /** Runs SQL on the write connection (tests inject faults with it: `PRAGMA query_only`, `max_page_count`). */
  exec(sql: string): void {
    if (!this.conn) throw new Error('the audit writer has no open connection');
    this.conn.db.exec(sql);
  }

  /**
   * Clears our marker (when the file is still ours) and closes; never throws. `keepMarker`: a
   * writer handing over to another one (which keeps serving) leaves the marker set.
   */
  close(keepMarker = false): { markerCleared: boolean; error?: string } {
    const conn = this.conn;
    if (!conn) return { markerCleared: this.setup.markerValue === undefined };
    this.conn = undefined;
    this.state = 'lost';
    let markerCleared = this.setup.markerValue === undefined;
    if (!markerCleared && !keepMarker && !conn.detached()) {
      try {
        clearServeMarker(conn.db, this.setup.markerValue!);
        markerCleared = true;
      } catch {
        // Reported as not cleared: the main thread tries once more through its own connection.
      }
    }
    const error = conn.close();
    return error === undefined ? { markerCleared } : { markerCleared, error };
  }

  /**
   * Opens the file the main thread created and migrated, never creating one: a missing or other
   * file at the path is a loss to report first. Returns the error if it could not open (yet).
   */
  private openExisting(): unknown {
    const expected = this.setup.expectFile;
    if (expected !== undefined && fileIdentity(this.setup.path) !== expected) {
      this.state = 'lossUnreported';
      return undefined;
    }
    try {
      this.adopt(openWriterConnection(this.setup.path, this.setup.busyTimeoutMs, 'existing'));
      return undefined;
    } catch (err) {
      if (fileIdentity(this.setup.path) === undefined) this.state = 'lossUnreported';
      return this.state === 'lossUnreported' ? undefined : err;
    }
  }

  private adopt(conn: WriterConnection): void {
    this.conn = conn;
    this.lastDb = conn.db;
    this.state = 'open';
  }

  private release(): JobResult {
    this.conn?.close();
    this.conn = undefined;
    this.state = 'lost';
    return { records: { status: 'lost' }, bodies: NO_BODIES };
  }

  /**
   * The file at the path is gone or another one, and the old connections are closed (ours in
   * `release`, the main thread's before it sent this job: the last one to close removes the WAL
   * and SHM by name, which must not belong to the new file by then). Opens, migrates and marks a
   * fresh DB there with the same key secret.
   */
  private reopen(): { otherSecret: boolean } {
    const conn = openWriterConnection(this.setup.path, this.setup.busyTimeoutMs, 'afterLoss');
    this.adopt(conn);
    let otherSecret = false;
    try {
      if (this.setup.dbSecret !== undefined) {
        conn.db
          .prepare(`INSERT OR IGNORE INTO meta (key, value) VALUES ('key_secret', ?)`)
          .run(this.setup.dbSecret);
        const stored = conn.db.prepare(`SELECT value FROM meta WHERE key = 'key_secret'`).get() as
          { value: string } | undefined;
        otherSecret = stored?.value !== this.setup.dbSecret;
      }
      if (this.setup.markerValue !== undefined) writeServeMarker(conn.db, this.setup.markerValue);
    } catch {
      // A file that cannot take the secret or marker fails the batch that follows, which reports it.
    }
    return { otherSecret };
  }

  /**
   * All rows in one transaction. A row the DB rejects (a constraint, a wrong type) must not block
   * every row behind it: the batch is then redone row by row, still in one transaction, and only
   * the bad rows are left out. Any other error rolls the whole batch back and is thrown.
   */
  private writeRows(conn: WriterConnection, job: WriteJob): RecordsOutcome {
    if (job.rows.length === 0) return { status: 'written', bad: [], alreadyStored: 0 };
    try {
      conn.insertBatch(job.rows);
      return { status: 'written', bad: [], alreadyStored: 0 };
    } catch (err) {
      if (!isRowError(err)) throw err;
    }
    const bad: BadRow[] = [];
    let alreadyStored = 0;
    conn.db.transaction(() => {
      for (const row of job.rows) {
        try {
          conn.insertRow(row);
        } catch (err) {
          if (!isRowError(err)) throw err;
          if (job.resent && (err as { code?: unknown }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY')
            alreadyStored++;
          else
            bad.push({
              id: typeof row[ROW_INDEX.id] === 'string' ? (row[ROW_INDEX.id] as string) : null,
              message: (err as Error).message,
            });
        }
      }
    })();
    return { status: 'written', bad, alreadyStored };
  }

  /** Redaction and truncation happen here, off the request path (docs/audit.md, "Body capture"). */
  private writeBodies(conn: WriterConnection, bodies: readonly BodyJob[]): BodiesOutcome {
    if (bodies.length === 0) return NO_BODIES;
    try {
      this.redactor ??= createRedactor(this.setup.redactPatterns);
      const redactor = this.redactor;
      const max = this.setup.captureMaxBytes;
      const text = (b: Uint8Array | undefined): ReturnType<typeof redactAndTruncate> | undefined =>
        b ? redactAndTruncate(Buffer.from(b.buffer, b.byteOffset, b.byteLength), max, redactor) : undefined;
      const rows = bodies.map((b): BodyRow => {
        const req = text(b.request);
        const res = text(b.response);
        return {
          id: b.id,
          ts: b.ts,
          request: req?.text ?? null,
          response: res?.text ?? null,
          requestBytes: b.requestBytes,
          responseBytes: b.responseBytes,
          truncated: Boolean(req?.truncated || res?.truncated),
        };
      });
      conn.insertBodies(rows);
      return { status: 'written' };
    } catch (err) {
      // Bodies are best-effort evidence: a batch the DB rejects is dropped, not retried forever.
      if (isRowError(err)) return { status: 'rejected', message: (err as Error).message };
      return { status: 'failed', error: toWriteError(err) };
    }
  }
}
