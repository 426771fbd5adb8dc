import { describe, expect, it } from 'vitest';
import { loadPriceBook } from '../../src/pricing/index.js';
import { query, tempDir, writeTemp } from './helpers.js';

const multipliers = { upstream: {}, app: {}, model: {} };
const upstreams = [
  // The user names their upstream `default`, not `cailag`: presets scope themselves by host.
  { name: 'default', url: new URL('https://cailag.xin/v1'), trustReportedCost: false },
  { name: 'openai', url: new URL('https://api.openai.com/v1'), trustReportedCost: false },
  { name: 'cqtai', url: new URL('https://api.cqtai.com/v1'), trustReportedCost: false },
  { name: 'dieyu', url: new URL('https://open.dieyuyun.com'), trustReportedCost: false },
  { name: 'cnai', url: new URL('https://cnaitoken.store/v1'), multiplier: '0.8', trustReportedCost: false },
];

describe('bundled presets', () => {
  const book = loadPriceBook({ files: [], presets: true, multipliers, upstreams });

  it("cailag: the seed's own worked example, 1000 in + 500 out of deepseek-chat = ¥0.00162", () => {
    const r = book.price(query({ usage: { input: 1000, output: 500 } }));
    expect(r).toMatchObject({
      cost_nanos: 1_620_000,
      currency: 'CNY',
      cost_source: 'computed',
      price_id: 'cailag.yaml#deepseek-chat@always',
    });
    expect(
      book.price(query({ model: 'qwen-max', usage: { input: 1_000_000, output: 1_000_000 } })).cost_nanos,
    ).toBe(19_800_000_000);
  });

  it('reference: Anthropic-shaped usage on claude-sonnet-4-5 = $0.01185 (§5.6)', () => {
    const r = book.price(
      query({
        model: 'claude-sonnet-4-5-20250929',
        upstream: 'openai',
        operation: 'messages',
        usage: { input: 50, cacheWrite: 2000, cacheRead: 8000, output: 120 },
      }),
    );
    expect(r.cost_nanos).toBe(11_850_000);
    expect(r.currency).toBe('USD');
    expect(r.price_id).toBe('reference.yaml#claude-sonnet-4-5@always');
  });

  it('reference: o3 price history switches at the 2025-06-10 price cut', () => {
    const at = (iso: string) =>
      book.price(
        query({ model: 'o3', upstream: 'openai', at: new Date(iso), usage: { input: 1_000_000, output: 0 } }),
      );
    expect(at('2025-06-09T23:59:59Z').cost_nanos).toBe(10_000_000_000);
    expect(at('2025-06-10T00:00:00Z').cost_nanos).toBe(2_000_000_000);
  });

  it("presets state each chat model's documented maximum output, which bounds a request without max_tokens", () => {
    const max = (model: string, upstream: string) =>
      book.maxCost({
        model,
        upstream,
        app: 'default',
        operation: 'chat',
        at: new Date('2026-11-01T00:00:00Z'),
        inputTokens: 0,
        requestedOutputTokens: undefined,
      });
    expect(max('gpt-4o', 'openai')).toMatchObject({ output_tokens: 16384, output_from: 'model' });
    expect(max('gpt-5', 'openai')).toMatchObject({ output_tokens: 128000, output_from: 'model' });
    expect(max('claude-sonnet-4-5-20250929', 'openai')).toMatchObject({ output_tokens: 64000 });
    // 8192 × ¥1.62 / 1M = ¥0.01327104 on cailag
    expect(max('deepseek-chat', 'default')).toMatchObject({ output_tokens: 8192, cost_nanos: 13_271_040n });
    // Every reference chat model states one (embeddings and image models have no output).
    for (const t of book.allTables().filter((x) => x.table.name === 'reference.yaml'))
      for (const e of t.table.entries)
        if (!/embedding|dall-e/.test(e.model)) expect(e.maxOutputTokens, e.model).toBeGreaterThan(0);
  });

  it('a gateway without stated prices leaves its models unpriced, not zero', () => {
    const r = book.price(
      query({ model: 'deepseek-v4-flash', upstream: 'dieyu', usage: { input: 10, output: 10 } }),
    );
    expect(r.cost_nanos).toBeNull();
    expect(r.cost_source).toBe('unpriced');
  });

  it('cnaitoken: deepseek-chat at ~$1.68/$2.52 with the upstream multiplier', () => {
    const r = book.price(
      query({ model: 'deepseek-chat', upstream: 'cnai', usage: { input: 1_000_000, output: 1_000_000 } }),
    );
    expect(r).toMatchObject({ cost_nanos: 3_360_000_000, currency: 'USD', multiplier: '0.8' });
  });

  it("a user's file beats the preset for the same model, and --no-presets drops them", () => {
    const file = writeTemp(
      tempDir(),
      'mine.yaml',
      'currency: CNY\nprices:\n  - {model: deepseek-chat, input: 1, output: 2, cache_read: 0.1}\n',
    );
    const mine = loadPriceBook({ files: [file], presets: true, multipliers, upstreams });
    expect(mine.price(query({ usage: { input: 400, cacheRead: 600, output: 500 } }))).toMatchObject({
      cost_nanos: 1_460_000,
      price_id: 'mine.yaml#deepseek-chat@always',
    });
    expect(mine.price(query({ model: 'qwen-max', usage: { input: 1, output: 1 } })).price_id).toBe(
      'cailag.yaml#qwen-max@always',
    );
    const bare = loadPriceBook({ files: [file], presets: false, multipliers, upstreams });
    expect(bare.price(query({ model: 'qwen-max', usage: { input: 1, output: 1 } })).cost_source).toBe(
      'unpriced',
    );
  });

  it('a bad user file stops loading with file:line:field', () => {
    const file = writeTemp(
      tempDir(),
      'typo.yaml',
      'currency: CNY\nprices:\n  - model: x\n    input: 1\n    output: 1\n    cach_read: 0.1\n',
    );
    expect(() => loadPriceBook({ files: [file], presets: true, multipliers, upstreams })).toThrow(
      `${file}:6:5: prices[0].cach_read: unknown key (did you mean cache_read?)`,
    );
  });
});
