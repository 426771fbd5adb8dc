/**
 * The OpenTelemetry sink (DESIGN.md §8): one CLIENT span per proxied request, following the OTel
 * GenAI semantic conventions, exported over OTLP/HTTP with a BatchSpanProcessor.
 *
 * We make our own spans with a private tracer provider (never registered globally) and no
 * auto-instrumentation: the http instrumentation would add a second span for every upstream call
 * we already describe. Trace context is extracted from the incoming `traceparent`/`tracestate`
 * (W3C) and the span's own context is returned for the proxy to inject upstream.
 *
 * Telemetry never breaks traffic: `begin`/`write` only touch memory (the batch processor exports
 * in the background), and exporter failures are counted in
 * tokenmeter_internal_errors_total{component="traces"} and logged once.
 */
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  defaultTextMapGetter,
  defaultTextMapSetter,
  trace,
  type Attributes,
  type Context,
  type Span,
} from '@opentelemetry/api';
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  type ReadableSpan,
  type SpanExporter,
} from '@opentelemetry/sdk-trace-base';
import type { Logger } from '../log.js';
import { nanosToUnits } from '../pricing/money.js';
import type { RequestRecord } from '../record.js';
import { ATTR, GEN_AI_OPERATION_NAME, GEN_AI_PROVIDER_NAME, genAiInputTokens } from '../semconv.js';
import type { HealthCounters, RequestStart, Sink, SinkRequest } from './types.js';

export interface TraceSinkOptions {
  env: NodeJS.ProcessEnv;
  /** Put prompt/response content on spans. The record carries no content today, so this has no effect yet. */
  captureContent: boolean;
  /** Export to this exporter instead of OTLP (tests); enables tracing regardless of OTEL_* env. */
  exporter?: SpanExporter;
  log: Logger;
  health: HealthCounters;
  /** Upper bound on close() (flush + shutdown); default 5 s. */
  closeTimeoutMs?: number;
}

export interface TraceSink extends Sink {
  begin(start: RequestStart): SinkRequest;
  /** Export every ended span now (tests, and before reading an in-memory exporter). */
  forceFlush(): Promise<void>;
}

const DEFAULT_CLOSE_TIMEOUT_MS = 5_000;
const DEFAULT_EXPORT_TIMEOUT_MS = 10_000;
const SUPPORTED_EXPORTERS = new Set(['otlp', 'console']);

/** OTEL_SDK_DISABLED=true (OTel SDK environment spec) turns tracing off entirely. */
function sdkDisabled(env: NodeJS.ProcessEnv): boolean {
  return (env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true';
}

/** Which exporters the standard OTEL_* variables ask for; empty = tracing off. */
export function tracesExportersFromEnv(env: NodeJS.ProcessEnv): string[] {
  if (sdkDisabled(env)) return [];
  const listed = (env.OTEL_TRACES_EXPORTER ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== '');
  if (listed.length > 0) return listed.includes('none') ? [] : listed;
  if (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT) return ['otlp'];
  return [];
}

/** OTLP/HTTP traces URL per the OTel exporter spec: the signal endpoint as-is, else base + /v1/traces. */
export function otlpTracesUrl(env: NodeJS.ProcessEnv): string {
  const signal = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (signal) return signal;
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || 'http://localhost:4318';
  return `${base.replace(/\/+$/, '')}/v1/traces`;
}

/** `k1=v1,k2=v2` (values URL-encoded) as the OTel spec defines OTEL_EXPORTER_OTLP_HEADERS. */
export function parseOtlpHeaders(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (text ?? '').split(',')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    try {
      out[decodeURIComponent(pair.slice(0, eq).trim())] = decodeURIComponent(pair.slice(eq + 1).trim());
    } catch {
      // A malformed escape: skip the pair rather than fail startup (the value is never logged).
    }
  }
  return out;
}

function positiveInt(text: string | undefined): number | undefined {
  const n = Number(text);
  return text !== undefined && Number.isInteger(n) && n > 0 ? n : undefined;
}

/**
 * Wraps an exporter so that nothing it does can reach traffic: a throw or a failed export is
 * counted and logged once, never rethrown.
 */
class GuardedExporter implements SpanExporter {
  constructor(
    private readonly inner: SpanExporter,
    private readonly onFailure: (reason: string) => void,
  ) {}
  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    try {
      this.inner.export(spans, (result) => {
        if (result.code !== ExportResultCode.SUCCESS) {
          this.onFailure(result.error?.message ?? 'export failed');
        }
        resultCallback(result);
      });
    } catch (err) {
      this.onFailure(String(err));
      resultCallback({ code: ExportResultCode.FAILED, error: err instanceof Error ? err : undefined });
    }
  }
  async shutdown(): Promise<void> {
    try {
      await this.inner.shutdown();
    } catch (err) {
      this.onFailure(String(err));
    }
  }
  async forceFlush(): Promise<void> {
    try {
      await this.inner.forceFlush?.();
    } catch (err) {
      this.onFailure(String(err));
    }
  }
}

function buildExporters(opts: TraceSinkOptions): SpanExporter[] {
  if (opts.exporter) return [opts.exporter];
  const env = opts.env;
  const exporters: SpanExporter[] = [];
  for (const name of tracesExportersFromEnv(env)) {
    if (!SUPPORTED_EXPORTERS.has(name)) {
      opts.log.once(`traces:exporter:${name}`, 'warn', 'unsupported OTEL_TRACES_EXPORTER value ignored', {
        exporter: name,
        supported: [...SUPPORTED_EXPORTERS].join(','),
      });
      continue;
    }
    if (name === 'console') {
      exporters.push(new ConsoleSpanExporter());
      continue;
    }
    const protocol = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? '').trim();
    if (protocol !== '' && protocol !== 'http/json') {
      // Only @opentelemetry/exporter-trace-otlp-http is a dependency; it speaks OTLP/HTTP JSON,
      // which every Collector's otlphttp receiver (port 4318) accepts alongside protobuf.
      opts.log.once('traces:protocol', 'warn', 'OTLP protocol not supported, sending http/json instead', {
        protocol,
      });
    }
    const url = otlpTracesUrl(env);
    exporters.push(
      new OTLPTraceExporter({
        url,
        headers: {
          ...parseOtlpHeaders(env.OTEL_EXPORTER_OTLP_HEADERS),
          ...parseOtlpHeaders(env.OTEL_EXPORTER_OTLP_TRACES_HEADERS),
        },
        timeoutMillis:
          positiveInt(env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT) ??
          positiveInt(env.OTEL_EXPORTER_OTLP_TIMEOUT) ??
          DEFAULT_EXPORT_TIMEOUT_MS,
      }),
    );
    opts.log.info('tracing on', { exporter: 'otlp', endpoint: new URL(url).origin });
  }
  return exporters;
}

/** Returns the trace sink, or undefined when tracing is off (no OTLP endpoint/exporter, or OTEL_SDK_DISABLED). */
export function createTraceSink(opts: TraceSinkOptions): TraceSink | undefined {
  // Not covered by tracesExportersFromEnv when a test injects `exporter`, which skips the env.
  if (sdkDisabled(opts.env)) return undefined;
  const exporters = buildExporters(opts);
  if (exporters.length === 0) return undefined;

  const onFailure = (reason: string): void => {
    opts.health.internalError('traces');
    opts.log.once('traces:export-failed', 'warn', 'trace export failed; traffic is unaffected', {
      error: reason.slice(0, 200),
    });
  };
  const env = opts.env;
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME?.trim() || 'tokenmeter' }),
    spanProcessors: exporters.map(
      (e) =>
        new BatchSpanProcessor(new GuardedExporter(e, onFailure), {
          scheduledDelayMillis: positiveInt(env.OTEL_BSP_SCHEDULE_DELAY),
          exportTimeoutMillis: positiveInt(env.OTEL_BSP_EXPORT_TIMEOUT),
          maxQueueSize: positiveInt(env.OTEL_BSP_MAX_QUEUE_SIZE),
          maxExportBatchSize: positiveInt(env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE),
        }),
    ),
  });
  const tracer = provider.getTracer('tokenmeter');
  const propagator = new W3CTraceContextPropagator();
  // Spans begun and not yet written; bounded by the requests in flight.

  const startSpan = (identity: SpanIdentity, parent: Context): Span => {
    const { name, attributes } = spanStart(identity);
    return tracer.startSpan(
      name,
      { kind: SpanKind.CLIENT, attributes, startTime: identity.ts_start },
      parent,
    );
  };

  const sink: TraceSink = {
    name: 'traces',

    begin(start: RequestStart): SinkRequest {
      const span = startSpan(start, propagator.extract(ROOT_CONTEXT, start.headers, defaultTextMapGetter));
      const carrier: Record<string, string> = {};
      propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, defaultTextMapSetter);
      // The exchange holds the span through this handle and ends it with the record.
      return { upstreamHeaders: carrier, traceId: span.spanContext().traceId, end: (r) => endSpan(span, r) };
    },

    write(r: RequestRecord): void {
      // No begin (its begin failed, or a record replayed by another part): a root span covering it.
      endSpan(startSpan(r, ROOT_CONTEXT), r);
    },

    async forceFlush() {
      // A failed export is already counted and logged by GuardedExporter; never reject here.
      await provider.forceFlush().catch(() => {});
    },

    async close() {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          opts.log.warn('trace exporter did not shut down in time; unexported spans dropped', {});
          resolve();
        }, opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS);
        timer.unref();
      });
      try {
        await Promise.race([provider.shutdown().catch((err) => onFailure(String(err))), timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return sink;
}

function endSpan(span: Span, r: RequestRecord): void {
  span.setAttributes(recordAttributes(r));
  if (r.error_type !== null) span.setStatus({ code: SpanStatusCode.ERROR, message: r.error_type });
  span.end(r.ts_end);
}

/** What a span is started from: a RequestStart (begin), or a RequestRecord when no begin came. */
type SpanIdentity = Pick<
  RequestStart,
  'id' | 'ts_start' | 'upstream' | 'app' | 'operation' | 'request_model'
> & {
  upstreamUrl?: URL;
};

/**
 * Span name and start attributes (§8), shared by begin() and write()'s no-begin fallback.
 * server.address/port only when the upstream URL is known: a record carries no URL.
 */
function spanStart(s: SpanIdentity): { name: string; attributes: Attributes } {
  const operationName = GEN_AI_OPERATION_NAME[s.operation];
  const attributes: Attributes = {
    [ATTR.genAiOperationName]: operationName,
    [ATTR.genAiProviderName]: GEN_AI_PROVIDER_NAME[s.operation],
  };
  if (s.upstreamUrl) {
    attributes[ATTR.serverAddress] = s.upstreamUrl.hostname;
    attributes[ATTR.serverPort] =
      Number(s.upstreamUrl.port) || (s.upstreamUrl.protocol === 'https:' ? 443 : 80);
  }
  attributes[ATTR.tokenmeterUpstream] = s.upstream;
  attributes[ATTR.tokenmeterApp] = s.app;
  attributes[ATTR.tokenmeterRecordId] = s.id;
  if (s.request_model) attributes[ATTR.genAiRequestModel] = s.request_model;
  // GenAI semconv span name: "{gen_ai.operation.name} {gen_ai.request.model}" (model when known).
  const name = s.request_model ? `${operationName} ${s.request_model}` : operationName;
  return { name, attributes };
}

/** §8 attributes known once the request finished. Unknown values are left off, never zeroed. */
export function recordAttributes(r: RequestRecord): Attributes {
  const a: Attributes = {
    [ATTR.tokenmeterUsageSource]: r.usage_source,
  };
  if (r.response_model) a[ATTR.genAiResponseModel] = r.response_model;
  const input = genAiInputTokens(r);
  if (input !== null) a[ATTR.genAiUsageInputTokens] = input;
  if (r.output_tokens !== null) a[ATTR.genAiUsageOutputTokens] = r.output_tokens;
  if (r.cache_read_tokens !== null) a[ATTR.tokenmeterCacheReadTokens] = r.cache_read_tokens;
  if (r.cache_write_tokens !== null) a[ATTR.tokenmeterCacheWriteTokens] = r.cache_write_tokens;
  if (r.finish_reason) a[ATTR.genAiResponseFinishReasons] = [r.finish_reason];
  if (r.error_type !== null) a[ATTR.errorType] = r.error_type;
  if (r.http_status !== null) a[ATTR.httpResponseStatusCode] = r.http_status;
  if (r.cost_nanos !== null && r.currency !== null) {
    // A display value on one span (never summed by us); the exact amount is in the audit log.
    a[ATTR.tokenmeterCost] = nanosToUnits(r.cost_nanos);
    a[ATTR.tokenmeterCurrency] = r.currency;
  }
  return a;
}
