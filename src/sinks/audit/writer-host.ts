/**
 * Where the audit log's INSERTs run, seen from the main thread: one interface, two places.
 * `WriterThread` posts each job to a `worker_threads` worker (`writer-thread.ts`) that owns the
 * write connection, so a batch's transaction never blocks the event loop; `InProcessWriter` runs
 * the same `AuditWriter` synchronously on the main thread (':memory:', tests, the fallback when the
 * thread cannot start).
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';
import type Database from 'better-sqlite3';
import { workerEntry } from '../../worker-entry.js';
import type { AuditWriter, JobResult, WriteJob, WriterSetup } from './audit-writer.js';

export interface WriterBackend {
  readonly where: 'thread' | 'main';
  /** Resolves with the job's result; rejects with `WriterThreadGone` when the thread died meanwhile. */
  run(job: WriteJob): Promise<JobResult>;
  exec(sql: string): Promise<void>;
  /**
   * Clears the marker (unless `keepMarker`: another writer takes over) and closes the write
   * connection; bounded by `timeoutMs` (then terminated).
   */
  close(timeoutMs: number, keepMarker?: boolean): Promise<{ markerCleared: boolean }>;
}

export type ToWriter =
  | { type: 'job'; seq: number; job: WriteJob }
  | { type: 'exec'; seq: number; sql: string }
  | { type: 'close'; seq: number; keepMarker?: boolean }
  /** Tests: the thread exits as if it crashed (between jobs, like a real crash would look here). */
  | { type: 'exit'; seq: number };

export type FromWriter =
  /** `lowPriority`: the thread lowered its CPU priority (asked for, and on Linux). */
  | { type: 'ready'; lowPriority: boolean }
  | { type: 'result'; seq: number; result: JobResult }
  | { type: 'exec'; seq: number; error?: string }
  | { type: 'closed'; seq: number; markerCleared: boolean; error?: string };

/** The thread stopped (crashed, exited, was terminated, or never started). */
export class WriterThreadGone extends Error {
  constructor(
    message: string,
    /** False when it died before it was ready: starting it again is pointless. */
    readonly started: boolean,
  ) {
    super(message);
  }
}

export class InProcessWriter implements WriterBackend {
  readonly where = 'main';
  constructor(private readonly writer: AuditWriter) {}

  get db(): Database.Database | undefined {
    return this.writer.db;
  }

  detached(): boolean {
    return this.writer.detached();
  }

  run(job: WriteJob): Promise<JobResult> {
    try {
      return Promise.resolve(this.writer.run(job));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  exec(sql: string): Promise<void> {
    try {
      this.writer.exec(sql);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  close(): Promise<{ markerCleared: boolean }> {
    return Promise.resolve(this.writer.close());
  }
}

/** A job taking longer than this means a stuck thread: it is terminated (and restarted). */
const JOB_TIMEOUT_MS = 30_000;

interface Pending {
  resolve(value: FromWriter): void;
  reject(err: Error): void;
}

export class WriterThread implements WriterBackend {
  readonly where = 'thread';
  readonly worker: Worker;
  private ready = false;
  /** Whether the thread runs at low CPU priority: undefined until it is ready. */
  lowPriority: boolean | undefined;
  private closing = false;
  private gone = false;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();

  /**
   * Starts the thread (throws if it cannot even be created). `onGone` is called once if it stops
   * without being closed, before the pending calls are rejected.
   */
  constructor(
    setup: WriterSetup,
    private readonly onGone: (err: WriterThreadGone) => void,
    script?: URL,
  ) {
    const entry = threadEntry(script);
    this.worker = new Worker(entry.filename, {
      ...entry.options,
      workerData: setup,
      // The thread holds one batch at a time: a small heap keeps the process's RSS flat instead of
      // letting V8 size a second full heap for it (measured: +80 MiB under load without limits).
      resourceLimits: { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 24 },
    });
    // Idle, the thread must not keep the process alive (like the unref'd flush timer); a call in
    // flight does (`ref` in `call`), so an awaited flush() always gets its answer.
    this.worker.unref();
    this.worker.on('message', (msg: FromWriter) => this.onMessage(msg));
    this.worker.on('error', (err) => this.stop(err.message));
    this.worker.on('exit', (code) => this.stop(`the audit writer thread exited with code ${code}`));
  }

  async run(job: WriteJob): Promise<JobResult> {
    // Rows cross as they are queued, positional arrays, by structured clone: no JSON text is made
    // on this thread or parsed on the writer's (docs/audit.md, "What runs where"; issue 11).
    const msg: ToWriter = { type: 'job', seq: 0, job };
    const reply = await this.call(msg, JOB_TIMEOUT_MS);
    if (reply.type !== 'result') throw new Error(`unexpected reply ${reply.type}`);
    return reply.result;
  }

  async exec(sql: string): Promise<void> {
    const reply = await this.call({ type: 'exec', seq: 0, sql }, JOB_TIMEOUT_MS);
    if (reply.type === 'exec' && reply.error !== undefined) throw new Error(reply.error);
  }

  async close(timeoutMs: number, keepMarker = false): Promise<{ markerCleared: boolean }> {
    let markerCleared = false;
    // From here an exit is expected: not a crash to report.
    this.closing = true;
    if (!this.gone) {
      try {
        const reply = await this.call({ type: 'close', seq: 0, keepMarker }, timeoutMs);
        markerCleared = reply.type === 'closed' && reply.markerCleared;
      } catch {
        // Timed out or died: terminated below; the caller clears the marker itself.
      }
    }
    await this.worker.terminate();
    return { markerCleared };
  }

  /** Tests: makes the thread exit with code 1 (a crash, as the main thread sees it). */
  crashForTests(): void {
    this.worker.postMessage({ type: 'exit', seq: 0 } satisfies ToWriter);
  }

  private call(msg: ToWriter, timeoutMs: number): Promise<FromWriter> {
    if (this.gone) return Promise.reject(new WriterThreadGone('the audit writer thread is gone', this.ready));
    const seq = ++this.seq;
    this.worker.ref();
    return new Promise<FromWriter>((resolve, reject) => {
      const timer = setTimeout(() => {
        // A stuck thread (SQLite waits at most its busy timeout, so this is not a lock): stop it.
        // Last resort only: terminating a thread inside a failing better-sqlite3 call aborts the
        // whole process (seen here; same stack as WiseLibs/better-sqlite3#842).
        if (msg.type === 'close') reject(new Error('the audit writer thread did not close in time'));
        else void this.worker.terminate();
      }, timeoutMs);
      timer.unref();
      const done = (): void => {
        clearTimeout(timer);
        this.pending.delete(seq);
        if (this.pending.size === 0) this.worker.unref();
      };
      this.pending.set(seq, {
        resolve: (v) => (done(), resolve(v)),
        reject: (e) => (done(), reject(e)),
      });
      this.worker.postMessage({ ...msg, seq });
    });
  }

  private onMessage(msg: FromWriter): void {
    if (msg.type === 'ready') {
      this.ready = true;
      this.lowPriority = msg.lowPriority;
      return;
    }
    this.pending.get(msg.seq)?.resolve(msg);
  }

  private stop(message: string): void {
    if (this.gone) return;
    this.gone = true;
    const err = new WriterThreadGone(message, this.ready);
    if (!this.closing) this.onGone(err);
    for (const p of [...this.pending.values()]) p.reject(err);
  }
}

/**
 * The compiled package (dist/) has `writer-thread.js` next to this file. From the TypeScript
 * sources (vitest, `node --import tsx`) there is only the .ts, and a worker does not inherit the
 * parent's loader hooks (nor honour `--import` in its execArgv on Node 20): it registers tsx itself
 * before importing the entry.
 */
function threadEntry(script?: URL): { filename: string | URL; options: WorkerOptions } {
  if (script) return { filename: script, options: { execArgv: [] } };
  return workerEntry(new URL('./writer-thread.js', import.meta.url));
}
