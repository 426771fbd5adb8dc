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
  buildResult,
  costFrom,
  Diagnostics,
  errorFrom,
  isPlaceholder,
  minus,
  normaliseFinishReason,
  obj,
  str,
  TextSink,
  UsageFields,
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
  readonly operation = 'responses' as const;
  private usage: Usage | undefined;
  private responseModel: string | undefined;
  private finishReason: string | undefined;
  private streamError: DecodedResponse['streamError'];
  private upstreamCost: DecodedResponse['upstreamCost'];
  private upstreamRequestId: string | undefined;
  private readonly text = new TextSink();
  /** Text came from deltas; the terminal response's output must not add it a second time. */
  private sawDeltas = false;
  private readonly diagnostics = new Diagnostics();
  /** The last usage object seen was not plausible: no report stands. */
  private lastUsageRejected = false;

  onEvent(event: SseEvent): void {
    const data = event.data.trim();
    if (data === '' || data === '[DONE]') return;
    const payload = obj(this.diagnostics.readEventData(data, event.event === 'error'));
    if (!payload) {
      if (event.event === 'error') this.streamError = { message: data };
      return;
    }
    const type = str(payload.type) ?? event.event;
    if (type !== undefined && TEXT_DELTA_EVENTS.has(type)) {
      this.sawDeltas = true;
      this.text.add(payload.delta);
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
        this.streamError = errorFrom(payload.error ?? payload) ?? { message: data };
        break;
      default: {
        const error = type === undefined ? errorFrom(payload.error) : undefined;
        if (error) this.streamError = error;
      }
    }
  }

  onBody(body: string): void {
    const parsed = this.diagnostics.readBody(body, (e) => this.onEvent(e));
    if (!parsed) return;
    if (parsed.object === 'response' || parsed.output !== undefined || parsed.usage !== undefined) {
      this.onResponse(parsed, true);
    } else {
      // A body without an error (or with `"error": {}`) must not erase one already seen.
      this.streamError = errorFrom(parsed.error) ?? this.streamError;
    }
  }

  result(): DecodedResponse {
    const usage = this.lastUsageRejected ? undefined : this.usage;
    return buildResult(
      {
        usage,
        usageReported: usage !== undefined,
        responseModel: this.responseModel,
        finishReason: this.finishReason,
        streamError: this.streamError,
        outputText: this.text.toString(),
        outputTextDroppedChars: this.text.dropped,
        upstreamCost: this.upstreamCost,
        upstreamRequestId: this.upstreamRequestId,
      },
      this.diagnostics,
    );
  }

  private onResponse(response: Record<string, unknown> | undefined, terminal: boolean): void {
    if (!response) return;
    this.upstreamRequestId ??= str(response.id);
    this.responseModel = str(response.model) ?? this.responseModel;
    if (!terminal) return;

    const output = Array.isArray(response.output) ? response.output : [];
    let calledTool = false;
    for (const item of output) {
      const o = obj(item);
      if (!o) continue;
      if (o.type === 'function_call' || o.type === 'custom_tool_call') calledTool = true;
      if (this.sawDeltas) continue;
      if (o.type === 'function_call') this.text.add(o.arguments);
      const parts = [
        ...(Array.isArray(o.content) ? o.content : []),
        ...(Array.isArray(o.summary) ? o.summary : []),
      ];
      for (const part of parts) this.text.add(obj(part)?.text);
    }

    const status = str(response.status);
    if (status === 'completed') this.finishReason = calledTool ? 'tool_calls' : 'stop';
    else if (status === 'incomplete') {
      this.finishReason = normaliseFinishReason(obj(response.incomplete_details)?.reason) ?? 'length';
    } else if (status === 'failed') {
      this.streamError = errorFrom(response.error) ?? { message: 'response failed' };
    }

    const rawUsage = obj(response.usage);
    if (rawUsage) {
      const fields = new UsageFields(rawUsage);
      const usage = partitionResponsesUsage(fields);
      if (!this.diagnostics.accept(fields)) {
        this.lastUsageRejected = true;
        return;
      }
      this.upstreamCost = costFrom(rawUsage.cost) ?? this.upstreamCost;
      if (!isPlaceholder(usage)) {
        this.usage = usage;
        this.lastUsageRejected = false;
      }
    }
  }
}
