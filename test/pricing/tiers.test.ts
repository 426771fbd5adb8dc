/**
 * Issue 13 tiered prices: `tiers:` above an input length, validated with file:line:field; the
 * whole request priced at the tier its prompt (input + cache reads + cache writes) exceeds;
 * maxCost bounds with every reachable tier; the LiteLLM importer; the reference preset.
 */
import { describe, expect, it } from 'vitest';
import { importLitellm, importToYaml } from '../../src/pricing/import.js';
import { loadPresetTables } from '../../src/pricing/index.js';
import { parsePriceTable } from '../../src/pricing/table.js';
import { readFileSync } from 'node:fs';
import { book, query, table } from './helpers.js';

const GEMINI = `currency: USD
unit: 1M
cache_read_ratio: 0.25
prices:
  - model: gemini-2.5-pro
    input: 1.25
    output: 10
    per_request: 0.001
    tiers:
      - above_input_tokens: 200000
        input: 2.5
        output: 15
      - above_input_tokens: 1000000
        input: 5
        output: 30
        cache_read: 1
`;
const gemini = book([table(GEMINI, 'gemini.yaml')]);
const price = (usage: Parameters<typeof query>[0]['usage']) =>
  gemini.price(query({ model: 'gemini-2.5-pro', usage }));

describe('tiers: cost', () => {
  it('below and at the threshold: the base prices', () => {
    // 200,000 prompt tokens is not *above* 200,000: 200,000 × 1.25 + 1,000 × 10 = 260,000 /1M + 0.001
    expect(price({ input: 200_000, output: 1_000 })).toMatchObject({
      cost_nanos: 261_000_000,
      price_id: 'gemini.yaml#gemini-2.5-pro@always',
      price_match: 'exact',
    });
  });

  it('above the threshold: the whole request at the tier, the fee is the entry’s', () => {
    // 200,001 × 2.5 + 1,000 × 15 = 515,002.5 /1M = 0.5150025 + 0.001
    expect(price({ input: 200_001, output: 1_000 })).toMatchObject({
      cost_nanos: 516_002_500,
      price_id: 'gemini.yaml#gemini-2.5-pro@always>200000',
    });
  });

  it('cached input counts toward the threshold; the tier’s cache price follows the file ratio', () => {
    // prompt 150,000 + 60,000 cached = 210,000 > 200,000: 150,000 × 2.5 + 60,000 × 0.625 + 100 × 15
    // = 375,000 + 37,500 + 1,500 = 414,000 /1M + 0.001
    expect(price({ input: 150_000, cacheRead: 60_000, output: 100 }).cost_nanos).toBe(415_000_000);
  });

  it('the highest tier exceeded wins', () => {
    // 1,000,001 × 5 + 10 × 30 = 5,000,305 /1M + 0.001
    expect(price({ input: 1_000_001, output: 10 })).toMatchObject({
      cost_nanos: 5_001_305_000,
      price_id: 'gemini.yaml#gemini-2.5-pro@always>1000000',
    });
  });

  it('maxCost uses the highest rates of every tier the prompt bound can reach', () => {
    const q = {
      model: 'gemini-2.5-pro',
      upstream: 'default',
      app: 'a',
      operation: 'chat' as const,
      at: new Date(),
      requestedOutputTokens: 1000,
    };
    // Bound 100,000 reaches no tier: 100,000 × 1.25 + 1,000 × 10 = 135,000 /1M + 0.001
    expect(gemini.maxCost({ ...q, inputTokens: 100_000 }).cost_nanos).toBe(136_000_000n);
    // Bound 300,000 may exceed 200,000: 300,000 × 2.5 + 1,000 × 15 = 765,000 /1M + 0.001
    expect(gemini.maxCost({ ...q, inputTokens: 300_000 }).cost_nanos).toBe(766_000_000n);
    // Bound 2,000,000: the 1M tier, 2,000,000 × 5 + 1,000 × 30 = 10,030,000 /1M + 0.001
    expect(gemini.maxCost({ ...q, inputTokens: 2_000_000 }).cost_nanos).toBe(10_031_000_000n);
  });
});

describe('tiers: validation (file:line:field)', () => {
  const problems = (tiers: string) =>
    parsePriceTable(
      `currency: USD\nprices:\n  - model: m\n    input: 1\n    output: 2\n    tiers:\n${tiers}`,
      't.yaml',
    ).problems.map((p) => `${p.file}:${p.line}: ${p.field}: ${p.message}`);

  it('thresholds must increase', () => {
    expect(
      problems(
        '      - { above_input_tokens: 200000, input: 2, output: 4 }\n      - { above_input_tokens: 128000, input: 3, output: 5 }\n',
      ),
    ).toEqual([
      "t.yaml:8: prices[0].tiers[1].above_input_tokens: thresholds must increase: 128000 is not above the previous tier's 200000",
    ]);
  });

  it('unknown keys, missing fields, bad values', () => {
    expect(problems('      - { above_input_tokens: 200000, input: 2, output: 4, per_image: 1 }\n')).toEqual([
      't.yaml:7: prices[0].tiers[0].per_image: unknown key',
    ]);
    expect(problems('      - { input: 2 }\n')).toEqual([
      't.yaml:7: prices[0].tiers[0].above_input_tokens: required: the prompt size (tokens) above which this tier applies',
      "t.yaml:7: prices[0].tiers[0].output: required: the tier's price per unit of output tokens",
    ]);
    expect(problems('      - { above_input_tokens: -5, input: 2, output: -1 }\n')).toEqual([
      't.yaml:7: prices[0].tiers[0].above_input_tokens: expected a positive whole number of tokens such as 16384 (at most 100000000)',
      't.yaml:7: prices[0].tiers[0].output: must not be negative (got -1)',
    ]);
    expect(problems('      []\n')).toEqual(['t.yaml:7: prices[0].tiers: expected a non-empty list of tiers']);
  });
});

describe('tiers: LiteLLM import', () => {
  it('*_above_200k_tokens become a tier that round-trips through our YAML', () => {
    const json = JSON.parse(readFileSync('test/fixtures/pricing/litellm-excerpt.json', 'utf8')) as Record<
      string,
      unknown
    >;
    const result = importLitellm(
      { 'claude-sonnet-4-5': json['claude-sonnet-4-5'] },
      { source: 'litellm.json' },
    );
    const yaml = importToYaml(result, '2026-11-30');
    expect(yaml).toContain(
      [
        '    tiers:',
        '      - above_input_tokens: 200000',
        '        input: 6',
        '        output: 22.5',
        '        cache_read: 0.6',
        '        cache_write: 7.5',
      ].join('\n'),
    );
    const t = table(yaml, 'imported.yaml');
    const b = book([t]);
    const usage = { input: 150_000, cacheRead: 60_000, output: 1_000 };
    expect(b.price(query({ model: 'claude-sonnet-4-5', operation: 'messages', usage })).cost_nanos).toBe(
      958_500_000,
    );
  });

  it('a tier that states only input keeps the base output; N k → N × 1000 tokens', () => {
    const r = importLitellm(
      {
        m: {
          mode: 'chat',
          input_cost_per_token: 1e-6,
          output_cost_per_token: 2e-6,
          input_cost_per_token_above_128k_tokens: 2e-6,
        },
      },
      { source: 's' },
    );
    expect(
      r.entries[0]!.tiers!.map((t) => [t.above_input_tokens, t.input.toFixed(), t.output.toFixed()]),
    ).toEqual([[128000, '2', '2']]);
  });
});

describe('tiers: reference preset (Claude Sonnet 4.5 long context)', () => {
  const reference = book([], { presets: loadPresetTables().filter((t) => t.name === 'reference.yaml') });
  const sonnet = (usage: Parameters<typeof query>[0]['usage']) =>
    reference.price(query({ model: 'claude-sonnet-4-5-20250929', operation: 'messages', usage }));

  it('worked example: 150,000 input + 60,000 cache read + 1,000 output = $0.9585 (> 200K: $6 / $0.60 / $22.50)', () => {
    // 150,000 × 6 + 60,000 × 0.6 + 1,000 × 22.5 = 900,000 + 36,000 + 22,500 = 958,500 per 1M
    expect(sonnet({ input: 150_000, cacheRead: 60_000, output: 1_000 })).toMatchObject({
      cost_nanos: 958_500_000,
      currency: 'USD',
      price_id: 'reference.yaml#claude-sonnet-4-5@always>200000',
      price_match: 'snapshot',
    });
  });

  it('the same request at exactly 200,000 prompt tokens bills the base: $0.453', () => {
    // 140,000 × 3 + 60,000 × 0.3 + 1,000 × 15 = 420,000 + 18,000 + 15,000 = 453,000 per 1M
    expect(sonnet({ input: 140_000, cacheRead: 60_000, output: 1_000 }).cost_nanos).toBe(453_000_000);
  });
});
