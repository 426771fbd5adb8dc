/**
 * Issue 11, "Unknown is not zero" and "Hardening": decoders never turn garbage into numbers.
 * Implausible token counts, 2xx bodies and streams that are not what the endpoint speaks, and
 * oversized names are all fed through every decoder (one mechanism, not a per-provider `if`).
 */
import { describe, expect, it } from 'vitest';
import { estimateUsage } from '../../src/decoders/estimate.js';
import { createDecoder } from '../../src/decoders/index.js';
import {
  count,
  costFrom,
  describeMalformedBody,
  MAX_IMAGES_PER_REQUEST,
  MAX_TOKENS_PER_FIELD,
} from '../../src/decoders/shared.js';
import type { DecodedResponse } from '../../src/decoders/types.js';
import type { Operation } from '../../src/record.js';
import { SseParser } from '../../src/sse/parser.js';

/** Operations whose endpoints speak JSON and carry usage (`other` reports nothing by design). */
/** HTTP wire APIs. `realtime` is a WebSocket session with its own tests (test/proxy/websocket*.test.ts). */
type HttpMetered = Exclude<Operation, 'other' | 'realtime'>;
const METERED: HttpMetered[] = [
  'chat',
  'text_completion',
  'responses',
  'messages',
  'embeddings',
  'image_generation',
];

/** A well-formed body with a usage object for each operation; `tokens` goes into every count. */
function bodyFor(operation: Operation, tokens: unknown, model = 'm'): string {
  switch (operation) {
    case 'responses':
      return JSON.stringify({
        object: 'response',
        status: 'completed',
        model,
        output: [{ type: 'message', content: [{ type: 'output_text', text: 'hi' }] }],
        usage: { input_tokens: tokens, output_tokens: tokens },
      });
    case 'messages':
      return JSON.stringify({
        type: 'message',
        model,
        content: [{ type: 'text', text: 'hi' }],
        stop_reason: 'end_turn',
        usage: { input_tokens: tokens, output_tokens: tokens },
      });
    case 'embeddings':
      return JSON.stringify({ object: 'list', model, data: [], usage: { prompt_tokens: tokens } });
    case 'image_generation':
      return JSON.stringify({
        model,
        data: [{ url: 'u' }],
        usage: { input_tokens: tokens, output_tokens: tokens },
      });
    default:
      return JSON.stringify({
        model,
        choices: [{ message: { content: 'hi' }, text: 'hi', finish_reason: 'stop' }],
        usage: { prompt_tokens: tokens, completion_tokens: tokens },
      });
  }
}

function decodeBody(operation: Operation, body: string): DecodedResponse {
  const d = createDecoder({ operation, stream: false });
  d.onBody(body);
  return d.result();
}

/** Feeds an SSE body through the one parser, byte by byte (the hardest split). */
function decodeStream(operation: Operation, sse: string): DecodedResponse {
  const d = createDecoder({ operation, stream: true });
  const parser = new SseParser({ onEvent: (e) => d.onEvent(e) });
  const bytes = Buffer.from(sse);
  for (let i = 0; i < bytes.length; i++) parser.feed(bytes.subarray(i, i + 1));
  parser.end();
  return d.result();
}

describe('count(): only plausible token counts become numbers', () => {
  it('accepts non-negative safe integers up to the bound, and digit strings within it', () => {
    expect(count(0)).toBe(0);
    expect(count(MAX_TOKENS_PER_FIELD)).toBe(MAX_TOKENS_PER_FIELD);
    expect(count('12')).toBe(12);
    expect(count(String(MAX_TOKENS_PER_FIELD))).toBe(MAX_TOKENS_PER_FIELD);
    expect(Object.is(count(-0), 0)).toBe(true); // JSON "-0" is a zero, not a negative zero in the DB
  });

  it('rejects what entered the counters before: 1e30, 2^53+1, 1e12, and junk', () => {
    for (const bad of [
      1e30,
      2 ** 53 + 1,
      1e12,
      MAX_TOKENS_PER_FIELD + 1,
      '9007199254740993', // Number() would round this to ...992
      '100000001',
      '00000000000000000000001',
      -1,
      1.5,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      '1e3',
      ' 12',
      '-1',
      true,
      {},
    ]) {
      expect(count(bad), String(bad)).toBeUndefined();
    }
  });

  it('image counts have their own, smaller bound', () => {
    expect(MAX_IMAGES_PER_REQUEST).toBeLessThan(MAX_TOKENS_PER_FIELD);
    expect(count(MAX_IMAGES_PER_REQUEST, MAX_IMAGES_PER_REQUEST)).toBe(MAX_IMAGES_PER_REQUEST);
    expect(count(MAX_IMAGES_PER_REQUEST + 1, MAX_IMAGES_PER_REQUEST)).toBeUndefined();
  });
});

describe('implausible usage is never reported, whatever the wire API', () => {
  for (const operation of METERED) {
    for (const tokens of [1e30, 1e12, 2 ** 53 + 1, '9007199254740993', -5, 2.5]) {
      it(`${operation}: ${String(tokens)} is not a count; usage not reported, noted`, () => {
        const r = decodeBody(operation, bodyFor(operation, tokens));
        const tokenFields = Object.entries(r.usage).filter(([k]) => k !== 'images');
        expect(tokenFields, operation).toStrictEqual([]);
        expect(
          r.notes?.some((n) => n.startsWith('usage_implausible:')),
          operation,
        ).toBe(true);
        expect(r.bodyMalformed).toBeUndefined();
        if (operation === 'image_generation') {
          // The image count (the billable unit) is still known; token usage is not claimed.
          expect(r.usage).toStrictEqual({ images: 1 });
        } else {
          expect(r.usageReported, operation).toBe(false);
        }
      });
    }

    it(`${operation}: the same body with plausible counts is reported (the check is not over-eager)`, () => {
      const r = decodeBody(operation, bodyFor(operation, 7));
      expect(r.usageReported).toBe(true);
      expect(r.notes).toBeUndefined();
      expect(Object.values(r.usage)).toContain(7);
    });
  }

  it('a usage object with one implausible field is rejected whole, not partly kept', () => {
    const r = decodeBody(
      'chat',
      JSON.stringify({
        choices: [{ message: { content: 'x' } }],
        usage: { prompt_tokens: 10, completion_tokens: 5, prompt_tokens_details: { cached_tokens: 1e15 } },
      }),
    );
    expect(r.usage).toStrictEqual({});
    expect(r.usageReported).toBe(false);
    expect(r.notes).toStrictEqual(['usage_implausible:prompt_tokens_details.cached_tokens']);
  });

  it('images: more images than any endpoint returns in one call is not a count', () => {
    const data = Array.from({ length: MAX_IMAGES_PER_REQUEST + 1 }, () => ({ url: 'u' }));
    const r = decodeBody('image_generation', JSON.stringify({ data }));
    expect(r.usage).toStrictEqual({});
    expect(r.usageReported).toBe(false);
    expect(r.notes).toStrictEqual(['usage_implausible:images']);
  });

  it('images without usage: the image count is reported, no token figure is claimed', () => {
    const r = decodeBody(
      'image_generation',
      JSON.stringify({ created: 1, data: [{ url: 'a' }, { url: 'b' }] }),
    );
    expect(r).toStrictEqual({ usage: { images: 2 }, usageReported: true, outputText: '' });
  });

  it('streamed images: a broken per-image report makes the token sum unknown, not partial', () => {
    const done = (usage: unknown) => ({
      event: 'image_generation.completed',
      data: JSON.stringify({ type: 'image_generation.completed', usage }),
    });
    const d = createDecoder({ operation: 'image_generation', stream: true });
    d.onEvent(done({ input_tokens: 20, output_tokens: 272 }));
    d.onEvent(done({ input_tokens: 20, output_tokens: 1e20 }));
    d.onEvent(done({ input_tokens: 20, output_tokens: 300 }));
    expect(d.result().usage).toStrictEqual({ images: 3 });
    expect(d.result().notes).toStrictEqual(['usage_implausible:output_tokens']);
  });

  it('an upstream-stated cost is kept only when it is a plain, plausible decimal', () => {
    expect(costFrom(0.0123)).toStrictEqual({ amount: '0.0123' });
    expect(costFrom(1e-7)).toStrictEqual({ amount: '0.0000001' }); // String(1e-7) is "1e-7"
    expect(costFrom('0.5')).toStrictEqual({ amount: '0.5' });
    for (const bad of [1e30, 1e12, -1, Number.NaN, '1e30', '99999999999', 'abc']) {
      expect(costFrom(bad), String(bad)).toBeUndefined();
    }
  });
});

const NOT_JSON_BODIES: [string, string, string][] = [
  [
    'Cloudflare HTML page',
    '<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>',
    'non-JSON body (starts with <!doctype)',
  ],
  ['nginx HTML page', '\n  <html>\r\n<head><title>502</title>', 'non-JSON body (starts with <html)'],
  ['truncated JSON', '{"choices":[{"message":{"content":"Hel', 'non-JSON body (invalid or truncated JSON)'],
  ['plain text', 'Bad Gateway', 'non-JSON body (plain text: "Bad Gateway")'],
  ['empty', '   ', 'empty body'],
  ['a JSON array', '[1,2,3]', 'unexpected JSON body (array)'],
  ['a JSON string', '"ok"', 'unexpected JSON body (string)'],
];

describe('a 2xx body that is not JSON is flagged, never read as zero usage', () => {
  for (const operation of METERED) {
    for (const [name, body, expected] of NOT_JSON_BODIES) {
      it(`${operation}: ${name}`, () => {
        expect(decodeBody(operation, body)).toStrictEqual({
          usage: {},
          usageReported: false,
          outputText: '',
          bodyMalformed: expected,
        });
      });
    }

    it(`${operation}: valid JSON without a usage object is plain "missing", not malformed`, () => {
      const r = decodeBody(operation, JSON.stringify({ id: 'x', model: 'm' }));
      expect(r.bodyMalformed).toBeUndefined();
      expect(r.usageReported).toBe(false);
    });
  }

  it('the hint never carries more than 32 characters of content, nor anything key-like', () => {
    const body = 'Invalid token sk-proj-abcdefghijklmnopqrstuvwxyz0123456789 for user';
    const hint = describeMalformedBody(body);
    expect(hint).not.toContain('abcdefghij');
    const quoted = /"(.*)"/.exec(hint)?.[1] ?? '';
    expect(quoted.length).toBeLessThanOrEqual(32);
    const long = describeMalformedBody(`Error: ${'a1B2c3D4e5'.repeat(10)} more text`);
    expect(long).not.toMatch(/[A-Za-z0-9]{16,}/);
    expect(describeMalformedBody('x'.repeat(1_000_000)).length).toBeLessThan(80);
    // Control characters and the quote are not copied into the hint (it ends in a record and a log line).
    expect(describeMalformedBody('bad\u0000 "quoted"\u001b[31m')).toBe(
      'non-JSON body (plain text: "bad quoted[31m")',
    );
  });

  it('binary bodies are named as such', () => {
    expect(describeMalformedBody('\u001f\u008b\u0008\u0000garbage')).toBe('non-JSON body (binary)');
  });
});

describe('a stream whose events are not JSON is flagged; one bad chunk among good ones is only noted', () => {
  const htmlStream = 'data: <html><body>502 Bad Gateway</body></html>\n\ndata: </html>\n\n';
  const goodChunk: Record<HttpMetered, string> = {
    chat: '{"choices":[{"delta":{"content":"a"}}]}',
    text_completion: '{"choices":[{"text":"a"}]}',
    responses: '{"type":"response.output_text.delta","delta":"a"}',
    messages: '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}',
    embeddings: '{"object":"list","data":[]}',
    image_generation: '{"type":"image_generation.partial_image","b64_json":"x"}',
  };
  for (const operation of METERED) {
    it(`${operation}: every data event unreadable → bodyMalformed`, () => {
      const r = decodeStream(operation, `${htmlStream}data: [DONE]\n\n`);
      expect(r.bodyMalformed).toBe('stream events are not JSON');
      expect(r.usage).toStrictEqual({});
      expect(r.usageReported).toBe(false);
    });

    it(`${operation}: one malformed chunk among good ones is skipped and noted, not malformed`, () => {
      const r = decodeStream(operation, `data: ${goodChunk[operation]}\n\ndata: {"trunc\n\ndata: [DONE]\n\n`);
      expect(r.bodyMalformed).toBeUndefined();
      expect(r.notes).toStrictEqual(['stream_events_not_json:1']);
    });

    it(`${operation}: [DONE] alone is not malformed`, () => {
      const r = decodeStream(operation, 'data: [DONE]\n\n');
      expect(r.bodyMalformed).toBeUndefined();
      expect(r.notes).toBeUndefined();
    });
  }

  it('result() read mid-stream and again later gives one up-to-date note, not two', () => {
    const d = createDecoder({ operation: 'chat', stream: true });
    d.onEvent({ data: goodChunk.chat });
    d.onEvent({ data: 'ping' });
    expect(d.result().notes).toStrictEqual(['stream_events_not_json:1']);
    d.onEvent({ data: 'ping' });
    expect(d.result().notes).toStrictEqual(['stream_events_not_json:2']);
    expect(d.result()).toStrictEqual(d.result());
  });

  it('an `event: error` with a plain-text message is an error, not an unreadable stream', () => {
    const r = decodeStream('chat', 'event: error\ndata: upstream overloaded\n\n');
    expect(r.streamError).toStrictEqual({ message: 'upstream overloaded' });
    expect(r.bodyMalformed).toBeUndefined();
  });
});

describe('names from the upstream are capped before they are stored and logged', () => {
  const huge = `gpt-${'x'.repeat(1024 * 1024)}`;
  for (const operation of METERED) {
    it(`${operation}: a 1 MB response model is cut to 256 characters`, () => {
      const r = decodeBody(operation, bodyFor(operation, 3, huge));
      expect(r.responseModel).toBe(huge.slice(0, 256));
      expect(r.notes).toContain('response_model_truncated');
    });
  }

  it('a cut never leaves half of a surrogate pair', () => {
    const model = `${'m'.repeat(255)}😀tail`;
    const r = decodeBody('chat', bodyFor('chat', 3, model));
    expect(r.responseModel).toBe('m'.repeat(255));
  });

  it('request ids and finish reasons are capped too', () => {
    const r = decodeBody(
      'chat',
      JSON.stringify({
        id: 'i'.repeat(10_000),
        choices: [{ message: { content: 'a' }, finish_reason: 'f'.repeat(10_000) }],
      }),
    );
    expect(r.upstreamRequestId?.length).toBe(256);
    expect(r.finishReason?.length).toBe(64);
  });
});

describe('estimateUsage never invents output it could not see', () => {
  const info = {
    operation: 'chat' as const,
    stream: false,
    body: { messages: [{ role: 'user', content: 'hi' }] },
  };

  it('a malformed body: output unknown (input from the request is still counted)', () => {
    const decoded = decodeBody('chat', '<html>blocked</html>');
    const est = estimateUsage(info, decoded);
    expect(est?.output).toBeUndefined();
    expect(est).not.toHaveProperty('output');
    expect(est?.input).toBeGreaterThan(0);
  });

  it('a readable body without usage and without any answer: output unknown, not 0', () => {
    const est = estimateUsage(
      info,
      decodeBody('chat', JSON.stringify({ id: 'x', object: 'chat.completion' })),
    );
    expect(est).not.toHaveProperty('output');
  });

  it('a stream cut before any content: output unknown, not 0', () => {
    const est = estimateUsage(
      { ...info, stream: true },
      decodeStream('chat', 'data: {"id":"c","choices":[{"delta":{"role":"assistant"}}]}\n\n'),
    );
    expect(est).not.toHaveProperty('output');
  });

  it('an answer that finished normally with no text: output 0 is a count, not a default', () => {
    const est = estimateUsage(
      info,
      decodeBody('chat', JSON.stringify({ choices: [{ message: { content: '' }, finish_reason: 'stop' }] })),
    );
    expect(est?.output).toBe(0);
  });

  it('an answer cut by the length limit with no visible text (hidden reasoning): output unknown', () => {
    const est = estimateUsage(
      info,
      decodeBody(
        'chat',
        JSON.stringify({ choices: [{ message: { content: '' }, finish_reason: 'length' }] }),
      ),
    );
    expect(est).not.toHaveProperty('output');
  });
});
