/**
 * Issue 11: the writer thread. The INSERTs run off the main thread; a batch leaves the queue only
 * when its commit is confirmed; a thread that dies is restarted once, then the main thread writes;
 * nothing queued is lost on the way. Real SQLite files in a temp dir, real worker threads.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { getPriority } from 'node:os';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { beforeEach, describe, expect, it } from 'vitest';
import { AuditWriter } from '../../src/sinks/audit/audit-writer.js';
import { openWriterConnection } from '../../src/sinks/audit/connection.js';
import { auditTestHooks, recordToRow, rowValue, type AuditSink } from '../../src/sinks/audit/index.js';
import { LOW_PRIORITY_NICE } from '../../src/thread-priority.js';
import { threadNiceVisible, threadsAtNice } from '../thread-nice.js';
import { fullRecord, recordingHealth, type TempDir } from './records.js';
import { eventually, logLines, storedIdsAt, useAuditLogs } from './harness.js';

let tmp: TempDir;
const logs = useAuditLogs();
const openLog = logs.openLog;
beforeEach(() => {
  tmp = logs.tmp();
});

const storedIds = (path = tmp.file('audit.db')): string[] => storedIdsAt(path);

const ids = (records: { id: string }[]): string[] => records.map((r) => r.id).sort();

describe('where the audit log writes', () => {
  it('a file is written by the thread; :memory: (one connection) on the main thread', async () => {
    expect(auditTestHooks.writerWhere(openLog())).toBe('thread');
    expect(auditTestHooks.writerWhere(openLog({ path: tmp.file('main.db'), writer: 'main' }))).toBe('main');
    const memory = openLog({ path: ':memory:' });
    expect(auditTestHooks.writerWhere(memory)).toBe('main');
    const r = fullRecord();
    memory.write(r);
    await memory.flush();
    expect(memory.db.prepare('SELECT id FROM requests').all()).toEqual([{ id: r.id }]);
  });

  it('the INSERT does not run on the main thread: a locked DB costs the event loop nothing', async () => {
    const threaded = openLog();
    const inline = openLog({ path: tmp.file('inline.db'), writer: 'main' });
    await threaded.flush(); // the thread is up
    const lockers = [tmp.file('audit.db'), tmp.file('inline.db')].map((p) => {
      const db = openSqlite(p);
      db.exec('BEGIN EXCLUSIVE');
      return db;
    });
    try {
      const blockedMs = async (audit: AuditSink): Promise<number> => {
        audit.write(fullRecord());
        const t0 = performance.now();
        const done = audit.flush();
        const ms = performance.now() - t0;
        await done;
        return ms;
      };
      // Each attempt waits out the writer's 50 ms busy timeout: on the thread, not here.
      expect(await blockedMs(threaded)).toBeLessThan(25);
      expect(await blockedMs(inline)).toBeGreaterThanOrEqual(40);
      expect(threaded.healthy()).toBe(true);
    } finally {
      for (const l of lockers) {
        l.exec('ROLLBACK');
        l.close();
      }
    }
  });

  it('the main thread reads through a read-only connection that sees every confirmed commit', async () => {
    const audit = openLog();
    const records = Array.from({ length: 250 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await audit.flush();
    expect(audit.db.prepare('SELECT COUNT(*) AS n FROM requests').get()).toEqual({ n: 250 });
    expect(() => audit.db.prepare('DELETE FROM requests').run()).toThrow(/readonly|query_only/i);
  });
});

describe('one batch in flight; it leaves the queue only when committed', () => {
  it('rows evicted from a full queue while their batch is in flight are not dropped when it commits', async () => {
    const health = recordingHealth();
    const audit = openLog({ queueSize: 5, batchSize: 5, health });
    await audit.flush();
    const first = Array.from({ length: 5 }, () => fullRecord());
    for (const r of first) audit.write(r);
    const flushed = audit.flush(); // the batch of 5 is now in flight on the thread
    const more = Array.from({ length: 3 }, () => fullRecord());
    for (const r of more) audit.write(r); // evicts 3 rows of that batch from the queue
    await flushed;
    await audit.flush();
    expect(storedIds()).toEqual(ids([...first, ...more]));
    expect(health.dropped).toBe(0);
  });

  it('rows evicted while their batch is in flight are dropped (exactly those) when it fails', async () => {
    const health = recordingHealth();
    const audit = openLog({ queueSize: 5, batchSize: 5, health, minBackoffMs: 1, maxBackoffMs: 5 });
    await audit.flush();
    const locker = openSqlite(tmp.file('audit.db'));
    locker.exec('BEGIN EXCLUSIVE');
    const first = Array.from({ length: 5 }, () => fullRecord());
    for (const r of first) audit.write(r);
    const flushed = audit.flush();
    const more = Array.from({ length: 3 }, () => fullRecord());
    for (const r of more) audit.write(r);
    await flushed; // failed against the lock
    expect(health.dropped).toBe(3);
    locker.exec('ROLLBACK');
    locker.close();
    await audit.flush();
    expect(storedIds()).toEqual(ids([...first.slice(3), ...more]));
    expect(health.dropped).toBe(3);
  });
});

describe('a writer thread that dies', () => {
  it('a re-sent batch (its thread died after the commit, before the answer) is not counted as bad rows', () => {
    const writer = new AuditWriter(
      { path: tmp.file('audit.db'), busyTimeoutMs: 50, captureMaxBytes: 0, redactPatterns: [] },
      openWriterConnection(tmp.file('audit.db'), 50),
    );
    const rows = Array.from({ length: 3 }, () => recordToRow(fullRecord()));
    const job = { rows, bodies: [], resent: false };
    expect(writer.run(job).records).toEqual({ status: 'written', bad: [], alreadyStored: 0 });
    const fresh = recordToRow(fullRecord());
    expect(writer.run({ ...job, rows: [...rows, fresh], resent: true }).records).toEqual({
      status: 'written',
      bad: [],
      alreadyStored: 3,
    });
    // Not re-sent: the same duplicates are bad rows (dropped and counted by the main thread).
    const again = writer.run(job).records;
    expect(again.status === 'written' && again.bad.map((b) => b.id)).toEqual(
      rows.map((r) => rowValue(r, 'id')),
    );
    expect(storedIds()).toEqual(
      [...rows.map((r) => String(rowValue(r, 'id'))), String(rowValue(fresh, 'id'))].sort(),
    );
    writer.close();
  });

  it('is restarted once: the batch in flight and everything queued land exactly once', async () => {
    const health = recordingHealth();
    const { lines, log } = logLines();
    const audit = openLog({ health, log, batchSize: 50 });
    await audit.flush();
    const firstThread = auditTestHooks.writerThread(audit)!;
    const records = Array.from({ length: 400 }, () => fullRecord());
    for (const r of records.slice(0, 200)) audit.write(r);
    const flushed = audit.flush();
    firstThread.crashForTests(); // lands after the first batch's job, before the rest
    for (const r of records.slice(200)) audit.write(r);
    await flushed;
    await audit.flush();
    expect(storedIds()).toEqual(ids(records));
    expect(health.dropped).toBe(0);
    expect(auditTestHooks.writerWhere(audit)).toBe('thread');
    expect(auditTestHooks.writerThread(audit)).not.toBe(firstThread);
    const restarted = lines.filter((l) => l['msg'] === 'audit writer thread stopped; started a new one');
    expect(restarted).toHaveLength(1);
    expect(restarted[0]!['level']).toBe('error');
    expect(health.internal).toContain('audit');
  });

  it('dying again makes the main thread write (logged once); the queue survives, the marker is cleared', async () => {
    const health = recordingHealth();
    const { lines, log } = logLines();
    const audit = openLog({ health, log });
    await audit.flush();
    for (let crash = 0; crash < 2; crash++) {
      const thread = auditTestHooks.writerThread(audit)!;
      const exited = new Promise((r) => thread.worker.once('exit', r));
      thread.crashForTests();
      await exited;
      await eventually(() => expect(auditTestHooks.writerThread(audit)).not.toBe(thread));
    }
    expect(auditTestHooks.writerWhere(audit)).toBe('main');
    const records = Array.from({ length: 30 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await audit.flush();
    expect(storedIds()).toEqual(ids(records));
    expect(
      lines.filter(
        (l) => l['msg'] === 'audit writer thread could not be started; writing on the main thread',
      ),
    ).toHaveLength(1);
    await audit.close();
    const db = openSqlite(tmp.file('audit.db'), { readonly: true });
    expect(db.prepare(`SELECT value FROM meta WHERE key = 'serve_running'`).get()).toBeUndefined();
    db.close();
    expect(health.dropped).toBe(0);
  });

  it('a thread that cannot start at all: the main thread writes from the first record', async () => {
    const broken = tmp.file('broken.mjs');
    writeFileSync(broken, "throw new Error('no writer here');\n");
    const { lines, log } = logLines();
    const audit = openLog({ log, writerThreadScript: new URL(`file://${broken}`) });
    const records = Array.from({ length: 10 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await audit.flush();
    expect(storedIds()).toEqual(ids(records));
    expect(auditTestHooks.writerWhere(audit)).toBe('main');
    const fallback = lines.filter(
      (l) => l['msg'] === 'audit writer thread could not be started; writing on the main thread',
    );
    expect(fallback).toHaveLength(1);
    expect(String(fallback[0]!['error'])).toContain('no writer here');
  });
});

const serveMarker = (path: string): unknown => {
  const db = openSqlite(path, { readonly: true });
  try {
    return db.prepare(`SELECT value FROM meta WHERE key = 'serve_running'`).get();
  } finally {
    db.close();
  }
};

if (!threadNiceVisible)
  console.log('writer thread priority tests skipped: they need Linux /proc/thread-self');

describe.skipIf(!threadNiceVisible)('writer thread priority (Linux)', () => {
  it('the writer thread runs at the lowest CPU priority; the event loop thread keeps its own', async () => {
    const before = threadsAtNice(LOW_PRIORITY_NICE);
    const audit = openLog();
    await eventually(() => expect(auditTestHooks.writerThread(audit)!.lowPriority).toBe(true));
    expect(threadsAtNice(LOW_PRIORITY_NICE)).toBe(before + 1);
    expect(getPriority()).toBe(0);
    const records = Array.from({ length: 20 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await audit.close();
    expect(storedIds()).toEqual(ids(records));
    await eventually(() => expect(threadsAtNice(LOW_PRIORITY_NICE)).toBe(before));
  });

  it.each([
    ['idle', false],
    ['with a job in flight', true],
  ])(
    'a writer fallen half a queue behind (%s) is replaced by one at normal priority; nothing lost, marker kept',
    async (_, busy) => {
      const before = threadsAtNice(LOW_PRIORITY_NICE);
      const health = recordingHealth();
      const { lines, log } = logLines();
      const path = tmp.file('audit.db');
      const audit = openLog({ health, log, queueSize: 40, batchSize: 5 });
      const first = auditTestHooks.writerThread(audit)!;
      await eventually(() => expect(first.lowPriority).toBe(true));
      const records = Array.from({ length: 30 }, () => fullRecord());
      let flushed: Promise<void> | undefined;
      if (busy) {
        for (const r of records.slice(0, 5)) audit.write(r);
        flushed = audit.flush(); // its job is in flight while the queue grows
      }
      for (const r of records.slice(busy ? 5 : 0)) audit.write(r); // 20 queued: half of 40
      await flushed;
      await audit.flush();
      expect(storedIds()).toEqual(ids(records));
      expect(health.dropped).toBe(0);
      const second = auditTestHooks.writerThread(audit)!;
      expect(second).not.toBe(first);
      await eventually(() => expect(second.lowPriority).toBe(false));
      await eventually(() => expect(threadsAtNice(LOW_PRIORITY_NICE)).toBe(before));
      const warned = lines.filter(
        (l) =>
          l['msg'] === 'audit writer fell behind at low CPU priority; it runs at normal priority from now on',
      );
      expect(warned).toHaveLength(1);
      expect(warned[0]!['level']).toBe('warn');
      // Not a crash: nothing counted as an internal error, and the serve marker stays set.
      expect(health.internal).not.toContain('audit');
      expect(serveMarker(path)).toBeDefined();
      // It stays at normal priority: another backlog replaces nothing.
      for (const r of Array.from({ length: 25 }, () => fullRecord())) audit.write(r);
      await audit.flush();
      expect(auditTestHooks.writerThread(audit)).toBe(second);
      await audit.close();
      expect(serveMarker(path)).toBeUndefined();
      expect(storedIds()).toHaveLength(55);
    },
  );
});

describe.skipIf(!threadNiceVisible)('a starved low-priority writer (Linux)', () => {
  it('a job in flight past the starvation limit: the next jobs go to a thread at normal priority', async () => {
    const before = threadsAtNice(LOW_PRIORITY_NICE);
    const { lines, log } = logLines();
    const health = recordingHealth();
    const path = tmp.file('audit.db');
    const audit = openLog({
      health,
      log,
      flushIntervalMs: 5,
      starvedAfterMs: 20,
      minBackoffMs: 1,
      maxBackoffMs: 5,
    });
    const first = auditTestHooks.writerThread(audit)!;
    await eventually(() => expect(first.lowPriority).toBe(true));
    // Another connection holds the write lock: each job waits out the writer's 50 ms busy timeout,
    // longer than the 20 ms the test sets as starvation.
    const locker = openSqlite(path);
    locker.exec('BEGIN EXCLUSIVE');
    const records = Array.from({ length: 5 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await eventually(() => expect(auditTestHooks.writerThread(audit)).not.toBe(first));
    locker.exec('ROLLBACK');
    locker.close();
    await audit.flush();
    expect(storedIds()).toEqual(ids(records));
    expect(health.dropped).toBe(0);
    await eventually(() => expect(auditTestHooks.writerThread(audit)!.lowPriority).toBe(false));
    const warned = lines.filter((l) => String(l['msg']).startsWith('audit writer fell behind'));
    expect(warned.map((l) => l['reason'])).toEqual(['job_slow']);
    await eventually(() => expect(threadsAtNice(LOW_PRIORITY_NICE)).toBe(before));
  });

  it('close() drains what is queued through a thread at normal priority, without a warning', async () => {
    const before = threadsAtNice(LOW_PRIORITY_NICE);
    const { lines, log } = logLines();
    const path = tmp.file('audit.db');
    const audit = openLog({ log });
    const first = auditTestHooks.writerThread(audit)!;
    await eventually(() => expect(first.lowPriority).toBe(true));
    const records = Array.from({ length: 30 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await audit.close();
    expect(storedIds()).toEqual(ids(records));
    const drained = auditTestHooks.writerThread(audit)!;
    expect(drained).not.toBe(first);
    expect(drained.lowPriority).toBe(false);
    expect(lines.filter((l) => String(l['msg']).startsWith('audit writer fell behind'))).toEqual([]);
    expect(serveMarker(path)).toBeUndefined();
    expect(threadsAtNice(LOW_PRIORITY_NICE)).toBe(before);
  });
});

describe('close() with the writer thread', () => {
  it('drains everything queued, clears the marker, and drops (counted) what comes after', async () => {
    const health = recordingHealth();
    const audit = openLog({ health, batchSize: 10 });
    const records = Array.from({ length: 95 }, () => fullRecord());
    for (const r of records) audit.write(r);
    await audit.close();
    expect(storedIds()).toEqual(ids(records));
    expect(health.dropped).toBe(0);
    expect(health.depth.at(-1)).toBe(0);
    audit.write(fullRecord());
    expect(health.dropped).toBe(1);
    const db = openSqlite(tmp.file('audit.db'), { readonly: true });
    expect(db.prepare(`SELECT value FROM meta WHERE key = 'serve_running'`).get()).toBeUndefined();
    db.close();
  });
});

describe('the compiled package (dist/) starts the .js writer thread', () => {
  it('builds the audit sink with tsc into a scratch dir and writes through its thread', () => {
    const out = tmp.file('dist');
    mkdirSync(out);
    // Inside node_modules so the compiled files resolve better-sqlite3 like the package does.
    const root = new URL('../../', import.meta.url).pathname;
    const scratch = `${root}node_modules/.cache/tokenmeter-audit-dist-${process.pid}`;
    execFileSync(
      process.execPath,
      [
        `${root}node_modules/typescript/bin/tsc`,
        ...['--outDir', scratch, '--rootDir', `${root}src`, '--module', 'NodeNext'],
        ...['--moduleResolution', 'NodeNext', '--target', 'ES2022', '--skipLibCheck', '--types', 'node'],
        `${root}src/sinks/audit/index.ts`,
        `${root}src/sinks/audit/writer-thread.ts`,
      ],
      { stdio: 'pipe', timeout: 60_000 },
    );
    writeFileSync(`${scratch}/package.json`, '{"type":"module"}\n');
    const script = `
      import { openAuditLog, auditTestHooks } from '${scratch}/sinks/audit/index.js';
      const audit = openAuditLog({ path: process.argv[1], queueSize: 100, batchSize: 10, flushIntervalMs: 60000,
        retentionDays: 0, captureBodies: false, captureMaxBytes: 0, redactPatterns: [],
        health: { internalError() {}, auditQueueDepth() {}, auditDropped() {} },
        log: { debug() {}, info() {}, warn() {}, error() {}, once() {} } });
      for (let i = 0; i < 25; i++) audit.write({ ...JSON.parse(process.argv[2]), id: 'dist-' + String(i).padStart(3, '0') });
      await audit.flush();
      const where = auditTestHooks.writerWhere(audit);
      const n = audit.db.prepare('SELECT COUNT(*) AS n FROM requests').get().n;
      await audit.close();
      process.stdout.write(JSON.stringify({ where, n }));
    `;
    try {
      const stdout = execFileSync(
        process.execPath,
        ['--input-type=module', '-e', script, tmp.file('dist.db'), JSON.stringify(fullRecord())],
        { encoding: 'utf8', timeout: 30_000 },
      );
      expect(JSON.parse(stdout)).toEqual({ where: 'thread', n: 25 });
      expect(storedIds(tmp.file('dist.db'))).toHaveLength(25);
    } finally {
      execFileSync('rm', ['-rf', scratch]);
    }
  });
});
