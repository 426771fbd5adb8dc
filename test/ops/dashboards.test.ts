/** Static checks of the shipped Grafana dashboards and provisioning (DESIGN.md §10). */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadDashboards, panelQueries, panelsOf, substituteVariables } from './dashboards.js';
import { repoPath } from './paths.js';
import { isKnownMetric, metricNamesIn } from './promql.js';
import { recordingRuleNames } from './rules-file.js';

const DATASOURCE_REF = '${datasource}';
const boards = loadDashboards();

/** Every `datasource` reference anywhere in a dashboard, with where it was found. */
function datasourceRefs(node: unknown, path = '$'): { path: string; ref: unknown }[] {
  if (Array.isArray(node)) return node.flatMap((v, i) => datasourceRefs(v, `${path}[${i}]`));
  if (node === null || typeof node !== 'object') return [];
  return Object.entries(node).flatMap(([key, value]) => [
    ...(key === 'datasource' ? [{ path: `${path}.${key}`, ref: value }] : []),
    ...datasourceRefs(value, `${path}.${key}`),
  ]);
}

describe.each(boards)('dashboard $uid', ({ uid, dashboard }) => {
  it('has its fixed uid and a pinned schemaVersion', () => {
    expect(dashboard.uid).toBe(uid);
    expect(dashboard.schemaVersion).toBe(39);
  });

  it('has a prometheus `datasource` variable and upstream/app/model variables that use it', () => {
    const vars = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]));
    expect(vars.datasource).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const name of ['upstream', 'app', 'model']) {
      expect(vars[name], name).toMatchObject({ type: 'query', datasource: { uid: DATASOURCE_REF } });
    }
  });

  it('every panel and every target uses ${datasource}; no datasource uid is hard-coded', () => {
    const panels = panelsOf(dashboard);
    expect(panels.length).toBeGreaterThan(10);
    for (const panel of panels) {
      expect(panel.datasource, panel.title).toEqual({ type: 'prometheus', uid: DATASOURCE_REF });
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets ?? []) {
        expect(target.datasource, `${panel.title} ${target.refId}`).toEqual({
          type: 'prometheus',
          uid: DATASOURCE_REF,
        });
        expect(target.expr, `${panel.title} ${target.refId}`).toMatch(/\S/);
      }
    }
    for (const { path, ref } of datasourceRefs(dashboard)) {
      const uidOf = (ref as { uid?: string } | string | null) ?? null;
      const refUid = typeof uidOf === 'string' ? uidOf : uidOf?.uid;
      // The only other reference allowed is Grafana's built-in annotation source.
      expect([DATASOURCE_REF, '-- Grafana --'], path).toContain(refUid);
    }
  });

  it('panel ids are unique', () => {
    const ids = dashboard.panels.flatMap((p) => [p.id, ...(p.panels ?? []).map((c) => c.id)]);
    expect(new Set(ids).size).toBe(ids.length);
  });
});

describe('dashboard queries', () => {
  const queries = panelQueries();
  const recorded = recordingRuleNames();

  it('reference only metrics tokenmeter exports (src/semconv.ts), recording rules or process defaults', () => {
    for (const q of queries) {
      const names = metricNamesIn(q.expr);
      expect(names.length, `${q.dashboard} / ${q.panel}`).toBeGreaterThan(0);
      for (const name of names) {
        expect(isKnownMetric(name, recorded), `${q.dashboard} / ${q.panel}: unknown metric ${name}`).toBe(
          true,
        );
      }
    }
  });

  it('never add money across currencies: every sum over cost, budget or balance keeps `currency`', () => {
    const money =
      /tokenmeter_(cost_total|upstream_reported_cost_total|budget_spent|budget_limit|upstream_balance)/;
    const moneyQueries = queries.filter((q) => money.test(q.expr));
    expect(moneyQueries.length).toBeGreaterThan(5);
    for (const q of moneyQueries) {
      expect(q.expr, `${q.panel}: bare sum()`).not.toMatch(/\bsum\s*\(/);
      for (const m of q.expr.matchAll(/\bsum\s+by\s*\(([^)]*)\)/g)) {
        expect(
          m[1]!.split(',').map((l) => l.trim()),
          q.panel,
        ).toContain('currency');
      }
    }
  });

  it('filter on the upstream/app/model variables wherever the metric has those labels', () => {
    for (const q of queries.filter((q) => /tokenmeter_(requests|tokens|cost)_total/.test(q.expr))) {
      expect(q.expr, q.panel).toContain('upstream=~"$upstream"');
      expect(q.expr, q.panel).toContain('app=~"$app"');
      expect(q.expr, q.panel).toContain('model=~"$model"');
    }
  });

  it('variable substitution leaves no Grafana variable behind', () => {
    for (const q of queries) expect(substituteVariables(q.expr), q.panel).not.toContain('$');
  });
});

describe('Grafana provisioning', () => {
  it('provisions a prometheus datasource and loads dashboards from where compose mounts them', () => {
    const ds = parse(
      readFileSync(repoPath('dashboards/provisioning/datasources/prometheus.yml'), 'utf8'),
    ) as {
      datasources: { type: string; url: string }[];
    };
    expect(ds.datasources).toEqual([
      expect.objectContaining({ type: 'prometheus', url: 'http://prometheus:9090' }),
    ]);
    const providers = parse(
      readFileSync(repoPath('dashboards/provisioning/dashboards/tokenmeter.yml'), 'utf8'),
    ) as {
      providers: { type: string; options: { path: string } }[];
    };
    expect(providers.providers).toEqual([
      expect.objectContaining({
        type: 'file',
        options: expect.objectContaining({ path: '/var/lib/grafana/dashboards' }),
      }),
    ]);
  });
});
