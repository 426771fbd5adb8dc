/**
 * The metering copy of a response body. Bytes reach the client untouched (the proxy forwards them
 * before calling us); here a copy is decompressed (gzip/br/deflate per Content-Encoding, or gzip
 * sniffed from its magic bytes when a gateway forgot the header) and handed on as plain bytes.
 *
 * Decompression uses streaming zlib with SYNC_FLUSH so a stream cut mid-way (client abort,
 * upstream reset) still yields everything decodable so far instead of an error.
 */
import zlib from 'node:zlib';
import type { Transform } from 'node:stream';

export type Encoding = 'identity' | 'gzip' | 'deflate' | 'br';

export function encodingFrom(header: string | string[] | undefined): Encoding | 'unsupported' {
  const v = (Array.isArray(header) ? header.join(',') : (header ?? '')).trim().toLowerCase();
  if (v === '' || v === 'identity') return 'identity';
  if (v === 'gzip' || v === 'x-gzip') return 'gzip';
  if (v === 'deflate') return 'deflate';
  if (v === 'br') return 'br';
  return 'unsupported'; // e.g. "zstd" or stacked encodings: forwarded as-is, not metered
}

/**
 * Feeds plain bytes to `onData`. `end(cb)` calls back once every byte fed so far has been
 * delivered (synchronously for identity, after zlib drains otherwise).
 */
export class SideCopy {
  private inflater: Transform | undefined;
  private sniffing: boolean;
  private pending: Buffer[] = [];
  private failed: string | undefined;

  constructor(
    encoding: Encoding,
    private readonly onData: (chunk: Buffer) => void,
  ) {
    this.sniffing = encoding === 'identity';
    if (encoding !== 'identity') this.inflater = this.makeInflater(encoding);
  }

  /** Why decoding failed, if it did (the record notes it; the client was unaffected). */
  get error(): string | undefined {
    return this.failed;
  }

  write(chunk: Buffer): void {
    if (this.failed) return;
    if (this.sniffing) {
      // A body with no Content-Encoding whose bytes are gzip (seen on misconfigured relays). The
      // first chunk nearly always holds both magic bytes: it is looked at as it is, not copied.
      let head = chunk;
      if (this.pending.length > 0 || chunk.length < 2) {
        this.pending.push(chunk);
        head = Buffer.concat(this.pending);
        if (head.length < 2) return;
        this.pending = [];
      }
      this.sniffing = false;
      if (head[0] === 0x1f && head[1] === 0x8b) this.inflater = this.makeInflater('gzip');
      this.push(head);
      return;
    }
    this.push(chunk);
  }

  end(done: () => void): void {
    if (this.sniffing && this.pending.length > 0) {
      this.sniffing = false;
      this.push(Buffer.concat(this.pending));
      this.pending = [];
    }
    const inflater = this.inflater;
    if (!inflater || this.failed) return done();
    let called = false;
    const once = (): void => {
      if (!called) {
        called = true;
        done();
      }
    };
    inflater.once('end', once);
    inflater.once('error', once);
    inflater.once('close', once);
    inflater.end();
    inflater.resume();
  }

  private push(chunk: Buffer): void {
    if (this.inflater) this.inflater.write(chunk);
    else this.onData(chunk);
  }

  private makeInflater(encoding: Exclude<Encoding, 'identity'>): Transform {
    const flush = { finishFlush: zlib.constants.Z_SYNC_FLUSH };
    const t =
      encoding === 'gzip'
        ? zlib.createGunzip(flush)
        : encoding === 'deflate'
          ? zlib.createInflate(flush)
          : zlib.createBrotliDecompress({ finishFlush: zlib.constants.BROTLI_OPERATION_FLUSH });
    t.on('data', (d: Buffer) => this.onData(d));
    t.on('error', (e: Error) => {
      this.failed = `response_decode_failed: ${e.message}`;
    });
    return t;
  }
}
