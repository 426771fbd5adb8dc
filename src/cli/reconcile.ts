/**
 * `tokenmeter reconcile [--db] [--config] [--upstream NAME] [--since 24h] [--until] [--format
 * table|json] [--import FILE …]` (issue 13, DESIGN.md §14, docs/reconcile.md): per upstream and
 * key, what the gateway billed (stored billing snapshots, per-request reported costs) against what
 * tokenmeter metered over the same window, the drift, and what explains it. With `--import`, a
 * gateway's per-request usage log is matched against the audit rows too (src/reconcile/import.ts).
 */
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { formatReconcileTable, reconciliationToJson } from '../reconcile/format.js';
import { reconcileImport, renderImportResult, type ImportOptions } from '../reconcile/import.js';
import { buildReconciliation, type Reconciliation } from '../reconcile/reconcile.js';
import { CONFIG_HELP, DB_HELP, openExistingDatabase, parseDurationMs, resolveDb, runAction } from './db.js';
import { parseTimeBound } from './report.js';

export const RECONCILE_FORMATS = ['table', 'json'] as const;
export type ReconcileFormat = (typeof RECONCILE_FORMATS)[number];

export interface ReconcileCliOptions {
  db?: string;
  config?: string;
  upstream?: string;
  since?: string;
  until?: string;
  format?: string;
  import?: string;
  importFormat?: string;
  quotaPerUsd?: string;
  matchWindow?: string;
}

/**
 * The import's options. Its time bounds are the user's --since/--until only: without them the
 * whole log is read (the 24h default is billed vs metered's window, and an exported log is usually
 * older); the import then scopes the audit rows to the log's own time span.
 */
function importOptions(flags: ReconcileCliOptions, fromMs: number, toMs: number): ImportOptions {
  const format = flags.importFormat;
  if (format !== undefined && format !== 'json' && format !== 'csv')
    throw new UsageError(`--import-format: expected json or csv, got ${JSON.stringify(format)}`);
  let quotaPerUsd: number | undefined;
  if (flags.quotaPerUsd !== undefined) {
    quotaPerUsd = Number(flags.quotaPerUsd);
    if (!Number.isFinite(quotaPerUsd) || quotaPerUsd <= 0)
      throw new UsageError(
        `--quota-per-usd: expected a positive number, got ${JSON.stringify(flags.quotaPerUsd)}`,
      );
  }
  return {
    file: flags.import!,
    format,
    quotaPerUsd: quotaPerUsd ?? 500_000,
    windowMs: parseDurationMs(flags.matchWindow ?? '2m', '--match-window'),
    upstream: flags.upstream,
    fromMs: flags.since !== undefined ? fromMs : undefined,
    toMs: flags.until !== undefined ? toMs : undefined,
  };
}

/** The whole command as a function of its flags (tests call it; the action only prints). */
export async function reconcileCommand(
  flags: ReconcileCliOptions,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  nowMs: number = Date.now(),
): Promise<string> {
  const format = (flags.format ?? 'table') as ReconcileFormat;
  if (!RECONCILE_FORMATS.includes(format))
    throw new UsageError(`--format: expected table or json, got ${JSON.stringify(flags.format)}`);
  const fromMs = parseTimeBound(flags.since ?? '24h', '--since', nowMs);
  const toMs = flags.until !== undefined ? parseTimeBound(flags.until, '--until', nowMs) : nowMs;
  if (fromMs >= toMs) throw new UsageError('--since must be before --until');
  const importOpts = flags.import !== undefined ? importOptions(flags, fromMs, toMs) : undefined;
  // --upstream may name an upstream no longer configured: the audit log still holds its rows.
  const { dbPath } = resolveDb(flags, env, cwd);
  const db = openExistingDatabase(dbPath);
  try {
    const r: Reconciliation = buildReconciliation(db, { fromMs, toMs, upstream: flags.upstream });
    const imported = importOpts ? reconcileImport(db, importOpts) : undefined;
    if (format === 'json') {
      const doc: Record<string, unknown> = reconciliationToJson(r);
      if (imported !== undefined) doc.import = JSON.parse(renderImportResult(imported, 'json')) as unknown;
      return JSON.stringify(doc, null, 2) + '\n';
    }
    let text = formatReconcileTable(r);
    if (imported !== undefined)
      text += `\nimported usage log ${importOpts!.file}:\n${renderImportResult(imported, 'table')}`;
    return text;
  } finally {
    db.close();
  }
}

export function register(program: Command): void {
  program
    .command('reconcile')
    .description('billed vs metered per upstream and key: drift, its size and its causes')
    .option('--db <path>', DB_HELP)
    .option('--config <file>', CONFIG_HELP)
    .option('--upstream <name>', 'only this upstream')
    .option(
      '--since <when>',
      'start: 24h, 7d, 2026-11-01 or an ISO timestamp (default: 24h; with --import and no --since/--until, the whole log)',
    )
    .option('--until <when>', 'end, same forms as --since (default: now)')
    .option('--format <format>', 'table or json', 'table')
    .option('--import <file>', "also match a gateway's per-request usage log against the audit rows")
    .option('--import-format <format>', 'json or csv (default: from the file name)')
    .option('--quota-per-usd <n>', 'one-api/new-api quota units per USD in the imported log', '500000')
    .option('--match-window <duration>', 'how far apart a log entry and a record may start', '2m')
    .action((flags: ReconcileCliOptions) =>
      runAction(async () => {
        process.stdout.write(await reconcileCommand(flags));
      }),
    );
}
