/**
 * The most a request can ask for, read from its body before it is sent (issue 11, "Budgets that
 * hold under concurrency"). Upper bounds, not estimates: a budget reserves what a request can cost
 * at most, so concurrent requests can never overshoot it.
 *
 * Input: one token per UTF-8 byte of every string and key in the body (and one per number, for
 * pre-tokenised input). Every BPE token of every vendor's tokenizer covers at least one byte, so
 * this is never below the real count, and it costs one pass over the parsed body with no
 * tokenizer: measured in docs/budgets.md. Images are the exception: their tokens depend on pixels,
 * not bytes, so each image part counts a fixed allowance instead of its base64 or URL.
 *
 * Output: the largest of `max_tokens`, `max_completion_tokens`, `max_output_tokens` when present
 * (undefined otherwise: the price book then uses the model's documented maximum).
 */
import type { BudgetRequest } from './types.js';

/**
 * Input tokens counted for one image part. The most any listed vendor bills for one image: OpenAI
 * gpt-4o-mini counts 2,833 + 5,667 per 512 px tile, and a high-detail image has at most 8 tiles
 * (2048×768) = 48,169 (https://platform.openai.com/docs/guides/images-vision#calculating-costs);
 * Anthropic ≈1,600 (1.15 MP / 750); gpt-4o 1,445. Rounded up.
 */
export const IMAGE_INPUT_TOKENS = 50_000;

/** Content parts that carry one image (OpenAI chat, Responses, Anthropic). */
const IMAGE_PART_TYPES: ReadonlySet<string> = new Set(['image_url', 'input_image', 'image']);

/** Output caps above this are not plausible (no model generates 10M tokens per request): ignored. */
const MAX_PLAUSIBLE_OUTPUT = 10_000_000;
/** OpenAI caps `n` at 128; a larger value is rejected upstream, so it cannot cost more than this. */
const MAX_CHOICES = 128;

const OUTPUT_CAP_FIELDS = ['max_tokens', 'max_completion_tokens', 'max_output_tokens'] as const;

export interface RequestBound {
  /** Upper bound of the input tokens the body carries. */
  inputTokens: number;
  /** The output cap the request states, per choice; undefined when it states none. */
  requestedOutputTokens: number | undefined;
  /** Completions asked for (`n`, `best_of`) or images (`n` on image generation); at least 1. */
  choices: number;
}

export function requestBound(request: BudgetRequest): RequestBound {
  const body = request.body;
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    // Readable but not a JSON object: every byte may be prompt.
    return { inputTokens: request.requestBytes, requestedOutputTokens: undefined, choices: 1 };
  }
  const o = body as Record<string, unknown>;
  let requested: number | undefined;
  for (const field of OUTPUT_CAP_FIELDS) {
    const v = o[field];
    if (isCount(v) && v <= MAX_PLAUSIBLE_OUTPUT && (requested === undefined || v > requested)) requested = v;
  }
  let choices = 1;
  for (const field of ['n', 'best_of'] as const) {
    const v = o[field];
    if (isCount(v) && v > choices) choices = Math.min(v, MAX_CHOICES);
  }
  return { inputTokens: inputTokenBound(body), requestedOutputTokens: requested, choices };
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** One pass over the parsed body with an explicit stack (a deeply nested body cannot overflow it). */
function inputTokenBound(root: unknown): number {
  let tokens = 0;
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'string') tokens += Buffer.byteLength(v, 'utf8');
    else if (typeof v === 'number' || typeof v === 'boolean') tokens += 1;
    else if (Array.isArray(v)) {
      for (const item of v) stack.push(item);
    } else if (v !== null && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (typeof o.type === 'string' && IMAGE_PART_TYPES.has(o.type)) {
        tokens += IMAGE_INPUT_TOKENS;
        continue;
      }
      for (const key in o) {
        // Keys are prompt too: tool schemas' property names are sent to the model.
        tokens += Buffer.byteLength(key, 'utf8');
        stack.push(o[key]);
      }
    }
  }
  return tokens;
}
