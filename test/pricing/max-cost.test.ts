import { describe, expect, it } from 'vitest';
import { parsePriceTable } from '../../src/pricing/table.js';
import { DEFAULT_MAX_OUTPUT_TOKENS } from '../../src/pricing/book.js';
import type { MaxCostQuery } from '../../src/pricing/types.js';
import { book, table } from './helpers.js';

function maxQuery(over: Partial<MaxCostQuery>): MaxCostQuery {
  return {
    model: 'gpt-4o',
    upstream: 'default',
    app: 'default',
    operation: 'chat',
    at: new Date('2026-11-01T00:00:00Z'),
    inputTokens: 0,
    requestedOutputTokens: undefined,
    ...over,
  };
}

describe('price entries: max_output_tokens', () => {
  it('is read as a positive integer and kept on the entry', () => {
    const t = table(
      'currency: USD\nprices:\n  - {model: gpt-4o, input: 2.5, output: 10, max_output_tokens: 16384}\n' +
        '  - {model: other, input: 1, output: 1}\n',
    );
    expect(t.entries[0]!.maxOutputTokens).toBe(16384);
    expect(t.entries[1]!.maxOutputTokens).toBeUndefined();
  });

  it('rejects a value that is not a positive integer, naming line and field', () => {
    const { table: t, problems } = parsePriceTable(
      'currency: USD\nprices:\n' +
        '  - {model: a, input: 1, output: 1, max_output_tokens: 0}\n' +
        '  - {model: b, input: 1, output: 1, max_output_tokens: 1.5}\n' +
        '  - {model: c, input: 1, output: 1, max_output_tokens: "lots"}\n',
      'm.yaml',
    );
    expect(t).toBeUndefined();
    expect(problems.map((p) => `${p.line}:${p.field}`)).toEqual([
      '3:prices[0].max_output_tokens',
      '4:prices[1].max_output_tokens',
      '5:prices[2].max_output_tokens',
    ]);
    expect(problems[0]!.message).toContain('positive whole number');
  });
});

describe('PriceBook.maxCost: the most a request can cost', () => {
  const prices = table(
    'currency: USD\nunit: 1M\nprices:\n' +
      '  - {model: gpt-4o, input: 2.5, output: 10, cache_read: 1.25, max_output_tokens: 16384}\n' +
      '  - {model: claude-x, input: 3, output: 15, cache_write: 3.75, cache_write_1h: 6, reasoning: 20}\n' +
      '  - {model: img, input: 0, output: 0, per_image: 0.04}\n' +
      '  - {model: fee, input: 1, output: 1, per_request: 0.01, max_output_tokens: 10}\n' +
      '  - {model: tiny, input: 0.0025, output: 0}\n',
  );
  const b = book([prices]);

  it('prices input at the highest input-side rate and output at max(output, reasoning)', () => {
    // 1000 input tokens × $6 (1h cache write is the highest) + 500 × $20 (reasoning) = 0.006 + 0.01.
    const r = b.maxCost(maxQuery({ model: 'claude-x', inputTokens: 1000, requestedOutputTokens: 500 }));
    expect(r).toMatchObject({ cost_nanos: 16_000_000n, currency: 'USD', output_tokens: 500 });
  });

  it('output: max_tokens when given, clamped to the model maximum; else the model maximum; else the default', () => {
    const asked = b.maxCost(maxQuery({ inputTokens: 100, requestedOutputTokens: 1000 }));
    // 100 × 2.5 + 1000 × 10 = 10250 per 1M = $0.01025
    expect(asked).toMatchObject({ cost_nanos: 10_250_000n, output_tokens: 1000, output_from: 'request' });
    const over = b.maxCost(maxQuery({ inputTokens: 100, requestedOutputTokens: 1_000_000 }));
    expect(over).toMatchObject({ output_tokens: 16384, output_from: 'model' });
    const absent = b.maxCost(maxQuery({ inputTokens: 100 }));
    expect(absent).toMatchObject({
      cost_nanos: 164_090_000n, // 100 × 2.5 + 16384 × 10 = 164090 per 1M
      output_tokens: 16384,
      output_from: 'model',
    });
    const noMax = b.maxCost(maxQuery({ model: 'claude-x', inputTokens: 0 }));
    expect(noMax).toMatchObject({ output_tokens: DEFAULT_MAX_OUTPUT_TOKENS, output_from: 'default' });
  });

  it('several choices (n) multiply the output; embeddings have none', () => {
    const n3 = b.maxCost(maxQuery({ inputTokens: 0, requestedOutputTokens: 100, choices: 3 }));
    expect(n3).toMatchObject({ output_tokens: 300, cost_nanos: 3_000_000n });
    const emb = b.maxCost(
      maxQuery({ operation: 'embeddings', inputTokens: 1000, requestedOutputTokens: 50 }),
    );
    expect(emb).toMatchObject({ output_tokens: 0, cost_nanos: 2_500_000n });
  });

  it('adds per-request fees and per-image prices for the images asked for, then the multiplier stack', () => {
    const img = b.maxCost(maxQuery({ model: 'img', operation: 'image_generation', choices: 2 }));
    expect(img).toMatchObject({ cost_nanos: 80_000_000n });
    const fee = book([prices], { multipliers: { app: { team: '0.5' } } }).maxCost(
      maxQuery({ model: 'fee', app: 'team', inputTokens: 1_000_000, requestedOutputTokens: 10 }),
    );
    // (1 + 0.00001 + 0.01) × 0.5
    expect(fee).toMatchObject({ cost_nanos: 505_005_000n });
  });

  it('rounds a bound up, never down', () => {
    // 1 token × $0.0025 per 1M = 2.5 nanos → 3
    expect(b.maxCost(maxQuery({ model: 'tiny', inputTokens: 1, requestedOutputTokens: 0 }))).toMatchObject({
      cost_nanos: 3n,
    });
    // 21 tokens × $0.0001 per 1M = 2.1 nanos → 3
    const fine = book([table('currency: USD\nprices:\n  - {model: f, input: 0.0001, output: 0}\n')]);
    expect(fine.maxCost(maxQuery({ model: 'f', inputTokens: 21, requestedOutputTokens: 0 }))).toMatchObject({
      cost_nanos: 3n,
    });
  });

  it('is unknown (null with a reason) for an unpriced model or no model, never 0', () => {
    expect(b.maxCost(maxQuery({ model: 'mystery' }))).toMatchObject({
      cost_nanos: null,
      reason: expect.stringContaining('mystery') as unknown,
    });
    expect(b.maxCost(maxQuery({ model: undefined }))).toMatchObject({ cost_nanos: null });
  });
});
