/**
 * The meter: turns what the proxy saw of one request into exactly one RequestRecord and hands it
 * to every sink (DESIGN.md §4.5). Data flows one way: proxy → (side copy → SSE parser → decoder)
 * → estimation → pricing → record → sinks.
 *
 * Nothing here is awaited by the proxy, and nothing here throws into it: every step that can fail
 * is caught, counted in tokenmeter_internal_errors_total{component} and logged once. Sinks receive
 * the record on a later tick, so a slow sink never delays the last byte to the client.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { newRecordId } from '../ids.js';
import { extractApiKey, keyFingerprint, resolveApp } from '../attribution.js';
import type { BudgetGate, BudgetReservation } from '../budgets/types.js';
import { classifyResponse } from '../decoders/classify.js';
import { estimateUsage } from '../decoders/estimate.js';
import { createDecoder } from '../decoders/index.js';
import { parseRateLimitHeaders } from '../decoders/ratelimit.js';
import type { DecodedResponse, DecoderRequestInfo, RateLimitInfo, UsageDecoder } from '../decoders/types.js';
import type { Logger } from '../log.js';
import type { PriceBook, PriceResult } from '../pricing/types.js';
import type { ErrorType, RequestRecord, Usage, UsageSource } from '../record.js';
import { SseParser } from '../sse/parser.js';
import type { HealthCounters, RequestStart, Sink } from '../sinks/types.js';
import { encodingFrom, SideCopy } from './side-copy.js';
import type { Meter, MeterBeginInput, MeterOutcome, Rejection, RequestMeter } from './types.js';

export interface MeterDeps {
  sinks: readonly Sink[];
  priceBook: PriceBook;
  budgets?: BudgetGate;
  health: HealthCounters;
  log: Logger;
  /** HMAC secret for key fingerprints. */
  keySecret: string;
  /** key fingerprint → app (config `apps:`). */
  apps: Readonly<Record<string, string>>;
  /** Rate-limit headers seen on a response (metrics gauges). */
  onRateLimit?: (upstream: string, info: RateLimitInfo) => void;
  /** Body capture (audit log), only when enabled in config. */
  capture?: (recordId: string, request: Buffer | undefined, response: Buffer | undefined) => void;
  maxEventBytes: number;
  /** Largest non-streamed response body buffered for metering; above it usage is `missing`. */
  maxResponseBodyBytes: number;
  now?: () => number;
}

/** Error bodies are classified from their first bytes only. */
const ERROR_BODY_CAP = 64 * 1024;
const MESSAGE_CAP = 500;

export function createMeter(deps: MeterDeps): Meter {
  let inflight = 0;
  const now = deps.now ?? Date.now;

  /** Run a step that must never reach traffic. */
  const guard = <T>(component: string, fallback: T, fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      deps.health.internalError(component);
      deps.log.once(`meter-error:${component}`, 'error', 'metering step failed; traffic unaffected', {
        component,
        error: err instanceof Error ? err.message : String(err),
      });
      return fallback;
    }
  };

  return {
    inflight: () => inflight,
    begin(input: MeterBeginInput): RequestMeter {
      inflight++;
      const m = new RequestMeterImpl(input, deps, now, guard, () => inflight--);
      return m;
    },
  };
}

type Guard = <T>(component: string, fallback: T, fn: () => T) => T;

class RequestMeterImpl implements RequestMeter {
  readonly upstreamHeaders: Record<string, string> = {};
  readonly rejection?: Rejection;

  private rejectionMessage: string | undefined;
  private readonly start: RequestStart;
  private readonly keyId: string | null;
  private readonly decoder: UsageDecoder | undefined;
  private readonly decoderInfo: DecoderRequestInfo;
  private reservation: BudgetReservation | undefined;
  private traceId: string | null = null;

  private status: number | null = null;
  private responseHeaders: IncomingHttpHeaders = {};
  private responseBytes = 0;
  private firstByteAt: number | undefined;
  private sideCopy: SideCopy | undefined;
  private sse: SseParser | undefined;
  private bodyChunks: Buffer[] = [];
  private bodyLength = 0;
  private bodyCap = 0;
  private bodyOverflow = false;
  private finished = false;
  private notes: string[] = [];

  constructor(
    private readonly input: MeterBeginInput,
    private readonly deps: MeterDeps,
    private readonly now: () => number,
    private readonly guard: Guard,
    private readonly onDone: () => void,
  ) {
    const { info } = input;
    const apiKey = extractApiKey(input.headers);
    this.keyId = apiKey === undefined ? null : keyFingerprint(deps.keySecret, apiKey);
    const app = resolveApp({
      headers: input.headers,
      keyId: this.keyId ?? undefined,
      apps: deps.apps,
      routeApp: input.routeApp,
    });
    const tsStart = now();
    this.start = {
      id: newRecordId(tsStart),
      ts_start: tsStart,
      method: input.method,
      path: input.path,
      upstream: input.upstream,
      upstreamUrl: input.upstreamUrl,
      operation: info.operation,
      request_model: info.model ?? null,
      app,
      stream: info.stream,
      headers: input.headers,
    };
    this.decoderInfo = { operation: info.operation, model: info.model, stream: info.stream, body: info.body };
    if (info.tooLargeToMeter) this.notes.push('request_too_large_to_meter');
    this.decoder =
      info.operation === 'other' || info.tooLargeToMeter
        ? undefined
        : guard('decoder', undefined, () => createDecoder(this.decoderInfo));

    // Budgets gate only operations that cost money: /v1/models, count_tokens, /v1/balance stay open
    // so a blocked app can still list models and check its balance.
    const decision =
      deps.budgets && info.operation !== 'other'
        ? guard('budgets', undefined, () => deps.budgets!.check(this.start))
        : undefined;
    if (decision?.blocked) {
      this.rejection = budgetRejection(info.operation, decision.message);
      this.rejectionMessage = decision.message;
      this.notes.push(`budget_blocked:${decision.budget}`);
    } else if (decision) {
      this.reservation = decision.reservation;
    }

    for (const sink of deps.sinks) {
      if (!sink.begin) continue;
      const r = guard(`sink:${sink.name}`, undefined, () => sink.begin!(this.start));
      if (!r) continue;
      if (r.upstreamHeaders) Object.assign(this.upstreamHeaders, r.upstreamHeaders);
      if (r.traceId) this.traceId = r.traceId;
    }
  }

  onResponseHead(status: number, headers: IncomingHttpHeaders): void {
    this.guard('meter', undefined, () => {
      this.status = status;
      this.responseHeaders = headers;
      if (this.deps.onRateLimit) {
        const rl = parseRateLimitHeaders(headers);
        this.deps.onRateLimit(this.input.upstream, rl);
      }
      const ct = String(headers['content-type'] ?? '').toLowerCase();
      const isSse =
        ct.includes('text/event-stream') || (this.input.info.stream && status < 300 && !ct.includes('json'));
      const enc = encodingFrom(headers['content-encoding']);
      if (enc === 'unsupported') {
        this.notes.push(`unsupported_content_encoding:${String(headers['content-encoding'])}`);
        return;
      }
      if (isSse && status < 300 && this.decoder) {
        const decoder = this.decoder;
        this.sse = new SseParser({
          maxEventBytes: this.deps.maxEventBytes,
          onEvent: (e) => this.guard('decoder', undefined, () => decoder.onEvent(e)),
          onOversize: () => {
            this.deps.health.sseOversize(this.input.upstream);
            this.notes.push('sse_event_over_cap');
          },
        });
        const sse = this.sse;
        this.sideCopy = new SideCopy(enc, (chunk) => this.guard('sse', undefined, () => sse.feed(chunk)));
      } else {
        // Non-streamed (or error) body: buffer the decoded copy, capped.
        const wantBody = this.decoder !== undefined || status >= 400 || this.deps.capture !== undefined;
        if (!wantBody) return;
        this.bodyCap = status >= 400 && !this.decoder ? ERROR_BODY_CAP : this.deps.maxResponseBodyBytes;
        this.sideCopy = new SideCopy(enc, (chunk) => this.collect(chunk));
      }
    });
  }

  onResponseChunk(chunk: Buffer): void {
    this.responseBytes += chunk.length;
    if (this.sideCopy) {
      const side = this.sideCopy;
      this.guard('meter', undefined, () => side.write(chunk));
    }
  }

  onFirstByteToClient(): void {
    if (this.firstByteAt === undefined) this.firstByteAt = this.now();
  }

  finish(outcome: MeterOutcome): void {
    if (this.finished) return;
    this.finished = true;
    const tsEnd = this.now();
    const complete = (): void => {
      // Off the response path: the proxy has already ended (or is ending) the client response.
      setImmediate(() => {
        const record = this.guard('meter', undefined, () => this.buildRecord(outcome, tsEnd));
        this.onDone();
        if (!record) return;
        this.emit(record);
      });
    };
    if (this.sideCopy) {
      const side = this.sideCopy;
      this.guard('meter', undefined, () =>
        side.end(() => {
          if (this.sse) this.guard('sse', undefined, () => this.sse!.end());
          if (side.error) this.notes.push(side.error);
          complete();
        }),
      );
    } else {
      complete();
    }
  }

  private collect(chunk: Buffer): void {
    if (this.bodyOverflow) return;
    if (this.bodyLength + chunk.length > this.bodyCap) {
      this.bodyOverflow = true;
      this.bodyChunks.push(chunk.subarray(0, Math.max(0, this.bodyCap - this.bodyLength)));
      this.bodyLength = this.bodyCap;
      return;
    }
    this.bodyChunks.push(chunk);
    this.bodyLength += chunk.length;
  }

  private buildRecord(outcome: MeterOutcome, tsEnd: number): RequestRecord {
    const { info } = this.input;
    const status = outcome.kind === 'rejected' ? (this.rejection?.status ?? 429) : this.status;
    const bodyText = this.bodyChunks.length > 0 ? Buffer.concat(this.bodyChunks).toString('utf8') : undefined;

    let decoded: DecodedResponse | undefined;
    if (this.decoder) {
      const decoder = this.decoder;
      if (bodyText !== undefined && !this.sse && status !== null && status < 400) {
        if (this.bodyOverflow) this.notes.push('response_too_large_to_meter');
        else this.guard('decoder', undefined, () => decoder.onBody(bodyText));
      }
      decoded = this.guard('decoder', undefined, () => decoder.result());
    }

    const classification =
      outcome.kind === 'rejected'
        ? undefined
        : this.guard('classify', undefined, () =>
            classifyResponse({
              status,
              headers: this.responseHeaders,
              body: status !== null && status >= 400 ? bodyText : undefined,
              streamError: decoded?.streamError,
            }),
          );

    const errorType = errorTypeFor(outcome, classification?.errorType ?? null);
    const errorMessage = messageFor(
      outcome,
      classification?.message ?? decoded?.streamError?.message,
      this.rejectionMessage,
    );

    // Usage: reported > estimated > missing; `none` where the operation or response has no usage.
    let usage: Usage = {};
    let usageSource: UsageSource;
    const responded = status !== null && outcome.kind !== 'rejected';
    if (!this.decoder || !responded || (status !== null && status >= 400 && !decoded?.usageReported)) {
      usageSource = 'none';
    } else if (decoded?.usageReported) {
      usage = decoded.usage;
      usageSource = 'reported';
    } else {
      const est = decoded
        ? this.guard('estimate', undefined, () => estimateUsage(this.decoderInfo, decoded!))
        : undefined;
      if (est) {
        usage = est;
        usageSource = 'estimated';
      } else {
        usageSource = 'missing';
        this.notes.push('usage_missing');
      }
    }

    let price: PriceResult | undefined;
    if (usageSource === 'reported' || usageSource === 'estimated') {
      price = this.guard('pricing', undefined, () =>
        this.deps.priceBook.price({
          model: info.model ?? decoded?.responseModel,
          upstream: this.input.upstream,
          app: this.start.app,
          operation: info.operation,
          at: new Date(this.start.ts_start),
          usage,
          upstreamCost: decoded?.upstreamCost,
        }),
      );
      if (price?.reason && price.cost_nanos === null) this.notes.push(price.reason);
    }

    // §4.5: first *content* byte of a stream. A streamed request answered with an error body
    // (4xx/5xx JSON) has no content; counting it would pull TTFT percentiles down with fast errors.
    const answeredStream = info.stream && status !== null && status < 400;
    const ttft =
      answeredStream && this.firstByteAt !== undefined ? this.firstByteAt - this.start.ts_start : null;
    const upstreamRequestId =
      classification?.upstreamRequestId ??
      decoded?.upstreamRequestId ??
      headerValue(this.responseHeaders, 'x-request-id');

    return {
      id: this.start.id,
      ts_start: this.start.ts_start,
      ts_end: tsEnd,
      duration_ms: tsEnd - this.start.ts_start,
      ttft_ms: ttft,
      upstream: this.input.upstream,
      method: this.input.method,
      path: this.input.path,
      operation: info.operation,
      request_model: info.model ?? null,
      response_model: decoded?.responseModel ?? null,
      app: this.start.app,
      key_id: this.keyId,
      user: info.user ?? null,
      stream: info.stream,
      http_status: status,
      error_type: errorType,
      error_message: errorMessage,
      finish_reason: decoded?.finishReason ?? null,
      input_tokens: usage.input ?? null,
      cache_read_tokens: usage.cacheRead ?? null,
      cache_write_tokens: usage.cacheWrite ?? null,
      cache_write_1h_tokens: usage.cacheWrite1h ?? null,
      output_tokens: usage.output ?? null,
      reasoning_tokens: usage.reasoning ?? null,
      images: usage.images ?? null,
      usage_source: usageSource,
      cost_nanos: price?.cost_nanos ?? null,
      currency: price?.currency ?? null,
      cost_source: price?.cost_source ?? null,
      price_id: price?.price_id ?? null,
      multiplier: price?.multiplier ?? null,
      upstream_reported_cost_nanos: price?.upstream_reported_cost_nanos ?? null,
      upstream_reported_currency: price?.upstream_reported_currency ?? null,
      trace_id: this.traceId,
      request_bytes: this.input.requestBytes,
      response_bytes: this.responseBytes,
      upstream_request_id: upstreamRequestId ?? null,
      note: this.notes.length > 0 ? [...new Set(this.notes)].join('; ') : null,
    };
  }

  private emit(record: RequestRecord): void {
    for (const sink of this.deps.sinks) {
      this.guard(`sink:${sink.name}`, undefined, () => sink.write(record));
    }
    if (this.reservation) {
      const r = this.reservation;
      this.guard('budgets', undefined, () => r.settle(record));
    }
    if (this.deps.capture) {
      const body = this.bodyChunks.length > 0 ? Buffer.concat(this.bodyChunks) : undefined;
      const req =
        this.input.info.body === undefined ? undefined : Buffer.from(JSON.stringify(this.input.info.body));
      this.guard('capture', undefined, () => this.deps.capture!(record.id, req, body));
    }
  }
}

function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function errorTypeFor(outcome: MeterOutcome, classified: ErrorType | null): ErrorType | null {
  switch (outcome.kind) {
    case 'client_abort':
      return 'client_abort';
    case 'timeout':
      return 'timeout';
    case 'network':
      return 'network';
    case 'upstream_reset':
      return 'upstream_error';
    case 'rejected':
      return 'rate_limited';
    case 'complete':
      return classified;
  }
}

function messageFor(
  outcome: MeterOutcome,
  upstreamMessage: string | undefined,
  rejectionMessage: string | undefined,
): string | null {
  const msg =
    outcome.kind === 'network' || outcome.kind === 'upstream_reset'
      ? outcome.message
      : outcome.kind === 'timeout'
        ? `upstream ${outcome.phase} timeout`
        : outcome.kind === 'rejected'
          ? rejectionMessage
          : upstreamMessage;
  return msg === undefined ? null : msg.slice(0, MESSAGE_CAP);
}

/** 429 shaped like the endpoint's own errors, so SDKs surface the message (§9). */
export function budgetRejection(operation: string, message: string): Rejection {
  const body =
    operation === 'messages'
      ? { type: 'error', error: { type: 'rate_limit_error', message } }
      : { error: { message, type: 'insufficient_quota', code: 'budget_exceeded' } };
  return {
    status: 429,
    headers: { 'content-type': 'application/json', 'x-tokenmeter-blocked': 'budget' },
    body: JSON.stringify(body),
  };
}
