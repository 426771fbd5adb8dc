/**
 * OpenTelemetry through @opentelemetry/sdk-node, end to end in one process (issue 12): the real
 * `startServe`, the real `openai` client, the fake gateway, and real OTLP receivers on 127.0.0.1.
 * Spans, metrics and logs reach the receiver over http/protobuf (the default), http/json and gRPC;
 * the standard OTEL_* variables (headers, resource, service name, sampler, propagators,
 * OTEL_SDK_DISABLED, per-signal exporters) behave as the OTel spec says; no secret is exported; a
 * receiver that is down never affects traffic and is counted.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startServe } from '../../src/cli/serve.js';
import { createLogger } from '../../src/log.js';
import { expectedUsage, startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';
import { samples } from '../e2e/helpers.js';
import {
  startOtlpGrpcReceiver,
  startOtlpHttpReceiver,
  type OtlpLog,
  type OtlpMetric,
  type OtlpReceiver,
  type OtlpSpan,
} from './otlp-receivers.js';

const APP_TRACE = '0af7651916cd43dd8448eb211c80319c';
const APP_SPAN = 'b7ad6b7169203331';
const API_KEY = 'sk-otel-secret-key-do-not-export-4711';
const PROMPT = 'zanzibar quokka';
// USD per 1K tokens, so every token is a whole number of nanos: input 1e6, output 2e6.
const PRICES = 'currency: USD\nunit: 1K\nprices:\n  - { model: gpt-4o, input: 1, output: 2 }\n';
const FAST = {
  OTEL_BSP_SCHEDULE_DELAY: '50',
  OTEL_BLRP_SCHEDULE_DELAY: '50',
  OTEL_METRIC_EXPORT_INTERVAL: '200',
  OTEL_EXPORTER_OTLP_TIMEOUT: '2000',
};

let gateway: FakeGateway;
let dir: string;
let priceFile: string;
const cleanups: Array<() => Promise<void>> = [];
beforeAll(async () => {
  gateway = await startFakeGateway();
  dir = mkdtempSync(join(tmpdir(), 'tm-otel-'));
  priceFile = join(dir, 'prices.yaml');
  writeFileSync(priceFile, PRICES);
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});
afterAll(async () => {
  await gateway?.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Served {
  client: OpenAI;
  base: string;
  lines: string[];
  /** Stops tokenmeter: its OpenTelemetry sink flushes every signal on the way out. */
  stop(): Promise<void>;
}

async function serve(env: Record<string, string>, headers: Record<string, string> = {}): Promise<Served> {
  const lines: string[] = [];
  const running = await startServe(
    { upstream: `${gateway.url}/v1`, port: '0', db: ':memory:', presets: false, prices: [priceFile] },
    env,
    dir,
    createLogger('debug', (l) => lines.push(l)),
  );
  let stopped = false;
  const stop = async () => {
    if (!stopped) await running.stop();
    stopped = true;
  };
  cleanups.push(stop);
  const base = `http://127.0.0.1:${running.port}`;
  const client = new OpenAI({
    apiKey: API_KEY,
    baseURL: `${base}/v1`,
    maxRetries: 0,
    defaultHeaders: headers,
  });
  return { client, base, lines, stop };
}

async function receiver(kind: 'http' | 'grpc'): Promise<OtlpReceiver> {
  const r = kind === 'grpc' ? await startOtlpGrpcReceiver() : await startOtlpHttpReceiver();
  cleanups.push(() => r.close());
  return r;
}

function upstreamRequestsSince(before: number) {
  return gateway.requests.slice(before).filter((r) => r.path.startsWith('/v1/chat/completions'));
}

const metricNamed = (metrics: OtlpMetric[], name: string): OtlpMetric => {
  // Cumulative temporality (the OTLP default): the last export, from shutdown's final collect, has it all.
  const found = metrics.filter((m) => m.name === name);
  expect(found.length, name).toBeGreaterThanOrEqual(1);
  return found.at(-1)!;
};

const PROTOCOLS = [
  { protocol: undefined, receiver: 'http', contentType: 'application/x-protobuf' },
  { protocol: 'http/json', receiver: 'http', contentType: 'application/json' },
  { protocol: 'grpc', receiver: 'grpc', contentType: 'application/grpc' },
] as const;

describe.each(PROTOCOLS)(
  'spans, metrics and logs over $contentType',
  ({ protocol, receiver: kind, contentType }) => {
    it('reach a real receiver with the GenAI span, metrics and one log record per request, and no secret', async () => {
      const otlp = await receiver(kind);
      const tm = await serve(
        {
          ...FAST,
          OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
          ...(protocol ? { OTEL_EXPORTER_OTLP_PROTOCOL: protocol } : {}),
          OTEL_METRICS_EXPORTER: 'otlp',
          OTEL_LOGS_EXPORTER: 'otlp',
          OTEL_EXPORTER_OTLP_HEADERS: 'x-collector-tenant=team-a',
          OTEL_SERVICE_NAME: 'tm-under-test',
          OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=ci,service.namespace=llm',
        },
        {
          traceparent: `00-${APP_TRACE}-${APP_SPAN}-01`,
          tracestate: 'vendor=otel',
          'x-tokenmeter-app': 'otel-app',
        },
      );
      const before = gateway.requests.length;
      const body = { model: 'gpt-4o', messages: [{ role: 'user' as const, content: PROMPT }] };
      const answer = await tm.client.chat.completions.create(body);
      expect(answer.choices[0]!.message.content).toBe(`echo: ${PROMPT}`);
      // A failing request: 429, recorded with error_type (WARN log, error.type on the duration).
      await expect(
        tm.client.chat.completions.create({ ...body, model: 'error-429-quota+gpt-4o' }),
      ).rejects.toMatchObject({ status: 429 });
      await tm.stop();

      // Every export went over the configured protocol, with the configured headers.
      expect(new Set(otlp.exports.map((e) => e.signal))).toEqual(new Set(['traces', 'metrics', 'logs']));
      for (const e of otlp.exports) {
        expect(e.contentType).toContain(contentType);
        expect(e.headers['x-collector-tenant']).toBe('team-a');
      }

      // Traces: one CLIENT span per request (no auto-instrumented http spans), parented on the app's span.
      const spans = otlp.spans();
      expect(spans).toHaveLength(2);
      const span = spans.find((s) => s.name === 'chat gpt-4o')!;
      expect(span).toBeDefined();
      expect(span.kind).toBe(3); // SPAN_KIND_CLIENT
      expect(span.traceId).toBe(APP_TRACE);
      expect(span.parentSpanId).toBe(APP_SPAN);
      expect(span.scope).toBe('tokenmeter');
      const upstream = upstreamRequestsSince(before);
      expect(upstream[0]!.headers.traceparent).toBe(`00-${APP_TRACE}-${span.spanId}-01`);
      expect(upstream[0]!.headers.tracestate).toBe('vendor=otel');
      const usage = expectedUsage('openai', body);
      const costUsd = (usage.input * 1e6 + usage.output! * 2e6) / 1e9;
      expect(span.attributes).toMatchObject({
        'gen_ai.operation.name': 'chat',
        'gen_ai.provider.name': 'openai',
        'gen_ai.request.model': 'gpt-4o',
        'gen_ai.usage.input_tokens': usage.input,
        'gen_ai.usage.output_tokens': usage.output,
        'server.address': '127.0.0.1',
        'http.response.status_code': 200,
        'tokenmeter.app': 'otel-app',
        'tokenmeter.upstream': 'default',
        'tokenmeter.usage_source': 'reported',
        'tokenmeter.currency': 'USD',
        'tokenmeter.cost': costUsd,
      });
      const failed = spans.find((s) => s !== span)!;
      expect(failed.statusCode).toBe(2); // STATUS_CODE_ERROR
      expect(failed.attributes['error.type']).toBe('insufficient_quota');
      expectResource(span.resource);

      expectMetrics(otlp.metrics(), usage, costUsd);
      expectLogs(otlp.logs(), span, failed, usage.input, usage.output!);

      // Nothing secret or content-bearing anywhere on the wire.
      const raw = otlp.rawText();
      expect(raw).not.toContain(API_KEY);
      expect(raw).not.toContain('Bearer');
      expect(raw).not.toContain('zanzibar');
      expect(raw).not.toContain('quokka');
    });
  },
);

function expectResource(resource: Record<string, unknown>): void {
  expect(resource['service.name']).toBe('tm-under-test'); // OTEL_SERVICE_NAME beats the default
  expect(resource['deployment.environment.name']).toBe('ci'); // OTEL_RESOURCE_ATTRIBUTES
  expect(resource['service.namespace']).toBe('llm');
  expect(resource['telemetry.sdk.language']).toBe('nodejs');
  // Not the process detector: our command line (with the upstream URL) stays home.
  expect(resource).not.toHaveProperty('process.command_args');
}

function expectMetrics(
  metrics: OtlpMetric[],
  usage: { input: number; output?: number },
  costUsd: number,
): void {
  for (const m of metrics) expect(m.scope).toBe('tokenmeter');
  const tokens = metricNamed(metrics, 'gen_ai.client.token.usage');
  expect(tokens.type).toBe('histogram');
  expect(tokens.unit).toBe('{token}');
  const byType = Object.fromEntries(tokens.points.map((p) => [p.attributes['gen_ai.token.type'], p]));
  // The 429 reported no usage: it adds no token sample (unknown is not zero).
  expect(tokens.points).toHaveLength(2);
  expect(byType.input).toMatchObject({ count: 1, sum: usage.input });
  expect(byType.output).toMatchObject({ count: 1, sum: usage.output });
  expect(byType.input!.explicitBounds?.slice(0, 3)).toEqual([1, 4, 16]); // GenAI semconv advice
  expect(Object.keys(byType.input!.attributes).sort()).toEqual(
    [
      'gen_ai.operation.name',
      'gen_ai.provider.name',
      'gen_ai.request.model',
      'gen_ai.response.model',
      'gen_ai.token.type',
      'server.address',
      'tokenmeter.app',
      'tokenmeter.upstream',
    ].sort(),
  );
  expect(byType.input!.attributes).toMatchObject({
    'gen_ai.operation.name': 'chat',
    'gen_ai.provider.name': 'openai',
    'gen_ai.request.model': 'gpt-4o',
    'server.address': '127.0.0.1',
    'tokenmeter.app': 'otel-app',
    'tokenmeter.upstream': 'default',
  });

  const duration = metricNamed(metrics, 'gen_ai.client.operation.duration');
  expect(duration.unit).toBe('s');
  expect(duration.points.map((p) => p.attributes['error.type']).sort()).toEqual([
    'insufficient_quota',
    undefined,
  ]);
  for (const p of duration.points) expect(p.count).toBe(1);

  const cost = metricNamed(metrics, 'tokenmeter.cost');
  expect(cost.type).toBe('sum');
  expect(cost.isMonotonic).toBe(true);
  expect(cost.points).toHaveLength(1);
  expect(cost.points[0]!.attributes['tokenmeter.currency']).toBe('USD');
  expect(cost.points[0]!.value).toBeCloseTo(costUsd, 12);
}

function expectLogs(logs: OtlpLog[], ok: OtlpSpan, failed: OtlpSpan, input: number, output: number): void {
  expect(logs).toHaveLength(2);
  const log = logs.find((l) => l.spanId === ok.spanId)!;
  expect(log).toBeDefined();
  expect(log.scope).toBe('tokenmeter');
  expect(log.eventName).toBe('tokenmeter.request');
  expect(log.severityNumber).toBe(9);
  expect(log.severityText).toBe('INFO');
  expect(log.traceId).toBe(APP_TRACE); // links to the trace
  expect(log.body).toMatch(/^chat gpt-4o 200 /);
  expect(log.attributes).toMatchObject({
    id: ok.attributes['tokenmeter.record_id'],
    method: 'POST',
    path: '/v1/chat/completions',
    operation: 'chat',
    request_model: 'gpt-4o',
    app: 'otel-app',
    upstream: 'default',
    stream: false,
    http_status: 200,
    input_tokens: input,
    output_tokens: output,
    usage_source: 'reported',
    cost_nanos: input * 1e6 + output * 2e6,
    currency: 'USD',
    cost_source: 'computed',
    trace_id: APP_TRACE,
  });
  expect(log.kinds.cost_nanos).toBe('intValue'); // exact money: an integer, not a double
  expect(log.attributes.key_id).toMatch(/^[0-9a-f]{12}$/); // the fingerprint, never the key
  // Unknown stays absent (the fake reports no cache figures for gpt-4o), never 0.
  expect(log.attributes).not.toHaveProperty('cache_read_tokens');
  expect(log.attributes).not.toHaveProperty('error_type');

  const warn = logs.find((l) => l.spanId === failed.spanId)!;
  expect(warn.severityNumber).toBe(13);
  expect(warn.severityText).toBe('WARN');
  expect(warn.attributes).toMatchObject({ error_type: 'insufficient_quota', http_status: 429 });
  expect(warn.body).toMatch(/429 insufficient_quota/);
}

describe('standard OTEL_* variables, as sdk-node reads them', () => {
  it('an OTLP endpoint alone turns on traces only: metrics and logs need their exporter variable', async () => {
    const otlp = await receiver('http');
    const tm = await serve({ ...FAST, OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url });
    await tm.client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    await tm.stop();
    expect(otlp.exports.map((e) => e.path)).toEqual(['/v1/traces']);
    expect(otlp.spans()).toHaveLength(1);
    expect(otlp.spans()[0]!.resource['service.name']).toBe('tokenmeter'); // our default service name
  });

  it('metrics alone: OTEL_TRACES_EXPORTER=none, OTEL_METRICS_EXPORTER=otlp (no traceparent is added upstream)', async () => {
    const otlp = await receiver('http');
    const tm = await serve({
      ...FAST,
      OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `${otlp.url}/v1/metrics`,
      OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json',
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_METRICS_EXPORTER: 'otlp',
    });
    const before = gateway.requests.length;
    await tm.client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    await tm.stop();
    expect(new Set(otlp.exports.map((e) => e.path))).toEqual(new Set(['/v1/metrics']));
    expect(otlp.exports[0]!.contentType).toContain('application/json');
    expect(metricNamed(otlp.metrics(), 'gen_ai.client.token.usage').points).toHaveLength(2);
    expect(upstreamRequestsSince(before)[0]!.headers).not.toHaveProperty('traceparent');
  });

  /**
   * One chat through a serve whose sampler drops every span: the answer is untouched, nothing is
   * exported as a span, and the trace context still goes upstream, unsampled. Returns the
   * receiver and the traceparent the upstream got.
   */
  async function oneSampledOut(env: Record<string, string>, content: string) {
    const otlp = await receiver('http');
    const tm = await serve({ ...FAST, OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, ...env });
    const before = gateway.requests.length;
    const answer = await tm.client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content }],
    });
    expect(answer.choices[0]!.message.content).toBe(`echo: ${content}`);
    await tm.stop();
    expect(otlp.spans()).toEqual([]);
    const traceparent = upstreamRequestsSince(before)[0]!.headers.traceparent as string;
    expect(traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    return { otlp, traceparent };
  }

  it('OTEL_TRACES_SAMPLER=always_off: no spans, traffic fine, the context still propagates unsampled', async () => {
    await oneSampledOut({ OTEL_TRACES_SAMPLER: 'always_off' }, 'sampled out');
  });

  it('OTEL_TRACES_SAMPLER=parentbased_traceidratio sampled out: no span, but the record keeps its trace id and its cost', async () => {
    // The sampling docs/opentelemetry.md recommends for busy deployments thins traces, never accounting.
    const { otlp, traceparent } = await oneSampledOut(
      {
        OTEL_LOGS_EXPORTER: 'otlp',
        OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
        OTEL_TRACES_SAMPLER_ARG: '0',
      },
      'ratio sampled out',
    );
    const [log] = otlp.logs();
    expect(log!.attributes.trace_id).toBe(traceparent.split('-')[1]);
    expect(log!.attributes).toMatchObject({ usage_source: 'reported', currency: 'USD' });
    expect(log!.attributes.cost_nanos).toBeGreaterThan(0);
  });

  it('OTEL_PROPAGATORS=b3: the parent comes from and the span context goes to the upstream as b3', async () => {
    const otlp = await receiver('http');
    const tm = await serve(
      { ...FAST, OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_PROPAGATORS: 'b3' },
      { b3: `${APP_TRACE}-${APP_SPAN}-1` },
    );
    const before = gateway.requests.length;
    await tm.client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'b3' }] });
    await tm.stop();
    const [span] = otlp.spans();
    expect(span!.traceId).toBe(APP_TRACE);
    expect(span!.parentSpanId).toBe(APP_SPAN);
    const headers = upstreamRequestsSince(before)[0]!.headers;
    expect(headers.b3).toBe(`${APP_TRACE}-${span!.spanId}-1`);
    expect(headers).not.toHaveProperty('traceparent'); // only the configured propagators inject
  });

  it('OTEL_SDK_DISABLED=true: nothing is exported and nothing is added to traffic', async () => {
    const otlp = await receiver('http');
    const tm = await serve({
      ...FAST,
      OTEL_SDK_DISABLED: 'true',
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
      OTEL_TRACES_EXPORTER: 'otlp',
      OTEL_METRICS_EXPORTER: 'otlp',
      OTEL_LOGS_EXPORTER: 'otlp',
    });
    const before = gateway.requests.length;
    await tm.client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'off' }],
    });
    await tm.stop();
    expect(otlp.exports).toEqual([]);
    expect(upstreamRequestsSince(before)[0]!.headers).not.toHaveProperty('traceparent');
    expect(tm.lines.join('')).not.toContain('OpenTelemetry on');
  });

  it('with the receiver down, traffic is unaffected; failures of every signal are counted and logged once', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const { port } = probe.address() as AddressInfo;
    await new Promise<void>((r) => probe.close(() => r()));

    const tm = await serve({
      ...FAST,
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      OTEL_EXPORTER_OTLP_TIMEOUT: '500',
      OTEL_METRICS_EXPORTER: 'otlp',
      OTEL_LOGS_EXPORTER: 'otlp',
    });
    for (let i = 0; i < 3; i++) {
      const answer = await tm.client.chat.completions.create({
        model: 'gpt-4o',
        messages: [{ role: 'user', content: `ping ${i}` }],
      });
      expect(answer.choices[0]!.message.content).toBe(`echo: ping ${i}`);
    }
    const stream = await tm.client.chat.completions.create({
      model: 'gpt-4o',
      stream: true,
      messages: [{ role: 'user', content: 'one two' }],
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toBe('echo: one two');

    const deadline = Date.now() + 10_000;
    let failures = 0;
    while (failures === 0 && Date.now() < deadline) {
      const m = await (await fetch(`${tm.base}/metrics`)).text();
      failures = samples(m, 'tokenmeter_internal_errors_total', { component: 'otel' })[0]?.value ?? 0;
      if (failures === 0) await new Promise((r) => setTimeout(r, 100));
    }
    expect(failures).toBeGreaterThanOrEqual(1);
    await tm.stop();
    expect(tm.lines.filter((l) => l.includes('OpenTelemetry export failed'))).toHaveLength(1);
  });
});
