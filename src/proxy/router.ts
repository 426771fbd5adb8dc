/**
 * Picks the upstream for a request (DESIGN.md §3.1). Order: `routes:` in file order (a route
 * matches when every condition it states matches: path prefix and/or model glob), then an
 * upstream's own `prefix`, then the upstream named `default` (or the first one). A matched path
 * prefix is stripped before forwarding.
 */
import type { Settings, UpstreamSettings } from '../config/types.js';
import { globToRegExp } from '../glob.js';

/** Route model globs follow SQLite GLOB syntax, like every model glob (src/glob.ts). */
export { globToRegExp } from '../glob.js';

export interface RouteChoice {
  upstream: UpstreamSettings;
  /** Incoming path with the matched prefix stripped (query string kept). */
  path: string;
  /** App from the matched route, else from the upstream's `app:`. */
  routeApp?: string;
}

export interface Router {
  pick(path: string, model: string | undefined): RouteChoice;
  /** True when some route needs the request model (so the body must be read before routing). */
  readonly usesModel: boolean;
}

/** Returns the rest of `path` after `prefix` when `prefix` matches whole segments, else undefined. */
export function stripPrefix(path: string, prefix: string): string | undefined {
  const p = prefix.replace(/\/+$/, '');
  if (p === '') return path;
  if (!path.startsWith(p)) return undefined;
  const rest = path.slice(p.length);
  if (rest === '') return '/';
  if (rest.startsWith('/')) return rest;
  if (rest.startsWith('?')) return '/' + rest;
  return undefined;
}

export function createRouter(settings: Pick<Settings, 'upstreams' | 'routes'>): Router {
  if (settings.upstreams.length === 0) throw new Error('no upstream configured');
  const byName = new Map(settings.upstreams.map((u) => [u.name, u]));
  const fallback = byName.get('default') ?? settings.upstreams[0]!;
  const routes = settings.routes.map((r) => {
    const upstream = byName.get(r.upstream);
    if (!upstream) throw new Error(`route refers to unknown upstream "${r.upstream}"`);
    return { ...r, upstream, modelRe: r.model !== undefined ? globToRegExp(r.model) : undefined };
  });
  const prefixed = settings.upstreams.filter((u) => u.prefix !== undefined);

  return {
    usesModel: routes.some((r) => r.modelRe !== undefined),
    pick(path, model) {
      for (const r of routes) {
        let rest: string | undefined = path;
        if (r.prefix !== undefined) {
          rest = stripPrefix(path, r.prefix);
          if (rest === undefined) continue;
        }
        if (r.modelRe !== undefined && (model === undefined || !r.modelRe.test(model))) continue;
        return { upstream: r.upstream, path: rest, routeApp: r.app ?? r.upstream.app };
      }
      for (const u of prefixed) {
        const rest = stripPrefix(path, u.prefix!);
        if (rest !== undefined) return { upstream: u, path: rest, routeApp: u.app };
      }
      return { upstream: fallback, path, routeApp: fallback.app };
    },
  };
}
