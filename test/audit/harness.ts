/**
 * Shared setup of the audit-log test files (kept apart from records.ts, which child processes
 * import outside the test runner).
 */
import { afterEach, beforeEach } from 'vitest';
import { SILENT_LOGGER } from '../../src/log.js';
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
