/**
 * Issue 11, "hardening found by probing": the audit DB deleted while serving, health for /readyz,
 * the unclean-shutdown marker, and implausible numbers kept out of INTEGER columns. Real SQLite
 * files in a temp dir; the unclean shutdown is a real child process killed with SIGKILL.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import Database from 'better-sqlite3';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { openExistingDatabase } from '../../src/cli/db.js';
import { auditTestHooks, recordToRow, rowValue } from '../../src/sinks/audit/index.js';
import { fullRecord, recordingHealth, type TempDir } from './records.js';
import { logLines, storedIdsAt, useAuditLogs } from './harness.js';

let tmp: TempDir;
/** Every test runs against both writers: the thread (the default for a file) and the main thread. */
let writerMode: 'thread' | 'main' = 'thread';
const logs = useAuditLogs(() => ({ writer: writerMode }));
const openLog = logs.openLog;
beforeEach(() => {
  tmp = logs.tmp();
});

function withReader<T>(path: string, fn: (db: Database.Database) => T): T {
  const db = openSqlite(path, { readonly: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

const storedIds = (path = tmp.file('audit.db')): string[] => storedIdsAt(path);

const metaValue = (path: string, key: string): string | undefined =>
  withReader(
    path,
    (db) =>
      (db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value,
  );

const DB_LOST_MSG = 'audit DB file was deleted or replaced while serving; reopened a new DB at its path';
const UNCLEAN_MSG = 'the previous tokenmeter serve did not shut down cleanly; records may be missing';

describe.each(['thread', 'main'] as const)('audit DB deleted while serving (%s writer)', (mode) => {
  beforeEach(() => {
    writerMode = mode;
  });

  it('detects the deletion, reopens a fresh DB at the path with the same key secret, logs once and counts it', async () => {
    const health = recordingHealth();
    const { lines, log } = logLines();
    const path = tmp.file('audit.db');
    const audit = openLog({ health, log });
    const secret = audit.keySecret;
    const before = fullRecord();
    audit.write(before);
    await audit.flush();
    expect(storedIds()).toEqual([before.id]);

    // What an operator's `rm tokenmeter.db*` does: the main file and its WAL/SHM companions go.
    for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true });
    const after = [fullRecord(), fullRecord()];
    for (const r of after) audit.write(r);
    await audit.flush();

    expect(existsSync(path)).toBe(true);
    expect(storedIds()).toEqual(after.map((r) => r.id).sort());
    expect(metaValue(path, 'key_secret')).toBe(secret);
    expect(audit.keySecret).toBe(secret);
    // `db` is the live connection: budgets and report queries on the main thread see the new file.
    expect(audit.db.prepare('SELECT COUNT(*) AS n FROM requests').get()).toEqual({ n: 2 });
    const lost = lines.filter((l) => l['msg'] === DB_LOST_MSG);
    expect(lost).toHaveLength(1);
    expect(lost[0]!['level']).toBe('error');
    expect(health.internal).toContain('audit');
    expect(health.dropped).toBe(0);
    expect(audit.healthy()).toBe(true);

    // A second deletion is detected again (logged again: it is a new event).
    unlinkSync(path);
    const third = fullRecord();
    audit.write(third);
    await audit.flush();
    expect(storedIds()).toEqual([third.id]);
    expect(lines.filter((l) => l['msg'] === DB_LOST_MSG)).toHaveLength(2);
  });

  it('detects a file replaced by another one (mv over it) and writes to the file now at the path', async () => {
    const path = tmp.file('audit.db');
    const audit = openLog();
    audit.write(fullRecord());
    await audit.flush();
    // A different (empty) DB moved over the path, e.g. a restore.
    const other = tmp.file('other.db');
    openSqlite(other).close();
    renameSync(other, path);
    const r = fullRecord();
    audit.write(r);
    await audit.flush();
    expect(storedIds()).toEqual([r.id]);
  });

  it('keeps rows queued and reports unhealthy while the path cannot be reopened, then recovers', async () => {
    const health = recordingHealth();
    const dir = tmp.file('sub');
    mkdirSync(dir);
    const path = `${dir}/audit.db`;
    const audit = openLog({ path, health, minBackoffMs: 1, maxBackoffMs: 5 });
    audit.write(fullRecord());
    await audit.flush();
    rmSync(dir, { recursive: true, force: true });
    const queued = [fullRecord(), fullRecord()];
    for (const r of queued) audit.write(r);
    await audit.flush();
    expect(audit.healthy()).toBe(false);
    expect(health.dropped).toBe(0);

    mkdirSync(dir);
    await audit.flush();
    expect(audit.healthy()).toBe(true);
    expect(storedIds(path)).toEqual(queued.map((r) => r.id).sort());
  });

  it('close() while the path cannot be reopened is bounded and counts the queued rows as dropped', async () => {
    const health = recordingHealth();
    const dir = tmp.file('gone');
    mkdirSync(dir);
    const audit = openLog({ path: `${dir}/audit.db`, health, closeTimeoutMs: 100, minBackoffMs: 5 });
    rmSync(dir, { recursive: true, force: true });
    for (let i = 0; i < 3; i++) audit.write(fullRecord());
    const t0 = Date.now();
    await audit.close();
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(health.dropped).toBe(3);
  });

  it('notices a deletion while idle when healthy() is asked (the /readyz probe)', async () => {
    const path = tmp.file('audit.db');
    const audit = openLog();
    unlinkSync(path);
    // Asking notices it (false: nothing writes to the path now) and has the writer reopen the
    // file at once rather than at the next record.
    expect(audit.healthy()).toBe(false);
    await vi.waitFor(() => expect(audit.healthy()).toBe(true), { timeout: 5000 });
    expect(existsSync(path)).toBe(true);
    expect(audit.db.prepare('SELECT COUNT(*) AS n FROM requests').get()).toEqual({ n: 0 });
  });
});

describe.each(['thread', 'main'] as const)('audit healthy() for /readyz (%s writer)', (mode) => {
  beforeEach(() => {
    writerMode = mode;
  });

  it('is false while writes fail (read-only) and true again after a successful flush', async () => {
    const audit = openLog({ minBackoffMs: 1, maxBackoffMs: 5 });
    expect(audit.healthy()).toBe(true);
    await auditTestHooks.execOnWriter(audit, 'PRAGMA query_only = ON');
    audit.write(fullRecord());
    await audit.flush();
    expect(audit.healthy()).toBe(false);
    await auditTestHooks.execOnWriter(audit, 'PRAGMA query_only = OFF');
    await audit.flush();
    expect(audit.healthy()).toBe(true);
  });

  it('tolerates a lock for a moment, is false when it lasts, true once written', async () => {
    const audit = openLog({ minBackoffMs: 1, maxBackoffMs: 5, unhealthyAfterLockedMs: 100 });
    const locker = openSqlite(tmp.file('audit.db'));
    locker.exec('BEGIN EXCLUSIVE');
    try {
      audit.write(fullRecord());
      await audit.flush();
      // One failed attempt against a lock: a checkpoint or a report query, not an outage.
      expect(audit.healthy()).toBe(true);
      await new Promise((r) => setTimeout(r, 150));
      await audit.flush();
      expect(audit.healthy()).toBe(false);
    } finally {
      locker.exec('ROLLBACK');
      locker.close();
    }
    await audit.flush();
    expect(audit.healthy()).toBe(true);
    expect(storedIds()).toHaveLength(1);
  });

  it('is false after close()', async () => {
    const audit = openLog();
    await audit.close();
    expect(audit.healthy()).toBe(false);
  });
});

describe('unclean-shutdown marker', () => {
  beforeEach(() => {
    writerMode = 'thread';
  });

  const tsxLoader = new URL('../../node_modules/tsx/dist/loader.mjs', import.meta.url).href;
  const child = new URL('./crash-child.ts', import.meta.url).pathname;

  /** Runs crash-child.ts until it says ready, then SIGKILLs it; resolves with its pid. */
  function runAndKill(path: string): Promise<number> {
    return new Promise((resolve, reject) => {
      const proc = spawn(process.execPath, ['--import', tsxLoader, child, path], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(`child never got ready: ${err}`));
      }, 20_000);
      proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
      proc.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /ready (\d+)/.exec(out);
        if (m) {
          proc.kill('SIGKILL');
          proc.once('exit', (_code, signal) => {
            clearTimeout(timer);
            if (signal === 'SIGKILL') resolve(Number(m[1]));
            else reject(new Error(`child exited with ${String(signal)}`));
          });
        }
      });
    });
  }

  it('after a SIGKILL, the next open logs when the previous run started, its pid and the newest row', async () => {
    const path = tmp.file('audit.db');
    const startedBefore = Date.now();
    const pid = await runAndKill(path);
    // The 3 flushed rows are there; the 2 queued ones died with the process.
    expect(storedIds()).toHaveLength(3);

    const { lines, log } = logLines();
    const audit = openLog({ log });
    const warn = lines.filter((l) => l['msg'] === UNCLEAN_MSG);
    expect(warn).toHaveLength(1);
    expect(warn[0]!['level']).toBe('warn');
    expect(warn[0]!['pid']).toBe(pid);
    const newest = new Date(Date.UTC(2026, 10, 20, 10, 0, 2)).toISOString();
    expect(warn[0]!['newest_record_ts_start']).toBe(newest);
    expect(warn[0]!['flush_interval_ms']).toBe(60_000);
    expect(Date.parse(String(warn[0]!['running_since']))).toBeGreaterThanOrEqual(startedBefore - 1000);
    expect(audit.uncleanShutdown).toMatchObject({ pid, newestRecordTsStart: Date.parse(newest) });

    // This run owns the marker now; a clean close clears it and the next open is quiet.
    await audit.close();
    const again = logLines();
    const next = openLog({ log: again.log });
    expect(again.lines.filter((l) => l['msg'] === UNCLEAN_MSG)).toEqual([]);
    expect(next.uncleanShutdown).toBeUndefined();
  });

  it('a clean close leaves no marker; CLI commands opening the DB neither set nor clear it', async () => {
    const path = tmp.file('audit.db');
    const first = openLog();
    first.write(fullRecord());
    await first.close();
    expect(metaValue(path, 'serve_running')).toBeUndefined();

    // `report` / `db` / `budgets` open through openExistingDatabase: no marker.
    openExistingDatabase(path).close();
    expect(metaValue(path, 'serve_running')).toBeUndefined();

    const serving = openLog();
    expect(serving.uncleanShutdown).toBeUndefined();
    expect(metaValue(path, 'serve_running')).toContain(`"pid":${process.pid}`);
    // A report while serve runs must not clear serve's marker.
    openExistingDatabase(path).close();
    expect(metaValue(path, 'serve_running')).toContain(`"pid":${process.pid}`);
  });
});

describe('implausible numbers never reach INTEGER columns', () => {
  beforeEach(() => {
    writerMode = 'thread';
  });

  it('stores a non-safe-integer or negative token count as NULL with a note, and counts it', async () => {
    const health = recordingHealth();
    const audit = openLog({ health });
    const r = fullRecord({
      input_tokens: 1e30,
      output_tokens: 2 ** 53 + 1,
      cache_read_tokens: -5,
      reasoning_tokens: 1.5,
      images: Number.NaN,
      cache_write_tokens: 30,
      note: 'usage_missing',
    });
    audit.write(r);
    await audit.flush();
    const row = withReader(tmp.file('audit.db'), (db) =>
      db
        .prepare(
          `SELECT input_tokens, typeof(input_tokens) AS t_in, output_tokens, cache_read_tokens, reasoning_tokens,
                  images, cache_write_tokens, cost_nanos, note FROM requests WHERE id = ?`,
        )
        .get(r.id),
    );
    expect(row).toEqual({
      input_tokens: null,
      t_in: 'null',
      output_tokens: null,
      cache_read_tokens: null,
      reasoning_tokens: null,
      images: null,
      cache_write_tokens: 30,
      cost_nanos: 1_182_600,
      note: 'usage_missing; token_count_rejected:input_tokens,cache_read_tokens,output_tokens,reasoning_tokens,images',
    });
    expect(health.internal).toContain('audit');
  });

  it('stores NaN or Infinity in any other INTEGER column as NULL, through the writer thread', async () => {
    // Rows reach the thread by structured clone, which keeps NaN and Infinity (JSON made them null);
    // SQLite would store Infinity as a REAL in an INTEGER column.
    const audit = openLog();
    const r = fullRecord({ ttft_ms: Number.POSITIVE_INFINITY, http_status: Number.NaN });
    audit.write(r);
    await audit.flush();
    const row = withReader(tmp.file('audit.db'), (db) =>
      db
        .prepare(
          `SELECT ttft_ms, typeof(ttft_ms) AS t_ttft, http_status, typeof(http_status) AS t_status
           FROM requests WHERE id = ?`,
        )
        .get(r.id),
    );
    expect(row).toEqual({ ttft_ms: null, t_ttft: 'null', http_status: null, t_status: 'null' });
  });

  it('stores a non-safe-integer or negative cost as NULL with a note', () => {
    const row = recordToRow(fullRecord({ cost_nanos: 7.5e30, upstream_reported_cost_nanos: -1, note: null }));
    expect(rowValue(row, 'cost_nanos')).toBeNull();
    expect(rowValue(row, 'upstream_reported_cost_nanos')).toBeNull();
    expect(rowValue(row, 'note')).toBe('cost_rejected:cost_nanos,upstream_reported_cost_nanos');
  });

  it('leaves plausible values untouched', () => {
    const r = fullRecord();
    const row = recordToRow(r);
    expect(rowValue(row, 'input_tokens')).toBe(r.input_tokens);
    expect(rowValue(row, 'cost_nanos')).toBe(r.cost_nanos);
    expect(rowValue(row, 'note')).toBe('fixture');
  });
});
