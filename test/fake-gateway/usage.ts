/**
 * Deterministic text and usage of the fake gateway, shared by the server and by tests that need
 * to predict what it reports. Everything here is pure: same request → same numbers.
 *
 * Rules (also in docs/testing.md):
 * - words(text) = number of whitespace-separated words.
 * - prompt P = PROMPT_OVERHEAD + words of every text the request carries (all chat messages, the
 *   Anthropic `system`, Responses `instructions` + `input`, legacy `prompt`).
 * - reply = "echo: " + text of the last user message, streamed one word per chunk (the first
 *   piece is "echo:", the rest " word"). With `x-fake-chunks: N` the pieces are padded with
 *   " wK" words or merged at the end so there are exactly N pieces.
 * - completion C = number of reply pieces (+ REASONING_TOKENS for reasoning flavors).
 * - cached: OpenAI-style flavors that report a cache (deepseek, o3 and gpt-5 models, Responses)
 *   say floor(P / 2) of P was cached; Anthropic reports P uncached input plus fixed
 *   ANTHROPIC_CACHE_* constants.
 */

import { splitModel } from './scenarios.js';

export type Flavor =
  | 'openai'
  | 'openai-reasoning'
  | 'deepseek'
  | 'deepseek-reasoner'
  | 'glm'
  | 'moonshot'
  | 'groq'
  | 'qwen-cumulative'
  | 'minimax'
  | 'azure'
  | 'completions'
  | 'anthropic'
  | 'responses'
  | 'embeddings'
  | 'images';

export const PROMPT_OVERHEAD = 10;
export const REASONING_TOKENS = 4;
/** deepseek-reasoner streams these as `reasoning_content`, one piece per reasoning token. */
export const REASONING_PIECES = ['Thinking', ' about', ' the', ' question.'] as const;
export const ANTHROPIC_CACHE_READ = 1000;
export const ANTHROPIC_CACHE_WRITE_5M = 200;
export const ANTHROPIC_CACHE_WRITE_1H = 100;
export const ANTHROPIC_CACHE_WRITE = ANTHROPIC_CACHE_WRITE_5M + ANTHROPIC_CACHE_WRITE_1H;
/** Output tokens per generated image for `gpt-image-*` models (image usage). */
export const IMAGE_OUTPUT_TOKENS = 1056;
/** Dimensions of every fake embedding vector. */
export const EMBEDDING_DIMENSIONS = 8;

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function countWords(text: string): number {
  return text.split(/\s+/).filter((word) => word.length > 0).length;
}

/** Text of a message `content`: a string, or an array of parts carrying `text`. */
export function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part) => (isObject(part) && typeof part.text === 'string' ? part.text : ''))
      .filter((text) => text.length > 0)
      .join(' ');
  }
  return '';
}

function messagesOf(request: unknown): JsonObject[] {
  if (!isObject(request) || !Array.isArray(request.messages)) return [];
  return request.messages.filter(isObject);
}

function responsesInputItems(request: unknown): JsonObject[] {
  if (!isObject(request)) return [];
  if (typeof request.input === 'string') return [{ role: 'user', content: request.input }];
  if (Array.isArray(request.input)) return request.input.filter(isObject);
  return [];
}

/** All prompt texts the request carries, in order. */
export function promptTexts(flavor: Flavor, request: unknown): string[] {
  if (!isObject(request)) return [];
  switch (flavor) {
    case 'anthropic':
      return [contentText(request.system), ...messagesOf(request).map((m) => contentText(m.content))];
    case 'responses':
      return [
        typeof request.instructions === 'string' ? request.instructions : '',
        ...responsesInputItems(request).map((item) => contentText(item.content)),
      ];
    case 'completions':
    case 'images':
      if (typeof request.prompt === 'string') return [request.prompt];
      if (Array.isArray(request.prompt))
        return request.prompt.filter((p): p is string => typeof p === 'string');
      return [];
    case 'embeddings':
      return [];
    default:
      return messagesOf(request).map((m) => contentText(m.content));
  }
}

export function promptTokens(flavor: Flavor, request: unknown): number {
  return PROMPT_OVERHEAD + promptTexts(flavor, request).reduce((sum, text) => sum + countWords(text), 0);
}

/** Text of the last user turn: what the fake echoes back. */
export function lastUserText(flavor: Flavor, request: unknown): string {
  if (flavor === 'completions') return promptTexts(flavor, request).join(' ');
  const items = flavor === 'responses' ? responsesInputItems(request) : messagesOf(request);
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i];
    if (item !== undefined && item.role === 'user') return contentText(item.content);
  }
  return '';
}

/** The streamed reply pieces; their concatenation is the reply text. */
export function replyPieces(flavor: Flavor, request: unknown, chunks?: number): string[] {
  const words = `echo: ${lastUserText(flavor, request)}`.split(/\s+/).filter((w) => w.length > 0);
  const pieces = words.map((word, i) => (i === 0 ? word : ` ${word}`));
  if (chunks === undefined || !Number.isInteger(chunks) || chunks < 1) return pieces;
  while (pieces.length < chunks) pieces.push(` w${pieces.length}`);
  if (pieces.length > chunks) {
    const tail = pieces.splice(chunks - 1).join('');
    pieces.push(tail);
  }
  return pieces;
}

export function replyText(flavor: Flavor, request: unknown, chunks?: number): string {
  return replyPieces(flavor, request, chunks).join('');
}

/** Which flavor answers a request, from the endpoint and (for chat) the model name prefix. */
export function flavorFor(endpoint: string, model: string): Flavor {
  if (endpoint === '/messages' || endpoint === '/messages/count_tokens') return 'anthropic';
  if (endpoint === '/responses') return 'responses';
  if (endpoint === '/embeddings') return 'embeddings';
  if (endpoint === '/images/generations') return 'images';
  if (endpoint === '/completions') return 'completions';
  // Scenario parts of the model name ("gzip+glm-4") do not pick the flavor.
  const m = splitModel(model).model.toLowerCase();
  // Order matters: the more specific prefixes first.
  if (m.startsWith('qwen-cumulative')) return 'qwen-cumulative';
  if (m.startsWith('deepseek-reasoner')) return 'deepseek-reasoner';
  if (m.startsWith('deepseek')) return 'deepseek';
  if (m.startsWith('glm') || m.startsWith('zhipu/glm')) return 'glm';
  if (m.startsWith('moonshot') || m.startsWith('kimi')) return 'moonshot';
  if (m.startsWith('groq')) return 'groq';
  if (m.startsWith('minimax')) return 'minimax';
  if (m.startsWith('azure')) return 'azure';
  if (m.startsWith('o3') || m.startsWith('gpt-5')) return 'openai-reasoning';
  return 'openai';
}

/** True for models whose hidden reasoning is counted in the output (o3*, gpt-5*). */
export function isReasoningModel(model: string): boolean {
  const m = splitModel(model).model.toLowerCase();
  return m.startsWith('o3') || m.startsWith('gpt-5');
}

/** Whether a streamed response of this flavor reports usage (absent the `no-usage` scenario). */
export function streamReportsUsage(flavor: Flavor, request: unknown): boolean {
  switch (flavor) {
    case 'glm':
    case 'moonshot':
    case 'groq':
    case 'qwen-cumulative':
    case 'minimax':
    case 'anthropic':
    case 'responses':
      return true;
    default: {
      // As real OpenAI: usage only when the client asked with stream_options.include_usage.
      const options = isObject(request) ? request.stream_options : undefined;
      return isObject(options) && options.include_usage === true;
    }
  }
}

/**
 * Usage the fake reports, and its partition per DESIGN §4.1/§4.5. `undefined` = the wire does
 * not state that figure (so a decoder must leave it NULL, not 0).
 */
export interface ExpectedUsage {
  flavor: Flavor;
  /** The final usage object exactly as on the wire (for Anthropic: the non-stream body usage). */
  wire: JsonObject;
  /** Uncached input tokens. */
  input: number;
  cacheRead: number | undefined;
  cacheWrite: number | undefined;
  cacheWrite1h: number | undefined;
  output: number | undefined;
  reasoning: number | undefined;
  images: number | undefined;
  /** The reply text (chat/completions/responses/messages), '' otherwise. */
  text: string;
  /** `usage.cost` stated under the `cost` scenario: (P + 2·C) / 1e6, in the gateway's currency. */
  reportedCost: number;
}

function embeddingInputTokens(request: unknown): number {
  if (!isObject(request)) return 0;
  const input = request.input;
  if (typeof input === 'string') return countWords(input);
  if (!Array.isArray(input)) return 0;
  let total = 0;
  for (const item of input) {
    if (typeof item === 'string') total += countWords(item);
    else if (typeof item === 'number') total += 1;
    else if (Array.isArray(item)) total += item.length;
  }
  return total;
}

export function expectedUsage(
  flavor: Flavor,
  request: unknown,
  opts: { chunks?: number } = {},
): ExpectedUsage {
  const model = isObject(request) && typeof request.model === 'string' ? request.model : '';
  const prompt = promptTokens(flavor, request);
  const pieces = replyPieces(flavor, request, opts.chunks);
  const text = pieces.join('');
  const base = { flavor, text, cacheWrite: undefined, cacheWrite1h: undefined, images: undefined };

  switch (flavor) {
    case 'anthropic': {
      const output = pieces.length;
      return {
        ...base,
        wire: {
          input_tokens: prompt,
          cache_creation_input_tokens: ANTHROPIC_CACHE_WRITE,
          cache_read_input_tokens: ANTHROPIC_CACHE_READ,
          cache_creation: {
            ephemeral_5m_input_tokens: ANTHROPIC_CACHE_WRITE_5M,
            ephemeral_1h_input_tokens: ANTHROPIC_CACHE_WRITE_1H,
          },
          output_tokens: output,
          service_tier: 'standard',
        },
        input: prompt,
        cacheRead: ANTHROPIC_CACHE_READ,
        cacheWrite: ANTHROPIC_CACHE_WRITE,
        cacheWrite1h: ANTHROPIC_CACHE_WRITE_1H,
        output,
        reasoning: undefined,
        reportedCost: (prompt + 2 * output) / 1e6,
      };
    }
    case 'responses': {
      const reasoning = isReasoningModel(model) ? REASONING_TOKENS : 0;
      const output = pieces.length + reasoning;
      const cached = Math.floor(prompt / 2);
      return {
        ...base,
        wire: {
          input_tokens: prompt,
          input_tokens_details: { cached_tokens: cached },
          output_tokens: output,
          output_tokens_details: { reasoning_tokens: reasoning },
          total_tokens: prompt + output,
        },
        input: prompt - cached,
        cacheRead: cached,
        output,
        reasoning,
        reportedCost: (prompt + 2 * output) / 1e6,
      };
    }
    case 'embeddings': {
      const tokens = embeddingInputTokens(request);
      return {
        ...base,
        text: '',
        wire: { prompt_tokens: tokens, total_tokens: tokens },
        input: tokens,
        cacheRead: undefined,
        output: undefined,
        reasoning: undefined,
        reportedCost: tokens / 1e6,
      };
    }
    case 'images': {
      const n = isObject(request) && typeof request.n === 'number' ? request.n : 1;
      const imageUsage = splitModel(model).model.toLowerCase().startsWith('gpt-image');
      const imageTokens = IMAGE_OUTPUT_TOKENS * n;
      const output = imageUsage ? imageTokens : undefined;
      return {
        ...base,
        text: '',
        wire: imageUsage
          ? {
              input_tokens: prompt,
              input_tokens_details: { text_tokens: prompt, image_tokens: 0 },
              output_tokens: imageTokens,
              total_tokens: prompt + imageTokens,
            }
          : {},
        input: prompt,
        cacheRead: undefined,
        output,
        reasoning: undefined,
        images: n,
        reportedCost: prompt / 1e6,
      };
    }
    default:
      break;
  }

  // OpenAI-compatible chat / legacy completions.
  const reasoning =
    flavor === 'deepseek-reasoner' || flavor === 'openai-reasoning' ? REASONING_TOKENS : undefined;
  const completion = reasoning === undefined ? pieces.length : pieces.length + reasoning;
  const wire: JsonObject = {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
  };
  let cacheRead: number | undefined;
  if (flavor === 'deepseek' || flavor === 'deepseek-reasoner') {
    // DeepSeek reports the cache twice: its own hit/miss pair and the OpenAI-style details.
    cacheRead = Math.floor(prompt / 2);
    wire.prompt_tokens_details = { cached_tokens: cacheRead };
    wire.prompt_cache_hit_tokens = cacheRead;
    wire.prompt_cache_miss_tokens = prompt - cacheRead;
  } else if (flavor === 'openai-reasoning') {
    cacheRead = Math.floor(prompt / 2);
    wire.prompt_tokens_details = { cached_tokens: cacheRead, audio_tokens: 0 };
  }
  if (reasoning !== undefined) {
    wire.completion_tokens_details =
      flavor === 'openai-reasoning'
        ? {
            reasoning_tokens: reasoning,
            audio_tokens: 0,
            accepted_prediction_tokens: 0,
            rejected_prediction_tokens: 0,
          }
        : { reasoning_tokens: reasoning };
  }
  return {
    ...base,
    wire,
    input: cacheRead === undefined ? prompt : prompt - cacheRead,
    cacheRead,
    output: completion,
    reasoning,
    reportedCost: (prompt + 2 * completion) / 1e6,
  };
}
