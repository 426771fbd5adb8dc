/**
 * Small helpers shared by the decoders: reading untrusted JSON without `any`, and the one
 * finish-reason normalisation. No provider knowledge beyond what several decoders share.
 */
import type { Usage } from '../record.js';
import { SseParser } from '../sse/parser.js';
import type { SseEvent } from '../sse/types.js';
import type { DecodedResponse } from './types.js';

export type JsonObject = Record<string, unknown>;

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function obj(value: unknown): JsonObject | undefined {
  return isObject(value) ? value : undefined;
}

export function str(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/**
 * Upper bound for one token count of one request. No model's context window or output comes near
 * it (the largest contexts are ~10M tokens; outputs are capped far lower), so anything above is a
 * relay bug, not usage: 1e12 once priced a single request at $750,000 and exhausted every budget.
 * At this bound even the dearest list price (~$600 per 1M output tokens) stays below $60,000, and
 * the sum of all fields stays a safe integer. See docs/decoders.md.
 */
export const MAX_TOKENS_PER_FIELD = 100_000_000;

/**
 * Upper bound for images in one image-generation response. OpenAI caps `n` at 10, other image
 * endpoints at a few dozen; a thousand is already far beyond any of them.
 */
export const MAX_IMAGES_PER_REQUEST = 1_000;

/**
 * Digit strings no longer than this are exact as a double (< 2^53), so `Number()` cannot round
 * them; longer ones are beyond any bound we use and are rejected before conversion.
 */
const MAX_COUNT_DIGITS = 15;

/**
 * A count as stated on the wire: a number, `undefined` when not stated (absent, null, ""), or
 * `null` when stated but not a plausible count (negative, fractional, unsafe, over `max`, junk).
 */
export function readCount(value: unknown, max = MAX_TOKENS_PER_FIELD): number | undefined | null {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value === 'number') {
    // `+ 0` turns JSON's -0 into 0 (a negative zero would survive into comparisons and the DB).
    return Number.isSafeInteger(value) && value >= 0 && value <= max ? value + 0 : null;
  }
  // Some relays quote counts. Check the digits before converting: Number("9007199254740993") rounds.
  if (typeof value === 'string' && value.length <= MAX_COUNT_DIGITS && /^\d+$/.test(value)) {
    const n = Number(value);
    return n <= max ? n : null;
  }
  return null;
}

/** A plausible count or unknown (never a made-up number). For usage objects use `UsageFields`. */
export function count(value: unknown, max = MAX_TOKENS_PER_FIELD): number | undefined {
  return readCount(value, max) ?? undefined;
}

/**
 * Reads the token counts of one usage object and remembers every field that was stated but not
 * plausible. The one mechanism every decoder uses before accepting a report (issue 11): a usage
 * object with any implausible field is not accepted at all, so garbage never becomes a number.
 */
export class UsageFields {
  /** Paths of fields stated but not plausible ("prompt_tokens_details.cached_tokens"). */
  readonly implausible: string[] = [];
  constructor(private readonly raw: JsonObject) {}

  /**
   * A count read from the usage object, or from its nested object `within` (e.g.
   * `get('cached_tokens', 'prompt_tokens_details')`). Per field, not a dotted path: this runs for
   * every chunk of a stream that repeats its usage (Gemini, DashScope), so no string is split or
   * built unless a field is broken.
   */
  get(field: string, within?: string, max = MAX_TOKENS_PER_FIELD): number | undefined {
    const holder = within === undefined ? this.raw : obj(this.raw[within]);
    if (holder === undefined) return undefined;
    const n = readCount(holder[field], max);
    if (n === null) {
      this.implausible.push(within === undefined ? field : `${within}.${field}`);
      return undefined;
    }
    return n;
  }

  /** A field read only to check it (e.g. `total_tokens`): a broken figure taints the whole report. */
  check(field: string): void {
    this.get(field);
  }
}

/** Response headers as Node's `IncomingMessage.headers` gives them (names lower-cased). */
export type HeaderRecord = Record<string, string | string[] | undefined>;

/**
 * First value of a header, trimmed; undefined when absent or blank (never ''). The lower-case
 * fallback covers hand-built records with mixed-case names; Node already lower-cases what it parses.
 */
export function header(headers: HeaderRecord, name: string): string | undefined {
  const v = headers[name] ?? headers[name.toLowerCase()];
  const first = Array.isArray(v) ? v[0] : v;
  const trimmed = first?.trim();
  return trimmed === undefined || trimmed === '' ? undefined : trimmed;
}

/** JSON.parse that never throws: malformed chunks are skipped, not fatal (§12). */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** `a - b` when both known and the result is not negative; otherwise unknown (never a made-up 0). */
export function minus(a: number | undefined, ...bs: (number | undefined)[]): number | undefined {
  if (a === undefined) return undefined;
  let r = a;
  for (const b of bs) if (b !== undefined) r -= b;
  return r >= 0 ? r : undefined;
}

/** Drop undefined fields so results compare and serialise cleanly. */
export function compactUsage(u: Usage): Usage {
  const out: Usage = {};
  for (const [k, v] of Object.entries(u) as [keyof Usage, number | undefined][]) {
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/** True when a usage report carries no non-zero token count (a placeholder, e.g. MiniMax's early chunks). */
export function isPlaceholder(u: Usage): boolean {
  return !Object.values(u).some((v) => typeof v === 'number' && v > 0);
}

// Anthropic stop_reason → OpenAI finish_reason (DESIGN.md §4.5; seed 004's mapping table), and
// Responses incomplete_details.reason. Unknown values pass through lower-cased.
const FINISH_REASONS: Record<string, string> = {
  end_turn: 'stop',
  stop_sequence: 'stop',
  max_tokens: 'length',
  max_output_tokens: 'length',
  tool_use: 'tool_calls',
  refusal: 'content_filter',
  // Gemini-style OpenAI-compat relays sometimes leak upper-case values.
  max_tokens_reached: 'length',
};

export function normaliseFinishReason(value: unknown): string | undefined {
  const s = str(value);
  if (s === undefined) return undefined;
  const lower = s.toLowerCase();
  return FINISH_REASONS[lower] ?? lower;
}

/** `{message, code}` from the many error shapes: `{error:{message,code,type}}`, `{error:"text"}`, `{message}`. */
export function errorFrom(value: unknown): { message: string; code?: string } | undefined {
  if (typeof value === 'string' && value !== '') return { message: value };
  const o = obj(value);
  if (!o) return undefined;
  // `"error": {}` (seen on relays that always include the field) is not an error.
  const stated = str(o.message) ?? str(o.msg) ?? str(o.status_msg) ?? str(o.type);
  if (stated === undefined && o.code === undefined) return undefined;
  const message = stated ?? 'error';
  const code =
    str(o.code) ??
    (typeof o.code === 'number' ? String(o.code) : undefined) ??
    str(o.type) ??
    (typeof o.status_code === 'number' ? String(o.status_code) : undefined);
  return code === undefined ? { message } : { message, code };
}

/**
 * Bound on a cost stated by the upstream for one request, in its currency units. Above it the
 * figure is a relay bug; at it, `cost_nanos` (1e-9 units) still fits SQLite's 64-bit INTEGER.
 */
const MAX_UPSTREAM_COST = 1_000_000_000;

/** A cost stated by the upstream (`usage.cost` on OpenRouter-style gateways), kept as a decimal string. */
export function costFrom(value: unknown): DecodedResponse['upstreamCost'] {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0 || value > MAX_UPSTREAM_COST) return undefined;
    const plain = String(value);
    // String(1e-7) is "1e-7": write tiny amounts out (12 places is finer than a nano) and trim.
    if (!plain.includes('e')) return { amount: plain };
    const fixed = value.toFixed(12).replace(/\.?0+$/, '');
    return { amount: fixed };
  }
  // Ten integer digits bound a string the same way (no conversion needed to check it).
  if (typeof value === 'string' && /^\d{1,10}(\.\d+)?$/.test(value) && Number(value) <= MAX_UPSTREAM_COST) {
    return { amount: value };
  }
  return undefined;
}

/** Generated text kept per request for estimation; the rest is extrapolated (src/decoders/estimate.ts). */
export const TEXT_CAP_CHARS = 256 * 1024;

/** Collects generated text without quadratic string concatenation. */
export class TextSink {
  private parts: string[] = [];
  private kept = 0;
  /** Characters seen beyond the cap: counted, not kept (a long stream must not grow memory). */
  dropped = 0;
  constructor(private readonly capChars = TEXT_CAP_CHARS) {}
  add(value: unknown): void {
    if (typeof value !== 'string' || value === '') return;
    const room = this.capChars - this.kept;
    if (room <= 0) {
      this.dropped += value.length;
      return;
    }
    const part = value.length <= room ? value : value.slice(0, room);
    this.parts.push(part);
    this.kept += part.length;
    this.dropped += value.length - part.length;
  }
  toString(): string {
    return this.parts.join('');
  }
}

/** Longest upstream-chosen names kept: they are stored per row, labelled and logged (issue 11). */
export const MAX_MODEL_CHARS = 256;
const MAX_ID_CHARS = 256;
const MAX_FINISH_REASON_CHARS = 64;

/** First `max` UTF-16 units, never ending on half of a surrogate pair. */
export function capText(value: string, max: number): string {
  if (value.length <= max) return value;
  const code = value.charCodeAt(max - 1);
  return value.slice(0, code >= 0xd800 && code <= 0xdbff ? max - 1 : max);
}

/** Content characters a malformed-body hint may quote (issue 11: never more than ~40). */
const HINT_CHARS = 32;

/**
 * A short, safe description of a body that is not the JSON its endpoint speaks, for the record's
 * error message: the kind of content (`starts with <html`, truncated JSON, binary) and, for plain
 * text, at most 32 characters of its first line with key-like runs removed. Exported so the meter
 * can describe a stream whose bytes never formed an event the same way.
 */
export function describeMalformedBody(body: string): string {
  const parsed = parseJson(body);
  return parsed === undefined ? describeUnparsed(body) : describeJsonKind(parsed);
}

/** A body that did not parse as JSON at all. */
function describeUnparsed(body: string): string {
  if (body.trim() === '') return 'empty body';
  return describeText(
    body
      .slice(0, 4096)
      .replace(/^\uFEFF/, '')
      .trimStart(),
  );
}

/** A body that parsed as JSON but is not an object (the endpoints we meter all answer objects). */
function describeJsonKind(parsed: unknown): string {
  const kind = Array.isArray(parsed) ? 'array' : parsed === null ? 'null' : typeof parsed;
  return `unexpected JSON body (${kind})`;
}

/** `head`: the start of a body known not to parse as JSON, BOM and leading blanks removed. */
function describeText(head: string): string {
  const tag = /^<([!?]?[A-Za-z][A-Za-z0-9-]{0,15})/.exec(head);
  if (tag?.[1] !== undefined) return `non-JSON body (starts with <${tag[1].toLowerCase()})`;
  if (head[0] === '{' || head[0] === '[') return 'non-JSON body (invalid or truncated JSON)';
  // A compressed or binary body decoded as UTF-8: a control character up front (blanks were
  // trimmed) or replacement characters.
  if (/^\p{Cc}/u.test(head) || head.slice(0, 64).includes('\uFFFD')) {
    return 'non-JSON body (binary)';
  }
  const firstLine = head.slice(0, 256).split(/\r\n|\r|\n/, 1)[0] ?? '';
  // Key-like runs go before the cut, so a key straddling the cut is still seen whole and removed.
  const safe = firstLine
    .replace(/[A-Za-z0-9_+=-]{16,}/g, '…')
    .replace(/[\p{C}"\\]/gu, '')
    .trim();
  return `non-JSON body (plain text: "${capText(safe, HINT_CHARS)}")`;
}

/** An SSE stream that reached `onBody` (a relay labelled it application/json): read it as events. */
function looksLikeSse(body: string): boolean {
  return /^\uFEFF?[\r\n]*(data|event|id|retry)?:/.test(body.slice(0, 64));
}

/** Distinct notes kept per response: bounded memory however many times a stream misbehaves. */
const MAX_NOTES = 32;

/**
 * What went wrong while reading one response, beside what was understood: unreadable bodies and
 * events, rejected usage objects. One per decoder; the same rules for every wire API.
 */
export class Diagnostics {
  private readonly notes = new Set<string>();
  private malformedBody: string | undefined;
  private dataEvents = 0;
  private unreadableEvents = 0;

  note(text: string): void {
    if (this.notes.size < MAX_NOTES) this.notes.add(text);
  }

  /**
   * The parsed JSON of one SSE event's (trimmed, non-blank, non-`[DONE]`) data. A value that is
   * not a JSON object is counted as unreadable unless the event says it is an error: an
   * `event: error` with plain text is understood (its text is the message).
   */
  readEventData(data: string, isErrorEvent: boolean): unknown {
    this.dataEvents += 1;
    const parsed = parseJson(data);
    if (!isErrorEvent && !isObject(parsed)) this.unreadableEvents += 1;
    return parsed;
  }

  /**
   * The JSON object of a non-streamed body, or undefined after recording why it is not one. A body
   * framed as SSE is handed to `onEvent` event by event instead (and undefined returned).
   */
  readBody(body: string, onEvent: (event: SseEvent) => void): JsonObject | undefined {
    if (looksLikeSse(body)) {
      const parser = new SseParser({ onEvent });
      parser.feed(Buffer.from(body, 'utf8'));
      parser.end();
      return undefined;
    }
    const parsed = parseJson(body);
    if (isObject(parsed)) return parsed;
    this.malformedBody = parsed === undefined ? describeUnparsed(body) : describeJsonKind(parsed);
    return undefined;
  }

  /**
   * Accepts a usage object's figures only when every field read from it was plausible; otherwise
   * notes each broken field (`usage_implausible:<field>`) and returns false.
   */
  accept(fields: UsageFields): boolean {
    for (const path of fields.implausible) this.note(`usage_implausible:${path}`);
    return fields.implausible.length === 0;
  }

  /**
   * Adds `bodyMalformed` and `notes` to a result (absent when there is nothing to say). Reads
   * state without changing it: `result()` may be called again after more events.
   */
  finish(out: DecodedResponse): DecodedResponse {
    const notes = [...this.notes];
    const unreadable = this.unreadableEvents;
    if (this.malformedBody !== undefined) out.bodyMalformed = this.malformedBody;
    else if (unreadable > 0 && unreadable === this.dataEvents)
      out.bodyMalformed = 'stream events are not JSON';
    if (unreadable > 0 && unreadable < this.dataEvents) notes.push(`stream_events_not_json:${unreadable}`);
    if (out.responseModel !== undefined && out.responseModel.length > MAX_MODEL_CHARS) {
      out.responseModel = capText(out.responseModel, MAX_MODEL_CHARS);
      notes.push('response_model_truncated');
    }
    if (notes.length > 0) out.notes = notes;
    return out;
  }
}

/**
 * What every decoder learns besides usage, filled as events or the body arrive, and the one place
 * that turns it into a DecodedResponse (caps applied, diagnostics added). Each decoder owns one.
 */
export class ResponseFacts {
  responseModel: string | undefined;
  finishReason: string | undefined;
  streamError: DecodedResponse['streamError'];
  upstreamCost: DecodedResponse['upstreamCost'];
  upstreamRequestId: string | undefined;
  /** Generated text for estimation; stays empty for operations without text (embeddings, images). */
  readonly text = new TextSink();
  readonly diagnostics = new Diagnostics();

  result(usage: Usage | undefined, usageReported: boolean): DecodedResponse {
    const out: DecodedResponse = {
      usage: usage ? compactUsage(usage) : {},
      usageReported,
      outputText: this.text.toString(),
    };
    if (this.text.dropped) out.outputTextDroppedChars = this.text.dropped;
    if (this.responseModel !== undefined) out.responseModel = this.responseModel;
    if (this.finishReason !== undefined)
      out.finishReason = capText(this.finishReason, MAX_FINISH_REASON_CHARS);
    if (this.streamError !== undefined) out.streamError = this.streamError;
    if (this.upstreamCost !== undefined) out.upstreamCost = this.upstreamCost;
    if (this.upstreamRequestId !== undefined)
      out.upstreamRequestId = capText(this.upstreamRequestId, MAX_ID_CHARS);
    return this.diagnostics.finish(out);
  }
}
