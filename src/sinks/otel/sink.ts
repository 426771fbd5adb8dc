/**
 * The OpenTelemetry sink (DESIGN.md §8, §13; docs/opentelemetry.md): per request one GenAI CLIENT
 * span, the GenAI client metrics and one log record, set up by @opentelemetry/sdk-node from the
 * standard OTEL_* variables (exporters and protocol, endpoints, headers, timeouts, resource,
 * propagators, sampler, batch settings, OTEL_SDK_DISABLED).
 *
 * - Off unless asked for (env.ts): sdk-node's defaults would otherwise export to localhost:4318.
 * - No auto-instrumentation (`instrumentations: []`): an http instrumentation would add a second
 *   span for every upstream call we already describe, and spans for our own listener.
 * - sdk-node registers process-global providers, a propagator and a context manager. tokenmeter
 *   owns them: creating a sink first clears whatever a previous one left, the sink takes its tracer,
 *   meter and logger once, and `close()` shuts the SDK down and clears the globals again, so tests
 *   can start and stop many sinks in one process (one at a time).
 * - Telemetry never breaks traffic: `begin`/`end` only touch memory (batch processors and the
 *   periodic metric reader export in the background). Whatever the SDK reports as an error (a
 *   failed export of any signal) reaches OTel's diag logger, which we install: it is counted in
 *   tokenmeter_internal_errors_total{component="otel"} and logged once.
 */
import {
  ProxyTracerProvider,
  ROOT_CONTEXT,
  context,
  defaultTextMapGetter,
  defaultTextMapSetter,
  diag,
  metrics,
  propagation,
  trace,
  type Context,
  type ContextManager,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { logs, type Logger as OtelLogger } from '@opentelemetry/api-logs';
import { defaultResource, envDetector, hostDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { NodeSDK, type NodeSDKConfiguration } from '@opentelemetry/sdk-node';
import type { Logger } from '../../log.js';
import type { RequestRecord } from '../../record.js';
import { ATTR, OTEL_SCOPE } from '../../semconv.js';
import type { HealthCounters, RequestStart, Sink, SinkRequest } from '../types.js';
import { installDiagLogger } from './diag.js';
import { sdkNodeEnv, tracesToOtlpOnly, withOtelEnv, type OtelSignals } from './env.js';
import { requestLogRecord } from './logs.js';
import { createGenAiMetrics, type GenAiMetrics } from './metrics.js';
import { SpanHandOff } from './span-handoff.js';
import { endRequestSpan, startRequestSpan } from './spans.js';

/** The health component (and sink name) every OpenTelemetry failure is counted under. */
import { OTEL_COMPONENT } from './names.js';

export interface OtelSinkOptions {
  /** The OTEL_* variables to honour (runtime passes process.env; tests their own). */
  env: NodeJS.ProcessEnv;
  /** Put prompt/response content on spans. The record carries no content today, so this has no effect yet. */
  captureContent: boolean;
  log: Logger;
  health: HealthCounters;
  /** Bounds for metric attributes, the same as the Prometheus labels'. */
  maxModels?: number;
  maxApps?: number;
  apps?: readonly string[];
  upstreamHosts?: Readonly<Record<string, string>>;
  /** Tests: export spans here (batched per OTEL_BSP_*) instead of OTEL_TRACES_EXPORTER; turns traces on. */
  traceExporter?: NodeSDKConfiguration['traceExporter'];
  /** Upper bound on close() (flush + shutdown); default 5 s. */
  closeTimeoutMs?: number;
}

export interface OtelSink extends Sink {
  readonly signals: OtelSignals;
  begin(start: RequestStart): SinkRequest;
  /** Export every ended span, metric and log record now (tests; never rejects). */
  forceFlush(): Promise<void>;
}

const DEFAULT_CLOSE_TIMEOUT_MS = 5_000;
const DEFAULT_MAX_MODELS = 100;
const DEFAULT_MAX_APPS = 50;

interface Flushable {
  forceFlush(): Promise<unknown>;
}
/** An SDK provider (what sdk-node registered) as opposed to the API's proxy/no-op fallbacks. */
function sdkProvider(p: unknown): Flushable | undefined {
  return typeof (p as Partial<Flushable> | undefined)?.forceFlush === 'function'
    ? (p as Flushable)
    : undefined;
}

/** The token of the sink that currently owns the process-global OTel API, if any. */
let globalOwner: object | undefined;

function releaseGlobals(): void {
  trace.disable();
  metrics.disable();
  logs.disable();
  propagation.disable();
  context.disable();
  diag.disable();
  globalOwner = undefined;
}

/** A started sdk-node and what the sink takes from it, once, while it owns the globals. */
interface StartedSdk {
  sdk: NodeSDK;
  owner: object;
  /** Counts and logs (once) a failure that comes back as a rejection rather than through diag. */
  failed: (...args: unknown[]) => void;
  providers: Flushable[];
  /** Where ended spans are exported: the export thread (OTLP), or sdk-node's processors here. */
  spanExport: 'thread' | 'main';
  tracer?: Tracer;
  genAiMetrics?: GenAiMetrics;
  otelLogger?: OtelLogger;
}

function startSdk(opts: OtelSinkOptions, signals: OtelSignals): StartedSdk | undefined {
  const owner = {};
  releaseGlobals();
  globalOwner = owner;
  const failed = installDiagLogger({
    env: opts.env,
    log: opts.log,
    onError: () => opts.health.internalError(OTEL_COMPONENT),
  });
  let sdk: NodeSDK;
  const handOff = spanHandOff(opts, signals);
  try {
    sdk = withOtelEnv(sdkNodeEnv(opts.env, signals), () => {
      const s = new NodeSDK(sdkConfiguration(opts, handOff));
      s.start();
      return s;
    });
  } catch (err) {
    // sdk-node tolerates bad values (it warns and falls back), so this is unexpected: run without
    // telemetry rather than refuse to proxy.
    void handOff?.shutdown();
    releaseGlobals();
    opts.health.internalError(OTEL_COMPONENT);
    opts.log.error('OpenTelemetry setup failed; running without it', { error: String(err).slice(0, 300) });
    return undefined;
  }
  // The SDK's own providers, not the API's proxy/no-op fallbacks (a signal sdk-node did not set up,
  // e.g. an unsupported exporter name, has none).
  const tracerProvider = sdkProvider((trace.getTracerProvider() as ProxyTracerProvider).getDelegate());
  const meterProvider = sdkProvider(metrics.getMeterProvider());
  const loggerProvider = sdkProvider(logs.getLoggerProvider());
  return {
    sdk,
    owner,
    failed,
    providers: [tracerProvider, meterProvider, loggerProvider].filter((p) => p !== undefined),
    spanExport: handOff ? 'thread' : 'main',
    tracer: tracerProvider ? trace.getTracer(OTEL_SCOPE) : undefined,
    genAiMetrics: meterProvider
      ? createGenAiMetrics(metrics.getMeter(OTEL_SCOPE), {
          maxModels: opts.maxModels ?? DEFAULT_MAX_MODELS,
          maxApps: opts.maxApps ?? DEFAULT_MAX_APPS,
          apps: opts.apps ?? [],
          upstreamHosts: opts.upstreamHosts ?? {},
        })
      : undefined,
    otelLogger: loggerProvider ? logs.getLogger(OTEL_SCOPE) : undefined,
  };
}

/** Starts the SDK for the signals that are on; undefined when it could not start. */
export function startOtelSink(opts: OtelSinkOptions, signals: OtelSignals): OtelSink | undefined {
  const started = startSdk(opts, signals);
  if (!started) return undefined;
  const { tracer, genAiMetrics, otelLogger } = started;
  logStart(
    opts,
    { traces: tracer !== undefined, metrics: genAiMetrics !== undefined, logs: otelLogger !== undefined },
    started.spanExport,
  );

  /** Everything a finished request produces: the span's end, its metrics, its log record. */
  const finish = (span: Span | undefined, ctx: Context | undefined, r: RequestRecord): void => {
    if (span) endRequestSpan(span, r);
    genAiMetrics?.record(r);
    otelLogger?.emit(requestLogRecord(r, ctx));
  };

  let closed = false;
  return {
    name: OTEL_COMPONENT,
    signals,

    begin(start: RequestStart): SinkRequest {
      if (!tracer) return { end: (r) => finish(undefined, undefined, r) };
      // Through the configured propagators (OTEL_PROPAGATORS; default tracecontext,baggage).
      const parent = propagation.extract(ROOT_CONTEXT, start.headers, defaultTextMapGetter);
      const span = startRequestSpan(tracer, start, parent);
      const ctx = trace.setSpan(parent, span);
      const carrier: Record<string, string> = {};
      propagation.inject(ctx, carrier, defaultTextMapSetter);
      // The exchange holds the span through this handle and ends it with the record.
      return {
        upstreamHeaders: carrier,
        traceId: span.spanContext().traceId,
        end: (r) => finish(span, ctx, r),
      };
    },

    write(r: RequestRecord): void {
      // No begin (its begin failed, or a record replayed by another part): a root span covering it.
      const span = tracer ? startRequestSpan(tracer, r, ROOT_CONTEXT) : undefined;
      finish(span, span ? trace.setSpan(ROOT_CONTEXT, span) : undefined, r);
    },

    async forceFlush() {
      // A failed export is counted and logged like any other; never reject here.
      await Promise.all(
        started.providers.map((p) => p.forceFlush().catch((err: unknown) => started.failed(String(err)))),
      );
    },

    async close() {
      if (closed) return;
      closed = true;
      try {
        // sdk-node's shutdown flushes every signal (the metric reader does a last collect).
        await shutdownWithin(started, opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS, opts.log);
      } finally {
        if (globalOwner === started.owner) releaseGlobals();
      }
    },
  };
}

async function shutdownWithin(started: StartedSdk, ms: number, log: Logger): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      log.warn('OpenTelemetry did not shut down in time; unexported telemetry dropped', {});
      resolve();
    }, ms);
    timer.unref();
  });
  try {
    await Promise.race([
      started.sdk.shutdown().catch((err: unknown) => started.failed(String(err))),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The context manager: none that tracks an active context. tokenmeter passes every context
 * explicitly (the parent extracted from the request's headers, the span's context to the log
 * record), and has no instrumentation that would read `context.active()`. sdk-node's default,
 * AsyncLocalStorageContextManager, switches on Node's async hooks for the whole process, so every
 * promise and socket of the proxied traffic would pay for a feature nothing here uses (the gain
 * measured at c=32 with traces on is within noise in steady state: docs/benchmarks.md).
 */
class ExplicitContextOnly implements ContextManager {
  active(): Context {
    return ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    _context: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    return fn.call(thisArg, ...args);
  }
  bind<T>(_context: Context, target: T): T {
    return target;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    return this;
  }
}

/**
 * What we pass to NodeSDK; everything else it reads from the OTEL_* variables. The resource is
 * `service.name=tokenmeter` under what OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME say, plus the
 * host. Not sdk-node's process detector by default: `process.command_args` would export our
 * command line, whose --upstream URL may carry credentials (OTEL_NODE_RESOURCE_DETECTORS opts in).
 */
function sdkConfiguration(opts: OtelSinkOptions, handOff?: SpanHandOff): Partial<NodeSDKConfiguration> {
  const config: Partial<NodeSDKConfiguration> = {
    instrumentations: [],
    contextManager: new ExplicitContextOnly(),
    resource: defaultResource().merge(resourceFromAttributes({ [ATTR.serviceName]: OTEL_SCOPE })),
  };
  if (!opts.env.OTEL_NODE_RESOURCE_DETECTORS?.trim()) config.resourceDetectors = [envDetector, hostDetector];
  if (opts.traceExporter) config.traceExporter = opts.traceExporter;
  else if (handOff) config.spanProcessors = [handOff];
  return config;
}

const DEFAULT_BSP_MAX_QUEUE_SIZE = 2048;

/**
 * The span processor that hands ended spans to the export thread (span-handoff.ts), when traces go
 * to OTLP (the usual case, and the one the thread serves). Console and Zipkin exporters, and a
 * test's exporter, keep sdk-node's processors on the main thread. If the thread cannot be created,
 * spans are exported on the main thread as before, with a warning.
 */
function spanHandOff(opts: OtelSinkOptions, signals: OtelSignals): SpanHandOff | undefined {
  if (!signals.traces || opts.traceExporter || !tracesToOtlpOnly(opts.env)) return undefined;
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OTEL_') && v !== undefined) env[k] = v;
  Object.assign(env, sdkNodeEnv(opts.env, { traces: true, metrics: false, logs: false }));
  const queue = Number(opts.env.OTEL_BSP_MAX_QUEUE_SIZE);
  try {
    return new SpanHandOff({
      env,
      logLevel: opts.env.OTEL_LOG_LEVEL,
      maxQueueSize: Number.isInteger(queue) && queue > 0 ? queue : DEFAULT_BSP_MAX_QUEUE_SIZE,
    });
  } catch (err) {
    opts.log.warn('span export thread could not start; exporting spans on the main thread', {
      error: String(err).slice(0, 300),
    });
    return undefined;
  }
}

function logStart(opts: OtelSinkOptions, on: OtelSignals, spanExport: 'thread' | 'main'): void {
  const env = opts.env;
  let endpoint: string | undefined;
  try {
    // The origin only: a URL may carry credentials, and headers are never logged.
    const raw = env.OTEL_EXPORTER_OTLP_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
    endpoint = raw ? new URL(raw).origin : undefined;
  } catch {
    endpoint = undefined;
  }
  opts.log.info('OpenTelemetry on', {
    traces: on.traces,
    ...(on.traces ? { span_export: spanExport } : {}),
    metrics: on.metrics,
    logs: on.logs,
    protocol: env.OTEL_EXPORTER_OTLP_PROTOCOL?.trim() || 'http/protobuf',
    endpoint,
  });
}
