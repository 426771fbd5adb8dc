/**
 * Shared setup of the audit-log test files (kept apart from records.ts, which child processes
 * import outside the test runner).
 */
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { afterEach, beforeEach, vi } from 'vitest';
import { createLogger, SILENT_LOGGER } from '../../src/log.js';
import { openAuditLog, type AuditLogOptions, type AuditSink } from '../../src/sinks/audit/index.js';
import { recordingHealth, tempDir, type TempDir } from './records.js';

/**
 * A temp dir per test and an `openLog()` whose sinks are closed after each test (call at the top of
 * a test file). `defaults` is read at every open, so a `describe.each` can switch the writer mode.
 */
export function useAuditLogs(defaults: () => Partial<AuditLogOptions> = () => ({})): {
  tmp: () => TempDir;
  openLog: (overrides?: Partial<AuditLogOptions>) => AuditSink;
} {
  let tmp: TempDir | undefined;
  const open: AuditSink[] = [];
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(async () => {
    for (const a of open.splice(0)) await a.close();
    tmp?.cleanup();
  });
  const current = (): TempDir => {
    if (!tmp) throw new Error('useAuditLogs: no temp dir outside a test');
    return tmp;
  };
  return {
    tmp: current,
    openLog(overrides = {}) {
      const sink = openAuditLog({
        path: current().file('audit.db'),
        queueSize: 1000,
        batchSize: 100,
        // Long interval: tests flush explicitly unless they test the timer.
        flushIntervalMs: 60_000,
        retentionDays: 0,
        captureBodies: false,
        captureMaxBytes: 1024,
        redactPatterns: [],
        health: recordingHealth(),
        log: SILENT_LOGGER,
        ...defaults(),
        ...overrides,
      });
      open.push(sink);
      return sink;
    },
  };
}

/** The ids stored in the audit DB at `path`, sorted, read through a separate read-only connection. */
export function storedIdsAt(path: string): string[] {
  const db = openSqlite(path, { readonly: true });
  try {
    return (db.prepare('SELECT id FROM requests ORDER BY id').all() as { id: string }[]).map((r) => r.id);
  } finally {
    db.close();
  }
}

/** A debug logger whose JSON lines are kept, parsed, for assertions. */
export function logLines(): { lines: Array<Record<string, unknown>>; log: ReturnType<typeof createLogger> } {
  const lines: Array<Record<string, unknown>> = [];
  return { lines, log: createLogger('debug', (l) => lines.push(JSON.parse(l) as Record<string, unknown>)) };
}

/**
 * Waits for an assertion to hold, up to 10 s: what the audit writer does happens off the caller's
 * stack (a thread, timers, retries with back-off), and on a loaded 2-core CI machine it can take
 * longer than vi.waitFor's default second. It returns as soon as the assertion holds.
 */
export const eventually = <T>(assertion: () => T | Promise<T>): Promise<T> =>
  vi.waitFor(assertion, { timeout: 10_000, interval: 10 });
