/**
 * Local token estimation (DESIGN.md §4.2) for when the upstream reported no usage or the client
 * aborted: a real BPE tokenizer (gpt-tokenizer, o200k_base for every model) over the request's
 * text and the generated text the decoder collected. An approximation, documented in
 * docs/decoders.md: other vendors' tokenizers differ (typically within ±15% on English, more on
 * CJK), images/audio in the request are not counted, and message framing is approximated with
 * OpenAI's published per-message overhead.
 */
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import type { Usage } from '../record.js';
import { obj } from './shared.js';
import type { DecodedResponse, DecoderRequestInfo } from './types.js';

/** OpenAI cookbook "How to count tokens with tiktoken": ~3 tokens per message, 3 to prime the reply. */
const TOKENS_PER_MESSAGE = 3;
const TOKENS_REPLY_PRIMING = 3;

// Text such as "<|endoftext|>" in a prompt is ordinary text to us, not a special token.
const COUNT_OPTIONS = { disallowedSpecial: new Set<string>() };

export function countTextTokens(text: string): number {
  return text === '' ? 0 : countTokens(text, COUNT_OPTIONS);
}

/** Collects the text of a content value: a string, or blocks/parts with text-like fields. */
function collectContent(value: unknown, out: string[]): void {
  if (typeof value === 'string') {
    out.push(value);
    return;
  }
  if (Array.isArray(value)) {
    for (const part of value) collectContent(part, out);
    return;
  }
  const o = obj(value);
  if (!o) return;
  // text / input_text / output_text parts, Anthropic text and thinking blocks
  if (typeof o.text === 'string') out.push(o.text);
  if (typeof o.thinking === 'string') out.push(o.thinking);
  // Anthropic tool_use.input and tool_result.content; OpenAI function_call_output.output
  if (o.type === 'tool_use' && o.input !== undefined) out.push(JSON.stringify(o.input));
  if (o.type === 'tool_result') collectContent(o.content, out);
  if (typeof o.output === 'string') out.push(o.output);
  if (typeof o.arguments === 'string') out.push(o.arguments);
}

/** Text and message count of a chat-like request (messages / system / input / instructions / tools). */
function requestText(
  operation: DecoderRequestInfo['operation'],
  body: Record<string, unknown>,
): { texts: string[]; messages: number } {
  const texts: string[] = [];
  let messages = 0;
  const addMessages = (list: unknown): void => {
    if (!Array.isArray(list)) return;
    for (const item of list) {
      const m = obj(item);
      if (!m) {
        collectContent(item, texts);
        continue;
      }
      messages += 1;
      if (typeof m.role === 'string') texts.push(m.role);
      if (typeof m.name === 'string') texts.push(m.name);
      collectContent(m.content, texts);
      collectContent(m, texts); // Responses input items carry text/output/arguments directly
      if (Array.isArray(m.tool_calls)) {
        for (const call of m.tool_calls) {
          const fn = obj(obj(call)?.function);
          if (typeof fn?.name === 'string') texts.push(fn.name);
          if (typeof fn?.arguments === 'string') texts.push(fn.arguments);
        }
      }
    }
  };

  switch (operation) {
    case 'chat':
    case 'messages':
      collectContent(body.system, texts); // Anthropic system: string or blocks
      addMessages(body.messages);
      break;
    case 'responses':
      collectContent(body.instructions, texts);
      if (typeof body.input === 'string') {
        texts.push(body.input);
        messages += 1;
      } else addMessages(body.input);
      break;
    case 'text_completion':
    case 'embeddings': {
      const input = operation === 'embeddings' ? body.input : body.prompt;
      collectContent(input, texts);
      break;
    }
    default:
      break;
  }
  // Tool/function definitions are sent to the model and billed as input.
  if (Array.isArray(body.tools) && body.tools.length > 0) texts.push(JSON.stringify(body.tools));
  if (Array.isArray(body.functions) && body.functions.length > 0) texts.push(JSON.stringify(body.functions));
  return { texts, messages };
}

/** Embeddings input given as token arrays (number[] or number[][]) is already tokenised. */
function pretokenisedCount(input: unknown): number | undefined {
  if (!Array.isArray(input) || input.length === 0) return undefined;
  if (input.every((x) => typeof x === 'number')) return input.length;
  if (input.every((x) => Array.isArray(x) && x.every((y) => typeof y === 'number'))) {
    return input.reduce((sum: number, x) => sum + (x as number[]).length, 0);
  }
  return undefined;
}

function estimateInput(info: DecoderRequestInfo, body: Record<string, unknown>): number | undefined {
  if (info.operation === 'embeddings') {
    const pre = pretokenisedCount(body.input);
    if (pre !== undefined) return pre;
  }
  const { texts, messages } = requestText(info.operation, body);
  if (texts.length === 0) return undefined;
  let tokens = 0;
  for (const t of texts) tokens += countTextTokens(t);
  if (info.operation === 'chat' || info.operation === 'messages' || info.operation === 'responses') {
    tokens += messages * TOKENS_PER_MESSAGE + TOKENS_REPLY_PRIMING;
  }
  return tokens;
}

/**
 * Output tokens from the generated text the decoder saw: the kept text, plus the dropped tail
 * extrapolated at the kept text's tokens per char. Unknown (undefined), never a made-up 0, when
 * there is no text to count: a body that could not be read, a response without an answer, a
 * stream cut before its first content, or an answer cut by the length limit with no visible text
 * (reasoning models spend the whole budget on hidden reasoning). Only an answer the upstream says
 * finished normally (`stop`) with no text at all is a true count of 0.
 */
function estimateOutput(decoded: DecodedResponse): number | undefined {
  if (decoded.bodyMalformed !== undefined) return undefined;
  if (decoded.outputText.length === 0) return decoded.finishReason === 'stop' ? 0 : undefined;
  const kept = countTextTokens(decoded.outputText);
  const dropped = decoded.outputTextDroppedChars ?? 0;
  if (dropped === 0) return kept;
  return kept + Math.ceil((kept * dropped) / decoded.outputText.length);
}

/**
 * Estimate usage for a request whose upstream reported none (or was aborted). Returns undefined
 * when there is nothing to count from (no request body, operation without tokens, images).
 * Input figures the upstream did state (e.g. Anthropic `message_start` before a cut) are kept;
 * only what is missing is counted locally. Estimated input is all "uncached". Output is left
 * absent when it cannot be counted (see estimateOutput): pricing then says so instead of billing 0.
 */
export function estimateUsage(info: DecoderRequestInfo, decoded: DecodedResponse): Usage | undefined {
  // Realtime sessions are audio, counted by no local tokenizer: their usage is reported or missing.
  if (info.operation === 'other' || info.operation === 'image_generation' || info.operation === 'realtime')
    return undefined;
  const body = obj(info.body);
  const reported = decoded.usage;
  const hasReportedInput = reported.input !== undefined;
  const input = hasReportedInput ? reported.input : body ? estimateInput(info, body) : undefined;
  if (input === undefined) return undefined;

  const usage: Usage = { input };
  if (hasReportedInput) {
    if (reported.cacheRead !== undefined) usage.cacheRead = reported.cacheRead;
    if (reported.cacheWrite !== undefined) usage.cacheWrite = reported.cacheWrite;
    if (reported.cacheWrite1h !== undefined) usage.cacheWrite1h = reported.cacheWrite1h;
  }
  if (info.operation !== 'embeddings') {
    const output = reported.output ?? estimateOutput(decoded);
    if (output !== undefined) usage.output = output;
  }
  return usage;
}
