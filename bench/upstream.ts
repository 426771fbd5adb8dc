/**
 * A minimal, fast OpenAI-shaped upstream for the benchmark (DESIGN.md §11): answers as quickly as
 * node:http can, so what is measured is the proxy's cost, not the upstream's.
 *   POST /v1/chat/completions            → fixed JSON completion with usage
 *   POST /v1/chat/completions stream     → SSE: N content chunks `x-bench-gap-ms` apart (default 0),
 *                                        plus the usage-only chunk when include_usage is asked
 *   same with header x-bench-long-mb: N → N MiB of content chunks as fast as the reader takes them
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

const COMPLETION = JSON.stringify({
  id: 'chatcmpl-bench',
  object: 'chat.completion',
  created: 1_700_000_000,
  model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 12, completion_tokens: 1, total_tokens: 13 },
});

function chunk(content: string): string {
  return `data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":${JSON.stringify(content)}},"finish_reason":null}]}\n\n`;
}
const USAGE_CHUNK =
  'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}\n\n';

export interface BenchUpstream {
  url: string;
  close(): Promise<void>;
}

export async function startBenchUpstream(): Promise<BenchUpstream> {
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      let body: { stream?: boolean; stream_options?: { include_usage?: boolean } } = {};
      try {
        body = JSON.parse(Buffer.concat(parts).toString('utf8')) as typeof body;
      } catch {
        /* not JSON: answer as non-stream */
      }
      if (!body.stream) {
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(COMPLETION),
        });
        res.end(COMPLETION);
        return;
      }
      const longMb = req.headers['x-bench-long-mb'];
      if (longMb !== undefined) {
        const event = Buffer.from(chunk('y'.repeat(4000)));
        let left = Math.ceil((Number(longMb) * 1024 * 1024) / event.length);
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const pump = () => {
          while (left > 0) {
            left--;
            if (!res.write(event)) return void res.once('drain', pump);
          }
          if (body.stream_options?.include_usage) res.write(USAGE_CHUNK);
          res.end('data: [DONE]\n\n');
        };
        pump();
        return;
      }
      const n = Number(req.headers['x-bench-chunks'] ?? '8');
      const gap = Number(req.headers['x-bench-gap-ms'] ?? '0');
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let i = 0;
      const next = () => {
        if (res.destroyed) return;
        if (i < n) {
          res.write(chunk(`t${i++}`));
          if (gap > 0) setTimeout(next, gap);
          else setImmediate(next);
          return;
        }
        if (body.stream_options?.include_usage) res.write(USAGE_CHUNK);
        res.end('data: [DONE]\n\n');
      };
      next();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
