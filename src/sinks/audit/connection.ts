/**
 * The serve writer's SQLite connection: the prepared statements, and the identity (device and
 * inode) of the file it opened, so the writer can tell when the path no longer names that file
 * (deleted or replaced while serving: SQLite keeps writing to the unlinked inode, and every later
 * row would be lost without an error).
 */
import { existsSync, rmSync, statSync } from 'node:fs';
import type Database from 'better-sqlite3';
import { openSqlite } from './sqlite.js';
import { REQUEST_COLUMN_NAMES, openDatabase, quoteIdent } from './migrations.js';
import type { Row } from './row.js';

export interface BodyRow {
  id: string;
  ts: number;
  request: string | null;
  response: string | null;
  requestBytes: number | null;
  responseBytes: number | null;
  truncated: boolean;
}

export interface WriterConnection {
  readonly db: Database.Database;
  /** All rows in one transaction. */
  insertBatch(rows: readonly Row[]): void;
  insertRow(row: Row): void;
  insertBodies(rows: readonly BodyRow[]): void;
  /**
   * True when the path no longer names the file this connection writes to. One `stat` (a few
   * µs): cheap enough to run around every batch. False for ':memory:' and when stat fails for
   * another reason than a missing file (we cannot tell, so we keep writing).
   */
  detached(): boolean;
  /** Closes without throwing; returns the error message if closing failed. */
  close(): string | undefined;
}

type FileId = { dev: bigint; ino: bigint };

function fileId(path: string): FileId | undefined | 'unknown' {
  try {
    const st = statSync(path, { bigint: true, throwIfNoEntry: false });
    return st ? { dev: st.dev, ino: st.ino } : undefined;
  } catch (err) {
    // ENOTDIR: a path component is no longer a directory; the file is gone as far as we can tell.
    return (err as NodeJS.ErrnoException).code === 'ENOTDIR' ? undefined : 'unknown';
  }
}

/** "dev:ino" of the file at `path`, or undefined when there is none (or it cannot be told). */
export function fileIdentity(path: string): string | undefined {
  const id = path === ':memory:' ? undefined : fileId(path);
  return id === undefined || id === 'unknown' ? undefined : `${id.dev}:${id.ino}`;
}

/** Tells whether `path` still names the file that was there when this was created (see `detached`). */
export function trackFile(path: string): { detached(): boolean } {
  if (path === ':memory:') return { detached: () => false };
  const opened = fileId(path);
  return {
    detached() {
      if (opened === 'unknown') return false;
      const now = fileId(path);
      if (now === 'unknown') return false;
      if (now === undefined || opened === undefined) return true;
      return now.dev !== opened.dev || now.ino !== opened.ino;
    },
  };
}

/**
 * A connection that only reads (budgets and `report`-style queries on the main thread while a
 * worker thread owns the writes): `query_only`, and the short busy timeout of the serve writer so
 * a read never stalls the event loop for long. It never migrates: the writer already did.
 */
export interface ReadConnection {
  readonly db: Database.Database;
  detached(): boolean;
  close(): string | undefined;
}

/** Turns an open connection into the main thread's read connection. */
export function asReadConnection(db: Database.Database, path: string, busyTimeoutMs: number): ReadConnection {
  db.pragma(`busy_timeout = ${busyTimeoutMs}`);
  db.pragma('query_only = ON');
  const file = trackFile(path);
  return { db, detached: () => file.detached(), close: () => closeQuietly(db) };
}

/** Opens a read connection to the existing file at `path` (after the writer reopened it). */
export function openReadConnection(path: string, busyTimeoutMs: number): ReadConnection {
  return asReadConnection(openSqlite(path, { fileMustExist: true }), path, busyTimeoutMs);
}

/** The pragmas of `openDatabase` that are per connection (WAL is a property of the file). */
function openExisting(path: string, busyTimeoutMs: number): Database.Database {
  const db = openSqlite(path, { fileMustExist: true });
  try {
    db.pragma(`busy_timeout = ${busyTimeoutMs}`);
    db.pragma('synchronous = NORMAL');
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

function closeQuietly(db: Database.Database): string | undefined {
  try {
    // Closing the last connection checkpoints into the (possibly unlinked) file and removes the
    // WAL/SHM by name, so a DB reopened at the path starts clean.
    db.close();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * How the writer connection opens its file: `new` creates and migrates it if needed (at start,
 * on the main thread); `afterLoss` does the same at a path whose file was deleted, after removing
 * a WAL or SHM file left there without its main file (it belongs to the deleted DB, and SQLite
 * would otherwise replay that foreign WAL into the new, empty file); `existing` opens the file
 * the main thread already migrated, without migrating (no write lock needed, so a lock held by
 * another process cannot make the writer thread wait out the 5 s migration timeout).
 */
export type OpenMode = 'new' | 'afterLoss' | 'existing';

/** Opens the writer connection at `path` (see `OpenMode`). */
export function openWriterConnection(
  path: string,
  busyTimeoutMs: number,
  mode: OpenMode = 'new',
): WriterConnection {
  const memory = path === ':memory:';
  if (mode === 'afterLoss' && !memory && !existsSync(path)) {
    for (const suffix of ['-wal', '-shm', '-journal']) rmSync(path + suffix, { force: true });
  }
  const db = mode === 'existing' ? openExisting(path, busyTimeoutMs) : openDatabase(path, { busyTimeoutMs });
  const file = trackFile(path);
  const columns = REQUEST_COLUMN_NAMES.map(quoteIdent).join(', ');
  // Positional parameters: a Row is the values in REQUEST_COLUMN_NAMES order (row.ts).
  const params = REQUEST_COLUMN_NAMES.map(() => '?').join(', ');
  const insert = db.prepare(`INSERT INTO requests (${columns}) VALUES (${params})`);
  // Values as arguments, not one array: better-sqlite3 reads an array's elements through V8's generic
  // property lookup, its arguments directly. Measured on a 43-column row: 7.6–8.3 -> 6.8–7.0 µs per
  // insert on the writer thread (issue 11).
  const insertBatch = db.transaction((rows: readonly Row[]) => {
    for (const row of rows) insert.run(...row);
  });
  const insertBody = db.prepare(
    `INSERT OR REPLACE INTO bodies (id, ts, request, response, request_bytes, response_bytes, truncated)
     VALUES (?, ?, ?, ?, ?, ?, ?)`,
  );
  const insertBodies = db.transaction((rows: readonly BodyRow[]) => {
    for (const b of rows)
      insertBody.run(b.id, b.ts, b.request, b.response, b.requestBytes, b.responseBytes, b.truncated ? 1 : 0);
  });

  return {
    db,
    insertBatch: (rows) => insertBatch(rows),
    insertRow: (row) => void insert.run(...row),
    insertBodies: (rows) => insertBodies(rows),
    detached: () => file.detached(),
    close: () => closeQuietly(db),
  };
}
