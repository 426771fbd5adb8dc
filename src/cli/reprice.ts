/**
 * `tokenmeter reprice --since 30d [--until …] [--prices FILE…] [--no-presets] [--dry-run]` (issue 13,
 * DESIGN.md §14): recompute the cost of audit rows under today's (or a given) price table, show the
 * difference per currency, and — unless `--dry-run` — update the rows in one transaction, keeping
 * each row's previous cost fields in `repricing_history` under one `repricings` run.
 * docs/pricing.md "Re-pricing".
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type Database from 'better-sqlite3';
import { Option, type Command } from 'commander';
import { loadSettings } from '../config/load.js';
import { TokenmeterError, UsageError } from '../errors.js';
import { priceBookFor, type TablePriceBook } from '../pricing/index.js';
import { formatNanos } from '../pricing/money.js';
import { OPERATIONS, type Operation, type Usage } from '../record.js';
import { CONFIG_HELP, DB_HELP, openExistingDatabase, resolveDb, runAction } from './db.js';
import { parseTimeBound } from './report.js';

/** The cost fields a repricing may change, as stored on a request row. */
interface CostFields {
  cost_nanos: number | null;
  currency: string | null;
  cost_source: string | null;
  price_id: string | null;
  price_match: string | null;
  multiplier: string | null;
}

interface StoredRow extends CostFields {
  id: string;
  ts_start: number;
  upstream: string;
  app: string;
  operation: string;
  request_model: string | null;
  response_model: string | null;
  input_tokens: number | null;
  cache_read_tokens: number | null;
  cache_write_tokens: number | null;
  cache_write_1h_tokens: number | null;
  output_tokens: number | null;
  reasoning_tokens: number | null;
  audio_tokens: number | null;
  images: number | null;
  note: string | null;
}

export interface RepriceChange {
  id: string;
  ts_start: number;
  old: CostFields;
  new: CostFields;
}

export interface CurrencyDiff {
  currency: string;
  /** Rows priced in this currency before or after. */
  rows: number;
  old_total_nanos: bigint;
  new_total_nanos: bigint;
  changed: number;
  newly_priced: number;
  newly_unpriced: number;
}

export interface RepricePlan {
  fromMs: number;
  toMs: number;
  examined: number;
  changes: RepriceChange[];
  currencies: CurrencyDiff[];
  unpricedBefore: number;
  unpricedAfter: number;
  /** Upstream names on rows that the config does not define (only unscoped tables applied). */
  unknownUpstreams: string[];
}

const COST_FIELDS = ['cost_nanos', 'currency', 'cost_source', 'price_id', 'multiplier'] as const;

/**
 * Rows that can be repriced: usage reported or estimated (others have no cost to compute), a known
 * operation, and a cost that is ours — `cost_source = 'upstream'` rows keep the gateway's billed
 * figure. Serve only ever inserts rows, so reading outside the write transaction is safe.
 */
const SELECT_ROWS = `
SELECT id, ts_start, upstream, app, operation, request_model, response_model,
       input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
       reasoning_tokens, audio_tokens, images, cost_nanos, currency, cost_source, price_id, price_match, multiplier,
       note
FROM requests
WHERE ts_start >= ? AND ts_start < ?
  AND usage_source IN ('reported', 'estimated')
  AND operation IS NOT NULL
  AND (cost_source IS NULL OR cost_source <> 'upstream')
  AND (ts_start > ? OR (ts_start = ? AND id > ?))
ORDER BY ts_start, id
LIMIT ?`;

/**
 * Rows per page. Read in pages (`.all()`), never with `.iterate()`: a StatementIterator that
 * becomes garbage aborts the process on Node 24 like a Statement does (src/sinks/audit/sqlite.ts).
 */
const PAGE_ROWS = 2000;

/** The rows SELECT_ROWS selects, page after page in (ts_start, id) order. */
function* selectedRows(db: Database.Database, fromMs: number, toMs: number): Generator<StoredRow> {
  const page = db.prepare(SELECT_ROWS);
  let after: { ts: number; id: string } = { ts: fromMs - 1, id: '' };
  for (;;) {
    const rows = page.all(fromMs, toMs, after.ts, after.ts, after.id, PAGE_ROWS) as StoredRow[];
    yield* rows;
    if (rows.length < PAGE_ROWS) return;
    const last = rows[rows.length - 1]!;
    after = { ts: last.ts_start, id: last.id };
  }
}

const usageOf = (r: StoredRow): Usage => {
  const u: Usage = {};
  const set = (k: keyof Usage, v: number | null) => {
    if (v !== null) u[k] = v;
  };
  set('input', r.input_tokens);
  set('cacheRead', r.cache_read_tokens);
  set('cacheWrite', r.cache_write_tokens);
  set('cacheWrite1h', r.cache_write_1h_tokens);
  set('output', r.output_tokens);
  set('reasoning', r.reasoning_tokens);
  set('images', r.images);
  // A Realtime session's audio part: without it the cost stays unknown, as at record time.
  set('audio', r.audio_tokens);
  return u;
};

/** The row's cost under `book`, computed as the meter does (no upstream-stated cost: see docs). */
function repriceRow(book: TablePriceBook, r: StoredRow): CostFields {
  const result = book.price({
    model: r.request_model ?? r.response_model ?? undefined,
    upstream: r.upstream,
    app: r.app,
    operation: (OPERATIONS as readonly string[]).includes(r.operation) ? (r.operation as Operation) : 'other',
    at: new Date(r.ts_start),
    usage: usageOf(r),
  });
  return {
    cost_nanos: result.cost_nanos,
    currency: result.currency,
    cost_source: result.cost_source,
    price_id: result.price_id,
    price_match: result.price_match ?? null,
    multiplier: result.multiplier,
  };
}

/** What a repricing would change; reads only. */
export function planRepricing(
  db: Database.Database,
  book: TablePriceBook,
  window: { fromMs: number; toMs: number },
  knownUpstreams: ReadonlySet<string>,
): RepricePlan {
  const byCurrency = new Map<string, CurrencyDiff>();
  const diff = (currency: string): CurrencyDiff => {
    let d = byCurrency.get(currency);
    if (!d) {
      d = {
        currency,
        rows: 0,
        old_total_nanos: 0n,
        new_total_nanos: 0n,
        changed: 0,
        newly_priced: 0,
        newly_unpriced: 0,
      };
      byCurrency.set(currency, d);
    }
    return d;
  };
  const plan: RepricePlan = {
    ...window,
    examined: 0,
    changes: [],
    currencies: [],
    unpricedBefore: 0,
    unpricedAfter: 0,
    unknownUpstreams: [],
  };
  const unknown = new Set<string>();
  for (const r of selectedRows(db, window.fromMs, window.toMs)) {
    plan.examined++;
    if (!knownUpstreams.has(r.upstream)) unknown.add(r.upstream);
    const next = repriceRow(book, r);
    const changed = COST_FIELDS.some((k) => r[k] !== next[k]);
    if (changed) plan.changes.push({ id: r.id, ts_start: r.ts_start, old: pick(r), new: next });
    tally(r, next, changed, diff);
    if (r.cost_nanos === null) plan.unpricedBefore++;
    if (next.cost_nanos === null) plan.unpricedAfter++;
  }
  plan.currencies = [...byCurrency.values()].sort((a, b) => a.currency.localeCompare(b.currency));
  plan.unknownUpstreams = [...unknown].sort();
  return plan;
}

const pick = (r: StoredRow): CostFields => ({
  cost_nanos: r.cost_nanos,
  currency: r.currency,
  cost_source: r.cost_source,
  price_id: r.price_id,
  price_match: r.price_match,
  multiplier: r.multiplier,
});

/** Adds one row to the per-currency sums (exact: bigint nanos). */
function tally(old: CostFields, next: CostFields, changed: boolean, diff: (c: string) => CurrencyDiff): void {
  const oldPriced = old.cost_nanos !== null && old.currency !== null;
  const newPriced = next.cost_nanos !== null && next.currency !== null;
  const touched = new Set<string>();
  if (oldPriced) {
    const d = diff(old.currency!);
    d.old_total_nanos += BigInt(old.cost_nanos!);
    if (!newPriced) d.newly_unpriced++;
    touched.add(d.currency);
  }
  if (newPriced) {
    const d = diff(next.currency!);
    d.new_total_nanos += BigInt(next.cost_nanos!);
    if (!oldPriced) d.newly_priced++;
    touched.add(d.currency);
  }
  for (const c of touched) {
    const d = diff(c);
    d.rows++;
    if (changed) d.changed++;
  }
}

const INSERT_RUN = `INSERT INTO repricings (ts, since_ms, until_ms, tables, rows_examined, rows_changed)
VALUES (?, ?, ?, ?, ?, 0)`;
const INSERT_HISTORY = `INSERT INTO repricing_history (repricing_id, request_id, ts_start,
  old_cost_nanos, old_currency, old_cost_source, old_price_id, old_price_match, old_multiplier,
  new_cost_nanos, new_currency, new_cost_source, new_price_id, new_price_match, new_multiplier)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;
/** Guarded by the old values: a row someone else repriced meanwhile is left alone (and not logged). */
const UPDATE_ROW = `UPDATE requests SET cost_nanos = ?, currency = ?, cost_source = ?, price_id = ?,
  price_match = ?, multiplier = ?
WHERE id = ? AND cost_nanos IS ? AND currency IS ? AND cost_source IS ? AND price_id IS ? AND price_match IS ?
  AND multiplier IS ?`;

/** The cost fields in the column order UPDATE_ROW and INSERT_HISTORY name them. */
const costValues = (f: CostFields) =>
  [f.cost_nanos, f.currency, f.cost_source, f.price_id, f.price_match, f.multiplier] as const;

/**
 * Writes a plan in one IMMEDIATE transaction: a `repricings` run, then per changed row its history
 * and the update. Returns the run id and the rows updated; writes nothing when nothing changes.
 */
export function applyRepricing(
  db: Database.Database,
  plan: RepricePlan,
  tables: string,
  nowMs: number,
): { id: number; updated: number } | undefined {
  if (plan.changes.length === 0) return undefined;
  const run = db.transaction(() => {
    const id = Number(
      db.prepare(INSERT_RUN).run(nowMs, plan.fromMs, plan.toMs, tables, plan.examined).lastInsertRowid,
    );
    const history = db.prepare(INSERT_HISTORY);
    const update = db.prepare(UPDATE_ROW);
    let updated = 0;
    for (const c of plan.changes) {
      const res = update.run(...costValues(c.new), c.id, ...costValues(c.old));
      if (res.changes === 0) continue;
      history.run(id, c.id, c.ts_start, ...costValues(c.old), ...costValues(c.new));
      updated++;
    }
    if (updated === 0) {
      db.prepare('DELETE FROM repricings WHERE id = ?').run(id);
      return undefined;
    }
    db.prepare('UPDATE repricings SET rows_changed = ? WHERE id = ?').run(updated, id);
    return { id, updated };
  });
  return run.immediate();
}

const signed = (n: bigint): string => (n > 0n ? `+${formatNanos(n)}` : formatNanos(n));

export function formatPlan(plan: RepricePlan, tables: string): string {
  const lines = [
    `reprice ${new Date(plan.fromMs).toISOString()} .. ${new Date(plan.toMs).toISOString()} with ${describeTables(tables)}`,
    `${plan.examined} rows examined, ${plan.changes.length} would change`,
  ];
  const header = [
    'CURRENCY',
    'ROWS',
    'OLD_TOTAL',
    'NEW_TOTAL',
    'DIFFERENCE',
    'CHANGED',
    'NEWLY_PRICED',
    'NEWLY_UNPRICED',
  ];
  const body = plan.currencies.map((d) => [
    d.currency,
    String(d.rows),
    formatNanos(d.old_total_nanos),
    formatNanos(d.new_total_nanos),
    signed(d.new_total_nanos - d.old_total_nanos),
    String(d.changed),
    String(d.newly_priced),
    String(d.newly_unpriced),
  ]);
  if (body.length > 0) {
    const all = [header, ...body];
    const widths = header.map((_, i) => Math.max(...all.map((row) => row[i]!.length)));
    for (const row of all)
      lines.push(
        row
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd(),
      );
  }
  lines.push(`unpriced rows: ${plan.unpricedBefore} before, ${plan.unpricedAfter} after`);
  return lines.join('\n') + '\n';
}

function describeTables(tables: string): string {
  const list = JSON.parse(tables) as Array<{ file: string; sha256: string }>;
  if (list.length === 0) return 'no price tables';
  return list.map((t) => `${t.file} (${t.sha256.slice(0, 12)})`).join(', ');
}

/** The tables used, in precedence order, with a content hash each: what `repricings.tables` keeps. */
export function tablesDescription(book: TablePriceBook): string {
  return JSON.stringify(
    book.allTables().map(({ table, origin }) => {
      let sha256 = 'unreadable';
      try {
        sha256 = createHash('sha256').update(readFileSync(table.file)).digest('hex');
      } catch {
        // Read a moment ago by the loader; a file removed since still names the table.
      }
      return { file: table.file, origin, sha256 };
    }),
  );
}

export interface RepriceCliOptions {
  db?: string;
  config?: string;
  since?: string;
  until?: string;
  prices?: string[];
  presets?: boolean;
  dryRun?: boolean;
  format?: 'table' | 'json';
}

/** The whole command as a function of its flags (tests call it). Returns stdout and stderr text. */
export function repriceCommand(
  flags: RepriceCliOptions,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  nowMs: number = Date.now(),
): { out: string; err: string } {
  if (flags.since === undefined) throw new UsageError('--since is required, e.g. --since 30d');
  const fromMs = parseTimeBound(flags.since, '--since', nowMs);
  const toMs = flags.until !== undefined ? parseTimeBound(flags.until, '--until', nowMs) : nowMs;
  if (fromMs >= toMs) throw new UsageError('--since must be before --until');
  const { dbPath } = resolveDb(flags, env, cwd);
  const settings = loadSettings(
    {
      config: flags.config,
      db: flags.db,
      prices: flags.prices && flags.prices.length > 0 ? flags.prices : undefined,
      presets: flags.presets === false ? false : undefined,
    },
    env,
    cwd,
  );
  const book = priceBookFor(settings);
  const tables = tablesDescription(book);
  const db = openExistingDatabase(dbPath);
  try {
    const plan = planRepricing(db, book, { fromMs, toMs }, new Set(settings.upstreams.map((u) => u.name)));
    const err = plan.unknownUpstreams
      .map(
        (u) =>
          `tokenmeter: warning: upstream ${u} is not in the config: only unscoped price files and no upstream multiplier applied to its rows\n`,
      )
      .join('');
    const written = flags.dryRun ? undefined : applyRepricing(db, plan, tables, nowMs);
    const outcome = flags.dryRun
      ? 'dry run: nothing written'
      : written
        ? `repricing ${written.id}: ${written.updated} rows updated; their previous cost is kept in repricing_history`
        : 'nothing to change';
    if (flags.format === 'json')
      return { out: JSON.stringify(planJson(plan, tables, written), null, 2) + '\n', err };
    return { out: formatPlan(plan, tables) + outcome + '\n', err };
  } catch (err) {
    if (err instanceof TokenmeterError) throw err;
    throw new TokenmeterError('DB_ERROR', `reprice failed: ${(err as Error).message}`);
  } finally {
    db.close();
  }
}

function planJson(plan: RepricePlan, tables: string, written: { id: number; updated: number } | undefined) {
  return {
    since: new Date(plan.fromMs).toISOString(),
    until: new Date(plan.toMs).toISOString(),
    tables: JSON.parse(tables) as unknown,
    examined: plan.examined,
    changed: plan.changes.length,
    currencies: plan.currencies.map((d) => ({
      currency: d.currency,
      rows: d.rows,
      old_total: formatNanos(d.old_total_nanos),
      new_total: formatNanos(d.new_total_nanos),
      difference: formatNanos(d.new_total_nanos - d.old_total_nanos),
      changed: d.changed,
      newly_priced: d.newly_priced,
      newly_unpriced: d.newly_unpriced,
    })),
    unpriced_before: plan.unpricedBefore,
    unpriced_after: plan.unpricedAfter,
    repricing_id: written?.id ?? null,
    updated: written?.updated ?? 0,
  };
}

export function register(program: Command): void {
  program
    .command('reprice')
    .description(
      "recompute the cost of logged requests under today's (or a given) price table, keeping a history",
    )
    .requiredOption('--since <when>', 'start: 30d, 24h, 2026-11-01 or an ISO timestamp')
    .option('--until <when>', 'end (exclusive), same forms as --since (default: now)')
    .option('--prices <file...>', 'price files to reprice with (default: as serve: config prices:)')
    .option('--no-presets', 'leave out the bundled presets under prices/')
    .option('--dry-run', 'show the difference per currency and write nothing')
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .option('--db <path>', DB_HELP)
    .option('--config <file>', CONFIG_HELP)
    .action((flags: RepriceCliOptions) =>
      runAction(() => {
        const { out, err } = repriceCommand(flags);
        if (err) process.stderr.write(err);
        process.stdout.write(out);
      }),
    );
}
