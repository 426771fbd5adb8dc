import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { describe, expect, it } from 'vitest';
import { countTextTokens, estimateUsage } from '../../src/decoders/estimate.js';
import type { DecodedResponse } from '../../src/decoders/types.js';

const decoded = (outputText: string, usage: DecodedResponse['usage'] = {}): DecodedResponse => ({
  usage,
  usageReported: false,
  outputText,
});
const t = (s: string): number => countTokens(s);

describe('estimateUsage (o200k_base for every model)', () => {
  it('uses a real BPE tokenizer, not a character heuristic', () => {
    expect(countTextTokens('Hello world')).toBe(2);
    expect(countTextTokens('')).toBe(0);
    expect(countTextTokens('a <|endoftext|> b')).toBeGreaterThan(3); // special-token text counted as text, no throw
  });

  it('chat: message texts + roles + per-message overhead in, generated text out', () => {
    const body = {
      model: 'deepseek-chat',
      messages: [
        { role: 'system', content: 'You are a helpful assistant.' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is 2+2?' },
            { type: 'image_url', image_url: { url: 'x' } },
          ],
        },
      ],
    };
    const usage = estimateUsage({ operation: 'chat', stream: true, body }, decoded('2 + 2 equals 4.'));
    const expectedInput =
      t('system') + t('You are a helpful assistant.') + t('user') + t('What is 2+2?') + 2 * 3 + 3;
    expect(usage).toEqual({ input: expectedInput, output: t('2 + 2 equals 4.') });
  });

  it('Anthropic messages: system blocks, content blocks, tool_use and tool_result', () => {
    const body = {
      system: [{ type: 'text', text: 'Be brief.' }],
      messages: [
        { role: 'user', content: 'Weather?' },
        { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'w', input: { city: 'Oslo' } }] },
        {
          role: 'user',
          content: [{ type: 'tool_result', tool_use_id: 't1', content: [{ type: 'text', text: 'Rain' }] }],
        },
      ],
    };
    const usage = estimateUsage({ operation: 'messages', stream: true, body }, decoded('It rains.'));
    const expectedInput =
      t('Be brief.') +
      t('user') +
      t('Weather?') +
      t('assistant') +
      t('{"city":"Oslo"}') +
      t('user') +
      t('Rain') +
      3 * 3 +
      3;
    expect(usage).toEqual({ input: expectedInput, output: t('It rains.') });
  });

  it('chat: assistant tool calls, tool results and tool definitions count as input', () => {
    const tools = [{ type: 'function', function: { name: 'w', parameters: { type: 'object' } } }];
    const body = {
      tools,
      messages: [
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c', type: 'function', function: { name: 'w', arguments: '{"c":"Oslo"}' } }],
        },
        { role: 'tool', tool_call_id: 'c', content: 'Rain' },
      ],
    };
    const usage = estimateUsage({ operation: 'chat', stream: false, body }, decoded(''));
    const expectedInput =
      t('assistant') +
      t('w') +
      t('{"c":"Oslo"}') +
      t('tool') +
      t('Rain') +
      t(JSON.stringify(tools)) +
      2 * 3 +
      3;
    // No answer was seen (no text, no finish reason): output is unknown, not 0.
    expect(usage).toStrictEqual({ input: expectedInput });
  });

  it('Responses: instructions + string input', () => {
    const usage = estimateUsage(
      { operation: 'responses', stream: true, body: { instructions: 'Answer in French.', input: 'Hello' } },
      decoded('Bonjour'),
    );
    expect(usage).toEqual({ input: t('Answer in French.') + t('Hello') + 3 + 3, output: t('Bonjour') });
  });

  it('legacy completions and embeddings (strings and pre-tokenised arrays)', () => {
    expect(
      estimateUsage(
        { operation: 'text_completion', stream: false, body: { prompt: 'Say this is a test' } },
        decoded(' This is a test'),
      ),
    ).toEqual({
      input: t('Say this is a test'),
      output: t(' This is a test'),
    });
    expect(
      estimateUsage(
        { operation: 'embeddings', stream: false, body: { input: ['Hello world', 'foo'] } },
        decoded(''),
      ),
    ).toEqual({
      input: t('Hello world') + t('foo'),
    });
    expect(
      estimateUsage(
        {
          operation: 'embeddings',
          stream: false,
          body: {
            input: [
              [1, 2, 3],
              [4, 5],
            ],
          },
        },
        decoded(''),
      ),
    ).toEqual({ input: 5 });
  });

  it('keeps input figures the upstream did report and estimates only the missing output', () => {
    const usage = estimateUsage(
      { operation: 'messages', stream: true, body: { messages: [{ role: 'user', content: 'long prompt' }] } },
      decoded('partial answer', { input: 2048, cacheRead: 1024, cacheWrite: 0 }),
    );
    expect(usage).toEqual({ input: 2048, cacheRead: 1024, cacheWrite: 0, output: t('partial answer') });
  });

  it('is undefined when there is nothing to count from', () => {
    expect(estimateUsage({ operation: 'chat', stream: true }, decoded('text'))).toBeUndefined();
    expect(
      estimateUsage({ operation: 'chat', stream: true, body: { messages: [] } }, decoded('text')),
    ).toBeUndefined();
    expect(estimateUsage({ operation: 'other', stream: false, body: { a: 1 } }, decoded(''))).toBeUndefined();
    expect(
      estimateUsage({ operation: 'image_generation', stream: false, body: { prompt: 'cat' } }, decoded('')),
    ).toBeUndefined();
  });
});

describe('bounded memory for generated text', () => {
  it('keeps at most TEXT_CAP_CHARS and extrapolates the dropped tail', async () => {
    const { TextSink, TEXT_CAP_CHARS } = await import('../../src/decoders/shared.js');
    const sink = new TextSink(100);
    for (let i = 0; i < 50; i++) sink.add('hello ');
    expect(sink.toString().length).toBe(100);
    expect(sink.dropped).toBe(200);
    expect(TEXT_CAP_CHARS).toBeGreaterThan(0);
    const info = {
      operation: 'chat' as const,
      stream: true,
      body: { messages: [{ role: 'user', content: 'hi' }] },
    };
    const text = 'hello '.repeat(20);
    const full = estimateUsage(info, { usage: {}, usageReported: false, outputText: text.repeat(3) })!;
    const capped = estimateUsage(info, {
      usage: {},
      usageReported: false,
      outputText: text,
      outputTextDroppedChars: text.length * 2,
    })!;
    // Extrapolation is an estimate: within 5% of tokenizing everything, and far above the kept part alone.
    expect(Math.abs(capped.output! - full.output!) / full.output!).toBeLessThan(0.05);
    expect(capped.output!).toBeGreaterThan(countTextTokens(text) * 2);
  });
});
