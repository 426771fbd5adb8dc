/**
 * One OTLP log record per request record (docs/opentelemetry.md, DESIGN.md §13): how a fleet ships
 * its audit records to an OpenTelemetry Collector and on to Loki, ClickHouse or Elasticsearch.
 *
 * Attributes are the record's fields under their audit-column names (`id`, `app`, `cost_nanos`, …),
 * so a collector maps them one to one onto the columns of `requests`. NULL fields are left out
 * (unknown is not zero). The record holds no secret: the key only as its fingerprint `key_id`, no
 * request or response body (captured bodies stay in the local audit DB), no header.
 */
import type { Context } from '@opentelemetry/api';
import { SeverityNumber, type LogAttributes, type LogRecord } from '@opentelemetry/api-logs';
import { nanosToUnits } from '../../pricing/money.js';
import type { RequestRecord } from '../../record.js';
import { OTEL_LOG_EVENT } from '../../semconv.js';

/** The log record for one request; `context` carries the request's span so the log links to the trace. */
export function requestLogRecord(r: RequestRecord, context: Context | undefined): LogRecord {
  const attributes: LogAttributes = {};
  for (const [key, value] of Object.entries(r) as Array<[string, RequestRecord[keyof RequestRecord]]>) {
    if (value !== null) attributes[key] = value;
  }
  const failed = r.error_type !== null;
  return {
    eventName: OTEL_LOG_EVENT,
    timestamp: r.ts_end,
    severityNumber: failed ? SeverityNumber.WARN : SeverityNumber.INFO,
    severityText: failed ? 'WARN' : 'INFO',
    body: summary(r),
    attributes,
    context,
  };
}

/** A one-line human summary, e.g. `chat gpt-4o 200 1.5 s, 12 in + 34 out tokens (input uncached), 0.000081 USD`. */
function summary(r: RequestRecord): string {
  const parts = [r.operation, r.request_model ?? '-', outcome(r), `${r.duration_ms / 1000} s`];
  let text = parts.join(' ');
  if (r.input_tokens !== null || r.output_tokens !== null) {
    text += `, ${r.input_tokens ?? '?'} in + ${r.output_tokens ?? '?'} out tokens`;
  }
  if (r.cost_nanos !== null && r.currency !== null) text += `, ${nanosToUnits(r.cost_nanos)} ${r.currency}`;
  return text;
}

function outcome(r: RequestRecord): string {
  if (r.error_type !== null)
    return r.http_status === null ? r.error_type : `${r.http_status} ${r.error_type}`;
  return r.http_status === null ? '-' : String(r.http_status);
}
