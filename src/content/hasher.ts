/**
 * SHA-256 on a worker thread. A receiving host hashes every byte twice (the chunk check
 * against the manifest, and the whole-file digest read back from the file), and on the
 * event loop that work queued behind decrypting the next chunk: the receiver's one
 * thread was the bottleneck of a transfer while the other core had room. Here the event
 * loop only posts the bytes and the other core hashes them.
 *
 * Bytes in a SharedArrayBuffer (the fetcher's chunk buffers, the prefix hash's read
 * buffer) are shared with the worker, not copied; other bytes are copied once by
 * postMessage. The caller must not change the bytes until the promise settles.
 * WebCrypto's `subtle.digest` also hashes off the event loop, but it copies the input on
 * the event loop into a new buffer first: measured here, that cost half as much as
 * hashing it there.
 *
 * The worker starts on first use and keeps the process alive only while a request is
 * pending. If it
 * dies, pending requests reject, running hashes started on it reject from then on (their
 * state is gone), and the next request starts a new one.
 */
import { Worker } from 'node:worker_threads'

/**
 * Plain JavaScript, evaluated as the worker's script: no file to find in the bundle or the
 * sources. Dynamic imports, because the script is CommonJS or an ES module depending on how
 * the parent was started; messages wait in the port's queue until the listener is attached.
 */
const WORKER_SOURCE = `
Promise.all([import('node:worker_threads'), import('node:crypto')]).then(([{ parentPort }, { createHash }]) => {
  const running = new Map()
  parentPort.on('message', (m) => {
    try {
      if (m.op === 'digest') {
        parentPort.postMessage({ id: m.id, digest: createHash('sha256').update(m.data).digest() })
      } else if (m.op === 'update') {
        let h = running.get(m.key)
        if (h === undefined) { h = createHash('sha256'); running.set(m.key, h) }
        h.update(m.data)
        parentPort.postMessage({ id: m.id })
      } else if (m.op === 'final') {
        const h = running.get(m.key) ?? createHash('sha256')
        running.delete(m.key)
        parentPort.postMessage({ id: m.id, digest: h.digest() })
      } else if (m.op === 'drop') {
        running.delete(m.key)
      }
    } catch (err) {
      running.delete(m.key)
      parentPort.postMessage({ id: m.id, error: String(err && err.message || err) })
    }
  })
})
`

interface Reply { id: number, digest?: Uint8Array, error?: string }
interface Pending { resolve: (digest: Uint8Array | undefined) => void, reject: (err: Error) => void }

export class HashWorker {
  private worker: Worker | undefined
  /** Bumped whenever a worker goes away: running hashes of an older one are lost. */
  private generation = 0
  private nextId = 1
  private nextKey = 1
  private readonly pending = new Map<number, Pending>()

  /** SHA-256 of `data` (32 bytes). */
  async digest (data: Uint8Array): Promise<Uint8Array> {
    const d = await this.call({ op: 'digest', data: shareable(data) })
    return d as Uint8Array
  }

  /** An incremental SHA-256 whose state lives on the worker. */
  running (): RunningSha256 {
    return new RunningSha256(this)
  }

  /** Stop the worker (the next request starts another). Pending requests reject. */
  async close (): Promise<void> {
    const w = this.worker
    if (w == null) return
    this.lost(w, new Error('the hash worker was stopped'))
    await w.terminate()
  }

  /** @internal */
  get currentGeneration (): number {
    this.ensure()
    return this.generation
  }

  /** @internal */
  newKey (): number {
    return this.nextKey++
  }

  /** @internal Post a request and wait for its answer; `generation`, when given, must still be the worker's. */
  async call (msg: Record<string, unknown>, generation?: number): Promise<Uint8Array | undefined> {
    const w = this.ensure()
    if (generation != null && generation !== this.generation) throw new Error('the hash worker restarted; the running hash was lost')
    const id = this.nextId++
    return await new Promise<Uint8Array | undefined>((resolve, reject) => {
      if (this.pending.size === 0) w.ref()
      this.pending.set(id, { resolve, reject })
      try {
        w.postMessage({ ...msg, id })
      } catch (err) {
        this.settled(id)
        reject(err instanceof Error ? err : new Error(String(err)))
      }
    })
  }

  /** @internal Fire and forget (dropping a running hash). */
  post (msg: Record<string, unknown>, generation: number): void {
    if (this.worker != null && generation === this.generation) this.worker.postMessage(msg)
  }

  private ensure (): Worker {
    if (this.worker != null) return this.worker
    const w = new Worker(WORKER_SOURCE, { eval: true, name: 'edgelink-sha256' })
    w.unref()
    w.on('message', (r: Reply) => {
      const p = this.pending.get(r.id)
      if (p == null) return
      this.settled(r.id)
      if (r.error != null) p.reject(new Error(`hashing failed: ${r.error}`))
      else p.resolve(r.digest == null ? undefined : new Uint8Array(r.digest))
    })
    w.on('error', err => { this.lost(w, err) })
    w.on('exit', code => { this.lost(w, new Error(`the hash worker exited (code ${code})`)) })
    this.worker = w
    this.generation++
    return w
  }

  private settled (id: number): void {
    this.pending.delete(id)
    if (this.pending.size === 0) this.worker?.unref()
  }

  private lost (w: Worker, err: Error): void {
    if (this.worker !== w) return
    this.worker = undefined
    this.generation++
    const pending = [...this.pending.values()]
    this.pending.clear()
    for (const p of pending) p.reject(err)
  }
}

/** SHA-256 fed piece by piece on the worker; `update`s are applied in the order they are made. */
export class RunningSha256 {
  private readonly hasher: HashWorker
  private readonly key: number
  private generation: number | undefined
  private finished = false

  constructor (hasher: HashWorker) {
    this.hasher = hasher
    this.key = hasher.newKey()
  }

  async update (data: Uint8Array): Promise<void> {
    if (this.finished) throw new Error('this running hash is finished')
    this.generation ??= this.hasher.currentGeneration
    await this.hasher.call({ op: 'update', key: this.key, data: shareable(data) }, this.generation)
  }

  /** Lowercase hex of the digest of everything fed; the hash is finished. */
  async hex (): Promise<string> {
    if (this.finished) throw new Error('this running hash is finished')
    this.finished = true
    const generation = this.generation ?? this.hasher.currentGeneration
    const d = await this.hasher.call({ op: 'final', key: this.key }, generation)
    return Buffer.from(d as Uint8Array).toString('hex')
  }

  /** Free the state on the worker (a hash abandoned before `hex`). */
  dispose (): void {
    if (this.finished) return
    this.finished = true
    if (this.generation != null) this.hasher.post({ op: 'drop', key: this.key }, this.generation)
  }
}

/**
 * Bytes postMessage can send cheaply: a SharedArrayBuffer view as is; a view of part
 * of a larger buffer copied to its own (a clone would copy the whole buffer).
 */
function shareable (data: Uint8Array): Uint8Array {
  if (data.buffer instanceof SharedArrayBuffer) return data
  if (data.byteOffset === 0 && data.byteLength === data.buffer.byteLength) return data
  return data.slice()
}
