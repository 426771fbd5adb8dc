/**
 * OpenAI Responses API (`{base}/responses`; seed 003 lists it for Codex). Usage lives only on the
 * terminal response object: body `usage`, or in a stream the `response.completed`,
 * `response.incomplete` or `response.failed` event's `response.usage`
 * (platform.openai.com/docs/api-reference/responses-streaming). `input_tokens` includes
 * `input_tokens_details.cached_tokens`; `output_tokens` includes
 * `output_tokens_details.reasoning_tokens`.
 */
import type { Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import {
  costFrom,
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

export function partitionResponsesUsage(f: UsageFields): Usage {
  const input = f.get('input_tokens');
  const cached = f.get('cached_tokens', 'input_tokens_details');
  const output = f.get('output_tokens');
  const reasoning = f.get('reasoning_tokens', 'output_tokens_details');
  f.check('total_tokens');
  return { input: minus(input, cached), cacheRead: cached, output, reasoning };
}

const TEXT_DELTA_EVENTS = new Set([
  'response.output_text.delta',
  'response.refusal.delta',
  'response.reasoning_text.delta',
  'response.reasoning_summary_text.delta',
  'response.function_call_arguments.delta',
]);

export class OpenAiResponsesDecoder implements UsageDecoder {
  private readonly facts = new ResponseFacts();
  readonly operation = 'responses' as const;
  private usage: Usage | undefined;
  /** Text came from deltas; the terminal response's output must not add it a second time. */
  private sawDeltas = false;
  /** The last usage object seen was not plausible: no report stands. */
  private lastUsageRejected = false;

  onEvent(event: SseEvent): void {
    const data = event.data.trim();
    if (data === '' || data === '[DONE]') return;
    const payload = obj(this.facts.diagnostics.readEventData(data, event.event === 'error'));
    if (!payload) {
      if (event.event === 'error') this.facts.streamError = { message: data };
      return;
    }
    const type = str(payload.type) ?? event.event;
    if (type !== undefined && TEXT_DELTA_EVENTS.has(type)) {
      this.sawDeltas = true;
      this.facts.text.add(payload.delta);
      return;
    }
    switch (type) {
      case 'response.created':
      case 'response.in_progress':
        this.onResponse(obj(payload.response), false);
        break;
      case 'response.completed':
      case 'response.incomplete':
      case 'response.failed':
        this.onResponse(obj(payload.response), true);
        break;
      case 'error':
        // Stream-level error event: {type:"error", code, message, param}.
        this.facts.streamError = errorFrom(payload.error ?? payload) ?? { message: data };
        break;
      default: {
        const error = type === undefined ? errorFrom(payload.error) : undefined;
        if (error) this.facts.streamError = error;
      }
    }
  }

  onBody(body: string): void {
    const parsed = this.facts.diagnostics.readBody(body, (e) => this.onEvent(e));
    if (!parsed) return;
    if (parsed.object === 'response' || parsed.output !== undefined || parsed.usage !== undefined) {
      this.onResponse(parsed, true);
    } else {
      // A body without an error (or with `"error": {}`) must not erase one already seen.
      this.facts.streamError = errorFrom(parsed.error) ?? this.facts.streamError;
    }
  }

  result(): DecodedResponse {
    const usage = this.lastUsageRejected ? undefined : this.usage;
    return this.facts.result(usage, usage !== undefined);
  }

  private onResponse(response: Record<string, unknown> | undefined, terminal: boolean): void {
    if (!response) return;
    this.facts.upstreamRequestId ??= str(response.id);
    this.facts.responseModel = str(response.model) ?? this.facts.responseModel;
    if (!terminal) return;

    const output = Array.isArray(response.output) ? response.output : [];
    let calledTool = false;
    for (const item of output) {
      const o = obj(item);
      if (!o) continue;
      if (o.type === 'function_call' || o.type === 'custom_tool_call') calledTool = true;
      if (this.sawDeltas) continue;
      if (o.type === 'function_call') this.facts.text.add(o.arguments);
      const parts = [
        ...(Array.isArray(o.content) ? o.content : []),
        ...(Array.isArray(o.summary) ? o.summary : []),
      ];
      for (const part of parts) this.facts.text.add(obj(part)?.text);
    }

    const status = str(response.status);
    if (status === 'completed') this.facts.finishReason = calledTool ? 'tool_calls' : 'stop';
    else if (status === 'incomplete') {
      this.facts.finishReason = normaliseFinishReason(obj(response.incomplete_details)?.reason) ?? 'length';
    } else if (status === 'failed') {
      this.facts.streamError = errorFrom(response.error) ?? { message: 'response failed' };
    }

    const rawUsage = obj(response.usage);
    if (rawUsage) {
      const fields = new UsageFields(rawUsage);
      const usage = partitionResponsesUsage(fields);
      if (!this.facts.diagnostics.accept(fields)) {
        this.lastUsageRejected = true;
        return;
      }
      this.facts.upstreamCost = costFrom(rawUsage.cost) ?? this.facts.upstreamCost;
      if (!isPlaceholder(usage)) {
        this.usage = usage;
        this.lastUsageRejected = false;
      }
    }
  }
}
