/**
 * Regression tests for the blob store fixes of commit cdcede4 (a review of the store and
 * the sync path): free space reserved for open transfers, openPartial during a close(),
 * the order of the bitmap record and the emptied file when a transfer restarts, and
 * remove()'s `unless` asked under the store's lock.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { pino } from 'pino'
import { BlobStore, InsufficientSpaceError, type BlobStoreOptions, type PartialBlob } from '../../src/content/blobs.js'
import { CHUNK_SIZE, MIN_CHUNK_SIZE, type ManifestView } from '../../src/content/manifest.js'
import { Store, type Sublevel } from '../../src/store/index.js'

const root = mkdtempSync(join(tmpdir(), 'el-blobs-review-'))
afterAll(() => { rmSync(root, { recursive: true, force: true }) })
const log = pino({ level: 'silent' })
const MiB = 1024 * 1024

/** A data dir: blobs/ and the LevelDB store; one Store open at a time (LevelDB's lock). */
interface Env { dir: string, blobs: string, storeDir: string, store?: Store }
const envs: Env[] = []
afterEach(async () => { for (const env of envs.splice(0)) await closeEnv(env) })

function freshEnv (): Env {
  const dir = mkdtempSync(join(root, 'dd-'))
  const env = { dir, blobs: join(dir, 'blobs'), storeDir: join(dir, 'store') }
  envs.push(env)
  return env
}

/**
 * (Re)open the env's store and a new BlobStore on it, as an agent restart would.
 * `failBatch` stands for a crash (kill -9, or a LevelDB write error) at a batch write.
 */
async function openBlobs (env: Env, opts?: BlobStoreOptions, failBatch?: () => boolean): Promise<BlobStore> {
  await closeEnv(env)
  if (!envs.includes(env)) envs.push(env)
  env.store = await Store.open({ location: env.storeDir })
  const real = env.store.sublevel<unknown>('content')
  const db: Sublevel<unknown> = failBatch == null
    ? real
    : {
        get: async (k) => await real.get(k),
        put: async (k, v, o) => { await real.put(k, v, o) },
        del: async (k, o) => { await real.del(k, o) },
        iterator: (o) => real.iterator(o),
        values: (o) => real.values(o),
        clear: async () => { await real.clear() },
        batch: async (ops, o) => {
          if (failBatch()) throw new Error('crash at this batch')
          await real.batch(ops, o)
        }
      }
  const blobs = new BlobStore(env.blobs, db, log, opts)
  await blobs.init()
  return blobs
}

async function closeEnv (env: Env): Promise<void> {
  await env.store?.close()
  env.store = undefined
}

function sha256 (data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest()
}

/** The manifest of `data`, computed independently of the code under test. */
function manifestOf (data: Uint8Array, chunkSize = CHUNK_SIZE): ManifestView {
  const chunks: Uint8Array[] = []
  for (let off = 0; off < data.length; off += chunkSize) chunks.push(new Uint8Array(sha256(data.subarray(off, off + chunkSize))))
  return { digest: `sha256:${sha256(data).toString('hex')}`, size: data.length, chunkSize, chunks }
}

function chunkOf (data: Uint8Array, m: ManifestView, i: number): Uint8Array {
  return data.subarray(i * m.chunkSize, Math.min(data.length, (i + 1) * m.chunkSize))
}

async function * pieces (data: Uint8Array, size = 100_000): AsyncGenerator<Uint8Array> {
  for (let off = 0; off < data.length; off += size) yield data.subarray(off, off + size)
}

async function errorOf (p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('expected the promise to reject')
}

function ls (dir: string): string[] {
  return readdirSync(dir).sort()
}

async function writeAll (p: PartialBlob, data: Uint8Array, indices: number[]): Promise<void> {
  for (const i of indices) await p.writeChunk(i, chunkOf(data, p.manifest, i))
}

function bitSet (bitmap: Uint8Array, i: number): boolean {
  return (bitmap[i >> 3] & (1 << (i & 7))) !== 0
}

describe('BlobStore free space with several open transfers', () => {
  // 10 MiB free; two 6 MiB items each fit, both together do not (partial files are sparse,
  // so the disk fills only as chunks arrive: both would start and fail half way).
  const free = async (): Promise<number> => 10 * MiB
  const a = randomBytes(6 * CHUNK_SIZE)
  const b = randomBytes(6 * CHUNK_SIZE)
  const ma = manifestOf(a)
  const mb = manifestOf(b)

  it('refuses a second transfer that does not fit beside what the first still has to write', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env, { freeSpace: free })
    const p = await blobs.openPartial(ma)
    const err = await errorOf(blobs.openPartial(mb)) as Error & { code?: string, need?: number, have?: number }
    expect(err).toBeInstanceOf(InsufficientSpaceError)
    expect(err.code).toBe('INSUFFICIENT_SPACE')
    expect(err.message).toBe('insufficient space (need 6.0 MiB, have 4.0 MiB)')
    expect([err.need, err.have]).toEqual([6 * MiB, 4 * MiB])
    // Nothing of the refused transfer was created.
    expect(blobs.list().map(e => e.digest)).toEqual([ma.digest])
    expect(ls(join(env.blobs, 'partial'))).toEqual([ma.digest.slice(7)])
    // What the first has written no longer counts against the second.
    await writeAll(p, a, [0])
    expect((await errorOf(blobs.openPartial(mb))).message).toBe('insufficient space (need 6.0 MiB, have 5.0 MiB)')
    await p.close()
  })

  it('lets the second transfer open once the first is closed', async () => {
    const blobs = await openBlobs(freshEnv(), { freeSpace: free })
    const p = await blobs.openPartial(ma)
    expect((await errorOf(blobs.openPartial(mb))).name).toBe('InsufficientSpaceError')
    await p.close()
    const q = await blobs.openPartial(mb)
    expect(q.missing()).toHaveLength(6)
    await q.close()
  })

  it('lets the second transfer open once the first is abandoned by remove()', async () => {
    const blobs = await openBlobs(freshEnv(), { freeSpace: free })
    const p = await blobs.openPartial(ma)
    expect((await errorOf(blobs.openPartial(mb))).name).toBe('InsufficientSpaceError')
    expect(await blobs.remove(ma.digest)).toBe(true)
    const q = await blobs.openPartial(mb)
    await q.close()
    await p.close()
  })

  it('lets the second transfer open once the first is complete', async () => {
    const blobs = await openBlobs(freshEnv(), { freeSpace: free })
    const p = await blobs.openPartial(ma)
    expect((await errorOf(blobs.openPartial(mb))).name).toBe('InsufficientSpaceError')
    await writeAll(p, a, [0, 1, 2, 3, 4, 5])
    await p.flush()
    await p.complete()
    await p.close()
    const q = await blobs.openPartial(mb)
    await writeAll(q, b, q.missing())
    await q.flush()
    await q.complete()
    await q.close()
    expect(blobs.has(ma.digest) && blobs.has(mb.digest)).toBe(true)
  })
})

describe('BlobStore openPartial while the last holder closes the transfer', () => {
  it('hands out a new transfer that takes chunks, never the one being closed', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const data = randomBytes(3 * CHUNK_SIZE + 1234)
    const m = manifestOf(data)
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [0])
    await p.flush()
    // close() marks p closed at once, and lets the transfer go only after its file handle
    // is closed (I/O, so after openPartial has looked at the transfer: microtasks first).
    const closing = p.close()
    const q = await blobs.openPartial(m)
    await closing
    expect(q).not.toBe(p)
    // It resumes from what p made durable, and takes the rest.
    expect(q.missing()).toEqual([1, 2, 3])
    await writeAll(q, data, [1, 2, 3])
    await q.flush()
    await q.complete()
    await q.close()
    expect(blobs.has(m.digest)).toBe(true)
    expect(Buffer.compare(readFileSync(blobs.path(m.digest)), data)).toBe(0)
    expect(ls(join(env.blobs, 'partial'))).toEqual([])
  })
})

describe('BlobStore restarting a transfer under another manifest', () => {
  // The same file (same digest) described with another chunk size: a manifest that
  // differs from the stored one, so the transfer starts over and the partial file is emptied.
  const data = randomBytes(2 * CHUNK_SIZE)
  const small = manifestOf(data, MIN_CHUNK_SIZE)
  const big = manifestOf(data, CHUNK_SIZE)

  /** Every chunk the index claims is held has, on disk, the bytes its manifest names. */
  async function claimedChunksAreOnDisk (blobs: BlobStore): Promise<{ claimed: number, wrong: number[] }> {
    const m = blobs.manifest(big.digest)
    const bitmap = blobs.bitmap(big.digest)
    if (m == null || bitmap == null) return { claimed: 0, wrong: [] }
    let claimed = 0
    const wrong: number[] = []
    for (let i = 0; i < m.chunks.length; i++) {
      if (!bitSet(bitmap, i)) continue
      claimed++
      const bytes = await blobs.readChunk(big.digest, i)
      if (bytes == null || Buffer.compare(sha256(bytes), m.chunks[i]) !== 0) wrong.push(i)
    }
    return { claimed, wrong }
  }

  it('after a crash while restarting, no chunk is claimed whose bytes are not on disk; the transfer then finishes', async () => {
    // Crash at the first, then at the second batch write of the restarting openPartial.
    for (const crashAt of [1, 2]) {
      const env = freshEnv()
      let batches = 0
      let armed = false
      const failBatch = (): boolean => armed && ++batches === crashAt
      let blobs = await openBlobs(env, undefined, failBatch)
      const first = await blobs.openPartial(small)
      await writeAll(first, data, [0, 1, 2, 3, 4, 5, 6, 7])
      await first.flush()
      await first.close()
      expect((await claimedChunksAreOnDisk(blobs)).claimed).toBe(8)

      armed = true
      const restarted = await blobs.openPartial(big).then(async p => { await p.close(); return undefined }, (err: Error) => err)
      armed = false
      if (crashAt === 1) expect(restarted?.message).toBe('crash at this batch')

      // Restart the agent: what the index says must hold for the bytes on disk.
      blobs = await openBlobs(env)
      const after = await claimedChunksAreOnDisk(blobs)
      expect(after.wrong, `crash at batch ${crashAt}: chunks claimed held whose bytes are not on disk`).toEqual([])

      // And the transfer finishes with the right file.
      const p = await blobs.openPartial(big)
      await writeAll(p, data, p.missing())
      await p.flush()
      await p.complete()
      await p.close()
      expect(Buffer.compare(readFileSync(blobs.path(big.digest)), data)).toBe(0)
    }
  })
})

describe('BlobStore remove(digest, { unless })', () => {
  it('removes nothing and resolves false when `unless` says true, and removes when it says false', async () => {
    const env = freshEnv()
    let blobs = await openBlobs(env)
    const a = await blobs.ingest(pieces(randomBytes(3000)))
    expect(await blobs.remove(a.digest, { unless: () => true })).toBe(false)
    expect(blobs.has(a.digest)).toBe(true)
    expect(blobs.manifest(a.digest)).toEqual(a)
    expect(ls(join(env.blobs, 'sha256'))).toEqual([a.digest.slice(7)])
    // Still there after a restart: the index was not touched either.
    blobs = await openBlobs(env)
    expect(blobs.has(a.digest)).toBe(true)
    expect(await blobs.remove(a.digest, { unless: () => false })).toBe(true)
    expect(blobs.has(a.digest)).toBe(false)
    expect(ls(join(env.blobs, 'sha256'))).toEqual([])
  })

  it('leaves an open transfer usable when `unless` says true', async () => {
    const blobs = await openBlobs(freshEnv())
    const data = randomBytes(2 * CHUNK_SIZE)
    const m = manifestOf(data)
    const p = await blobs.openPartial(m)
    expect(await blobs.remove(m.digest, { unless: () => true })).toBe(false)
    await writeAll(p, data, [0, 1])
    await p.flush()
    await p.complete()
    await p.close()
    expect(blobs.has(m.digest)).toBe(true)
  })

  it('asks `unless` once the store\'s lock is held, not when remove() is called', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const data = randomBytes(5000)
    const a = await blobs.ingest(pieces(data))
    // An upload of the same file commits while a removal waits for the lock (onStored runs
    // under it): the removal, asked for before, must see that the file is wanted again.
    let wanted = false
    let removal: Promise<boolean> | undefined
    await blobs.ingest(pieces(data), {
      onStored: (digest) => {
        removal = blobs.remove(digest, { unless: () => wanted })
        wanted = true
      }
    })
    expect(await removal).toBe(false)
    expect(blobs.has(a.digest)).toBe(true)
    expect(ls(join(env.blobs, 'sha256'))).toEqual([a.digest.slice(7)])
    // And the other way round: wanted when asked for, no longer once the lock is held.
    await blobs.ingest(pieces(data), {
      onStored: (digest) => {
        removal = blobs.remove(digest, { unless: () => wanted })
        wanted = false
      }
    })
    expect(await removal).toBe(true)
    expect(blobs.has(a.digest)).toBe(false)
    expect(ls(join(env.blobs, 'sha256'))).toEqual([])
  })
})
