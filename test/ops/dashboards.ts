/** The shipped Grafana dashboards, parsed, with their panel queries listed. */
import { readFileSync } from 'node:fs';
import { DASHBOARDS } from './paths.js';

export interface Target {
  refId: string;
  expr: string;
  datasource?: { type?: string; uid?: string };
}

export interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}

export interface TemplateVariable {
  name: string;
  type: string;
  query?: unknown;
  datasource?: { type?: string; uid?: string };
}

export interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: TemplateVariable[] };
}

export interface PanelQuery {
  dashboard: string;
  panel: string;
  refId: string;
  expr: string;
}

export function loadDashboards(): { uid: string; path: string; dashboard: Dashboard }[] {
  return DASHBOARDS.map((d) => ({ ...d, dashboard: JSON.parse(readFileSync(d.path, 'utf8')) as Dashboard }));
}

/** Every panel (rows flattened), excluding the rows themselves. */
export function panelsOf(dashboard: Dashboard): Panel[] {
  return dashboard.panels.flatMap((p) => (p.type === 'row' ? (p.panels ?? []) : [p]));
}

export function panelQueries(): PanelQuery[] {
  return loadDashboards().flatMap(({ uid, dashboard }) =>
    panelsOf(dashboard).flatMap((panel) =>
      (panel.targets ?? []).map((t) => ({
        dashboard: uid,
        panel: panel.title,
        refId: t.refId,
        expr: t.expr,
      })),
    ),
  );
}

/**
 * A panel query as Grafana would send it with every template variable on "All": regex variables
 * become `.*`, interval variables concrete durations.
 */
export function substituteVariables(expr: string, rangeSeconds = 300): string {
  return expr
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$__interval', '15s')
    .replaceAll('$__range', `${rangeSeconds}s`)
    .replace(/\$\{?(upstream|app|model)\}?/g, '.*');
}
