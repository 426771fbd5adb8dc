/**
 * `tokenmeter report` (DESIGN.md §2, §5.5, §6): spend, tokens and request counts from the audit
 * log, grouped as asked. Money is exact (BigInt nanos summed in SQL) and totalled PER CURRENCY;
 * a converted grand total appears only when FX rates and a report currency are configured. Beside
 * every amount the report shows how many requests had estimated or missing usage or no price, so a
 * partial number is never read as the bill.
 */
import type { Command } from 'commander';
import type Database from 'better-sqlite3';
import type pg from 'pg';
import type { FxRate } from '../config/schema.js';
import { loadSettings } from '../config/load.js';
import type { Settings } from '../config/types.js';
import { UsageError } from '../errors.js';
import { withFleet, type FleetConnectOptions } from '../fleet/connect.js';
import { queryFleetReport, queryFleetSpendByDay } from '../fleet/queries.js';
import { convertNanos, formatNanos, nanosToDecimalText } from '../pricing/money.js';
import {
  FLEET_REPORT_DIMENSIONS,
  REPORT_DIMENSIONS,
  TOKEN_COLUMNS,
  queryReport,
  querySpendByDay,
  type ReportDimension,
  type ReportRow,
} from '../sinks/audit/queries.js';
import { CONFIG_HELP, DB_HELP, openExistingDatabase, parseDurationMs, resolveDb, runAction } from './db.js';

export const REPORT_FORMATS = ['table', 'csv', 'json'] as const;
export type ReportFormat = (typeof REPORT_FORMATS)[number];

export interface ReportOptions {
  fromMs: number;
  toMs: number;
  by: ReportDimension[];
  /** Convert totals into this currency (needs `fx`); a record's own currency is never rewritten. */
  reportCurrency?: string;
  fx?: readonly FxRate[];
}

export interface ConvertedTotal {
  currency: string;
  /** Sum of every convertible cost, converted per UTC day with the rate in force that day. */
  cost_nanos: bigint;
  /** Currencies present in the window with no applicable rate: NOT included in `cost_nanos`. */
  unconverted: string[];
}

export interface Report {
  fromMs: number;
  toMs: number;
  by: ReportDimension[];
  groups: ReportRow[];
  /** One row per currency (null currency = requests with no known cost). */
  totals: ReportRow[];
  converted?: ConvertedTotal;
}

/**
 * A time bound: a relative duration back from `nowMs` ("24h", "7d"), a UTC day ("2026-11-01",
 * meaning its midnight) or an ISO timestamp with time ("2026-11-01T08:00:00Z").
 */
export function parseTimeBound(text: string, flag: string, nowMs: number): number {
  const t = text.trim();
  if (/^\d+\s*[smhdw]$/.test(t)) {
    const ms = nowMs - parseDurationMs(t, flag);
    // A Date holds ±8.64e15 ms; further back than that cannot be a time (and would throw later).
    if (ms >= -8.64e15) return ms;
    throw new UsageError(`${flag}: ${JSON.stringify(text)} reaches before the earliest date a time can have`);
  }
  if (/^\d{4}-\d{2}-\d{2}$/.test(t)) {
    const ms = Date.parse(`${t}T00:00:00Z`);
    if (Number.isFinite(ms) && new Date(ms).toISOString().startsWith(t)) return ms;
  } else if (/^\d{4}-\d{2}-\d{2}T/.test(t)) {
    const ms = Date.parse(t);
    if (Number.isFinite(ms)) return ms;
  }
  throw new UsageError(
    `${flag}: expected 24h, 7d, 2026-11-01 or an ISO timestamp, got ${JSON.stringify(text)}`,
  );
}

export function parseBy(
  text: string | undefined,
  allowed: readonly ReportDimension[] = REPORT_DIMENSIONS,
): ReportDimension[] {
  if (text === undefined || text.trim() === '') return [];
  const dims = text.split(',').map((s) => s.trim());
  for (const d of dims) {
    if (!(allowed as readonly string[]).includes(d)) {
      const hint = d === 'host' ? ' (host needs --fleet)' : '';
      throw new UsageError(
        `--by: unknown dimension ${JSON.stringify(d)}${hint}; use any of ${allowed.join(',')}`,
      );
    }
  }
  return [...new Set(dims as ReportDimension[])];
}

/** What a report is computed from: the same three queries over either store. */
export interface ReportData {
  groups: ReportRow[];
  totals: ReportRow[];
  /** Only read when a report currency is asked for. */
  spendByDay: Array<{ day: string; currency: string; cost_nanos: bigint }>;
}

/** The one assembly of a report, whichever store the rows came from. */
export function assembleReport(opts: ReportOptions, data: ReportData): Report {
  const report: Report = {
    fromMs: opts.fromMs,
    toMs: opts.toMs,
    by: opts.by,
    groups: data.groups,
    totals: data.totals,
  };
  if (opts.reportCurrency !== undefined) {
    const target = opts.reportCurrency;
    let total = 0n;
    const unconverted = new Set<string>();
    for (const d of data.spendByDay) {
      const converted = convertNanos(d.cost_nanos, d.currency, target, opts.fx ?? [], d.day);
      if (converted === null) unconverted.add(d.currency);
      else total += converted;
    }
    report.converted = { currency: target, cost_nanos: total, unconverted: [...unconverted].sort() };
  }
  return report;
}

/** The report over this host's SQLite audit log. */
export function buildReport(db: Database.Database, opts: ReportOptions): Report {
  const window = { fromMs: opts.fromMs, toMs: opts.toMs };
  return assembleReport(opts, {
    groups: opts.by.length > 0 ? queryReport(db, { ...window, by: opts.by }) : [],
    totals: queryReport(db, { ...window, by: [] }),
    spendByDay: opts.reportCurrency !== undefined ? querySpendByDay(db, opts.fromMs, opts.toMs) : [],
  });
}

/** The report over the fleet Postgres: every host's shipped rows (docs/fleet.md). */
export async function buildFleetReport(client: pg.ClientBase, opts: ReportOptions): Promise<Report> {
  const window = { fromMs: opts.fromMs, toMs: opts.toMs };
  return assembleReport(opts, {
    groups: opts.by.length > 0 ? await queryFleetReport(client, { ...window, by: opts.by }) : [],
    totals: await queryFleetReport(client, { ...window, by: [] }),
    spendByDay:
      opts.reportCurrency !== undefined ? await queryFleetSpendByDay(client, opts.fromMs, opts.toMs) : [],
  });
}

const TOKEN_HEADERS: Record<(typeof TOKEN_COLUMNS)[number], string> = {
  input_tokens: 'input',
  cache_read_tokens: 'cache_read',
  cache_write_tokens: 'cache_write',
  output_tokens: 'output',
  reasoning_tokens: 'reasoning',
};

/** Unknown is shown as "-", never as 0. */
const UNKNOWN = '-';

const costText = (row: ReportRow): string =>
  row.cost_nanos === null ? UNKNOWN : formatNanos(row.cost_nanos);

function caveatCounts(report: Report): {
  estimated: number;
  missing: number;
  unpriced: number;
  requests: number;
} {
  const out = { estimated: 0, missing: 0, unpriced: 0, requests: 0 };
  for (const t of report.totals) {
    out.estimated += t.estimated;
    out.missing += t.missing;
    out.unpriced += t.unpriced;
    out.requests += t.requests;
  }
  return out;
}

function tableRow(row: ReportRow, dims: readonly ReportDimension[]): string[] {
  return [
    ...dims.map((d) => row.keys[d] ?? UNKNOWN),
    row.currency ?? UNKNOWN,
    String(row.requests),
    costText(row),
    ...TOKEN_COLUMNS.map((c) => (row.tokens[c] === null ? UNKNOWN : String(row.tokens[c]))),
    String(row.estimated),
    String(row.missing),
    String(row.unpriced),
    String(row.errors),
  ];
}

function alignTable(rows: string[][], numericFrom: number): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((cell, i) => (i >= numericFrom ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

const COUNT_HEADERS = ['estimated', 'missing', 'unpriced', 'errors'];

export function formatTable(report: Report): string {
  const dims = report.by.length > 0 ? report.by : [];
  const header = [
    ...dims,
    'currency',
    'requests',
    'cost',
    ...TOKEN_COLUMNS.map((c) => TOKEN_HEADERS[c]),
    ...COUNT_HEADERS,
  ];
  const numericFrom = dims.length + 1;
  const out: string[] = [
    `tokenmeter report ${new Date(report.fromMs).toISOString()} .. ${new Date(report.toMs).toISOString()}`,
    '',
  ];
  if (dims.length > 0) {
    out.push(alignTable([header, ...report.groups.map((g) => tableRow(g, dims))], numericFrom), '');
  }
  out.push('totals per currency (currency "-": requests with no known cost):');
  if (report.totals.length === 0) out.push('(no requests in this window)');
  else out.push(alignTable([header.slice(dims.length), ...report.totals.map((t) => tableRow(t, []))], 1));
  if (report.converted) {
    const c = report.converted;
    out.push(
      '',
      `converted total: ${formatNanos(c.cost_nanos, c.currency)}` +
        (c.unconverted.length > 0
          ? ` (excludes ${c.unconverted.join(', ')}: no FX rate to ${c.currency})`
          : ''),
    );
  }
  const k = caveatCounts(report);
  out.push(
    '',
    `of ${k.requests} requests: ${k.estimated} with estimated usage, ${k.missing} with missing usage, ` +
      `${k.unpriced} unpriced (cost unknown, not in any sum)`,
  );
  return out.join('\n') + '\n';
}

function csvCell(value: string): string {
  return /[",\n\r]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

export function formatCsv(report: Report): string {
  const header = [
    'row',
    ...report.by,
    'currency',
    'requests',
    'cost',
    'cost_nanos',
    ...TOKEN_COLUMNS,
    'estimated',
    'missing',
    'unpriced',
    'errors',
  ];
  const line = (kind: string, row: ReportRow, withKeys: boolean): string[] => [
    kind,
    ...report.by.map((d) => (withKeys ? (row.keys[d] ?? '') : '')),
    row.currency ?? '',
    String(row.requests),
    row.cost_nanos === null ? '' : nanosToDecimalText(row.cost_nanos),
    row.cost_nanos === null ? '' : String(row.cost_nanos),
    ...TOKEN_COLUMNS.map((c) => (row.tokens[c] === null ? '' : String(row.tokens[c]))),
    String(row.estimated),
    String(row.missing),
    String(row.unpriced),
    String(row.errors),
  ];
  const rows: string[][] = [header];
  for (const g of report.groups) rows.push(line('group', g, true));
  for (const t of report.totals) rows.push(line('total', t, false));
  if (report.converted) {
    const c = report.converted;
    const blank = header.map(() => '');
    blank[0] = 'converted';
    blank[report.by.length + 1] = c.currency;
    blank[report.by.length + 3] = nanosToDecimalText(c.cost_nanos);
    blank[report.by.length + 4] = String(c.cost_nanos);
    rows.push(blank);
  }
  return rows.map((r) => r.map(csvCell).join(',')).join('\n') + '\n';
}

/** JSON numbers for counts that fit; exact strings for money (and for token sums beyond 2^53). */
const jsonInt = (v: bigint | null): number | string | null =>
  v === null ? null : Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();

function rowJson(row: ReportRow): Record<string, unknown> {
  return {
    ...row.keys,
    currency: row.currency,
    requests: row.requests,
    cost: row.cost_nanos === null ? null : nanosToDecimalText(row.cost_nanos),
    cost_nanos: row.cost_nanos === null ? null : row.cost_nanos.toString(),
    tokens: Object.fromEntries(TOKEN_COLUMNS.map((c) => [TOKEN_HEADERS[c], jsonInt(row.tokens[c])])),
    estimated: row.estimated,
    missing: row.missing,
    unpriced: row.unpriced,
    errors: row.errors,
  };
}

/** The `--format json` document as an object (the console's `GET /-/api/report` answers the same). */
export function reportToJson(report: Report): Record<string, unknown> {
  return {
    from: new Date(report.fromMs).toISOString(),
    to: new Date(report.toMs).toISOString(),
    by: report.by,
    groups: report.groups.map(rowJson),
    totals: report.totals.map(rowJson),
    converted: report.converted
      ? {
          currency: report.converted.currency,
          cost: nanosToDecimalText(report.converted.cost_nanos),
          cost_nanos: report.converted.cost_nanos.toString(),
          unconverted: report.converted.unconverted,
        }
      : null,
    caveats: caveatCounts(report),
  };
}

export function formatJson(report: Report): string {
  return JSON.stringify(reportToJson(report), null, 2) + '\n';
}

export function formatReport(report: Report, format: ReportFormat): string {
  if (format === 'csv') return formatCsv(report);
  if (format === 'json') return formatJson(report);
  return formatTable(report);
}

export interface ReportCliOptions {
  db?: string;
  config?: string;
  since?: string;
  until?: string;
  by?: string;
  format?: string;
  currency?: string;
  /** Report over the fleet Postgres (every host) instead of the local audit log. */
  fleet?: boolean;
}

interface ParsedReportFlags {
  format: ReportFormat;
  options: ReportOptions;
}

/** Flags → report options, the same for both stores (only `--by host` is fleet-only). */
function parseReportFlags(flags: ReportCliOptions, settings: Settings, nowMs: number): ParsedReportFlags {
  const format = (flags.format ?? 'table') as ReportFormat;
  if (!REPORT_FORMATS.includes(format)) {
    throw new UsageError(`--format: expected table, csv or json, got ${JSON.stringify(flags.format)}`);
  }
  const fromMs = parseTimeBound(flags.since ?? '24h', '--since', nowMs);
  const toMs = flags.until !== undefined ? parseTimeBound(flags.until, '--until', nowMs) : nowMs;
  if (fromMs >= toMs) throw new UsageError('--since must be before --until');
  const by = parseBy(flags.by, flags.fleet === true ? FLEET_REPORT_DIMENSIONS : REPORT_DIMENSIONS);
  const currency =
    flags.currency !== undefined ? flags.currency.trim().toUpperCase() : settings.reportCurrency;
  if (currency !== undefined && !/^[A-Z]{3}$/.test(currency)) {
    throw new UsageError(
      `--currency: expected a 3-letter code like CNY, got ${JSON.stringify(flags.currency)}`,
    );
  }
  return { format, options: { fromMs, toMs, by, reportCurrency: currency, fx: settings.fx } };
}

/**
 * The whole command as a function of its flags (tests call it; the action only prints). FX rates
 * and `report_currency` come from the config file; `--currency` overrides the latter.
 */
export function reportCommand(
  flags: ReportCliOptions,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  nowMs: number = Date.now(),
): string {
  if (flags.fleet === true) throw new UsageError('report --fleet is asynchronous: use reportFleetCommand');
  const { settings, dbPath } = resolveDb(flags, env, cwd);
  const { format, options } = parseReportFlags(flags, settings, nowMs);
  const db = openExistingDatabase(dbPath);
  try {
    return formatReport(buildReport(db, options), format);
  } finally {
    db.close();
  }
}

/**
 * `report --fleet`: the same report, formats and exact per-currency totals over every host's rows
 * in the fleet Postgres (`fleet.postgres.url` or TOKENMETER_PG_URL); `--by host` splits by sidecar.
 */
export async function reportFleetCommand(
  flags: ReportCliOptions,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  nowMs: number = Date.now(),
  connect: FleetConnectOptions = {},
): Promise<string> {
  const settings = loadSettings({ config: flags.config, db: flags.db }, env, cwd);
  const { format, options } = parseReportFlags({ ...flags, fleet: true }, settings, nowMs);
  const report = await withFleet(settings, (client) => buildFleetReport(client, options), connect);
  return formatReport(report, format);
}

export function register(program: Command): void {
  program
    .command('report')
    .description('spend, tokens and requests from the audit log, totals per currency')
    .option('--db <path>', DB_HELP)
    .option('--config <file>', CONFIG_HELP)
    .option('--since <when>', 'start: 24h, 7d, 2026-11-01 or an ISO timestamp', '24h')
    .option('--until <when>', 'end (exclusive), same forms as --since (default: now)')
    .option('--by <dims>', 'group by any of app,model,upstream,day (UTC days); with --fleet also host')
    .option('--format <format>', 'table, csv or json', 'table')
    .option(
      '--currency <code>',
      'also show a total converted with the config fx: rates (default: report_currency)',
    )
    .option('--fleet', 'every host: read the fleet Postgres (fleet.postgres.url / TOKENMETER_PG_URL)')
    .action((flags: ReportCliOptions) =>
      runAction(async () => {
        process.stdout.write(flags.fleet === true ? await reportFleetCommand(flags) : reportCommand(flags));
      }),
    );
}
