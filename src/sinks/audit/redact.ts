/**
 * Redaction for optional body capture (DESIGN.md §6, §12): nothing secret is stored even when
 * bodies are captured. Built-in rules cover API keys (`sk-…`, which includes Anthropic's
 * `sk-ant-…`), bearer tokens and e-mail addresses; operators add their own regexes.
 */
import { TokenmeterError } from '../../errors.js';

export interface Redactor {
  redact(text: string): string;
}

const BUILT_IN: ReadonlyArray<[RegExp, string]> = [
  [/\bBearer\s+[A-Za-z0-9._~+/=-]+/gi, 'Bearer [REDACTED]'],
  [/\bsk-[A-Za-z0-9_-]{6,}/g, '[REDACTED_KEY]'],
  [/[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}/g, '[REDACTED_EMAIL]'],
];

/** Compiles configured patterns once; an invalid one is a startup error, not a silent leak. */
export function createRedactor(patterns: readonly string[]): Redactor {
  const custom = patterns.map((p): [RegExp, string] => {
    try {
      return [new RegExp(p, 'g'), '[REDACTED]'];
    } catch (err) {
      throw new TokenmeterError(
        'CONFIG_INVALID',
        `audit.redact_patterns: invalid regex ${p}: ${(err as Error).message}`,
      );
    }
  });
  const rules = [...BUILT_IN, ...custom];
  return {
    redact(text) {
      let out = text;
      for (const [re, replacement] of rules) out = out.replace(re, replacement);
      return out;
    },
  };
}

const DELIMITERS = new Set([
  ' ',
  '\t',
  '\n',
  '\r',
  '"',
  "'",
  ',',
  ';',
  ':',
  '(',
  ')',
  '{',
  '}',
  '[',
  ']',
  '<',
  '>',
]);

/** Index just after the last delimiter (a backwards scan: a regex anchored at $ can go quadratic). */
function lastDelimiterEnd(text: string): number {
  for (let i = text.length - 1; i >= 0; i--) if (DELIMITERS.has(text[i]!)) return i + 1;
  return 0;
}

/** Bytes past the cap that are still read, so a secret straddling the cap is seen whole. */
export const WINDOW_MARGIN = 1024;

/**
 * Redacts, then truncates to `maxBytes` of UTF-8. Redaction runs first on a window a little
 * larger than the cap, so a key straddling the cut is still recognised and never half-stored.
 */
export function redactAndTruncate(
  body: Buffer,
  maxBytes: number,
  redactor: Redactor,
): { text: string; truncated: boolean } {
  const cut = body.length > maxBytes + WINDOW_MARGIN;
  let windowText = body.subarray(0, maxBytes + WINDOW_MARGIN).toString('utf8');
  // A token cut by the window edge cannot be recognised by a pattern; redaction can shrink the text
  // and pull it under the cap, so it is dropped whole rather than half-stored.
  if (cut) windowText = windowText.slice(0, lastDelimiterEnd(windowText));
  const redacted = Buffer.from(redactor.redact(windowText), 'utf8');
  if (redacted.length <= maxBytes && !cut) return { text: redacted.toString('utf8'), truncated: false };
  // Back off to a UTF-8 character boundary so the stored text is valid.
  let end = Math.min(maxBytes, redacted.length);
  while (end > 0 && end < redacted.length && (redacted[end]! & 0xc0) === 0x80) end--;
  return { text: redacted.subarray(0, end).toString('utf8'), truncated: true };
}
