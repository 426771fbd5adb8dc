/**
 * OTLP metrics for users without Prometheus (docs/opentelemetry.md): the OTel GenAI client
 * histograms and a spend counter, recorded once per request record through the OTel metrics API.
 *
 * Attributes are bounded exactly like the Prometheus labels (src/sinks/metrics.ts): models are
 * normalised and capped, apps capped (configured apps always kept), upstreams come from config.
 * Never an id, a user or a key. Unknown usage is not recorded (unknown is not zero).
 */
import type { Attributes, Counter, Histogram, Meter } from '@opentelemetry/api';
import { nanosToUnits } from '../../pricing/money.js';
import type { RequestRecord } from '../../record.js';
import {
  ATTR,
  GEN_AI_DURATION_BUCKETS,
  GEN_AI_OPERATION_NAME,
  GEN_AI_PROVIDER_NAME,
  GEN_AI_TOKEN_BUCKETS,
  OTEL_METRIC,
  genAiInputTokens,
} from '../../semconv.js';
import { BoundedLabel, normaliseModel } from '../metrics.js';

export interface GenAiMetricsOptions {
  maxModels: number;
  maxApps: number;
  /** Configured app names: always kept as attribute values. */
  apps: readonly string[];
  /** server.address per upstream name (a record carries the name, not the URL). */
  upstreamHosts: Readonly<Record<string, string>>;
}

export interface GenAiMetrics {
  record(r: RequestRecord): void;
}

export function createGenAiMetrics(meter: Meter, opts: GenAiMetricsOptions): GenAiMetrics {
  const tokenUsage: Histogram = meter.createHistogram(OTEL_METRIC.tokenUsage, {
    unit: '{token}',
    description: 'Number of input and output tokens used, per request (OTel GenAI semantic conventions).',
    advice: { explicitBucketBoundaries: GEN_AI_TOKEN_BUCKETS },
  });
  const operationDuration: Histogram = meter.createHistogram(OTEL_METRIC.operationDuration, {
    unit: 's',
    description: 'GenAI operation duration (OTel GenAI semantic conventions).',
    advice: { explicitBucketBoundaries: GEN_AI_DURATION_BUCKETS },
  });
  const cost: Counter = meter.createCounter(OTEL_METRIC.cost, {
    description:
      'Spend in units of tokenmeter.currency (summed as a double; the audit log keeps exact cost_nanos).',
  });
  const models = new BoundedLabel(opts.maxModels);
  // `default` is the app every unattributed request gets (§4.3), so it is always allowed too.
  const apps = new BoundedLabel(opts.maxApps, new Set([...opts.apps, 'default']));

  return {
    record(r: RequestRecord): void {
      const base: Attributes = {
        [ATTR.genAiOperationName]: GEN_AI_OPERATION_NAME[r.operation],
        [ATTR.genAiProviderName]: GEN_AI_PROVIDER_NAME[r.operation],
        [ATTR.genAiRequestModel]: models.value(normaliseModel(r.request_model)),
        [ATTR.serverAddress]: opts.upstreamHosts[r.upstream] ?? r.upstream,
        [ATTR.tokenmeterUpstream]: r.upstream,
        [ATTR.tokenmeterApp]: apps.value(r.app),
      };
      if (r.response_model) base[ATTR.genAiResponseModel] = models.value(normaliseModel(r.response_model));

      const input = genAiInputTokens(r);
      if (input !== null) tokenUsage.record(input, { ...base, [ATTR.genAiTokenType]: 'input' });
      if (r.output_tokens !== null) {
        tokenUsage.record(r.output_tokens, { ...base, [ATTR.genAiTokenType]: 'output' });
      }
      // Semconv: error.type only when the operation failed (absent = success).
      operationDuration.record(
        r.duration_ms / 1000,
        r.error_type === null ? base : { ...base, [ATTR.errorType]: r.error_type },
      );
      if (r.cost_nanos !== null && r.currency !== null) {
        cost.add(nanosToUnits(r.cost_nanos), { ...base, [ATTR.tokenmeterCurrency]: r.currency });
      }
    },
  };
}
