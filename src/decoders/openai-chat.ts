/**
 * OpenAI Chat Completions (`{base}/chat/completions`, `{base}/search/completions` per seed 004) and legacy
 * text completions (`{base}/completions`), as spoken by OpenAI and the OpenAI-compatible relays in
 * seeds 000–004 (DeepSeek, Qwen/DashScope, GLM, Moonshot, MiniMax, Groq, Volcengine, Azure …).
 *
 * Where usage lives (DESIGN.md §4.1) — we look in all of these on every chunk:
 * - `usage` on the final chunk with empty `choices` (OpenAI `stream_options.include_usage`,
 *   Qwen, DeepSeek, MiniMax), or on the finish chunk (GLM);
 * - `choices[i].usage` (Moonshot/Kimi);
 * - `x_groq.usage` (Groq), which repeats the top-level `usage` when both are present.
 * Usage is never summed: Groq repeats it, DashScope/Gemini-compat/Volcengine make it cumulative,
 * MiniMax sends all-zero placeholders first. The last non-placeholder report wins.
 */
import type { Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import {
  costFrom,
  count,
  errorFrom,
  isPlaceholder,
  minus,
  normaliseFinishReason,
  obj,
  str,
  UsageFields,
  ResponseFacts,
} from './shared.js';
import type { DecodedResponse, UsageDecoder } from './types.js';

/**
 * Partition an OpenAI-style usage object into uncached input / cache read / cache write / output.
 * - `prompt_tokens` INCLUDES `prompt_tokens_details.cached_tokens` (OpenAI docs, "Prompt caching").
 * - DeepSeek states `prompt_cache_hit_tokens` + `prompt_cache_miss_tokens` = prompt_tokens
 *   (api-docs.deepseek.com, "Context Caching"); when present they are authoritative.
 * - Some relays (OpenRouter-style) add `prompt_tokens_details.cache_write_tokens`, also inside prompt_tokens.
 * - `completion_tokens` INCLUDES `completion_tokens_details.reasoning_tokens`.
 */
export function partitionOpenAiUsage(f: UsageFields): Usage {
  const prompt = f.get('prompt_tokens');
  const completion = f.get('completion_tokens');
  const hit = f.get('prompt_cache_hit_tokens');
  const miss = f.get('prompt_cache_miss_tokens');
  const cached = f.get('cached_tokens', 'prompt_tokens_details');
  const cacheWrite =
    f.get('cache_write_tokens', 'prompt_tokens_details') ??
    f.get('cache_creation_tokens', 'prompt_tokens_details');
  const reasoning = f.get('reasoning_tokens', 'completion_tokens_details');
  f.check('total_tokens');

  const usage: Usage = { output: completion, reasoning };
  if (hit !== undefined) {
    usage.cacheRead = hit;
    usage.input = miss ?? minus(prompt, hit);
  } else if (cached !== undefined || cacheWrite !== undefined) {
    usage.cacheRead = cached;
    usage.cacheWrite = cacheWrite;
    usage.input = minus(prompt, cached, cacheWrite);
  } else {
    usage.input = prompt;
  }
  return usage;
}

export class OpenAiChatDecoder implements UsageDecoder {
  private readonly facts = new ResponseFacts();
  private usage: Usage | undefined;
  /** The last usage object seen was not plausible: no report stands (an earlier one may be partial). */
  private lastUsageRejected = false;

  constructor(readonly operation: 'chat' | 'text_completion') {}

  onEvent(event: SseEvent): void {
    const data = event.data.trim();
    if (data === '' || data === '[DONE]') return;
    const parsed = this.facts.diagnostics.readEventData(data, event.event === 'error');
    if (event.event === 'error') {
      // Some relays send `event: error` with a bare message or an OpenAI error envelope.
      this.facts.streamError = errorFrom(obj(parsed)?.error ?? parsed ?? data) ?? { message: data };
      return;
    }
    const chunk = obj(parsed);
    if (chunk) this.onChunk(chunk);
  }

  onBody(body: string): void {
    const parsed = this.facts.diagnostics.readBody(body, (e) => this.onEvent(e));
    if (parsed) this.onChunk(parsed);
  }

  result(): DecodedResponse {
    const usage = this.lastUsageRejected ? undefined : this.usage;
    return this.facts.result(usage, usage !== undefined);
  }

  private onChunk(chunk: Record<string, unknown>): void {
    const error = errorFrom(chunk.error);
    if (error) this.facts.streamError = error;
    // MiniMax reports failures as `base_resp: {status_code, status_msg}` inside an HTTP 200
    // (platform.minimaxi.com, "错误码"); status_code 0 means success.
    const baseResp = obj(chunk.base_resp);
    const baseStatus = baseResp ? count(baseResp.status_code) : undefined;
    if (baseResp && baseStatus !== undefined && baseStatus !== 0) {
      this.facts.streamError = { message: str(baseResp.status_msg) ?? 'error', code: String(baseStatus) };
    }
    this.facts.upstreamRequestId ??= str(chunk.request_id) ?? str(chunk.id);
    this.facts.responseModel = str(chunk.model) ?? this.facts.responseModel;

    const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
    for (const item of choices) {
      const choice = obj(item);
      if (!choice) continue;
      for (const message of [obj(choice.delta), obj(choice.message)]) {
        if (!message) continue;
        this.facts.text.add(message.reasoning_content); // DeepSeek-reasoner, Qwen, GLM thinking
        this.facts.text.add(message.reasoning); // OpenRouter-style reasoning text
        this.facts.text.add(message.content);
        this.addToolCallText(message.tool_calls);
      }
      this.facts.text.add(choice.text); // legacy text completions
      const finish = normaliseFinishReason(choice.finish_reason);
      if (finish !== undefined) this.facts.finishReason = finish;
      this.considerUsage(choice.usage); // Moonshot/Kimi: usage inside choices[0]
    }
    this.considerUsage(chunk.usage);
    this.considerUsage(obj(chunk.x_groq)?.usage); // Groq
  }

  private addToolCallText(toolCalls: unknown): void {
    if (!Array.isArray(toolCalls)) return;
    for (const call of toolCalls) {
      const fn = obj(obj(call)?.function);
      if (!fn) continue;
      this.facts.text.add(fn.name);
      this.facts.text.add(fn.arguments);
    }
  }

  private considerUsage(value: unknown): void {
    const raw = obj(value);
    if (!raw) return;
    const fields = new UsageFields(raw);
    const usage = partitionOpenAiUsage(fields);
    if (!this.facts.diagnostics.accept(fields)) {
      // Last report decides: a cumulative stream's earlier figure is partial, so none stands now.
      this.lastUsageRejected = true;
      return;
    }
    const cost = costFrom(raw.cost);
    if (cost) this.facts.upstreamCost = cost;
    if (isPlaceholder(usage)) return;
    this.usage = usage; // replace, never add (repeated / cumulative reports)
    this.lastUsageRejected = false;
  }
}
