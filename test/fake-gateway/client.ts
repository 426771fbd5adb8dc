/**
 * Small raw HTTP helpers for tests that need the exact bytes on the wire (node:http, no
 * decompression, no SSE parsing), which fetch-based SDK clients hide.
 */
import http, { type IncomingHttpHeaders } from 'node:http';

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** Exactly the bytes received (still gzipped if the server gzipped). */
  body: Buffer;
  /** True when the connection died before the response ended. */
  truncated: boolean;
}

export interface RawRequestOptions {
  method?: string;
  headers?: Record<string, string>;
  /** JSON-encoded when not a string or Buffer. */
  body?: unknown;
  /** Abort the request after this many ms. */
  timeoutMs?: number;
}

export function rawRequest(url: string, opts: RawRequestOptions = {}): Promise<RawResponse> {
  const payload =
    opts.body === undefined
      ? undefined
      : typeof opts.body === 'string' || Buffer.isBuffer(opts.body)
        ? opts.body
        : JSON.stringify(opts.body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: opts.method ?? (payload === undefined ? 'GET' : 'POST'),
        headers: { 'content-type': 'application/json', ...opts.headers },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let settled = false;
        const finish = (truncated: boolean): void => {
          if (settled) return;
          settled = true;
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            truncated,
          });
        };
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => finish(false));
        res.on('error', () => finish(true));
        res.on('aborted', () => finish(true));
        res.on('close', () => finish(!res.complete));
      },
    );
    if (opts.timeoutMs !== undefined) {
      req.setTimeout(opts.timeoutMs, () => req.destroy(new Error(`timeout after ${opts.timeoutMs} ms`)));
    }
    req.on('error', reject);
    req.end(payload);
  });
}

export interface ParsedSseEvent {
  event?: string;
  data: string;
}

/** Minimal SSE parse for test assertions (LF or CRLF; comments skipped). Not the product parser. */
export function parseSse(text: string): ParsedSseEvent[] {
  const events: ParsedSseEvent[] = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith('event: ')) event = line.slice('event: '.length);
      else if (line.startsWith('data: ')) data.push(line.slice('data: '.length));
    }
    if (data.length > 0)
      events.push(event === undefined ? { data: data.join('\n') } : { event, data: data.join('\n') });
  }
  return events;
}

/** JSON payloads of the SSE events, skipping `[DONE]`. */
export function sseJson(text: string): Record<string, unknown>[] {
  return parseSse(text)
    .filter((e) => e.data !== '[DONE]')
    .map((e) => JSON.parse(e.data) as Record<string, unknown>);
}
