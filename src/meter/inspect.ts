/**
 * What the proxy needs to know about a request before forwarding it: the operation (from method
 * and path), the model, the stream flag, the user, and whether a streamed chat request already
 * asks for usage. Pure: no I/O. The body is parsed once here; nothing else re-parses it.
 */
import type { Operation } from '../record.js';
import type { RequestInfo } from './types.js';

/** Path suffix → operation, checked against the end of the path so any prefix (/v1, /api/v1, /openai/deployments/x) works. */
const SUFFIXES: ReadonlyArray<[RegExp, Operation]> = [
  [/\/chat\/completions$/, 'chat'],
  [/\/search\/completions$/, 'chat'], // seed 004 web search: chat-shaped
  [/\/completions$/, 'text_completion'],
  [/\/responses$/, 'responses'],
  [/\/messages$/, 'messages'],
  [/\/embeddings$/, 'embeddings'],
  [/\/images\/generations$/, 'image_generation'],
];

export function operationFor(method: string, path: string): Operation {
  if (method.toUpperCase() !== 'POST') return 'other';
  const p = path.replace(/\/+$/, '');
  // Anthropic's count_tokens is free and has no usage: `/v1/messages/count_tokens` ends differently.
  for (const [re, op] of SUFFIXES) if (re.test(p)) return op;
  return 'other';
}

/** Longest request model name kept; longer ones are cut and the record notes it. */
export const MAX_MODEL_CHARS = 256;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * @param body the buffered request body, or undefined when it was too large to buffer.
 */
export function inspectRequest(
  method: string,
  path: string,
  body: Buffer | undefined,
  tooLargeToMeter = false,
): RequestInfo {
  const operation = operationFor(method, path);
  const info: RequestInfo = { operation, stream: false, asksForUsage: false, tooLargeToMeter };
  if (body === undefined || body.length === 0) return info;
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    return info; // not JSON (multipart upload, audio, …): forwarded untouched, metered as far as possible
  }
  if (!isObject(json)) return info;
  info.body = json;
  if (typeof json.model === 'string') {
    // A model name is stored, labelled and logged: cap it (a 1 MB "model" is junk or an attack).
    if (json.model.length > MAX_MODEL_CHARS) {
      info.model = json.model.slice(0, MAX_MODEL_CHARS);
      info.modelTruncated = true;
    } else info.model = json.model;
  }
  info.stream = json.stream === true;
  if (typeof json.user === 'string') info.user = json.user.slice(0, MAX_MODEL_CHARS);
  else if (isObject(json.metadata) && typeof json.metadata.user_id === 'string')
    info.user = json.metadata.user_id.slice(0, MAX_MODEL_CHARS);
  const so = json.stream_options;
  info.asksForUsage = isObject(so) && so.include_usage === true;
  return info;
}
