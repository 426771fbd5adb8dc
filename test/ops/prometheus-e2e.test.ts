/**
 * End to end, DESIGN.md §10: a real `tokenmeter serve` proxies known traffic to the fake gateway,
 * a real Prometheus scrapes it every second with the shipped rules loaded, and then every dashboard
 * panel query, every dashboard variable and every recording/alert expression is evaluated through
 * Prometheus' HTTP API. A renamed metric or label empties a panel and fails here.
 */
import { Decimal } from 'decimal.js';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { expectedUsage, flavorFor, startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';
import {
  ALERTMANAGER,
  freePort,
  IN_CI,
  mustHave,
  PROMETHEUS,
  skipWithoutBinary,
  startAlertmanager,
  startChild,
  waitFor,
  type Child,
} from './binaries.js';
import { loadDashboards, panelQueries, substituteVariables } from './dashboards.js';
import { ALERTMANAGER_CONFIG, REPO, RULES_FILE, repoPath } from './paths.js';
import { metricNamesIn } from './promql.js';
import { allRules } from './rules-file.js';

const CLI_ENTRY = process.env.TOKENMETER_OPS_CLI ?? repoPath('src/cli/main.ts');
const cliMissing = !existsSync(CLI_ENTRY);
if (cliMissing && !IN_CI)
  console.warn(`[test/ops] skipping the Prometheus end-to-end test: ${CLI_ENTRY} does not exist yet`);
const skip =
  skipWithoutBinary('the Prometheus end-to-end test', PROMETHEUS) ||
  skipWithoutBinary('the Prometheus end-to-end test', ALERTMANAGER) ||
  (cliMissing && !IN_CI);

const API_KEY = 'sk-test-ops-e2e';

/** Prices used by this test only (no presets), chosen so every cost is a whole number of nanos. */
const PRICES = {
  'gpt-4o-mini': { currency: 'USD', input: '0.15', output: '0.6' },
  'claude-sonnet-4-5': {
    currency: 'USD',
    input: '3',
    output: '15',
    cache_read: '0.3',
    cache_write: '3.75',
    // Same as 5m writes, so the expected cost does not depend on how the 1h part is split out.
    cache_write_1h: '3.75',
  },
  'deepseek-chat': { currency: 'CNY', input: '2', output: '8', cache_read: '0.5' },
} as const;
type PricedModel = keyof typeof PRICES;

interface DrivenRequest {
  path: string;
  app: string;
  body: Record<string, unknown>;
  headers?: Record<string, string>;
  /** Expected upstream status. */
  status: number;
}

/** One round of traffic; the test sends it twice so every counter increases while scraped. */
const ROUND: DrivenRequest[] = [
  {
    path: '/v1/chat/completions',
    app: 'web',
    status: 200,
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello there world' }] },
  },
  {
    path: '/v1/chat/completions',
    app: 'batch',
    status: 200,
    body: {
      model: 'gpt-4o-mini',
      stream: true,
      messages: [{ role: 'user', content: 'count to three please' }],
    },
  },
  {
    path: '/v1/chat/completions',
    app: 'web',
    status: 200,
    body: { model: 'deepseek-chat', messages: [{ role: 'user', content: 'one two three four five six' }] },
  },
  {
    path: '/v1/messages',
    app: 'batch',
    status: 200,
    headers: { 'anthropic-version': '2023-06-01' },
    body: {
      model: 'claude-sonnet-4-5',
      max_tokens: 64,
      messages: [{ role: 'user', content: 'cache me if you can' }],
    },
  },
  {
    path: '/v1/chat/completions',
    app: 'web',
    status: 200,
    body: { model: 'mystery-model', messages: [{ role: 'user', content: 'who prices me' }] },
  },
  {
    path: '/v1/chat/completions',
    app: 'web',
    status: 500,
    headers: { 'x-fake-scenario': 'error-500' },
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'fail please' }] },
  },
  {
    path: '/v1/chat/completions',
    app: 'batch',
    status: 402,
    headers: { 'x-fake-scenario': 'error-402' },
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'no money' }] },
  },
];
const ROUNDS = 2;

/** What one round should add up to, from the fake gateway's own usage rules. */
function expectedTotals(): { tokens: number; cost: Record<string, Decimal> } {
  let tokens = 0;
  const cost: Record<string, Decimal> = {};
  for (const request of ROUND.filter((r) => r.status === 200)) {
    const endpoint = request.path.replace(/^\/v1/, '');
    const model = request.body.model as string;
    const usage = expectedUsage(flavorFor(endpoint, model), request.body);
    // The fake reports every part explicitly or not at all; unreported parts are simply absent here.
    const parts = {
      input: usage.input,
      cache_read: usage.cacheRead,
      cache_write: usage.cacheWrite,
      output: usage.output,
    };
    for (const count of Object.values(parts)) if (count !== undefined) tokens += count;
    if (!(model in PRICES)) continue; // unpriced: NULL cost, not in tokenmeter_cost_total
    const price = PRICES[model as PricedModel] as Record<string, string>;
    let perMillion = new Decimal(0);
    for (const [kind, count] of Object.entries(parts)) {
      if (count === undefined) continue;
      perMillion = perMillion.plus(new Decimal(price[kind] ?? price.input!).times(count));
    }
    cost[price.currency!] = (cost[price.currency!] ?? new Decimal(0)).plus(perMillion.dividedBy(1_000_000));
  }
  return {
    tokens: tokens * ROUNDS,
    cost: Object.fromEntries(Object.entries(cost).map(([c, v]) => [c, v.times(ROUNDS)])),
  };
}

interface PromSample {
  metric: Record<string, string>;
  value?: [number, string];
}

describe.skipIf(skip)('dashboards and rules against a real Prometheus scraping a running tokenmeter', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'tokenmeter-e2e-'));
  const children: Child[] = [];
  let gateway: FakeGateway | undefined;
  let tokenmeterUrl = '';
  let prometheusUrl = '';
  let alertmanagerUrl = '';
  let tokenmeter: Child;
  let prometheus: Child;

  async function query(
    expr: string,
  ): Promise<{ status: string; resultType: string; result: PromSample[]; error?: string }> {
    const response = await fetch(`${prometheusUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await response.json()) as {
      status: string;
      error?: string;
      data?: { resultType: string; result: PromSample[] | [number, string] };
    };
    const result = body.data?.resultType === 'vector' ? (body.data.result as PromSample[]) : [];
    return { status: body.status, resultType: body.data?.resultType ?? '', result, error: body.error };
  }

  async function scalarOf(expr: string): Promise<number | undefined> {
    const r = await query(expr);
    return r.result.length === 1 ? Number(r.result[0]!.value![1]) : undefined;
  }

  async function send(request: DrivenRequest): Promise<void> {
    const response = await fetch(`${tokenmeterUrl}${request.path}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${API_KEY}`,
        'x-api-key': API_KEY,
        'x-tokenmeter-app': request.app,
        ...request.headers,
      },
      body: JSON.stringify(request.body),
    });
    await response.text(); // the record is written after the last byte
    expect(response.status, `${request.path} ${String(request.body.model)}`).toBe(request.status);
  }

  /** Waits until Prometheus has scraped `n` requests in total. */
  async function prometheusSeesRequests(n: number): Promise<void> {
    await waitFor(
      `Prometheus to scrape ${n} requests`,
      async () => ((await scalarOf('sum(tokenmeter_requests_total)')) === n ? true : undefined),
      30_000,
      () => `tokenmeter:\n${tokenmeter.output()}\nprometheus:\n${prometheus.output().slice(-2000)}`,
      tokenmeter,
    );
  }

  beforeAll(async () => {
    gateway = await startFakeGateway();

    const pricesFile = join(scratch, 'prices.yaml');
    writeFileSync(
      pricesFile,
      stringify({
        currency: 'USD',
        unit: '1M',
        prices: Object.entries(PRICES).map(([model, p]) => ({ model, ...p })),
      }),
    );
    const configFile = join(scratch, 'tokenmeter.yaml');
    writeFileSync(
      configFile,
      stringify({
        budgets: [{ name: 'e2e-month', period: 'month', limit: '1', currency: 'USD', action: 'alert' }],
      }),
    );

    const port = await freePort();
    tokenmeterUrl = `http://127.0.0.1:${port}`;
    // A clean environment: no TOKENMETER_* or OTEL_* from the developer's shell.
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith('TOKENMETER_') && !k.startsWith('OTEL_')),
    );
    tokenmeter = startChild(
      process.execPath,
      [
        '--import',
        'tsx',
        CLI_ENTRY,
        'serve',
        '--upstream',
        `${gateway.url}/v1`,
        '--host',
        '127.0.0.1',
        '--port',
        String(port),
        '--config',
        configFile,
        '--db',
        join(scratch, 'tokenmeter.db'),
        '--no-presets',
        '--prices',
        pricesFile,
        '--log-level',
        'warn',
      ],
      { ...env, OTEL_SDK_DISABLED: 'true' },
      REPO, // `--import tsx` resolves from the repository
    );
    children.push(tokenmeter);
    await waitFor(
      'tokenmeter /healthz',
      async () => ((await fetch(`${tokenmeterUrl}/healthz`)).ok ? true : undefined),
      30_000,
      tokenmeter.output,
      tokenmeter,
    );

    // The shipped Alertmanager routing, with its example webhooks pointed at a closed local port
    // (notifications stay on 127.0.0.1; delivery itself is covered by alertmanager.test.ts).
    const amConfig = parse(readFileSync(ALERTMANAGER_CONFIG, 'utf8')) as {
      receivers: { name: string; webhook_configs?: { url: string }[] }[];
    };
    const closedPort = await freePort();
    for (const receiver of amConfig.receivers) {
      for (const hook of receiver.webhook_configs ?? [])
        hook.url = `http://127.0.0.1:${closedPort}/${receiver.name}`;
    }
    writeFileSync(join(scratch, 'alertmanager.yml'), stringify(amConfig));
    const alertmanager = await startAlertmanager(join(scratch, 'alertmanager.yml'), join(scratch, 'am'));
    children.push(alertmanager.child);
    alertmanagerUrl = alertmanager.url;

    const promPort = await freePort();
    prometheusUrl = `http://127.0.0.1:${promPort}`;
    const promConfig = join(scratch, 'prometheus.yml');
    writeFileSync(
      promConfig,
      stringify({
        global: { scrape_interval: '1s', evaluation_interval: '1s' },
        rule_files: [RULES_FILE],
        alerting: { alertmanagers: [{ static_configs: [{ targets: [new URL(alertmanagerUrl).host] }] }] },
        scrape_configs: [{ job_name: 'tokenmeter', static_configs: [{ targets: [`127.0.0.1:${port}`] }] }],
      }),
    );
    prometheus = startChild(mustHave(PROMETHEUS, 'prometheus'), [
      `--config.file=${promConfig}`,
      `--storage.tsdb.path=${join(scratch, 'tsdb')}`,
      `--web.listen-address=127.0.0.1:${promPort}`,
    ]);
    children.push(prometheus);
    await waitFor(
      'the first scrape of tokenmeter',
      async () => ((await scalarOf('up{job="tokenmeter"}')) === 1 ? true : undefined),
      30_000,
      () => prometheus.output().slice(-3000),
      prometheus,
    );

    // Two rounds with a scrape in between, so rate() and increase() see real increases.
    for (let round = 1; round <= ROUNDS; round++) {
      for (const request of ROUND) await send(request);
      await prometheusSeesRequests(round * ROUND.length);
    }
    // One more scrape and rule evaluation after the last change.
    const last = Date.now();
    await waitFor('another scrape', async () => {
      const ts = (await query('timestamp(up{job="tokenmeter"})')).result[0]?.value?.[1];
      return ts !== undefined && Number(ts) * 1000 > last + 1000 ? true : undefined;
    });
  }, 120_000);

  afterAll(async () => {
    await Promise.all(children.map((c) => c.stop()));
    await gateway?.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  it('exports exact spend per currency and the exact token total of the driven traffic', async () => {
    const expected = expectedTotals();
    const cost = await query('sum by (currency) (tokenmeter_cost_total)');
    expect(cost.status).toBe('success');
    const got = Object.fromEntries(cost.result.map((s) => [s.metric.currency!, Number(s.value![1])]));
    expect(Object.keys(got).sort()).toEqual(Object.keys(expected.cost).sort());
    for (const [currency, value] of Object.entries(expected.cost)) {
      // Float counters in Prometheus (§5.5); the per-request amounts are whole nanos.
      expect(got[currency], currency).toBeCloseTo(value.toNumber(), 12);
    }
    expect(await scalarOf('sum(tokenmeter_tokens_total)')).toBe(expected.tokens);
    expect(await scalarOf('sum(tokenmeter_requests_total)')).toBe(ROUND.length * ROUNDS);
  });

  it('every dashboard panel query succeeds, and those covering the driven traffic return data', async () => {
    // Metrics the traffic above must produce (budgets come from the config; rate-limit gauges from
    // the fake gateway's x-ratelimit-* headers; process_/nodejs_ from prom-client's defaults).
    const driven = new Set([
      'tokenmeter_requests_total',
      'tokenmeter_tokens_total',
      'tokenmeter_cost_total',
      'tokenmeter_request_duration_seconds_bucket',
      'tokenmeter_time_to_first_token_seconds_bucket',
      'tokenmeter_time_per_output_token_seconds_bucket',
      'tokenmeter_unpriced_requests_total',
      'tokenmeter_inflight_requests',
      'tokenmeter_ratelimit_remaining',
      'tokenmeter_ratelimit_limit',
      'tokenmeter_budget_spent',
      'tokenmeter_budget_limit',
      'tokenmeter_audit_queue_depth',
      'tokenmeter_audit_dropped_total',
      'process_resident_memory_bytes',
      'nodejs_heap_size_used_bytes',
      'process_cpu_seconds_total',
      'nodejs_eventloop_lag_p99_seconds',
    ]);
    // Exported, but this traffic does not produce them (no reasoning model, no balance or billing
    // endpoint configured, no upstream-reported cost, no estimated usage, no internal failure).
    const mayBeEmpty = new Set([
      'tokenmeter_reasoning_tokens_total',
      'tokenmeter_upstream_reported_cost_total',
      'tokenmeter_usage_unreported_total',
      'tokenmeter_upstream_balance',
      // Billed vs metered: only upstreams with `billing:` configured export them (docs/reconcile.md).
      'tokenmeter_billed_total',
      'tokenmeter_reconcile_drift_ratio',
      'tokenmeter_internal_errors_total',
      'tokenmeter_sse_oversize_events_total',
    ]);
    const failures: string[] = [];
    const queries = panelQueries();
    expect(queries.length).toBeGreaterThan(30);
    for (const q of queries) {
      const expr = substituteVariables(q.expr);
      const where = `${q.dashboard} / ${q.panel} [${q.refId}]: ${expr}`;
      const r = await query(expr);
      if (r.status !== 'success') {
        failures.push(`${where}\n  → ${r.status}: ${r.error}`);
        continue;
      }
      const names = metricNamesIn(q.expr);
      const unexpected = names.filter((name) => !driven.has(name) && !mayBeEmpty.has(name));
      if (unexpected.length > 0)
        failures.push(`${where}\n  → metric(s) not exported: ${unexpected.join(', ')}`);
      if (!names.every((name) => driven.has(name))) continue;
      if (r.resultType !== 'vector' || r.result.length === 0) {
        failures.push(`${where}\n  → no data`);
        continue;
      }
      // Shape: an outer `sum by (labels)` yields exactly those labels (quantiles drop `le`).
      const by = /^(?:sort_desc\()?(?:histogram_quantile\([\d.]+,\s*)?sum by \(([^)]*)\)/.exec(q.expr)?.[1];
      if (by !== undefined) {
        const want = by
          .split(',')
          .map((l) => l.trim())
          .filter((l) => l !== 'le')
          .sort();
        for (const sample of r.result) {
          const have = Object.keys(sample.metric).sort();
          if (have.join() !== want.join())
            failures.push(`${where}\n  → labels ${have.join()} ≠ ${want.join()}`);
        }
      }
      for (const sample of r.result) {
        const value = Number(sample.value![1]);
        if (!Number.isFinite(value) && !/ \/ /.test(q.expr))
          failures.push(`${where}\n  → value ${sample.value![1]}`);
      }
    }
    expect(failures, failures.join('\n')).toEqual([]);
  });

  it('every dashboard variable query finds the labels of the driven traffic', async () => {
    for (const { uid, dashboard } of loadDashboards()) {
      for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
        const definition = (variable.query as { query: string }).query;
        const m = /^label_values\((.+),\s*(\w+)\)$/.exec(definition);
        expect(m, `${uid} $${variable.name}: ${definition}`).not.toBeNull();
        const match = substituteVariables(m![1]!);
        const response = await fetch(
          `${prometheusUrl}/api/v1/label/${m![2]}/values?match[]=${encodeURIComponent(match)}`,
        );
        const body = (await response.json()) as { status: string; data: string[] };
        expect(body.status).toBe('success');
        const expectedValues = {
          upstream: ['default'],
          app: ['batch', 'web'],
          model: ['claude-sonnet-4-5', 'deepseek-chat', 'gpt-4o-mini', 'mystery-model'],
        }[variable.name];
        expect(body.data, `${uid} $${variable.name}`).toEqual(expect.arrayContaining(expectedValues ?? []));
      }
    }
  });

  it('every recording and alerting expression evaluates, and Prometheus reports every rule healthy', async () => {
    for (const rule of allRules()) {
      const r = await query(rule.expr);
      expect(r.status, `${rule.record ?? rule.alert}: ${r.error}`).toBe('success');
    }
    const rules = (await (await fetch(`${prometheusUrl}/api/v1/rules`)).json()) as {
      data: { groups: { name: string; rules: { name: string; health: string; lastError?: string }[] }[] };
    };
    const evaluated = rules.data.groups.flatMap((g) => g.rules);
    expect(evaluated.length).toBe(allRules().length);
    for (const rule of evaluated) expect(rule.health, `${rule.name}: ${rule.lastError}`).toBe('ok');
    // The driven traffic feeds the recording rules too.
    const recorded = await query('app_model_currency:tokenmeter_cost:rate5m');
    expect(recorded.result.map((s) => s.metric.currency).sort()).toEqual(
      expect.arrayContaining(['CNY', 'USD']),
    );
    // An unpriced model was requested, so its alert is active (pending or firing).
    const unpriced = await query('ALERTS{alertname="TokenmeterUnpricedModel"}');
    expect(unpriced.result.map((s) => s.metric.model)).toContain('mystery-model');
  });

  it('an alert fired by the shipped rules reaches Alertmanager, routed by its severity', async () => {
    // TokenmeterUnpricedModel has no `for`: the unpriced request makes it fire at the next evaluation.
    const alert = await waitFor('TokenmeterUnpricedModel in Alertmanager', async () => {
      const alerts = (await (await fetch(`${alertmanagerUrl}/api/v2/alerts`)).json()) as {
        labels: Record<string, string>;
        annotations: Record<string, string>;
        receivers: { name: string }[];
      }[];
      return alerts.find((a) => a.labels.alertname === 'TokenmeterUnpricedModel');
    });
    expect(alert.labels).toMatchObject({ severity: 'warning', model: 'mystery-model', upstream: 'default' });
    expect(alert.annotations.runbook_url).toBe('docs/runbook.md#tokenmeterunpricedmodel');
    expect(alert.receivers.map((r) => r.name)).toEqual(['warning']);
  });
});
