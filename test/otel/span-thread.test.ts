/**
 * Span export off the main thread (src/sinks/otel/span-handoff.ts, span-thread.ts; issue 11): the
 * SDK makes each span on the main thread, the export thread runs sdk-node's batch processor and
 * OTLP exporter. What crosses must be the span the SDK made, field for field; a span ended just
 * before shutdown still leaves; a dead thread is reported, costs only the spans it held and comes
 * back; a thread that falls behind is bounded by OTEL_BSP_MAX_QUEUE_SIZE.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  defaultTextMapGetter,
  diag,
  trace,
  type DiagLogger,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import type { tracing } from '@opentelemetry/sdk-node';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { createOtelSink } from '../../src/sinks/otel/index.js';
import { SpanHandOff, type SpanHandOffOptions } from '../../src/sinks/otel/span-handoff.js';
import { ShapeTable, decodeSpan, encodeSpan } from '../../src/sinks/otel/span-wire.js';
import { NOOP_HEALTH } from '../../src/sinks/types.js';
import { startOtlpHttpReceiver, type OtlpReceiver } from './otlp-receivers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

/** OTel's diag messages while a test runs (the hand-off reports through the global diag API). */
function captureDiag(): { errors: string[]; warns: string[]; infos: string[] } {
  const seen = { errors: [] as string[], warns: [] as string[], infos: [] as string[] };
  const logger: DiagLogger = {
    error: (m) => void seen.errors.push(String(m)),
    warn: (m) => void seen.warns.push(String(m)),
    info: (m) => void seen.infos.push(String(m)),
    debug: () => {},
    verbose: () => {},
  };
  diag.setLogger(logger, { logLevel: 60, suppressOverrideMessage: true });
  cleanups.push(() => diag.disable());
  return seen;
}

const INCOMING = {
  traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
  tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7',
};

/** Ended spans as the SDK makes them: a child of a remote parent with trace state, events, links. */
function sdkSpans(): tracing.ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'tokenmeter', 'host.name': 'box' }),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer('tokenmeter', '1.2.3');
  const parent = new W3CTraceContextPropagator().extract(ROOT_CONTEXT, INCOMING, defaultTextMapGetter);
  const a = tracer.startSpan(
    'chat gpt-4o',
    {
      kind: SpanKind.CLIENT,
      attributes: { 'gen_ai.operation.name': 'chat', 'server.port': 443, 'tokenmeter.cost': 0.0000024 },
      links: [{ context: trace.getSpanContext(parent)!, attributes: { why: 'retry-of' } }],
    },
    parent,
  );
  a.setAttributes({ 'gen_ai.response.finish_reasons': ['stop', 'length'], 'gen_ai.usage.output_tokens': 8 });
  a.addEvent('first byte', { 'ttft.ms': 200 });
  a.setStatus({ code: SpanStatusCode.ERROR, message: 'timeout' });
  a.end();
  const b = tracer.startSpan('embeddings', { attributes: { 'gen_ai.operation.name': 'embeddings' } });
  b.end();
  // Same attribute names as `a`'s start, so the second use of a shape is covered too.
  const c = tracer.startSpan('chat gpt-4o', {
    attributes: { 'gen_ai.operation.name': 'chat', 'server.port': 80, 'tokenmeter.cost': 1 },
  });
  c.setAttributes({ 'gen_ai.response.finish_reasons': ['stop'], 'gen_ai.usage.output_tokens': 1 });
  c.end();
  return exporter.getFinishedSpans() as unknown as tracing.ReadableSpan[];
}

/** Every field of a ReadableSpan that an exporter reads, as plain data. */
function exported(s: tracing.ReadableSpan) {
  const ctx = (c: ReturnType<tracing.ReadableSpan['spanContext']> | undefined) =>
    c && { ...c, traceState: c.traceState?.serialize() };
  return {
    name: s.name,
    kind: s.kind,
    context: ctx(s.spanContext()),
    parent: ctx(s.parentSpanContext),
    startTime: s.startTime,
    endTime: s.endTime,
    duration: s.duration,
    ended: s.ended,
    status: s.status,
    attributes: s.attributes,
    links: s.links.map((l) => ({ ...l, context: ctx(l.context) })),
    events: s.events,
    resource: s.resource.attributes,
    scope: { name: s.instrumentationScope.name, version: s.instrumentationScope.version },
    dropped: [s.droppedAttributesCount, s.droppedEventsCount, s.droppedLinksCount],
  };
}

describe('a span crossing to the export thread', () => {
  it('arrives as the span the SDK made: context and trace state, parent, times, status, attributes, events, links, scope', () => {
    const spans = sdkSpans();
    expect(spans).toHaveLength(3);
    const shapes = new ShapeTable();
    const wire = spans.map((s) => encodeSpan(s, 0, shapes));
    // What the thread receives is a structured clone of this message.
    const received = structuredClone({ shapes: shapes.take(), spans: wire });
    expect(received.shapes).toHaveLength(2); // `a`'s and `b`'s attribute names; `c` reuses the first
    const tables = {
      shapes: new Map(received.shapes),
      scopes: new Map([[0, { name: 'tokenmeter', version: '1.2.3' }]]),
      resource: resourceFromAttributes(spans[0]!.resource.attributes),
    };
    const back = received.spans.map((w) => decodeSpan(w, tables));
    expect(back.map(exported)).toEqual(spans.map(exported));
    expect(back[0]!.spanContext().traceState?.get('rojo')).toBe('00f067aa0ba902b7');
    expect(back[0]!.parentSpanContext?.isRemote).toBe(true);
    // One scope object for every span of a batch: the OTLP serializer groups spans by identity.
    expect(back[1]!.instrumentationScope).toBe(back[0]!.instrumentationScope);
  });

  it('numbers each list of attribute names once: same names in the same order share a number, nothing else does', () => {
    const shapes = new ShapeTable(3);
    expect(shapes.idOf(['a', 'b'])).toBe(0);
    expect(shapes.idOf(['a', 'c'])).toBe(1); // same length, other name
    expect(shapes.idOf(['b', 'a'])).toBe(2); // same names, other order: values go by position
    expect(shapes.idOf(['a', 'b'])).toBe(0);
    expect(shapes.idOf(['a'])).toBe(-1); // full
    expect(shapes.take()).toEqual([
      [0, ['a', 'b']],
      [1, ['a', 'c']],
      [2, ['b', 'a']],
    ]);
    expect(shapes.take()).toEqual([]);
    shapes.clear();
    expect(shapes.idOf(['a'])).toBe(0);
  });

  it('once the shape table is full, a span carries its attribute names itself', () => {
    const spans = sdkSpans();
    const shapes = new ShapeTable(1);
    const wire = spans.map((s) => encodeSpan(s, 0, shapes));
    const received = structuredClone({ shapes: shapes.take(), spans: wire });
    expect(received.shapes).toHaveLength(1);
    const tables = {
      shapes: new Map(received.shapes),
      scopes: new Map([[0, { name: 'tokenmeter' }]]),
      resource: resourceFromAttributes({}),
    };
    expect(received.spans.map((w) => decodeSpan(w, tables).attributes)).toEqual(
      spans.map((s) => s.attributes),
    );
  });
});

/** A tracer whose only span processor is the hand-off, exporting over OTLP/HTTP to `receiver`. */
function handOffTracer(
  receiver: OtlpReceiver,
  opts: Partial<SpanHandOffOptions> = {},
  resource = resourceFromAttributes({ 'service.name': 'tokenmeter-test' }),
) {
  const handOff = new SpanHandOff({
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: '20' },
    logLevel: undefined,
    maxQueueSize: 2048,
    ...opts,
  });
  const provider = new BasicTracerProvider({
    resource,
    spanProcessors: [handOff as never],
  });
  cleanups.push(() => provider.shutdown());
  const tracer = provider.getTracer('tokenmeter');
  const spans = (name: string, n: number) => {
    for (let i = 0; i < n; i++) tracer.startSpan(`${name} ${i}`).end();
  };
  return { handOff, provider, spans };
}

async function receiverUp(): Promise<OtlpReceiver> {
  const r = await startOtlpHttpReceiver();
  cleanups.push(() => r.close());
  return r;
}

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
};

describe('the span export thread', () => {
  it('exports what the main thread ended, and on shutdown what was ended just before it', async () => {
    const receiver = await receiverUp();
    const { provider, spans } = handOffTracer(receiver);
    spans('early', 3);
    await until(() => receiver.spans().length === 3);
    expect(receiver.spans().map((s) => s.name)).toEqual(['early 0', 'early 1', 'early 2']);
    expect(receiver.spans()[0]!.resource['service.name']).toBe('tokenmeter-test');
    spans('late', 2); // still on the main thread (hand-off timer) when shutdown starts
    await provider.shutdown();
    expect(receiver.spans().map((s) => s.name)).toEqual([
      'early 0',
      'early 1',
      'early 2',
      'late 0',
      'late 1',
    ]);
  });

  it('a span ended while the resource still detects (async attributes) is exported with them on shutdown', async () => {
    const receiver = await receiverUp();
    const hostId = new Promise<string>((resolve) => setTimeout(() => resolve('host-4711'), 300));
    const resource = resourceFromAttributes({ 'service.name': 'tokenmeter-test', 'host.id': hostId });
    const { provider, spans } = handOffTracer(receiver, {}, resource);
    spans('one', 1);
    await provider.shutdown();
    expect(receiver.spans().map((s) => [s.name, s.resource['host.id']])).toEqual([['one 0', 'host-4711']]);
  });

  it('a thread that dies is reported once, loses only what it held, and a new one takes over', async () => {
    const seen = captureDiag();
    const receiver = await receiverUp();
    const { handOff, provider, spans } = handOffTracer(receiver, { restartPauseMs: 300 });
    spans('before', 2);
    await provider.forceFlush();
    expect(receiver.spans()).toHaveLength(2);

    handOff.crashForTests();
    await until(() => seen.errors.length > 0);
    expect(seen.errors).toHaveLength(1);
    expect(seen.errors[0]).toMatch(/span export thread stopped/);
    spans('during', 2); // within the pause: dropped, not queued without bound
    await until(() =>
      seen.warns.some((w) => w.includes('2 span(s) dropped while the span export thread restarted')),
    );
    spans('after', 2); // a new thread, sent the resource again
    await provider.forceFlush();
    const names = receiver.spans().map((s) => s.name);
    expect(names).toEqual(['before 0', 'before 1', 'after 0', 'after 1']);
    expect(receiver.spans().at(-1)!.resource['service.name']).toBe('tokenmeter-test');
  });

  it('a thread that falls behind holds at most OTEL_BSP_MAX_QUEUE_SIZE spans; the rest are dropped and reported once', async () => {
    const seen = captureDiag();
    // A thread that takes spans off the port but never hands them on: the queue only fills.
    const dir = mkdtempSync(join(tmpdir(), 'tm-span-thread-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const script = join(dir, 'stuck.mjs');
    writeFileSync(
      script,
      `import { parentPort } from 'node:worker_threads';
       let spans = 0;
       parentPort.on('message', (m) => {
         if (m.type === 'spans') spans += m.spans.length;
         else parentPort.postMessage({ type: 'diag', level: 'info', message: 'received ' + spans }),
           parentPort.postMessage({ type: 'done', seq: m.seq });
       });`,
    );
    const receiver = await receiverUp();
    const { provider, spans } = handOffTracer(receiver, { maxQueueSize: 10, script: pathToFileURL(script) });
    spans('s', 25);
    await provider.forceFlush();
    expect(seen.infos).toContain('received 10');
    expect(seen.warns.filter((w) => w.includes('span export queue full'))).toHaveLength(1);
  });
});

describe('where the OpenTelemetry sink exports spans', () => {
  it('OTLP (the default exporter) on the export thread; console and a test exporter on the main thread', async () => {
    const receiver = await receiverUp();
    const cases = [
      { env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url }, where: 'thread' },
      { env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_TRACES_EXPORTER: 'otlp' }, where: 'thread' },
      { env: { OTEL_TRACES_EXPORTER: 'console' }, where: 'main' },
      { env: {}, traceExporter: new InMemorySpanExporter(), where: 'main' },
    ];
    for (const c of cases) {
      const lines: string[] = [];
      const sink = await createOtelSink({
        env: c.env,
        captureContent: false,
        log: createLogger('info', (l) => lines.push(l)),
        health: NOOP_HEALTH,
        ...(c.traceExporter ? { traceExporter: c.traceExporter } : {}),
      });
      await sink!.close();
      const on = lines
        .map((l) => JSON.parse(l) as { msg: string; span_export?: string })
        .find((l) => l.msg === 'OpenTelemetry on');
      expect(on?.span_export, JSON.stringify(c.env)).toBe(c.where);
    }
  });
});
