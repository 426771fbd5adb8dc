/**
 * When the OpenTelemetry sink is on, and how our `env` reaches @opentelemetry/sdk-node, which reads
 * only `process.env` (docs/opentelemetry.md, "When each signal is on").
 *
 * sdk-node's own defaults would export traces, metrics and logs to http://localhost:4318 when
 * nothing is set. tokenmeter keeps telemetry off unless the user asked for it: traces when an OTLP
 * endpoint or OTEL_TRACES_EXPORTER is set, metrics and logs only when their OTEL_*_EXPORTER is set.
 * Signals that stay off are handed to sdk-node as `OTEL_*_EXPORTER=none`.
 */

export interface OtelSignals {
  traces: boolean;
  metrics: boolean;
  logs: boolean;
}

const OFF: OtelSignals = { traces: false, metrics: false, logs: false };

/** OTEL_SDK_DISABLED as the OTel spec reads booleans: only a case-insensitive "true" is true. */
export function sdkDisabled(env: NodeJS.ProcessEnv): boolean {
  return (env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true';
}

/** A comma list variable (OTEL_*_EXPORTER): trimmed, empty entries dropped; [] when unset. */
function list(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/** An OTEL_*_EXPORTER that names at least one exporter and not `none`. */
function explicitlyOn(value: string | undefined): boolean {
  const names = list(value);
  return names.length > 0 && !names.includes('none');
}

/**
 * Which signals the standard variables ask for. `forceTraces` (a test exporter) turns traces on
 * whatever the env says, except OTEL_SDK_DISABLED, which always wins.
 */
export function otelSignalsFromEnv(env: NodeJS.ProcessEnv, forceTraces = false): OtelSignals {
  if (sdkDisabled(env)) return OFF;
  const tracesListed = list(env.OTEL_TRACES_EXPORTER);
  const traces =
    forceTraces ||
    (tracesListed.length > 0
      ? !tracesListed.includes('none')
      : Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim()));
  return {
    traces,
    metrics: explicitlyOn(env.OTEL_METRICS_EXPORTER),
    logs: explicitlyOn(env.OTEL_LOGS_EXPORTER),
  };
}

/**
 * Whether OTEL_TRACES_EXPORTER asks for OTLP and nothing else (unset is OTLP, sdk-node's default;
 * `null` entries are ignored as sdk-node ignores them): the case the span export thread serves.
 */
export function tracesToOtlpOnly(env: NodeJS.ProcessEnv): boolean {
  return list(env.OTEL_TRACES_EXPORTER)
    .filter((n) => n !== 'null')
    .every((n) => n === 'otlp');
}

/**
 * The OTEL_* variables sdk-node should see: the user's, with signals that stay off set to `none`.
 * OTEL_LOG_LEVEL is left out: sdk-node would install a console diag logger for it, and tokenmeter
 * routes OTel's diagnostics into its own JSON log instead (see index.ts).
 */
export function sdkNodeEnv(env: NodeJS.ProcessEnv, signals: OtelSignals): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (k.startsWith('OTEL_') && k !== 'OTEL_LOG_LEVEL' && v !== undefined) out[k] = v;
  }
  if (!signals.traces) out.OTEL_TRACES_EXPORTER = 'none';
  if (!signals.metrics) out.OTEL_METRICS_EXPORTER = 'none';
  if (!signals.logs) out.OTEL_LOGS_EXPORTER = 'none';
  return out;
}

/**
 * Runs `fn` with exactly `vars` as the OTEL_* part of process.env, then puts process.env back.
 * sdk-node and its exporters read their configuration synchronously while they are constructed
 * and started, so a synchronous `fn` sees `vars` and nothing else in the process ever does.
 */
export function withOtelEnv<T>(vars: Readonly<Record<string, string>>, fn: () => T): T {
  const saved: Record<string, string | undefined> = {};
  for (const k of Object.keys(process.env)) {
    if (k.startsWith('OTEL_')) {
      saved[k] = process.env[k];
      delete process.env[k];
    }
  }
  Object.assign(process.env, vars);
  try {
    return fn();
  } finally {
    for (const k of Object.keys(vars)) delete process.env[k];
    for (const [k, v] of Object.entries(saved)) if (v !== undefined) process.env[k] = v;
  }
}
