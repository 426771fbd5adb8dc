/**
 * The fake LLM gateway: a real HTTP server on 127.0.0.1 that speaks every seed gateway's wire
 * format and quirks, for end-to-end tests and the benchmark. Full write-up: docs/testing.md.
 *
 * ENDPOINTS (under basePath, default `/v1`; anything else → 404 JSON)
 * | method | path                    | answer                                                    |
 * |--------|-------------------------|-----------------------------------------------------------|
 * | POST   | /chat/completions       | OpenAI chat, body or SSE (`stream: true`), flavor by model |
 * | POST   | /search/completions     | same as chat (seed 004)                                   |
 * | POST   | /completions            | legacy text_completion, body or SSE                       |
 * | POST   | /responses              | Responses API, body or SSE (response.* events)            |
 * | POST   | /messages               | Anthropic Messages, body or SSE                           |
 * | POST   | /messages/count_tokens  | `{"input_tokens": P}`                                     |
 * | POST   | /embeddings             | float or base64 (`encoding_format`) vectors + usage       |
 * | POST   | /images/generations     | `n` images (url or b64_json); usage for gpt-image-*       |
 * | GET    | /models                 | one model per flavor                                      |
 * | GET    | /balance                | seed 004 balance object, live: what billing.ts charged     |
 * BILLING (billing.ts, issue 13; at the root, whatever basePath is): GET /dashboard/billing/subscription,
 * /dashboard/billing/usage (also under /v1/, one-api style, total_usage in cents), /api/usage/token
 * (new-api). Every answered-or-abandoned token request is charged to its key (`gateway.billing`),
 * with usage or without it; `x-fake-bill-multiplier: 1.25` (or options.billing.multiplier) bills
 * ×1.25 of the fake's prices (default 2 / 8 per 1M, CNY).
 *
 * AUTH: `Authorization: Bearer K`, `x-api-key: K` or `api-key: K`. K must start with `sk-`;
 * `sk-bad…` or no key → 401 in the endpoint's error shape.
 *
 * FLAVORS (chat only; chosen by model prefix, case-insensitive; `/messages` is always Anthropic)
 * | model prefix          | flavor            | stream usage                                          |
 * |-----------------------|-------------------|-------------------------------------------------------|
 * | (default) gpt-*, qwen-*, … | openai       | empty-choices chunk only if stream_options.include_usage; `usage: null` on other chunks then |
 * | o3*, gpt-5*           | openai-reasoning  | as openai; cached_tokens + reasoning_tokens details   |
 * | deepseek-*            | deepseek          | as openai; prompt_cache_hit/miss + cached_tokens      |
 * | deepseek-reasoner*    | deepseek-reasoner | as deepseek; `reasoning_content` deltas first         |
 * | glm-*, zhipu/glm-*    | glm               | always, top-level `usage` on the finish chunk         |
 * | moonshot-*, kimi-*    | moonshot          | always, `choices[0].usage` on the finish chunk        |
 * | groq-*                | groq              | always `x_groq.usage` on finish chunk; repeated in a usage chunk if include_usage |
 * | qwen-cumulative-*     | qwen-cumulative   | cumulative `usage` on every chunk (+ usage chunk if include_usage) |
 * | minimax-*             | minimax           | zero placeholders on every chunk, then a real usage chunk (always) |
 * | azure-*               | azure             | first chunk: empty choices + prompt_filter_results; usage as openai |
 *
 * SCENARIOS: header `x-fake-scenario: a,b` or model `a+b+realmodel` / model `a`.
 * | scenario                | effect                                                              |
 * |-------------------------|---------------------------------------------------------------------|
 * | error-NNN               | status NNN with the seed's body (401 one-api invalid_api_key, 402 one-api insufficient_quota, 403 FORBIDDEN, 404 MODEL_NOT_FOUND, 429 RATE_LIMIT + X-RateLimit-* + Retry-After: 60, 500 INTERNAL_ERROR, 502 UPSTREAM_ERROR, 504 GATEWAY_TIMEOUT, all seed-004 ones with request_id); Anthropic shape on /messages |
 * | error-429-quota         | 429 with OpenAI `insufficient_quota` body                           |
 * | error-arrearage         | 400 DashScope `Arrearage` body                                      |
 * | error-403-quota         | 403 one-api `insufficient_user_quota` body                          |
 * | error-in-stream         | 200 stream; after the first content chunk an error event, then end |
 * | minimax-base-resp-error | 200 with `base_resp.status_code: 1008` (body, or one SSE event)     |
 * | slow-stream             | delay between events (x-fake-delay-ms, default 50); JSON answers wait it once |
 * | split-writes            | each event/body written in x-fake-split-bytes pieces (default 1)     |
 * | max-tokens              | finish_reason length / stop_reason max_tokens / response.incomplete  |
 * | server-tools            | Anthropic stream: two extra cumulative message_delta usage reports before the final one |
 * | reset-mid-stream        | socket destroyed after x-fake-reset-after events (default 2); non-stream: half the body |
 * | hang                    | request read, never answered                                        |
 * | hang-after-head         | 200 head sent, then nothing                                         |
 * | gzip / gzip-no-header   | body gzipped (flushed per event); the second without Content-Encoding |
 * | keepalive               | `: ping` comment before every event and at the end                  |
 * | crlf                    | CRLF line endings                                                   |
 * | no-done                 | no `data: [DONE]`                                                   |
 * | no-usage                | never reports usage                                                 |
 * | cost                    | final usage carries `cost` = (P + 2·C) / 1e6                        |
 * | big-event               | one extra event ≥ x-fake-event-bytes (default 9 MiB) after the first content chunk |
 *
 * KNOB HEADERS: x-fake-scenario, x-fake-delay-ms, x-fake-chunks, x-fake-reset-after, x-fake-event-bytes,
 * x-fake-split-bytes, x-fake-usage (JSON usage object in the flavor's wire shape, sent instead of the
 * computed one; streams carry it wherever that flavor carries its final usage).
 * EVERY RESPONSE: `x-request-id: req-<n>` (n = 1-based request number on this gateway),
 * x-ratelimit-limit-requests 60, x-ratelimit-remaining-requests max(0, 60-n),
 * x-ratelimit-limit-tokens 100000, x-ratelimit-remaining-tokens max(0, 100000-1000·n),
 * x-ratelimit-reset-requests 1s, x-ratelimit-reset-tokens 6ms.
 * USAGE NUMBERS: see usage.ts (`expectedUsage(flavor, requestJson, { chunks })`).
 */
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { countTokensBody, messagesBody, messagesEvents } from './anthropic.js';
import { errorResponse, type ErrorFamily, type ErrorVariant } from './errors.js';
import { FakeBilling, type FakeBillingOptions } from './billing.js';
import { embeddingsBody, imagesBody, modelsBody } from './misc.js';
import { chatBody, chatEvents, completionBody, completionEvents, type EndpointInput } from './openai-chat.js';
import { responsesBody, responsesEvents } from './responses.js';
import { parseScenario, splitModel } from './scenarios.js';
import { sendJson, sendSse, type ResponseContext } from './transport.js';
import { expectedUsage, flavorFor } from './usage.js';

export * from './usage.js';
export { NAMED_SCENARIOS, isScenarioName, splitModel } from './scenarios.js';
export { LISTED_MODELS, embeddingVector, balanceBody } from './misc.js';
export { FakeBilling, billableTokens, type Charge, type FakeBillingOptions } from './billing.js';
export { MINIMAX_BASE_RESP_ERROR, STREAM_ERROR_BODY } from './openai-chat.js';
export { ANTHROPIC_STREAM_ERROR } from './anthropic.js';
export { rawRequest, parseSse, sseJson, type RawResponse, type ParsedSseEvent } from './client.js';

export interface ReceivedRequest {
  method: string;
  /** With query string. */
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
  json?: unknown;
  /** The client went away before we finished the response. */
  aborted: boolean;
  /** The response was fully written. */
  completed: boolean;
  /** Streamed answers only: SSE events planned, and events handed to the socket so far (a client
   * that stops reading stalls this via backpressure; an abort stops it). */
  eventsTotal?: number;
  eventsWritten?: number;
}

export interface FakeGateway {
  /** http://127.0.0.1:PORT, no path. */
  url: string;
  port: number;
  requests: ReceivedRequest[];
  /** What this gateway charged each key, and the knobs (multiplier, top-up, new day). */
  billing: FakeBilling;
  openConnections(): number;
  close(): Promise<void>;
}

export interface FakeGatewayOptions {
  port?: number;
  /** Where the API lives, default `/v1`; e.g. `/api/v1` to emulate seed 002. */
  basePath?: string;
  /** Keep every request in `requests` (default true); false for long benchmark runs. */
  recordRequests?: boolean;
  /** Prices, multiplier, currency and starting balance of what the fake bills (billing.ts). */
  billing?: FakeBillingOptions;
}

const ERROR_VARIANTS: ErrorVariant[] = ['error-429-quota', 'error-arrearage', 'error-403-quota'];

const ENDPOINT_METHODS: Record<string, string> = {
  '/chat/completions': 'POST',
  '/search/completions': 'POST',
  '/completions': 'POST',
  '/responses': 'POST',
  '/messages': 'POST',
  '/messages/count_tokens': 'POST',
  '/embeddings': 'POST',
  '/images/generations': 'POST',
  '/models': 'GET',
  '/balance': 'GET',
};

/** Token endpoints the fake charges for (billing.ts). */
const BILLED_ENDPOINTS = new Set([
  '/chat/completions',
  '/search/completions',
  '/completions',
  '/responses',
  '/messages',
]);

/** Billing endpoints served at the root, whatever basePath is (one-api/new-api routes). */
const ROOT_BILLING_PATHS = new Set([
  '/dashboard/billing/subscription',
  '/v1/dashboard/billing/subscription',
  '/dashboard/billing/usage',
  '/v1/dashboard/billing/usage',
  '/api/usage/token',
]);

function apiKeyOf(headers: IncomingHttpHeaders): string | undefined {
  const auth = headers.authorization;
  if (typeof auth === 'string' && /^bearer\s+/i.test(auth)) return auth.replace(/^bearer\s+/i, '').trim();
  for (const name of ['x-api-key', 'api-key']) {
    const value = headers[name];
    if (typeof value === 'string' && value.length > 0) return value;
  }
  return undefined;
}

function isValidKey(key: string | undefined): boolean {
  return key !== undefined && key.startsWith('sk-') && !key.startsWith('sk-bad');
}

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function rateLimitHeaders(seq: number): Record<string, string> {
  return {
    'x-ratelimit-limit-requests': '60',
    'x-ratelimit-remaining-requests': String(Math.max(0, 60 - seq)),
    'x-ratelimit-limit-tokens': '100000',
    'x-ratelimit-remaining-tokens': String(Math.max(0, 100_000 - 1000 * seq)),
    'x-ratelimit-reset-requests': '1s',
    'x-ratelimit-reset-tokens': '6ms',
  };
}

export async function startFakeGateway(opts: FakeGatewayOptions = {}): Promise<FakeGateway> {
  const basePath = (opts.basePath ?? '/v1').replace(/\/+$/, '');
  const requests: ReceivedRequest[] = [];
  const billing = new FakeBilling(opts.billing);
  const sockets = new Set<Socket>();
  let seqCounter = 0;
  let closing = false;

  const server = http.createServer((req, res) => {
    const seq = ++seqCounter;
    const record: ReceivedRequest = {
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      headers: req.headers,
      body: Buffer.alloc(0),
      aborted: false,
      completed: false,
    };
    if (opts.recordRequests !== false) requests.push(record);
    let intentionalReset = false;
    res.once('finish', () => {
      record.completed = true;
    });
    res.once('close', () => {
      if (!res.writableFinished && !intentionalReset && !closing) record.aborted = true;
    });
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('error', () => undefined);
    req.on('end', () => {
      record.body = Buffer.concat(chunks);
      if (record.body.length > 0) {
        try {
          record.json = JSON.parse(record.body.toString('utf8'));
        } catch {
          // Not JSON: left undefined; JSON endpoints answer 400 below.
        }
      }
      handle(req, res, record, seq, () => {
        intentionalReset = true;
      }).catch(() => {
        // A write to a vanished client; nothing to tell anyone.
        res.destroy();
      });
    });
  });

  async function handle(
    req: IncomingMessage,
    res: ServerResponse,
    record: ReceivedRequest,
    seq: number,
    onIntentionalReset: () => void,
  ): Promise<void> {
    const requestId = `req-${seq}`;
    const pathname = new URL(record.path, 'http://fake.invalid').pathname;
    const endpoint = pathname.startsWith(`${basePath}/`) ? pathname.slice(basePath.length) : undefined;
    const family: ErrorFamily = endpoint?.startsWith('/messages') === true ? 'anthropic' : 'openai';
    const json = isJsonObject(record.json) ? record.json : undefined;
    const rawModel = typeof json?.model === 'string' ? json.model : '';
    const split = splitModel(rawModel);
    const scenario = parseScenario(req.headers, split.scenarios);
    const ctx: ResponseContext = {
      res,
      scenario,
      baseHeaders: { 'x-request-id': requestId, ...rateLimitHeaders(seq) },
      onIntentionalReset,
      onStreamProgress: (written, total) => {
        record.eventsWritten = written;
        record.eventsTotal = total;
      },
    };
    const fail = (
      status: number,
      options: { variant?: ErrorVariant; message?: string } = {},
    ): Promise<void> => {
      const error = errorResponse(family, status, requestId, options);
      return sendJson(ctx, error.status, error.body, error.headers);
    };

    if (ROOT_BILLING_PATHS.has(pathname) && record.method === 'GET') {
      const key = apiKeyOf(req.headers);
      if (!isValidKey(key)) return fail(401);
      const body = pathname.endsWith('/subscription')
        ? billing.subscriptionBody()
        : pathname.endsWith('/usage')
          ? billing.usageBody(key!)
          : billing.tokenUsageBody(key!);
      return sendJson(ctx, 200, body);
    }
    if (endpoint === undefined || ENDPOINT_METHODS[endpoint] !== record.method) {
      const body = {
        error: {
          message: `Unknown path: ${record.method} ${pathname}`,
          type: 'invalid_request_error',
          code: 'unknown_url',
        },
      };
      return sendJson({ ...ctx, scenario: parseScenario({}, []) }, 404, body);
    }
    const key = apiKeyOf(req.headers);
    if (
      BILLED_ENDPOINTS.has(endpoint) &&
      isValidKey(key) &&
      json !== undefined &&
      scenario.errorStatus === undefined &&
      !scenario.names.has('minimax-base-resp-error')
    ) {
      // Charged when the connection ends: answered, abandoned by the client, or hung and cut off.
      const wire =
        scenario.usage ??
        expectedUsage(flavorFor(endpoint, split.model), json, { chunks: scenario.chunks }).wire;
      const multiplier = req.headers['x-fake-bill-multiplier'];
      res.once('close', () => {
        if (closing && !record.completed) return;
        billing.charge(key!, requestId, FakeBilling.tokensOf(wire), {
          multiplier: typeof multiplier === 'string' ? multiplier : undefined,
          aborted: record.aborted || !record.completed,
        });
      });
    }
    if (scenario.names.has('hang')) return;
    if (!isValidKey(apiKeyOf(req.headers))) return fail(401);
    if (scenario.errorStatus !== undefined) {
      const variant = ERROR_VARIANTS.find((name) => scenario.names.has(name));
      return fail(scenario.errorStatus, { variant });
    }
    if (record.method === 'GET') {
      return sendJson(ctx, 200, endpoint === '/models' ? modelsBody() : billing.balanceBody(key!));
    }
    if (json === undefined) return fail(400, { message: 'Request body must be a JSON object' });

    const input: EndpointInput = {
      request: json,
      model: rawModel,
      flavor: flavorFor(endpoint, split.model),
      scenario,
      seq,
    };
    const stream = json.stream === true;
    switch (endpoint) {
      case '/chat/completions':
      case '/search/completions':
        return stream ? sendSse(ctx, chatEvents(input)) : sendJson(ctx, 200, chatBody(input));
      case '/completions':
        return stream ? sendSse(ctx, completionEvents(input)) : sendJson(ctx, 200, completionBody(input));
      case '/responses':
        return stream ? sendSse(ctx, responsesEvents(input)) : sendJson(ctx, 200, responsesBody(input));
      case '/messages':
        return stream
          ? sendSse(ctx, messagesEvents(input), { 'request-id': requestId })
          : sendJson(ctx, 200, messagesBody(input), { 'request-id': requestId });
      case '/messages/count_tokens':
        return sendJson(ctx, 200, countTokensBody(input));
      case '/embeddings':
        return sendJson(ctx, 200, embeddingsBody(input));
      case '/images/generations':
        return sendJson(ctx, 200, imagesBody(input));
      default:
        return fail(404);
    }
  }

  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('fake gateway: no TCP address');
  const port = address.port;

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    billing,
    openConnections: () => sockets.size,
    close: async () => {
      closing = true;
      const socketsClosed = [...sockets].map((socket) => once(socket, 'close'));
      const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      // Resolve only once every socket's 'close' ran, so openConnections() is 0 afterwards.
      await Promise.all([serverClosed, ...socketsClosed]);
    },
  };
}
