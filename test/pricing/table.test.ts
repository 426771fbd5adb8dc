import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../../src/errors.js';
import { loadPriceTable, parsePriceTable } from '../../src/pricing/table.js';

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/pricing/${name}`, import.meta.url));

describe('price file validation names file, line and field', () => {
  it('reports every problem of a file with its line', () => {
    let error: unknown;
    try {
      loadPriceTable(fixture('bad-prices.yaml'));
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.map((p) => `${p.line}:${p.field}: ${p.message}`);
    expect(problems).toEqual([
      '6:prices[0].ouput: unknown key (did you mean output?)',
      '4:prices[0].output: required: price per unit of output tokens (0 if free)',
      '8:prices[1].input: must not be negative (got -0.68)',
      '13:prices[2].effective_from: not a real date: 2026-02-30',
      '15:prices[3].input: expected a number such as 0.81, got "cheap"',
    ]);
    expect((error as ConfigError).code).toBe('PRICES_INVALID');
    expect((error as ConfigError).message).toContain('bad-prices.yaml:6:5: prices[0].ouput: unknown key');
  });

  it('rejects unknown units and bad currency codes', () => {
    const { table, problems } = parsePriceTable('currency: usd\nunit: 1G\nprices: []\n', 'u.yaml');
    expect(table).toBeUndefined();
    expect(problems.map((p) => `${p.line}:${p.field}`)).toEqual(['1:currency', '2:unit']);
    expect(problems[1]!.message).toContain('use 1M or 1K');
  });

  it('rejects unknown file-level keys, missing currency and missing prices', () => {
    const { problems } = parsePriceTable('cache_read_ration: 0.1\n', 'f.yaml');
    expect(problems.map((p) => p.field)).toEqual(['cache_read_ration', 'currency', 'prices']);
  });

  it('reports YAML syntax errors with a line', () => {
    const { problems } = parsePriceTable('currency: USD\nprices:\n  - model: [unclosed\n', 'y.yaml');
    expect(problems.length).toBeGreaterThan(0);
    expect(problems[0]!.line).toBeGreaterThanOrEqual(3);
  });

  it('rejects a duplicate model/upstream/effective_from in one file', () => {
    const { problems } = parsePriceTable(
      'currency: USD\nprices:\n  - {model: a, input: 1, output: 1}\n  - {model: a, input: 2, output: 2}\n',
      'd.yaml',
    );
    expect(problems).toHaveLength(1);
    expect(problems[0]!.line).toBe(4);
    expect(problems[0]!.message).toContain('line 3');
  });

  it('reads JSON price files with line numbers and keeps decimals exact', () => {
    const t = loadPriceTable(fixture('valid-prices.json'));
    expect(t.unit).toBe('1K');
    expect(
      t.entries.map((e) => [e.model, e.upstream, e.prices.input.toFixed(), e.prices.output.toFixed()]),
    ).toEqual([
      ['gpt-3.5-turbo', undefined, '0.0005', '0.0015'],
      ['my-*', 'lab', '0.001', '0.002'],
    ]);
    expect(t.entries[1]!.line).toBe(6);
    const bad = parsePriceTable(
      '{\n  "currency": "USD",\n  "prices": [\n    {"model": "x", "input": 1, "outptu": 2}\n  ]\n}\n',
      'b.json',
    );
    expect(bad.problems.map((p) => `${p.line}:${p.field}`)).toContain('4:prices[0].outptu');
  });

  it('keeps money literals exact (no float): 0.1 + 0.2 style values and exponents', () => {
    const t = parsePriceTable(
      'currency: USD\nprices:\n  - {model: a, input: 0.1, output: 2.5e-6}\n',
      'e.yaml',
    ).table!;
    expect(t.entries[0]!.prices.input.plus(0.2).toFixed()).toBe('0.3');
    expect(t.entries[0]!.prices.output.toFixed()).toBe('0.0000025');
  });
});
