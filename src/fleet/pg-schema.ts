/**
 * The fleet's PostgreSQL schema (docs/fleet.md, DESIGN.md §13): numbered migrations like the
 * SQLite ones (src/sinks/audit/migrations.ts), applied by whichever sidecar connects first.
 *
 * `requests` has exactly the SQLite requests columns, derived from `REQUEST_COLUMNS` so the two
 * cannot drift, plus `host` (which sidecar shipped the row). A column added to the record later
 * (SQLite `since` > 4) must be added here by a Postgres migration; `pgColumnsMissing` finds one
 * that was forgotten and a test fails on it.
 */
import type pg from 'pg';
import { TokenmeterError } from '../errors.js';
import {
  quoteIdent,
  REQUEST_COLUMN_NAMES,
  REQUEST_COLUMNS,
  type ColumnKind,
  type RequestColumn,
} from '../sinks/audit/migrations.js';

/** Integers (tokens, ms, nanos) are BIGINT: money nanos pass 2^31 after two currency units. */
export const pgType = (kind: ColumnKind): string =>
  kind === 'text' ? 'TEXT' : kind === 'bool' ? 'BOOLEAN' : 'BIGINT';

/** SQLite columns whose NOT NULL Postgres keeps too (the v1 NOT NULL set); the rest are nullable. */
const NOT_NULL: ReadonlySet<RequestColumn> = new Set<RequestColumn>([
  'id',
  'ts_start',
  'ts_end',
  'duration_ms',
  'upstream',
  'method',
  'path',
  'app',
  'stream',
  'usage_source',
]);

/** The record columns Postgres migration 1 created: everything SQLite had at its version 4. */
const PG_V1_COLUMNS = REQUEST_COLUMN_NAMES.filter((c) => REQUEST_COLUMNS[c].since <= 4);

const columnDdl = (c: RequestColumn): string =>
  `${quoteIdent(c)} ${pgType(REQUEST_COLUMNS[c].kind)}${NOT_NULL.has(c) ? ' NOT NULL' : ''}`;

const PG_MIGRATION_1 = [
  `CREATE TABLE requests (
    ${PG_V1_COLUMNS.map(columnDdl).join(',\n    ')},
    host TEXT NOT NULL,
    PRIMARY KEY (id)
  )`,
  'CREATE INDEX requests_ts_start ON requests (ts_start)',
  'CREATE INDEX requests_host_ts_start ON requests (host, ts_start)',
  'CREATE INDEX requests_app_ts_start ON requests (app, ts_start)',
];

/**
 * Shared block budgets (docs/fleet.md, Shared budgets; src/fleet/budget-ledger.ts). One ledger row
 * per budget, period and currency holds the fleet's settled spend; a reservation row per request
 * in flight holds its bound until settled or expired (a crashed host's rows stop counting at
 * `expires_at`). Amounts are nanos of the budget's currency.
 */
const PG_MIGRATION_2 = [
  `CREATE TABLE budget_ledger (
    budget TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_key TEXT NOT NULL,
    currency TEXT NOT NULL,
    spent_nanos BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (budget, period_start, currency)
  )`,
  `CREATE TABLE budget_reservations (
    id TEXT NOT NULL,
    budget TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    currency TEXT NOT NULL,
    host TEXT NOT NULL,
    amount_nanos BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (id, budget)
  )`,
  'CREATE INDEX budget_reservations_period ON budget_reservations (budget, period_start, currency, expires_at)',
];

/**
 * Idempotent settle (src/fleet/budget-ledger.ts): one row per settled request and budget, inserted
 * in the settle's transaction with `ON CONFLICT DO NOTHING`; the cost is added only when the row
 * was new, so a settle retried after a COMMIT whose reply was lost does not add it twice. Rows are
 * pruned with the expired reservations once older than the retry window.
 */
const PG_MIGRATION_3 = [
  `CREATE TABLE budget_settlements (
    reservation_id TEXT NOT NULL,
    budget TEXT NOT NULL,
    settled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (reservation_id, budget)
  )`,
  'CREATE INDEX budget_settlements_budget_settled_at ON budget_settlements (budget, settled_at)',
];

interface PgMigration {
  version: number;
  description: string;
  statements: readonly string[];
  /** Record columns this migration adds to `requests` (for the drift check). */
  columns: readonly RequestColumn[];
}

export const PG_MIGRATIONS: readonly PgMigration[] = [
  {
    version: 1,
    description: 'requests (the record columns of SQLite schema 4) and host',
    statements: PG_MIGRATION_1,
    columns: PG_V1_COLUMNS,
  },
  {
    version: 2,
    description: 'shared block budgets: budget_ledger and budget_reservations',
    statements: PG_MIGRATION_2,
    columns: [],
  },
  {
    version: 3,
    description: 'idempotent settle: budget_settlements',
    statements: PG_MIGRATION_3,
    columns: [],
  },
];

export const PG_SCHEMA_VERSION = PG_MIGRATIONS[PG_MIGRATIONS.length - 1]!.version;

/** Record columns no Postgres migration creates: must be empty (test/fleet/pg-schema.test.ts). */
export function pgColumnsMissing(): RequestColumn[] {
  const have = new Set(PG_MIGRATIONS.flatMap((m) => m.columns));
  return REQUEST_COLUMN_NAMES.filter((c) => !have.has(c));
}

/** Every Postgres `requests` column in insert order: the record's, then `host`. */
export const PG_REQUEST_COLUMNS: readonly string[] = [...REQUEST_COLUMN_NAMES, 'host'];

// Any fixed number: serialises concurrent sidecars migrating the same database.
const MIGRATE_LOCK_KEY = 0x746f6b6d; // "tokm"

export interface PgMigrationResult {
  from: number;
  to: number;
}

/**
 * Creates or upgrades the schema in one transaction under an advisory lock, or refuses a database
 * a newer tokenmeter migrated (`DB_SCHEMA_TOO_NEW`): this code would misread or miswrite it.
 */
export async function migratePg(
  client: pg.ClientBase,
  target: number = PG_SCHEMA_VERSION,
): Promise<PgMigrationResult> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATE_LOCK_KEY]);
    await client.query(
      'CREATE TABLE IF NOT EXISTS tokenmeter_schema (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())',
    );
    const from = await readPgSchemaVersion(client);
    if (from > PG_SCHEMA_VERSION) {
      throw new TokenmeterError(
        'DB_SCHEMA_TOO_NEW',
        `fleet Postgres has tokenmeter schema version ${from}, but this tokenmeter supports up to version ${PG_SCHEMA_VERSION}; ` +
          'upgrade this sidecar (audit rows stay in the local SQLite log meanwhile)',
      );
    }
    for (const m of PG_MIGRATIONS) {
      if (m.version <= from || m.version > target) continue;
      for (const sql of m.statements) await client.query(sql);
      await client.query('INSERT INTO tokenmeter_schema (version) VALUES ($1)', [m.version]);
    }
    await client.query('COMMIT');
    return { from, to: Math.max(from, Math.min(target, PG_SCHEMA_VERSION)) };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** The highest applied version; 0 when the table is missing or empty. */
export async function readPgSchemaVersion(client: pg.ClientBase): Promise<number> {
  const exists = await client.query<{ t: string | null }>(
    `SELECT to_regclass('tokenmeter_schema')::text AS t`,
  );
  if (exists.rows[0]?.t == null) return 0;
  const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM tokenmeter_schema');
  return r.rows[0]?.v ?? 0;
}
