/**
 * Just enough PromQL reading to list the metric names an expression selects, so a renamed metric in
 * src/semconv.ts fails the ops tests instead of silently emptying a panel or muting an alert.
 */
import { METRIC } from '../../src/semconv.js';

const KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'inf',
  'nan',
  'atan2',
]);

/** Metric names selected by a PromQL expression (functions, labels and keywords excluded). */
export function metricNamesIn(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""') // string literals
    .replace(/\{[^}]*\}/g, ' ') // label matchers (Grafana $vars live here too)
    .replace(/\[[^\]]*\]/g, ' ') // range and subquery selectors ($__rate_interval)
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, name, call] = m;
    if (call !== undefined || KEYWORDS.has(name!.toLowerCase())) continue;
    names.add(name!);
  }
  return [...names];
}

const HISTOGRAMS = [
  METRIC.requestDuration,
  METRIC.timeToFirstToken,
  METRIC.timePerOutputToken,
  METRIC.genAiTokenUsage,
  METRIC.genAiOperationDuration,
];

/** Every name tokenmeter itself exports (histograms with their _bucket/_sum/_count series). */
export const EXPORTED_NAMES: ReadonlySet<string> = new Set([
  ...Object.values(METRIC),
  ...HISTOGRAMS.flatMap((h) => [`${h}_bucket`, `${h}_sum`, `${h}_count`]),
]);

/**
 * Whether a name may appear in a panel or rule: one of ours, a recording rule from the shipped
 * rules file, a prom-client default (process_*, nodejs_*), or Prometheus' own `up`/`ALERTS`.
 */
export function isKnownMetric(name: string, recordingRules: ReadonlySet<string>): boolean {
  return (
    EXPORTED_NAMES.has(name) ||
    recordingRules.has(name) ||
    /^(process|nodejs)_[a-z0-9_]+$/.test(name) ||
    name === 'up' ||
    name === 'ALERTS'
  );
}
