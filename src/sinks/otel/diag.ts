/**
 * OTel's diagnostics into tokenmeter's JSON log. The SDK reports every background failure (a
 * failed span, metric or log export, whatever the protocol) through its global error handler,
 * which writes to `diag.error`; that is the one place all three signals' failures meet, so each
 * `diag.error` is counted as an OpenTelemetry failure and the first one is logged.
 *
 * OTEL_LOG_LEVEL (none, error, warn, info, debug, verbose, all; default warn) sets how much of the
 * rest is logged; counting does not depend on it.
 */
import { DiagLogLevel, diag, type DiagLogger } from '@opentelemetry/api';
import { diagLogLevelFromString } from '@opentelemetry/core';
import type { Logger } from '../../log.js';

const MAX_MESSAGE = 300;

/** A diag call's arguments as one bounded line (also used by the span export thread). */
export function diagText(args: unknown[]): string {
  return args
    .map((a) => {
      if (typeof a === 'string') return a;
      if (a instanceof Error) return a.message;
      try {
        return JSON.stringify(a) ?? String(a);
      } catch {
        return String(a);
      }
    })
    .join(' ')
    .slice(0, MAX_MESSAGE);
}

/** OTEL_LOG_LEVEL as a diag level: warn when unset or not a level name. */
export function diagLevel(value: string | undefined): DiagLogLevel {
  return diagLogLevelFromString(value) ?? DiagLogLevel.WARN;
}

/**
 * Makes `logger` the global diag logger at `level` (the main thread's and the span export
 * thread's). Errors always pass the API's filter: they are counted whatever the level.
 */
export function setDiagLogger(logger: DiagLogger, level: DiagLogLevel): void {
  diag.setLogger(logger, { logLevel: Math.max(level, DiagLogLevel.ERROR), suppressOverrideMessage: true });
}

/**
 * Installs the diag logger; returns the failure reporter it uses, for failures that come back as a
 * rejected promise instead (forceFlush, shutdown).
 */
export function installDiagLogger(opts: {
  env: NodeJS.ProcessEnv;
  log: Logger;
  onError: () => void;
}): (...args: unknown[]) => void {
  const level = diagLevel(opts.env.OTEL_LOG_LEVEL);
  const { log } = opts;
  const failed = (...args: unknown[]): void => {
    opts.onError();
    if (level >= DiagLogLevel.ERROR) {
      log.once('otel:error', 'warn', 'OpenTelemetry export failed (or SDK error); traffic is unaffected', {
        error: diagText(args),
      });
    }
  };
  const logger: DiagLogger = {
    error: failed,
    warn: (...args: unknown[]) => {
      const message = diagText(args);
      // Our own `OTEL_*_EXPORTER=none` for signals left off (env.ts) is not worth a warning.
      if (level < DiagLogLevel.WARN || message.includes('contains "none"')) return;
      log.once(`otel:warn:${message.slice(0, 80)}`, 'warn', 'OpenTelemetry SDK warning', { message });
    },
    info: (...args: unknown[]) => {
      if (level >= DiagLogLevel.INFO) log.info('OpenTelemetry SDK', { message: diagText(args) });
    },
    debug: (...args: unknown[]) => {
      if (level >= DiagLogLevel.DEBUG) log.debug('OpenTelemetry SDK', { message: diagText(args) });
    },
    verbose: (...args: unknown[]) => {
      if (level >= DiagLogLevel.VERBOSE) log.debug('OpenTelemetry SDK', { message: diagText(args) });
    },
  };
  // The rest is filtered above: the API's filter lets every error through.
  setDiagLogger(logger, level);
  return failed;
}
