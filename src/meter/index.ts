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
import { cachedKeyFingerprint, extractApiKey, resolveApp } from '../attribution.js';
import type { BudgetBlock, BudgetDecision, BudgetGate, BudgetReservation } from '../budgets/types.js';
import { classifyResponse } from '../decoders/classify.js';
import { estimateUsage } from '../decoders/estimate.js';
import { createDecoder } from '../decoders/index.js';
import { describeMalformedBody } from '../decoders/shared.js';
import { hasRateLimitHeaders, parseRateLimitHeaders } from '../decoders/ratelimit.js';
import type { DecodedResponse, DecoderRequestInfo, RateLimitInfo, UsageDecoder } from '../decoders/types.js';
import type { Logger } from '../log.js';
import type { PriceBook, PriceResult } from '../pricing/types.js';
import type { ErrorType, RequestRecord, Usage, UsageSource } from '../record.js';
import { SseParser } from '../sse/parser.js';
import type { HealthCounters, RequestStart, Sink, SinkRequest } from '../sinks/types.js';
import { encodingFrom, SideCopy } from './side-copy.js';
import { SessionCopy } from './ws-session.js';
import type { FinishExtra, Meter, MeterBeginInput, MeterOutcome, Rejection, RequestMeter } from './types.js';

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
  /** tokenmeter_proxy_overhead_seconds, observed once per request off the response path. */
  onOverhead?: (upstream: string, seconds: number) => void;
  now?: () => number;
}

/** Error bodies are classified from their first bytes only. */
const ERROR_BODY_CAP = 64 * 1024;
const MESSAGE_CAP = 500;
/** First bytes of a stream kept to describe (or decode) a stream that carried no SSE event. */
const STREAM_HEAD_CAP = 64 * 1024;

export function createMeter(deps: MeterDeps): Meter {
  const now = deps.now ?? Date.now;
  const fingerprint = cachedKeyFingerprint(deps.keySecret);

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
    begin(input: MeterBeginInput): RequestMeter {
      return new RequestMeterImpl(input, deps, now, guard, fingerprint);
    },
  };
}

type Guard = <T>(component: string, fallback: T, fn: () => T) => T;

/** The record fields known from the request's start and its byte counts: the same in every record. */
type StartFields = Pick<
  RequestRecord,
  | 'id'
  | 'ts_start'
  | 'ts_end'
  | 'duration_ms'
  | 'upstream'
  | 'method'
  | 'path'
  | 'operation'
  | 'request_model'
  | 'app'
  | 'key_id'
  | 'user'
  | 'stream'
  | 'trace_id'
  | 'request_bytes'
  | 'response_bytes'
>;
/** The rest: what the response and its metering made of the request. */
type OutcomeFields = Required<Omit<RequestRecord, keyof StartFields>>;

/**
 * One record literal naming every field, so V8 builds it from a boilerplate with in-object fields.
 * `{ ...start, ttft_ms, … }` (a spread, then ~30 fields added one by one) cost ~30 µs per record
 * in a micro-benchmark against ~25 ns for this, and showed as buildRecord's self time under load
 * (docs/benchmarks.md, issue 11).
 */
function recordOf(s: StartFields, o: OutcomeFields): RequestRecord {
  return {
    id: s.id,
    ts_start: s.ts_start,
    ts_end: s.ts_end,
    duration_ms: s.duration_ms,
    upstream: s.upstream,
    method: s.method,
    path: s.path,
    operation: s.operation,
    request_model: s.request_model,
    app: s.app,
    key_id: s.key_id,
    user: s.user,
    stream: s.stream,
    trace_id: s.trace_id,
    request_bytes: s.request_bytes,
    response_bytes: s.response_bytes,
    ttft_ms: o.ttft_ms,
    response_model: o.response_model,
    http_status: o.http_status,
    error_type: o.error_type,
    error_message: o.error_message,
    finish_reason: o.finish_reason,
    input_tokens: o.input_tokens,
    cache_read_tokens: o.cache_read_tokens,
    cache_write_tokens: o.cache_write_tokens,
    cache_write_1h_tokens: o.cache_write_1h_tokens,
    output_tokens: o.output_tokens,
    reasoning_tokens: o.reasoning_tokens,
    audio_tokens: o.audio_tokens,
    images: o.images,
    usage_source: o.usage_source,
    cost_nanos: o.cost_nanos,
    currency: o.currency,
    cost_source: o.cost_source,
    price_id: o.price_id,
    price_match: o.price_match,
    multiplier: o.multiplier,
    upstream_reported_cost_nanos: o.upstream_reported_cost_nanos,
    upstream_reported_currency: o.upstream_reported_currency,
    computed_cost_nanos: o.computed_cost_nanos,
    computed_currency: o.computed_currency,
    upstream_request_id: o.upstream_request_id,
    note: o.note,
  };
}

class RequestMeterImpl implements RequestMeter {
  readonly upstreamHeaders: Record<string, string> = {};
  rejection?: Rejection;
  admission?: Promise<void>;

  private rejectionMessage: string | undefined;
  private readonly start: RequestStart;
  private readonly keyId: string | null;
  private readonly decoder: UsageDecoder | undefined;
  private readonly decoderInfo: DecoderRequestInfo;
  private reservation: BudgetReservation | undefined;
  private traceId: string | null = null;
  /** Sinks that began this request, with their handles; the record goes to `handle.end`. */
  private readonly begun: Array<{ sink: Sink; handle: SinkRequest }> = [];

  private status: number | null = null;
  private responseHeaders: IncomingHttpHeaders = {};
  private responseBytes = 0;
  private firstByteAt: number | undefined;
  private sideCopy: SideCopy | undefined;
  /** After a 101: the WebSocket session's messages (src/meter/ws-session.ts). */
  private session: SessionCopy | undefined;
  /** Set at finish for a session (client→server bytes after the upgrade). */
  private requestBytesAtEnd: number | undefined;
  private sse: SseParser | undefined;
  private bodyChunks: Buffer[] = [];
  private bodyLength = 0;
  private bodyCap = 0;
  private bodyOverflow = false;
  private finished = false;
  private notes: string[] = [];
  private sseEvents = 0;
  private eventlessStream: string | undefined;
  private streamHead: Buffer[] = [];
  private streamHeadBytes = 0;

  constructor(
    private readonly input: MeterBeginInput,
    private readonly deps: MeterDeps,
    private readonly now: () => number,
    private readonly guard: Guard,
    fingerprint: (apiKey: string) => string,
  ) {
    const { info } = input;
    const apiKey = extractApiKey(input.headers);
    this.keyId = apiKey === undefined ? null : guard('attribution', null, () => fingerprint(apiKey));
    const app = resolveApp({
      headers: input.headers,
      keyId: this.keyId ?? undefined,
      apps: deps.apps,
      routeApp: input.routeApp,
    });
    const tsStart = input.tsStart ?? now();
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
    if (info.modelTruncated) this.notes.push('model_name_truncated');
    // The response is decoded by path and content type even when the request body could not be
    // read (over the cap): its usage is still reported, and priced by the response's model.
    this.decoder =
      info.operation === 'other'
        ? undefined
        : guard('decoder', undefined, () => createDecoder(this.decoderInfo));

    // Budgets gate only operations that cost money: /v1/models, count_tokens, /v1/balance stay open
    // so a blocked app can still list models and check its balance.
    const decision: BudgetDecision | undefined =
      deps.budgets && info.operation !== 'other'
        ? guard('budgets', undefined, () =>
            deps.budgets!.check(this.start, {
              body: info.body,
              bodyUnreadable: info.tooLargeToMeter,
              requestBytes: input.requestBytes,
            }),
          )
        : undefined;
    if (decision?.blocked) {
      this.rejection = budgetRejection(decision.reason, decision.message);
      this.rejectionMessage = decision.message;
      this.notes.push(`budget_blocked:${decision.budget}`);
    } else if (decision) {
      this.reservation = decision.reservation;
      if (decision.pending) this.admission = this.awaitShared(decision.pending);
    }
    if (this.rejection) return; // nothing is sent upstream: no span context to propagate

    for (const sink of deps.sinks) {
      if (!sink.begin) continue;
      const handle = guard(`sink:${sink.name}`, undefined, () => sink.begin!(this.start));
      if (!handle) continue;
      this.begun.push({ sink, handle });
      if (handle.upstreamHeaders) Object.assign(this.upstreamHeaders, handle.upstreamHeaders);
      if (handle.traceId) this.traceId = handle.traceId;
    }
  }

  /** Fleet mode: a shared budget's refusal becomes this request's rejection, like a local one. */
  private async awaitShared(pending: Promise<BudgetBlock | undefined>): Promise<void> {
    try {
      const blocked = await pending;
      if (!blocked) return;
      this.rejection = budgetRejection(blocked.reason, blocked.message);
      this.rejectionMessage = blocked.message;
      this.notes.push(`budget_blocked:${blocked.budget}`);
    } catch (err) {
      this.guard('budgets', undefined, () => {
        throw err;
      });
    }
  }

  onResponseHead(status: number, headers: IncomingHttpHeaders): void {
    this.guard('meter', undefined, () => {
      this.status = status;
      this.responseHeaders = headers;
      if (status === 101) {
        this.beginSession(headers);
        return;
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
          onEvent: (e) => {
            this.sseEvents++;
            this.guard('decoder', undefined, () => decoder.onEvent(e));
          },
          onOversize: () => {
            this.deps.health.sseOversize(this.input.upstream);
            this.notes.push('sse_event_over_cap');
          },
        });
        const sse = this.sse;
        this.sideCopy = new SideCopy(enc, (chunk) => {
          this.guard('sse', undefined, () => sse.feed(chunk));
          // Until the stream has carried an SSE event, its first bytes are kept: if it never
          // does (an HTML page or a JSON body labelled text/event-stream), they say what it was.
          // A normal stream dispatches an event in its first chunk and keeps nothing.
          if (this.sseEvents === 0 && this.streamHeadBytes < STREAM_HEAD_CAP) {
            const part = chunk.subarray(0, STREAM_HEAD_CAP - this.streamHeadBytes);
            this.streamHead.push(Buffer.from(part));
            this.streamHeadBytes += part.length;
          } else if (this.streamHead.length > 0) this.streamHead = [];
        });
      } else {
        // Non-streamed (or error) body: buffer the decoded copy, capped.
        const wantBody = this.decoder !== undefined || status >= 400 || this.deps.capture !== undefined;
        if (!wantBody) return;
        this.bodyCap = status >= 400 && !this.decoder ? ERROR_BODY_CAP : this.deps.maxResponseBodyBytes;
        this.sideCopy = new SideCopy(enc, (chunk) => this.collect(chunk));
      }
    });
  }

  /** A WebSocket session began: its server messages go to the decoder (a `realtime` one). */
  private beginSession(headers: IncomingHttpHeaders): void {
    const decoder = this.decoder;
    if (!decoder || this.input.info.operation !== 'realtime') return;
    this.session = new SessionCopy({
      headers,
      decoder,
      maxMessageBytes: this.deps.maxEventBytes,
      guard: (fn) => this.guard('decoder', undefined, fn),
      onOversize: () => this.deps.health.sseOversize(this.input.upstream),
    });
  }

  onResponseChunk(chunk: Buffer): void {
    this.responseBytes += chunk.length;
    if (this.session) {
      const session = this.session;
      this.guard('meter', undefined, () => session.write(chunk));
    } else if (this.sideCopy) {
      const side = this.sideCopy;
      this.guard('meter', undefined, () => side.write(chunk));
    }
  }

  onFirstByteToClient(): void {
    if (this.firstByteAt === undefined) this.firstByteAt = this.now();
  }

  finish(outcome: MeterOutcome, extra: FinishExtra = {}): Promise<void> {
    if (this.finished) return Promise.resolve();
    this.finished = true;
    const tsEnd = this.now();
    this.requestBytesAtEnd = extra.requestBytes;
    return new Promise<void>((resolve) => {
      // Off the response path: the exchange has already ended (or is ending) the client response;
      // everything below runs on a later turn of the event loop.
      const complete = (): void => {
        setImmediate(() => {
          try {
            this.endStep(outcome, tsEnd, extra);
          } finally {
            resolve();
          }
        });
      };
      if (this.session) {
        const session = this.session;
        let called = false;
        const once = (): void => {
          if (!called) {
            called = true;
            complete();
          }
        };
        const ended = this.guard('meter', false, () => {
          session.end(once);
          return true;
        });
        // A throw inside end() must not leave the request in flight forever.
        if (!ended) once();
        return;
      }
      const side = this.sideCopy;
      if (!side) return complete();
      try {
        side.end(() => {
          if (this.sse) this.guard('sse', undefined, () => this.sse!.end());
          if (side.error) this.notes.push(side.error);
          complete();
        });
      } catch (err) {
        this.guard('meter', undefined, () => {
          throw err;
        });
        complete();
      }
    });
  }

  /** The end step: exactly one record (a fallback one if building fails), every sink, the budget. */
  private endStep(outcome: MeterOutcome, tsEnd: number, extra: FinishExtra): void {
    let record: RequestRecord;
    try {
      record = this.buildRecord(outcome, tsEnd);
    } catch (err) {
      this.deps.health.internalError('record');
      this.deps.log.once(
        'meter-record',
        'error',
        'building a request record failed; a minimal one is written',
        {
          error: err instanceof Error ? err.message : String(err),
        },
      );
      record = this.fallbackRecord(outcome, tsEnd, err);
    }
    this.emit(record);
    if (
      this.deps.onRateLimit &&
      outcome.kind !== 'rejected' &&
      this.status !== null &&
      hasRateLimitHeaders(this.responseHeaders)
    ) {
      const headers = this.responseHeaders;
      this.guard('ratelimit', undefined, () =>
        this.deps.onRateLimit!(this.input.upstream, parseRateLimitHeaders(headers)),
      );
    }
    if (this.deps.onOverhead && extra.overheadSeconds !== undefined) {
      const s = extra.overheadSeconds;
      this.guard('metrics', undefined, () => this.deps.onOverhead!(this.input.upstream, s));
    }
  }

  /** The record fields known from the request's start and byte counts: the same in every record. */
  private knownFromStart(tsEnd: number): StartFields {
    const { info } = this.input;
    return {
      id: this.start.id,
      ts_start: this.start.ts_start,
      ts_end: tsEnd,
      duration_ms: tsEnd - this.start.ts_start,
      upstream: this.input.upstream,
      method: this.input.method,
      path: this.input.path,
      operation: info.operation,
      request_model: info.model ?? null,
      app: this.start.app,
      key_id: this.keyId,
      user: info.user ?? null,
      stream: info.stream,
      trace_id: this.traceId,
      request_bytes: this.requestBytesAtEnd ?? this.input.requestBytes,
      response_bytes: this.responseBytes,
    };
  }

  /**
   * The record when building the real one threw: what the request start knew, the outcome, and
   * the failure named in `note`. Usage and cost are unknown (NULL), never 0.
   */
  private fallbackRecord(outcome: MeterOutcome, tsEnd: number, err: unknown): RequestRecord {
    const message = err instanceof Error ? err.message : String(err);
    return recordOf(this.knownFromStart(tsEnd), {
      ttft_ms: null,
      response_model: null,
      http_status: outcome.kind === 'rejected' ? (this.rejection?.status ?? null) : this.status,
      error_type: errorTypeFor(outcome, null),
      error_message: null,
      finish_reason: null,
      input_tokens: null,
      cache_read_tokens: null,
      cache_write_tokens: null,
      cache_write_1h_tokens: null,
      output_tokens: null,
      reasoning_tokens: null,
      audio_tokens: null,
      images: null,
      usage_source: this.decoder ? 'missing' : 'none',
      cost_nanos: null,
      currency: null,
      cost_source: null,
      price_id: null,
      price_match: null,
      multiplier: null,
      upstream_reported_cost_nanos: null,
      upstream_reported_currency: null,
      computed_cost_nanos: null,
      computed_currency: null,
      upstream_request_id: null,
      note: `record_build_failed: ${message}`.slice(0, MESSAGE_CAP),
    });
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

  private buildRecord(endedAs: MeterOutcome, tsEnd: number): RequestRecord {
    const { info } = this.input;
    // A WebSocket session: the server's close frame tells a clean end from an abort or a reset.
    const session = this.session?.refine(endedAs);
    const outcome = session?.outcome ?? endedAs;
    if (this.session) this.notes.push(...this.session.notes);
    const status = outcome.kind === 'rejected' ? (this.rejection?.status ?? 429) : this.status;
    const chunks = this.bodyChunks;
    // One chunk (most bodies) is decoded where it is; only several are joined first.
    const bodyText =
      chunks.length === 0
        ? undefined
        : (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)).toString('utf8');

    let decoded: DecodedResponse | undefined;
    if (this.decoder) {
      const decoder = this.decoder;
      if (bodyText !== undefined && !this.sse && status !== null && status < 400 && !this.bodyOverflow) {
        this.guard('decoder', undefined, () => decoder.onBody(bodyText));
      }
      if (this.sse && this.sseEvents === 0 && this.streamHead.length > 0 && status !== null && status < 300) {
        this.guard('decoder', undefined, () => this.decodeEventlessStream(decoder));
      }
      decoded = this.guard('decoder', undefined, () => decoder.result());
      if (
        this.eventlessStream !== undefined &&
        decoded &&
        decoded.bodyMalformed === undefined &&
        !decoded.usageReported
      )
        decoded = { ...decoded, bodyMalformed: this.eventlessStream };
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

    // A 2xx body that is not what the endpoint speaks (an HTML page from a CDN, plain text) is an
    // upstream failure, whatever its status says.
    const malformed =
      outcome.kind === 'complete' && status !== null && status < 300 ? decoded?.bodyMalformed : undefined;
    const errorType = errorTypeFor(
      outcome,
      classification?.errorType ?? session?.error?.type ?? (malformed ? 'upstream_error' : null),
    );
    const errorMessage = messageFor(
      outcome,
      classification?.message ?? session?.error?.message ?? decoded?.streamError?.message ?? malformed,
      this.rejectionMessage,
    );

    const { usage, usageSource } = this.usageFor(outcome, status, decoded);
    if (decoded?.notes) this.notes.push(...decoded.notes);

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

    return recordOf(this.knownFromStart(tsEnd), {
      ttft_ms: ttft,
      response_model: decoded?.responseModel ?? null,
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
      audio_tokens: usage.audio ?? null,
      images: usage.images ?? null,
      usage_source: usageSource,
      cost_nanos: price?.cost_nanos ?? null,
      currency: price?.currency ?? null,
      cost_source: price?.cost_source ?? null,
      price_id: price?.price_id ?? null,
      price_match: price?.price_match ?? null,
      multiplier: price?.multiplier ?? null,
      upstream_reported_cost_nanos: price?.upstream_reported_cost_nanos ?? null,
      upstream_reported_currency: price?.upstream_reported_currency ?? null,
      // Trusted reported cost: our own figure stays beside it (docs/reconcile.md).
      computed_cost_nanos: price?.cost_source === 'upstream' ? (price.computed_cost_nanos ?? null) : null,
      computed_currency: price?.cost_source === 'upstream' ? (price.computed_currency ?? null) : null,
      upstream_request_id: upstreamRequestId ?? null,
      note: this.notes.length > 0 ? [...new Set(this.notes)].join('; ') : null,
    });
  }

  /**
   * A 2xx "stream" that carried no SSE event at all. A whole JSON body labelled text/event-stream
   * is decoded as a body; anything else (an HTML page) is described, never read as zero usage.
   */
  private decodeEventlessStream(decoder: UsageDecoder): void {
    const head = Buffer.concat(this.streamHead).toString('utf8');
    const whole = this.streamHeadBytes < STREAM_HEAD_CAP;
    if (whole && head.trimStart().startsWith('{')) decoder.onBody(head);
    else this.eventlessStream = describeMalformedBody(head);
  }

  /**
   * Usage: reported > estimated > missing; `none` where the operation or response has no usage.
   * A request that may have reached the upstream but got no response head (client abort, idle
   * timeout, connection lost after sending) may still be billed for its input: its input is
   * estimated from the request body and its output stays unknown.
   */
  private usageFor(
    outcome: MeterOutcome,
    status: number | null,
    decoded: DecodedResponse | undefined,
  ): { usage: Usage; usageSource: UsageSource } {
    if (!this.decoder || outcome.kind === 'rejected' || outcome.kind === 'internal')
      return { usage: {}, usageSource: 'none' };
    if (status === null) {
      const reached = 'reachedUpstream' in outcome && outcome.reachedUpstream === true;
      if (!reached) return { usage: {}, usageSource: 'none' };
      const input = this.guard('estimate', undefined, () => estimateInputOnly(this.decoderInfo));
      if (input !== undefined) return { usage: { input }, usageSource: 'estimated' };
      this.notes.push('usage_missing');
      return { usage: {}, usageSource: 'missing' };
    }
    if (status >= 400 && !decoded?.usageReported) return { usage: {}, usageSource: 'none' };
    if (this.session?.unreadable) {
      // A session message that could not be read may have been a response.done: a sum without
      // it would look complete, so the usage is unknown.
      this.notes.push('usage_missing');
      return { usage: {}, usageSource: 'missing' };
    }
    if (decoded?.usageReported) return { usage: decoded.usage, usageSource: 'reported' };
    if (decoded?.bodyMalformed || this.bodyOverflow) {
      if (this.bodyOverflow) this.notes.push('response_too_large_to_meter');
      this.notes.push('usage_missing');
      return { usage: {}, usageSource: 'missing' };
    }
    const est = decoded
      ? this.guard('estimate', undefined, () => estimateUsage(this.decoderInfo, decoded))
      : undefined;
    if (est) return { usage: est, usageSource: 'estimated' };
    this.notes.push('usage_missing');
    return { usage: {}, usageSource: 'missing' };
  }

  private emit(record: RequestRecord): void {
    const begun = this.begun;
    for (const { sink, handle } of begun)
      this.guard(`sink:${sink.name}`, undefined, () => handle.end(record));
    for (const sink of this.deps.sinks) {
      // Most requests began no sink (only traces do): no set of them is built per request.
      if (begun.length > 0 && begun.some((b) => b.sink === sink)) continue;
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

/** Input tokens counted locally from the request body alone (no response was seen). */
function estimateInputOnly(info: DecoderRequestInfo): number | undefined {
  return estimateUsage(info, { usage: {}, usageReported: false, outputText: '' })?.input;
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
      return 'budget_exceeded';
    case 'internal':
      return 'internal_error';
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
    outcome.kind === 'network' || outcome.kind === 'upstream_reset' || outcome.kind === 'internal'
      ? outcome.message
      : outcome.kind === 'timeout'
        ? `upstream ${outcome.phase} timeout`
        : outcome.kind === 'rejected'
          ? rejectionMessage
          : upstreamMessage;
  return msg === undefined ? null : msg.slice(0, MESSAGE_CAP);
}

/**
 * A budget block (§9): 429 when the budget is used up, 413 when the request body is over the
 * metering cap and so cannot be checked against a `block` budget. The proxy shapes the body per
 * endpoint; `x-should-retry: false` tells the OpenAI and Anthropic SDKs not to retry it (they
 * retry 429 by default, and a used-up budget does not come back in a second).
 */
export function budgetRejection(reason: 'exhausted' | 'unmeterable', message: string): Rejection {
  const headers = { 'x-tokenmeter-blocked': 'budget', 'x-should-retry': 'false' };
  return reason === 'unmeterable'
    ? { status: 413, type: { openai: 'budget_exceeded', anthropic: 'request_too_large' }, message, headers }
    : { status: 429, type: { openai: 'budget_exceeded', anthropic: 'rate_limit_error' }, message, headers };
}
