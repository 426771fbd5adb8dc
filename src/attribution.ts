/**
 * Key fingerprints and app attribution (DESIGN.md §4.3). A key is never stored, logged or
 * exported: only HMAC-SHA256(secret, key) truncated to 12 hex chars.
 */
import { createHmac } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

export const APP_HEADER = 'x-tokenmeter-app';
export const DEFAULT_APP = 'default';

export function keyFingerprint(secret: string, apiKey: string): string {
  return createHmac('sha256', secret).update(apiKey).digest('hex').slice(0, 12);
}

/**
 * keyFingerprint with a bounded cache: an HMAC per request is measurable on the request path, and
 * an app uses few keys. The cache lives in memory only (keys are never written anywhere) and is
 * emptied when full rather than tracking recency.
 */
export function cachedKeyFingerprint(secret: string, max = 1024): (apiKey: string) => string {
  const cache = new Map<string, string>();
  return (apiKey) => {
    let id = cache.get(apiKey);
    if (id === undefined) {
      id = keyFingerprint(secret, apiKey);
      if (cache.size >= max) cache.clear();
      cache.set(apiKey, id);
    }
    return id;
  };
}

/** The API key a client sent, from `Authorization: Bearer`, `x-api-key` or `api-key` (Azure). */
export function extractApiKey(headers: IncomingHttpHeaders): string | undefined {
  const auth = headers['authorization'];
  if (typeof auth === 'string') {
    const m = /^\s*Bearer\s+(.+?)\s*$/i.exec(auth);
    if (m) return m[1];
  }
  for (const name of ['x-api-key', 'api-key']) {
    const v = headers[name];
    if (typeof v === 'string' && v.trim() !== '') return v.trim();
  }
  return undefined;
}

export interface AttributionInput {
  headers: IncomingHttpHeaders;
  keyId: string | undefined;
  apps: Readonly<Record<string, string>>;
  routeApp: string | undefined;
}

/** header > key fingerprint map > route/upstream app > "default". */
export function resolveApp({ headers, keyId, apps, routeApp }: AttributionInput): string {
  const h = headers[APP_HEADER];
  const fromHeader = Array.isArray(h) ? h[0] : h;
  if (fromHeader && fromHeader.trim() !== '') return fromHeader.trim().slice(0, 64);
  if (keyId !== undefined) {
    const mapped = apps[keyId];
    if (mapped !== undefined) return mapped;
  }
  return routeApp ?? DEFAULT_APP;
}
