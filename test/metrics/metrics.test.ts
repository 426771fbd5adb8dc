import type { BudgetStatus } from '../../src/budgets/types.js';
import { describe, expect, it } from 'vitest';
import { createMetricsSink, normaliseModel, type MetricsSink } from '../../src/sinks/metrics.js';
import { parseExposition, samplesOf, valueOf, type Exposition } from './exposition.js';
import { makeRecord, startAndRecord } from './records.js';

function budgetStatus(name: string, currency: string, limit: bigint, spent: bigint): BudgetStatus {
  return {
    name,
    period: 'month',
    timezone: 'UTC',
    currency,
    action: 'alert',
    scope: {},
    period_start: 0,
    period_end: 1,
    period_start_date: '2026-11-01',
    limit_nanos: limit,
    spent_nanos: spent,
    reserved_nanos: 0n,
    ratio: 0,
    projected_nanos: spent,
    warn_at: [],
    warnings_crossed: [],
    exceeded: false,
  };
}

function sink(over: Partial<Parameters<typeof createMetricsSink>[0]> = {}): MetricsSink {
  return createMetricsSink({ maxModels: 100, maxApps: 50, apps: ['chatbot'], ...over });
}

async function scrape(s: MetricsSink): Promise<Exposition> {
  const { contentType, body } = await s.render();
  expect(contentType).toMatch(/^text\/plain/);
  return parseExposition(body);
}

/**
 * DESIGN.md §7, written out literally here (not imported from semconv.ts) so that renaming a
 * metric or a label anywhere fails this test: dashboards and alert rules depend on these strings.
 */
const PINNED: Record<string, { type: string; labels: string[] }> = {
  tokenmeter_requests_total: {
    type: 'counter',
    labels: ['upstream', 'app', 'model', 'operation', 'status_class', 'error_type', 'stream'],
  },
  tokenmeter_tokens_total: { type: 'counter', labels: ['upstream', 'app', 'model', 'type'] },
  tokenmeter_reasoning_tokens_total: { type: 'counter', labels: ['upstream', 'app', 'model'] },
  tokenmeter_cost_total: { type: 'counter', labels: ['upstream', 'app', 'model', 'currency'] },
  tokenmeter_upstream_reported_cost_total: {
    type: 'counter',
    labels: ['upstream', 'app', 'model', 'currency'],
  },
  tokenmeter_request_duration_seconds: {
    type: 'histogram',
    labels: ['upstream', 'model', 'operation', 'stream'],
  },
  tokenmeter_time_to_first_token_seconds: { type: 'histogram', labels: ['upstream', 'model'] },
  tokenmeter_time_per_output_token_seconds: { type: 'histogram', labels: ['upstream', 'model'] },
  tokenmeter_usage_unreported_total: { type: 'counter', labels: ['upstream', 'model', 'usage_source'] },
  tokenmeter_unpriced_requests_total: { type: 'counter', labels: ['upstream', 'model'] },
  tokenmeter_ratelimit_remaining: { type: 'gauge', labels: ['upstream', 'resource'] },
  tokenmeter_ratelimit_limit: { type: 'gauge', labels: ['upstream', 'resource'] },
  tokenmeter_upstream_balance: { type: 'gauge', labels: ['upstream', 'currency'] },
  tokenmeter_billed_total: { type: 'counter', labels: ['upstream', 'currency'] },
  tokenmeter_reconcile_drift_ratio: { type: 'gauge', labels: ['upstream', 'currency'] },
  tokenmeter_budget_limit: { type: 'gauge', labels: ['budget', 'currency'] },
  tokenmeter_budget_spent: { type: 'gauge', labels: ['budget', 'currency'] },
  tokenmeter_inflight_requests: { type: 'gauge', labels: ['upstream'] },
  tokenmeter_audit_queue_depth: { type: 'gauge', labels: [] },
  tokenmeter_audit_dropped_total: { type: 'counter', labels: [] },
  tokenmeter_fleet_ship_lag_rows: { type: 'gauge', labels: [] },
  tokenmeter_fleet_shipped_rows_total: { type: 'counter', labels: [] },
  tokenmeter_fleet_ship_failures_total: { type: 'counter', labels: [] },
  tokenmeter_fleet_budget_fallback_total: { type: 'counter', labels: ['budget'] },
  tokenmeter_fleet_budget_settle_failures_total: { type: 'counter', labels: ['budget'] },
  tokenmeter_internal_errors_total: { type: 'counter', labels: ['component'] },
  tokenmeter_sse_oversize_events_total: { type: 'counter', labels: ['upstream'] },
  tokenmeter_request_body_waits_total: { type: 'counter', labels: [] },
  tokenmeter_proxy_overhead_seconds: { type: 'histogram', labels: ['upstream'] },
  gen_ai_client_token_usage: {
    type: 'histogram',
    labels: [
      'gen_ai_operation_name',
      'gen_ai_provider_name',
      'gen_ai_request_model',
      'gen_ai_token_type',
      'server_address',
    ],
  },
  gen_ai_client_operation_duration_seconds: {
    type: 'histogram',
    // error_type is present only on failed operations (OTel semconv: error.type only on errors).
    labels: [
      'gen_ai_operation_name',
      'gen_ai_provider_name',
      'gen_ai_request_model',
      'error_type',
      'server_address',
    ],
  },
};

/** Feeds the sink one of everything, so every metric family has at least one sample. */
function exerciseEverything(s: MetricsSink): void {
  const ok = startAndRecord(
    { stream: true },
    {
      ttft_ms: 300,
      duration_ms: 2300,
      output_tokens: 201,
      reasoning_tokens: 50,
      upstream_reported_cost_nanos: 1_000_000,
      upstream_reported_currency: 'CNY',
    },
  );
  s.setInflightSource(() => new Map([['cailag', 1]]));
  s.write(ok.record);
  s.overhead('cailag', 0.00012);
  s.write(
    makeRecord({ usage_source: 'estimated', cost_source: 'unpriced', cost_nanos: null, currency: null }),
  );
  s.write(
    makeRecord({ http_status: 429, error_type: 'rate_limited', input_tokens: null, output_tokens: null }),
  );
  s.rateLimit('cailag', {
    requests: { limit: 60, remaining: 59 },
    tokens: { limit: 100000, remaining: 9000 },
  });
  s.balance('cailag', 'CNY', 138.5);
  s.billed('cailag', 'CNY', 1_250_000_000n);
  s.reconcileDrift('cailag', 'CNY', 1.25);
  s.setBudgetSource(() => [budgetStatus('team-month', 'CNY', 100_000_000_000n, 12_500_000_000n)]);
  s.internalError('sink:audit');
  s.auditQueueDepth(3);
  s.auditDropped(2);
  s.sseOversize('cailag');
  s.fleetBudgets.fallback('team');
  s.fleetBudgets.settleFailure('team');
}

describe('metrics sink: names, types and label sets (§7)', () => {
  it('exports exactly the pinned metric families with their types and label sets', async () => {
    const s = sink();
    exerciseEverything(s);
    const e = await scrape(s);

    const families = [...e.types.keys()].filter(
      (n) => n.startsWith('tokenmeter_') || n.startsWith('gen_ai_'),
    );
    expect(families.sort()).toEqual(Object.keys(PINNED).sort());

    for (const [name, want] of Object.entries(PINNED)) {
      expect(e.types.get(name), name).toBe(want.type);
      const sampleName = want.type === 'histogram' ? `${name}_count` : name;
      const samples = samplesOf(e, sampleName);
      expect(samples.length, `${name} has samples`).toBeGreaterThan(0);
      const labelNames = new Set(samples.flatMap((x) => Object.keys(x.labels)));
      expect([...labelNames].sort(), name).toEqual([...want.labels].sort());
    }
  });

  it('uses the OTel GenAI semconv bucket boundaries', async () => {
    const s = sink();
    exerciseEverything(s);
    const e = await scrape(s);
    const les = (name: string) => [...new Set(samplesOf(e, `${name}_bucket`).map((x) => x.labels.le))];
    expect(les('gen_ai_client_token_usage')).toEqual([
      '1',
      '4',
      '16',
      '64',
      '256',
      '1024',
      '4096',
      '16384',
      '65536',
      '262144',
      '1048576',
      '4194304',
      '16777216',
      '67108864',
      '+Inf',
    ]);
    expect(les('gen_ai_client_operation_duration_seconds')).toEqual([
      '0.01',
      '0.02',
      '0.04',
      '0.08',
      '0.16',
      '0.32',
      '0.64',
      '1.28',
      '2.56',
      '5.12',
      '10.24',
      '20.48',
      '40.96',
      '81.92',
      '+Inf',
    ]);
  });

  it('includes the default process metrics when asked', async () => {
    const e = await scrape(sink({ collectDefault: true }));
    expect(e.types.get('process_cpu_seconds_total')).toBe('counter');
    expect(e.types.get('nodejs_eventloop_lag_seconds')).toBe('gauge');
  });
});

describe('metrics sink: exact values', () => {
  it('records a known set of records exactly', async () => {
    // server.address comes from the configured upstream URLs (bounded: config, not traffic).
    const s = sink({ upstreamHosts: { cailag: 'cailag.xin', dieyu: 'open.dieyuyun.com' } });
    const a = startAndRecord({ app: 'chatbot' }, {}); // ¥0.0011826, 400 in + 600 cached + 500 out
    const b = startAndRecord(
      {
        app: 'chatbot',
        stream: true,
        upstream: 'dieyu',
        upstreamUrl: new URL('https://open.dieyuyun.com/v1'),
      },
      {
        ttft_ms: 500,
        duration_ms: 2500,
        input_tokens: 10,
        cache_read_tokens: null,
        output_tokens: 5,
        reasoning_tokens: 3,
        cost_nanos: 946_080,
      },
    );
    const c = startAndRecord(
      { operation: 'messages', request_model: 'Claude-Sonnet-4 ', app: 'unlisted' },
      {
        input_tokens: 50,
        cache_write_tokens: 2000,
        cache_read_tokens: 8000,
        output_tokens: 120,
        cost_nanos: 11_850_000,
        currency: 'USD',
        http_status: 200,
      },
    );
    const d = startAndRecord(
      {},
      {
        http_status: 200,
        error_type: 'client_abort',
        usage_source: 'estimated',
        input_tokens: 30,
        cache_read_tokens: null,
        output_tokens: 7,
        cost_nanos: 100,
      },
    );
    const e5 = startAndRecord(
      {},
      {
        http_status: null,
        error_type: 'network',
        input_tokens: null,
        output_tokens: null,
        cache_read_tokens: null,
        usage_source: 'missing',
        cost_nanos: null,
        cost_source: null,
        currency: null,
        duration_ms: 20,
      },
    );
    // The in-flight gauge is read at scrape time from the proxy's one in-flight count.
    const inflight = new Map([
      ['cailag', 4],
      ['dieyu', 1],
    ]);
    s.setInflightSource(() => inflight);
    let e = await scrape(s);
    expect(valueOf(e, 'tokenmeter_inflight_requests', { upstream: 'cailag' })).toBe(4);
    expect(valueOf(e, 'tokenmeter_inflight_requests', { upstream: 'dieyu' })).toBe(1);
    for (const x of [a, b, c, d, e5]) s.write(x.record);
    inflight.set('cailag', 0).set('dieyu', 0);
    e = await scrape(s);

    expect(valueOf(e, 'tokenmeter_inflight_requests', { upstream: 'cailag' })).toBe(0);
    expect(valueOf(e, 'tokenmeter_inflight_requests', { upstream: 'dieyu' })).toBe(0);

    const req = (labels: Record<string, string>) => valueOf(e, 'tokenmeter_requests_total', labels);
    expect(
      req({
        upstream: 'cailag',
        app: 'chatbot',
        model: 'deepseek-chat',
        operation: 'chat',
        status_class: '2xx',
        error_type: 'none',
        stream: 'false',
      }),
    ).toBe(1);
    // Model normalised (trimmed, lower-cased); an app not in config is kept while under the cap.
    expect(req({ model: 'claude-sonnet-4', operation: 'messages', app: 'unlisted' })).toBe(1);
    expect(req({ status_class: 'abort', error_type: 'client_abort' })).toBe(1);
    expect(req({ status_class: 'network', error_type: 'network' })).toBe(1);

    const tok = (labels: Record<string, string>) => valueOf(e, 'tokenmeter_tokens_total', labels);
    expect(tok({ upstream: 'cailag', app: 'chatbot', type: 'input' })).toBe(400);
    expect(tok({ upstream: 'cailag', app: 'chatbot', type: 'cache_read' })).toBe(600);
    expect(tok({ upstream: 'cailag', app: 'chatbot', type: 'output' })).toBe(500);
    expect(tok({ upstream: 'cailag', app: 'chatbot', type: 'cache_write' })).toBeUndefined();
    expect(tok({ upstream: 'dieyu', type: 'input' })).toBe(10);
    expect(tok({ upstream: 'dieyu', type: 'cache_read' })).toBeUndefined(); // null is not a zero sample
    expect(tok({ app: 'unlisted', type: 'cache_write' })).toBe(2000);
    expect(tok({ app: 'unlisted', type: 'cache_read' })).toBe(8000);
    expect(tok({ app: 'default', type: 'input' })).toBe(30);
    expect(valueOf(e, 'tokenmeter_reasoning_tokens_total', { upstream: 'dieyu' })).toBe(3);

    const cost = (labels: Record<string, string>) => valueOf(e, 'tokenmeter_cost_total', labels);
    expect(cost({ upstream: 'cailag', app: 'chatbot', currency: 'CNY' })).toBe(0.0011826);
    expect(cost({ upstream: 'dieyu', currency: 'CNY' })).toBe(0.00094608);
    expect(cost({ app: 'unlisted', currency: 'USD' })).toBe(0.01185);
    expect(cost({ app: 'default', currency: 'CNY' })).toBe(0.0000001);
    expect(samplesOf(e, 'tokenmeter_cost_total')).toHaveLength(4);

    expect(
      valueOf(e, 'tokenmeter_usage_unreported_total', { model: 'deepseek-chat', usage_source: 'estimated' }),
    ).toBe(1);
    expect(
      valueOf(e, 'tokenmeter_usage_unreported_total', { model: 'deepseek-chat', usage_source: 'missing' }),
    ).toBe(1);

    // Durations: 1.5 s ×3 (a, c, d), 2.5 s (b), 0.02 s (e5).
    expect(
      valueOf(e, 'tokenmeter_request_duration_seconds_sum', {
        upstream: 'cailag',
        operation: 'chat',
        stream: 'false',
      }),
    ).toBeCloseTo(3.02, 10);
    expect(valueOf(e, 'tokenmeter_time_to_first_token_seconds_sum', { upstream: 'dieyu' })).toBe(0.5);
    // tpot = (2.5 s − 0.5 s) / (5 − 1) = 0.5 s
    expect(valueOf(e, 'tokenmeter_time_per_output_token_seconds_sum', { upstream: 'dieyu' })).toBe(0.5);
    expect(valueOf(e, 'tokenmeter_time_per_output_token_seconds_count', { upstream: 'dieyu' })).toBe(1);

    // GenAI semconv: input includes cached tokens (400 + 600); Anthropic 50 + 8000 + 2000.
    const gen = (labels: Record<string, string>) => valueOf(e, 'gen_ai_client_token_usage_sum', labels);
    expect(
      gen({
        gen_ai_request_model: 'deepseek-chat',
        gen_ai_token_type: 'input',
        gen_ai_provider_name: 'openai',
        gen_ai_operation_name: 'chat',
        server_address: 'cailag.xin',
      }),
    ).toBe(1000 + 30);
    expect(gen({ server_address: 'open.dieyuyun.com', gen_ai_token_type: 'input' })).toBe(10);
    expect(gen({ gen_ai_provider_name: 'anthropic', gen_ai_token_type: 'input' })).toBe(10050);
    expect(gen({ gen_ai_provider_name: 'anthropic', gen_ai_token_type: 'output' })).toBe(120);
    expect(valueOf(e, 'gen_ai_client_operation_duration_seconds_count', { error_type: 'network' })).toBe(1);
  });

  it('null usage adds no token samples (unknown is not zero)', async () => {
    const s = sink();
    s.write(
      makeRecord({
        input_tokens: null,
        cache_read_tokens: null,
        cache_write_tokens: null,
        output_tokens: null,
        reasoning_tokens: null,
        usage_source: 'missing',
        cost_nanos: null,
        currency: null,
        cost_source: 'unpriced',
      }),
    );
    const e = await scrape(s);
    expect(valueOf(e, 'tokenmeter_requests_total', { model: 'deepseek-chat' })).toBe(1);
    expect(samplesOf(e, 'tokenmeter_tokens_total')).toEqual([]);
    expect(samplesOf(e, 'tokenmeter_reasoning_tokens_total')).toEqual([]);
    expect(samplesOf(e, 'tokenmeter_cost_total')).toEqual([]);
    expect(samplesOf(e, 'gen_ai_client_token_usage_count')).toEqual([]);
    expect(valueOf(e, 'tokenmeter_usage_unreported_total', { usage_source: 'missing' })).toBe(1);
    expect(valueOf(e, 'tokenmeter_unpriced_requests_total', { model: 'deepseek-chat' })).toBe(1);
  });

  it('rate-limit, balance, budget and health gauges hold the last values given', async () => {
    const s = sink();
    s.rateLimit('cailag', { requests: { limit: 60, remaining: 12 }, tokens: { remaining: 500 } });
    s.rateLimit('cailag', { requests: { remaining: 11 }, tokens: {} });
    s.balance('dieyu', 'CNY', 138.5);
    let spent = 12_000_000_000n;
    s.setBudgetSource(() => [budgetStatus('team', 'USD', 50_000_000_000n, spent)]);
    spent = 12_250_000_000n; // read at scrape time, not when set
    s.auditQueueDepth(7);
    s.auditDropped(3);
    s.auditDropped(1);
    s.internalError('traces');
    s.internalError('traces');
    const e = await scrape(s);
    expect(valueOf(e, 'tokenmeter_ratelimit_remaining', { resource: 'requests' })).toBe(11);
    expect(valueOf(e, 'tokenmeter_ratelimit_limit', { resource: 'requests' })).toBe(60);
    expect(valueOf(e, 'tokenmeter_ratelimit_remaining', { resource: 'tokens' })).toBe(500);
    expect(valueOf(e, 'tokenmeter_ratelimit_limit', { resource: 'tokens' })).toBeUndefined();
    expect(valueOf(e, 'tokenmeter_upstream_balance', { upstream: 'dieyu', currency: 'CNY' })).toBe(138.5);
    expect(valueOf(e, 'tokenmeter_budget_limit', { budget: 'team', currency: 'USD' })).toBe(50);
    expect(valueOf(e, 'tokenmeter_budget_spent', { budget: 'team', currency: 'USD' })).toBe(12.25);
    expect(valueOf(e, 'tokenmeter_audit_queue_depth', {})).toBe(7);
    expect(valueOf(e, 'tokenmeter_audit_dropped_total', {})).toBe(4);
    expect(valueOf(e, 'tokenmeter_internal_errors_total', { component: 'traces' })).toBe(2);
  });
});

describe('metrics sink: proxy overhead and queue depth', () => {
  it('keeps one overhead histogram series per upstream, with cumulative buckets, sum and count', async () => {
    const s = sink();
    for (const v of [0.00004, 0.0002, 0.0002, 0.003]) s.overhead('cailag', v);
    s.overhead('dieyu', 0.2);
    const e = await scrape(s);
    const bucket = (upstream: string, le: string): number | undefined =>
      valueOf(e, 'tokenmeter_proxy_overhead_seconds_bucket', { upstream, le });
    expect(bucket('cailag', '0.00005')).toBe(1);
    expect(bucket('cailag', '0.0001')).toBe(1);
    expect(bucket('cailag', '0.00025')).toBe(3);
    expect(bucket('cailag', '0.0025')).toBe(3);
    expect(bucket('cailag', '0.005')).toBe(4);
    expect(bucket('cailag', '+Inf')).toBe(4);
    expect(valueOf(e, 'tokenmeter_proxy_overhead_seconds_count', { upstream: 'cailag' })).toBe(4);
    expect(valueOf(e, 'tokenmeter_proxy_overhead_seconds_sum', { upstream: 'cailag' })).toBeCloseTo(
      0.00344,
      12,
    );
    expect(bucket('dieyu', '0.1')).toBe(0);
    expect(bucket('dieyu', '+Inf')).toBe(1);
    expect(valueOf(e, 'tokenmeter_proxy_overhead_seconds_count', { upstream: 'dieyu' })).toBe(1);
  });

  it('shows the audit queue depth as 0 before any record, then the last depth given', async () => {
    const s = sink();
    expect(valueOf(await scrape(s), 'tokenmeter_audit_queue_depth', {})).toBe(0);
    s.auditQueueDepth(12);
    s.auditQueueDepth(5);
    expect(valueOf(await scrape(s), 'tokenmeter_audit_queue_depth', {})).toBe(5);
  });
});

describe('metrics sink: bounded labels', () => {
  it('keeps the series count bounded over 1,000 records with random model and app names', async () => {
    const maxModels = 10;
    const maxApps = 3;
    const s = sink({ maxModels, maxApps, apps: ['chatbot', 'batch'] });
    const random = () => Math.random().toString(36).slice(2);
    for (let i = 0; i < 1000; i++) {
      s.write(
        makeRecord({
          request_model: `model-${random()}`,
          app: i % 10 === 0 ? 'batch' : `app-${random()}`,
          key_id: random(),
          user: random(),
          trace_id: random(),
        }),
      );
    }
    const e = await scrape(s);
    const requestSeries = samplesOf(e, 'tokenmeter_requests_total');
    const models = new Set(requestSeries.map((x) => x.labels.model));
    const apps = new Set(requestSeries.map((x) => x.labels.app));
    expect(models.size).toBe(maxModels + 1);
    expect(models.has('other')).toBe(true);
    // Configured apps are always kept and do not use up the cap.
    expect(apps).toEqual(
      new Set([...[...apps].filter((a) => a !== undefined && a.startsWith('app-')), 'batch', 'other']),
    );
    expect([...apps].filter((a) => a !== undefined && a.startsWith('app-'))).toHaveLength(maxApps);
    expect(requestSeries.length).toBeLessThanOrEqual((maxModels + 1) * (maxApps + 3));
    expect(requestSeries.reduce((n, x) => n + x.value, 0)).toBe(1000);
    // Nothing unbounded leaks into any label value anywhere.
    const text = (await s.render()).body;
    expect(text).not.toMatch(/user-42|abcdef012345|01JTEST/);
  });

  it('normalises model names: trimmed, lower-cased, capped, unknown when empty', () => {
    expect(normaliseModel('  GPT-4o ')).toBe('gpt-4o');
    expect(normaliseModel(null)).toBe('unknown');
    expect(normaliseModel('   ')).toBe('unknown');
    expect(normaliseModel('x'.repeat(500))).toHaveLength(64);
  });
});
