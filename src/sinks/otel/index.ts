/**
 * The OpenTelemetry sink (docs/opentelemetry.md): spans, OTLP metrics and OTLP logs through
 * @opentelemetry/sdk-node, in ./sink.ts. That module and the SDK (hundreds of modules, tens of MB of
 * heap) are loaded only when a signal is on: a tokenmeter with no OTEL_* variables set, the
 * default, never pays for them (DESIGN.md §2: off unless an endpoint or exporter is set).
 */
import { otelSignalsFromEnv } from './env.js';
import type { OtelSink, OtelSinkOptions } from './sink.js';

export type { OtelSink, OtelSinkOptions } from './sink.js';
export { OTEL_COMPONENT } from './names.js';

/** The sink, or undefined when no signal is on (nothing set, or OTEL_SDK_DISABLED=true). */
export async function createOtelSink(opts: OtelSinkOptions): Promise<OtelSink | undefined> {
  const signals = otelSignalsFromEnv(opts.env, opts.traceExporter !== undefined);
  if (!signals.traces && !signals.metrics && !signals.logs) return undefined;
  const { startOtelSink } = await import('./sink.js');
  return startOtelSink(opts, signals);
}
