/**
 * `openSqlite` (src/sinks/audit/sqlite.ts): no Database or Statement tokenmeter makes may become
 * garbage, because better-sqlite3 12 aborts the process on Node 24 when V8 collects one outside a
 * Node context. The crash itself needs Node 24 (CI runs 20; the full suite was run on 24.21 with
 * it); these tests pin the mechanism that prevents it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { openSqlite, retainedConnections } from '../../src/sinks/audit/sqlite.js';
import { tempDir, type TempDir } from './records.js';

let tmp: TempDir | undefined;
afterEach(() => tmp?.cleanup());

describe('openSqlite', () => {
  it('prepares each SQL text once per connection and hands back the same Statement', () => {
    const db = openSqlite(':memory:');
    db.exec('CREATE TABLE t (x INTEGER)');
    const insert = db.prepare('INSERT INTO t (x) VALUES (?)');
    expect(db.prepare('INSERT INTO t (x) VALUES (?)')).toBe(insert);
    for (let i = 0; i < 3; i++) db.prepare('INSERT INTO t (x) VALUES (?)').run(i);
    expect(db.prepare('SELECT count(*) AS n FROM t').get()).toEqual({ n: 3 });
    // Another connection has its own statements.
    const other = openSqlite(':memory:');
    other.exec('CREATE TABLE t (x INTEGER)');
    expect(other.prepare('INSERT INTO t (x) VALUES (?)')).not.toBe(insert);
    db.close();
    other.close();
  });

  it('pragma answers like better-sqlite3 (rows, simple, setters) through the cached statements', () => {
    tmp = tempDir();
    const db = openSqlite(tmp.file('p.db'));
    expect(db.pragma('journal_mode = WAL', { simple: true })).toBe('wal');
    expect(db.pragma('busy_timeout = 250')).toEqual([{ timeout: 250 }]);
    expect(db.pragma('busy_timeout', { simple: true })).toBe(250);
    // A setter that answers nothing gives [] (and undefined with simple), as better-sqlite3 does.
    expect(db.pragma('foreign_keys = ON')).toEqual([]);
    expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    // The same text twice: one statement, modes set per call (simple then rows).
    expect(db.pragma('user_version')).toEqual([{ user_version: 0 }]);
    expect(db.pragma('user_version', { simple: true })).toBe(0);
    expect(db.pragma('user_version')).toEqual([{ user_version: 0 }]);
    db.close();
  });

  it('keeps every connection it opened referenced, closed or not', () => {
    const before = retainedConnections();
    openSqlite(':memory:').close();
    openSqlite(':memory:');
    expect(retainedConnections()).toBe(before + 2);
  });
});
