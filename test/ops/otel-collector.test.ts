/**
 * The shipped OpenTelemetry Collector config (otel/collector.yaml, docs/opentelemetry.md): it parses,
 * every pipeline names only components that are defined, every component is one the contrib
 * distribution has, and request records (logs) go to Loki, ClickHouse and Elasticsearch. No collector
 * binary is needed; when `otelcol-contrib` is on PATH, its own `validate` runs too.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { findBinary, run } from './binaries.js';
import { repoPath } from './paths.js';

const CONFIG_PATH = repoPath('otel/collector.yaml');
type Section = Record<string, unknown>;
interface CollectorConfig {
  receivers: Section;
  processors: Section;
  exporters: Section;
  service: { pipelines: Record<string, { receivers: string[]; processors?: string[]; exporters: string[] }> };
}
const config = parse(readFileSync(CONFIG_PATH, 'utf8')) as CollectorConfig;

// Component types (the part before `/`) of otel/opentelemetry-collector-contrib that the file may use.
const CONTRIB = {
  receivers: new Set(['otlp']),
  processors: new Set(['memory_limiter', 'batch', 'attributes', 'resource', 'filter', 'transform']),
  exporters: new Set(['otlp', 'otlphttp', 'clickhouse', 'elasticsearch', 'debug', 'prometheusremotewrite']),
};
const typeOf = (id: string) => id.split('/')[0]!;

describe('otel/collector.yaml', () => {
  it('has traces, metrics and logs pipelines that use only defined contrib components', () => {
    const pipelines = config.service.pipelines;
    expect(Object.keys(pipelines).sort()).toEqual(['logs', 'metrics', 'traces']);
    for (const [name, p] of Object.entries(pipelines)) {
      for (const kind of ['receivers', 'processors', 'exporters'] as const) {
        for (const id of p[kind] ?? []) {
          expect(config[kind], `${name}: ${kind} ${id} is not defined`).toHaveProperty([id]);
          expect(CONTRIB[kind].has(typeOf(id)), `${name}: ${id} is not a contrib ${kind} type`).toBe(true);
        }
      }
      expect(p.receivers).toEqual(['otlp']);
      // memory_limiter first, batch last: the collector's documented order.
      expect(p.processors).toEqual(['memory_limiter', 'batch']);
    }
    for (const kind of ['receivers', 'processors', 'exporters'] as const) {
      const used = new Set(Object.values(pipelines).flatMap((p) => p[kind] ?? []));
      expect(
        [...Object.keys(config[kind])].filter((id) => !used.has(id)),
        `unused ${kind}`,
      ).toEqual([]);
    }
  });

  it('receives OTLP on the standard ports and ships request records to Loki, ClickHouse and Elasticsearch', () => {
    const otlp = config.receivers.otlp as { protocols: Record<string, { endpoint: string }> };
    expect(otlp.protocols.grpc!.endpoint).toMatch(/:4317$/);
    expect(otlp.protocols.http!.endpoint).toMatch(/:4318$/);
    expect(config.service.pipelines.logs!.exporters.map(typeOf).sort()).toEqual([
      'clickhouse',
      'elasticsearch',
      'otlphttp',
    ]);
    expect((config.exporters['otlphttp/loki'] as { endpoint: string }).endpoint).toMatch(/\/otlp$/);
    expect(config.service.pipelines.traces!.exporters.map(typeOf)).toEqual(['otlp']);
  });

  const otelcol = findBinary('otelcol-contrib');
  // Optional even in CI: the contrib collector is neither a Debian nor an npm package, so CI cannot
  // install it; the structural checks above run everywhere.
  if (otelcol === null)
    console.warn('[test/ops] skipping `otelcol-contrib validate`: no otelcol-contrib binary on PATH');
  it.skipIf(otelcol === null)('passes `otelcol-contrib validate`', async () => {
    const r = await run(otelcol!, ['validate', `--config=${CONFIG_PATH}`]);
    expect(r.status, r.output).toBe(0);
  });
});
