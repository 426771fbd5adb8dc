/**
 * A fixed-capacity FIFO that evicts its oldest item when full (DESIGN.md §6: "a full queue drops
 * the oldest records"). O(1) push and drop, so an overloaded proxy does not pay O(n) per record.
 */
export class RingQueue<T> {
  private readonly items: (T | undefined)[];
  private head = 0;
  private size = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError(`capacity must be a positive integer`);
    this.items = new Array<T | undefined>(capacity);
  }

  get length(): number {
    return this.size;
  }

  /** Appends; returns true when the oldest item was evicted to make room. */
  push(item: T): boolean {
    let evicted = false;
    if (this.size === this.capacity) {
      this.items[this.head] = undefined;
      this.head = (this.head + 1) % this.capacity;
      this.size--;
      evicted = true;
    }
    this.items[(this.head + this.size) % this.capacity] = item;
    this.size++;
    return evicted;
  }

  /** The oldest `n` items, without removing them (they are removed once written). */
  peek(n: number): T[] {
    const count = Math.min(n, this.size);
    const out: T[] = new Array<T>(count);
    for (let i = 0; i < count; i++) out[i] = this.items[(this.head + i) % this.capacity] as T;
    return out;
  }

  /** Removes the oldest `n` items. */
  drop(n: number): void {
    const count = Math.min(n, this.size);
    for (let i = 0; i < count; i++) {
      this.items[this.head] = undefined;
      this.head = (this.head + 1) % this.capacity;
    }
    this.size -= count;
  }
}
