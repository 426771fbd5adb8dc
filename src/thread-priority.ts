/**
 * Background threads at low CPU priority (docs/audit.md, "Writer thread priority"). On Linux the
 * nice value belongs to each thread, so a worker can lower its own without touching the event
 * loop's thread. Elsewhere `setpriority` would renice the whole process: nothing is done there.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';

/** The lowest priority (highest nice value) Linux allows. */
export const LOW_PRIORITY_NICE = 19;

/**
 * A low-priority thread that has had work for this long without finishing it is starved (the
 * machine's cores are busy with other work at normal priority): it is replaced by one at normal
 * priority. Work normally takes milliseconds.
 */
export const STARVED_AFTER_MS = 1000;

/**
 * The calling thread's Linux thread id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`),
 * or undefined off Linux or where /proc is not mounted.
 */
function currentThreadId(): number | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isSafeInteger(tid) && tid > 0 ? tid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Gives the calling thread the lowest CPU priority. An unprivileged thread can never raise it
 * again: a thread that must run at normal priority again is replaced by a new one. Returns
 * whether it was applied (false off Linux, without /proc, or if the kernel refused).
 */
export function lowerThisThreadPriority(): boolean {
  const tid = currentThreadId();
  if (tid === undefined) return false;
  try {
    setPriority(tid, LOW_PRIORITY_NICE);
    return true;
  } catch {
    return false;
  }
}
