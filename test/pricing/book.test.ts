import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { TablePriceBook } from '../../src/pricing/book.js';
import { book, NO_MULTIPLIERS, query, table } from './helpers.js';

const CAILAG = table(
  `currency: CNY
unit: 1M
prices:
  - model: deepseek-chat
    input: 0.81
    output: 1.62
    cache_read: 0.081
`,
  'cailag.yaml',
);

const ANTHROPIC = table(
  `currency: USD
unit: 1M
cache_read_ratio: 0.1
cache_write_ratio: 1.25
prices:
  - model: claude-sonnet-4-5
    input: 3
    output: 15
    cache_write_1h: 6
`,
  'anthropic.yaml',
);

describe('§5.6 worked examples', () => {
  it('deepseek-chat via cailag: 400 uncached + 600 cached + 500 output = ¥0.0011826 = 1182600 nanos', () => {
    // OpenAI-shaped usage: prompt 1000 of which 600 cached → decoders give input 400, cacheRead 600.
    const r = book([CAILAG]).price(query({ usage: { input: 400, cacheRead: 600, output: 500 } }));
    expect(r.cost_nanos).toBe(1182600);
    expect(r.currency).toBe('CNY');
    expect(r.cost_source).toBe('computed');
    expect(r.price_id).toBe('cailag.yaml#deepseek-chat@always');
    expect(r.multiplier).toBe('1');
  });

  it('the same request with an upstream multiplier 0.8 costs 946080 nanos', () => {
    const b = book([CAILAG], {
      upstreams: [
        {
          name: 'default',
          url: new URL('https://cailag.xin/v1'),
          multiplier: '0.8',
          trustReportedCost: false,
        },
      ],
    });
    const r = b.price(query({ usage: { input: 400, cacheRead: 600, output: 500 } }));
    expect(r.cost_nanos).toBe(946080);
    expect(r.multiplier).toBe('0.8');
  });

  it('Anthropic-shaped usage with file cache ratios: 11850 per 1M = $0.01185 = 11850000 nanos', () => {
    const r = book([ANTHROPIC]).price(
      query({
        model: 'claude-sonnet-4-5',
        operation: 'messages',
        usage: { input: 50, cacheWrite: 2000, cacheRead: 8000, output: 120 },
      }),
    );
    expect(r.cost_nanos).toBe(11850000);
    expect(r.currency).toBe('USD');
  });

  it('an unknown model is unpriced: cost NULL (not 0) with a reason, and warned about once', () => {
    const lines: string[] = [];
    const b = new TablePriceBook(
      [CAILAG],
      [],
      NO_MULTIPLIERS,
      [{ name: 'default', url: new URL('https://cailag.xin/v1'), trustReportedCost: false }],
      createLogger('info', (l) => lines.push(l)),
    );
    const r = b.price(query({ model: 'mystery-1', usage: { input: 10, output: 10 } }));
    expect(r.cost_nanos).toBeNull();
    expect(r.cost_source).toBe('unpriced');
    expect(r.currency).toBeNull();
    expect(r.reason).toContain('mystery-1');
    b.price(query({ model: 'mystery-1', usage: { input: 10, output: 10 } }));
    expect(lines.filter((l) => l.includes('mystery-1'))).toHaveLength(1);
  });

  it('caps the distinct unpriced models it warns about', () => {
    const lines: string[] = [];
    const b = new TablePriceBook(
      [CAILAG],
      [],
      NO_MULTIPLIERS,
      [],
      createLogger('info', (l) => lines.push(l)),
    );
    for (let i = 0; i < 250; i++) b.price(query({ model: `random-${i}`, usage: { input: 1, output: 1 } }));
    expect(lines.filter((l) => l.includes('no price entry'))).toHaveLength(200);
    expect(lines.filter((l) => l.includes('no more warnings'))).toHaveLength(1);
  });
});

describe('token kinds', () => {
  it('cached tokens are billed once: OpenAI prompt includes cached, decoders pass uncached input', () => {
    // 1000 prompt tokens, 600 cached, at 0.81/0.081 per 1M: 400×0.81 + 600×0.081 = 372.6 → 372600 nanos.
    const b = book([CAILAG]);
    expect(b.price(query({ usage: { input: 400, cacheRead: 600, output: 0 } })).cost_nanos).toBe(372600);
    // Billing the whole prompt at input price plus the cached part again would give 858600.
    expect(b.price(query({ usage: { input: 1000, output: 0 } })).cost_nanos).toBe(810000);
  });

  it('Anthropic cache writes and reads are separate from input_tokens', () => {
    const b = book([ANTHROPIC]);
    const only = (usage: object) =>
      b.price(
        query({
          model: 'claude-sonnet-4-5',
          operation: 'messages',
          usage: { input: 0, output: 0, ...usage },
        }),
      ).cost_nanos;
    expect(only({ cacheWrite: 1_000_000 })).toBe(3_750_000_000); // 3 × 1.25
    expect(only({ cacheRead: 1_000_000 })).toBe(300_000_000); // 3 × 0.1
  });

  it('1h cache writes use cache_write_1h; the rest of cache_write uses the 5m price', () => {
    const b = book([ANTHROPIC]);
    const r = b.price(
      query({
        model: 'claude-sonnet-4-5',
        operation: 'messages',
        usage: { input: 0, output: 0, cacheWrite: 3_000_000, cacheWrite1h: 1_000_000 },
      }),
    );
    // 2M × 3.75 + 1M × 6 = 13.5 USD
    expect(r.cost_nanos).toBe(13_500_000_000);
  });

  it('cache_write_1h defaults to cache_write when absent', () => {
    const t = table(`currency: USD\ncache_write_ratio: 1.25\nprices:\n  - {model: m, input: 4, output: 8}\n`);
    const r = book([t]).price(
      query({ model: 'm', usage: { input: 0, output: 0, cacheWrite: 1000, cacheWrite1h: 1000 } }),
    );
    expect(r.cost_nanos).toBe(5_000_000); // 1000 × 5 / 1M = 0.005 units
  });

  it('cache prices default to the input price when the file has no ratios', () => {
    const t = table(`currency: USD\nprices:\n  - {model: m, input: 2, output: 8}\n`);
    const r = book([t]).price(
      query({ model: 'm', usage: { input: 0, cacheRead: 1000, cacheWrite: 1000, output: 0 } }),
    );
    expect(r.cost_nanos).toBe(4_000_000); // (1000 × 2 + 1000 × 2) / 1M
  });

  it('reasoning is billed as output by default and never on top of output', () => {
    const t = table(`currency: USD\nprices:\n  - {model: o3, input: 2, output: 8}\n`);
    const r = book([t]).price(query({ model: 'o3', usage: { input: 0, output: 1000, reasoning: 800 } }));
    expect(r.cost_nanos).toBe(8_000_000); // 1000 × 8 / 1M, not 1800 × 8
  });

  it('a distinct reasoning price bills output−reasoning at output and reasoning at reasoning', () => {
    const t = table(`currency: USD\nprices:\n  - {model: r, input: 1, output: 2, reasoning: 10}\n`);
    const r = book([t]).price(query({ model: 'r', usage: { input: 0, output: 1000, reasoning: 400 } }));
    expect(r.cost_nanos).toBe(5_200_000); // (600 × 2 + 400 × 10) / 1M = 0.0052
  });

  it('images are billed per image; per-request fees are added once per request', () => {
    const t = table(
      `currency: USD\nprices:\n  - {model: dall-e-3, input: 0, output: 0, per_image: 0.04}\n  - {model: search, input: 1, output: 1, per_request: 0.005}\n`,
    );
    const b = book([t]);
    expect(
      b.price(query({ model: 'dall-e-3', operation: 'image_generation', usage: { images: 3 } })).cost_nanos,
    ).toBe(120_000_000);
    expect(b.price(query({ model: 'search', usage: { input: 1000, output: 1000 } })).cost_nanos).toBe(
      2_000_000 + 5_000_000,
    );
  });

  it('embeddings need only input tokens', () => {
    const t = table(`currency: USD\nprices:\n  - {model: text-embedding-3-small, input: 0.02, output: 0}\n`);
    const r = book([t]).price(
      query({ model: 'text-embedding-3-small', operation: 'embeddings', usage: { input: 1_000_000 } }),
    );
    expect(r.cost_nanos).toBe(20_000_000);
  });

  it('missing input or output on a chat request is unknown, not zero', () => {
    const b = book([CAILAG]);
    const noOutput = b.price(query({ usage: { input: 100 } }));
    expect(noOutput.cost_nanos).toBeNull();
    expect(noOutput.cost_source).toBe('unpriced');
    expect(noOutput.reason).toBe('usage incomplete: output not reported');
    expect(noOutput.price_id).toBe('cailag.yaml#deepseek-chat@always');
    expect(b.price(query({ usage: {} })).reason).toBe('usage missing');
  });

  it('unit 1K prices per thousand tokens', () => {
    const t = table(`currency: USD\nunit: 1K\nprices:\n  - {model: m, input: 0.002, output: 0.002}\n`);
    expect(book([t]).price(query({ model: 'm', usage: { input: 1000, output: 500 } })).cost_nanos).toBe(
      3_000_000,
    );
  });

  it('rounds half-up exactly once, at .5 nanos', () => {
    // 1 token × 0.0005 per 1M = 0.0000000005 units = 0.5 nanos → 1.
    const t = table(`currency: USD\nprices:\n  - {model: m, input: 0.0005, output: 0.0015}\n`);
    const b = book([t]);
    expect(b.price(query({ model: 'm', usage: { input: 1, output: 0 } })).cost_nanos).toBe(1);
    // A cache read defaults to the input price: 0.5 nanos again → 1.
    expect(b.price(query({ model: 'm', usage: { input: 0, output: 0, cacheRead: 1 } })).cost_nanos).toBe(1);
    // Two half-nanos summed before rounding: 0.5 + 1.5 = 2 (per-kind rounding would give 1 + 2 = 3).
    expect(b.price(query({ model: 'm', usage: { input: 1, output: 1 } })).cost_nanos).toBe(2);
    const t2 = table(`currency: USD\nprices:\n  - {model: m, input: 0.0004, output: 0}\n`);
    expect(book([t2]).price(query({ model: 'm', usage: { input: 1, output: 0 } })).cost_nanos).toBe(0);
  });
});

describe('matching', () => {
  const T = table(
    `currency: USD
prices:
  - {model: "gpt-4o*", input: 9, output: 9}
  - {model: gpt-4o-mini, input: 0.15, output: 0.6}
  - {model: "gpt-*", input: 7, output: 7}
  - {model: gpt-4o-mini, upstream: cheap, input: 0.1, output: 0.1}
  - {model: old, input: 1, output: 1}
  - {model: old, input: 2, output: 2, effective_from: 2026-10-01}
  - {model: old, input: 3, output: 3, effective_from: "2026-11-01T12:00:00Z"}
`,
    'user.yaml',
  );
  const upstreams = [
    { name: 'default', url: new URL('https://cailag.xin/v1'), trustReportedCost: false },
    { name: 'cheap', url: new URL('https://cheap.example/v1'), trustReportedCost: false },
  ];
  const b = book([T], { upstreams });
  const million = { input: 1_000_000, output: 0 };

  it('an exact name beats an earlier glob; among globs the first wins', () => {
    expect(b.price(query({ model: 'gpt-4o-mini', usage: million })).price_id).toBe(
      'user.yaml#gpt-4o-mini@always',
    );
    expect(b.price(query({ model: 'gpt-4o-2024', usage: million })).price_id).toBe(
      'user.yaml#gpt-4o*@always',
    );
    expect(b.price(query({ model: 'gpt-5', usage: million })).cost_nanos).toBe(7_000_000_000);
  });

  it('model globs use SQLite GLOB sets; an exact name still beats them', () => {
    const sets = table(
      `currency: USD\nprices:\n  - {model: "claude-[34]-*", input: 3, output: 3}\n  - {model: "claude-[^34]-*", input: 9, output: 9}\n  - {model: claude-3-haiku, input: 1, output: 1}\n`,
      'sets.yaml',
    );
    const bs = book([sets]);
    expect(bs.price(query({ model: 'claude-3-opus', usage: million })).price_id).toBe(
      'sets.yaml#claude-[34]-*@always',
    );
    expect(bs.price(query({ model: 'claude-5-opus', usage: million })).price_id).toBe(
      'sets.yaml#claude-[^34]-*@always',
    );
    expect(bs.price(query({ model: 'claude-3-haiku', usage: million })).price_id).toBe(
      'sets.yaml#claude-3-haiku@always',
    );
  });

  it('an unconfigured upstream name sees unscoped tables, including its own per-upstream entries', () => {
    expect(b.price(query({ model: 'gpt-4o-mini', upstream: 'nope', usage: million })).price_id).toBe(
      'user.yaml#gpt-4o-mini@always',
    );
    const scoped = table(
      `currency: USD\nhosts: [cailag.xin]\nprices:\n  - {model: only-here, input: 1, output: 1}\n  - {model: x, upstream: ghost, input: 1, output: 1}\n`,
      'scoped.yaml',
    );
    const ghost = table(
      `currency: USD\nprices:\n  - {model: x, upstream: ghost, input: 2, output: 2}\n`,
      'g.yaml',
    );
    const b3 = book([ghost], { presets: [scoped], upstreams });
    expect(b3.price(query({ model: 'only-here', upstream: 'ghost', usage: million })).cost_source).toBe(
      'unpriced',
    );
    expect(b3.price(query({ model: 'x', upstream: 'ghost', usage: million })).price_id).toBe(
      'g.yaml#x[ghost]@always',
    );
    expect(b3.tablesFor('ghost').map((t) => t.table.name)).toEqual(['g.yaml']);
    expect(b3.tablesFor('default').map((t) => t.table.name)).toEqual(['g.yaml', 'scoped.yaml']);
  });

  it('a per-upstream entry beats a generic one for that upstream only', () => {
    const r = b.price(query({ model: 'gpt-4o-mini', upstream: 'cheap', usage: million }));
    expect(r.cost_nanos).toBe(100_000_000);
    expect(r.price_id).toBe('user.yaml#gpt-4o-mini[cheap]@always');
    expect(b.price(query({ model: 'gpt-4o-mini', usage: million })).cost_nanos).toBe(150_000_000);
  });

  it('effective_from switches exactly at the boundary', () => {
    const at = (iso: string) => b.price(query({ model: 'old', at: new Date(iso), usage: million }));
    expect(at('2026-09-30T23:59:59.999Z').cost_nanos).toBe(1_000_000_000);
    expect(at('2026-10-01T00:00:00.000Z').cost_nanos).toBe(2_000_000_000);
    expect(at('2026-10-01T00:00:00.000Z').price_id).toBe('user.yaml#old@2026-10-01');
    expect(at('2026-11-01T11:59:59.999Z').cost_nanos).toBe(2_000_000_000);
    expect(at('2026-11-01T12:00:00.000Z').cost_nanos).toBe(3_000_000_000);
  });

  it("an entry from a user's file beats a preset entry for the same model", () => {
    const preset = table(
      `currency: USD\nprices:\n  - {model: gpt-4o-mini, input: 5, output: 5}\n`,
      'reference.yaml',
    );
    const withPreset = book([T], { presets: [preset], upstreams });
    expect(withPreset.price(query({ model: 'gpt-4o-mini', usage: million })).price_id).toBe(
      'user.yaml#gpt-4o-mini@always',
    );
    // ... and the preset still prices models the user did not list.
    const onlyPreset = book([], { presets: [preset], upstreams });
    expect(onlyPreset.price(query({ model: 'gpt-4o-mini', usage: million })).price_id).toBe(
      'reference.yaml#gpt-4o-mini@always',
    );
  });

  it('a later user file overlays an earlier one', () => {
    const a = table(`currency: USD\nprices:\n  - {model: x, input: 1, output: 1}\n`, 'a.yaml');
    const z = table(`currency: USD\nprices:\n  - {model: x, input: 2, output: 2}\n`, 'z.yaml');
    expect(book([a, z]).price(query({ model: 'x', usage: million })).price_id).toBe('z.yaml#x@always');
  });

  it('a host-scoped preset applies to any upstream on that host, before the reference list', () => {
    const gateway = table(
      `currency: CNY\nhosts: [cailag.xin]\nprices:\n  - {model: deepseek-chat, input: 0.81, output: 1.62}\n`,
      'cailag.yaml',
    );
    const reference = table(
      `currency: USD\nprices:\n  - {model: deepseek-chat, input: 0.27, output: 1.1}\n`,
      'reference.yaml',
    );
    const b2 = book([], { presets: [reference, gateway], upstreams });
    expect(b2.price(query({ model: 'deepseek-chat', usage: million })).price_id).toBe(
      'cailag.yaml#deepseek-chat@always',
    );
    expect(b2.price(query({ model: 'deepseek-chat', upstream: 'cheap', usage: million })).price_id).toBe(
      'reference.yaml#deepseek-chat@always',
    );
  });
});

describe('multipliers', () => {
  it('multiplies upstream, app and model-glob multipliers on a CNY price, keeping the exact product', () => {
    const b = book([CAILAG], {
      upstreams: [
        {
          name: 'default',
          url: new URL('https://cailag.xin/v1'),
          multiplier: '0.85',
          trustReportedCost: false,
        },
      ],
      multipliers: {
        upstream: { default: '1.1' },
        app: { web: '0.5' },
        model: { 'deepseek-*': '0.9', other: '7' },
      },
    });
    const r = b.price(query({ app: 'web', usage: { input: 400, cacheRead: 600, output: 500 } }));
    // 0.85 × 1.1 × 0.5 × 0.9 = 0.42075; 1182.6 × 0.42075 = 497.578950 → 497578.95 nanos → 497579.
    expect(r.multiplier).toBe('0.42075');
    expect(r.cost_nanos).toBe(497579);
    expect(r.currency).toBe('CNY');
    const other = b.price(query({ app: 'batch', usage: { input: 400, cacheRead: 600, output: 500 } }));
    expect(other.multiplier).toBe('0.8415');
  });
});

describe('upstream-reported cost', () => {
  const upstreams = (trust: boolean) => [
    { name: 'default', url: new URL('https://cailag.xin/v1'), trustReportedCost: trust },
  ];
  const usage = { input: 400, cacheRead: 600, output: 500 };

  it('is recorded beside the computed cost when not trusted', () => {
    const r = book([CAILAG], { upstreams: upstreams(false) }).price(
      query({ usage, upstreamCost: { amount: '0.0012' } }),
    );
    expect(r.cost_source).toBe('computed');
    expect(r.cost_nanos).toBe(1182600);
    expect(r.upstream_reported_cost_nanos).toBe(1200000);
    expect(r.upstream_reported_currency).toBe('CNY');
  });

  it('becomes the cost when trusted, keeping the computed one', () => {
    const r = book([CAILAG], { upstreams: upstreams(true) }).price(
      query({ usage, upstreamCost: { amount: '0.0012', currency: 'CNY' } }),
    );
    expect(r.cost_source).toBe('upstream');
    expect(r.cost_nanos).toBe(1200000);
    expect(r.computed_cost_nanos).toBe(1182600);
    expect(r.upstream_reported_cost_nanos).toBe(1200000);
  });

  it('prices an unknown model from the gateway figure when trusted and the currency is stated', () => {
    const r = book([CAILAG], { upstreams: upstreams(true) }).price(
      query({ model: 'mystery', usage, upstreamCost: { amount: '0.5', currency: 'USD' } }),
    );
    expect(r.cost_source).toBe('upstream');
    expect(r.cost_nanos).toBe(500_000_000);
    expect(r.computed_cost_nanos).toBeNull();
  });
});

describe('edge cases', () => {
  const IMG = table(`currency: USD\nprices:\n  - {model: dall-e-3, input: 0, output: 0, per_image: 0.04}\n`);

  it('an image request without an image count is unknown', () => {
    const r = book([IMG]).price(
      query({ model: 'dall-e-3', operation: 'image_generation', usage: { input: 5 } }),
    );
    expect(r.cost_nanos).toBeNull();
    expect(r.reason).toBe('usage incomplete: images not reported');
  });

  it('inconsistent usage is unknown, not guessed', () => {
    const b = book([CAILAG]);
    expect(b.price(query({ usage: { input: 1, output: 5, reasoning: 6 } })).reason).toBe(
      'usage inconsistent: reasoning exceeds output',
    );
    expect(
      b.price(query({ usage: { input: 1, output: 5, cacheWrite: 1, cacheWrite1h: 2 } })).cost_nanos,
    ).toBeNull();
  });

  it('multiplier model keys use SQLite GLOB sets', () => {
    const b = book([CAILAG], { multipliers: { model: { 'deepseek-[cr]*': '0.5', 'deepseek-*': '0.9' } } });
    expect(b.price(query({ usage: { input: 1, output: 1 } })).multiplier).toBe('0.5');
    expect(b.multiplierFor('default', 'default', 'deepseek-v3').toFixed()).toBe('0.9');
    expect(b.multiplierFor('default', 'default', undefined).toFixed()).toBe('1');
  });

  it('an exact model multiplier beats a glob written before it', () => {
    const b = book([CAILAG], { multipliers: { model: { 'deepseek-*': '0.5', 'deepseek-chat': '2' } } });
    expect(b.price(query({ usage: { input: 1000, output: 0 } })).multiplier).toBe('2');
  });

  it('a trusted reported cost without any known currency is kept but not used as the cost', () => {
    const b = book([CAILAG], {
      upstreams: [{ name: 'default', url: new URL('https://cailag.xin/v1'), trustReportedCost: true }],
    });
    const r = b.price(
      query({ model: 'mystery', usage: { input: 1, output: 1 }, upstreamCost: { amount: '0.25' } }),
    );
    expect(r.cost_source).toBe('unpriced');
    expect(r.cost_nanos).toBeNull();
    expect(r.upstream_reported_cost_nanos).toBe(250_000_000);
    expect(r.upstream_reported_currency).toBeNull();
  });

  it('a request without a model is unpriced', () => {
    expect(
      book([CAILAG]).price(query({ model: undefined, usage: { input: 1, output: 1 } })).cost_source,
    ).toBe('unpriced');
  });
});
