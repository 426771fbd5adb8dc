/**
 * Record ids: ULIDs (time-sortable, Crockford base32). The `ulid` package draws one crypto call per
 * character, which profiled at ~11% of proxy CPU (bench/profile-full.ts); here the 80 random bits
 * come from a pooled `randomBytes` buffer instead. Same format, validated against `ulid`'s decoder
 * in test/ids.test.ts. Built as 26 character codes and one string (not 26 concatenations): one
 * allocation per id instead of a chain of partial strings.
 */
import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const POOL_SIZE = 16 * 1024;
let pool = randomBytes(POOL_SIZE);
let offset = 0;

function random10(): Buffer {
  if (offset + 10 > POOL_SIZE) {
    pool = randomBytes(POOL_SIZE);
    offset = 0;
  }
  const out = pool.subarray(offset, offset + 10);
  offset += 10;
  return out;
}

/** The 26 character codes of one id, reused: the id is made with one String.fromCharCode. */
const codes: number[] = new Array<number>(26).fill(0);
const ALPHABET_CODES = Array.from(ALPHABET, (c) => c.charCodeAt(0));

export function newRecordId(now: number = Date.now()): string {
  let t = now;
  for (let i = 9; i >= 0; i--) {
    codes[i] = ALPHABET_CODES[t % 32]!;
    t = Math.floor(t / 32);
  }
  // 80 random bits → 16 base32 chars, 5 bits at a time.
  const r = random10();
  let at = 10;
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < 10; i++) {
    acc = (acc << 8) | r[i]!;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      codes[at++] = ALPHABET_CODES[(acc >> bits) & 31]!;
    }
    acc &= (1 << bits) - 1;
  }
  return String.fromCharCode(...codes);
}
