import { describe, expect, it } from 'vitest';
import { inspectRequest } from '../../src/meter/inspect.js';
import {
  injectUsageOption,
  isUsageOnlyEvent,
  shouldInjectUsage,
  UsageChunkStripper,
} from '../../src/proxy/usage-injection.js';
import { upstreamSettings } from './helpers.js';

const up = upstreamSettings('default', 'http://127.0.0.1:1');

function infoFor(path: string, body: object) {
  return inspectRequest('POST', path, Buffer.from(JSON.stringify(body)));
}

describe('shouldInjectUsage (§3.3)', () => {
  it('injects only for streamed chat/text_completion requests that did not ask, when the upstream allows', () => {
    expect(shouldInjectUsage(infoFor('/v1/chat/completions', { model: 'm', stream: true }), up)).toBe(true);
    expect(shouldInjectUsage(infoFor('/v1/completions', { model: 'm', stream: true }), up)).toBe(true);
    expect(shouldInjectUsage(infoFor('/v1/chat/completions', { model: 'm' }), up)).toBe(false);
    expect(
      shouldInjectUsage(
        infoFor('/v1/chat/completions', {
          model: 'm',
          stream: true,
          stream_options: { include_usage: true },
        }),
        up,
      ),
    ).toBe(false);
    expect(shouldInjectUsage(infoFor('/v1/messages', { model: 'm', stream: true }), up)).toBe(false);
    expect(shouldInjectUsage(infoFor('/v1/responses', { model: 'm', stream: true }), up)).toBe(false);
    expect(
      shouldInjectUsage(infoFor('/v1/chat/completions', { model: 'm', stream: true }), {
        ...up,
        injectUsage: false,
      }),
    ).toBe(false);
  });
});

describe('injectUsageOption', () => {
  it('inserts the field textually and leaves every other byte as the app wrote it', () => {
    const raw = Buffer.from('  {"model": "gpt-4o",\n "stream": true, "n": 1.0, "big": 12345678901234567890}');
    const out = injectUsageOption(raw, JSON.parse(raw.toString()) as Record<string, unknown>).toString();
    expect(out).toBe(
      '  {"stream_options":{"include_usage":true},"model": "gpt-4o",\n "stream": true, "n": 1.0, "big": 12345678901234567890}',
    );
    expect(JSON.parse(out).stream_options).toEqual({ include_usage: true });
  });
  it('sets include_usage inside an existing stream_options, keeping its other fields', () => {
    const body = { model: 'm', stream: true, stream_options: { include_usage: false, other: 1 } };
    const out = JSON.parse(injectUsageOption(Buffer.from(JSON.stringify(body)), body).toString());
    expect(out).toEqual({ model: 'm', stream: true, stream_options: { include_usage: true, other: 1 } });
  });
});

const usageEvent =
  'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}';
function stream(eol: string): string {
  return [
    'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}',
    ': keep-alive',
    'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hé"}}],"usage":null}',
    'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}',
    usageEvent,
    'data: [DONE]',
  ]
    .map((e) => e + eol + eol)
    .join('');
}

function runStripper(
  input: Buffer,
  splits: (buf: Buffer) => Buffer[],
): { out: string; removed: number; pieces: number } {
  const s = new UsageChunkStripper();
  const out: Buffer[] = [];
  for (const part of splits(input)) out.push(...s.push(part));
  out.push(...s.flush());
  return { out: Buffer.concat(out).toString('utf8'), removed: s.removed, pieces: out.length };
}

const whole = (b: Buffer) => [b];
const byteByByte = (b: Buffer) => Array.from({ length: b.length }, (_, i) => b.subarray(i, i + 1));
const byLine = (b: Buffer) =>
  b
    .toString('latin1')
    .split(/(?<=\n)/)
    .map((s) => Buffer.from(s, 'latin1'));

describe('UsageChunkStripper', () => {
  for (const [name, eol] of [
    ['LF', '\n'],
    ['CRLF', '\r\n'],
    ['CR', '\r'],
  ] as const) {
    for (const [how, split] of [
      ['whole', whole],
      ['line by line', byLine],
      ['byte by byte', byteByByte],
    ] as const) {
      it(`removes exactly the usage-only event (${name}, ${how})`, () => {
        const input = Buffer.from(stream(eol), 'utf8');
        const expected = stream(eol).replace(usageEvent + eol + eol, '');
        const r = runStripper(input, split);
        expect(r.out).toBe(expected);
        expect(r.removed).toBe(1);
      });
    }
  }

  it('forwards each complete event at once and holds only an incomplete tail', () => {
    const s = new UsageChunkStripper();
    expect(Buffer.concat(s.push(Buffer.from('data: {"a":1}\n\ndata: {"b"'))).toString()).toBe(
      'data: {"a":1}\n\n',
    );
    expect(Buffer.concat(s.push(Buffer.from(':2}\n\n'))).toString()).toBe('data: {"b":2}\n\n');
  });

  it('keeps usage that comes with content (GLM finish chunk, Moonshot choices[0].usage) and unterminated events', () => {
    const glm =
      'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}\n\n';
    expect(runStripper(Buffer.from(glm), whole).out).toBe(glm);
    const moon = 'data: {"choices":[{"index":0,"delta":{},"usage":{"prompt_tokens":1}}]}\n\n';
    expect(runStripper(Buffer.from(moon), whole).out).toBe(moon);
    expect(runStripper(Buffer.from('data: {"choices":[{"delta":{}}]}'), whole).out).toBe(
      'data: {"choices":[{"delta":{}}]}',
    );
    expect(runStripper(Buffer.from(usageEvent), whole)).toMatchObject({ out: '', removed: 1 });
  });

  it('recognises usage-only events and nothing else', () => {
    expect(isUsageOnlyEvent(Buffer.from(usageEvent + '\n\n'))).toBe(true);
    expect(isUsageOnlyEvent(Buffer.from('data: {"choices":[],"usage":null}\n\n'))).toBe(false);
    expect(isUsageOnlyEvent(Buffer.from('data: {"choices":[],"prompt_filter_results":[]}\n\n'))).toBe(false);
    expect(isUsageOnlyEvent(Buffer.from('data: [DONE]\n\n'))).toBe(false);
    expect(isUsageOnlyEvent(Buffer.from('data: {"usage": \n\n'))).toBe(false);
  });
});
