/**
 * `tokenmeter serve` (DESIGN.md §2): load settings, build the runtime (meter, sinks, budgets),
 * listen, and on SIGTERM/SIGINT stop accepting, drain in-flight streams for at most
 * limits.shutdownGraceMs, then close the runtime (which flushes the audit queue).
 */
import type { Command } from 'commander';
import { loadSettings, type CliFlags } from '../config/load.js';
import type { Settings } from '../config/types.js';
import { createConsole } from '../console/index.js';
import { TokenmeterError, UsageError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { createProxyServer } from '../proxy/server.js';
import { buildRuntime } from '../runtime.js';

export interface RunningServer {
  settings: Settings;
  host: string;
  port: number;
  /** Graceful stop: drain (bounded), then close the runtime. Idempotent. */
  stop(): Promise<void>;
}

const NO_UPSTREAM =
  'no upstream: pass --upstream URL (e.g. --upstream https://api.openai.com/v1), set TOKENMETER_UPSTREAM, or define upstreams: in tokenmeter.yaml';

export async function startServe(
  flags: CliFlags,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  logOverride?: Logger,
): Promise<RunningServer> {
  const settings = loadSettings(flags, env, cwd);
  if (settings.upstreams.length === 0) throw new UsageError(NO_UPSTREAM);
  const log = logOverride ?? createLogger(settings.logLevel);
  // `env` reaches the sinks too: the OpenTelemetry sink reads its OTEL_* settings from it.
  const runtime = await buildRuntime(settings, log, env);
  // The web console under /-/ (docs/console.md); `console: false` / --no-console leaves it 404.
  const consoleApp =
    settings.console === false
      ? undefined
      : createConsole({
          settings,
          priceBook: runtime.priceBook,
          budgets: runtime.budgets,
          shipper: runtime.shipper,
          log,
        });
  const proxy = createProxyServer({
    settings,
    meter: runtime.meter,
    log,
    health: runtime.metricsSink,
    admin: { metrics: runtime.metrics, ready: runtime.ready, console: consoleApp?.handler },
  });
  runtime.metricsSink.setInflightSource(() => proxy.inflightByUpstream());
  warnIfExposed(settings, log);
  let addr;
  try {
    addr = await proxy.listen();
  } catch (err) {
    consoleApp?.close();
    await runtime.close();
    const e = err as NodeJS.ErrnoException;
    throw new TokenmeterError(
      'USAGE',
      `cannot listen on ${settings.host}:${settings.port} (${e.code ?? e.message})`,
      1,
    );
  }
  log.info('listening', {
    host: addr.address,
    port: addr.port,
    upstreams: settings.upstreams.map((u) => `${u.name}=${u.url.origin}`).join(','),
    config: settings.configFile,
    db: settings.db ?? 'disabled',
    console: consoleApp
      ? `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}/-/ui/`
      : 'disabled',
  });
  let stopping: Promise<void> | undefined;
  return {
    settings,
    host: addr.address,
    port: addr.port,
    stop() {
      stopping ??= (async () => {
        log.info('shutting down', { inflight: proxy.inflight(), grace_ms: settings.limits.shutdownGraceMs });
        // close() returns once every exchange's record was handed to the sinks (or the grace ran
        // out), so the audit queue flushed by runtime.close() holds every record.
        await proxy.close(settings.limits.shutdownGraceMs);
        consoleApp?.close();
        await runtime.close();
        log.info('stopped', {});
      })();
      return stopping;
    },
  };
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\./.test(host);
}

/** §12: bound beyond loopback with no auth_token, the admin surface is open to the network. */
export function warnIfExposed(settings: Pick<Settings, 'host' | 'authToken'>, log: Logger): boolean {
  if (isLoopback(settings.host) || settings.authToken !== undefined) return false;
  log.warn(
    'listening beyond loopback without auth_token: /metrics, /readyz and the console are open to the network',
    {
      host: settings.host,
      fix: 'set auth_token in tokenmeter.yaml (clients then send Authorization: Bearer <token> for /metrics)',
    },
  );
  return true;
}

interface ServeOptions {
  config?: string;
  upstream?: string;
  host?: string;
  port?: string;
  db?: string | false;
  prices?: string[];
  presets?: boolean;
  logLevel?: string;
  console?: boolean;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('run the metering proxy (point OPENAI_BASE_URL / ANTHROPIC_BASE_URL at it)')
    .option('--config <file>', 'config file (env TOKENMETER_CONFIG; default ./tokenmeter.yaml if present)')
    .option('--upstream <url>', 'upstream gateway URL, defines upstream "default" (env TOKENMETER_UPSTREAM)')
    .option('--host <host>', 'listen address (env TOKENMETER_HOST; default 127.0.0.1)')
    .option('--port <port>', 'listen port, 0 = any free port (env TOKENMETER_PORT; default 4000)')
    .option('--db <path>', 'SQLite audit log path or :memory: (env TOKENMETER_DB; default ./tokenmeter.db)')
    .option('--no-db', 'disable the SQLite audit log')
    .option(
      '--prices <file>',
      'price table file, repeatable; overlays the presets (env TOKENMETER_PRICES, comma list)',
      collect,
    )
    .option('--no-presets', 'do not load the bundled price presets')
    .option('--no-console', 'disable the web console and its JSON API under /-/ (config console: false)')
    .option(
      '--log-level <level>',
      'debug, info, warn, error or silent (env TOKENMETER_LOG_LEVEL; default info)',
    )
    .action(async (opts: ServeOptions) => {
      let running: RunningServer;
      try {
        running = await startServe({
          config: opts.config,
          upstream: opts.upstream,
          host: opts.host,
          port: opts.port,
          db: opts.db,
          prices: opts.prices,
          presets: opts.presets,
          logLevel: opts.logLevel,
          // commander sets `console: true` unless --no-console; only false overrides the file.
          console: opts.console === false ? false : undefined,
        });
      } catch (err) {
        const exitCode = err instanceof TokenmeterError ? err.exitCode : 1;
        const lines = (err instanceof Error ? err.message : String(err)).split('\n');
        // A config error lists each problem on its own line; anything else is one line.
        const shown =
          err instanceof TokenmeterError && err.code === 'CONFIG_INVALID' ? lines : lines.slice(0, 1);
        for (const l of shown) process.stderr.write(`tokenmeter: ${l}\n`);
        process.exitCode = exitCode;
        return;
      }
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        signals++;
        if (signals > 1) {
          process.stderr.write(`tokenmeter: second ${sig}, exiting without drain\n`);
          process.exit(1);
        }
        running.stop().then(
          () => process.exit(0),
          (err: unknown) => {
            process.stderr.write(`tokenmeter: shutdown failed: ${(err as Error).message}\n`);
            process.exit(1);
          },
        );
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    });
}
