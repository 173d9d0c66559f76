/**
 * Regression tests for the blob store fixes of commit cdcede4 (a review of the store and
 * the sync path): free space reserved for open transfers, openPartial during a close(),
 * the order of the bitmap record and the emptied file when a transfer restarts, and
 * remove()'s `unless` asked under the store's lock.
 */
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { InsufficientSpaceError, type BlobStore, type BlobStoreOptions, type PartialBlob } from '../../src/content/blobs.js'
import { CHUNK_SIZE, MIN_CHUNK_SIZE } from '../../src/content/manifest.js'
import type { Sublevel } from '../../src/store/index.js'
import { chunkOf, errorOf, manifestOf, pieces, useBlobEnvs, type Env } from '../helpers/blobs.js'

const { freshEnv, openBlobs: open } = useBlobEnvs('el-blobs-review-')
const MiB = 1024 * 1024

function sha256 (data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest()
}

/**
 * (Re)open the env's store and a new BlobStore on it, as an agent restart would.
 * `failBatch` stands for a crash (kill -9, or a LevelDB write error) at a batch write.
 */
async function openBlobs (env: Env, opts?: BlobStoreOptions, failBatch?: () => boolean): Promise<BlobStore> {
  return await open(env, opts, failBatch == null
    ? undefined
    : (real): Sublevel<unknown> => ({
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
      }))
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

/**
 * A power cut, as LevelDB sees one: a write made without `sync` sits in the OS's cache
 * and is lost, unless a later synced write (which syncs the log up to itself) came
 * first. Files renamed and fsynced, with their directories, are on disk. The wrapper
 * holds unsynced writes back (reads see them), and `cut()` drops what it still holds.
 */
function powerCut (): { wrap: (db: Sublevel<unknown>) => Sublevel<unknown>, cut: () => void } {
  type Op = { type: 'put', key: string, value: unknown } | { type: 'del', key: string }
  let held: Op[] = []
  let real!: Sublevel<unknown>
  const write = async (ops: Op[], sync: boolean): Promise<void> => {
    held.push(...ops)
    if (!sync) return
    const all = held
    held = []
    await real.batch(all, { sync: true })
  }
  return {
    cut: () => { held = [] },
    wrap: (db) => {
      real = db
      return {
        get: async (k) => {
          const last = held.findLast(op => op.key === k)
          if (last != null) return last.type === 'put' ? last.value : undefined
          return await real.get(k)
        },
        put: async (k, v, o) => { await write([{ type: 'put', key: k, value: v }], o?.sync === true) },
        del: async (k, o) => { await write([{ type: 'del', key: k }], o?.sync === true) },
        batch: async (ops, o) => { await write(ops, o?.sync === true) },
        iterator: (o) => real.iterator(o),
        values: (o) => real.values(o),
        clear: async () => { await real.clear() }
      }
    }
  }
}

describe('power cut after a file became complete', () => {
  it('an upload answered as stored is still complete after the restart', async () => {
    const env = freshEnv()
    const power = powerCut()
    const blobs = await open(env, undefined, power.wrap)
    const data = randomBytes(2 * CHUNK_SIZE + 1000)
    const m = await blobs.ingest(pieces(data), { expectedSize: data.length })
    power.cut()
    const after = await open(env)
    expect(after.has(m.digest)).toBe(true)
    expect(createHash('sha256').update(readFileSync(after.path(m.digest))).digest('hex')).toBe(m.digest.slice(7))
  })

  it('a fetched file that was verified and renamed is still complete after the restart, not swept', async () => {
    const env = freshEnv()
    const power = powerCut()
    const blobs = await open(env, undefined, power.wrap)
    const data = randomBytes(3 * CHUNK_SIZE + 5)
    const m = manifestOf(data)
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [0, 1, 2, 3])
    await p.flush()
    await p.complete()
    await p.close()
    expect(blobs.has(m.digest)).toBe(true)
    power.cut()
    const after = await open(env)
    expect(after.has(m.digest)).toBe(true)
    expect(Buffer.compare(readFileSync(after.path(m.digest)), data)).toBe(0)
  })
})

describe('free space and uploads under way', () => {
  /** A source that yields `first`, then waits for `go` before the rest. */
  function held (data: Uint8Array, first: number): { source: AsyncGenerator<Uint8Array>, started: Promise<void>, go: () => void } {
    let go!: () => void
    let started!: () => void
    const gate = new Promise<void>(resolve => { go = resolve })
    const begun = new Promise<void>(resolve => { started = resolve })
    async function * source (): AsyncGenerator<Uint8Array> {
      yield data.subarray(0, first)
      started()
      await gate
      yield data.subarray(first)
    }
    return { source: source(), started: begun, go }
  }

  it('two uploads that each fit but not together: the second is refused at once, and the first completes', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env, { freeSpace: async () => 10 * MiB })
    const a = randomBytes(6 * MiB)
    const first = held(a, MiB)
    const upA = blobs.ingest(first.source, { expectedSize: a.length })
    await first.started
    const b = randomBytes(6 * MiB)
    let pulled = false
    async function * sourceB (): AsyncGenerator<Uint8Array> { pulled = true; yield b }
    const err = await errorOf(blobs.ingest(sourceB(), { expectedSize: b.length }))
    // Before the fix both started, on a disk with room for one.
    expect([err.name, err.message]).toEqual(['InsufficientSpaceError', 'insufficient space (need 6.0 MiB, have 5.0 MiB)'])
    expect(pulled).toBe(false)
    first.go()
    expect((await upA).digest).toBe(manifestOf(a).digest)
  })

  it('a transfer that would not fit beside an upload under way is refused; once the upload is done it opens', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env, { freeSpace: async () => 10 * MiB })
    const a = randomBytes(6 * MiB)
    const first = held(a, 2 * MiB)
    const upA = blobs.ingest(first.source, { expectedSize: a.length })
    await first.started
    // 4 MiB of the upload still to come: 6 MiB left for others.
    const m = manifestOf(randomBytes(7 * MiB))
    const err = await errorOf(blobs.openPartial(m))
    expect([err.name, err.message]).toEqual(['InsufficientSpaceError', 'insufficient space (need 7.0 MiB, have 6.0 MiB)'])
    first.go()
    await upA
    // (The made-up free space does not shrink by the upload's file.)
    const p = await blobs.openPartial(m)
    await p.close()
  })
})

describe('a failed fdatasync', () => {
  it('leaves the chunks it covered unheld, here and after a restart, even if a later datasync succeeds; the transfer takes no more and a new one finishes', async () => {
    const env = freshEnv()
    let blobs = await openBlobs(env)
    const data = randomBytes(4 * CHUNK_SIZE)
    const m = manifestOf(data)
    let p = await blobs.openPartial(m)
    await writeAll(p, data, [0, 1])
    await p.flush()
    await writeAll(p, data, [2, 3])
    // The disk fails the writeback of chunks 2 and 3 (EIO): reported once, then the pages count as clean.
    const fh = (p as unknown as { openHandle: () => { datasync: () => Promise<void> } }).openHandle()
    const real = fh.datasync.bind(fh)
    let failures = 1
    fh.datasync = async () => { if (failures-- > 0) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }); await real() }
    expect((await errorOf(p.flush())).message).toMatch(/EIO/)
    expect(p.missing()).toEqual([2, 3])
    // Before the fix this second flush succeeded and recorded 2 and 3 as held.
    expect((await errorOf(p.flush())).message).toMatch(/EIO/)
    expect((await errorOf(p.writeChunk(2, chunkOf(data, m, 2)))).message).toMatch(/EIO/)
    expect((await errorOf(p.complete())).message).toMatch(/2 of 4 chunks are still missing/)
    await p.close()
    blobs = await openBlobs(env)
    p = await blobs.openPartial(m)
    expect(p.missing()).toEqual([2, 3])
    await writeAll(p, data, [2, 3])
    await p.flush()
    await p.complete()
    await p.close()
    expect(Buffer.compare(readFileSync(blobs.path(m.digest)), data)).toBe(0)
  })
})
