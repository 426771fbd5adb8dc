/**
 * Builds the effective Settings with precedence flag > env > config file > default (DESIGN.md §2).
 * The config file is YAML (JSON is valid YAML). Every problem is reported at once as
 * `file:line:col: field.path: message` in one ConfigError, because fixing one typo per run is slow.
 * `${ENV_VAR}` in any string value is replaced from the environment, so keys in upstream headers
 * need not be written in the file; a missing variable is a problem at its line.
 */
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Node } from 'yaml';
import type { ZodIssue } from 'zod';
import { ConfigError, type SourceProblem } from '../errors.js';
import { ConfigFile, PG_URL, type UpstreamConfig } from './schema.js';
import {
  DEFAULTS,
  type FleetSettings,
  type LogLevel,
  type Settings,
  type UpstreamSettings,
} from './types.js';

/** Options as parsed from the command line (commander); all optional. */
export interface CliFlags {
  config?: string;
  upstream?: string;
  host?: string;
  port?: string | number;
  /** A path, or false for --no-db. */
  db?: string | false;
  prices?: string[];
  /** false for --no-presets. */
  presets?: boolean;
  /** false for --no-console. */
  console?: boolean;
  logLevel?: string;
}

const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];
const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g;

function locate(
  doc: ReturnType<typeof parseDocument>,
  lc: LineCounter,
  path: ReadonlyArray<string | number>,
  keyName?: string,
): { line?: number; column?: number } {
  // Walk as far as the path exists; a missing field is reported at its parent.
  let node: Node | null | undefined = doc.contents as Node | null;
  let offset = node?.range?.[0];
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      offset = (pair.key as Node).range?.[0] ?? offset;
      node = pair.value as Node | null;
      if (node?.range) offset = node.range[0];
    } else if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg] as Node | undefined;
      if (!item) break;
      node = item;
      if (node.range) offset = node.range[0];
    } else break;
  }
  if (keyName !== undefined && isMap(node)) {
    const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === keyName);
    const r = (pair?.key as Node | undefined)?.range;
    if (r) offset = r[0];
  }
  if (offset === undefined) return {};
  const pos = lc.linePos(offset);
  return { line: pos.line, column: pos.col };
}

/**
 * A union (e.g. Duration = number | "30s") fails as "Invalid input"; report the branch that matched
 * the value's type instead, so the message says what a valid value looks like — every problem of
 * that branch (an object branch such as `billing:` can have several).
 */
function specific(issue: ZodIssue): ZodIssue[] {
  if (issue.code !== 'invalid_union') return [issue];
  for (const branch of issue.unionErrors) {
    const first = branch.issues[0];
    if (first && first.code !== 'invalid_type') return branch.issues.flatMap(specific);
  }
  return [issue];
}

function fieldName(path: ReadonlyArray<string | number>): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

/** Parses and validates a config file; throws ConfigError listing every problem. */
export function readConfigFile(file: string, env: NodeJS.ProcessEnv): ConfigFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(
      [{ file, message: `cannot read config file (${(err as NodeJS.ErrnoException).code ?? 'error'})` }],
      'CONFIG_NOT_FOUND',
    );
  }
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const problems: SourceProblem[] = [];
  for (const e of doc.errors) {
    const pos = lc.linePos(e.pos[0]);
    problems.push({ file, line: pos.line, column: pos.col, message: e.message.split('\n')[0]! });
  }
  if (problems.length > 0) throw new ConfigError(problems);

  // ${ENV_VAR} interpolation on scalar string values, before validation so errors show final values' places.
  visit(doc, {
    Scalar(_key, node) {
      if (typeof node.value !== 'string' || !node.value.includes('${')) return;
      node.value = node.value.replace(ENV_REF, (_m, name: string) => {
        const v = env[name];
        if (v === undefined) {
          const pos = node.range ? lc.linePos(node.range[0]) : undefined;
          problems.push({
            file,
            line: pos?.line,
            column: pos?.col,
            message: `environment variable ${name} is not set`,
          });
          return '';
        }
        return v;
      });
    },
  });

  const raw: unknown = doc.toJS() ?? {};
  const parsed = ConfigFile.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues.flatMap(specific)) {
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) {
          problems.push({
            file,
            ...locate(doc, lc, issue.path, key),
            field: fieldName([...issue.path, key]),
            message: 'unknown key (a typo? it would otherwise be ignored)',
          });
        }
      } else {
        problems.push({
          file,
          ...locate(doc, lc, issue.path),
          field: issue.path.length > 0 ? fieldName(issue.path) : undefined,
          message: issue.message,
        });
      }
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const cfg = parsed.data!;

  const upstreamNames = new Set((cfg.upstreams ?? []).map((u) => u.name));
  const seen = new Set<string>();
  (cfg.upstreams ?? []).forEach((u, i) => {
    if (seen.has(u.name))
      problems.push({
        file,
        ...locate(doc, lc, ['upstreams', i, 'name']),
        field: `upstreams[${i}].name`,
        message: `duplicate upstream name "${u.name}"`,
      });
    seen.add(u.name);
    if (!/^https?:$/.test(new URL(u.url).protocol))
      problems.push({
        file,
        ...locate(doc, lc, ['upstreams', i, 'url']),
        field: `upstreams[${i}].url`,
        message: 'only http:// and https:// upstreams are supported',
      });
  });
  // Node refuses a header timeout longer than the request timeout (a RangeError at start). (0, its
  // "off", is refused by the schema: PositiveDuration.)
  const headerTimeout = cfg.limits?.client_header_timeout;
  const requestTimeout = cfg.limits?.client_request_timeout ?? DEFAULTS.limits.clientRequestTimeoutMs;
  if (headerTimeout !== undefined && headerTimeout > requestTimeout)
    problems.push({
      file,
      ...locate(doc, lc, ['limits', 'client_header_timeout']),
      field: 'limits.client_header_timeout',
      message: `must not be longer than client_request_timeout (${requestTimeout} ms)`,
    });
  (cfg.routes ?? []).forEach((r, i) => {
    if (!upstreamNames.has(r.upstream) && r.upstream !== 'default')
      problems.push({
        file,
        ...locate(doc, lc, ['routes', i, 'upstream']),
        field: `routes[${i}].upstream`,
        message: `unknown upstream "${r.upstream}"`,
      });
  });
  if (problems.length > 0) throw new ConfigError(problems);
  return cfg;
}

function usage(message: string): ConfigError {
  return new ConfigError([{ file: 'command line', message }], 'USAGE');
}

function parsePort(v: string | number, where: string): number {
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw usage(`${where}: port must be an integer 0-65535, got "${v}"`);
  return n;
}

function parseUrl(v: string, where: string): URL {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw usage(`${where}: not a URL: "${v}"`);
  }
  if (!/^https?:$/.test(u.protocol))
    throw usage(`${where}: only http:// and https:// upstreams are supported`);
  return u;
}

/** `billing:` of one upstream (one source or a list) with defaults filled in (docs/reconcile.md). */
function billingSettings(cfg: UpstreamConfig['billing']): UpstreamSettings['billing'] {
  if (cfg === undefined) return undefined;
  const d = DEFAULTS.billing;
  return (Array.isArray(cfg) ? cfg : [cfg]).map((b) => ({
    source: b.source,
    path: b.path,
    intervalMs: b.interval ?? d.intervalMs,
    apiKey: b.api_key,
    currency: b.currency ?? (b.source === 'oneapi' || b.source === 'newapi' ? 'USD' : undefined),
    quotaPerUnit: b.quota_per_unit ?? d.quotaPerUnit,
    windowMs: b.window ?? d.windowMs,
  }));
}

/**
 * `fleet:` with defaults; TOKENMETER_PG_URL wins over `fleet.postgres.url` (env > file, like
 * TOKENMETER_AUTH_TOKEN, so the password can stay out of the file) and alone turns fleet mode on.
 */
function fleetSettings(cfg: ConfigFile['fleet'], env: NodeJS.ProcessEnv): FleetSettings | undefined {
  const envUrl = env.TOKENMETER_PG_URL || undefined;
  const url = envUrl ?? cfg?.postgres?.url;
  if (url === undefined) return undefined;
  // Never echo the value: it holds the password.
  if (envUrl !== undefined && !PG_URL.test(envUrl))
    throw usage('TOKENMETER_PG_URL: expected a postgres:// or postgresql:// URL');
  const d = DEFAULTS.fleet;
  const pg = cfg?.postgres;
  return {
    host: cfg?.host ?? hostname(),
    reservationTtlMs: cfg?.reservation_ttl ?? d.reservationTtlMs,
    budgetTimeoutMs: cfg?.budget_timeout ?? d.budgetTimeoutMs,
    postgres: {
      url,
      poolSize: pg?.pool_size ?? d.poolSize,
      shipIntervalMs: pg?.ship_interval ?? d.shipIntervalMs,
      batchSize: pg?.batch_size ?? d.batchSize,
    },
  };
}

/**
 * @param flags options from the command line
 * @param env   the process environment (TOKENMETER_* and ${VAR} references)
 * @param cwd   directory for relative paths given on the command line / env, and for ./tokenmeter.yaml
 */
export function loadSettings(flags: CliFlags, env: NodeJS.ProcessEnv, cwd: string): Settings {
  const explicit = flags.config ?? env.TOKENMETER_CONFIG;
  let configFile: string | undefined;
  if (explicit !== undefined && explicit !== '') {
    configFile = resolve(cwd, explicit);
    if (!existsSync(configFile))
      throw new ConfigError([{ file: configFile, message: 'config file not found' }], 'CONFIG_NOT_FOUND');
  } else {
    const dflt = resolve(cwd, DEFAULTS.configFile);
    if (existsSync(dflt)) configFile = dflt;
  }
  const cfg: ConfigFile = configFile ? readConfigFile(configFile, env) : {};
  // Paths written in the config file are relative to the file, not to wherever serve was started.
  const cfgDir = configFile ? dirname(configFile) : cwd;
  const fromCfg = (p: string) => (p === ':memory:' || isAbsolute(p) ? p : resolve(cfgDir, p));
  const fromCwd = (p: string) => (p === ':memory:' || isAbsolute(p) ? p : resolve(cwd, p));

  const limits = {
    maxRequestBody: cfg.limits?.max_request_body ?? DEFAULTS.limits.maxRequestBody,
    // Never below one request's cap, so a single body that may be buffered always fits.
    maxBufferedBodies: Math.max(
      cfg.limits?.max_buffered_bodies ?? DEFAULTS.limits.maxBufferedBodies,
      cfg.limits?.max_request_body ?? DEFAULTS.limits.maxRequestBody,
    ),
    maxEventBytes: cfg.limits?.max_event_bytes ?? DEFAULTS.limits.maxEventBytes,
    maxModels: cfg.limits?.max_models ?? DEFAULTS.limits.maxModels,
    maxApps: cfg.limits?.max_apps ?? DEFAULTS.limits.maxApps,
    shutdownGraceMs: cfg.limits?.shutdown_grace ?? DEFAULTS.limits.shutdownGraceMs,
    // A request timeout set below the default header timeout brings the header timeout down with it.
    clientHeaderTimeoutMs: Math.min(
      cfg.limits?.client_header_timeout ?? DEFAULTS.limits.clientHeaderTimeoutMs,
      cfg.limits?.client_request_timeout ?? DEFAULTS.limits.clientRequestTimeoutMs,
    ),
    clientRequestTimeoutMs: cfg.limits?.client_request_timeout ?? DEFAULTS.limits.clientRequestTimeoutMs,
    clientKeepAliveTimeoutMs:
      cfg.limits?.client_keep_alive_timeout ?? DEFAULTS.limits.clientKeepAliveTimeoutMs,
    maxConnections: cfg.limits?.max_connections ?? DEFAULTS.limits.maxConnections,
  };
  const connectDefault = cfg.limits?.connect_timeout ?? DEFAULTS.connectTimeoutMs;
  const idleDefault = cfg.limits?.idle_timeout ?? DEFAULTS.idleTimeoutMs;

  const upstreams: UpstreamSettings[] = (cfg.upstreams ?? []).map((u) => ({
    name: u.name,
    url: new URL(u.url),
    headers: u.headers ?? {},
    connectTimeoutMs: u.connect_timeout ?? connectDefault,
    idleTimeoutMs: u.idle_timeout ?? idleDefault,
    prefix: u.prefix,
    injectUsage: u.inject_usage ?? true,
    multiplier: u.multiplier,
    trustReportedCost: u.trust_reported_cost ?? false,
    balance:
      u.balance === undefined || u.balance === false
        ? undefined
        : u.balance === true
          ? { path: DEFAULTS.balancePath, intervalMs: DEFAULTS.balanceIntervalMs }
          : {
              path: u.balance.path ?? DEFAULTS.balancePath,
              intervalMs: u.balance.interval ?? DEFAULTS.balanceIntervalMs,
              apiKey: u.balance.api_key,
            },
    billing: billingSettings(u.billing),
    app: u.app,
  }));

  // --upstream / TOKENMETER_UPSTREAM defines the upstream named `default`: it replaces the URL of a
  // configured `default` (keeping its headers and options) or is added in front of the others.
  const flagUpstream = flags.upstream ?? (env.TOKENMETER_UPSTREAM || undefined);
  if (flagUpstream !== undefined) {
    const url = parseUrl(flagUpstream, flags.upstream !== undefined ? '--upstream' : 'TOKENMETER_UPSTREAM');
    const existing = upstreams.find((u) => u.name === 'default');
    if (existing) existing.url = url;
    else
      upstreams.unshift({
        name: 'default',
        url,
        headers: {},
        connectTimeoutMs: connectDefault,
        idleTimeoutMs: idleDefault,
        injectUsage: true,
        trustReportedCost: false,
      });
  }
  for (const r of cfg.routes ?? []) {
    if (!upstreams.some((u) => u.name === r.upstream))
      throw new ConfigError([
        {
          file: configFile ?? 'config',
          field: 'routes',
          message: `unknown upstream "${r.upstream}" (no --upstream given)`,
        },
      ]);
  }

  const host = flags.host ?? (env.TOKENMETER_HOST || undefined) ?? cfg.host ?? DEFAULTS.host;
  const port =
    flags.port !== undefined
      ? parsePort(flags.port, '--port')
      : env.TOKENMETER_PORT
        ? parsePort(env.TOKENMETER_PORT, 'TOKENMETER_PORT')
        : (cfg.port ?? DEFAULTS.port);

  let db: string | null;
  if (flags.db === false) db = null;
  else if (typeof flags.db === 'string') db = fromCwd(flags.db);
  else if (env.TOKENMETER_DB) db = fromCwd(env.TOKENMETER_DB);
  else if (cfg.db === false) db = null;
  else if (typeof cfg.db === 'string') db = fromCfg(cfg.db);
  else db = fromCwd(DEFAULTS.db);

  let priceFiles: string[];
  if (flags.prices && flags.prices.length > 0) priceFiles = flags.prices.map(fromCwd);
  else if (env.TOKENMETER_PRICES)
    priceFiles = env.TOKENMETER_PRICES.split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '')
      .map(fromCwd);
  else priceFiles = (cfg.prices ?? []).map(fromCfg);
  const presets = flags.presets === false ? false : (cfg.presets ?? true);

  const levelRaw = flags.logLevel ?? (env.TOKENMETER_LOG_LEVEL || undefined);
  let logLevel: LogLevel = cfg.log_level ?? DEFAULTS.logLevel;
  if (levelRaw !== undefined) {
    if (!LOG_LEVELS.includes(levelRaw as LogLevel))
      throw usage(`log level must be one of ${LOG_LEVELS.join(', ')}, got "${levelRaw}"`);
    logLevel = levelRaw as LogLevel;
  }

  return {
    configFile,
    host,
    port,
    logLevel,
    // Env wins over the file so a deployment can keep the token out of the file.
    authToken: (env.TOKENMETER_AUTH_TOKEN || undefined) ?? cfg.auth_token,
    console: flags.console === false ? false : (cfg.console ?? true),
    keySalt: cfg.key_salt,
    db,
    retentionDays: cfg.retention_days ?? DEFAULTS.retentionDays,
    audit: {
      queueSize: cfg.audit?.queue_size ?? DEFAULTS.audit.queueSize,
      batchSize: cfg.audit?.batch_size ?? DEFAULTS.audit.batchSize,
      flushIntervalMs: cfg.audit?.flush_interval ?? DEFAULTS.audit.flushIntervalMs,
      captureBodies: cfg.audit?.capture_bodies ?? DEFAULTS.audit.captureBodies,
      captureMaxBytes: cfg.audit?.capture_max_bytes ?? DEFAULTS.audit.captureMaxBytes,
      redactPatterns: cfg.audit?.redact_patterns ?? [],
    },
    priceFiles,
    presets,
    multipliers: {
      upstream: cfg.multipliers?.upstream ?? {},
      app: cfg.multipliers?.app ?? {},
      model: cfg.multipliers?.model ?? {},
    },
    fx: cfg.fx ?? [],
    reportCurrency: cfg.report_currency,
    upstreams,
    routes: cfg.routes ?? [],
    apps: cfg.apps ?? {},
    budgets: cfg.budgets ?? [],
    limits,
    traces: { captureContent: cfg.traces?.capture_content ?? false },
    fleet: fleetSettings(cfg.fleet, env),
  };
}
