/**
 * The audit log's schema (DESIGN.md §6): numbered migrations applied at open, in one transaction,
 * so a DB written by an older tokenmeter upgrades in place and a DB written by a newer one is
 * refused rather than misread.
 *
 * Column names are the RequestRecord field names (src/record.ts); `REQUEST_COLUMNS` is checked
 * against the record type at compile time so a new record field cannot be forgotten here.
 */
import { randomBytes } from 'node:crypto';
import type Database from 'better-sqlite3';
import { openSqlite } from './sqlite.js';
import { TokenmeterError } from '../../errors.js';
import type { RequestRecord } from '../../record.js';

/** How a record field is stored. `bool` is INTEGER 0/1; timestamps are INTEGER epoch ms. */
export type ColumnKind = 'text' | 'integer' | 'bool';

/** Every RequestRecord field, its storage kind, and the migration that added it. */
export const REQUEST_COLUMNS = {
  id: { kind: 'text', since: 1 },
  ts_start: { kind: 'integer', since: 1 },
  ts_end: { kind: 'integer', since: 1 },
  duration_ms: { kind: 'integer', since: 1 },
  ttft_ms: { kind: 'integer', since: 2 },
  upstream: { kind: 'text', since: 1 },
  method: { kind: 'text', since: 1 },
  path: { kind: 'text', since: 1 },
  operation: { kind: 'text', since: 2 },
  request_model: { kind: 'text', since: 1 },
  response_model: { kind: 'text', since: 2 },
  app: { kind: 'text', since: 1 },
  key_id: { kind: 'text', since: 1 },
  user: { kind: 'text', since: 2 },
  stream: { kind: 'bool', since: 1 },
  http_status: { kind: 'integer', since: 1 },
  error_type: { kind: 'text', since: 1 },
  error_message: { kind: 'text', since: 2 },
  finish_reason: { kind: 'text', since: 2 },
  input_tokens: { kind: 'integer', since: 1 },
  cache_read_tokens: { kind: 'integer', since: 2 },
  cache_write_tokens: { kind: 'integer', since: 2 },
  cache_write_1h_tokens: { kind: 'integer', since: 2 },
  output_tokens: { kind: 'integer', since: 1 },
  reasoning_tokens: { kind: 'integer', since: 2 },
  images: { kind: 'integer', since: 2 },
  usage_source: { kind: 'text', since: 1 },
  cost_nanos: { kind: 'integer', since: 1 },
  currency: { kind: 'text', since: 1 },
  cost_source: { kind: 'text', since: 2 },
  price_id: { kind: 'text', since: 2 },
  multiplier: { kind: 'text', since: 2 },
  upstream_reported_cost_nanos: { kind: 'integer', since: 2 },
  upstream_reported_currency: { kind: 'text', since: 2 },
  trace_id: { kind: 'text', since: 2 },
  request_bytes: { kind: 'integer', since: 2 },
  response_bytes: { kind: 'integer', since: 2 },
  upstream_request_id: { kind: 'text', since: 2 },
  note: { kind: 'text', since: 2 },
  price_match: { kind: 'text', since: 3 },
  audio_tokens: { kind: 'integer', since: 3 },
  computed_cost_nanos: { kind: 'integer', since: 4 },
  computed_currency: { kind: 'text', since: 4 },
} as const satisfies Record<keyof RequestRecord, { kind: ColumnKind; since: number }>;

export type RequestColumn = keyof typeof REQUEST_COLUMNS;
/** Column order: the order of a Row's values and of the INSERT's parameters (row.ts); frozen so nothing can reorder it. */
export const REQUEST_COLUMN_NAMES: readonly RequestColumn[] = Object.freeze(
  Object.keys(REQUEST_COLUMNS) as RequestColumn[],
);

interface Migration {
  version: number;
  description: string;
  sql: string;
}

/** `"user"` is quoted everywhere: it is a keyword in several SQL dialects a fleet sink may use. */
export const quoteIdent = (name: string): string => `"${name.replace(/"/g, '""')}"`;

const sqlType = (kind: ColumnKind): string => (kind === 'text' ? 'TEXT' : 'INTEGER');

/**
 * Migration 1 is the first released schema: a deliberately smaller requests table (no cache
 * breakdown, no provenance). It must never change: real v1 files exist and are upgraded by 2.
 */
const MIGRATION_1 = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE requests (
  id TEXT PRIMARY KEY NOT NULL,
  ts_start INTEGER NOT NULL,
  ts_end INTEGER NOT NULL,
  duration_ms INTEGER NOT NULL,
  upstream TEXT NOT NULL,
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  request_model TEXT,
  app TEXT NOT NULL,
  key_id TEXT,
  stream INTEGER NOT NULL,
  http_status INTEGER,
  error_type TEXT,
  input_tokens INTEGER,
  output_tokens INTEGER,
  usage_source TEXT NOT NULL,
  cost_nanos INTEGER,
  currency TEXT
);
CREATE INDEX requests_ts_start ON requests (ts_start);
`;

/**
 * Migration 2: the rest of the §4.5 record, the per-app/per-model indexes reports and budgets
 * use, and the body-capture table. Added columns are nullable: rows written by v1 did not know
 * them, and unknown is not zero.
 */
const MIGRATION_2 = [
  ...REQUEST_COLUMN_NAMES.filter((c) => REQUEST_COLUMNS[c].since === 2).map(
    (c) => `ALTER TABLE requests ADD COLUMN ${quoteIdent(c)} ${sqlType(REQUEST_COLUMNS[c].kind)};`,
  ),
  'CREATE INDEX requests_app_ts_start ON requests (app, ts_start);',
  'CREATE INDEX requests_model_ts_start ON requests (request_model, ts_start);',
  `CREATE TABLE bodies (
    id TEXT PRIMARY KEY NOT NULL,
    ts INTEGER NOT NULL,
    request TEXT,
    response TEXT,
    request_bytes INTEGER,
    response_bytes INTEGER,
    truncated INTEGER NOT NULL
  );`,
  'CREATE INDEX bodies_ts ON bodies (ts);',
].join('\n');

/**
 * Migration 3 (issues 12, 13): how the price entry matched (`price_match`), the audio part of a
 * Realtime session's tokens (`audio_tokens`, priced apart from text), and the repricing audit
 * trail `tokenmeter reprice` writes: one `repricings` row per run that changed something, and per
 * changed request its cost fields before and after (src/cli/reprice.ts, docs/pricing.md).
 */
const MIGRATION_3 = [
  ...REQUEST_COLUMN_NAMES.filter((c) => REQUEST_COLUMNS[c].since === 3).map(
    (c) => `ALTER TABLE requests ADD COLUMN ${quoteIdent(c)} ${sqlType(REQUEST_COLUMNS[c].kind)};`,
  ),
  `CREATE TABLE repricings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    tables TEXT NOT NULL,
    rows_examined INTEGER NOT NULL,
    rows_changed INTEGER NOT NULL
  );`,
  `CREATE TABLE repricing_history (
    repricing_id INTEGER NOT NULL REFERENCES repricings (id),
    request_id TEXT NOT NULL,
    ts_start INTEGER NOT NULL,
    old_cost_nanos INTEGER,
    old_currency TEXT,
    old_cost_source TEXT,
    old_price_id TEXT,
    old_price_match TEXT,
    old_multiplier TEXT,
    new_cost_nanos INTEGER,
    new_currency TEXT,
    new_cost_source TEXT,
    new_price_id TEXT,
    new_price_match TEXT,
    new_multiplier TEXT,
    PRIMARY KEY (repricing_id, request_id)
  );`,
  'CREATE INDEX repricing_history_request ON repricing_history (request_id);',
  'CREATE INDEX repricing_history_ts_start ON repricing_history (ts_start);',
].join('\n');

/**
 * Migration 4 (issue 13, billed vs metered, docs/reconcile.md): our table's cost kept beside a
 * trusted upstream-reported one (`computed_cost_nanos`/`computed_currency`, set only when
 * `cost_source = 'upstream'`), and `billing_snapshots`: what a gateway's balance or billing
 * endpoint said at each poll, as exact nanos, for the upstream and key fingerprint it answered for.
 */
const MIGRATION_4 = [
  ...REQUEST_COLUMN_NAMES.filter((c) => REQUEST_COLUMNS[c].since === 4).map(
    (c) => `ALTER TABLE requests ADD COLUMN ${quoteIdent(c)} ${sqlType(REQUEST_COLUMNS[c].kind)};`,
  ),
  `CREATE TABLE billing_snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    upstream TEXT NOT NULL,
    key_id TEXT,
    source TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance_nanos INTEGER,
    daily_used_nanos INTEGER,
    monthly_used_nanos INTEGER,
    total_used_nanos INTEGER,
    granted_nanos INTEGER,
    daily_reset_at INTEGER,
    monthly_reset_at INTEGER
  );`,
  'CREATE INDEX billing_snapshots_upstream_ts ON billing_snapshots (upstream, ts);',
].join('\n');

export const MIGRATIONS: readonly Migration[] = [
  { version: 1, description: 'requests (v1 columns) and meta', sql: MIGRATION_1 },
  { version: 2, description: 'full request record, indexes, bodies', sql: MIGRATION_2 },
  {
    version: 3,
    description: 'price_match, audio_tokens, repricings and repricing_history',
    sql: MIGRATION_3,
  },
  {
    version: 4,
    description: 'computed_cost_nanos, computed_currency and billing_snapshots',
    sql: MIGRATION_4,
  },
];

/** The schema version this code writes and understands. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** Reads `meta.schema_version`; 0 for an empty file. */
export function readSchemaVersion(db: Database.Database): number {
  const hasMeta = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'`).get();
  if (!hasMeta) return 0;
  const row = db.prepare(`SELECT value FROM meta WHERE key = 'schema_version'`).get() as
    { value: string } | undefined;
  if (!row) return 0;
  const v = Number(row.value);
  if (!Number.isInteger(v) || v < 0) {
    throw new TokenmeterError(
      'DB_ERROR',
      `audit DB has an invalid schema_version ${JSON.stringify(row.value)}`,
    );
  }
  return v;
}

export interface MigrationResult {
  from: number;
  to: number;
}

/**
 * Applies the pending migrations in one IMMEDIATE transaction (so two processes opening the same
 * new file cannot both migrate it), or refuses a DB from a newer tokenmeter.
 */
export function migrate(db: Database.Database, target: number = SCHEMA_VERSION): MigrationResult {
  const run = db.transaction((): MigrationResult => {
    const from = readSchemaVersion(db);
    if (from > SCHEMA_VERSION) {
      throw new TokenmeterError(
        'DB_SCHEMA_TOO_NEW',
        `audit DB ${db.name} has schema version ${from}, but this tokenmeter supports up to version ${SCHEMA_VERSION}; ` +
          'upgrade tokenmeter or point --db at another file',
      );
    }
    for (const m of MIGRATIONS) {
      if (m.version <= from || m.version > target) continue;
      db.exec(m.sql);
      db.prepare(
        `INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
      ).run(String(m.version));
    }
    return { from, to: Math.max(from, Math.min(target, SCHEMA_VERSION)) };
  });
  return run.immediate();
}

export interface OpenOptions {
  /** Fail instead of creating a new file (CLI commands reading an existing log). */
  fileMustExist?: boolean;
  /**
   * How long a statement waits for another connection's lock. Long for the CLI; short for the
   * serve writer, because better-sqlite3 is synchronous and a wait there stalls the event loop
   * (and with it, traffic): the writer retries with backoff instead.
   */
  busyTimeoutMs?: number;
}

/** Opens a DB file (or ':memory:') with the §6 pragmas and migrates it. */
export function openDatabase(path: string, opts: OpenOptions = {}): Database.Database {
  return openAndMigrate(path, opts).db;
}

/** `openDatabase`, also telling which migrations ran (for `db migrate`). */
export function openAndMigrate(
  path: string,
  opts: OpenOptions = {},
): { db: Database.Database; migration: MigrationResult } {
  let db: Database.Database;
  try {
    db = openSqlite(path, { fileMustExist: opts.fileMustExist ?? false });
  } catch (err) {
    throw new TokenmeterError('DB_ERROR', `cannot open audit DB ${path}: ${(err as Error).message}`);
  }
  try {
    // Migrations may wait for another process holding the lock: that happens at startup, not on traffic.
    db.pragma('busy_timeout = 5000');
    if (path !== ':memory:') db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a power loss can lose the last commits but never corrupts the file.
    db.pragma('synchronous = NORMAL');
    const migration = migrate(db);
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(opts.busyTimeoutMs ?? 5000))}`);
    return { db, migration };
  } catch (err) {
    db.close();
    if (err instanceof TokenmeterError) throw err;
    throw new TokenmeterError('DB_ERROR', `cannot prepare audit DB ${path}: ${(err as Error).message}`);
  }
}

/**
 * The HMAC secret for key fingerprints (DESIGN.md §4.3): generated once (32 random bytes, hex)
 * and kept in `meta`, so `serve` and `key-id` agree across restarts.
 */
export function ensureKeySecret(db: Database.Database): string {
  const read = (): string | undefined =>
    (db.prepare(`SELECT value FROM meta WHERE key = 'key_secret'`).get() as { value: string } | undefined)
      ?.value;
  const existing = read();
  if (existing !== undefined) return existing;
  // INSERT OR IGNORE then re-read: if another process won the race, its secret is the one kept.
  db.prepare(`INSERT OR IGNORE INTO meta (key, value) VALUES ('key_secret', ?)`).run(
    randomBytes(32).toString('hex'),
  );
  const stored = read();
  if (stored === undefined)
    throw new TokenmeterError('DB_ERROR', 'could not store the key secret in the audit DB');
  return stored;
}

/** Deletes request rows (and captured bodies) that started before `cutoffMs`; returns rows deleted. */
export function pruneBefore(db: Database.Database, cutoffMs: number): number {
  const run = db.transaction((): number => {
    const deleted = db.prepare('DELETE FROM requests WHERE ts_start < ?').run(cutoffMs).changes;
    db.prepare('DELETE FROM bodies WHERE ts < ?').run(cutoffMs);
    // A pruned request's repricing history goes with it; the `repricings` runs themselves stay.
    db.prepare('DELETE FROM repricing_history WHERE ts_start < ?').run(cutoffMs);
    db.prepare('DELETE FROM billing_snapshots WHERE ts < ?').run(cutoffMs);
    return deleted;
  });
  return run.immediate();
}

export const DAY_MS = 86_400_000;
