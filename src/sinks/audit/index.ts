/**
 * The SQLite audit log sink (DESIGN.md §6): one row per request record, the source of truth for
 * spend. `write` only enqueues; a bounded queue on the main thread is written in batched
 * transactions by a writer thread (`writer-host.ts`), so an INSERT never blocks the event loop.
 * When the DB is slow, locked, read-only or full, traffic is unaffected: rows stay queued and are
 * retried with capped exponential backoff, and when the queue is full the oldest records are
 * dropped and counted (`tokenmeter_audit_dropped_total`). A batch leaves the queue only when its
 * commit is confirmed.
 */
import type Database from 'better-sqlite3';
import type { RequestRecord } from '../../record.js';
import type { Logger } from '../../log.js';
import type { HealthCounters, Sink } from '../types.js';
import { STARVED_AFTER_MS } from '../../thread-priority.js';
import {
  AuditWriter,
  failureKind,
  type BodyJob,
  type JobResult,
  type WriteError,
  type WriterSetup,
} from './audit-writer.js';
import {
  asReadConnection,
  fileIdentity,
  openReadConnection,
  openWriterConnection,
  type ReadConnection,
} from './connection.js';
import { billingSnapshotSql, type BillingSnapshotRow } from './billing.js';
import { clearServeMarker, readUncleanShutdown, setServeMarker, type UncleanShutdown } from './marker.js';
import { DAY_MS, ensureKeySecret, pruneBefore } from './migrations.js';
import { WINDOW_MARGIN, createRedactor } from './redact.js';
import { RingQueue } from './ring-queue.js';
import { recordToRow, type Row } from './row.js';
import { InProcessWriter, WriterThread, WriterThreadGone, type WriterBackend } from './writer-host.js';

export { recordToRow, rowToRecord, rowValue } from './row.js';
export type { UncleanShutdown } from './marker.js';
export type { BillingSnapshotRow } from './billing.js';

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
  /**
   * A lock is normal for a moment (a checkpoint, a `report` query); `healthy()` turns false only
   * when writes have been failing on a lock for longer than this. Default 1000.
   */
  unhealthyAfterLockedMs?: number;
  /**
   * Where the INSERTs run. `thread` (the default for a file): a worker thread owns the write
   * connection and the main thread keeps a read connection. `main`: synchronously on the main
   * thread, one connection (always for ':memory:', which a second connection cannot see).
   */
  writer?: 'thread' | 'main';
  /** Tests only: the script the writer thread runs instead of `writer-thread` (one that cannot start). */
  writerThreadScript?: URL;
  /**
   * Group commit's longest wait before queued rows go to the writer thread (docs/audit.md,
   * Flushing). Default 50 ms; never longer than `flushIntervalMs`. Tests set it.
   */
  lingerMs?: number;
  /** Clock, for tests of retention. */
  now?: () => number;
  /** Tests: a job in flight this long means a starved low-priority writer (default STARVED_AFTER_MS). */
  starvedAfterMs?: number;
}

export interface AuditSink extends Sink {
  /** The HMAC secret for key fingerprints: `keySalt` if configured, else the DB's own. */
  readonly keySecret: string;
  /**
   * A connection for read queries on the main thread (budgets, report queries): read-only
   * (`query_only`) while the writer thread owns the writes. A getter: after the file was deleted
   * and reopened it is a new connection, so callers must read it at each use and never keep it.
   */
  readonly db: Database.Database;
  /** Set when the previous serve on this file did not shut down cleanly (its marker was still there). */
  readonly uncleanShutdown?: UncleanShutdown;
  /**
   * For /readyz: false while audit writes are failing (backing off, read-only, full, locked for
   * longer than `unhealthyAfterLockedMs`, DB file lost and not reopened yet) or after close; true
   * again after a successful write. Also checks that the DB file is still at its path.
   */
  healthy(): boolean;
  /** Resolves once everything queued at call time is committed, or a write failed; never throws. */
  flush(): Promise<void>;
  /** Queues captured bodies (only when capture is on); never touches the DB on the caller's stack. */
  capture(recordId: string, request?: Buffer, response?: Buffer): void;
  /**
   * Stores one billing snapshot (issue 13) through the connection that writes, in order with the
   * record batches. Rejects when it could not be written (the caller logs; nothing is retried).
   */
  writeBillingSnapshot(row: BillingSnapshotRow): Promise<void>;
}

/** Retention runs at start and then hourly. */
const RETENTION_INTERVAL_MS = 3_600_000;
/** Group commit's longest wait before rows go to the writer thread (see `scheduleLinger`). */
const GROUP_COMMIT_LINGER_MS = 50;
/**
 * The writer's lock wait. With the writer thread it no longer stalls the event loop, but it stays
 * short: a lock is retried with backoff (and reported) rather than waited out. The main thread's
 * read connection uses it too: a read never waits long.
 */
const WRITER_BUSY_TIMEOUT_MS = 50;
/** Captured bodies wait in memory at most this many bytes; beyond it the oldest are dropped. */
const MAX_PENDING_BODY_BYTES = 16 * 1024 * 1024;
/**
 * `close()` gives the writer thread at least this long to finish its job, clear the marker and
 * close: longer than any job can take (the 5 s lock wait of a migration after a reopen). Only then
 * is it terminated, because terminating it inside a better-sqlite3 call that fails aborts the
 * whole process (see writer-host.ts). A responsive thread answers in milliseconds.
 */
const MIN_THREAD_CLOSE_MS = 6000;

interface PendingBody extends BodyJob {
  request?: Buffer;
  response?: Buffer;
}

/** The one job in flight: its rows are the oldest `rows` of the queue, still in it. */
interface InFlight {
  seq: number;
  rows: number;
  /** How many of those rows the full queue evicted meanwhile (dropped unless the job commits them). */
  evicted: number;
  bodies: PendingBody[];
  /** Queue sequence number of its first row. */
  firstRow: number;
  /** performance.now() when it was sent. */
  sentAt: number;
}

interface FlushWaiter {
  /** Rows (by queue sequence) and bodies enqueued before the flush: all must be settled. */
  rows: number;
  bodies: number;
  /** A failure of a job sent from here on ends the flush (it never waits out a backoff). */
  fromJob: number;
  resolve(): void;
}

/** Logged (at error) each time the DB file was found gone and a new one opened at the path. */
const DB_LOST_MSG = 'audit DB file was deleted or replaced while serving; reopened a new DB at its path';

export function openAuditLog(opts: AuditLogOptions): AuditSink {
  return new AuditLog(opts);
}

/**
 * Test hooks: run SQL on the connection that writes (fault injection: `PRAGMA query_only`,
 * `max_page_count`), and reach the writer thread (to kill it).
 */
export const auditTestHooks = {
  execOnWriter: (sink: AuditSink, sql: string): Promise<void> => asAuditLog(sink).execOnWriter(sql),
  writerThread: (sink: AuditSink): WriterThread | undefined => asAuditLog(sink).writerThread(),
  writerWhere: (sink: AuditSink): 'thread' | 'main' => asAuditLog(sink).writerWhere(),
  lingerMs: (sink: AuditSink): number => asAuditLog(sink).lingerMs,
};

function asAuditLog(sink: AuditSink): AuditLog {
  if (!(sink instanceof AuditLog)) throw new TypeError('not an audit log opened by openAuditLog');
  return sink;
}

/**
 * The main-thread half of the audit log: the queue, the one job in flight, backoff, health, drop
 * counting and logging. The INSERTs run in the backend (`WriterThread`, or `InProcessWriter`).
 */
class AuditLog implements AuditSink {
  readonly name = 'audit';
  readonly keySecret: string;
  readonly uncleanShutdown?: UncleanShutdown;

  private readonly health: HealthCounters;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly batchSize: number;
  private readonly minBackoff: number;
  private readonly maxBackoff: number;
  private readonly lockGraceMs: number;
  private readonly capturing: boolean;
  /** Each queued row: its values in column order (row.ts), as they cross to the writer. */
  private readonly queue: RingQueue<Row>;
  private readonly setup: WriterSetup;
  private backend: WriterBackend;
  /** The main thread's read connection while another connection writes (thread or fallback). */
  private reader: ReadConnection | undefined;
  private readonly separateReader: boolean;
  /** The last connection `db` returned: after a loss it is closed, so reads throw until reopened. */
  private lastDb: Database.Database;
  /** Records ever enqueued: the sequence number of the next one. */
  private enqueued = 0;
  private bodies: PendingBody[] = [];
  private bodiesEnqueued = 0;
  private bodiesSettled = 0;
  private pendingBodyBytes = 0;
  private inFlight: InFlight | undefined;
  private jobSeq = 0;
  private waiters: FlushWaiter[] = [];
  /** The job after a writer thread died re-sends rows it may have committed. */
  private resend = false;
  /** The file at the path is not the one written to, and no new one is open yet. */
  private fileLost = false;
  private probeWanted = false;
  private pendingPrune: number | undefined;
  private restarts = 0;
  /**
   * New writer threads start at low CPU priority until the writer falls behind (`promoteWriter`:
   * the queue half full, a job in flight for `starvedAfterMs`) or the log closes; then one at
   * normal priority takes over for the rest of the process (docs/audit.md, "Writer thread priority").
   */
  private lowPriorityWriter = true;
  private readonly starvedAfterMs: number;
  /** The replacement waits for the job in flight, which the old thread finishes. */
  private promotionPending = false;
  /** The replaced thread closing its connection: `close()` waits for it. */
  private retired: Promise<unknown> = Promise.resolve();
  private backoffMs = 0;
  private retryAt = 0;
  private closing = false;
  private closed = false;
  private closeDone: Promise<void> | undefined;
  private flushScheduled = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  readonly lingerMs: number;
  private readonly failing = new Set<string>();
  private failingSince: number | undefined;
  private readonly flushTimer: NodeJS.Timeout;
  private readonly retentionTimer: NodeJS.Timeout;

  constructor(private readonly opts: AuditLogOptions) {
    this.health = opts.health;
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
    this.batchSize = Math.max(1, Math.floor(opts.batchSize));
    this.lingerMs = Math.max(0, Math.min(opts.lingerMs ?? GROUP_COMMIT_LINGER_MS, opts.flushIntervalMs));
    this.minBackoff = opts.minBackoffMs ?? 100;
    this.maxBackoff = opts.maxBackoffMs ?? 5000;
    this.lockGraceMs = opts.unhealthyAfterLockedMs ?? 1000;
    // Built here only to refuse an invalid pattern at startup; the writer redacts with its own.
    this.capturing = opts.captureBodies && createRedactor(opts.redactPatterns) !== undefined;
    this.queue = new RingQueue<Row>(Math.max(1, Math.floor(opts.queueSize)));
    this.starvedAfterMs = opts.starvedAfterMs ?? STARVED_AFTER_MS;
    const startedAt = this.now();

    // Opening and migrating happen at startup, on this thread: errors here (schema too new,
    // unreadable file) are startup errors for the caller to report, not runtime failures to swallow.
    const conn = openWriterConnection(opts.path, WRITER_BUSY_TIMEOUT_MS);
    let dbSecret: string | undefined;
    // A configured salt wins and is never written; without one the DB's secret is created once.
    if (opts.keySalt === undefined) this.keySecret = dbSecret = ensureKeySecret(conn.db);
    else [this.keySecret, dbSecret] = [opts.keySalt, readKeySecret(conn.db)];
    let markerValue: string | undefined;
    [this.uncleanShutdown, markerValue] = this.takeOverMarker(conn.db, startedAt);
    this.runRetentionNow(conn.db);
    this.lastDb = conn.db;

    this.setup = {
      path: opts.path,
      busyTimeoutMs: WRITER_BUSY_TIMEOUT_MS,
      captureMaxBytes: opts.captureMaxBytes,
      redactPatterns: opts.redactPatterns,
      markerValue,
      dbSecret,
    };
    this.separateReader = opts.path !== ':memory:' && (opts.writer ?? 'thread') === 'thread';
    if (this.separateReader) {
      this.reader = asReadConnection(conn.db, opts.path, WRITER_BUSY_TIMEOUT_MS);
      this.backend = this.startThread();
    } else {
      this.backend = new InProcessWriter(new AuditWriter(this.setup, conn));
    }

    this.flushTimer = setInterval(
      () => {
        const job = this.inFlight;
        if (this.lowPriorityWriter && job && performance.now() - job.sentAt >= this.starvedAfterMs)
          this.promoteWriter('job_slow');
        if (this.queue.length > 0 || this.bodies.length > 0 || this.probeWanted) this.pump();
      },
      Math.max(1, opts.flushIntervalMs),
    );
    this.flushTimer.unref();
    this.retentionTimer = setInterval(() => {
      if (!(opts.retentionDays > 0)) return;
      this.pendingPrune = this.now() - opts.retentionDays * DAY_MS;
      this.pump();
    }, RETENTION_INTERVAL_MS);
    this.retentionTimer.unref();
  }

  get db(): Database.Database {
    if (this.reader) return this.reader.db;
    // Writing on this thread with one connection (':memory:', `writer: 'main'`): that connection.
    if (!this.separateReader && this.backend instanceof InProcessWriter)
      return this.backend.db ?? this.lastDb;
    return this.lastDb;
  }

  write(record: RequestRecord): void {
    if (this.closed) {
      this.dropped(1, 'closed');
      return;
    }
    this.enqueued++;
    if (this.queue.push(recordToRow(record, this.onRejected))) {
      // The evicted row is the oldest: part of the job in flight if there is one. Whether it is
      // lost is known only when that job's result comes back.
      const f = this.inFlight;
      if (f && f.evicted < f.rows) f.evicted++;
      else this.dropped(1, 'queue_full');
    }
    this.reportDepth();
    if (this.lowPriorityWriter && this.queue.length * 2 >= this.queue.capacity)
      this.promoteWriter('queue_half_full');
    if (this.now() >= this.retryAt) {
      if (this.queue.length >= this.batchSize) this.scheduleSoon();
      else if (this.groupCommit()) this.scheduleLinger();
    }
  }

  /**
   * Group commit (docs/audit.md, Flushing): with the writer on its own thread, rows go to it as
   * soon as it is free (after the linger), so a batch is what arrived during the linger and the
   * previous job. Under load batches grow by themselves (one job in flight at a time). A queued
   * row is a flat positional array, not the record's object graph (docs/audit.md has the
   * steady-state numbers for 5, 25, 50 and 100 ms, and the collector's cost of queued rows). The
   * main-thread writer keeps full batches: there each job runs on the event loop.
   */
  private groupCommit(): boolean {
    return this.inFlight === undefined && this.backend.where === 'thread';
  }

  capture(recordId: string, request?: Buffer, response?: Buffer): void {
    if (!this.capturing || this.closed || (!request && !response)) return;
    // Copy only what can be stored: the caller's buffers are released immediately.
    const limit = this.opts.captureMaxBytes + WINDOW_MARGIN + 1;
    const copy = (b?: Buffer): Buffer | undefined => (b ? Buffer.from(b.subarray(0, limit)) : undefined);
    // Original lengths are kept for the row; the copies are what is held in memory.
    const entry: PendingBody = {
      id: recordId,
      ts: this.now(),
      request: copy(request),
      response: copy(response),
      requestBytes: request?.length ?? null,
      responseBytes: response?.length ?? null,
    };
    this.bodies.push(entry);
    this.bodiesEnqueued++;
    this.pendingBodyBytes += bodySize(entry);
    while (this.pendingBodyBytes > MAX_PENDING_BODY_BYTES && this.bodies.length > 1) {
      this.pendingBodyBytes -= bodySize(this.bodies.shift()!);
      this.bodiesSettled++;
      this.health.internalError('audit');
      this.log.once(
        'audit:bodies_dropped',
        'warn',
        'captured bodies dropped: the audit DB is not keeping up',
        {},
      );
    }
  }

  healthy(): boolean {
    if (this.closed) return false;
    // A probe is a good moment to notice a deleted file even when no record is queued: the
    // writer is asked to reopen it at once.
    if (!this.fileLost && this.detached()) {
      this.onLost();
      this.probeWanted = true;
      this.scheduleSoon();
    }
    if (this.fileLost) {
      if (this.probeWanted) this.scheduleSoon();
      return false;
    }
    if (this.failing.size === 0) return true;
    const onlyLocked = [...this.failing].every((k) => k === 'locked');
    return onlyLocked && this.failingSince !== undefined && this.now() - this.failingSince < this.lockGraceMs;
  }

  flush(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.waiters.push({
        rows: this.enqueued,
        bodies: this.bodiesEnqueued,
        fromJob: this.jobSeq + 1,
        resolve,
      });
      this.pump();
    });
  }

  close(): Promise<void> {
    this.closeDone ??= this.closeOnce();
    return this.closeDone;
  }

  execOnWriter(sql: string): Promise<void> {
    return this.backend.exec(sql);
  }

  writeBillingSnapshot(row: BillingSnapshotRow): Promise<void> {
    if (this.closed) return Promise.reject(new Error('audit log is closed'));
    try {
      return this.backend.exec(billingSnapshotSql(row));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  writerThread(): WriterThread | undefined {
    return this.backend instanceof WriterThread ? this.backend : undefined;
  }

  writerWhere(): 'thread' | 'main' {
    return this.backend.where;
  }

  /**
   * Bounded drain (retrying a failing DB with backoff until the deadline, then counting the rest as
   * dropped), then the writer clears the marker and closes, then the read connection closes.
   */
  private async closeOnce(): Promise<void> {
    this.closing = true;
    // The drain must not wait on a thread that other work can starve: it runs at normal priority.
    if (this.lowPriorityWriter && this.settled()) this.lowPriorityWriter = false;
    else if (this.lowPriorityWriter) this.promoteWriter('closing');
    clearInterval(this.flushTimer);
    clearTimeout(this.lingerTimer);
    clearInterval(this.retentionTimer);
    // Real time, not `now`: a test clock must not make close() wait forever.
    const deadline = Date.now() + (this.opts.closeTimeoutMs ?? 5000);
    for (;;) {
      await withDeadline(this.flush(), deadline);
      if (this.settled() || Date.now() >= deadline) break;
      const wait = Math.max(1, Math.min(this.backoffMs || this.minBackoff, deadline - Date.now()));
      await new Promise((r) => setTimeout(r, wait));
    }
    this.closed = true;
    // A job still in flight past the deadline is treated as not written: its rows are in the queue.
    const lost = this.queue.length + (this.inFlight?.evicted ?? 0);
    this.inFlight = undefined;
    this.queue.drop(this.queue.length);
    this.dropped(lost, 'close');
    this.reportDepth();
    for (const w of this.waiters.splice(0)) w.resolve();
    const remaining = Math.max(MIN_THREAD_CLOSE_MS, deadline - Date.now());
    const [{ markerCleared }] = await Promise.all([this.backend.close(remaining), this.retired]);
    if (!markerCleared) this.clearMarkerFromReader();
    const error = this.reader?.close();
    if (error) this.log.once('audit:close', 'warn', 'audit log close failed', { error });
  }

  /** Everything queued was written (or dropped) and nothing is in flight. */
  private settled(): boolean {
    return this.queue.length === 0 && this.bodies.length === 0 && this.inFlight === undefined;
  }

  private startThread(): WriterBackend {
    try {
      return new WriterThread(
        { ...this.newWriterSetup(), lowPriority: this.lowPriorityWriter },
        (err) => this.onThreadGone(err),
        this.opts.writerThreadScript,
      );
    } catch (err) {
      return this.fallBackToMain((err as Error).message);
    }
  }

  /**
   * The writer thread died (crash, OOM in the thread, terminated). Started once more; if it dies
   * again, or never got ready, the main thread writes. The queue is untouched either way.
   */
  private onThreadGone(err: WriterThreadGone): void {
    if (this.closed) return;
    // Its replacement below starts at normal priority if one was due.
    this.promotionPending = false;
    this.health.internalError('audit');
    if (err.started && this.restarts < 1) {
      this.restarts++;
      this.log.error('audit writer thread stopped; started a new one', {
        error: err.message,
        queued: this.queue.length,
      });
      this.backend = this.startThread();
    } else {
      this.backend = this.fallBackToMain(err.message);
    }
    this.scheduleSoon();
  }

  /**
   * A low-priority writer thread fell behind: the queue reached half its size, or a job has been in
   * flight for `starvedAfterMs` (other work keeps the cores busy); or `close()` drains what is
   * queued. From now on the writer runs at normal priority. An unprivileged thread cannot raise
   * its own priority, so a new thread takes over (the old one finishes its job, closes its
   * connection and leaves the serve marker).
   */
  private promoteWriter(reason: 'queue_half_full' | 'job_slow' | 'closing'): void {
    this.lowPriorityWriter = false;
    if (!(this.backend instanceof WriterThread) || this.backend.lowPriority === false) return;
    if (reason !== 'closing')
      this.log.warn('audit writer fell behind at low CPU priority; it runs at normal priority from now on', {
        reason,
        queued: this.queue.length,
      });
    if (this.inFlight) this.promotionPending = true;
    else this.replaceWriterThread();
  }

  private replaceWriterThread(): void {
    this.promotionPending = false;
    const old = this.backend;
    this.backend = this.startThread();
    this.retired = old.close(MIN_THREAD_CLOSE_MS, true);
  }

  /** The setup of a writer starting now: it opens only the file this thread has at the path. */
  private newWriterSetup(): WriterSetup {
    this.setup.expectFile = this.fileLost ? undefined : fileIdentity(this.opts.path);
    return { ...this.setup };
  }

  private fallBackToMain(error: string): WriterBackend {
    this.health.internalError('audit');
    this.log.once(
      'audit:writer_fallback',
      'error',
      'audit writer thread could not be started; writing on the main thread',
      { error, queued: this.queue.length },
    );
    return new InProcessWriter(new AuditWriter(this.newWriterSetup()));
  }

  /** Whether the connection(s) this thread knows of no longer name the file at the path. */
  private detached(): boolean {
    if (this.separateReader) return this.reader?.detached() ?? false;
    return this.backend instanceof InProcessWriter && this.backend.detached();
  }

  /**
   * Sends the next job if none is in flight: up to a batch of rows, the captured bodies, a due
   * retention cutoff. Backoff holds it back unless a flush or close is waiting.
   */
  private pump(): void {
    this.flushScheduled = false;
    if (this.inFlight || this.closed) return;
    if (this.waiters.length === 0 && this.now() < this.retryAt) return;
    const rows = this.queue.peek(this.batchSize);
    const bodies = this.bodies.splice(0, Math.min(this.bodies.length, this.batchSize));
    if (rows.length === 0 && bodies.length === 0 && !this.probeWanted && this.pendingPrune === undefined) {
      this.settleWaiters(undefined);
      return;
    }
    const job = { rows, bodies, resent: this.resend && rows.length > 0, pruneBefore: this.pendingPrune };
    this.probeWanted = false;
    this.pendingPrune = undefined;
    const inFlight: InFlight = {
      seq: ++this.jobSeq,
      rows: rows.length,
      evicted: 0,
      bodies,
      firstRow: this.enqueued - this.queue.length,
      sentAt: performance.now(),
    };
    this.inFlight = inFlight;
    this.backend.run(job).then(
      (result) => this.onResult(inFlight, result),
      (err: unknown) => this.onJobLost(inFlight, err),
    );
  }

  private onResult(f: InFlight, r: JobResult): void {
    if (this.inFlight !== f) return;
    this.inFlight = undefined;
    if (this.promotionPending && !this.closed) this.replaceWriterThread();
    if (r.reopened) this.onReopened(r.reopened.otherSecret);
    let failed = false;
    const rec = r.records;
    if (rec.status === 'written') {
      this.queue.drop(f.rows - f.evicted);
      if (f.rows > 0) this.resend = false;
      this.onBadRows(rec.bad);
      this.onSuccess();
    } else {
      this.dropped(f.evicted, 'queue_full');
      // After a loss the next job reopens the path, even with nothing queued; a failed reopen is
      // retried the same way after the backoff.
      if (rec.status === 'lost' || rec.reopening) this.probeWanted = true;
      if (rec.status === 'lost') this.onLost();
      else {
        this.onFailure(rec.error, rec.reopening ? 'db_lost' : undefined);
        failed = true;
      }
    }
    const b = r.bodies;
    if (b.status === 'written' || b.status === 'rejected') this.settleBodies(f.bodies);
    else this.requeueBodies(f.bodies);
    if (b.status === 'rejected') {
      this.health.internalError('audit');
      this.log.once('audit:bodies_rejected', 'warn', 'captured bodies rejected by the audit DB', {
        error: b.message,
      });
    } else if (b.status === 'failed') {
      this.onFailure(b.error);
      failed = true;
    }
    if (r.pruned) this.onPruned(r.pruned);
    this.reportDepth();
    this.settleWaiters(failed ? f.seq : undefined);
    // A loss is answered at once: the next job reopens the file.
    if (this.waiters.length > 0 || rec.status === 'lost') this.scheduleSoon();
    else if (this.queue.length >= this.batchSize || this.bodies.length > 0) this.scheduleSoon();
    else if (this.queue.length > 0 && this.groupCommit() && this.now() >= this.retryAt) this.scheduleLinger();
  }

  /** The writer thread died with this job in flight: nothing of it is known to be stored. */
  private onJobLost(f: InFlight, err: unknown): void {
    if (this.inFlight !== f) return;
    this.inFlight = undefined;
    this.dropped(f.evicted, 'queue_full');
    this.requeueBodies(f.bodies);
    if (!(err instanceof WriterThreadGone)) {
      this.onFailure({ message: (err as Error).message });
      this.settleWaiters(f.seq);
      return;
    }
    // It may have committed them before dying: the re-send tolerates their ids being there.
    if (f.rows > 0) this.resend = true;
    this.reportDepth();
    this.scheduleSoon();
  }

  private onBadRows(bad: readonly { id: string | null; message: string }[]): void {
    if (bad.length === 0) return;
    for (const row of bad)
      this.log.once(`audit:invalid_row:${row.message}`, 'error', 'audit log rejected a record', {
        id: row.id,
        error: row.message,
      });
    this.health.internalError('audit');
    this.dropped(bad.length, 'invalid_row');
  }

  /** Resolves the flushes that are done, and (after a failed job) those it ends. */
  private settleWaiters(failedJob: number | undefined): void {
    if (this.waiters.length === 0) return;
    const headRow = this.enqueued - this.queue.length;
    const inFlightFrom = this.inFlight?.firstRow;
    this.waiters = this.waiters.filter((w) => {
      const rowsDone = headRow >= w.rows && (inFlightFrom === undefined || inFlightFrom >= w.rows);
      const done = rowsDone && this.bodiesSettled >= w.bodies && !(this.probeWanted && this.fileLost);
      if (done || (failedJob !== undefined && failedJob >= w.fromJob)) {
        w.resolve();
        return false;
      }
      return true;
    });
  }

  private settleBodies(bodies: readonly PendingBody[]): void {
    for (const b of bodies) this.pendingBodyBytes -= bodySize(b);
    this.bodiesSettled += bodies.length;
  }

  /** Bodies are retried like records, in front, within their byte bound. */
  private requeueBodies(bodies: PendingBody[]): void {
    if (bodies.length > 0) this.bodies.unshift(...bodies);
  }

  /**
   * The file at the path is gone or another one. Our read connection to the old file is closed
   * now, before the writer opens a new file there: the last connection to close removes the WAL
   * and SHM by name, and they must still be the old file's.
   */
  private onLost(): void {
    if (!this.fileLost) {
      this.fileLost = true;
      this.health.internalError('audit');
    }
    if (this.reader) {
      this.lastDb = this.reader.db;
      this.reader.close();
      this.reader = undefined;
    }
  }

  private onReopened(otherSecret: boolean): void {
    this.fileLost = false;
    this.log.error(DB_LOST_MSG, { path: this.opts.path, queued: this.queue.length });
    if (otherSecret)
      this.log.warn(
        'the audit DB now at the path has another key secret; key_id values differ until restart',
        {},
      );
    if (!this.separateReader) return;
    try {
      this.reader = openReadConnection(this.opts.path, WRITER_BUSY_TIMEOUT_MS);
    } catch (err) {
      // Reads keep throwing on the closed connection; the next loss or restart tries again.
      this.log.once('audit:reader', 'warn', 'could not reopen the audit read connection', {
        error: (err as Error).message,
      });
    }
  }

  private onPruned(p: NonNullable<JobResult['pruned']>): void {
    if ('deleted' in p) {
      if (p.deleted > 0)
        this.log.info('audit log retention pruned rows', {
          deleted: p.deleted,
          retention_days: this.opts.retentionDays,
        });
      return;
    }
    this.health.internalError('audit');
    this.log.once('audit:retention', 'warn', 'audit log retention failed; will retry next hour', {
      error: p.error,
    });
  }

  /**
   * Reads a marker left by a previous serve (it did not shut down cleanly: its last queued records
   * may be missing), logs it, and sets ours. A file we cannot mark (read-only at start) still
   * serves: the marker is a diagnostic, not a reason to refuse traffic.
   */
  private takeOverMarker(
    db: Database.Database,
    startedAt: number,
  ): [UncleanShutdown | undefined, string | undefined] {
    if (this.opts.path === ':memory:') return [undefined, undefined];
    let unclean: UncleanShutdown | undefined;
    try {
      unclean = readUncleanShutdown(db);
      if (unclean) {
        const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
        this.log.warn('the previous tokenmeter serve did not shut down cleanly; records may be missing', {
          running_since: iso(unclean.since),
          pid: unclean.pid,
          host: unclean.host,
          newest_record_ts_start: iso(unclean.newestRecordTsStart),
          flush_interval_ms: unclean.flushIntervalMs,
          detail:
            'records completed in the last flush interval before it stopped (still queued in memory) were lost',
        });
      }
      return [unclean, setServeMarker(db, startedAt, this.opts.flushIntervalMs)];
    } catch (err) {
      this.health.internalError('audit');
      this.log.once('audit:marker', 'warn', 'could not keep the unclean-shutdown marker in the audit DB', {
        error: (err as Error).message,
      });
      return [unclean, undefined];
    }
  }

  /** The writer could not clear the marker (thread stuck or dead): our read connection does it. */
  private clearMarkerFromReader(): void {
    const marker = this.setup.markerValue;
    if (marker === undefined || !this.reader || this.reader.detached()) return;
    try {
      this.reader.db.pragma('query_only = OFF');
      clearServeMarker(this.reader.db, marker);
    } catch (err) {
      this.log.once('audit:marker_clear', 'warn', 'could not clear the unclean-shutdown marker', {
        error: (err as Error).message,
      });
    }
  }

  private readonly onRejected = (columns: string[]): void => {
    this.health.internalError('audit');
    this.log.once(
      `audit:rejected:${columns.join(',')}`,
      'warn',
      'implausible counts or costs stored as NULL',
      {
        columns: columns.join(','),
      },
    );
  };

  private reportDepth(): void {
    this.health.auditQueueDepth(this.queue.length);
  }

  private dropped(count: number, why: string): void {
    if (count <= 0) return;
    this.health.auditDropped(count);
    this.log.once(`audit:dropped:${why}`, 'error', 'audit log dropped records', { reason: why, count });
  }

  private onFailure(err: WriteError, kindOverride?: string): void {
    const kind = kindOverride ?? failureKind(err);
    this.health.internalError('audit');
    if (this.failing.size === 0) this.failingSince = this.now();
    if (!this.failing.has(kind)) {
      this.failing.add(kind);
      this.log.error('audit log write failed; records stay queued and are retried', {
        kind,
        error: err.message,
        queued: this.queue.length,
      });
    }
    this.backoffMs = this.backoffMs === 0 ? this.minBackoff : Math.min(this.backoffMs * 2, this.maxBackoff);
    this.retryAt = this.now() + this.backoffMs;
  }

  private onSuccess(): void {
    if (this.failing.size > 0) {
      this.log.info('audit log writes recovered', { kinds: [...this.failing].join(',') });
      this.failing.clear();
    }
    this.failingSince = undefined;
    this.backoffMs = 0;
    this.retryAt = 0;
  }

  /**
   * Group commit's wait: rows that arrive while the writer is free are sent after at most
   * `linger` ms, so a busy proxy sends one job per 50 ms instead of one per record or per few ms:
   * each job rewrites the same B-tree pages to the WAL and wakes the thread, so the writer's cost
   * per row falls with the batch (≈ 20 µs at 5 ms, ≈ 13 µs at 50 ms, measured in place at c=32).
   */
  private scheduleLinger(): void {
    if (this.lingerTimer || this.flushScheduled || this.closed) return;
    this.lingerTimer = setTimeout(() => {
      this.lingerTimer = undefined;
      this.pump();
    }, this.lingerMs);
    this.lingerTimer.unref();
  }

  /**
   * Next turn of the event loop, not this one: a backlog after an outage is written one batch per
   * turn, in slices between requests.
   */
  private scheduleSoon(): void {
    if (this.flushScheduled || this.closed) return;
    this.flushScheduled = true;
    setImmediate(() => this.pump());
  }

  private runRetentionNow(db: Database.Database): void {
    if (!(this.opts.retentionDays > 0)) return;
    try {
      const deleted = pruneBefore(db, this.now() - this.opts.retentionDays * DAY_MS);
      if (deleted > 0)
        this.log.info('audit log retention pruned rows', {
          deleted,
          retention_days: this.opts.retentionDays,
        });
    } catch (err) {
      this.health.internalError('audit');
      this.log.once('audit:retention', 'warn', 'audit log retention failed; will retry next hour', {
        error: (err as Error).message,
      });
    }
  }
}

const bodySize = (b: PendingBody): number => (b.request?.length ?? 0) + (b.response?.length ?? 0);

function readKeySecret(db: Database.Database): string | undefined {
  return (
    db.prepare(`SELECT value FROM meta WHERE key = 'key_secret'`).get() as { value: string } | undefined
  )?.value;
}

/** Resolves when `p` does or at `deadline` (epoch ms), whichever is first. */
function withDeadline(p: Promise<void>, deadline: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
    void p.then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
