/**
 * Thread priorities as Linux shows them, for the tests of the low-priority worker threads (the
 * audit writer, the span export thread; src/thread-priority.ts).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';

/** Whether this platform has per-thread nice values the tests can read (Linux with /proc). */
export const threadNiceVisible = process.platform === 'linux' && existsSync('/proc/thread-self');

/** Threads of this process at the nice value `nice`, from /proc/self/task/<tid>/stat. */
export function threadsAtNice(nice: number): number {
  let n = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      // Fields after the command name (which may hold spaces): state is field 3, nice field 19.
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[16]) === nice) n++;
    } catch {
      // The thread ended while listing.
    }
  }
  return n;
}
