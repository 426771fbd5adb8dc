/**
 * The GenAI CLIENT span of one request (DESIGN.md §8): name and attributes known at start, and
 * the attributes known once the record is built. Unknown values are left off, never zeroed.
 */
import {
  SpanKind,
  SpanStatusCode,
  type Attributes,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { nanosToUnits } from '../../pricing/money.js';
import type { RequestRecord } from '../../record.js';
import { ATTR, GEN_AI_OPERATION_NAME, GEN_AI_PROVIDER_NAME, genAiInputTokens } from '../../semconv.js';
import type { RequestStart } from '../types.js';

/** What a span is started from: a RequestStart (begin), or a RequestRecord when no begin came. */
export type SpanIdentity = Pick<
  RequestStart,
  'id' | 'ts_start' | 'upstream' | 'app' | 'operation' | 'request_model'
> & {
  upstreamUrl?: URL;
};

export function startRequestSpan(tracer: Tracer, s: SpanIdentity, parent: Context): Span {
  const { name, attributes } = spanStart(s);
  return tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes, startTime: s.ts_start }, parent);
}

export function endRequestSpan(span: Span, r: RequestRecord): void {
  span.setAttributes(recordAttributes(r));
  // Status message is the error class only: the upstream's error text is not put on spans.
  if (r.error_type !== null) span.setStatus({ code: SpanStatusCode.ERROR, message: r.error_type });
  span.end(r.ts_end);
}

/**
 * Span name and start attributes (§8), shared by begin() and write()'s no-begin fallback.
 * server.address/port only when the upstream URL is known: a record carries no URL.
 */
export function spanStart(s: SpanIdentity): { name: string; attributes: Attributes } {
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
