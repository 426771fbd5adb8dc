import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TokenmeterError } from '../../src/errors.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { openAuditLog, rowToRecord } from '../../src/sinks/audit/index.js';
import { openAndMigrate, openDatabase, SCHEMA_VERSION } from '../../src/sinks/audit/migrations.js';
import { fullRecord, recordingHealth, tempDir, type TempDir } from './records.js';

/**
 * The v1 schema exactly as released, frozen here on purpose: if migration 1 in the source were
 * edited, this file would still be what real v1 users have on disk.
 */
const V1_SCHEMA = `
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE requests (
  id TEXT PRIMARY KEY NOT NULL, ts_start INTEGER NOT NULL, ts_end INTEGER NOT NULL,
  duration_ms INTEGER NOT NULL, upstream TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
  request_model TEXT, app TEXT NOT NULL, key_id TEXT, stream INTEGER NOT NULL, http_status INTEGER,
  error_type TEXT, input_tokens INTEGER, output_tokens INTEGER, usage_source TEXT NOT NULL,
  cost_nanos INTEGER, currency TEXT
);
CREATE INDEX requests_ts_start ON requests (ts_start);
INSERT INTO meta (key, value) VALUES ('schema_version', '1'), ('key_secret', 'v1-secret-kept-across-upgrade');
INSERT INTO requests VALUES ('01V1ROW', 1763600000000, 1763600001000, 1000, 'cailag', 'POST',
  '/v1/chat/completions', 'deepseek-chat', 'legacy', 'abcdefabcdef', 1, 200, NULL, 400, NULL, 'reported', 1182600, 'CNY');
`;

let tmp: TempDir;
beforeEach(() => {
  tmp = tempDir();
});
afterEach(() => tmp.cleanup());

function makeV1File(path: string): void {
  const db = openSqlite(path);
  db.pragma('journal_mode = WAL');
  db.exec(V1_SCHEMA);
  db.close();
}

describe('audit log migrations', () => {
  it('creates a new DB at the current version in WAL mode with synchronous=NORMAL', () => {
    const { db, migration } = openAndMigrate(tmp.file('new.db'));
    expect(migration).toEqual({ from: 0, to: SCHEMA_VERSION });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('synchronous', { simple: true })).toBe(1); // NORMAL
    expect(Number(db.pragma('busy_timeout', { simple: true }))).toBeGreaterThan(0);
    const indexes = (
      db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'`).all() as {
        name: string;
      }[]
    ).map((i) => i.name);
    expect(indexes).toEqual(
      expect.arrayContaining(['requests_ts_start', 'requests_app_ts_start', 'requests_model_ts_start']),
    );
    const plan = db
      .prepare(
        `EXPLAIN QUERY PLAN SELECT SUM(cost_nanos) FROM requests WHERE app = 'a' AND ts_start >= 0 AND ts_start < 10`,
      )
      .all() as { detail: string }[];
    expect(plan.map((p) => p.detail).join(' ')).toContain('requests_app_ts_start');
    db.close();
  });

  it('upgrades a real v1 file in place, keeping its rows (new columns NULL, never 0) and its key secret', async () => {
    const path = tmp.file('v1.db');
    makeV1File(path);

    const { db, migration } = openAndMigrate(path);
    expect(migration).toEqual({ from: 1, to: SCHEMA_VERSION });
    db.close();

    const audit = openAuditLog({
      path,
      queueSize: 10,
      batchSize: 10,
      flushIntervalMs: 60_000,
      retentionDays: 0,
      captureBodies: false,
      captureMaxBytes: 0,
      redactPatterns: [],
      health: recordingHealth(),
      log: SILENT_LOGGER,
    });
    expect(audit.keySecret).toBe('v1-secret-kept-across-upgrade');
    const fresh = fullRecord();
    audit.write(fresh);
    await audit.close();

    const check = openSqlite(path, { readonly: true });
    const rows = check.prepare('SELECT * FROM requests ORDER BY id').all() as Record<string, unknown>[];
    check.close();
    expect(rows).toHaveLength(2);
    const legacy = rowToRecord(rows.find((r) => r['id'] === '01V1ROW')!);
    expect(legacy).toMatchObject({
      app: 'legacy',
      input_tokens: 400,
      output_tokens: null,
      cost_nanos: 1182600,
      stream: true,
    });
    // Columns v1 never had are unknown, not zero.
    expect(legacy.cache_read_tokens).toBeNull();
    expect(legacy.request_bytes).toBeNull();
    expect(legacy.operation).toBeNull();
    expect(rowToRecord(rows.find((r) => r['id'] === fresh.id)!)).toEqual(fresh);
  });

  it('is idempotent: reopening a current DB runs no migration', () => {
    const path = tmp.file('again.db');
    openDatabase(path).close();
    const { db, migration } = openAndMigrate(path);
    expect(migration).toEqual({ from: SCHEMA_VERSION, to: SCHEMA_VERSION });
    db.close();
  });

  it('refuses a DB from a newer tokenmeter, naming both versions, and leaves it untouched', () => {
    const path = tmp.file('future.db');
    openDatabase(path).close();
    const raw = openSqlite(path);
    raw.prepare(`UPDATE meta SET value = '7' WHERE key = 'schema_version'`).run();
    raw.close();

    let caught: unknown;
    try {
      openDatabase(path);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(TokenmeterError);
    expect((caught as TokenmeterError).code).toBe('DB_SCHEMA_TOO_NEW');
    expect((caught as Error).message).toMatch(
      new RegExp(`schema version 7.*supports up to version ${SCHEMA_VERSION}`),
    );
    const after = openSqlite(path, { readonly: true });
    expect(after.prepare(`SELECT value FROM meta WHERE key = 'schema_version'`).get()).toEqual({
      value: '7',
    });
    after.close();
  });
});
