/**
 * `tokenmeter budgets [--db] [--config] [--format table|json]` (DESIGN.md §2, §9): each configured
 * budget's period-to-date spend (from the audit log, exact), limit, ratio and projection to the end
 * of the period, computed by the same code the running proxy uses (src/budgets/).
 */
import type { Command } from 'commander';
import { createBudgets, type BudgetStatus } from '../budgets/index.js';
import { loadSettings } from '../config/load.js';
import { TokenmeterError, UsageError } from '../errors.js';
import { SILENT_LOGGER } from '../log.js';
import { formatNanos, nanosToDecimalText } from '../pricing/money.js';
import { querySpend } from '../sinks/audit/queries.js';
import { openExistingDatabase, runAction } from './db.js';

export const BUDGETS_FORMATS = ['table', 'json'] as const;
export type BudgetsFormat = (typeof BUDGETS_FORMATS)[number];

export interface BudgetsCliOptions {
  db?: string;
  config?: string;
  format?: string;
}

/** Exact decimal strings for money; ratio rounded for display only. */
export function statusToJson(s: BudgetStatus): Record<string, unknown> {
  return {
    name: s.name,
    scope: s.scope,
    period: s.period,
    timezone: s.timezone,
    period_start: new Date(s.period_start).toISOString(),
    period_end: new Date(s.period_end).toISOString(),
    period_start_date: s.period_start_date,
    currency: s.currency,
    limit: nanosToDecimalText(s.limit_nanos),
    spent: nanosToDecimalText(s.spent_nanos),
    projected: nanosToDecimalText(s.projected_nanos),
    limit_nanos: s.limit_nanos.toString(),
    spent_nanos: s.spent_nanos.toString(),
    projected_nanos: s.projected_nanos.toString(),
    ratio: Number.isFinite(s.ratio) ? Number(s.ratio.toFixed(6)) : null,
    warn_at: s.warn_at,
    warnings_crossed: s.warnings_crossed,
    exceeded: s.exceeded,
    action: s.action,
  };
}

function scopeText(scope: BudgetStatus['scope']): string {
  const parts = Object.entries(scope)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  return parts.length > 0 ? parts.join(' ') : 'all';
}

function stateText(s: BudgetStatus): string {
  if (s.exceeded) return s.action === 'block' ? 'EXCEEDED (blocking)' : 'EXCEEDED';
  const top = s.warnings_crossed.at(-1);
  return top === undefined ? 'ok' : `warn ≥${Math.round(top * 100)}%`;
}

export function formatBudgetsTable(statuses: BudgetStatus[]): string {
  const header = ['budget', 'scope', 'period', 'since', 'spent', 'limit', 'used', 'projected', 'state'];
  const rows = statuses.map((s) => [
    s.name,
    scopeText(s.scope),
    `${s.period} (${s.timezone})`,
    s.period_start_date,
    formatNanos(s.spent_nanos, s.currency),
    formatNanos(s.limit_nanos, s.currency),
    Number.isFinite(s.ratio) ? `${(s.ratio * 100).toFixed(1)}%` : '∞',
    formatNanos(s.projected_nanos, s.currency),
    stateText(s),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i >= 4 && i <= 7 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

export function budgetsCommand(
  flags: BudgetsCliOptions,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  nowMs: number = Date.now(),
): string {
  const format = (flags.format ?? 'table') as BudgetsFormat;
  if (!BUDGETS_FORMATS.includes(format)) {
    throw new UsageError(`--format: expected table or json, got ${JSON.stringify(flags.format)}`);
  }
  const settings = loadSettings({ config: flags.config, db: flags.db }, env, cwd);
  if (settings.budgets.length === 0) {
    if (format === 'json') return '[]\n';
    return `no budgets configured${settings.configFile ? ` in ${settings.configFile}` : ' (no config file found; pass --config)'}\n`;
  }
  if (settings.db === null) {
    throw new TokenmeterError(
      'DB_ERROR',
      'budgets need the audit DB (db: false in config); pass --db <path>',
    );
  }
  const db = openExistingDatabase(settings.db);
  try {
    const budgets = createBudgets({
      budgets: settings.budgets,
      spend: (filter) => querySpend(db, filter),
      now: () => nowMs,
      log: SILENT_LOGGER,
    });
    const statuses = budgets.status();
    if (format === 'json') return JSON.stringify(statuses.map(statusToJson), null, 2) + '\n';
    return formatBudgetsTable(statuses);
  } finally {
    db.close();
  }
}

export function register(program: Command): void {
  program
    .command('budgets')
    .description("each budget's period-to-date spend, limit, ratio and projection to the period end")
    .option('--db <path>', 'audit DB file (default: $TOKENMETER_DB, the config db:, or ./tokenmeter.db)')
    .option('--config <file>', 'config file with budgets: (default: $TOKENMETER_CONFIG or ./tokenmeter.yaml)')
    .option('--format <format>', 'table or json', 'table')
    .action((flags: BudgetsCliOptions) =>
      runAction(() => {
        process.stdout.write(budgetsCommand(flags));
      }),
    );
}
