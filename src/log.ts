/**
 * JSON-lines logger on stderr (DESIGN.md §2). Never pass secrets, headers or bodies to it: log
 * fields are for ids, names, counts and messages. `once` logs a given key only the first time, so
 * a failing sink or an unpriced model does not flood the log.
 */
import type { LogLevel } from './config/types.js';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** Log at `level` only the first time `key` is seen in this process. */
  once(key: string, level: Exclude<LogLevel, 'silent'>, msg: string, fields?: LogFields): void;
}

export function createLogger(
  level: LogLevel = 'info',
  write: (line: string) => void = (l) => process.stderr.write(l),
): Logger {
  const threshold = ORDER[level];
  const seen = new Set<string>();
  const emit = (lvl: Exclude<LogLevel, 'silent'>, msg: string, fields?: LogFields): void => {
    if (ORDER[lvl] < threshold) return;
    try {
      write(JSON.stringify({ time: new Date().toISOString(), level: lvl, msg, ...fields }) + '\n');
    } catch {
      // Logging must never break traffic (e.g. stderr closed).
    }
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    once: (key, lvl, m, f) => {
      if (seen.has(key)) return;
      seen.add(key);
      emit(lvl, m, f);
    },
  };
}

/** A logger that drops everything (unit tests). */
export const SILENT_LOGGER: Logger = createLogger('silent');
