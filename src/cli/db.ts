/**
 * `tokenmeter db prune --older-than 90d` and `tokenmeter db migrate` (DESIGN.md §2, §6), plus the
 * small helpers the audit-log commands (`report`, `key-id`) share: where the DB is, opening it for
 * a command, durations, and one-line failures.
 */
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import type Database from 'better-sqlite3';
import { loadSettings } from '../config/load.js';
import type { Settings } from '../config/types.js';
import { ConfigError, TokenmeterError, UsageError } from '../errors.js';
import { withFleet } from '../fleet/connect.js';
import { pruneFleetBefore } from '../fleet/queries.js';
import { openAndMigrate, openDatabase, pruneBefore } from '../sinks/audit/migrations.js';

/** Flags every audit-log command accepts. */
export interface DbFlags {
  db?: string;
  config?: string;
}

/**
 * The effective settings and audit DB path for a command: `--db` > TOKENMETER_DB > the config's
 * `db:` > ./tokenmeter.db (DESIGN.md §2), via the same loader `serve` uses so both agree.
 */
export function resolveDb(
  flags: DbFlags,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
): { settings: Settings; dbPath: string } {
  const settings = loadSettings({ config: flags.config, db: flags.db }, env, cwd);
  if (settings.db === null) {
    throw new TokenmeterError('DB_ERROR', 'the audit DB is disabled (db: false in config); pass --db <path>');
  }
  return { settings, dbPath: settings.db };
}

/**
 * Opens an existing audit DB for a command (migrating it, so a newer CLI can read an older file).
 * A missing file is an error: reading an empty new DB would print a misleading "no spend".
 */
export function openExistingDatabase(path: string): Database.Database {
  if (path !== ':memory:' && !existsSync(path)) {
    throw new TokenmeterError('DB_ERROR', `audit DB ${path} does not exist; pass --db or set TOKENMETER_DB`);
  }
  return openDatabase(path, { fileMustExist: path !== ':memory:' });
}

const DURATION_UNITS_MS: Record<string, number> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** "90d", "24h", "30m", "2w", "45s" → milliseconds; anything else is a UsageError. */
export function parseDurationMs(text: string, flag: string): number {
  const m = /^(\d+)\s*([smhdw])$/.exec(text.trim());
  if (!m)
    throw new UsageError(`${flag}: expected a duration like 90d, 24h or 30m, got ${JSON.stringify(text)}`);
  return Number(m[1]) * DURATION_UNITS_MS[m[2]!]!;
}

/**
 * Runs a command action so that any failure prints one line on stderr and sets the exit code
 * (2 for bad usage, 1 otherwise) instead of a stack trace.
 */
export async function runAction(action: () => void | Promise<void>): Promise<void> {
  try {
    await action();
  } catch (err) {
    const exitCode = err instanceof TokenmeterError ? err.exitCode : 1;
    const text = err instanceof Error ? err.message : String(err);
    // One line per failure; a config error lists each of its problems (file:line: field: message).
    const message =
      err instanceof ConfigError ? text.split('\n').join('\ntokenmeter: ') : text.split('\n')[0];
    process.stderr.write(`tokenmeter: ${message}\n`);
    process.exitCode = exitCode;
  }
}

export function pruneCommand(
  flags: DbFlags & { olderThan: string },
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  nowMs: number = Date.now(),
): string {
  const olderThan = flags.olderThan;
  const ms = parseDurationMs(olderThan, '--older-than');
  const db = openExistingDatabase(resolveDb(flags, env, cwd).dbPath);
  try {
    const cutoff = nowMs - ms;
    const deleted = pruneBefore(db, cutoff);
    return `pruned ${deleted} rows older than ${olderThan} (ts_start before ${new Date(cutoff).toISOString()})\n`;
  } finally {
    db.close();
  }
}

/**
 * `db prune --fleet --older-than 90d`: the same cutoff applied to the fleet Postgres `requests`
 * (every host's rows), in bounded batches. Serve's shipper does this on its own with retention_days.
 */
export async function pruneFleetCommand(
  flags: DbFlags & { olderThan: string; fleet?: boolean },
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  nowMs: number = Date.now(),
): Promise<string> {
  const olderThan = flags.olderThan;
  const ms = parseDurationMs(olderThan, '--older-than');
  const settings = loadSettings({ config: flags.config, db: flags.db }, env, cwd);
  const cutoff = nowMs - ms;
  const deleted = await withFleet(settings, (client) => pruneFleetBefore(client, cutoff));
  return `pruned ${deleted} fleet rows older than ${olderThan} (ts_start before ${new Date(cutoff).toISOString()})\n`;
}

export function migrateCommand(
  flags: DbFlags,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
): string {
  // `db migrate` may create the file: it is how an operator prepares a DB before the first serve.
  const { db, migration } = openAndMigrate(resolveDb(flags, env, cwd).dbPath, { fileMustExist: false });
  try {
    const how = migration.from === migration.to ? 'up to date' : `migrated from ${migration.from}`;
    return `schema version ${migration.to} (${how})\n`;
  } finally {
    db.close();
  }
}

export const DB_HELP = 'audit DB file (default: $TOKENMETER_DB, the config db:, or ./tokenmeter.db)';
export const CONFIG_HELP = 'config file (default: $TOKENMETER_CONFIG or ./tokenmeter.yaml)';

export function register(program: Command): void {
  const dbCmd = program.command('db').description('maintain the SQLite audit log');
  dbCmd
    .command('prune')
    .description('delete audit rows older than a duration (automatic retention uses retention_days)')
    .requiredOption('--older-than <duration>', 'e.g. 90d, 24h')
    .option('--db <path>', DB_HELP)
    .option('--config <file>', CONFIG_HELP)
    .option('--fleet', 'prune the fleet Postgres (fleet.postgres.url / TOKENMETER_PG_URL) instead')
    .action((opts: DbFlags & { olderThan: string; fleet?: boolean }) =>
      runAction(async () => {
        process.stdout.write(opts.fleet === true ? await pruneFleetCommand(opts) : pruneCommand(opts));
      }),
    );
  dbCmd
    .command('migrate')
    .description('create or upgrade the audit DB schema and print its version')
    .option('--db <path>', DB_HELP)
    .option('--config <file>', CONFIG_HELP)
    .action((opts: DbFlags) =>
      runAction(() => {
        process.stdout.write(migrateCommand(opts));
      }),
    );
}
