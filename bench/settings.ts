/**
 * The settings `serve` would build from `--upstream URL --db FILE` with no config file, for bench
 * helpers that build the runtime in-process (profile-full.ts, meter-micro.ts).
 */
import { DEFAULTS, type Settings } from '../src/config/types.js';

export function benchSettings(upstreamUrl: string, db: string | null): Settings {
  return {
    host: '127.0.0.1',
    port: 0,
    logLevel: 'silent',
    db,
    retentionDays: 90,
    audit: { ...DEFAULTS.audit, redactPatterns: [] },
    priceFiles: [],
    presets: true,
    multipliers: { upstream: {}, app: {}, model: {} },
    fx: [],
    routes: [],
    apps: {},
    budgets: [],
    upstreams: [
      {
        name: 'default',
        url: new URL(upstreamUrl),
        headers: {},
        connectTimeoutMs: 10000,
        idleTimeoutMs: 300000,
        injectUsage: true,
        trustReportedCost: false,
      },
    ],
    limits: { ...DEFAULTS.limits },
    traces: { captureContent: false },
  };
}
