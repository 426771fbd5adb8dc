import type { IncomingHttpHeaders } from 'node:http';

/**
 * Scenarios change how the fake answers. They are picked by the `x-fake-scenario` header
 * (comma-separated) and, so that unmodified SDK clients can trigger them, by the model name:
 * `model: "slow-stream"` or `model: "gzip+crlf+glm-4-flash"` (every `+`-separated part that is a
 * scenario name is a scenario; the rest is the model that picks the flavor).
 */
export const NAMED_SCENARIOS = [
  'error-in-stream',
  'minimax-base-resp-error',
  'slow-stream',
  'reset-mid-stream',
  'hang',
  'hang-after-head',
  'gzip',
  'gzip-no-header',
  'keepalive',
  'crlf',
  'no-done',
  'no-usage',
  'cost',
  'big-event',
  // finish_reason "length" / stop_reason "max_tokens" / Responses status "incomplete".
  'max-tokens',
  // Every event / body written in tiny separate writes (split inside UTF-8 sequences too).
  'split-writes',
  // Anthropic stream with several cumulative message_delta usage reports (as with server tools such
  // as web search): each repeats the running totals; the last one is final. Summing them is wrong.
  'server-tools',
  // 429 whose body says insufficient_quota (OpenAI's "You exceeded your current quota"), §4.4.
  'error-429-quota',
  // DashScope (Qwen) out of credit: 400 with code "Arrearage", §4.4.
  'error-arrearage',
  // one-api/new-api out of user quota: 403 insufficient_user_quota, §4.4.
  'error-403-quota',
] as const;

export type NamedScenario = (typeof NAMED_SCENARIOS)[number];

/** `error-NNN` for any HTTP status NNN, plus the named ones. */
export function isScenarioName(name: string): boolean {
  return /^error-\d{3}$/.test(name) || (NAMED_SCENARIOS as readonly string[]).includes(name);
}

export interface Scenario {
  names: Set<string>;
  /** Status to fail with before any body (`error-NNN`, `error-429-quota`), if any. */
  errorStatus?: number;
  /** Delay before each streamed event (x-fake-delay-ms; 50 under slow-stream, else 0). */
  delayMs: number;
  /** x-fake-chunks: exact number of reply pieces. */
  chunks?: number;
  /** Events (stream) written before the socket is destroyed under reset-mid-stream. */
  resetAfter: number;
  /** Size of the padded event under big-event (x-fake-event-bytes, default 9 MiB > the 8 MiB cap). */
  bigEventBytes: number;
  /** Under split-writes: bytes per write (x-fake-split-bytes, default 1). */
  splitBytes: number;
  /** x-fake-usage: a JSON usage object, in the flavor's wire shape, sent instead of the computed one
   * (so cost tests can state exact counts, e.g. 1,000 prompt tokens of which 600 cached). */
  usage?: Record<string, unknown>;
}

export const DEFAULT_SLOW_DELAY_MS = 50;
export const DEFAULT_RESET_AFTER = 2;
export const DEFAULT_BIG_EVENT_BYTES = 9 * 1024 * 1024;

function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function intHeader(headers: IncomingHttpHeaders, name: string): number | undefined {
  const raw = headerValue(headers, name);
  if (raw === undefined) return undefined;
  const value = Number.parseInt(raw, 10);
  return Number.isFinite(value) && value >= 0 ? value : undefined;
}

/** x-fake-usage as a JSON object; anything else (absent, not JSON, not an object) is ignored. */
function usageHeader(headers: IncomingHttpHeaders): Record<string, unknown> | undefined {
  const raw = headerValue(headers, 'x-fake-usage');
  if (raw === undefined) return undefined;
  try {
    const parsed: unknown = JSON.parse(raw);
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
      ? (parsed as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** Splits a request model into scenario names and the model that picks the flavor. */
export function splitModel(model: string): { scenarios: string[]; model: string } {
  const parts = model.split('+');
  const scenarios = parts.filter(isScenarioName);
  const rest = parts.filter((part) => !isScenarioName(part));
  return { scenarios, model: rest.length > 0 ? rest.join('+') : model };
}

export function parseScenario(headers: IncomingHttpHeaders, modelScenarios: string[]): Scenario {
  const names = new Set<string>(modelScenarios);
  for (const name of (headerValue(headers, 'x-fake-scenario') ?? '').split(',')) {
    const trimmed = name.trim();
    if (trimmed.length > 0) names.add(trimmed);
  }
  let errorStatus: number | undefined;
  for (const name of names) {
    const match = /^error-(\d{3})$/.exec(name);
    if (match?.[1] !== undefined) errorStatus = Number(match[1]);
  }
  if (names.has('error-429-quota')) errorStatus = 429;
  if (names.has('error-arrearage')) errorStatus = 400;
  if (names.has('error-403-quota')) errorStatus = 403;
  const delayHeader = intHeader(headers, 'x-fake-delay-ms');
  return {
    names,
    errorStatus,
    delayMs: delayHeader ?? (names.has('slow-stream') ? DEFAULT_SLOW_DELAY_MS : 0),
    chunks: intHeader(headers, 'x-fake-chunks'),
    resetAfter: intHeader(headers, 'x-fake-reset-after') ?? DEFAULT_RESET_AFTER,
    bigEventBytes: intHeader(headers, 'x-fake-event-bytes') ?? DEFAULT_BIG_EVENT_BYTES,
    splitBytes: Math.max(1, intHeader(headers, 'x-fake-split-bytes') ?? 1),
    usage: usageHeader(headers),
  };
}
