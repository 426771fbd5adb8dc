/**
 * The load generator (runs in the bench process): closed-loop workers over a keep-alive agent,
 * every phase bounded by a request count and a wall-clock limit, whichever comes first.
 */
import http from 'node:http';

export const CHAT_BODY = JSON.stringify({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'say ok' }],
});
export const STREAM_BODY = JSON.stringify({
  model: 'gpt-4o-mini',
  stream: true,
  messages: [{ role: 'user', content: 'count' }],
});

export interface Timing {
  /** HTTP status, or 0 when the request failed at the socket. */
  status: number;
  error?: string;
  totalMs: number;
  /** Time to the first response body byte; -1 if none arrived. */
  ttfbMs: number;
  /** Arrival time of each `data` event, ms since the request started. */
  arrivals: number[];
  bytes: number;
}

export interface RequestSpec {
  base: string;
  body: string;
  headers?: Record<string, string>;
  /** Called with each body chunk (the slow reader pauses the response here). */
  onData?: (res: http.IncomingMessage, chunk: Buffer, received: number) => void;
}

/** One POST /v1/chat/completions; never rejects (failures come back as status 0 with `error`). */
export function timedRequest(agent: http.Agent, spec: RequestSpec): Promise<Timing> {
  return new Promise((resolve) => {
    const start = performance.now();
    const t: Timing = { status: 0, totalMs: 0, ttfbMs: -1, arrivals: [], bytes: 0 };
    let settled = false;
    const done = (error?: string) => {
      if (settled) return;
      settled = true;
      t.totalMs = performance.now() - start;
      if (error !== undefined) t.error = error;
      resolve(t);
    };
    const req = http.request(
      `${spec.base}/v1/chat/completions`,
      {
        method: 'POST',
        agent,
        headers: {
          'content-type': 'application/json',
          authorization: 'Bearer sk-bench',
          'content-length': Buffer.byteLength(spec.body),
          ...spec.headers,
        },
      },
      (res) => {
        t.status = res.statusCode ?? 0;
        res.on('data', (c: Buffer) => {
          const at = performance.now() - start;
          if (t.ttfbMs < 0) t.ttfbMs = at;
          t.arrivals.push(at);
          t.bytes += c.length;
          spec.onData?.(res, c, t.bytes);
        });
        res.on('end', () => done());
        res.on('error', (e) => done(e.message));
        res.on('close', () => done(res.complete ? undefined : 'response closed early'));
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
    req.end(spec.body);
  });
}

export interface LoadSpec extends RequestSpec {
  concurrency: number;
  count: number;
  maxMs: number;
  /** Pause before each request of a worker after its first, uniformly in [min, max] ms. */
  spacingMs?: [number, number];
}

export interface LoadResult {
  timings: Timing[];
  elapsedMs: number;
}

export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: spec.concurrency });
  const timings: Timing[] = [];
  let issued = 0;
  const start = performance.now();
  const open = () => issued < spec.count && performance.now() - start < spec.maxMs;
  const worker = async () => {
    for (let first = true; open(); first = false) {
      if (!first && spec.spacingMs) {
        const [lo, hi] = spec.spacingMs;
        await new Promise((r) => setTimeout(r, lo + Math.random() * (hi - lo)));
        if (!open()) break;
      }
      issued++;
      timings.push(await timedRequest(agent, spec));
    }
  };
  await Promise.all(Array.from({ length: spec.concurrency }, worker));
  const elapsedMs = performance.now() - start;
  agent.destroy();
  return { timings, elapsedMs };
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export const sortedNumbers = (xs: readonly number[]): number[] => [...xs].sort((a, b) => a - b);

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
