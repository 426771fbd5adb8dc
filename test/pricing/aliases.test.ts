/**
 * Issue 13 "prices that follow the model, not the spelling": the matching rules (exact → aliases →
 * normalized → dated snapshot → glob), never across families, and `prices check` warnings.
 */
import { describe, expect, it } from 'vitest';
import { matchWarnings, normalizedNames, snapshotBase } from '../../src/pricing/match.js';
import { parsePriceTable } from '../../src/pricing/table.js';
import { book, query, table } from './helpers.js';

const OPENAI = `currency: USD
unit: 1M
prices:
  - { model: gpt-4o, input: 2.5, output: 10, aliases: [chatgpt-4o-latest] }
  - { model: gpt-4o-mini, input: 0.15, output: 0.6 }
  - { model: gpt-4o-2024-05-13, input: 5, output: 15 }
  - { model: o1, input: 15, output: 60 }
  - { model: o1-mini, input: 1.1, output: 4.4 }
  - { model: gpt-3.5-turbo, input: 0.5, output: 1.5 }
  - { model: deepseek-chat, input: 0.28, output: 0.42 }
  - { model: "claude-3-7-sonnet-*", input: 3, output: 15 }
`;

const b = book([table(OPENAI, 'openai.yaml')]);
const match = (model: string) => {
  const r = b.price(query({ model, usage: { input: 1_000_000, output: 0 } }));
  return { price_id: r.price_id, price_match: r.price_match ?? null, cost_nanos: r.cost_nanos };
};

describe('name rules', () => {
  it('normalizedNames lower-cases and strips one vendor/ prefix', () => {
    expect(normalizedNames('OpenAI/GPT-4o')).toEqual(['openai/gpt-4o', 'gpt-4o']);
    expect(normalizedNames('gpt-4o')).toEqual(['gpt-4o']);
    expect(normalizedNames('a/b/c')).toEqual(['a/b/c', 'b/c']);
  });

  it('snapshotBase removes one trailing date, nothing else', () => {
    expect(snapshotBase('gpt-4o-2024-08-06')).toBe('gpt-4o');
    expect(snapshotBase('claude-3-5-sonnet-20241022')).toBe('claude-3-5-sonnet');
    expect(snapshotBase('claude-3-5-sonnet@20241022')).toBe('claude-3-5-sonnet');
    expect(snapshotBase('gpt-3.5-turbo-0125')).toBe('gpt-3.5-turbo');
    expect(snapshotBase('gpt-4o-mini')).toBeUndefined();
    expect(snapshotBase('o1-mini')).toBeUndefined();
    expect(snapshotBase('model-2024')).toBeUndefined(); // month 20: not a date
    expect(snapshotBase('qwen-1399')).toBeUndefined();
    expect(snapshotBase('gpt-4o-2024-13-01')).toBeUndefined();
  });
});

describe('matching order', () => {
  it('exact name', () => {
    expect(match('gpt-4o')).toEqual({
      price_id: 'openai.yaml#gpt-4o@always',
      price_match: 'exact',
      cost_nanos: 2_500_000_000,
    });
  });

  it('an exact dated entry beats the snapshot rule', () => {
    expect(match('gpt-4o-2024-05-13')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o-2024-05-13@always',
      price_match: 'exact',
    });
  });

  it('explicit aliases: exact names only', () => {
    expect(match('chatgpt-4o-latest')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o@always',
      price_match: 'alias',
    });
    expect(match('CHATGPT-4O-LATEST')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o@always',
      price_match: 'normalized',
    });
  });

  it('case and one provider prefix: normalized', () => {
    expect(match('GPT-4O-MINI')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o-mini@always',
      price_match: 'normalized',
    });
    expect(match('openai/gpt-4o-mini')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o-mini@always',
      price_match: 'normalized',
    });
    expect(match('deepseek/deepseek-chat')).toMatchObject({
      price_id: 'openai.yaml#deepseek-chat@always',
      price_match: 'normalized',
    });
    // The entry's own spelling is folded too.
    const upper = book([
      table('currency: USD\nprices:\n  - { model: GPT-4o, input: 1, output: 1 }\n', 'u.yaml'),
    ]);
    expect(upper.price(query({ model: 'gpt-4o', usage: { input: 1, output: 1 } }))).toMatchObject({
      price_id: 'u.yaml#GPT-4o@always',
      price_match: 'normalized',
    });
    // Only one prefix is removed.
    expect(match('x/openai/gpt-4o')).toMatchObject({ price_id: null, price_match: null });
  });

  it('dated snapshot falls back to its base when the base has an entry', () => {
    expect(match('gpt-4o-2024-08-06')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o@always',
      price_match: 'snapshot',
      cost_nanos: 2_500_000_000,
    });
    expect(match('gpt-3.5-turbo-0125')).toMatchObject({
      price_id: 'openai.yaml#gpt-3.5-turbo@always',
      price_match: 'snapshot',
    });
    expect(match('openai/GPT-4o-2024-08-06')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o@always',
      price_match: 'snapshot',
    });
  });

  it('never across families: gpt-4o-mini-2024-07-18 → gpt-4o-mini, never gpt-4o', () => {
    expect(match('gpt-4o-mini-2024-07-18')).toMatchObject({
      price_id: 'openai.yaml#gpt-4o-mini@always',
      price_match: 'snapshot',
      cost_nanos: 150_000_000,
    });
    const noMini = book([table(OPENAI.replace(/.*gpt-4o-mini.*\n/, ''), 'openai.yaml')]);
    expect(
      noMini.price(query({ model: 'gpt-4o-mini-2024-07-18', usage: { input: 1, output: 1 } })),
    ).toMatchObject({ cost_source: 'unpriced', price_id: null });
    expect(noMini.price(query({ model: 'gpt-4o-mini', usage: { input: 1, output: 1 } })).price_id).toBeNull();
  });

  it('o1 and o1-mini stay apart', () => {
    expect(match('o1-mini')).toMatchObject({ price_id: 'openai.yaml#o1-mini@always', price_match: 'exact' });
    expect(match('o1-mini-2024-09-12')).toMatchObject({
      price_id: 'openai.yaml#o1-mini@always',
      price_match: 'snapshot',
    });
    expect(match('o1-2024-12-17')).toMatchObject({
      price_id: 'openai.yaml#o1@always',
      price_match: 'snapshot',
    });
    expect(match('o1-preview')).toMatchObject({ price_id: null });
  });

  it('claude-3-5-sonnet-20241022 → claude-3-5-sonnet only when that base entry exists', () => {
    expect(match('claude-3-5-sonnet-20241022')).toMatchObject({ price_id: null, price_match: null });
    const withBase = book([
      table(`${OPENAI}  - { model: claude-3-5-sonnet, input: 3, output: 15 }\n`, 'openai.yaml'),
    ]);
    expect(
      withBase.price(query({ model: 'claude-3-5-sonnet-20241022', usage: { input: 1, output: 1 } })),
    ).toMatchObject({
      price_id: 'openai.yaml#claude-3-5-sonnet@always',
      price_match: 'snapshot',
    });
  });

  it('globs come last, also for a normalized name', () => {
    expect(match('claude-3-7-sonnet-20250219')).toMatchObject({
      price_id: 'openai.yaml#claude-3-7-sonnet-*@always',
      price_match: 'glob',
    });
    expect(match('anthropic/claude-3-7-sonnet-20250219')).toMatchObject({ price_match: 'glob' });
  });

  it('precedence tiers still come first: a user file snapshot beats a preset exact entry', () => {
    const preset = table(
      `currency: USD\nprices:\n  - { model: gpt-4o-2024-08-06, input: 2.5, output: 10 }\n`,
      'reference.yaml',
    );
    const user = table(
      `currency: CNY\nprices:\n  - { model: gpt-4o, input: 10, output: 40 }\n`,
      'relay.yaml',
    );
    const r = book([user], { presets: [preset] }).price(
      query({ model: 'gpt-4o-2024-08-06', usage: { input: 1, output: 1 } }),
    );
    expect(r).toMatchObject({
      price_id: 'relay.yaml#gpt-4o@always',
      price_match: 'snapshot',
      currency: 'CNY',
    });
  });

  it('an unpriced model keeps price_match null, and the record says why', () => {
    const r = b.price(query({ model: 'mystery-1', usage: { input: 1, output: 1 } }));
    expect(r).toMatchObject({ cost_nanos: null, cost_source: 'unpriced', price_id: null, price_match: null });
  });

  it('maxCost follows the same rules', () => {
    const r = b.maxCost({
      model: 'OpenAI/GPT-4o-2024-08-06',
      upstream: 'default',
      app: 'a',
      operation: 'chat',
      at: new Date(),
      inputTokens: 1000,
      requestedOutputTokens: 10,
    });
    expect(r).toMatchObject({ price_id: 'openai.yaml#gpt-4o@always' });
  });
});

describe('aliases: validation', () => {
  const problems = (entry: string) =>
    parsePriceTable(`currency: USD\nprices:\n${entry}`, 'a.yaml').problems.map(
      (p) => `${p.line}: ${p.field}: ${p.message}`,
    );

  it('names line and field of a bad alias', () => {
    expect(problems('  - { model: gpt-4o, input: 1, output: 1, aliases: [gpt-4o] }\n')).toEqual([
      '3: prices[0].aliases[0]: the alias is the model name itself',
    ]);
    expect(
      problems(
        '  - model: a\n    input: 1\n    output: 1\n    aliases:\n      - b\n      - "c*"\n      - b\n',
      ),
    ).toEqual([
      '8: prices[0].aliases[1]: an alias is an exact name (no * ? [): use a glob entry instead',
      '9: prices[0].aliases[2]: repeated alias b',
    ]);
    expect(problems('  - { model: "a-*", input: 1, output: 1, aliases: [b] }\n')[0]).toMatch(
      /^3: prices\[0\]\.aliases: a glob entry cannot have aliases/,
    );
    expect(problems('  - { model: a, input: 1, output: 1, aliaes: [b] }\n')[0]).toMatch(
      /did you mean aliases/,
    );
  });
});

describe('prices check warnings', () => {
  const warn = (text: string) =>
    matchWarnings([table(text, 'w.yaml')]).map((w) => `${w.line}: ${w.field}: ${w.message}`);

  it('an alias that is another entry’s model, and one alias on two models', () => {
    const w = warn(`currency: USD
prices:
  - { model: gpt-4o, input: 1, output: 1, aliases: [gpt-4o-mini, latest] }
  - { model: gpt-4o-mini, input: 1, output: 1, aliases: [latest] }
`);
    expect(w).toEqual([
      '3: prices[0].aliases[0]: alias gpt-4o-mini is the model of the entry at w.yaml:4, which always wins',
      '4: prices[1].aliases[0]: alias latest is also an alias of gpt-4o at w.yaml:3; the first wins',
    ]);
  });

  it('names equal but for case, and a glob the snapshot rule shadows at another price', () => {
    const w = warn(`currency: USD
prices:
  - { model: GPT-4o, input: 1, output: 1 }
  - { model: gpt-4o, input: 2, output: 2 }
  - { model: "gpt-4o-*", input: 3, output: 3 }
`);
    expect(w[0]).toBe(
      '4: prices[1].model: gpt-4o and GPT-4o (w.yaml:3) differ only in case: a request for either spelling in another case matches the first',
    );
    expect(
      w.slice(1).every((l) => l.startsWith('5: prices[2].model: glob gpt-4o-* does not see dated names')),
    ).toBe(true);
    expect(w).toHaveLength(2);
  });

  it('a glob shadowed at the same price is not worth a warning (the bundled presets)', () => {
    expect(
      warn(`currency: USD
prices:
  - { model: claude-sonnet-4-5, input: 3, output: 15 }
  - { model: "claude-sonnet-4-5-*", input: 3, output: 15 }
`),
    ).toEqual([]);
  });
});
