/**
 * The shipped Prometheus rules (DESIGN.md §9) against the real promtool: they load, every alert is
 * proven to fire and to stay quiet by alerts/tokenmeter.rules.test.yml, and every alert is complete
 * (severity, summary, description, a runbook anchor that exists).
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { mustHave, PROMTOOL, run, skipWithoutBinary } from './binaries.js';
import { REPO, RULES_FILE, RULES_TEST_FILE, RUNBOOK } from './paths.js';
import { isKnownMetric, metricNamesIn } from './promql.js';
import { alertRules, allRules, loadRules, recordingRuleNames } from './rules-file.js';

interface PromtoolTestFile {
  tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[];
}

const scratch = mkdtempSync(join(tmpdir(), 'tokenmeter-rules-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('alert rules: static checks', () => {
  const rules = loadRules();

  it('every alert has a severity, summary, description and a runbook anchor that exists', () => {
    const runbookAnchors = new Set(
      [...readFileSync(RUNBOOK, 'utf8').matchAll(/^##+\s+(.+)$/gm)].map((m) =>
        m[1]!
          .trim()
          .toLowerCase()
          .replace(/[^a-z0-9 _-]/g, '')
          .replace(/ /g, '-'),
      ),
    );
    const alerts = alertRules(rules);
    expect(alerts.map((a) => a.alert).sort()).toEqual([
      'TokenmeterAuditRecordsDropped',
      'TokenmeterBillingDrift',
      'TokenmeterBudgetBlocking',
      'TokenmeterBudgetBurnRateFast',
      'TokenmeterBudgetBurnRateSlow',
      'TokenmeterBudgetExceeded',
      'TokenmeterBudgetProjectedOverspend',
      'TokenmeterBudgetWarning',
      'TokenmeterDown',
      'TokenmeterFleetShipLagGrowing',
      'TokenmeterInsufficientQuota',
      'TokenmeterUnpricedModel',
      'TokenmeterUpstreamBalanceLow',
      'TokenmeterUpstreamErrorRatioHigh',
      'TokenmeterUsageUnreportedHigh',
    ]);
    for (const alert of alerts) {
      expect(['critical', 'warning'], alert.alert).toContain(alert.labels?.severity);
      expect(alert.annotations?.summary, alert.alert).toMatch(/\S/);
      expect(alert.annotations?.description, alert.alert).toMatch(/\S/);
      const anchor = /^docs\/runbook\.md#(.+)$/.exec(alert.annotations?.runbook_url ?? '');
      expect(anchor, `${alert.alert} runbook_url`).not.toBeNull();
      expect(runbookAnchors, `${alert.alert}: docs/runbook.md has no heading for #${anchor![1]}`).toContain(
        anchor![1],
      );
    }
  });

  it('recording rules follow level:metric:operations and every expression uses exported metrics', () => {
    const recorded = recordingRuleNames(rules);
    for (const name of recorded) expect(name).toMatch(/^[a-z_]+:tokenmeter_[a-z_]+:[a-z0-9_]+$/);
    for (const rule of allRules(rules)) {
      const names = metricNamesIn(rule.expr);
      expect(names.length, rule.expr).toBeGreaterThan(0);
      for (const name of names) {
        expect(
          isKnownMetric(name, recorded),
          `${rule.alert ?? rule.record} uses unknown metric ${name}`,
        ).toBe(true);
      }
    }
  });

  it('money is never summed across currencies: every aggregation of cost/budget/balance keeps `currency`', () => {
    for (const rule of allRules(rules)) {
      for (const m of rule.expr.matchAll(
        /sum\s+by\s*\(([^)]*)\)\s*\(\s*(?:rate|increase)\((tokenmeter_cost_total)/g,
      )) {
        expect(
          m[1]!.split(',').map((l) => l.trim()),
          rule.record ?? rule.alert,
        ).toContain('currency');
      }
    }
  });

  it('the promtool test file checks every alert both firing and quiet', () => {
    const tests = parse(readFileSync(RULES_TEST_FILE, 'utf8')) as PromtoolTestFile;
    const cases = tests.tests.flatMap((t) => t.alert_rule_test ?? []);
    for (const alert of alertRules(rules)) {
      const mine = cases.filter((c) => c.alertname === alert.alert);
      expect(
        mine.some((c) => c.exp_alerts.length > 0),
        `${alert.alert} never shown firing`,
      ).toBe(true);
      expect(
        mine.some((c) => c.exp_alerts.length === 0),
        `${alert.alert} never shown quiet`,
      ).toBe(true);
    }
  });
});

describe.skipIf(skipWithoutBinary('promtool rule checks', PROMTOOL))('alert rules: real promtool', () => {
  it('promtool check rules accepts the rules file', async () => {
    const result = await run(mustHave(PROMTOOL, 'promtool'), ['check', 'rules', RULES_FILE]);
    expect(result.output).toMatch(/SUCCESS: \d+ rules found/);
    expect(result.status, result.output).toBe(0);
  });

  it('promtool test rules passes: every alert fires on a realistic series and stays quiet on a healthy one', async () => {
    // Relative path from the repo root, exactly as docs/operations.md tells users to run it: Prometheus
    // offsets each rule group's evaluation by a hash of its name AND file path, so an absolute path
    // (which differs per checkout) would shift evaluation times and make rate/value checks flaky.
    const result = await run(
      mustHave(PROMTOOL, 'promtool'),
      ['test', 'rules', 'alerts/tokenmeter.rules.test.yml'],
      REPO,
    );
    expect(result.status, result.output).toBe(0);
    expect(result.output).toContain('SUCCESS');
  });

  // Proves the unit tests have teeth: an alert that can never fire must make them fail.
  it.each(alertRules().map((a) => a.alert!))(
    'the promtool tests fail when %s can never fire',
    async (alertName) => {
      const mutated = loadRules();
      for (const rule of mutated.groups.flatMap((g) => g.rules)) {
        if (rule.alert === alertName) rule.expr = 'vector(1) == 0';
      }
      const dir = mkdtempSync(join(scratch, 'mutant-'));
      writeFileSync(join(dir, 'tokenmeter.rules.yml'), stringify(mutated));
      copyFileSync(RULES_TEST_FILE, join(dir, 'tokenmeter.rules.test.yml'));
      const result = await run(
        mustHave(PROMTOOL, 'promtool'),
        ['test', 'rules', 'tokenmeter.rules.test.yml'],
        dir,
      );
      expect(result.status).not.toBe(0);
      expect(result.output).toContain(`alertname: ${alertName}`);
    },
  );
});
