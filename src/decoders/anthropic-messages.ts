/**
 * Anthropic Messages (`{base}/messages`; seed 004 "Messages (Anthropic Compatible)",
 * docs.anthropic.com/en/docs/build-with-claude/streaming).
 *
 * Stream usage = `message_start.message.usage` merged with every `message_delta.usage`. The
 * delta's counts are cumulative, and newer APIs repeat `input_tokens` / cache fields in it:
 * a later value REPLACES an earlier one field by field, never adds to it.
 * `input_tokens` EXCLUDES `cache_read_input_tokens` and `cache_creation_input_tokens`; the
 * latter may be split by TTL in `cache_creation.ephemeral_5m_input_tokens` /
 * `ephemeral_1h_input_tokens` (docs.anthropic.com, "Prompt caching" → "1-hour cache duration").
 *
 * `output_tokens_details.thinking_tokens` (extended thinking; @anthropic-ai/sdk `OutputTokensDetails`:
 * "always ≤ output_tokens") is the reasoning part of `output_tokens`, like OpenAI's
 * `completion_tokens_details.reasoning_tokens`: recorded as `reasoning`, never added to output.
 *
 * `message_start` carries a placeholder `output_tokens` (0 or 1); until a `message_delta`
 * arrives the output figure is not known, so a stream cut before it is reported with its
 * input fields but without output and with `usageReported: false` (the meter then estimates).
 */
import type { Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import {
  costFrom,
  errorFrom,
  normaliseFinishReason,
  obj,
  str,
  UsageFields,
  type JsonObject,
  ResponseFacts,
} from './shared.js';
import type { DecodedResponse, UsageDecoder } from './types.js';

interface AnthropicCounts {
  input?: number;
  cacheRead?: number;
  cacheCreation?: number;
  cache5m?: number;
  cache1h?: number;
  output?: number;
  thinking?: number;
}

function readCounts(f: UsageFields): AnthropicCounts {
  return {
    input: f.get('input_tokens'),
    cacheRead: f.get('cache_read_input_tokens'),
    cacheCreation: f.get('cache_creation_input_tokens'),
    cache5m: f.get('ephemeral_5m_input_tokens', 'cache_creation'),
    cache1h: f.get('ephemeral_1h_input_tokens', 'cache_creation'),
    output: f.get('output_tokens'),
    thinking: f.get('thinking_tokens', 'output_tokens_details'),
  };
}

/** Field-by-field replacement: a later cumulative report wins where it states a value. */
function mergeCounts(into: AnthropicCounts, from: AnthropicCounts): void {
  for (const key of Object.keys(from) as (keyof AnthropicCounts)[]) {
    const v = from[key];
    if (v !== undefined) into[key] = v;
  }
}

export function partitionAnthropicUsage(c: AnthropicCounts, outputKnown: boolean): Usage {
  // cache_creation_input_tokens is the total; the TTL split, when given, must agree with it.
  const cacheWrite =
    c.cacheCreation ??
    (c.cache5m !== undefined && c.cache1h !== undefined ? c.cache5m + c.cache1h : undefined);
  return {
    input: c.input,
    cacheRead: c.cacheRead,
    cacheWrite,
    cacheWrite1h: c.cache1h,
    output: outputKnown ? c.output : undefined,
    ...(outputKnown && c.thinking !== undefined ? { reasoning: c.thinking } : {}),
  };
}

export class AnthropicMessagesDecoder implements UsageDecoder {
  private readonly facts = new ResponseFacts();
  readonly operation = 'messages' as const;
  private readonly counts: AnthropicCounts = {};
  private sawUsage = false;
  private outputKnown = false;
  /**
   * A usage object was not plausible. The report is assembled from several objects
   * (message_start + message_delta), so with one missing it is incomplete: not reported, and
   * output left to the estimator; accepted input-side figures are kept for it.
   */
  private usageRejected = false;

  onEvent(event: SseEvent): void {
    const data = event.data.trim();
    if (data === '' || data === '[DONE]') return;
    const payload = obj(this.facts.diagnostics.readEventData(data, event.event === 'error'));
    if (!payload) {
      if (event.event === 'error') this.facts.streamError = { message: data };
      return;
    }
    switch (str(payload.type) ?? event.event) {
      case 'message_start': {
        const message = obj(payload.message);
        if (!message) break;
        this.onMessageHeader(message);
        const usage = obj(message.usage);
        if (usage) this.addUsage(usage, false);
        break;
      }
      case 'content_block_start': {
        const block = obj(payload.content_block);
        this.facts.text.add(block?.text);
        this.facts.text.add(block?.thinking);
        break;
      }
      case 'content_block_delta': {
        const delta = obj(payload.delta);
        this.facts.text.add(delta?.text); // text_delta
        this.facts.text.add(delta?.thinking); // thinking_delta
        this.facts.text.add(delta?.partial_json); // input_json_delta (tool use)
        break;
      }
      case 'message_delta': {
        const finish = normaliseFinishReason(obj(payload.delta)?.stop_reason);
        if (finish !== undefined) this.facts.finishReason = finish;
        const usage = obj(payload.usage);
        if (usage) this.addUsage(usage, true);
        break;
      }
      case 'error':
        this.facts.streamError = errorFrom(payload.error ?? payload) ?? { message: 'error' };
        break;
      default:
        break;
    }
  }

  onBody(body: string): void {
    const message = this.facts.diagnostics.readBody(body, (e) => this.onEvent(e));
    if (!message) return;
    if (message.type === 'error') {
      this.facts.streamError = errorFrom(message.error) ?? { message: 'error' };
      this.facts.upstreamRequestId ??= str(message.request_id);
      return;
    }
    // A body without an error (or with `"error": {}`) must not erase one already seen.
    this.facts.streamError = errorFrom(message.error) ?? this.facts.streamError;
    this.onMessageHeader(message);
    const content = Array.isArray(message.content) ? message.content : [];
    for (const item of content) {
      const block = obj(item);
      if (!block) continue;
      this.facts.text.add(block.text);
      this.facts.text.add(block.thinking);
      if (block.type === 'tool_use' && block.input !== undefined)
        this.facts.text.add(JSON.stringify(block.input));
    }
    const finish = normaliseFinishReason(message.stop_reason);
    if (finish !== undefined) this.facts.finishReason = finish;
    const usage = obj(message.usage);
    if (usage) this.addUsage(usage, true);
  }

  result(): DecodedResponse {
    const reported = this.sawUsage && this.outputKnown && !this.usageRejected;
    const usage = this.sawUsage ? partitionAnthropicUsage(this.counts, reported) : undefined;
    return this.facts.result(usage, reported);
  }

  private onMessageHeader(message: JsonObject): void {
    this.facts.upstreamRequestId ??= str(message.id);
    this.facts.responseModel = str(message.model) ?? this.facts.responseModel;
  }

  private addUsage(raw: JsonObject, final: boolean): void {
    const fields = new UsageFields(raw);
    const counts = readCounts(fields);
    if (!this.facts.diagnostics.accept(fields)) {
      this.usageRejected = true;
      return;
    }
    mergeCounts(this.counts, counts);
    this.facts.upstreamCost = costFrom(raw.cost) ?? this.facts.upstreamCost;
    this.sawUsage = true;
    if (final && counts.output !== undefined) this.outputKnown = true;
  }
}
