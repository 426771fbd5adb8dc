/**
 * The few error classes tokenmeter raises, each with a stable code. Messages say what to do next.
 */

export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'CONFIG_NOT_FOUND'
  | 'PRICES_INVALID'
  | 'USAGE'
  | 'DB_SCHEMA_TOO_NEW'
  | 'DB_ERROR'
  | 'UPSTREAM_UNREACHABLE';

export class TokenmeterError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** Process exit code for CLI commands. */
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'TokenmeterError';
  }
}

/** A problem at a known place in a file: printed as `file:line:col: field: message`. */
export interface SourceProblem {
  file: string;
  line?: number;
  column?: number;
  field?: string;
  message: string;
}

export function formatProblem(p: SourceProblem): string {
  const where = [p.file, p.line, p.column].filter((x) => x !== undefined).join(':');
  return `${where}: ${p.field ? `${p.field}: ` : ''}${p.message}`;
}

/** Invalid configuration or price file. Carries every problem found, not only the first. */
export class ConfigError extends TokenmeterError {
  constructor(
    readonly problems: SourceProblem[],
    code: ErrorCode = 'CONFIG_INVALID',
  ) {
    super(code, problems.map(formatProblem).join('\n'), code === 'USAGE' ? 2 : 1);
    this.name = 'ConfigError';
  }
}

/** Bad command-line usage: exit 2 with a one-line reason. */
export class UsageError extends TokenmeterError {
  constructor(message: string) {
    super('USAGE', message, 2);
    this.name = 'UsageError';
  }
}
