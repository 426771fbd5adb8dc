/** HTTP helpers the proxy shares: hop-by-hop filtering and endpoint-shaped error bodies. */

/**
 * RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones every proxy drops. `expect` is
 * dropped too: node:http already answered `100 Continue` to the client.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Filters a rawHeaders array: hop-by-hop names, names listed in Connection, and `drop(name)`. */
export function forwardableHeaders(raw: string[], drop: (lower: string) => boolean): string[] {
  let listed: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') {
      listed ??= new Set();
      for (const n of raw[i + 1]!.split(',')) listed.add(n.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed?.has(lower) || drop(lower)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** Anthropic Messages endpoints answer errors in Anthropic's shape; everything else in OpenAI's. */
export function isAnthropicPath(path: string): boolean {
  return /\/messages(\/|$)/.test(path);
}

/** Error body shaped like the endpoint's own errors so SDKs parse it (OpenAI vs Anthropic). */
export function endpointError(
  path: string,
  status: number,
  type: string | { openai: string; anthropic: string },
  message: string,
  extraHeaders: Record<string, string> = {},
): { status: number; headers: Record<string, string>; body: string } {
  const body = isAnthropicPath(path)
    ? JSON.stringify({
        type: 'error',
        error: { type: typeof type === 'string' ? type : type.anthropic, message },
      })
    : JSON.stringify({
        error: {
          message,
          type: typeof type === 'string' ? type : type.openai,
          code: typeof type === 'string' ? type : type.openai,
        },
      });
  return {
    status,
    headers: {
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(body)),
      ...extraHeaders,
    },
    body,
  };
}
