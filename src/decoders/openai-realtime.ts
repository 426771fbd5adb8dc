/**
 * OpenAI Realtime API (`GET {base}/realtime?model=…` upgraded to a WebSocket). One decoder per
 * session, fed each server→client text message as one event (`data` = the message). Usage is
 * per response: every `response.done` event carries `response.usage` for that response only, "this
 * will correspond to billing" — a session keeps its conversation, so earlier output becomes later
 * input and is counted (and billed) again in the later response's `input_tokens`
 * (platform.openai.com/docs/api-reference/realtime-server-events/response/done; the OpenAPI
 * schema `RealtimeResponseUsage`). So, unlike every streamed HTTP API, the session's usage is the
 * **sum** over its `response.done` events, not the last report.
 *
 * `input_tokens` includes `input_token_details.cached_tokens` (uncached input = input − cached);
 * `input_token_details.{text,audio,image}_tokens` and `output_token_details.{text,audio}_tokens`
 * split input and output by modality. Audio is priced far above text, so the audio part is kept
 * (`Usage.audio`): a session whose split is not reported has audio unknown, and pricing refuses
 * to guess (docs/pricing.md). Some deployments send only `input_tokens`/`output_tokens`
 * (openai/openai-agents-js#538).
 */
import type { Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import {
  minus,
  normaliseFinishReason,
  obj,
  ResponseFacts,
  str,
  UsageFields,
  type JsonObject,
} from './shared.js';
import type { DecodedResponse, UsageDecoder } from './types.js';

/** The only server events metering reads; everything else (audio deltas above all) is skipped unparsed. */
const READ_EVENTS = new Set(['session.created', 'session.updated', 'response.done', 'error']);

/** `{"type":"…"` at the start of a message: OpenAI writes `type` first, so most messages are skipped cheaply. */
const LEADING_TYPE = /^\s*\{\s*"type"\s*:\s*"([^"\\]{1,64})"/;

interface Totals {
  input: number | undefined;
  cacheRead: number | undefined;
  output: number | undefined;
  audio: number | undefined;
}

export class OpenAiRealtimeDecoder implements UsageDecoder {
  readonly operation = 'realtime' as const;
  private readonly facts = new ResponseFacts();
  private totals: Totals | undefined;
  private responses = 0;
  private withoutUsage = 0;
  private failed = 0;
  private errorEvents = 0;
  private imageTokens = 0;
  /** A usage report could not be read: the session's sum is unknowable. */
  private unreadable = false;

  onEvent(event: SseEvent): void {
    const lead = LEADING_TYPE.exec(event.data.slice(0, 96));
    if (lead && !READ_EVENTS.has(lead[1]!)) return;
    const payload = obj(this.facts.diagnostics.readEventData(event.data, false));
    if (!payload) return;
    switch (str(payload.type)) {
      case 'session.created':
      case 'session.updated': {
        const session = obj(payload.session);
        this.facts.responseModel = str(session?.model) ?? this.facts.responseModel;
        this.facts.upstreamRequestId ??= str(session?.id);
        break;
      }
      case 'response.done':
        this.onResponseDone(obj(payload.response));
        break;
      case 'error':
        // Mostly a client mistake answered in-session (an invalid event); the session goes on.
        this.errorEvents += 1;
        break;
    }
  }

  onBody(_body: string): void {
    // A session has no body; a non-101 answer is an HTTP error body, classified by the meter.
  }

  result(): DecodedResponse {
    const t = this.unreadable ? undefined : this.totals;
    const usage: Usage | undefined = t && {
      input: t.input,
      cacheRead: t.cacheRead,
      output: t.output,
      audio: t.audio,
    };
    const out = this.facts.result(usage, usage !== undefined);
    const notes = [...(out.notes ?? [])];
    if (this.responses > 0) notes.push(`realtime_responses:${this.responses}`);
    if (this.withoutUsage > 0) notes.push(`realtime_responses_without_usage:${this.withoutUsage}`);
    if (this.failed > 0) notes.push(`realtime_responses_failed:${this.failed}`);
    if (this.errorEvents > 0) notes.push(`realtime_error_events:${this.errorEvents}`);
    if (this.imageTokens > 0) notes.push(`image_tokens:${this.imageTokens}`);
    if (notes.length > 0) out.notes = notes;
    return out;
  }

  private onResponseDone(response: JsonObject | undefined): void {
    if (!response) return;
    this.responses += 1;
    this.facts.responseModel = str(response.model) ?? this.facts.responseModel;
    const status = str(response.status);
    const details = obj(response.status_details);
    if (status === 'completed') this.facts.finishReason = 'stop';
    else if (status === 'incomplete')
      this.facts.finishReason = normaliseFinishReason(details?.reason) ?? 'length';
    else if (status === 'cancelled') this.facts.finishReason = 'cancelled';
    else if (status === 'failed') this.failed += 1;

    const raw = obj(response.usage);
    if (!raw) {
      this.withoutUsage += 1;
      return;
    }
    const f = new UsageFields(raw);
    const input = f.get('input_tokens');
    const output = f.get('output_tokens');
    const cached = f.get('cached_tokens', 'input_token_details');
    const audioIn = f.get('audio_tokens', 'input_token_details');
    const audioOut = f.get('audio_tokens', 'output_token_details');
    const images = f.get('image_tokens', 'input_token_details');
    f.check('total_tokens');
    if (!this.facts.diagnostics.accept(f)) {
      // One unreadable report makes the session's sum unknowable (usage missing, never a partial sum).
      this.unreadable = true;
      return;
    }
    if (images !== undefined) this.imageTokens += images;
    // Audio known only when both sides' split is stated (a response without audio states 0).
    const audio = audioIn !== undefined && audioOut !== undefined ? audioIn + audioOut : undefined;
    const one: Totals = { input: minus(input, cached), cacheRead: cached, output, audio };
    const prev = this.totals;
    this.totals = prev
      ? {
          input: add(prev.input, one.input),
          cacheRead: addReported(prev.cacheRead, one.cacheRead),
          output: add(prev.output, one.output),
          audio: add(prev.audio, one.audio),
        }
      : one;
  }
}

/** A sum is known only when both parts are (a part unknown makes the session's total unknown). */
function add(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined ? undefined : a + b;
}

/**
 * Cached tokens: a response that states none had its whole input billed as input (the OpenAI
 * convention every decoder follows), so the session's cached figure is the sum of those stated.
 */
function addReported(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  return b === undefined ? a : a + b;
}
