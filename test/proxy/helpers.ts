/** Small builders shared by the proxy tests. */
import type { Settings, UpstreamSettings } from '../../src/config/types.js';
import { DEFAULTS } from '../../src/config/types.js';

export function upstreamSettings(
  name: string,
  url: string,
  extra: Partial<UpstreamSettings> = {},
): UpstreamSettings {
  return {
    name,
    url: new URL(url),
    headers: {},
    connectTimeoutMs: DEFAULTS.connectTimeoutMs,
    idleTimeoutMs: DEFAULTS.idleTimeoutMs,
    injectUsage: true,
    trustReportedCost: false,
    ...extra,
  };
}

export function testSettings(upstreams: UpstreamSettings[], extra: Partial<Settings> = {}): Settings {
  return {
    host: '127.0.0.1',
    port: 0,
    logLevel: 'silent',
    db: null,
    retentionDays: DEFAULTS.retentionDays,
    audit: { ...DEFAULTS.audit, redactPatterns: [] },
    priceFiles: [],
    presets: false,
    multipliers: { upstream: {}, app: {}, model: {} },
    fx: [],
    upstreams,
    routes: [],
    apps: {},
    budgets: [],
    limits: { ...DEFAULTS.limits },
    traces: { captureContent: false },
    ...extra,
  };
}
