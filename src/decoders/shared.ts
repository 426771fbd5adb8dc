/**
 * Small helpers shared by the decoders: reading untrusted JSON without `any`, and the one
 * finish-reason normalisation. No provider knowledge beyond what several decoders share.
 */
import type { Usage } from '../record.js';
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

/** A token count: a finite non-negative integer (numeric strings accepted: some relays quote them). */
export function count(value: unknown): number | undefined {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 ? n : undefined;
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

/** A cost stated by the upstream (`usage.cost` on OpenRouter-style gateways), kept as a decimal string. */
export function costFrom(value: unknown): DecodedResponse['upstreamCost'] {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return { amount: String(value) };
  if (typeof value === 'string' && /^\d+(\.\d+)?$/.test(value)) return { amount: value };
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

/** Builds the DecodedResponse shape with absent (not undefined-valued) optional fields. */
export function buildResult(r: {
  usage: Usage | undefined;
  usageReported: boolean;
  responseModel: string | undefined;
  finishReason: string | undefined;
  streamError: DecodedResponse['streamError'];
  outputText: string;
  outputTextDroppedChars?: number;
  upstreamCost: DecodedResponse['upstreamCost'];
  upstreamRequestId: string | undefined;
}): DecodedResponse {
  const out: DecodedResponse = {
    usage: r.usage ? compactUsage(r.usage) : {},
    usageReported: r.usageReported,
    outputText: r.outputText,
  };
  if (r.outputTextDroppedChars) out.outputTextDroppedChars = r.outputTextDroppedChars;
  if (r.responseModel !== undefined) out.responseModel = r.responseModel;
  if (r.finishReason !== undefined) out.finishReason = r.finishReason;
  if (r.streamError !== undefined) out.streamError = r.streamError;
  if (r.upstreamCost !== undefined) out.upstreamCost = r.upstreamCost;
  if (r.upstreamRequestId !== undefined) out.upstreamRequestId = r.upstreamRequestId;
  return out;
}
