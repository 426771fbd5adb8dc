/**
 * `tokenmeter reconcile --import FILE` (issue 13, DESIGN.md §14; docs/reconcile.md "Importing a
 * gateway's usage log"): a one-api / new-api usage log (what the gateway billed, request by
 * request) against the audit log (what we metered). Lists every billed row we never saw, every
 * metered row the gateway did not bill, and every matched pair whose tokens or cost differ — most
 * interesting: a request whose usage we only estimated or never got, for which the gateway states
 * what it billed.
 *
 * Money: quota → USD is `quota / quotaPerUsd` (one-api `QuotaPerUnit` = 500,000 = $1; ratio 1 =
 * $0.002 / 1K tokens, DESIGN.md §5.4), exact with decimal.js, rounded half-up once to nanos. Totals
 * are kept per currency; a USD bill is compared with metered cost only where we metered in USD too.
 *
 * The file is read by log-formats.ts, rows are paired by match-log.ts; this module is the options,
 * the result and its two renderings.
 */
import type Database from 'better-sqlite3';
import { UsageError, formatProblem, type SourceProblem } from '../errors.js';
import { Dec, formatNanos, nanosToDecimalText, unitsToNanos } from '../pricing/money.js';
import {
  readUsageLog,
  type LogFormat,
  type ParsedUsageLog,
  type RowSource,
  type SkippedLogRow,
  type UsageLogRow,
} from './log-formats.js';
import {
  billedPrompt,
  expectedBilled,
  formatDuration,
  loadAuditRows,
  matchLogRows,
  meteredPrompt,
  type AuditRow,
  type MatchedBy,
  type ModelMatch,
  type PromptBasis,
} from './match-log.js';

export type { AuditRow, UsageLogRow, SkippedLogRow, RowSource };

export interface ImportOptions {
  file: string;
  format?: 'json' | 'csv';
  quotaPerUsd?: number;
  windowMs?: number;
  upstream?: string;
  fromMs?: number;
  toMs?: number;
}

/** one-api `QuotaPerUnit`: 500 × 1000 quota = $1 (so $0.002 = 1,000 quota). */
export const DEFAULT_QUOTA_PER_USD = 500_000;
export const DEFAULT_MATCH_WINDOW_MS = 120_000;
/** The currency quota is defined in. */
export const BILLED_CURRENCY = 'USD';
/**
 * How long before the scope an audit row may start and still match (a long stream or Realtime
 * session logged when it ended). Rows in this margin are matched but never listed as unmatched.
 */
export const LONG_REQUEST_MS = 3_600_000;

export type DifferenceKind = 'tokens' | 'cost' | 'usage_unreported';

export interface MatchedRequest {
  log: UsageLogRow;
  audit: AuditRow;
  by: MatchedBy;
  model_match: ModelMatch;
  /** How far the log time lies outside our [ts_start − 1 s, ts_end] (0 = inside). */
  time_gap_ms: number;
  billed: {
    quota: number;
    cost_nanos: bigint;
    currency: string;
    prompt_tokens: number;
    /** Which reading of the log's prompt_tokens was compared (match-log.ts `billedPrompt`). */
    prompt_basis: PromptBasis;
    completion_tokens: number;
  };
  metered: {
    usage_source: string;
    /** input + cache_read + cache_write; null when we do not know it. */
    prompt_tokens: number | null;
    completion_tokens: number | null;
    cost_nanos: bigint | null;
    currency: string | null;
  };
  /** metered − billed (negative: the gateway billed more). null where either side is unknown or currencies differ. */
  diff: { prompt_tokens: number | null; completion_tokens: number | null; cost_nanos: bigint | null };
  /** Empty for an exact match. */
  differences: DifferenceKind[];
  /** One human sentence per difference. */
  notes: string[];
}

export interface UnmatchedLogRow {
  log: UsageLogRow;
  billed_cost_nanos: bigint;
  reason: string;
}

export interface CurrencyAmount {
  currency: string;
  cost_nanos: bigint;
  requests: number;
}

export interface BilledAmount {
  currency: string;
  requests: number;
  quota: bigint;
  /** quota / quotaPerUsd for the whole group, rounded once. */
  cost_nanos: bigint;
}

export interface ImportTotals {
  /** Every consumption row read (in the time window). */
  billed: BilledAmount;
  billed_matched: BilledAmount;
  /** Billed by the gateway, not in our log. */
  billed_unmatched: BilledAmount;
  /** Our cost of the matched rows, per currency (never summed across currencies). */
  metered_matched: CurrencyAmount[];
  /** Matched rows whose cost we do not know (unpriced or no usage). */
  metered_matched_unknown: number;
  /** Our cost of the rows the gateway did not bill, per currency. */
  metered_unmatched: CurrencyAmount[];
  metered_unmatched_unknown: number;
  /** Matched rows we metered in the billed currency: billed and metered side by side. */
  same_currency: {
    currency: string;
    requests: number;
    billed_nanos: bigint;
    metered_nanos: bigint;
    difference_nanos: bigint;
  };
}

export interface ImportCounts {
  /** Rows in the file, of any type, readable or not. */
  log_rows: number;
  /** Billed-request rows (type 2) read and in the time window: what is matched. */
  consumption: number;
  matched: number;
  matched_exact: number;
  matched_with_differences: number;
  token_differences: number;
  cost_differences: number;
  usage_unreported: number;
  unmatched_log: number;
  /** Audit rows in scope considered for matching. */
  audit_rows: number;
  unmatched_audit: number;
  /** Unmatched audit rows the gateway is not expected to bill (no answer, 4xx/5xx, `other` operation). */
  unmatched_audit_not_billable: number;
  parse_problems: number;
  warnings: number;
  skipped: number;
  skipped_by_type: Record<string, number>;
  outside_window: number;
}

export interface ImportResult {
  file: string;
  format: LogFormat;
  shape: string;
  settings: {
    quota_per_usd: number;
    window_ms: number;
    upstream: string | null;
    from_ms: number | null;
    to_ms: number | null;
    /** The audit rows listed as unmatched are those with ts_start in [scope_from_ms, scope_to_ms). */
    scope_from_ms: number | null;
    scope_to_ms: number | null;
  };
  counts: ImportCounts;
  matched: MatchedRequest[];
  unmatched_log: UnmatchedLogRow[];
  unmatched_audit: AuditRow[];
  not_billable_audit: AuditRow[];
  totals: ImportTotals;
  problems: SourceProblem[];
  warnings: SourceProblem[];
  skipped: SkippedLogRow[];
  outside_window: RowSource[];
  ignored_columns: string[];
}

interface Settings {
  quotaPerUsd: number;
  windowMs: number;
}

function validate(opts: ImportOptions): Settings {
  if (opts.format !== undefined && opts.format !== 'json' && opts.format !== 'csv')
    throw new UsageError(`--import-format: expected json or csv, got ${JSON.stringify(opts.format)}`);
  const quotaPerUsd = opts.quotaPerUsd ?? DEFAULT_QUOTA_PER_USD;
  if (!Number.isFinite(quotaPerUsd) || quotaPerUsd <= 0)
    throw new UsageError(`--quota-per-usd: expected a number > 0 such as 500000, got ${opts.quotaPerUsd}`);
  const windowMs = opts.windowMs ?? DEFAULT_MATCH_WINDOW_MS;
  if (!Number.isSafeInteger(windowMs) || windowMs < 0)
    throw new UsageError(`--match-window: expected a duration ≥ 0 such as 2m, got ${opts.windowMs} ms`);
  if (opts.fromMs !== undefined && opts.toMs !== undefined && opts.fromMs >= opts.toMs)
    throw new UsageError('--since must be before --until');
  return { quotaPerUsd, windowMs };
}

/** quota → nanos of USD, exact, rounded half-up once. */
export function quotaToNanos(quota: number | bigint, quotaPerUsd: number = DEFAULT_QUOTA_PER_USD): bigint {
  return unitsToNanos(new Dec(quota.toString()).div(new Dec(String(quotaPerUsd))));
}

const unreported = (a: AuditRow): boolean =>
  a.usage_source !== 'reported' || meteredPrompt(a) === null || a.output_tokens === null;

function tokenText(n: number | null): string {
  return n === null ? 'unknown' : String(n);
}

const signed = (n: number | bigint): string => (n > 0 ? `+${n}` : String(n));

function describePair(
  log: UsageLogRow,
  a: AuditRow,
  settings: Settings,
): Omit<MatchedRequest, 'log' | 'audit' | 'by' | 'model_match' | 'time_gap_ms'> {
  const mPrompt = meteredPrompt(a);
  const prompt = billedPrompt(log, mPrompt);
  const billedNanos = quotaToNanos(log.quota, settings.quotaPerUsd);
  const costNanos = a.cost_nanos === null ? null : BigInt(a.cost_nanos);
  const diffPrompt = mPrompt === null ? null : mPrompt - prompt.tokens;
  const diffCompletion = a.output_tokens === null ? null : a.output_tokens - log.completion_tokens;
  const diffCost = costNanos !== null && a.currency === BILLED_CURRENCY ? costNanos - billedNanos : null;
  const differences: DifferenceKind[] = [];
  const notes: string[] = [];
  const billedTokens = `${prompt.tokens} prompt + ${log.completion_tokens} completion`;
  if (unreported(a)) {
    differences.push('usage_unreported');
    notes.push(
      `gateway billed ${prompt.tokens + log.completion_tokens} tokens (${billedTokens}) we did not see reported ` +
        `(ours: ${a.usage_source}, ${tokenText(mPrompt)} prompt + ${tokenText(a.output_tokens)} completion)`,
    );
  } else if (diffPrompt !== 0 || diffCompletion !== 0) {
    differences.push('tokens');
    notes.push(
      `tokens: billed ${billedTokens}, metered ${mPrompt} + ${a.output_tokens} ` +
        `(prompt ${signed(diffPrompt!)}, completion ${signed(diffCompletion!)})`,
    );
  }
  // One quota unit is the gateway's own rounding step (it bills whole quota): not a difference.
  const quotaUnitNanos = new Dec(1_000_000_000).div(new Dec(String(settings.quotaPerUsd)));
  if (diffCost !== null && new Dec(diffCost.toString()).abs().gte(quotaUnitNanos)) {
    differences.push('cost');
    notes.push(
      `cost: billed ${formatNanos(billedNanos, BILLED_CURRENCY)}, metered ${formatNanos(costNanos!, BILLED_CURRENCY)} ` +
        `(${signed(diffCost)} nanos)`,
    );
  }
  return {
    billed: {
      quota: log.quota,
      cost_nanos: billedNanos,
      currency: BILLED_CURRENCY,
      prompt_tokens: prompt.tokens,
      prompt_basis: prompt.basis,
      completion_tokens: log.completion_tokens,
    },
    metered: {
      usage_source: a.usage_source,
      prompt_tokens: mPrompt,
      completion_tokens: a.output_tokens,
      cost_nanos: costNanos,
      currency: a.currency,
    },
    diff: { prompt_tokens: diffPrompt, completion_tokens: diffCompletion, cost_nanos: diffCost },
    differences,
    notes,
  };
}

/** [from, to) of the audit rows to list as unmatched: the flags, else the log's own span ± window. */
function scopeOf(
  rows: readonly UsageLogRow[],
  opts: ImportOptions,
  windowMs: number,
): { from: number; to: number } | null {
  if (opts.fromMs !== undefined && opts.toMs !== undefined) return { from: opts.fromMs, to: opts.toMs };
  if (rows.length === 0) return null;
  let min = Infinity;
  let max = -Infinity;
  for (const r of rows) {
    min = Math.min(min, r.time_ms - r.precision_ms);
    max = Math.max(max, r.time_ms + r.precision_ms);
  }
  return { from: opts.fromMs ?? min - windowMs, to: opts.toMs ?? max + windowMs };
}

function billedAmount(quotas: readonly number[], quotaPerUsd: number): BilledAmount {
  let quota = 0n;
  for (const q of quotas) quota += BigInt(q);
  return {
    currency: BILLED_CURRENCY,
    requests: quotas.length,
    quota,
    cost_nanos: quotaToNanos(quota, quotaPerUsd),
  };
}

function meteredAmounts(rows: readonly AuditRow[]): { amounts: CurrencyAmount[]; unknown: number } {
  const by = new Map<string, CurrencyAmount>();
  let unknown = 0;
  for (const a of rows) {
    if (a.cost_nanos === null || a.currency === null) {
      unknown++;
      continue;
    }
    const t = by.get(a.currency) ?? { currency: a.currency, cost_nanos: 0n, requests: 0 };
    t.cost_nanos += BigInt(a.cost_nanos);
    t.requests++;
    by.set(a.currency, t);
  }
  return { amounts: [...by.values()].sort((x, y) => x.currency.localeCompare(y.currency)), unknown };
}

function totalsOf(
  consumption: readonly UsageLogRow[],
  matched: readonly MatchedRequest[],
  unmatchedLog: readonly UnmatchedLogRow[],
  unmatchedAudit: readonly AuditRow[],
  quotaPerUsd: number,
): ImportTotals {
  const mm = meteredAmounts(matched.map((m) => m.audit));
  const mu = meteredAmounts(unmatchedAudit);
  const same = matched.filter((m) => m.metered.currency === BILLED_CURRENCY && m.metered.cost_nanos !== null);
  const sameBilled = billedAmount(
    same.map((m) => m.log.quota),
    quotaPerUsd,
  ).cost_nanos;
  let sameMetered = 0n;
  for (const m of same) sameMetered += m.metered.cost_nanos!;
  return {
    billed: billedAmount(
      consumption.map((r) => r.quota),
      quotaPerUsd,
    ),
    billed_matched: billedAmount(
      matched.map((m) => m.log.quota),
      quotaPerUsd,
    ),
    billed_unmatched: billedAmount(
      unmatchedLog.map((u) => u.log.quota),
      quotaPerUsd,
    ),
    metered_matched: mm.amounts,
    metered_matched_unknown: mm.unknown,
    metered_unmatched: mu.amounts,
    metered_unmatched_unknown: mu.unknown,
    same_currency: {
      currency: BILLED_CURRENCY,
      requests: same.length,
      billed_nanos: sameBilled,
      metered_nanos: sameMetered,
      difference_nanos: sameMetered - sameBilled,
    },
  };
}

/** The counts that depend only on the parsed file and the matched pairs. */
function countsOf(
  parsed: ParsedUsageLog,
  matched: readonly MatchedRequest[],
): Omit<
  ImportCounts,
  | 'consumption'
  | 'unmatched_log'
  | 'audit_rows'
  | 'unmatched_audit'
  | 'unmatched_audit_not_billable'
  | 'outside_window'
> {
  const skippedByType: Record<string, number> = {};
  for (const s of parsed.skipped) skippedByType[String(s.type)] = (skippedByType[String(s.type)] ?? 0) + 1;
  const count = (kind: DifferenceKind): number => matched.filter((m) => m.differences.includes(kind)).length;
  const exact = matched.filter((m) => m.differences.length === 0).length;
  return {
    log_rows: parsed.total_rows,
    matched: matched.length,
    matched_exact: exact,
    matched_with_differences: matched.length - exact,
    token_differences: count('tokens'),
    cost_differences: count('cost'),
    usage_unreported: count('usage_unreported'),
    parse_problems: parsed.problems.length,
    warnings: parsed.warnings.length,
    skipped: parsed.skipped.length,
    skipped_by_type: skippedByType,
  };
}

/**
 * Reads `opts.file`, matches its billed rows to the audit rows of `db` and returns everything found.
 * Throws UsageError for bad options, ConfigError (exit 2, file:line: field: message) for a file that
 * cannot be read or is not a usage log; single unreadable rows are returned in `problems`.
 */
export function reconcileImport(db: Database.Database, opts: ImportOptions): ImportResult {
  const settings = validate(opts);
  const parsed = readUsageLog(opts.file, opts.format);
  const inWindow = (r: UsageLogRow): boolean =>
    (opts.fromMs === undefined || r.time_ms >= opts.fromMs) &&
    (opts.toMs === undefined || r.time_ms < opts.toMs);
  const consumption = parsed.rows.filter(inWindow);
  const outside = parsed.rows.filter((r) => !inWindow(r)).map((r) => r.source);
  const scope = scopeOf(consumption, opts, settings.windowMs);
  const audit = scope
    ? loadAuditRows(db, {
        fromMs: scope.from - settings.windowMs - LONG_REQUEST_MS,
        toMs: scope.to + settings.windowMs + 1000,
        upstream: opts.upstream,
      })
    : [];
  const outcome = matchLogRows(consumption, audit, settings.windowMs);
  const matched: MatchedRequest[] = outcome.pairs.map((p) => {
    const log = consumption[p.log]!;
    const a = audit[p.audit]!;
    return {
      log,
      audit: a,
      by: p.by,
      model_match: p.model_match,
      time_gap_ms: p.time_gap_ms,
      ...describePair(log, a, settings),
    };
  });
  const unmatchedLog: UnmatchedLogRow[] = outcome.unmatchedLogs.map((u) => {
    const log = consumption[u.log]!;
    return { log, billed_cost_nanos: quotaToNanos(log.quota, settings.quotaPerUsd), reason: u.reason };
  });
  const inScope = (a: AuditRow): boolean =>
    scope !== null && a.ts_start >= scope.from && a.ts_start < scope.to;
  const leftover = outcome.unmatchedAudit.map((i) => audit[i]!).filter(inScope);
  const unmatchedAudit = leftover.filter(expectedBilled);
  const notBillable = leftover.filter((a) => !expectedBilled(a));
  return {
    file: opts.file,
    format: parsed.format,
    shape: parsed.shape,
    settings: {
      quota_per_usd: settings.quotaPerUsd,
      window_ms: settings.windowMs,
      upstream: opts.upstream ?? null,
      from_ms: opts.fromMs ?? null,
      to_ms: opts.toMs ?? null,
      scope_from_ms: scope?.from ?? null,
      scope_to_ms: scope?.to ?? null,
    },
    counts: {
      ...countsOf(parsed, matched),
      consumption: consumption.length,
      unmatched_log: unmatchedLog.length,
      audit_rows: audit.filter(inScope).length,
      unmatched_audit: unmatchedAudit.length,
      unmatched_audit_not_billable: notBillable.length,
      outside_window: outside.length,
    },
    matched,
    unmatched_log: unmatchedLog,
    unmatched_audit: unmatchedAudit,
    not_billable_audit: notBillable,
    totals: totalsOf(consumption, matched, unmatchedLog, unmatchedAudit, settings.quotaPerUsd),
    problems: parsed.problems,
    warnings: parsed.warnings,
    skipped: parsed.skipped,
    outside_window: outside,
    ignored_columns: parsed.ignored_columns,
  };
}

// ---------------------------------------------------------------------------------------------
// Rendering

/** Per-section line cap of the table format; JSON is always complete. */
export const TABLE_LIST_CAP = 20;

const iso = (ms: number): string => new Date(ms).toISOString();
const money = (nanos: bigint, currency: string | null): string =>
  currency === null ? 'unknown' : formatNanos(nanos, currency);

function amountsText(amounts: readonly CurrencyAmount[], unknown: number): string {
  const parts = amounts.map((a) => `${formatNanos(a.cost_nanos, a.currency)} (${a.requests})`);
  if (unknown > 0) parts.push(`${unknown} with unknown cost`);
  return parts.length === 0 ? '-' : parts.join('; ');
}

function capped<T>(title: string, items: readonly T[], line: (item: T) => string): string[] {
  if (items.length === 0) return [];
  const out = ['', `${title} (${items.length}):`];
  for (const item of items.slice(0, TABLE_LIST_CAP)) out.push(`  ${line(item)}`);
  if (items.length > TABLE_LIST_CAP)
    out.push(`  … ${items.length - TABLE_LIST_CAP} more (--format json lists all)`);
  return out;
}

function auditText(a: AuditRow): string {
  const model = a.request_model ?? a.response_model ?? '-';
  const cost = a.cost_nanos === null ? 'cost unknown' : formatNanos(a.cost_nanos, a.currency ?? undefined);
  return (
    `${a.id} ${iso(a.ts_start)} ${model} ${a.upstream} app=${a.app} ` +
    `tokens ${tokenText(meteredPrompt(a))}+${tokenText(a.output_tokens)} (${a.usage_source}) ${cost}` +
    (a.error_type !== null ? ` error=${a.error_type}` : '') +
    (a.http_status !== null ? ` status=${a.http_status}` : ' no answer')
  );
}

function headerLines(r: ImportResult): string[] {
  const s = r.settings;
  const span =
    s.scope_from_ms === null || s.scope_to_ms === null
      ? 'no rows to compare'
      : `${iso(s.scope_from_ms)} .. ${iso(s.scope_to_ms)}`;
  return [
    `tokenmeter reconcile --import ${r.file} (${r.shape})`,
    `rate ${s.quota_per_usd} quota = 1 ${BILLED_CURRENCY}; match window ±${formatDuration(s.window_ms)}; ` +
      `upstream ${s.upstream ?? 'any'}; audit rows ${span}`,
  ];
}

function countLines(r: ImportResult): string[] {
  const c = r.counts;
  const byType = Object.entries(c.skipped_by_type)
    .map(([t, n]) => `type ${t}: ${n}`)
    .join(', ');
  const rows: Array<[string, number, string?]> = [
    ['log rows in file', c.log_rows],
    ['  billed requests (type 2)', c.consumption],
    ['  skipped (not type 2)', c.skipped, byType || undefined],
    ['  outside --since/--until', c.outside_window],
    ['  parse problems', c.parse_problems],
    ['matched', c.matched],
    ['  exactly', c.matched_exact],
    [
      '  with differences',
      c.matched_with_differences,
      `tokens ${c.token_differences}, cost ${c.cost_differences}, usage not reported by us ${c.usage_unreported}`,
    ],
    ['unmatched log rows (billed, not metered)', c.unmatched_log],
    ['unmatched audit rows (metered, not billed)', c.unmatched_audit],
    ['  not expected to be billed (errors, no answer)', c.unmatched_audit_not_billable],
  ];
  const width = Math.max(...rows.map(([label]) => label.length));
  const numWidth = Math.max(...rows.map(([, n]) => String(n).length));
  return rows.map(
    ([label, n, note]) =>
      `${label.padEnd(width)}  ${String(n).padStart(numWidth)}${note ? `  (${note})` : ''}`,
  );
}

function totalLines(r: ImportResult): string[] {
  const t = r.totals;
  const billed = (b: BilledAmount): string =>
    `${formatNanos(b.cost_nanos, b.currency)} (${b.requests}, ${b.quota} quota)`;
  const same = t.same_currency;
  return [
    '',
    'totals (per currency, never mixed):',
    `  billed by the gateway          ${billed(t.billed)}`,
    `    of matched rows              ${billed(t.billed_matched)}`,
    `    of unmatched log rows        ${billed(t.billed_unmatched)}`,
    `  metered, matched rows          ${amountsText(t.metered_matched, t.metered_matched_unknown)}`,
    `  metered, unmatched audit rows  ${amountsText(t.metered_unmatched, t.metered_unmatched_unknown)}`,
    `  matched rows metered in ${same.currency}: billed ${formatNanos(same.billed_nanos, same.currency)}, ` +
      `metered ${formatNanos(same.metered_nanos, same.currency)}, metered − billed ${formatNanos(same.difference_nanos, same.currency)} ` +
      `(${same.requests} request(s))`,
  ];
}

function tableText(r: ImportResult): string {
  const out = [...headerLines(r), '', ...countLines(r), ...totalLines(r)];
  out.push(
    ...capped(
      'differences',
      r.matched.filter((m) => m.differences.length > 0),
      (m) =>
        `${m.log.source.where} ${iso(m.log.time_ms)} ${m.log.model} ↔ ${m.audit.id}: ${m.notes.join('; ')}`,
    ),
    ...capped(
      'unmatched log rows: billed by the gateway, not in our log',
      r.unmatched_log,
      (u) =>
        `${u.log.source.where} ${iso(u.log.time_ms)} ${u.log.model} tokens ${u.log.prompt_tokens}+${u.log.completion_tokens} ` +
        `quota ${u.log.quota} = ${money(u.billed_cost_nanos, BILLED_CURRENCY)}: ${u.reason}`,
    ),
    ...capped('unmatched audit rows: metered by us, not billed', r.unmatched_audit, auditText),
    ...capped('parse problems (rows not matched)', r.problems, formatProblem),
    ...capped('warnings (rows kept)', r.warnings, formatProblem),
    ...capped(
      'skipped rows (not billed requests)',
      r.skipped,
      (s) => `${s.source.where} type ${s.type} (${s.label})${s.quota !== null ? ` quota ${s.quota}` : ''}`,
    ),
  );
  if (r.ignored_columns.length > 0) out.push('', `ignored CSV columns: ${r.ignored_columns.join(', ')}`);
  return out.join('\n') + '\n';
}

// JSON: money as exact decimal text plus nanos as a string; bigints never reach JSON.stringify.
const moneyJson = (nanos: bigint | null, currency: string | null) =>
  nanos === null
    ? { cost: null, cost_nanos: null, currency }
    : { cost: nanosToDecimalText(nanos), cost_nanos: nanos.toString(), currency };

const billedJson = (b: BilledAmount) => ({
  requests: b.requests,
  quota: b.quota.toString(),
  ...moneyJson(b.cost_nanos, b.currency),
});

const amountsJson = (amounts: readonly CurrencyAmount[]) =>
  amounts.map((a) => ({ requests: a.requests, ...moneyJson(a.cost_nanos, a.currency) }));

function matchedJson(m: MatchedRequest): Record<string, unknown> {
  return {
    log: m.log,
    audit: m.audit,
    by: m.by,
    model_match: m.model_match,
    time_gap_ms: m.time_gap_ms,
    billed: { ...m.billed, ...moneyJson(m.billed.cost_nanos, m.billed.currency) },
    metered: { ...m.metered, ...moneyJson(m.metered.cost_nanos, m.metered.currency) },
    diff: { ...m.diff, cost_nanos: m.diff.cost_nanos === null ? null : m.diff.cost_nanos.toString() },
    differences: m.differences,
    notes: m.notes,
  };
}

/** The `--format json` document as an object (complete: no list is capped). */
export function importResultToJson(r: ImportResult): Record<string, unknown> {
  const t = r.totals;
  return {
    file: r.file,
    format: r.format,
    shape: r.shape,
    settings: r.settings,
    counts: r.counts,
    totals: {
      billed: billedJson(t.billed),
      billed_matched: billedJson(t.billed_matched),
      billed_unmatched: billedJson(t.billed_unmatched),
      metered_matched: amountsJson(t.metered_matched),
      metered_matched_unknown: t.metered_matched_unknown,
      metered_unmatched: amountsJson(t.metered_unmatched),
      metered_unmatched_unknown: t.metered_unmatched_unknown,
      same_currency: {
        currency: t.same_currency.currency,
        requests: t.same_currency.requests,
        billed: nanosToDecimalText(t.same_currency.billed_nanos),
        metered: nanosToDecimalText(t.same_currency.metered_nanos),
        difference: nanosToDecimalText(t.same_currency.difference_nanos),
        difference_nanos: t.same_currency.difference_nanos.toString(),
      },
    },
    matched: r.matched.map(matchedJson),
    unmatched_log: r.unmatched_log.map((u) => ({
      log: u.log,
      reason: u.reason,
      billed: moneyJson(u.billed_cost_nanos, BILLED_CURRENCY),
    })),
    unmatched_audit: r.unmatched_audit,
    not_billable_audit: r.not_billable_audit,
    problems: r.problems.map((p) => ({ ...p, text: formatProblem(p) })),
    warnings: r.warnings.map((p) => ({ ...p, text: formatProblem(p) })),
    skipped: r.skipped,
    outside_window: r.outside_window,
    ignored_columns: r.ignored_columns,
  };
}

export function renderImportResult(result: ImportResult, format: 'table' | 'json'): string {
  if (format === 'json') return JSON.stringify(importResultToJson(result), null, 2) + '\n';
  return tableText(result);
}
