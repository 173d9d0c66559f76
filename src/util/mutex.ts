/** One holder at a time, in arrival order. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve()

  /** Wait for the lock; call the returned function to release it. */
  async acquire (): Promise<() => void> {
    let release!: () => void
    const next = new Promise<void>(resolve => { release = resolve })
    const previous = this.tail
    this.tail = previous.then(async () => await next)
    await previous
    return release
  }

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire()
    try {
      return await fn()
    } finally {
      release()
    }
  }
}
