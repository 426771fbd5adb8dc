/**
 * Issue 5 "Done when" (DESIGN.md §5.6 worked examples) through the real `tokenmeter serve` child
 * process: exact cost_nanos, currency, cost_source, price_id and multiplier on the audit row, with
 * exact token counts forced through the fake gateway's `x-fake-usage` knob. Also: every bundled
 * preset passes `tokenmeter prices check` as a real child process.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeGateway } from '../fake-gateway/index.js';
import {
  closeWorld,
  ROOT,
  rowByRequestId,
  runCli,
  serveConfig,
  startWorld,
  waitForRows,
  type Row,
  type ServeProcess,
  type TempDir,
} from './helpers.js';

const KEY = 'sk-e2e-costs-secret';

// §5.6: DeepSeek in CNY per 1M tokens.
const CNY_PRICES = `currency: CNY
unit: 1M
prices:
  - { model: deepseek-chat, input: 0.81, output: 1.62, cache_read: 0.081 }
`;
// §5.6: Anthropic-shaped entry whose cache prices come from the file's ratios.
const USD_PRICES = `currency: USD
unit: 1M
cache_write_ratio: 1.25
cache_read_ratio: 0.1
prices:
  - { model: claude-e2e, input: 3, output: 15 }
`;

// 1,000 prompt tokens of which 600 cached, 500 output, as DeepSeek states them (both its own
// hit/miss pair and the OpenAI-style details).
const DEEPSEEK_USAGE = {
  prompt_tokens: 1000,
  completion_tokens: 500,
  total_tokens: 1500,
  prompt_tokens_details: { cached_tokens: 600 },
  prompt_cache_hit_tokens: 600,
  prompt_cache_miss_tokens: 400,
};
// 400 × 0.81 + 600 × 0.081 + 500 × 1.62 = 1182.6 CNY per 1M → 0.0011826 CNY.
const DEEPSEEK_NANOS = 1_182_600;
const ANTHROPIC_USAGE = {
  input_tokens: 50,
  cache_creation_input_tokens: 2000,
  cache_read_input_tokens: 8000,
  output_tokens: 120,
};
// 50 × 3 + 2000 × 3.75 + 8000 × 0.3 + 120 × 15 = 11850 USD per 1M → 0.01185 USD.
const ANTHROPIC_NANOS = 11_850_000;

let gateway: FakeGateway;
let serve: ServeProcess;
let tmp: TempDir;
let dbPath: string;

beforeAll(async () => {
  ({ gateway, tmp, dbPath } = await startWorld('tm-e2e-costs-', {
    'cny.yaml': CNY_PRICES,
    'usd.yaml': USD_PRICES,
  }));
  serve = await serveConfig(
    tmp.dir,
    `db: audit.db
presets: false
prices: [cny.yaml, usd.yaml]
upstreams:
  - { name: fake, url: "${gateway.url}/v1" }
  - { name: discounted, url: "${gateway.url}/v1", prefix: /disc, multiplier: 0.8 }
  - { name: trusted, url: "${gateway.url}/v1", prefix: /trust, trust_reported_cost: true }
`,
  );
}, 60_000);

afterAll(async () => {
  if (serve !== undefined) expect(await serve.stop()).toBe(0);
  await closeWorld({ gateway, tmp });
});

async function one(send: () => Promise<unknown>): Promise<Row> {
  const before = gateway.requests.length;
  await send();
  expect(gateway.requests.length).toBe(before + 1);
  return rowByRequestId(await waitForRows(dbPath, before + 1), `req-${before + 1}`);
}

function costOf(row: Row): Record<string, unknown> {
  return {
    upstream: row.upstream,
    usage_source: row.usage_source,
    cost_nanos: row.cost_nanos,
    currency: row.currency,
    cost_source: row.cost_source,
    price_id: row.price_id,
    multiplier: row.multiplier,
  };
}

const deepseekRequest = {
  model: 'deepseek-chat',
  messages: [{ role: 'user' as const, content: 'price me' }],
};
const usageHeader = (usage: object): Record<string, string> => ({ 'x-fake-usage': JSON.stringify(usage) });

describe('§5.6 exact cost through tokenmeter serve', () => {
  it('DeepSeek CNY, 1,000 prompt (600 cached) + 500 output → 1182600 nanos, streamed and not', async () => {
    const openai = new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEY, maxRetries: 0 });
    const want = {
      upstream: 'fake',
      usage_source: 'reported',
      cost_nanos: DEEPSEEK_NANOS,
      currency: 'CNY',
      cost_source: 'computed',
      price_id: 'cny.yaml#deepseek-chat@always',
      multiplier: '1',
    };
    const plain = await one(async () => {
      const res = await openai.chat.completions.create(deepseekRequest, {
        headers: usageHeader(DEEPSEEK_USAGE),
      });
      expect(res.usage?.prompt_tokens).toBe(1000);
    });
    expect(costOf(plain)).toEqual(want);
    expect([plain.input_tokens, plain.cache_read_tokens, plain.output_tokens]).toEqual([400, 600, 500]);

    const streamed = await one(async () => {
      const stream = await openai.chat.completions.create(
        { ...deepseekRequest, stream: true },
        { headers: usageHeader(DEEPSEEK_USAGE) },
      );
      for await (const _chunk of stream) {
        // drain
      }
    });
    expect(costOf(streamed)).toEqual(want);
  });

  it('the same through an upstream with multiplier 0.8 → 946080 nanos, multiplier "0.8" on the row', async () => {
    const openai = new OpenAI({ baseURL: `${serve.base}/disc/v1`, apiKey: KEY, maxRetries: 0 });
    const row = await one(() =>
      openai.chat.completions.create(deepseekRequest, { headers: usageHeader(DEEPSEEK_USAGE) }),
    );
    expect(costOf(row)).toEqual({
      upstream: 'discounted',
      usage_source: 'reported',
      cost_nanos: 946_080,
      currency: 'CNY',
      cost_source: 'computed',
      price_id: 'cny.yaml#deepseek-chat@always',
      multiplier: '0.8',
    });
  });

  it('Anthropic messages 50 in + 2000 cache write + 8000 cache read + 120 out at ratios 1.25/0.1 → 11850000 nanos', async () => {
    const anthropic = new Anthropic({ baseURL: serve.base, apiKey: KEY, maxRetries: 0 });
    const request = {
      model: 'claude-e2e',
      max_tokens: 200,
      messages: [{ role: 'user' as const, content: 'price me' }],
    };
    const want = {
      upstream: 'fake',
      usage_source: 'reported',
      cost_nanos: ANTHROPIC_NANOS,
      currency: 'USD',
      cost_source: 'computed',
      price_id: 'usd.yaml#claude-e2e@always',
      multiplier: '1',
    };
    const plain = await one(() =>
      anthropic.messages.create(request, { headers: usageHeader(ANTHROPIC_USAGE) }),
    );
    expect(costOf(plain)).toEqual(want);
    expect([
      plain.input_tokens,
      plain.cache_write_tokens,
      plain.cache_read_tokens,
      plain.output_tokens,
    ]).toEqual([50, 2000, 8000, 120]);

    const streamed = await one(async () => {
      const stream = anthropic.messages.stream(request, { headers: usageHeader(ANTHROPIC_USAGE) });
      expect((await stream.finalMessage()).usage.output_tokens).toBe(120);
    });
    expect(costOf(streamed)).toEqual(want);
  });

  it('§5.3 trust_reported_cost: the gateway-stated cost wins, ours stays visible; untrusted it is only kept', async () => {
    const headers = { ...usageHeader(DEEPSEEK_USAGE), 'x-fake-scenario': 'cost' };
    // The fake states cost = (P + 2·C) / 1e6 of its own figures for this request: P = 10 + 2 words,
    // C = 3 reply pieces ("echo: price me") → 0.000018 CNY.
    const reportedNanos = 18_000;
    const trusted = await one(() =>
      new OpenAI({ baseURL: `${serve.base}/trust/v1`, apiKey: KEY, maxRetries: 0 }).chat.completions.create(
        deepseekRequest,
        { headers },
      ),
    );
    expect({
      ...costOf(trusted),
      upstream_reported_cost_nanos: trusted.upstream_reported_cost_nanos,
      upstream_reported_currency: trusted.upstream_reported_currency,
    }).toEqual({
      upstream: 'trusted',
      usage_source: 'reported',
      cost_nanos: reportedNanos,
      currency: 'CNY',
      cost_source: 'upstream',
      price_id: 'cny.yaml#deepseek-chat@always',
      multiplier: '1',
      upstream_reported_cost_nanos: reportedNanos,
      upstream_reported_currency: 'CNY',
    });
    const untrusted = await one(() =>
      new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEY, maxRetries: 0 }).chat.completions.create(
        deepseekRequest,
        { headers },
      ),
    );
    expect([untrusted.cost_nanos, untrusted.cost_source, untrusted.upstream_reported_cost_nanos]).toEqual([
      DEEPSEEK_NANOS,
      'computed',
      reportedNanos,
    ]);
  });

  it('an unknown model: NULL cost, cost_source unpriced, and the client got the normal response', async () => {
    const openai = new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEY, maxRetries: 0 });
    const row = await one(async () => {
      const res = await openai.chat.completions.create({
        model: 'mystery-model-9',
        messages: [{ role: 'user', content: 'who prices me' }],
      });
      expect(res.choices[0]?.message.content).toBe('echo: who prices me');
      expect(res.usage?.completion_tokens).toBe(4);
    });
    expect({
      usage_source: row.usage_source,
      http_status: row.http_status,
      error_type: row.error_type,
      cost_nanos: row.cost_nanos,
      cost_source: row.cost_source,
      output_tokens: row.output_tokens,
    }).toEqual({
      usage_source: 'reported',
      http_status: 200,
      error_type: null,
      cost_nanos: null,
      cost_source: 'unpriced',
      output_tokens: 4,
    });
    expect(row.note ?? '').toMatch(/unpriced/i);
  });
});

describe('tokenmeter prices check on the bundled presets', () => {
  const presets = readdirSync(join(ROOT, 'prices')).filter((f) => /\.(ya?ml|json)$/.test(f));

  it('finds the presets', () => {
    expect(presets.length).toBeGreaterThanOrEqual(6);
  });

  it.each(presets)('%s passes (exit 0)', async (file) => {
    const result = await runCli(['prices', 'check', join(ROOT, 'prices', file)], { cwd: tmp.dir });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
  });
});
