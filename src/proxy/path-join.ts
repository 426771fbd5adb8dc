/**
 * Joins an upstream base URL's path with the incoming path without doubling a version segment
 * (DESIGN.md §3.1): the longest suffix of the upstream's segments that equals a prefix of the
 * incoming segments is written once. `https://h/v1` + `/v1/chat/completions` → `/v1/chat/completions`;
 * `https://h/api/v1` + `/v1/models` → `/api/v1/models`; `https://h` + `/v1/messages` → `/v1/messages`.
 * The incoming query string passes through unchanged (the upstream URL's own query, if any, is
 * ignored: gateways put keys in headers, and merging two queries would change what the app sent).
 */
export function joinUpstreamPath(upstream: URL, incomingPathAndQuery: string): string {
  const q = incomingPathAndQuery.indexOf('?');
  const incomingPath = q === -1 ? incomingPathAndQuery : incomingPathAndQuery.slice(0, q);
  const query = q === -1 ? '' : incomingPathAndQuery.slice(q);
  // The same few paths repeat on every request: the join is computed once per upstream and path.
  const key = `${upstream.pathname}\u0000${incomingPath}`;
  let joined = joinedPaths.get(key);
  if (joined === undefined) {
    joined = joinPaths(upstream.pathname, incomingPath);
    // Bounded: paths come from traffic.
    if (joinedPaths.size >= JOINED_PATHS_MAX) joinedPaths.clear();
    joinedPaths.set(key, joined);
  }
  return joined + query;
}

const JOINED_PATHS_MAX = 4096;
const joinedPaths = new Map<string, string>();

function joinPaths(upstreamPath: string, incomingPath: string): string {
  const base = upstreamPath.split('/').filter((s) => s !== '');
  const trailingSlash = incomingPath.length > 1 && incomingPath.endsWith('/');
  const incoming = incomingPath.split('/').filter((s) => s !== '');

  let overlap = 0;
  for (let k = Math.min(base.length, incoming.length); k > 0; k--) {
    let same = true;
    for (let i = 0; i < k; i++) {
      if (base[base.length - k + i] !== incoming[i]) {
        same = false;
        break;
      }
    }
    if (same) {
      overlap = k;
      break;
    }
  }
  const segments = [...base, ...incoming.slice(overlap)];
  return '/' + segments.join('/') + (trailingSlash && segments.length > 0 ? '/' : '');
}

/**
 * The origin-form (RFC 9112 §3.2.1, `/path?query`) of a request target Node's parser accepted, or
 * undefined when it has none. A path is returned as is (the one comparison every request pays).
 * The absolute-form (`http://host/path`), which a client sends when it takes tokenmeter for a
 * forward proxy and which a server must accept (§3.2.2), gives its path and query: the authority
 * is ignored, every request goes to a configured upstream. The asterisk-form (`*`, server-wide
 * OPTIONS) and any other scheme have no path.
 */
export function originForm(target: string): string | undefined {
  if (target.charCodeAt(0) === 0x2f /* '/' */) return target;
  if (!/^https?:\/\//i.test(target)) return undefined;
  try {
    const u = new URL(target);
    return u.pathname + u.search;
  } catch {
    return undefined;
  }
}
