import Database from 'better-sqlite3';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { beforeEach, describe, expect, it } from 'vitest';
import type { RequestRecord } from '../../src/record.js';
import { auditTestHooks, rowToRecord } from '../../src/sinks/audit/index.js';
import { DAY_MS, REQUEST_COLUMN_NAMES } from '../../src/sinks/audit/migrations.js';
import { fullRecord, nullRecord, recordingHealth, type TempDir } from './records.js';
import { eventually, logLines, storedIdsAt, useAuditLogs } from './harness.js';

let tmp: TempDir;
/** Every test runs against both writers: the thread (the default for a file) and the main thread. */
let writerMode: 'thread' | 'main' = 'thread';
const logs = useAuditLogs(() => ({ writer: writerMode, retentionDays: 90 }));
const openLog = logs.openLog;
beforeEach(() => {
  tmp = logs.tmp();
});

/** A second, independent connection: what another process (report, budgets at start) would see. */
function reader(): Database.Database {
  return openSqlite(tmp.file('audit.db'), { readonly: true });
}

const storedIds = (): string[] => storedIdsAt(tmp.file('audit.db'));

describe.each(['thread', 'main'] as const)('audit log writer (%s)', (mode) => {
  beforeEach(() => {
    writerMode = mode;
  });

  it('stores one row per record with every field round-tripping, nulls staying null', async () => {
    const audit = openLog();
    const full = fullRecord();
    const empty = nullRecord();
    audit.write(full);
    audit.write(empty);
    await audit.flush();

    const db = reader();
    const columns = (db.prepare('PRAGMA table_info(requests)').all() as { name: string }[]).map(
      (c) => c.name,
    );
    expect(columns.sort()).toEqual(Object.keys(full).sort());
    expect([...REQUEST_COLUMN_NAMES].sort()).toEqual(Object.keys(full).sort());

    const rows = db.prepare('SELECT * FROM requests ORDER BY id').all() as Record<string, unknown>[];
    expect(rows).toHaveLength(2);
    expect(rowToRecord(rows[0]!)).toEqual(full);
    expect(rowToRecord(rows[1]!)).toEqual(empty);

    // Storage classes: money and tokens are INTEGER, unknown is NULL (not 0), booleans are 0/1.
    const types = db
      .prepare(
        `SELECT typeof(cost_nanos) AS cost, typeof(input_tokens) AS input, typeof(ts_start) AS ts, stream
         FROM requests ORDER BY id`,
      )
      .all();
    expect(types).toEqual([
      { cost: 'integer', input: 'integer', ts: 'integer', stream: 1 },
      { cost: 'null', input: 'null', ts: 'integer', stream: 0 },
    ]);
    db.close();
  });

  it('enqueues without touching the DB on the caller stack, then writes in batches', async () => {
    const audit = openLog({ batchSize: 5 });
    const records = Array.from({ length: 12 }, () => fullRecord());
    for (const r of records) audit.write(r);
    // Nothing is written synchronously by write().
    expect(storedIds()).toEqual([]);
    if (mode === 'thread') {
      // Group commit: rows go to the writer thread as soon as it is free, in jobs of at most
      // batchSize rows; none waits for the (60 s) timer or a flush.
      await eventually(() => expect(storedIds()).toEqual(records.map((r) => r.id).sort()));
      return;
    }
    // On the main thread, two full batches are written on the next turns of the event loop; the
    // last 2 wait for the timer/flush.
    await eventually(() => expect(storedIds()).toHaveLength(10));
    await new Promise((r) => setTimeout(r, 50));
    expect(storedIds()).toHaveLength(10);
    await audit.flush();
    expect(storedIds()).toEqual(records.map((r) => r.id).sort());
  });

  it('group commit: rows that arrive within the linger go to the writer as one job, none waits past it', async () => {
    if (mode === 'main') return; // the main-thread writer keeps full batches (next test)
    const health = recordingHealth();
    // A long linger and a longer timer: only the linger can have sent the job.
    const audit = openLog({ lingerMs: 1_000, flushIntervalMs: 60_000, batchSize: 100, health });
    // The thread is up and idle first (its start would hold the first job back by itself).
    const first = fullRecord();
    audit.write(first);
    await audit.flush();
    expect(storedIds()).toEqual([first.id]);
    health.depth.length = 0;
    const records = Array.from({ length: 10 }, () => fullRecord());
    const started = Date.now();
    for (const r of records) {
      audit.write(r);
      await new Promise((res) => setTimeout(res, 5));
    }
    const elapsed = Date.now() - started;
    expect(elapsed).toBeLessThan(1_000); // else this machine cannot judge the linger
    // No job left before the linger ran out: the queue only grew.
    expect(health.depth).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(storedIds()).toEqual([first.id]);
    // And then all of them in one job, without a flush or the 60 s timer.
    const all = [first, ...records].map((r) => r.id).sort();
    // The rows are in the DB before the thread's answer reaches the main thread and empties the
    // queue: wait for both.
    await eventually(() => {
      expect(storedIds()).toEqual(all);
      expect(health.depth).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]);
    });
  });

  it('group commit waits 50 ms by default, never longer than flush_interval', () => {
    expect(auditTestHooks.lingerMs(openLog({ flushIntervalMs: 100 }))).toBe(50);
    expect(auditTestHooks.lingerMs(openLog({ flushIntervalMs: 20 }))).toBe(20);
  });

  it('flushes on the interval timer', async () => {
    const health = recordingHealth();
    const audit = openLog({ flushIntervalMs: 20, health });
    const r = fullRecord();
    audit.write(r);
    await eventually(() => {
      expect(storedIds()).toEqual([r.id]);
      expect(health.depth.at(-1)).toBe(0); // set when the thread's answer arrives, after the commit
    });
  });

  it('drops the OLDEST records when the queue is full and counts them', async () => {
    const health = recordingHealth();
    const { lines, log } = logLines();
    const audit = openLog({ queueSize: 3, health, log });
    const records = Array.from({ length: 5 }, () => fullRecord());
    for (const r of records) audit.write(r);
    expect(health.dropped).toBe(2);
    expect(health.depth.at(-1)).toBe(3);
    await audit.flush();
    expect(storedIds()).toEqual(records.slice(2).map((r) => r.id));
    // Logged once, not once per drop.
    expect(lines.filter((l) => l['msg'] === 'audit log dropped records')).toHaveLength(1);
  });

  it('survives a DB locked by another connection: write() never throws, rows are retried, drops counted', async () => {
    const health = recordingHealth();
    const { lines, log } = logLines();
    const audit = openLog({
      queueSize: 20,
      batchSize: 5,
      flushIntervalMs: 10,
      health,
      log,
      minBackoffMs: 5,
      maxBackoffMs: 20,
    });
    const locker = openSqlite(tmp.file('audit.db'));
    locker.exec('BEGIN EXCLUSIVE');
    const records = Array.from({ length: 50 }, () => fullRecord());
    for (const r of records) expect(() => audit.write(r)).not.toThrow();
    // No DB attempt happened on the caller's stack (it would have failed against the lock and counted).
    expect(health.internal).toEqual([]);
    // Let the writer fail a few times against the lock.
    await eventually(() =>
      expect(health.internal.filter((c) => c === 'audit').length).toBeGreaterThanOrEqual(3),
    );
    await audit.flush(); // must not throw while locked either
    expect(health.dropped).toBe(30);
    const failures = lines.filter(
      (l) => l['msg'] === 'audit log write failed; records stay queued and are retried',
    );
    expect(failures).toHaveLength(1);
    expect(failures[0]!['kind']).toBe('locked');
    expect(locker.prepare('SELECT COUNT(*) AS n FROM requests').get()).toEqual({ n: 0 });

    locker.exec('COMMIT');
    locker.close();
    // The queued rows (the newest 20) are retried and land.
    await eventually(() => {
      expect(storedIds()).toEqual(records.slice(30).map((r) => r.id));
      // Logged on the main thread when the thread's answer arrives, after the commit.
      expect(lines.some((l) => l['msg'] === 'audit log writes recovered')).toBe(true);
    });
  });

  it('survives a read-only DB (query_only) and writes once it is writable again', async () => {
    const health = recordingHealth();
    const { lines, log } = logLines();
    const audit = openLog({ health, log, flushIntervalMs: 10, minBackoffMs: 5, maxBackoffMs: 20 });
    await auditTestHooks.execOnWriter(audit, 'PRAGMA query_only = ON');
    const r = fullRecord();
    audit.write(r);
    await audit.flush();
    await eventually(() => expect(health.internal.length).toBeGreaterThanOrEqual(2));
    expect(storedIds()).toEqual([]);
    expect(lines.find((l) => l['msg']?.toString().startsWith('audit log write failed'))?.['kind']).toBe(
      'read_only',
    );
    await auditTestHooks.execOnWriter(audit, 'PRAGMA query_only = OFF');
    await eventually(() => expect(storedIds()).toEqual([r.id]));
    expect(health.dropped).toBe(0);
  });

  it('survives a full DB (max_page_count reached), keeps rows queued and writes them once there is room', async () => {
    const health = recordingHealth();
    const { lines, log } = logLines();
    const audit = openLog({ health, log, flushIntervalMs: 10, minBackoffMs: 5, maxBackoffMs: 20 });
    const pages = Number(audit.db.pragma('page_count', { simple: true }));
    await auditTestHooks.execOnWriter(audit, `PRAGMA max_page_count = ${pages}`);
    const records = Array.from({ length: 200 }, () => fullRecord({ error_message: 'e'.repeat(500) }));
    for (const r of records) audit.write(r);
    await audit.flush();
    expect(storedIds()).toEqual([]);
    expect(lines.find((l) => l['msg']?.toString().startsWith('audit log write failed'))?.['kind']).toBe(
      'full',
    );
    await auditTestHooks.execOnWriter(audit, 'PRAGMA max_page_count = 1073741823');
    await eventually(() => expect(storedIds()).toHaveLength(200));
    expect(health.dropped).toBe(0);
  });

  it('close() flushes everything queued', async () => {
    const audit = openLog({ batchSize: 1000 });
    const records = Array.from({ length: 7 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await audit.close();
    expect(storedIds()).toEqual(records.map((r) => r.id));
  });

  it('close() is bounded when the DB stays locked, and counts what it could not write', async () => {
    const health = recordingHealth();
    const audit = openLog({ health, closeTimeoutMs: 200, minBackoffMs: 5, maxBackoffMs: 20 });
    const locker = openSqlite(tmp.file('audit.db'));
    locker.exec('BEGIN EXCLUSIVE');
    for (let i = 0; i < 4; i++) audit.write(fullRecord());
    await audit.close();
    expect(health.dropped).toBe(4);
    locker.exec('ROLLBACK');
    locker.close();
    // Writes after close are dropped and counted, never thrown.
    expect(() => audit.write(fullRecord())).not.toThrow();
    expect(health.dropped).toBe(5);
  });

  it('drops only the bad row of a batch (duplicate id) and keeps the rest', async () => {
    const health = recordingHealth();
    const audit = openLog({ health });
    const a = fullRecord();
    const b = fullRecord();
    audit.write(a);
    audit.write(b);
    audit.write({ ...a, note: 'duplicate' });
    await audit.flush();
    expect(storedIds()).toEqual([a.id, b.id].sort());
    expect(health.dropped).toBe(1);
  });

  it('keeps the generated key secret across reopen; key_salt overrides it', async () => {
    const first = openLog();
    const secret = first.keySecret;
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    await first.close();
    const second = openLog();
    expect(second.keySecret).toBe(secret);
    await second.close();
    const salted = openLog({ keySalt: 'configured-salt-0123456789' });
    expect(salted.keySecret).toBe('configured-salt-0123456789');
    await salted.close();
    // The DB's own secret is untouched by a configured salt.
    expect(openLog().keySecret).toBe(secret);
  });

  it('applies retention at start', async () => {
    const now = Date.UTC(2026, 10, 23);
    const seed = openLog({ now: () => now, retentionDays: 0 });
    const old = fullRecord({ ts_start: now - 91 * DAY_MS, ts_end: now - 91 * DAY_MS + 5 });
    const recent = fullRecord({ ts_start: now - 89 * DAY_MS, ts_end: now - 89 * DAY_MS + 5 });
    seed.write(old);
    seed.write(recent);
    await seed.close();
    expect(storedIds()).toEqual([old.id, recent.id].sort());
    openLog({ now: () => now, retentionDays: 90 });
    expect(storedIds()).toEqual([recent.id]);
  });

  it('captures bodies only when enabled, redacted and truncated', async () => {
    const off = openLog();
    off.capture('id-off', Buffer.from('hello'));
    await off.close();

    const audit = openLog({ captureBodies: true, captureMaxBytes: 120, redactPatterns: ['internal-\\d+'] });
    const request = Buffer.from(
      JSON.stringify({
        api_key: 'sk-live0123456789abcdef',
        contact: 'ana@example.com',
        ref: 'internal-4711',
      }),
    );
    const response = Buffer.from('Authorization: Bearer abc.DEF-123_xyz ' + 'x'.repeat(500));
    audit.capture('id-on', request, response);
    await audit.flush();
    const db = reader();
    const rows = db.prepare('SELECT * FROM bodies ORDER BY id').all() as Record<string, unknown>[];
    db.close();
    expect(rows.map((r) => r['id'])).toEqual(['id-on']);
    const row = rows[0]!;
    const stored = `${String(row['request'])} ${String(row['response'])}`;
    for (const secret of ['sk-live0123456789abcdef', 'ana@example.com', 'internal-4711', 'abc.DEF-123_xyz']) {
      expect(stored).not.toContain(secret);
    }
    expect(String(row['request'])).toContain('[REDACTED_KEY]');
    expect(String(row['request'])).toContain('[REDACTED_EMAIL]');
    expect(String(row['response'])).toMatch(/^Authorization: Bearer \[REDACTED\] x+$/);
    expect(Buffer.byteLength(String(row['response']))).toBe(120);
    expect(row['truncated']).toBe(1);
    expect(row['request_bytes']).toBe(request.length);
    expect(row['response_bytes']).toBe(response.length);
  });
});

// Keeps the fixture type honest: a RequestRecord with a missing field would not compile here.
export const _typecheck: RequestRecord = fullRecord();
