import { describe, expect, it } from 'vitest';
import { IMAGE_INPUT_TOKENS, requestBound } from '../../src/budgets/bound.js';
import { countTextTokens } from '../../src/decoders/estimate.js';

function req(body: unknown) {
  const text = JSON.stringify(body);
  return { body, bodyUnreadable: false, requestBytes: Buffer.byteLength(text) };
}

describe('request bound: input tokens', () => {
  it('is at least the real token count: every BPE token covers at least one UTF-8 byte', () => {
    const english = 'The quick brown fox jumps over the lazy dog. '.repeat(50);
    const chinese = '预算必须在并发下依然有效，不能被绕过。'.repeat(50);
    const emoji = '🙂🚀✨'.repeat(100);
    for (const text of [english, chinese, emoji]) {
      const body = { model: 'gpt-4o', messages: [{ role: 'user', content: text }] };
      const bound = requestBound(req(body)).inputTokens;
      // The real count plus OpenAI's per-message framing (3 per message + 3 priming).
      expect(bound).toBeGreaterThanOrEqual(countTextTokens(text) + 6);
      // ... and not absurdly above the text's bytes (JSON keys and punctuation only).
      expect(bound).toBeLessThan(Buffer.byteLength(text) + 100);
    }
  });

  it('counts tool schemas (keys included), system prompts and pre-tokenised input', () => {
    const tools = [
      { type: 'function', function: { name: 'get_weather', parameters: { properties: { city: {} } } } },
    ];
    const withTools = requestBound(req({ model: 'm', messages: [], tools })).inputTokens;
    expect(withTools).toBeGreaterThanOrEqual(countTextTokens(JSON.stringify(tools)));
    // Embeddings given as token ids: one token per number.
    expect(
      requestBound(
        req({
          model: 'e',
          input: [
            [1, 2, 3],
            [4, 5],
          ],
        }),
      ).inputTokens,
    ).toBeGreaterThanOrEqual(5);
  });

  it('an image part costs a fixed allowance, whatever its base64 size or URL', () => {
    const big = 'A'.repeat(2_000_000);
    const body = {
      model: 'gpt-4o',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'what is this?' },
            { type: 'image_url', image_url: { url: `data:image/png;base64,${big}` } },
            { type: 'image', source: { type: 'url', url: 'https://example.com/cat.png' } },
          ],
        },
      ],
    };
    const bound = requestBound(req(body)).inputTokens;
    expect(bound).toBeGreaterThanOrEqual(2 * IMAGE_INPUT_TOKENS);
    expect(bound).toBeLessThan(2 * IMAGE_INPUT_TOKENS + 200);
  });

  it('a readable body that is not JSON is bounded by its byte length', () => {
    expect(requestBound({ body: undefined, bodyUnreadable: false, requestBytes: 1234 }).inputTokens).toBe(
      1234,
    );
  });

  it('survives deeply nested JSON without recursion', () => {
    // JSON.parse builds such a body from 200 KB of brackets without complaint.
    const deep: unknown = JSON.parse('['.repeat(100_000) + '"x"' + ']'.repeat(100_000));
    const r = { body: { model: 'm', input: deep }, bodyUnreadable: false, requestBytes: 200_010 };
    expect(requestBound(r).inputTokens).toBe('model'.length + 1 + 'input'.length + 1);
  });
});

describe('request bound: output tokens', () => {
  it('takes max_tokens, max_completion_tokens or max_output_tokens (the largest when several)', () => {
    expect(requestBound(req({ max_tokens: 100 })).requestedOutputTokens).toBe(100);
    expect(requestBound(req({ max_completion_tokens: 200 })).requestedOutputTokens).toBe(200);
    expect(requestBound(req({ max_output_tokens: 300 })).requestedOutputTokens).toBe(300);
    expect(requestBound(req({ max_tokens: 100, max_completion_tokens: 50 })).requestedOutputTokens).toBe(100);
  });

  it('is undefined when absent or not a plausible whole number (the model maximum applies)', () => {
    expect(requestBound(req({ model: 'm' })).requestedOutputTokens).toBeUndefined();
    for (const bad of [-1, 1.5, '100', null, 1e30, Number.MAX_SAFE_INTEGER + 2])
      expect(requestBound(req({ max_tokens: bad })).requestedOutputTokens).toBeUndefined();
  });

  it('counts the choices asked for: n, best_of (capped at 128)', () => {
    expect(requestBound(req({ n: 4 })).choices).toBe(4);
    expect(requestBound(req({ n: 2, best_of: 5 })).choices).toBe(5);
    expect(requestBound(req({ n: 1e9 })).choices).toBe(128);
    expect(requestBound(req({ n: 'x' })).choices).toBe(1);
    expect(requestBound(req({})).choices).toBe(1);
  });
});

describe('request bound: cost on the request path', () => {
  it('a 100 KB prompt is bounded in well under a millisecond (a tokenizer takes far longer)', () => {
    const text = 'Budgets are a gate, not a sink. 预算是闸门。 '.repeat(2500).slice(0, 100_000);
    const body = { model: 'gpt-4o', messages: [{ role: 'user', content: text }], max_tokens: 100 };
    const r = req(body);
    for (let i = 0; i < 50; i++) requestBound(r); // warm up
    const runs = 200;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < runs; i++) requestBound(r);
    const perCallMs = Number(process.hrtime.bigint() - t0) / 1e6 / runs;
    const t1 = process.hrtime.bigint();
    countTextTokens(text);
    const tokenizerMs = Number(process.hrtime.bigint() - t1) / 1e6;
    // Generous ceiling for a shared 2-core machine; docs/budgets.md has the measured figures.
    expect(perCallMs).toBeLessThan(1);
    expect(perCallMs).toBeLessThan(tokenizerMs);
  });
});
