/**
 * The span export thread's entry (a `worker_threads` worker started by span-handoff.ts): sdk-node's
 * own span processors for the OTEL_* variables this thread was started with (a batch span processor
 * and the OTLP exporter of OTEL_EXPORTER_OTLP_PROTOCOL), fed the main thread's ended spans rebuilt
 * as `ReadableSpan`s. Diagnostics go back to the main thread, which counts and logs them.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { DiagLogger } from '@opentelemetry/api';
import { core, resources, type tracing } from '@opentelemetry/sdk-node';
// Not in sdk-node's index, but the function sdk-node itself calls for OTEL_TRACES_EXPORTER: the
// same exporter and OTEL_BSP_* reading as when the SDK runs on the main thread (pinned 0.223.x).
import { getSpanProcessorsFromEnv } from '@opentelemetry/sdk-node/build/src/utils.js';
import { diagLevel, diagText, setDiagLogger } from './diag.js';
import { decodeSpan, type FromSpanThread, type ToSpanThread, type WireResource } from './span-wire.js';

if (!parentPort) throw new Error('span-thread.ts runs as a worker thread of the OpenTelemetry sink');
const port = parentPort;
const { consumed, logLevel } = workerData as { consumed: Int32Array; logLevel: string | undefined };
const send = (msg: FromSpanThread): void => port.postMessage(msg);

const forward =
  (level: 'error' | 'warn' | 'info' | 'debug' | 'verbose') =>
  (...args: unknown[]): void =>
    send({ type: 'diag', level, message: diagText(args) });
const logger: DiagLogger = {
  error: forward('error'),
  warn: forward('warn'),
  info: forward('info'),
  debug: forward('debug'),
  verbose: forward('verbose'),
};
setDiagLogger(logger, diagLevel(logLevel));

const processors: tracing.SpanProcessor[] = getSpanProcessorsFromEnv(undefined);

let resource: resources.Resource | undefined;
/** Spans that arrived before their resource (its async attributes were still settling). */
let waiting: Extract<ToSpanThread, { type: 'spans' }>[] = [];
/** Attribute-name lists and instrumentation scopes, by the numbers the main thread gave them. */
const shapes = new Map<number, string[]>();
/** One scope object per number: the OTLP serializer groups spans by identity. */
const scopes = new Map<number, core.InstrumentationScope>();

function hand(batch: Extract<ToSpanThread, { type: 'spans' }>, r: resources.Resource): void {
  const tables = { shapes, scopes, resource: r };
  for (const w of batch.spans) {
    const span = decodeSpan(w, tables);
    for (const p of processors) p.onEnd(span);
  }
  Atomics.add(consumed, 0, batch.spans.length);
}

function setResource(w: WireResource): void {
  resource = resources.resourceFromAttributes(w.attributes, w.schemaUrl ? { schemaUrl: w.schemaUrl } : {});
  for (const batch of waiting) hand(batch, resource);
  waiting = [];
}

async function settle(seq: number, work: () => Promise<unknown>): Promise<void> {
  try {
    await work();
    send({ type: 'done', seq });
  } catch (err) {
    send({ type: 'done', seq, error: `span export failed: ${diagText([err])}` });
  }
}

port.on('message', (msg: ToSpanThread) => {
  switch (msg.type) {
    case 'resource':
      return setResource(msg.resource);
    case 'spans':
      for (const [id, names] of msg.shapes) shapes.set(id, names);
      for (const [id, scope] of msg.scopes) scopes.set(id, scope);
      if (resource) hand(msg, resource);
      else waiting.push(msg);
      return;
    case 'flush':
      void settle(msg.seq, () => Promise.all(processors.map((p) => p.forceFlush())));
      return;
    case 'shutdown':
      void settle(msg.seq, () => Promise.all(processors.map((p) => p.shutdown()))).then(() => port.close());
      return;
  }
});
