/**
 * The effective settings after precedence (flag > env > config file > default, DESIGN.md §2).
 * Built by ./load.ts; every other part receives the slice it needs and never reads env or files.
 */
import type { BillingSourceName, BudgetConfig, FxRate, RouteConfig } from './schema.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

export interface UpstreamSettings {
  name: string;
  url: URL;
  headers: Record<string, string>;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  prefix?: string;
  injectUsage: boolean;
  /** Exact decimal string, e.g. "0.8"; undefined = 1. */
  multiplier?: string;
  trustReportedCost: boolean;
  balance?: { path: string; intervalMs: number; apiKey?: string };
  /** Billed-vs-metered sources (docs/reconcile.md); the first feeds the billed and drift metrics. */
  billing?: BillingSettings[];
  app?: string;
}

export interface BillingSettings {
  source: BillingSourceName;
  /** Joined with the upstream URL like proxied paths; undefined: the source's default (sources.ts). */
  path?: string;
  intervalMs: number;
  apiKey: string;
  /** undefined: the body's (balance sources); USD for oneapi/newapi is filled in by the loader. */
  currency?: string;
  quotaPerUnit: number;
  windowMs: number;
}

export interface Settings {
  /** The config file actually loaded, if any. */
  configFile?: string;
  host: string;
  port: number;
  logLevel: LogLevel;
  authToken?: string;
  /**
   * The web console and its JSON API under /-/ (docs/console.md). Optional so hand-built settings
   * (tests, bench) need not name it: only `false` turns it off; loadSettings always sets it.
   */
  console?: boolean;
  keySalt?: string;
  /** SQLite path, ':memory:', or null when the audit sink is disabled (--no-db). */
  db: string | null;
  retentionDays: number;
  audit: {
    queueSize: number;
    batchSize: number;
    flushIntervalMs: number;
    captureBodies: boolean;
    captureMaxBytes: number;
    redactPatterns: string[];
  };
  /** User price files, in order (they overlay the presets). */
  priceFiles: string[];
  /** Whether the bundled presets under prices/ are loaded. */
  presets: boolean;
  multipliers: {
    upstream: Record<string, string>;
    app: Record<string, string>;
    model: Record<string, string>;
  };
  fx: FxRate[];
  reportCurrency?: string;
  upstreams: UpstreamSettings[];
  routes: RouteConfig[];
  apps: Record<string, string>;
  budgets: BudgetConfig[];
  limits: {
    maxRequestBody: number;
    /** Request bytes buffered for metering across all requests at once (at least maxRequestBody). */
    maxBufferedBodies: number;
    maxEventBytes: number;
    maxModels: number;
    maxApps: number;
    shutdownGraceMs: number;
    /** A client must send its request headers within this time (slowloris). */
    clientHeaderTimeoutMs: number;
    /** ... and its whole request, body included, within this time. The response is not limited. */
    clientRequestTimeoutMs: number;
    /** An idle keep-alive client connection is closed after this time. */
    clientKeepAliveTimeoutMs: number;
    /** Open client connections at most; further connections are refused until some close. */
    maxConnections: number;
  };
  traces: { captureContent: boolean };
  /** Fleet mode (docs/fleet.md); absent: a single tokenmeter, no server needed. */
  fleet?: FleetSettings;
}

export interface FleetSettings {
  /** This sidecar's name in the shared tables (`host` column). */
  host: string;
  /** Shared budgets: a reservation's lifetime in Postgres when its host never settles it. */
  reservationTtlMs: number;
  /** Shared budgets: the most a request waits for the fleet ledger before `on_unreachable` applies. */
  budgetTimeoutMs: number;
  postgres: {
    /** Contains the password: print only through `redactUrl` (src/fleet/redact.ts). */
    url: string;
    poolSize: number;
    shipIntervalMs: number;
    batchSize: number;
  };
}

export const DEFAULTS = {
  host: '127.0.0.1',
  port: 4000,
  logLevel: 'info' as LogLevel,
  db: './tokenmeter.db',
  configFile: './tokenmeter.yaml',
  retentionDays: 90,
  connectTimeoutMs: 10_000,
  idleTimeoutMs: 300_000,
  audit: {
    queueSize: 10_000,
    batchSize: 500,
    flushIntervalMs: 100,
    captureBodies: false,
    captureMaxBytes: 64 * 1024,
    redactPatterns: [] as string[],
  },
  limits: {
    maxRequestBody: 32 * 1024 * 1024,
    maxBufferedBodies: 512 * 1024 * 1024,
    maxEventBytes: 8 * 1024 * 1024,
    maxModels: 100,
    maxApps: 50,
    shutdownGraceMs: 10_000,
    clientHeaderTimeoutMs: 30_000,
    clientRequestTimeoutMs: 300_000,
    clientKeepAliveTimeoutMs: 5_000,
    maxConnections: 1024,
  },
  balanceIntervalMs: 300_000,
  balancePath: '/v1/balance',
  fleet: {
    // Longer than the default upstream idle timeout (5 min), so a slow stream's reservation stays.
    reservationTtlMs: 600_000,
    budgetTimeoutMs: 2_000,
    poolSize: 4,
    shipIntervalMs: 1_000,
    batchSize: 500,
  },
  billing: {
    intervalMs: 300_000,
    quotaPerUnit: 500_000,
    windowMs: 86_400_000,
  },
} as const;
