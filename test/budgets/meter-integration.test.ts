/**
 * Budgets, metrics and traces wired to the real meter (as src/runtime.ts does): a priced request
 * spends the budget, the next request in scope is rejected with an endpoint-shaped 429 naming the
 * budget, and the metrics/trace sinks see both records.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { afterAll, describe, expect, it } from 'vitest';
import { createBudgets } from '../../src/budgets/index.js';
import { BudgetConfig } from '../../src/config/schema.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { createMeter } from '../../src/meter/index.js';
import { inspectRequest } from '../../src/meter/inspect.js';
import type { MeterBeginInput } from '../../src/meter/types.js';
import { loadPriceBook } from '../../src/pricing/index.js';
import type { RequestRecord } from '../../src/record.js';
import { createMetricsSink } from '../../src/sinks/metrics.js';
import { createOtelSink } from '../../src/sinks/otel/index.js';
import { parseExposition, valueOf } from '../metrics/exposition.js';

const dir = mkdtempSync(join(tmpdir(), 'tokenmeter-budget-meter-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function setup() {
  const prices = join(dir, 'prices.yaml');
  writeFileSync(
    prices,
    'currency: CNY\nunit: 1M\nprices:\n  - model: deepseek-chat\n    input: 0.81\n    output: 1.62\n    cache_read: 0.081\n',
  );
  const upstreamUrl = new URL('http://127.0.0.1:9/v1');
  const priceBook = loadPriceBook({
    files: [prices],
    presets: false,
    multipliers: { upstream: {}, app: {}, model: {} },
    upstreams: [{ name: 'cailag', url: upstreamUrl, trustReportedCost: false }],
    log: SILENT_LOGGER,
  });
  const metrics = createMetricsSink({ maxModels: 10, maxApps: 10, apps: ['chatbot'] });
  const exporter = new InMemorySpanExporter();
  const traces = (await createOtelSink({
    env: {},
    captureContent: false,
    traceExporter: exporter,
    log: SILENT_LOGGER,
    health: metrics,
  }))!;
  // ¥0.001 limit, already ¥0.0001 spent: one §5.6 request (¥0.0011826) uses it up.
  const budgets = createBudgets({
    budgets: [
      BudgetConfig.parse({
        name: 'chatbot-daily',
        scope: { app: 'chatbot' },
        period: 'day',
        limit: '0.001',
        currency: 'CNY',
        action: 'block',
      }),
    ],
    spend: () => [{ currency: 'CNY', cost_nanos: 100_000n }],
    priceBook,
    log: SILENT_LOGGER,
  });
  // Budget gauges are read from the budgets at scrape time.
  metrics.setBudgetSource(() => budgets.status());
  const records: RequestRecord[] = [];
  const meter = createMeter({
    // Budgets are a gate, not a sink: spend reaches them through the reservation's settle.
    sinks: [traces, metrics, { name: 'capture', write: (r) => void records.push(r), close: async () => {} }],
    priceBook,
    budgets,
    health: metrics,
    log: SILENT_LOGGER,
    keySecret: 'k'.repeat(32),
    apps: {},
    maxEventBytes: 8 * 1024 * 1024,
    maxResponseBodyBytes: 32 * 1024 * 1024,
  });
  // max_tokens bounds what the request can cost, so the budget can reserve it (§9).
  const body = Buffer.from(
    JSON.stringify({ model: 'deepseek-chat', max_tokens: 500, messages: [{ role: 'user', content: 'hi' }] }),
  );
  const input = (): MeterBeginInput => ({
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { 'x-tokenmeter-app': 'chatbot', 'content-type': 'application/json' },
    upstream: 'cailag',
    upstreamUrl,
    info: inspectRequest('POST', '/v1/chat/completions', body),
    requestBytes: body.length,
    injectedUsage: false,
  });
  const waitForRecords = async (n: number) => {
    for (let i = 0; i < 200 && records.length < n; i++) await new Promise((r) => setTimeout(r, 5));
    expect(records).toHaveLength(n);
  };
  return { meter, metrics, exporter, traces, budgets, records, input, waitForRecords };
}

describe('budgets through the meter', () => {
  it('spends, then blocks the next request in scope with a 429 naming the budget', async () => {
    const h = await setup();
    const first = h.meter.begin(h.input());
    expect(first.rejection).toBeUndefined();
    expect(first.upstreamHeaders.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    first.onResponseHead(200, { 'content-type': 'application/json' });
    first.onResponseChunk(
      Buffer.from(
        JSON.stringify({
          id: 'chatcmpl-1',
          object: 'chat.completion',
          model: 'deepseek-chat',
          choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
          usage: {
            prompt_tokens: 1000,
            completion_tokens: 500,
            total_tokens: 1500,
            prompt_tokens_details: { cached_tokens: 600 },
          },
        }),
      ),
    );
    first.finish({ kind: 'complete' });
    await h.waitForRecords(1);
    expect(h.records[0]).toMatchObject({ app: 'chatbot', cost_nanos: 1_182_600, currency: 'CNY' });
    expect(h.budgets.status()[0]).toMatchObject({
      spent_nanos: 1_282_600n,
      reserved_nanos: 0n,
      exceeded: true,
    });

    const second = h.meter.begin(h.input());
    expect(second.rejection?.status).toBe(429);
    expect(second.rejection?.type.openai).toBe('budget_exceeded');
    expect(second.rejection?.message).toContain('chatbot-daily');
    await second.finish({ kind: 'rejected' });
    await h.waitForRecords(2);
    expect(h.records[1]).toMatchObject({ error_type: 'budget_exceeded', http_status: 429 });

    const e = parseExposition((await h.metrics.render()).body);
    expect(valueOf(e, 'tokenmeter_cost_total', { app: 'chatbot', currency: 'CNY' })).toBe(0.0011826);
    expect(valueOf(e, 'tokenmeter_budget_spent', { budget: 'chatbot-daily' })).toBe(0.0012826);
    expect(
      valueOf(e, 'tokenmeter_requests_total', { app: 'chatbot', status_class: '2xx', error_type: 'none' }),
    ).toBe(1);
    await h.traces.forceFlush();
    const spans = h.exporter.getFinishedSpans();
    expect(spans).toHaveLength(2);
    expect(h.records[0]!.trace_id).toBe(spans[0]!.spanContext().traceId);
    await h.traces.close();
  });
});
