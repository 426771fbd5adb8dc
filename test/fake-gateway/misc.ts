/** Non-chat endpoints: embeddings, image generation, model list, balance (seed 004). */
import { CREATED, finalUsage, type EndpointInput } from './openai-chat.js';
import { EMBEDDING_DIMENSIONS } from './usage.js';

type JsonObject = Record<string, unknown>;

export function embeddingVector(index: number): number[] {
  // Exactly representable in float32, so the base64 form decodes to the same numbers.
  return Array.from({ length: EMBEDDING_DIMENSIONS }, (_, j) => index + j / 8);
}

function embeddingInputs(request: JsonObject): unknown[] {
  const input = request.input;
  if (typeof input === 'string') return [input];
  if (Array.isArray(input)) {
    // A flat array of token ids is one input; an array of strings or of arrays is many.
    return input.length > 0 && input.every((item) => typeof item === 'number') ? [input] : input;
  }
  return [];
}

export function embeddingsBody(input: EndpointInput): JsonObject {
  // The openai SDK asks for encoding_format "base64" by default and decodes it itself.
  const base64 = input.request.encoding_format === 'base64';
  const body: JsonObject = {
    object: 'list',
    data: embeddingInputs(input.request).map((_, index) => {
      const vector = embeddingVector(index);
      return {
        object: 'embedding',
        index,
        embedding: base64 ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector,
      };
    }),
    model: input.model,
  };
  const usage = finalUsage(input);
  if (usage !== undefined) body.usage = usage;
  return body;
}

/** A 1×1 transparent PNG, for response_format b64_json. */
const TINY_PNG =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=';

export function imagesBody(input: EndpointInput): JsonObject {
  const n = typeof input.request.n === 'number' ? input.request.n : 1;
  const b64 = input.request.response_format === 'b64_json';
  const body: JsonObject = {
    created: CREATED,
    data: Array.from({ length: n }, (_, i) =>
      b64 ? { b64_json: TINY_PNG } : { url: `https://images.fake.invalid/img-${input.seq}-${i}.png` },
    ),
  };
  const usage = finalUsage(input);
  if (usage !== undefined && Object.keys(usage).length > 0) body.usage = usage;
  return body;
}

/** One model per flavor, so a listing doubles as the flavor table. */
export const LISTED_MODELS = [
  'gpt-4o',
  'gpt-5',
  'o3-mini',
  'deepseek-chat',
  'deepseek-reasoner',
  'qwen-plus',
  'qwen-cumulative-plus',
  'glm-4-plus',
  'moonshot-v1-8k',
  'kimi-k2',
  'groq-llama-3.3-70b',
  'MiniMax-M2',
  'azure-gpt-4o',
  'claude-sonnet-4-5',
  'text-embedding-3-small',
  'gpt-image-1',
] as const;

export function modelsBody(): JsonObject {
  return {
    object: 'list',
    data: LISTED_MODELS.map((id) => ({ id, object: 'model', created: CREATED, owned_by: 'fake-gateway' })),
  };
}

/** Seed 004 `GET /v1/balance`, verbatim example values. */
export function balanceBody(): JsonObject {
  return {
    object: 'balance',
    currency: 'CNY',
    balance: 138.5,
    api_key: {
      id: '1923456789012345678',
      name: 'claude-code',
      daily_budget: 20.0,
      daily_used: 3.25,
      daily_remaining: 16.75,
      daily_reset_at: '2026-06-09T00:00:00+08:00',
      monthly_budget: null,
      monthly_used: null,
      monthly_remaining: null,
      monthly_reset_at: null,
    },
  };
}
