/**
 * The console's view of the audit log, seen from the main thread. Every read runs on a
 * `worker_threads` worker (`reader-thread.ts`) that owns a separate read-only better-sqlite3
 * connection: better-sqlite3 is synchronous, and a 90-day spend query over millions of rows run
 * here would stall every proxied request for as long as it ran (traffic first, DESIGN.md §1).
 *
 * Bounded: one query runs at a time, at most `maxWaiting` wait behind it (more is a 503 "console
 * busy"), and a query running longer than `timeoutMs` is answered 503 while its thread is
 * terminated; the next query starts a new one. Started on first use, terminated on close; idle, the
 * thread does not keep the process alive. Only JSON text crosses the boundary (operations.ts).
 */
import { Worker } from 'node:worker_threads';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { workerEntry } from '../worker-entry.js';
import type { ReaderAnswers, ReaderQuery } from './operations.js';

/** Why there is nothing to read; shown on the pages as is. */
export type AuditOff = { enabled: false; reason: string };
export type AuditState = { enabled: true } | AuditOff;

export interface ReaderSetup {
  path: string;
  busyTimeoutMs: number;
}

export type ToReader =
  | { type: 'query'; seq: number; query: ReaderQuery }
  /** Tests: the thread exits as if it crashed. */
  | { type: 'exit' };

export type FromReader =
  | { type: 'ready' }
  | { type: 'result'; seq: number; json: string }
  | { type: 'error'; seq: number; message: string; usage: boolean };

/** The console cannot answer now (busy, timed out, thread stopped): a 503 with this message. */
export class ConsoleUnavailable extends Error {
  readonly status = 503;
  constructor(message: string) {
    super(message);
    this.name = 'ConsoleUnavailable';
  }
}

export interface ReaderOptions {
  /** A query running longer is answered 503 and its thread terminated (default 10 s). */
  timeoutMs?: number;
  /** Queries waiting behind the running one; one more is a 503 "console busy" (default 8). */
  maxWaiting?: number;
  log?: Logger;
}

const QUERY_TIMEOUT_MS = 10_000;
const MAX_WAITING = 8;
/** A thread not ready by then (loading the module, opening nothing yet) is treated as failed. */
const STARTUP_TIMEOUT_MS = 30_000;
/**
 * Threads terminated after a timeout that have not exited yet: terminating cannot stop a SQLite
 * statement in native code, only the JavaScript after it, so such a thread keeps a core busy
 * until its statement returns. Past this many, no new thread is started (503) until one exits.
 */
const MAX_STOPPING = 2;
/**
 * Off the event loop, a lock wait stalls no traffic; this only bounds how long a read waits for
 * one (in WAL mode readers rarely wait at all).
 */
const READ_BUSY_TIMEOUT_MS = 1_000;

interface Job {
  query: ReaderQuery;
  resolve(json: string): void;
  reject(err: Error): void;
}

/** The one live thread and the job it runs, if any. */
interface Live {
  worker: Worker;
  ready: boolean;
  startTimer: NodeJS.Timeout;
  running?: { job: Job; seq: number; timer: NodeJS.Timeout };
}

export class AuditReader {
  private live: Live | undefined;
  private readonly waiting: Job[] = [];
  private stopping = 0;
  private seq = 0;
  private closed = false;
  private readonly timeoutMs: number;
  private readonly maxWaiting: number;

  /** `path`: the serve's audit DB (settings.db): null with --no-db. `script`: tests' thread entry. */
  constructor(
    private readonly path: string | null,
    private readonly opts: ReaderOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? QUERY_TIMEOUT_MS;
    this.maxWaiting = opts.maxWaiting ?? MAX_WAITING;
  }

  state(): AuditState {
    if (this.path === null) return { enabled: false, reason: 'the audit log is off (--no-db or db: false)' };
    if (this.path === ':memory:')
      return {
        enabled: false,
        reason: 'the audit log is in memory (--db :memory:): the console cannot read it; use a file',
      };
    return { enabled: true };
  }

  /**
   * Runs one operation on the reader thread. Rejects with the query's own error (a `UsageError`
   * stays one), or `ConsoleUnavailable` when busy, timed out, stopped or closed.
   */
  async run<Q extends ReaderQuery>(query: Q): Promise<ReaderAnswers[Q['op']]> {
    if (!this.state().enabled) throw new Error('audit log is off');
    if (this.closed) throw new ConsoleUnavailable('the console is shutting down');
    if (this.waiting.length >= this.maxWaiting)
      throw new ConsoleUnavailable(
        `console busy: ${this.waiting.length} queries already wait for the audit log reader; try again shortly`,
      );
    const json = await new Promise<string>((resolve, reject) => {
      this.waiting.push({ query, resolve, reject });
      this.pump();
    });
    return JSON.parse(json) as ReaderAnswers[Q['op']];
  }

  /** Rejects what waits or runs and terminates the thread (an idle one holds nothing to flush). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const err = new ConsoleUnavailable('the console is shutting down');
    for (const job of this.waiting.splice(0)) job.reject(err);
    const live = this.live;
    if (live) this.retire(live, err);
  }

  /** Tests: makes the thread exit with code 1 (a crash, as the main thread sees it). */
  crashForTests(): void {
    this.live?.worker.postMessage({ type: 'exit' } satisfies ToReader);
  }

  /** Tests: whether a thread is live (started and not stopped). */
  get threadLive(): boolean {
    return this.live !== undefined;
  }

  /** Starts the next waiting job if the thread is free (starting the thread if needed). */
  private pump(): void {
    if (this.closed || this.waiting.length === 0) return;
    if (!this.live) {
      if (this.stopping >= MAX_STOPPING) {
        const err = new ConsoleUnavailable(
          'console busy: earlier queries that timed out are still being stopped; try again shortly',
        );
        for (const job of this.waiting.splice(0)) job.reject(err);
        return;
      }
      try {
        this.live = this.start();
      } catch (err) {
        this.failWaiting(`the audit log reader thread could not start: ${(err as Error).message}`);
        return;
      }
    }
    const live = this.live;
    if (!live.ready || live.running) return;
    const job = this.waiting.shift()!;
    const seq = ++this.seq;
    const timer = setTimeout(() => this.timedOut(live, seq), this.timeoutMs);
    timer.unref();
    live.running = { job, seq, timer };
    // A query in flight keeps the process alive (so its answer arrives); an idle thread does not.
    live.worker.ref();
    live.worker.postMessage({ type: 'query', seq, query: job.query } satisfies ToReader);
  }

  private start(): Live {
    const path = this.path!;
    const entry = workerEntry(new URL('./reader-thread.js', import.meta.url));
    const worker = new Worker(entry.filename, {
      ...entry.options,
      workerData: { path, busyTimeoutMs: READ_BUSY_TIMEOUT_MS } satisfies ReaderSetup,
      // At most one answer (≤ 500 rows, or one request's captured bodies) in flight: a small heap,
      // not a second full-size one. Exceeding it ends the thread (an error below), not the process.
      resourceLimits: { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 64 },
    });
    worker.unref();
    const startTimer = setTimeout(() => {
      if (this.live === live && !live.ready) void worker.terminate();
    }, STARTUP_TIMEOUT_MS);
    startTimer.unref();
    const live: Live = { worker, ready: false, startTimer };
    worker.on('message', (msg: FromReader) => this.onMessage(live, msg));
    worker.on('error', (err) => this.gone(live, err.message));
    worker.on('exit', (code) => this.gone(live, `the audit log reader thread exited with code ${code}`));
    return live;
  }

  private onMessage(live: Live, msg: FromReader): void {
    if (this.live !== live) return;
    if (msg.type === 'ready') {
      live.ready = true;
      clearTimeout(live.startTimer);
      this.pump();
      return;
    }
    const running = live.running;
    if (!running || running.seq !== msg.seq) return;
    clearTimeout(running.timer);
    live.running = undefined;
    live.worker.unref();
    if (msg.type === 'result') running.job.resolve(msg.json);
    else running.job.reject(msg.usage ? new UsageError(msg.message) : new Error(msg.message));
    this.pump();
  }

  private timedOut(live: Live, seq: number): void {
    if (this.live !== live || live.running?.seq !== seq) return;
    const seconds = this.timeoutMs / 1000;
    this.opts.log?.warn('console query timed out; its reader thread was stopped', {
      op: live.running.job.query.op,
      timeout_ms: this.timeoutMs,
    });
    this.retire(
      live,
      new ConsoleUnavailable(
        `console query timed out after ${seconds} s (the audit log is large for this window); ` +
          'narrow since/until or try again',
      ),
    );
    this.pump();
  }

  /**
   * Takes the thread out of service and terminates it: its job (if any) is rejected with `err`.
   * A terminated thread exits once its current SQLite statement returns (see MAX_STOPPING).
   */
  private retire(live: Live, err: Error): void {
    if (this.live === live) this.live = undefined;
    clearTimeout(live.startTimer);
    if (live.running) {
      clearTimeout(live.running.timer);
      live.running.job.reject(err);
      live.running = undefined;
    }
    this.stopping++;
    // Nobody waits for it any more: a statement still running must not hold up a shutdown.
    live.worker.unref();
    live.worker.once('exit', () => {
      this.stopping--;
      this.pump();
    });
    void live.worker.terminate();
  }

  /** The live thread stopped by itself (crash, out of memory, failed start). */
  private gone(live: Live, message: string): void {
    if (this.live !== live) return;
    this.live = undefined;
    clearTimeout(live.startTimer);
    if (!this.closed) this.opts.log?.error('console reader thread stopped', { error: message });
    const running = live.running;
    live.running = undefined;
    if (running) {
      clearTimeout(running.timer);
      running.job.reject(
        new ConsoleUnavailable(`the audit log reader stopped (${message}); it restarts with the next query`),
      );
    }
    // One that never got ready fails those waiting (starting it again for each would fail alike).
    if (!live.ready) this.failWaiting(`the audit log reader thread could not start: ${message}`);
    // Terminate too: an 'error' may come before the thread has actually exited.
    void live.worker.terminate();
    this.pump();
  }

  private failWaiting(message: string): void {
    const err = new ConsoleUnavailable(message);
    for (const job of this.waiting.splice(0)) job.reject(err);
  }
}
