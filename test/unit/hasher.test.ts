import { spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import { HashWorker } from '../../src/content/hasher.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))
const hashers: HashWorker[] = []
afterEach(async () => { for (const h of hashers.splice(0)) await h.close() })

function hasher (): HashWorker {
  const h = new HashWorker()
  hashers.push(h)
  return h
}

function ref (data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

function hex (d: Uint8Array): string {
  return Buffer.from(d).toString('hex')
}

/** The same bytes as a plain array, a view into a larger buffer, and a SharedArrayBuffer view. */
function layouts (data: Uint8Array): Uint8Array[] {
  const big = new Uint8Array(data.length + 19)
  big.set(data, 7)
  const shared = new Uint8Array(new SharedArrayBuffer(data.length + 5)).subarray(3, 3 + data.length)
  shared.set(data)
  return [Uint8Array.from(data), big.subarray(7, 7 + data.length), shared]
}

/** Simulate a crash of the worker thread: terminate it behind the HashWorker's back. */
async function killWorker (h: HashWorker): Promise<void> {
  const w = (h as unknown as { worker?: { terminate: () => Promise<number> } }).worker
  expect(w).toBeDefined()
  await w?.terminate()
}

describe('HashWorker', () => {
  it('digests equal node:crypto SHA-256 whatever buffer the bytes are in', async () => {
    const h = hasher()
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 5000 }), async data => {
      for (const view of layouts(data)) expect(hex(await h.digest(view))).toBe(ref(data))
    }), { numRuns: 60 })
    const big = randomBytes(3 * 1024 * 1024 + 11)
    expect(hex(await h.digest(big))).toBe(ref(big))
  })

  it('runs a hash fed piece by piece, interleaved with others, to the digest of the whole', async () => {
    const h = hasher()
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 4000 }), fc.array(fc.nat(4000), { maxLength: 8 }), async (data, cuts) => {
      const points = [0, ...cuts.map(c => c % (data.length + 1)).sort((a, b) => a - b), data.length]
      const a = h.running()
      const b = h.running()
      for (let i = 1; i < points.length; i++) {
        const piece = data.subarray(points[i - 1], points[i])
        await Promise.all([a.update(piece), b.update(piece), b.update(piece)])
      }
      expect(await a.hex()).toBe(ref(data))
      expect(await b.hex()).toBe(ref(Buffer.concat(points.slice(1).flatMap((p, i) => { const x = data.subarray(points[i], p); return [x, x] }))))
    }), { numRuns: 40 })
    const empty = h.running()
    expect(await empty.hex()).toBe(ref(new Uint8Array(0)))
    await expect(empty.hex()).rejects.toThrow(/finished/)
  })

  it('hashes off the event loop: a callback queued after the call runs before the digest is ready', async () => {
    const h = hasher()
    await h.digest(new Uint8Array(1)) // the worker is up
    const data = new Uint8Array(new SharedArrayBuffer(64 * 1024 * 1024))
    const order: string[] = []
    const digest = h.digest(data).then(d => { order.push('digest'); return d })
    setImmediate(() => { order.push('event loop') })
    const d = await digest
    expect(order).toEqual(['event loop', 'digest'])
    expect(hex(d)).toBe(ref(data))
  })

  it('survives a crash of its worker: pending requests and the lost running hashes reject, new requests work', async () => {
    const h = hasher()
    const run = h.running()
    await run.update(Buffer.from('abc'))
    const pending = expect(h.digest(new Uint8Array(new SharedArrayBuffer(256 * 1024 * 1024)))).rejects.toThrow(/hash worker exited/)
    await killWorker(h)
    await pending
    await expect(run.update(Buffer.from('def'))).rejects.toThrow(/restarted/)
    await expect(run.hex()).rejects.toThrow(/finished|restarted/)
    expect(hex(await h.digest(Buffer.from('abc')))).toBe(ref(Buffer.from('abc')))
    const fresh = h.running()
    await fresh.update(Buffer.from('abc'))
    expect(await fresh.hex()).toBe(ref(Buffer.from('abc')))
  })

  it('keeps no process alive once idle: a program that hashed exits by itself', async () => {
    const { build } = await import('esbuild')
    const out = await build({
      stdin: {
        contents: `import { HashWorker } from './src/content/hasher.ts'
          const h = new HashWorker()
          const d = await h.digest(new TextEncoder().encode('abc'))
          const r = h.running(); await r.update(new Uint8Array(10)); r.dispose()
          console.log(Buffer.from(d).toString('hex'))`,
        resolveDir: REPO,
        loader: 'ts'
      },
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      write: false,
      logLevel: 'silent'
    })
    const child = spawnSync(process.execPath, ['--input-type=module', '-'], { input: out.outputFiles[0].text, encoding: 'utf8', timeout: 20_000 })
    expect(child.signal).toBeNull() // not killed by the timeout: nothing kept it alive
    expect(child.stderr).toBe('')
    expect(child.status).toBe(0)
    expect(child.stdout.trim()).toBe(ref(Buffer.from('abc')))
  })

  it('stops on close, and the next request starts a new worker', async () => {
    const h = hasher()
    expect(hex(await h.digest(Buffer.from('x')))).toBe(ref(Buffer.from('x')))
    const pending = expect(h.digest(new Uint8Array(new SharedArrayBuffer(128 * 1024 * 1024)))).rejects.toThrow(/stopped/)
    await h.close()
    await pending
    expect((h as unknown as { worker?: unknown }).worker).toBeUndefined()
    expect(hex(await h.digest(Buffer.from('y')))).toBe(ref(Buffer.from('y')))
  })
})
