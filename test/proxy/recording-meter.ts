/** A Meter that records every call, for proxy tests (no decoding, no sinks). */
import type { IncomingHttpHeaders } from 'node:http';
import type { Meter, MeterBeginInput, MeterOutcome, Rejection, RequestMeter } from '../../src/meter/types.js';

export interface RecordedRequest {
  input: MeterBeginInput;
  head?: { status: number; headers: IncomingHttpHeaders };
  chunks: Buffer[];
  firstByteAt?: number;
  outcomes: MeterOutcome[];
  /** Resolves at the first finish call. */
  finished: Promise<MeterOutcome>;
  body(): string;
}

export class RecordingMeter implements Meter {
  readonly requests: RecordedRequest[] = [];
  private active = 0;
  /** Set to make begin() return a rejection (budget block). */
  reject?: Rejection;
  /** Headers the meter asks the proxy to add (trace context). */
  upstreamHeaders: Record<string, string> = {
    traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  };

  inflight(): number {
    return this.active;
  }

  begin(input: MeterBeginInput): RequestMeter {
    let resolveFinished!: (o: MeterOutcome) => void;
    const rec: RecordedRequest = {
      input,
      chunks: [],
      outcomes: [],
      finished: new Promise((r) => (resolveFinished = r)),
      body: () => Buffer.concat(rec.chunks).toString('utf8'),
    };
    this.requests.push(rec);
    this.active++;
    return {
      upstreamHeaders: this.upstreamHeaders,
      rejection: this.reject,
      onResponseHead: (status, headers) => {
        rec.head = { status, headers };
      },
      onResponseChunk: (chunk) => {
        rec.chunks.push(Buffer.from(chunk));
      },
      onFirstByteToClient: () => {
        rec.firstByteAt ??= Date.now();
      },
      finish: (outcome) => {
        rec.outcomes.push(outcome);
        if (rec.outcomes.length === 1) {
          this.active--;
          resolveFinished(outcome);
        }
        return Promise.resolve();
      },
    };
  }
}

/** A Meter that does nothing (benchmarks: the raw proxy cost). */
export const NOOP_METER: Meter = {
  begin: () => ({
    upstreamHeaders: {},
    onResponseHead() {},
    onResponseChunk() {},
    onFirstByteToClient() {},
    finish: () => Promise.resolve(),
  }),
};
