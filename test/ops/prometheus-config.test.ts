/**
 * The shipped Prometheus configs (DESIGN.md §2, §7, issue 12): `prometheus.yml` at the repository
 * root works as it is next to a local `tokenmeter serve` (relative rule path, 127.0.0.1 targets) and
 * passes the real `promtool check config` from the repository root; `compose/prometheus.yml` is the
 * same file with compose service names as targets, and passes in the layout compose mounts.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { mustHave, PROMTOOL, run, skipWithoutBinary } from './binaries.js';
import { COMPOSE_PROMETHEUS_CONFIG, PROMETHEUS_CONFIG, REPO, repoPath } from './paths.js';

interface PrometheusConfig {
  rule_files: string[];
  alerting: { alertmanagers: { static_configs: { targets: string[] }[] }[] };
  scrape_configs: { job_name: string; metrics_path?: string; static_configs: { targets: string[] }[] }[];
}

const load = (path: string) => parse(readFileSync(path, 'utf8')) as PrometheusConfig;
const local = load(PROMETHEUS_CONFIG);
const composed = load(COMPOSE_PROMETHEUS_CONFIG);
const scratch = mkdtempSync(join(tmpdir(), 'tokenmeter-promcfg-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const jobTargets = (config: PrometheusConfig, job: string) =>
  config.scrape_configs
    .filter((j) => j.job_name === job)
    .flatMap((j) => j.static_configs.flatMap((s) => s.targets));
const alertmanagerTargets = (config: PrometheusConfig) =>
  config.alerting.alertmanagers.flatMap((a) => a.static_configs.flatMap((s) => s.targets));

describe('prometheus.yml (repository root)', () => {
  it('scrapes a local tokenmeter on 127.0.0.1:4000/metrics, alerts to a local alertmanager, loads the rules by a relative path', () => {
    const job = local.scrape_configs.find((j) => j.job_name === 'tokenmeter');
    expect(job?.metrics_path ?? '/metrics').toBe('/metrics');
    expect(jobTargets(local, 'tokenmeter')).toEqual(['127.0.0.1:4000']);
    expect(alertmanagerTargets(local)).toEqual(['127.0.0.1:9093']);
    expect(local.rule_files).toEqual(['alerts/tokenmeter.rules.yml']);
  });

  it.skipIf(skipWithoutBinary('promtool check config', PROMTOOL))(
    'promtool check config prometheus.yml passes from the repository root',
    async () => {
      const result = await run(mustHave(PROMTOOL, 'promtool'), ['check', 'config', 'prometheus.yml'], REPO);
      expect(result.status, result.output).toBe(0);
      expect(result.output).toMatch(/SUCCESS: 1 rule files found/);
      expect(result.output).toMatch(/SUCCESS: \d+ rules found/);
    },
  );
});

describe('compose/prometheus.yml', () => {
  it('is the root file with compose service names as targets, nothing else differs', () => {
    const asLocal = structuredClone(composed);
    const renamed: Record<string, string> = {
      'tokenmeter:4000': '127.0.0.1:4000',
      'alertmanager:9093': '127.0.0.1:9093',
      'localhost:9090': '127.0.0.1:9090',
    };
    for (const group of [
      ...asLocal.scrape_configs.flatMap((j) => j.static_configs),
      ...asLocal.alerting.alertmanagers.flatMap((a) => a.static_configs),
    ]) {
      // tokenmeter-b is the compose fleet's second sidecar; locally there is one tokenmeter.
      group.targets = group.targets.filter((t) => t !== 'tokenmeter-b:4000').map((t) => renamed[t] ?? t);
    }
    expect(asLocal).toEqual(local);
    expect(jobTargets(composed, 'tokenmeter')).toEqual(['tokenmeter:4000', 'tokenmeter-b:4000']);
  });

  it.skipIf(skipWithoutBinary('promtool check config', PROMTOOL))(
    'promtool check config passes in the layout compose mounts (config + alerts/ in one directory)',
    async () => {
      cpSync(COMPOSE_PROMETHEUS_CONFIG, join(scratch, 'prometheus.yml'));
      cpSync(repoPath('alerts'), join(scratch, 'alerts'), { recursive: true });
      const result = await run(
        mustHave(PROMTOOL, 'promtool'),
        ['check', 'config', 'prometheus.yml'],
        scratch,
      );
      expect(result.status, result.output).toBe(0);
      expect(result.output).toMatch(/SUCCESS: 1 rule files found/);
    },
  );
});
