/** The shipped prometheus.yml (DESIGN.md §2, §7): valid for the real promtool, scraping tokenmeter's /metrics. */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { mustHave, PROMTOOL, run, skipWithoutBinary } from './binaries.js';
import { PROMETHEUS_CONFIG, RULES_FILE } from './paths.js';

interface PrometheusConfig {
  rule_files: string[];
  alerting: { alertmanagers: { static_configs: { targets: string[] }[] }[] };
  scrape_configs: { job_name: string; metrics_path?: string; static_configs: { targets: string[] }[] }[];
}

const config = parse(readFileSync(PROMETHEUS_CONFIG, 'utf8')) as PrometheusConfig;
const scratch = mkdtempSync(join(tmpdir(), 'tokenmeter-promcfg-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('prometheus.yml', () => {
  it('scrapes tokenmeter on its proxy port at /metrics and alerts to alertmanager:9093', () => {
    const job = config.scrape_configs.find((j) => j.job_name === 'tokenmeter');
    expect(job?.metrics_path ?? '/metrics').toBe('/metrics');
    expect(job?.static_configs.flatMap((s) => s.targets)).toEqual(['tokenmeter:4000']);
    expect(config.alerting.alertmanagers.flatMap((a) => a.static_configs.flatMap((s) => s.targets))).toEqual([
      'alertmanager:9093',
    ]);
    expect(config.rule_files.map((f) => basename(f))).toEqual([basename(RULES_FILE)]);
  });

  it.skipIf(skipWithoutBinary('promtool check config', PROMTOOL))(
    'promtool check config passes with the rule file where compose mounts it',
    () => {
      // The config names the in-container path; recreate that layout under a temp dir.
      mkdirSync(join(scratch, 'rules'));
      copyFileSync(RULES_FILE, join(scratch, 'rules', basename(RULES_FILE)));
      const relocated = { ...config, rule_files: config.rule_files.map((f) => join('rules', basename(f))) };
      writeFileSync(join(scratch, 'prometheus.yml'), stringify(relocated));
      const result = run(mustHave(PROMTOOL, 'promtool'), ['check', 'config', 'prometheus.yml'], scratch);
      expect(result.status, result.output).toBe(0);
      expect(result.output).toMatch(/SUCCESS: 1 rule files found/);
      expect(result.output).toMatch(/SUCCESS: \d+ rules found/);
    },
  );
});
