import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, SILENT_LOGGER } from '../../src/log.js';
import { createOtelSink, type OtelSink } from '../../src/sinks/otel/index.js';
import { otelSignalsFromEnv, sdkNodeEnv, withOtelEnv } from '../../src/sinks/otel/env.js';
import { requestLogRecord } from '../../src/sinks/otel/logs.js';
import { NOOP_HEALTH, type HealthCounters } from '../../src/sinks/types.js';
import { startAndRecord } from '../metrics/records.js';

const PARENT_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_SPAN = '00f067aa0ba902b7';
const INCOMING = {
  traceparent: `00-${PARENT_TRACE}-${PARENT_SPAN}-01`,
  tracestate: 'congo=t61rcWkgMzE',
};

function countingHealth(): HealthCounters & { errors: string[] } {
  const errors: string[] = [];
  return { ...NOOP_HEALTH, errors, internalError: (c: string) => void errors.push(c) };
}

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (closers.length > 0) await closers.pop()!();
});

async function memorySink(): Promise<{ sink: OtelSink; exporter: InMemorySpanExporter }> {
  const exporter = new InMemorySpanExporter();
  const sink = await createOtelSink({
    env: {},
    captureContent: false,
    traceExporter: exporter,
    log: SILENT_LOGGER,
    health: NOOP_HEALTH,
  });
  if (!sink) throw new Error('trace sink should be on with an explicit exporter');
  closers.push(() => sink.close());
  return { sink, exporter };
}

describe('trace sink with an in-memory exporter', () => {
  it('makes one CLIENT span per request, parented on the incoming traceparent, with §8 attributes', async () => {
    const { sink, exporter } = await memorySink();
    const { start, record } = startAndRecord(
      { headers: INCOMING, app: 'chatbot', stream: true },
      {
        response_model: 'deepseek-chat-0324',
        finish_reason: 'stop',
        ttft_ms: 200,
        trace_id: PARENT_TRACE,
      },
    );
    const handle = sink.begin(start);
    handle.end(record);
    await sink.forceFlush();

    const spans = exporter.getFinishedSpans();
    expect(spans).toHaveLength(1);
    const span = spans[0]!;
    expect(span.name).toBe('chat deepseek-chat');
    expect(span.kind).toBe(SpanKind.CLIENT);
    // Parent is the app's span from the incoming header; same trace.
    expect(span.spanContext().traceId).toBe(PARENT_TRACE);
    expect(span.parentSpanContext?.spanId).toBe(PARENT_SPAN);
    expect(handle.traceId).toBe(PARENT_TRACE);
    // The header for the upstream carries the span's OWN id, so the upstream's spans nest under ours.
    expect(handle.upstreamHeaders).toEqual({
      traceparent: `00-${PARENT_TRACE}-${span.spanContext().spanId}-01`,
      tracestate: INCOMING.tracestate,
    });
    expect(span.spanContext().spanId).not.toBe(PARENT_SPAN);

    expect(span.attributes).toEqual({
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'openai',
      'gen_ai.request.model': 'deepseek-chat',
      'gen_ai.response.model': 'deepseek-chat-0324',
      'gen_ai.usage.input_tokens': 1000, // 400 uncached + 600 cached (semconv counts cached input)
      'gen_ai.usage.output_tokens': 500,
      'gen_ai.response.finish_reasons': ['stop'],
      'server.address': 'cailag.xin',
      'server.port': 443,
      'http.response.status_code': 200,
      'tokenmeter.cost': 0.0011826,
      'tokenmeter.currency': 'CNY',
      'tokenmeter.usage_source': 'reported',
      'tokenmeter.app': 'chatbot',
      'tokenmeter.upstream': 'cailag',
      'tokenmeter.record_id': start.id,
      'tokenmeter.usage.cache_read_tokens': 600,
    });
    expect(span.status.code).toBe(SpanStatusCode.UNSET);
    // Timing comes from the record, not from when write() ran.
    const ms = (t: [number, number]) => t[0] * 1000 + t[1] / 1e6;
    expect(ms(span.startTime)).toBe(record.ts_start);
    expect(ms(span.endTime)).toBe(record.ts_end);
  });

  it('starts a new trace when there is no incoming traceparent', async () => {
    const { sink, exporter } = await memorySink();
    const { start, record } = startAndRecord({ operation: 'messages', request_model: 'claude-sonnet-4' }, {});
    const handle = sink.begin(start);
    handle.end(record);
    await sink.forceFlush();
    const span = exporter.getFinishedSpans()[0]!;
    expect(span.parentSpanContext).toBeUndefined();
    expect(span.attributes['gen_ai.provider.name']).toBe('anthropic');
    expect(handle.traceId).toBe(span.spanContext().traceId);
    expect(handle.upstreamHeaders?.traceparent).toBe(
      `00-${span.spanContext().traceId}-${span.spanContext().spanId}-01`,
    );
  });

  it('honours an unsampled parent (no span exported, flags 00 propagated) and ignores a malformed traceparent', async () => {
    const { sink, exporter } = await memorySink();
    const unsampled = startAndRecord(
      { headers: { traceparent: `00-${PARENT_TRACE}-${PARENT_SPAN}-00` } },
      {},
    );
    const h1 = sink.begin(unsampled.start);
    h1.end(unsampled.record);
    expect(h1.traceId).toBe(PARENT_TRACE);
    expect(h1.upstreamHeaders?.traceparent).toMatch(new RegExp(`^00-${PARENT_TRACE}-[0-9a-f]{16}-00$`));

    const malformed = startAndRecord({ headers: { traceparent: 'garbage' } }, {});
    const h2 = sink.begin(malformed.start);
    h2.end(malformed.record);
    await sink.forceFlush();
    const spans = exporter.getFinishedSpans();
    expect(spans).toHaveLength(1); // only the malformed-parent request, as a new root
    expect(spans[0]!.parentSpanContext).toBeUndefined();
    expect(h2.traceId).toBe(spans[0]!.spanContext().traceId);
    expect(h2.traceId).not.toBe(PARENT_TRACE);
  });

  it('marks errors, and leaves unknown usage and cost off the span (never zero)', async () => {
    const { sink, exporter } = await memorySink();
    const { start, record } = startAndRecord(
      { request_model: null },
      {
        http_status: 429,
        error_type: 'rate_limited',
        error_message: 'Rate limit reached for requests',
        input_tokens: null,
        cache_read_tokens: null,
        output_tokens: null,
        usage_source: 'none',
        cost_nanos: null,
        currency: null,
        cost_source: null,
        finish_reason: null,
        response_model: null,
      },
    );
    sink.begin(start).end(record);
    await sink.forceFlush();
    const span = exporter.getFinishedSpans()[0]!;
    expect(span.name).toBe('chat');
    expect(span.status.code).toBe(SpanStatusCode.ERROR);
    expect(span.attributes['error.type']).toBe('rate_limited');
    for (const key of [
      'gen_ai.usage.input_tokens',
      'gen_ai.usage.output_tokens',
      'tokenmeter.cost',
      'tokenmeter.currency',
      'gen_ai.request.model',
    ]) {
      expect(span.attributes, key).not.toHaveProperty(key);
    }
    // No content and no upstream error text on spans.
    expect(JSON.stringify(span.attributes)).not.toContain('Rate limit reached');
  });

  it('never puts ids of users or keys on spans', async () => {
    const { sink, exporter } = await memorySink();
    const { start, record } = startAndRecord(
      { headers: { ...INCOMING, authorization: 'Bearer sk-secret' } },
      {},
    );
    sink.begin(start).end(record);
    await sink.forceFlush();
    const text = JSON.stringify(exporter.getFinishedSpans()[0]!.attributes);
    expect(text).not.toMatch(/sk-secret|user-42|abcdef012345/);
  });
  it('write() without begin makes a root span named and attributed like begin(), minus server.*', async () => {
    const { sink, exporter } = await memorySink();
    const { start, record } = startAndRecord({ headers: INCOMING, app: 'chatbot' }, {});
    sink.write(record);
    await sink.forceFlush();
    const [span] = exporter.getFinishedSpans();
    expect(span!.name).toBe('chat deepseek-chat');
    expect(span!.kind).toBe(SpanKind.CLIENT);
    expect(span!.parentSpanContext).toBeUndefined();
    expect(span!.attributes).toMatchObject({
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'openai',
      'gen_ai.request.model': 'deepseek-chat',
      'tokenmeter.app': 'chatbot',
      'tokenmeter.upstream': 'cailag',
      'tokenmeter.record_id': start.id,
    });
    // A record carries no upstream URL, so server.address/port are unknown and left off.
    expect(span!.attributes).not.toHaveProperty('server.address');
    expect(span!.attributes).not.toHaveProperty('server.port');
  });

  it('OTEL_SDK_DISABLED turns tracing off even with an injected exporter', async () => {
    const sink = await createOtelSink({
      env: { OTEL_SDK_DISABLED: 'true' },
      captureContent: false,
      traceExporter: new InMemorySpanExporter(),
      log: SILENT_LOGGER,
      health: NOOP_HEALTH,
    });
    expect(sink).toBeUndefined();
  });
});

describe('trace sink configuration from OTEL_* env', () => {
  it('is off unless an OTLP endpoint or exporter is configured, and off when the SDK is disabled', async () => {
    const make = async (env: NodeJS.ProcessEnv) =>
      await createOtelSink({ env, captureContent: false, log: SILENT_LOGGER, health: NOOP_HEALTH });
    expect(await make({})).toBeUndefined();
    expect(
      await make({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1' }),
    ).toBeUndefined();
    expect(
      await make({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1' }),
    ).toBeUndefined();
    const on = await make({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1' });
    expect(on).toBeDefined();
    closers.push(() => on!.close());
  });

  it('turns each signal on only when asked: traces by endpoint or exporter, metrics and logs by their exporter', () => {
    expect(otelSignalsFromEnv({})).toEqual({ traces: false, metrics: false, logs: false });
    expect(otelSignalsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toEqual({
      traces: true,
      metrics: false,
      logs: false,
    });
    expect(otelSignalsFromEnv({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' }).traces).toBe(
      true,
    );
    expect(otelSignalsFromEnv({ OTEL_TRACES_EXPORTER: 'console' }).traces).toBe(true);
    expect(
      otelSignalsFromEnv({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c' }).traces,
    ).toBe(false);
    expect(otelSignalsFromEnv({ OTEL_METRICS_EXPORTER: 'otlp', OTEL_LOGS_EXPORTER: ' otlp ' })).toEqual({
      traces: false,
      metrics: true,
      logs: true,
    });
    expect(otelSignalsFromEnv({ OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: '' })).toEqual({
      traces: false,
      metrics: false,
      logs: false,
    });
    expect(otelSignalsFromEnv({ OTEL_SDK_DISABLED: 'TRUE', OTEL_METRICS_EXPORTER: 'otlp' }, true)).toEqual({
      traces: false,
      metrics: false,
      logs: false,
    });
    expect(otelSignalsFromEnv({}, true).traces).toBe(true);
  });

  it('hands sdk-node only OTEL_* variables, with signals left off set to none, and restores process.env', () => {
    const vars = sdkNodeEnv(
      { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_LOG_LEVEL: 'debug', PATH: '/bin' },
      { traces: true, metrics: false, logs: false },
    );
    expect(vars).toEqual({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c',
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_LOGS_EXPORTER: 'none',
    });
    process.env.OTEL_SERVICE_NAME = 'outer';
    try {
      const seen = withOtelEnv({ OTEL_TRACES_EXPORTER: 'none' }, () => ({
        service: process.env.OTEL_SERVICE_NAME,
        exporter: process.env.OTEL_TRACES_EXPORTER,
      }));
      expect(seen).toEqual({ service: undefined, exporter: 'none' });
      expect(process.env.OTEL_SERVICE_NAME).toBe('outer');
      expect(process.env).not.toHaveProperty('OTEL_TRACES_EXPORTER');
    } finally {
      delete process.env.OTEL_SERVICE_NAME;
    }
  });
});

describe('OpenTelemetry sink failures and the other signals', () => {
  it('an exporter pointed at a closed port never throws into traffic; the failure is counted and logged once', async () => {
    // A port that was just free: listen, note it, close.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as AddressInfo;
    await new Promise<void>((resolve) => probe.close(() => resolve()));

    const health = countingHealth();
    const lines: string[] = [];
    const sink = (await createOtelSink({
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
        OTEL_EXPORTER_OTLP_TIMEOUT: '2000',
      },
      captureContent: false,
      log: createLogger('debug', (l) => lines.push(l)),
      health,
      closeTimeoutMs: 5000,
    }))!;
    // begin/end are synchronous and return before any export is attempted.
    for (let i = 0; i < 20; i++) {
      const { start, record } = startAndRecord({ headers: INCOMING }, {});
      const handle = sink.begin(start);
      expect(handle).not.toBeInstanceOf(Promise);
      expect(handle.upstreamHeaders?.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
      expect(handle.end(record)).toBeUndefined();
    }
    await expect(sink.forceFlush()).resolves.toBeUndefined();
    const { start, record } = startAndRecord({}, {});
    sink.begin(start).end(record);
    await expect(sink.close()).resolves.toBeUndefined();

    expect(health.errors.length).toBeGreaterThanOrEqual(1);
    expect(new Set(health.errors)).toEqual(new Set(['otel']));
    expect(lines.filter((l) => l.includes('OpenTelemetry export failed'))).toHaveLength(1);
  });

  it('with traces off (metrics or logs only), begin() adds no header and no trace id', async () => {
    const sink = (await createOtelSink({
      env: { OTEL_METRICS_EXPORTER: 'console', OTEL_METRIC_EXPORT_INTERVAL: '60000' },
      captureContent: false,
      log: SILENT_LOGGER,
      health: NOOP_HEALTH,
    }))!;
    closers.push(() => sink.close());
    expect(sink.signals).toEqual({ traces: false, metrics: true, logs: false });
    const { start, record } = startAndRecord({ headers: INCOMING }, {});
    const handle = sink.begin(start);
    expect(handle.upstreamHeaders).toBeUndefined();
    expect(handle.traceId).toBeUndefined();
    expect(() => handle.end(record)).not.toThrow();
  });

  it('a log record carries every known record field under its audit-column name, nulls left out', () => {
    const { record } = startAndRecord({}, { user: 'user-42', error_type: null });
    const log = requestLogRecord(record, undefined);
    const expected = Object.fromEntries(Object.entries(record).filter(([, v]) => v !== null));
    expect(log.attributes).toEqual(expected);
    expect(log.attributes).not.toHaveProperty('cache_write_tokens'); // null in the record: unknown
    expect(log).toMatchObject({
      eventName: 'tokenmeter.request',
      severityNumber: 9,
      severityText: 'INFO',
      timestamp: record.ts_end,
      body: 'chat deepseek-chat 200 1.5 s, 400 in + 500 out tokens, 0.0011826 CNY',
    });
    const failed = requestLogRecord({ ...record, http_status: null, error_type: 'network' }, undefined);
    expect(failed).toMatchObject({ severityNumber: 13, severityText: 'WARN' });
    expect(failed.body).toMatch(/^chat deepseek-chat network /);
  });
});
