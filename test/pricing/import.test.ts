import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Dec, parseDecimal, unitsToNanos } from '../../src/pricing/money.js';
import { importLitellm, importOneApi, importToYaml } from '../../src/pricing/import.js';
import { parsePriceTable } from '../../src/pricing/table.js';
import type { Usage } from '../../src/record.js';
import { book, query } from './helpers.js';

const fixtureJson = (name: string): Record<string, Record<string, unknown>> =>
  JSON.parse(readFileSync(fileURLToPath(new URL(`../fixtures/pricing/${name}`, import.meta.url)), 'utf8'));

/** LiteLLM's own cost formula (litellm/cost_calculator: per-token costs × token counts). */
function litellmCost(info: Record<string, unknown>, u: Usage): bigint {
  const c = (k: string) => (info[k] === undefined ? undefined : parseDecimal(info[k] as number));
  const input = c('input_cost_per_token')!;
  const output = c('output_cost_per_token') ?? new Dec(0);
  const reasoningPrice = c('output_cost_per_reasoning_token') ?? output;
  let total = input.times(u.input ?? 0);
  total = total.plus((c('cache_read_input_token_cost') ?? input).times(u.cacheRead ?? 0));
  const h1 = u.cacheWrite1h ?? 0;
  const cw = c('cache_creation_input_token_cost') ?? input;
  total = total
    .plus(cw.times((u.cacheWrite ?? 0) - h1))
    .plus((c('cache_creation_input_token_cost_above_1hr') ?? cw).times(h1));
  total = total
    .plus(output.times((u.output ?? 0) - (u.reasoning ?? 0)))
    .plus(reasoningPrice.times(u.reasoning ?? 0));
  return unitsToNanos(total);
}

describe('import --from litellm', () => {
  const json = fixtureJson('litellm-excerpt.json');
  const result = importLitellm(json, { source: 'litellm-excerpt.json' });
  const yaml = importToYaml(result, '2026-11-23');
  const parsed = parsePriceTable(yaml, 'imported.yaml');

  it('keeps chat and embedding models, skips sample_spec and non-token modes', () => {
    expect(result.entries.map((e) => e.model)).toEqual([
      'gpt-4o',
      'o3',
      'claude-sonnet-4-5',
      'deepseek/deepseek-reasoner',
      'gemini/gemini-2.5-flash-preview-04-17',
      'text-embedding-3-small',
    ]);
    expect(result.skipped.map((s) => s.model).sort()).toEqual([
      '1024-x-1024/dall-e-3',
      'omni-moderation-latest',
      'whisper-1',
    ]);
  });

  it("carries LiteLLM's max_output_tokens (a positive count) into the entries", () => {
    expect(parsed.problems).toEqual([]);
    const byModel = new Map(parsed.table!.entries.map((e) => [e.model, e.maxOutputTokens]));
    expect(byModel.get('gpt-4o')).toBe(16384);
    expect(byModel.get('o3')).toBe(100000);
    expect(byModel.get('text-embedding-3-small')).toBeUndefined();
  });

  it('converts per-token costs exactly to per-1M prices', () => {
    expect(parsed.problems).toEqual([]);
    const byModel = new Map(parsed.table!.entries.map((e) => [e.model, e]));
    expect(byModel.get('gpt-4o')!.written).toEqual({ input: '2.5', output: '10', cache_read: '1.25' });
    expect(byModel.get('claude-sonnet-4-5')!.written).toMatchObject({
      cache_write: '3.75',
      cache_read: '0.3',
      cache_write_1h: '6',
    });
    expect(byModel.get('text-embedding-3-small')!.written).toEqual({ input: '0.02', output: '0' });
  });

  it('round-trips: the imported YAML prices requests exactly as LiteLLM would', () => {
    const b = book([parsed.table!]);
    const cases: Array<[string, Usage]> = [
      ['gpt-4o', { input: 1234, cacheRead: 766, output: 321 }],
      ['o3', { input: 10, cacheRead: 5000, output: 9000, reasoning: 8000 }],
      ['claude-sonnet-4-5', { input: 50, cacheWrite: 2000, cacheWrite1h: 500, cacheRead: 8000, output: 120 }],
      ['gemini/gemini-2.5-flash-preview-04-17', { input: 777, output: 5000, reasoning: 4000 }],
      ['deepseek/deepseek-reasoner', { input: 333, output: 4444 }],
    ];
    for (const [model, usage] of cases) {
      const r = b.price(query({ model, usage }));
      expect(r.cost_nanos, model).toBe(Number(litellmCost(json[model]!, usage)));
      expect(r.currency).toBe('USD');
    }
  });
});

/** one-api / new-api's quota formula, converted to currency units (500,000 quota = 1 unit). */
function oneapiCost(
  r: { model: number; completion: number; cache?: number; createCache?: number; group: number },
  u: Usage,
): bigint {
  const d = (n: number) => parseDecimal(n);
  const quota = d(u.input ?? 0)
    .plus(d(u.cacheRead ?? 0).times(d(r.cache ?? 1)))
    .plus(d(u.cacheWrite ?? 0).times(d(r.createCache ?? 1)))
    .plus(d(u.output ?? 0).times(d(r.completion)))
    .times(d(r.model))
    .times(d(r.group));
  return unitsToNanos(quota.div(500_000));
}

describe('import --from oneapi', () => {
  it('converts ratios with quota = (prompt + completion × completion_ratio) × model_ratio × group_ratio', () => {
    const json = fixtureJson('oneapi-ratios.json');
    const result = importOneApi(json, { groupRatio: '0.8', source: 'oneapi-ratios.json' });
    const parsed = parsePriceTable(importToYaml(result, '2026-11-23'), 'oneapi.yaml');
    expect(parsed.problems).toEqual([]);
    const gpt4o = parsed.table!.entries.find((e) => e.model === 'gpt-4o')!;
    // ratio 1.25 → $2.50 / 1M, × group 0.8 → 2; completion ×4 → 8.
    expect(gpt4o.written).toEqual({ input: '2', output: '8' });
    // qwen-plus has no completion_ratio: taken as 1 (0.4 × 2 × 0.8 = 0.64).
    expect(parsed.table!.entries.find((e) => e.model === 'qwen-plus')!.written).toEqual({
      input: '0.64',
      output: '0.64',
    });
    const b = book([parsed.table!]);
    const ratios = json.model_ratio as Record<string, number>;
    const completion = json.completion_ratio as Record<string, number>;
    for (const model of Object.keys(ratios)) {
      const usage = { input: 12345, output: 678 };
      expect(b.price(query({ model, usage })).cost_nanos, model).toBe(
        Number(oneapiCost({ model: ratios[model]!, completion: completion[model] ?? 1, group: 0.8 }, usage)),
      );
    }
  });

  it('takes group_ratio.<group> from the file when --group-ratio is not given', () => {
    const json = fixtureJson('oneapi-ratios.json');
    const vip = importOneApi(json, { group: 'vip', source: 'x' });
    expect(vip.entries.find((e) => e.model === 'gpt-4o')!.input.toFixed()).toBe('2');
    const dflt = importOneApi(json, { source: 'x' });
    expect(dflt.entries.find((e) => e.model === 'gpt-4o')!.input.toFixed()).toBe('2.5');
  });

  it('reads a new-api options export: JSON-string values, cache ratios and per-call prices', () => {
    const json = fixtureJson('newapi-options.json');
    const result = importOneApi(json, { source: 'newapi-options.json' });
    const parsed = parsePriceTable(importToYaml(result, '2026-11-23'), 'newapi.yaml');
    expect(parsed.problems).toEqual([]);
    const claude = parsed.table!.entries.find((e) => e.model === 'claude-sonnet-4-20250514')!;
    expect(claude.written).toEqual({ input: '3', output: '15', cache_read: '0.3', cache_write: '3.75' });
    const mj = parsed.table!.entries.find((e) => e.model === 'mj_imagine')!;
    expect(mj.written).toEqual({ input: '0', output: '0', per_request: '0.1' });
    const b = book([parsed.table!]);
    const usage = { input: 50, cacheRead: 8000, cacheWrite: 2000, output: 120 };
    expect(b.price(query({ model: 'claude-sonnet-4-20250514', usage })).cost_nanos).toBe(
      Number(oneapiCost({ model: 1.5, completion: 5, cache: 0.1, createCache: 1.25, group: 1 }, usage)),
    );
    const ds = { input: 1000, cacheRead: 3000, output: 700 };
    expect(b.price(query({ model: 'deepseek-reasoner', usage: ds })).cost_nanos).toBe(
      Number(oneapiCost({ model: 0.275, completion: 3.982, cache: 0.25, group: 1 }, ds)),
    );
  });

  it('refuses a file without ratios', () => {
    expect(() => importOneApi({ foo: 'bar' }, { source: 'x' })).toThrow(/model_ratio/);
  });
});
