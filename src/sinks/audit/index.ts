/**
 * The SQLite audit log sink (DESIGN.md §6): one row per request record, the source of truth for
 * spend. `write` only enqueues; a bounded queue is flushed in batched transactions off the
 * caller's stack. When the DB is slow, locked, read-only or full, traffic is unaffected: rows stay
 * queued and are retried with capped exponential backoff, and when the queue is full the oldest
 * records are dropped and counted (`tokenmeter_audit_dropped_total`).
 */
import type Database from 'better-sqlite3';
import type { RequestRecord } from '../../record.js';
import type { Logger } from '../../log.js';
import type { HealthCounters, Sink } from '../types.js';
import {
  DAY_MS,
  REQUEST_COLUMNS,
  REQUEST_COLUMN_NAMES,
  ensureKeySecret,
  openDatabase,
  pruneBefore,
  quoteIdent,
} from './migrations.js';
import { WINDOW_MARGIN, createRedactor, redactAndTruncate } from './redact.js';
import { RingQueue } from './ring-queue.js';

export interface AuditLogOptions {
  /** File path or ':memory:'. */
  path: string;
  queueSize: number;
  batchSize: number;
  flushIntervalMs: number;
  retentionDays: number;
  captureBodies: boolean;
  captureMaxBytes: number;
  redactPatterns: string[];
  keySalt?: string;
  health: HealthCounters;
  log: Logger;
  /** Upper bound for `close()` to keep retrying a failing DB before counting the rest as dropped. Default 5000. */
  closeTimeoutMs?: number;
  /** First retry delay after a failed flush, doubled per failure up to `maxBackoffMs`. Defaults 100 / 5000. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Clock, for tests of retention. */
  now?: () => number;
}

export interface AuditSink extends Sink {
  /** The HMAC secret for key fingerprints: `keySalt` if configured, else the DB's own. */
  readonly keySecret: string;
  /** The writer's connection, for read queries on the same process (budgets). */
  readonly db: Database.Database;
  /** Writes everything queued now (ignoring backoff); resolves without throwing. */
  flush(): Promise<void>;
  /** Queues captured bodies (only when capture is on); never touches the DB on the caller's stack. */
  capture(recordId: string, request?: Buffer, response?: Buffer): void;
}

/** Retention runs at start and then hourly. */
const RETENTION_INTERVAL_MS = 3_600_000;
/** The serve connection never waits long on a lock: the wait would stall the event loop. */
const WRITER_BUSY_TIMEOUT_MS = 50;
/** Captured bodies wait in memory at most this many bytes; beyond it the oldest are dropped. */
const MAX_PENDING_BODY_BYTES = 16 * 1024 * 1024;

type Row = Record<string, string | number | bigint | null>;

interface PendingBody {
  id: string;
  ts: number;
  request?: Buffer;
  response?: Buffer;
  requestBytes: number | null;
  responseBytes: number | null;
}

/** SQLite error codes grouped into the failure kinds we log once each. */
function failureKind(err: unknown): string {
  const code = (err as { code?: unknown }).code;
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
  return failureKind(err) === 'invalid_row' || err instanceof TypeError || err instanceof RangeError;
}

/** RequestRecord → bound parameters: booleans as 0/1, everything else as is (null stays null). */
export function recordToRow(record: RequestRecord): Row {
  const row: Row = {};
  for (const name of REQUEST_COLUMN_NAMES) {
    const value = record[name];
    if (REQUEST_COLUMNS[name].kind === 'bool')
      row[name] = value === null || value === undefined ? null : value ? 1 : 0;
    else row[name] = (value ?? null) as string | number | null;
  }
  return row;
}

/** A stored row → RequestRecord (the inverse of `recordToRow`). */
export function rowToRecord(row: Record<string, unknown>): RequestRecord {
  const out: Record<string, unknown> = {};
  for (const name of REQUEST_COLUMN_NAMES) {
    const value = row[name] ?? null;
    out[name] = REQUEST_COLUMNS[name].kind === 'bool' && value !== null ? value === 1 || value === 1n : value;
  }
  return out as unknown as RequestRecord;
}

export function openAuditLog(opts: AuditLogOptions): AuditSink {
  const { health, log } = opts;
  const now = opts.now ?? Date.now;
  const queueSize = Math.max(1, Math.floor(opts.queueSize));
  const batchSize = Math.max(1, Math.floor(opts.batchSize));
  const minBackoff = opts.minBackoffMs ?? 100;
  const maxBackoff = opts.maxBackoffMs ?? 5000;
  const redactor = opts.captureBodies ? createRedactor(opts.redactPatterns) : undefined;

  // Opening and migrating happen at startup: errors here (schema too new, unreadable file) are
  // startup errors for the caller to report, not runtime failures to swallow.
  const db = openDatabase(opts.path, { busyTimeoutMs: WRITER_BUSY_TIMEOUT_MS });
  const keySecret = opts.keySalt ?? ensureKeySecret(db);

  const columns = REQUEST_COLUMN_NAMES.map(quoteIdent).join(', ');
  const params = REQUEST_COLUMN_NAMES.map((c) => `@${c}`).join(', ');
  const insert = db.prepare(`INSERT INTO requests (${columns}) VALUES (${params})`);
  const insertBatch = db.transaction((rows: readonly Row[]) => {
    for (const row of rows) insert.run(row);
  });
  const insertBody = db.prepare(
    `INSERT OR REPLACE INTO bodies (id, ts, request, response, request_bytes, response_bytes, truncated)
     VALUES (?, ?, ?, ?, ?, ?, ?)`,
  );

  const queue = new RingQueue<Row>(queueSize);
  const bodies: PendingBody[] = [];
  let pendingBodyBytes = 0;
  let backoffMs = 0;
  let retryAt = 0;
  let closed = false;
  let flushScheduled = false;
  const failing = new Set<string>();

  const reportDepth = (): void => health.auditQueueDepth(queue.length);

  const dropped = (count: number, why: string): void => {
    if (count <= 0) return;
    health.auditDropped(count);
    log.once(`audit:dropped:${why}`, 'error', 'audit log dropped records', { reason: why, count });
  };

  const onFailure = (err: unknown): void => {
    const kind = failureKind(err);
    health.internalError('audit');
    if (!failing.has(kind)) {
      failing.add(kind);
      log.error('audit log write failed; records stay queued and are retried', {
        kind,
        error: (err as Error).message,
        queued: queue.length,
      });
    }
    backoffMs = backoffMs === 0 ? minBackoff : Math.min(backoffMs * 2, maxBackoff);
    retryAt = now() + backoffMs;
  };

  const onSuccess = (): void => {
    if (failing.size > 0) {
      log.info('audit log writes recovered', { kinds: [...failing].join(',') });
      failing.clear();
    }
    backoffMs = 0;
    retryAt = 0;
  };

  /**
   * One row that cannot be stored (a constraint, a wrong type) must not block every row behind
   * it: the batch is retried row by row and only the bad rows are dropped and counted.
   */
  const writeRowsOneByOne = (rows: readonly Row[]): void => {
    let bad = 0;
    for (const row of rows) {
      try {
        insert.run(row);
      } catch (err) {
        if (!isRowError(err)) throw err;
        bad++;
        log.once(`audit:invalid_row:${(err as Error).message}`, 'error', 'audit log rejected a record', {
          id: typeof row['id'] === 'string' ? row['id'] : null,
          error: (err as Error).message,
        });
      }
    }
    if (bad > 0) {
      health.internalError('audit');
      dropped(bad, 'invalid_row');
    }
  };

  /** Writes one batch; returns false when the DB failed (rows stay queued). */
  const writeOneBatch = (): boolean => {
    const rows = queue.peek(batchSize);
    if (rows.length === 0) return true;
    try {
      try {
        insertBatch(rows);
      } catch (err) {
        if (isRowError(err)) writeRowsOneByOne(rows);
        else throw err;
      }
      queue.drop(rows.length);
      onSuccess();
      return true;
    } catch (err) {
      onFailure(err);
      return false;
    } finally {
      reportDepth();
    }
  };

  const writeBodies = (): void => {
    if (bodies.length === 0 || !redactor) return;
    const take = bodies.splice(0, Math.min(bodies.length, batchSize));
    const max = opts.captureMaxBytes;
    try {
      db.transaction(() => {
        for (const b of take) {
          const req = b.request ? redactAndTruncate(b.request, max, redactor) : undefined;
          const res = b.response ? redactAndTruncate(b.response, max, redactor) : undefined;
          insertBody.run(
            b.id,
            b.ts,
            req?.text ?? null,
            res?.text ?? null,
            b.requestBytes,
            b.responseBytes,
            req?.truncated || res?.truncated ? 1 : 0,
          );
        }
      })();
      for (const b of take) pendingBodyBytes -= (b.request?.length ?? 0) + (b.response?.length ?? 0);
    } catch (err) {
      if (isRowError(err)) {
        // Bodies are best-effort evidence: a batch the DB rejects is dropped, not retried forever.
        for (const b of take) pendingBodyBytes -= (b.request?.length ?? 0) + (b.response?.length ?? 0);
        health.internalError('audit');
        log.once('audit:bodies_rejected', 'warn', 'captured bodies rejected by the audit DB', {
          error: (err as Error).message,
        });
        return;
      }
      // Put them back in front: bodies are retried like records, within their byte bound.
      bodies.unshift(...take);
      onFailure(err);
    }
  };

  /** One step of the background flush: a batch of records, then bodies; reschedules if more is queued. */
  const tick = (): void => {
    flushScheduled = false;
    if (closed || now() < retryAt) return;
    if (!writeOneBatch()) return;
    writeBodies();
    // More than a batch queued: continue on the next turn of the event loop, not in this one, so a
    // backlog after an outage is written in slices between requests rather than one long stall.
    if (queue.length >= batchSize || bodies.length > 0) scheduleSoon();
  };

  const scheduleSoon = (): void => {
    if (flushScheduled || closed) return;
    flushScheduled = true;
    setImmediate(tick);
  };

  const flushTimer = setInterval(
    () => {
      if (queue.length > 0 || bodies.length > 0) tick();
    },
    Math.max(1, opts.flushIntervalMs),
  );
  flushTimer.unref();

  const runRetention = (): void => {
    if (!(opts.retentionDays > 0)) return;
    try {
      const deleted = pruneBefore(db, now() - opts.retentionDays * DAY_MS);
      if (deleted > 0)
        log.info('audit log retention pruned rows', { deleted, retention_days: opts.retentionDays });
    } catch (err) {
      health.internalError('audit');
      log.once('audit:retention', 'warn', 'audit log retention failed; will retry next hour', {
        error: (err as Error).message,
      });
    }
  };
  runRetention();
  const retentionTimer = setInterval(runRetention, RETENTION_INTERVAL_MS);
  retentionTimer.unref();

  /** Writes everything queued, ignoring backoff; stops at the first failure. */
  const drainNow = (): boolean => {
    while (queue.length > 0) if (!writeOneBatch()) return false;
    while (bodies.length > 0) {
      const before = bodies.length;
      writeBodies();
      if (bodies.length >= before) return false;
    }
    return true;
  };

  return {
    name: 'audit',
    keySecret,
    db,

    write(record) {
      if (closed) {
        dropped(1, 'closed');
        return;
      }
      const evicted = queue.push(recordToRow(record));
      if (evicted) dropped(1, 'queue_full');
      reportDepth();
      if (queue.length >= batchSize && now() >= retryAt) scheduleSoon();
    },

    capture(recordId, request, response) {
      if (!redactor || closed || (!request && !response)) return;
      // Copy only what can be stored: the caller's buffers are released immediately.
      const limit = opts.captureMaxBytes + WINDOW_MARGIN + 1;
      const copy = (b?: Buffer): Buffer | undefined => (b ? Buffer.from(b.subarray(0, limit)) : undefined);
      // Original lengths are kept for the row; the copies are what is held in memory.
      const entry: PendingBody = {
        id: recordId,
        ts: now(),
        request: copy(request),
        response: copy(response),
        requestBytes: request?.length ?? null,
        responseBytes: response?.length ?? null,
      };
      const size = (entry.request?.length ?? 0) + (entry.response?.length ?? 0);
      bodies.push(entry);
      pendingBodyBytes += size;
      while (pendingBodyBytes > MAX_PENDING_BODY_BYTES && bodies.length > 1) {
        const old = bodies.shift()!;
        pendingBodyBytes -= (old.request?.length ?? 0) + (old.response?.length ?? 0);
        health.internalError('audit');
        log.once(
          'audit:bodies_dropped',
          'warn',
          'captured bodies dropped: the audit DB is not keeping up',
          {},
        );
      }
    },

    async flush() {
      if (closed) return;
      drainNow();
    },

    async close() {
      if (closed) return;
      clearInterval(flushTimer);
      clearInterval(retentionTimer);
      const deadline = now() + (opts.closeTimeoutMs ?? 5000);
      // Bounded drain: retry a failing DB with backoff until the deadline, then count the rest.
      while (!drainNow() && now() < deadline) {
        const wait = Math.max(1, Math.min(backoffMs || minBackoff, deadline - now()));
        await new Promise((r) => setTimeout(r, wait));
      }
      closed = true;
      const lost = queue.length;
      if (lost > 0) {
        queue.drop(lost);
        dropped(lost, 'close');
      }
      reportDepth();
      try {
        db.close();
      } catch (err) {
        log.once('audit:close', 'warn', 'audit log close failed', { error: (err as Error).message });
      }
    },
  };
}
