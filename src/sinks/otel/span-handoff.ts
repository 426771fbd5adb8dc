/**
 * Span export off the main thread (docs/opentelemetry.md, "Where spans are exported"; issue 11).
 *
 * The SDK still makes every span on the main thread: the sampler, span limits, ids and the
 * propagated context stay exactly as sdk-node sets them up from OTEL_*. What this span processor
 * replaces is the batch span processor and the OTLP exporter there: each ended, sampled span is
 * copied into a flat array (span-wire.ts) and handed, a batch at a time, to a worker thread
 * (span-thread.ts) that runs sdk-node's own processor and exporter for OTEL_TRACES_EXPORTER=otlp,
 * built from the same OTEL_* variables (protocol, endpoint, headers, timeouts, OTEL_BSP_*). The
 * OTLP serializer, about two thirds of what a span cost the main thread, runs there.
 *
 * Bounded like the batch processor it stands in for: at most OTEL_BSP_MAX_QUEUE_SIZE spans
 * (default 2048) wait between the threads; past that a span is dropped and counted. The SDK's
 * diagnostics on that thread (a failed export) come back to the main thread's diag logger, where
 * they are counted and logged like any other OpenTelemetry failure. If the thread dies, the failure
 * is reported once, spans are dropped while it is gone, and a new one is started after a pause.
 */
import { Worker } from 'node:worker_threads';
import { TraceFlags, diag } from '@opentelemetry/api';
import type { tracing } from '@opentelemetry/sdk-node';
import { workerEntry } from '../../worker-entry.js';
import {
  ShapeTable,
  encodeSpan,
  type FromSpanThread,
  type ToSpanThread,
  type WireScope,
  type WireSpan,
} from './span-wire.js';

export interface SpanHandOffOptions {
  /** The environment of the export thread: sdk-node reads the exporter's settings from it. */
  env: Record<string, string>;
  /** OTEL_LOG_LEVEL, for the export thread's diag logger (the main thread filters again). */
  logLevel: string | undefined;
  /** OTEL_BSP_MAX_QUEUE_SIZE: spans that may wait between the threads. */
  maxQueueSize: number;
  /** After the thread died, spans are dropped this long before a new one starts; default 5 s. */
  restartPauseMs?: number;
  /** Tests: the thread's entry instead of span-thread.js. */
  script?: URL;
}

/** Spans handed over in one message, at most; fewer when the hand-off timer fires first. */
const HAND_OFF_BATCH = 64;
/** How long an ended span may wait on the main thread before its batch is handed over. */
const HAND_OFF_DELAY_MS = 20;
/** After the thread died, spans are dropped this long before a new one starts. */
const RESTART_PAUSE_MS = 5_000;
/** Longest wait for the thread's answer to a flush; the sink's close() bounds shutdown by 5 s. */
const CALL_TIMEOUT_MS = 30_000;

interface Pending {
  resolve(error?: string): void;
}

export class SpanHandOff implements tracing.SpanProcessor {
  private worker: Worker | undefined;
  /** Spans handed to the thread that it has not yet given to its processor (shared counter). */
  private consumed = new Int32Array(new SharedArrayBuffer(4));
  private posted = 0;
  private buffer: WireSpan[] = [];
  private readonly shapes = new ShapeTable();
  /** Scopes numbered for the current thread, and those to send with the next batch. */
  private readonly scopeIds = new Map<object, number>();
  private freshScopes: [number, WireScope][] = [];
  private timer: NodeJS.Timeout | undefined;
  /** The resource last sent to the current thread (every span of one provider carries the same). */
  private resource: object | undefined;
  /** Settles once that resource is on its way (after its async attributes): flushes wait for it. */
  private resourceSent: Promise<void> = Promise.resolve();
  private dropped = 0;
  /** Spans ended while no thread was running (between a crash and its replacement). */
  private lostWhileGone = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();

  constructor(private readonly opts: SpanHandOffOptions) {
    this.worker = this.start();
  }

  onStart(): void {}

  onEnd(span: tracing.ReadableSpan): void {
    if (this.closed || (span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    if (!this.worker) {
      this.lostWhileGone++;
      return;
    }
    if (this.posted + this.buffer.length - Atomics.load(this.consumed, 0) >= this.opts.maxQueueSize) {
      return this.drop();
    }
    if (span.resource !== this.resource) this.sendResource(span.resource);
    let scope = this.scopeIds.get(span.instrumentationScope);
    if (scope === undefined) {
      const { name, version, schemaUrl } = span.instrumentationScope;
      scope = this.scopeIds.size;
      this.scopeIds.set(span.instrumentationScope, scope);
      this.freshScopes.push([scope, { name, version, schemaUrl }]);
    }
    this.buffer.push(encodeSpan(span, scope, this.shapes));
    if (this.buffer.length >= HAND_OFF_BATCH) this.handOver();
    else this.timer ??= setTimeout(() => this.handOver(), HAND_OFF_DELAY_MS).unref();
  }

  async forceFlush(): Promise<void> {
    this.handOver();
    // Spans handed over before their resource wait for it on the thread: flush after it arrives.
    await this.resourceSent;
    await this.call('flush');
  }

  async shutdown(): Promise<void> {
    if (this.closed) return;
    this.handOver();
    this.closed = true;
    clearTimeout(this.restartTimer);
    await this.resourceSent;
    await this.call('shutdown');
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }

  /** Tests: the export thread exits as if it crashed. */
  crashForTests(): void {
    void this.worker?.terminate();
  }

  private start(): Worker {
    const entry = this.opts.script
      ? { filename: this.opts.script, options: { execArgv: [] } }
      : workerEntry(new URL('./span-thread.js', import.meta.url));
    this.consumed = new Int32Array(new SharedArrayBuffer(4));
    this.posted = 0;
    this.resource = undefined;
    this.shapes.clear();
    this.scopeIds.clear();
    this.freshScopes = [];
    const worker = new Worker(entry.filename, {
      ...entry.options,
      env: this.opts.env,
      workerData: { consumed: this.consumed, logLevel: this.opts.logLevel },
      // sdk-node and its exporters take 25-30 MiB of heap once loaded (43-49 MiB from the sources
      // under tsx), plus at most a queue of spans and one export. A cap well above that keeps V8
      // from sizing the thread's heap like the main thread's; 48 MiB ran out on Node 24 at start.
      resourceLimits: { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 128 },
    });
    // Never keeps the process alive by itself; a flush or shutdown in flight does (`call`).
    worker.unref();
    worker.on('message', (msg: FromSpanThread) => this.onMessage(msg));
    worker.on('error', (err) => this.gone(worker, err.message));
    worker.on('exit', (code) => this.gone(worker, `exited with code ${code}`));
    return worker;
  }

  /**
   * A new thread after the pause, from a timer: creating a worker takes 1-11 ms of this thread
   * (measured), which must not land on a request's end.
   */
  private scheduleRestart(): void {
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.closed) return;
      try {
        this.worker = this.start();
      } catch (err) {
        diag.error(`span export thread could not start: ${(err as Error).message}`);
        this.scheduleRestart();
        return;
      }
      if (this.lostWhileGone > 0) {
        diag.warn(`${this.lostWhileGone} span(s) dropped while the span export thread restarted`);
        this.lostWhileGone = 0;
      }
    }, this.opts.restartPauseMs ?? RESTART_PAUSE_MS).unref();
  }

  private gone(worker: Worker, why: string): void {
    if (this.worker !== worker) return;
    this.worker = undefined;
    const lost = this.posted - Atomics.load(this.consumed, 0) + this.buffer.length;
    this.buffer = [];
    for (const p of this.pending.values()) p.resolve(`the span export thread ${why}`);
    this.pending.clear();
    if (this.closed) return;
    diag.error(`span export thread stopped (${why}); ${lost} span(s) lost, restarting`);
    this.scheduleRestart();
  }

  private drop(): void {
    // Reported the way the batch span processor reports its own full queue.
    if (this.dropped++ === 0) diag.warn('span export queue full (OTEL_BSP_MAX_QUEUE_SIZE): dropping spans');
  }

  private sendResource(resource: tracing.ReadableSpan['resource']): void {
    this.resource = resource;
    const worker = this.worker;
    const send = (): void => {
      if (this.worker !== worker) return;
      this.post({
        type: 'resource',
        resource: { attributes: resource.attributes, schemaUrl: resource.schemaUrl },
      });
    };
    // Spans sent meanwhile wait on the thread for their resource (a detector's async attributes).
    if (resource.asyncAttributesPending && resource.waitForAsyncAttributes) {
      this.resourceSent = resource.waitForAsyncAttributes().then(send, send);
    } else send();
  }

  private handOver(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.buffer.length === 0) return;
    const spans = this.buffer;
    const scopes = this.freshScopes;
    this.buffer = [];
    this.freshScopes = [];
    this.posted += spans.length;
    this.post({ type: 'spans', shapes: this.shapes.take(), scopes, spans });
  }

  private post(msg: ToSpanThread): void {
    try {
      this.worker?.postMessage(msg);
    } catch (err) {
      // A value the structured clone refuses (no attribute value should be one): the batch is lost.
      diag.error(`span hand-off failed: ${(err as Error).message}`);
      if (msg.type === 'spans') Atomics.add(this.consumed, 0, msg.spans.length);
    }
  }

  private call(type: 'flush' | 'shutdown'): Promise<void> {
    const worker = this.worker;
    if (!worker) return Promise.resolve();
    const seq = ++this.seq;
    worker.ref();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(
        () => settle(`the span export thread did not answer ${type} in time`),
        CALL_TIMEOUT_MS,
      );
      timer.unref();
      const settle = (error?: string): void => {
        clearTimeout(timer);
        this.pending.delete(seq);
        if (this.pending.size === 0) worker.unref();
        if (error !== undefined) diag.error(error);
        resolve();
      };
      this.pending.set(seq, { resolve: settle });
      this.post({ type, seq });
    });
  }

  private onMessage(msg: FromSpanThread): void {
    if (msg.type === 'diag') diag[msg.level](msg.message);
    else this.pending.get(msg.seq)?.resolve(msg.error);
  }
}
