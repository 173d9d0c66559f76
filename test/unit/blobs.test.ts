import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, statfsSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { beforeAll, describe, expect, it } from 'vitest'
import type { PartialBlob } from '../../src/content/blobs.js'
import { CHUNK_SIZE, MIN_CHUNK_SIZE, encodeManifest, type ManifestView } from '../../src/content/manifest.js'
import type { WriterArgs } from '../fixtures/blob-writer.js'
import { chunkOf, errorOf, manifestOf, pieces, sha256hex, useBlobEnvs, type Env } from '../helpers/blobs.js'
import { waitFor } from '../helpers/wait.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))
const { freshEnv, openBlobs, closeEnv } = useBlobEnvs('el-blobs-')
const EMPTY_DIGEST = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'

/** Byte equality without vitest's element-by-element diffing (slow on MiB arrays). */
function same (a: Uint8Array | undefined, b: Uint8Array): boolean {
  return a != null && Buffer.compare(a, b) === 0
}

/** The files this process has open (what /proc/self/fd points at). */
function openFds (): string[] {
  return readdirSync('/proc/self/fd').flatMap(fd => { try { return [readlinkSync(join('/proc/self/fd', fd))] } catch { return [] } })
}

async function until (cond: () => boolean): Promise<void> {
  await waitFor(cond, { timeout: 5000, interval: 5 })
}

function ls (dir: string): string[] {
  return readdirSync(dir).sort()
}

async function writeAll (p: PartialBlob, data: Uint8Array, indices: number[]): Promise<void> {
  for (const i of indices) await p.writeChunk(i, chunkOf(data, p.manifest, i))
}

describe('BlobStore ingest', () => {
  it('stores an upload by its digest, equal to sha256sum, with the right chunk hashes', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const data = randomBytes(3 * CHUNK_SIZE + 54_321)
    const progress: number[] = []
    const m = await blobs.ingest(pieces(data), { expectedSize: data.length, onProgress: b => progress.push(b) })
    const src = join(env.dir, 'source')
    writeFileSync(src, data)
    const sum = execFileSync('sha256sum', [src, blobs.path(m.digest)], { encoding: 'utf8' }).split('\n').map(l => l.split(' ')[0])
    expect(m.digest).toBe(`sha256:${sum[0]}`)
    expect(sum[1]).toBe(sum[0])
    expect(m).toEqual(manifestOf(data))
    expect(blobs.has(m.digest)).toBe(true)
    expect(blobs.manifest(m.digest)).toEqual(m)
    expect(blobs.manifestBytes(m.digest)).toEqual(encodeManifest(m))
    expect(blobs.list()).toEqual([{ digest: m.digest, state: 'complete', have: 4, total: 4, size: data.length }])
    expect(progress.at(-1)).toBe(data.length)
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
  })

  it('stores a 0-byte file with no chunks', async () => {
    const blobs = await openBlobs(freshEnv())
    const m = await blobs.ingest(pieces(new Uint8Array(0)))
    expect(m).toEqual({ digest: EMPTY_DIGEST, size: 0, chunkSize: CHUNK_SIZE, chunks: [] })
    expect(readFileSync(blobs.path(EMPTY_DIGEST))).toHaveLength(0)
    expect(blobs.bitmap(EMPTY_DIGEST)).toEqual(new Uint8Array(0))
    expect(blobs.list()[0]).toMatchObject({ state: 'complete', have: 0, total: 0, size: 0 })
  })

  it('cuts an exact multiple of the chunk size into full chunks only', async () => {
    const blobs = await openBlobs(freshEnv())
    const data = randomBytes(2 * CHUNK_SIZE)
    const m = await blobs.ingest(pieces(data, CHUNK_SIZE))
    expect(m.chunks).toHaveLength(2)
    expect(m).toEqual(manifestOf(data))
  })

  it('keeps one file when the same bytes are uploaded twice', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const data = randomBytes(CHUNK_SIZE + 1)
    const a = await blobs.ingest(pieces(data))
    const b = await blobs.ingest(pieces(data, 4096))
    expect(b).toEqual(a)
    expect(ls(join(env.blobs, 'sha256'))).toEqual([a.digest.slice(7)])
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
    expect(blobs.list()).toHaveLength(1)
  })

  it('stores nothing when the source fails mid-way', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    async function * failing (): AsyncGenerator<Uint8Array> {
      yield randomBytes(CHUNK_SIZE)
      yield randomBytes(CHUNK_SIZE / 2)
      throw new Error('connection reset')
    }
    expect((await errorOf(blobs.ingest(failing()))).message).toBe('connection reset')
    expect(blobs.list()).toEqual([])
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
    expect(ls(join(env.blobs, 'sha256'))).toEqual([])
  })

  it('stops on abort even while the source is blocked, and stores nothing', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const controller = new AbortController()
    let unblock!: () => void
    async function * stalled (): AsyncGenerator<Uint8Array> {
      yield randomBytes(CHUNK_SIZE + 10)
      await new Promise<void>(resolve => { unblock = resolve })
    }
    const done = blobs.ingest(stalled(), { signal: controller.signal, onProgress: () => { setImmediate(() => { controller.abort() }) } })
    expect((await errorOf(done)).name).toBe('AbortError')
    unblock()
    expect(blobs.list()).toEqual([])
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
  })

  it('refuses an upload whose length differs from the announced size', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const data = randomBytes(1000)
    expect((await errorOf(blobs.ingest(pieces(data), { expectedSize: 999 }))).code).toBe('SIZE_MISMATCH')
    expect((await errorOf(blobs.ingest(pieces(data), { expectedSize: 1001 }))).code).toBe('SIZE_MISMATCH')
    expect(blobs.list()).toEqual([])
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
  })

  const freeDisk = (() => { const s = statfsSync(tmpdir()); return s.bavail * s.bsize })()
  // With a signal, as the API calls it: ingest then waits on the source or the signal, and
  // racing every chunk against one long-lived abort promise kept every chunk reachable until
  // the upload ended (a 1 GiB upload took the leader to 1.1 GiB RSS).
  it.skipIf(freeDisk < 2 * 1024 ** 3).each([
    ['without', undefined],
    ['with', new AbortController().signal]
  ])('keeps memory bounded on a 512 MiB upload %s an abort signal (skipped with under 2 GiB free disk)', async (_, signal) => {
    const blobs = await openBlobs(freshEnv())
    const total = 512 * 1024 * 1024
    async function * generated (): AsyncGenerator<Uint8Array> {
      const seed = randomBytes(256 * 1024)
      for (let n = 0; n * seed.length < total; n++) {
        const piece = Buffer.allocUnsafe(seed.length)
        seed.copy(piece)
        piece.writeUInt32LE(n, 0)
        yield piece
      }
    }
    // The generator's garbage is not ingest's memory: collect it before each sample, so
    // the samples show what ingest retains (a leak of pieces would show as hundreds of MB).
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    gc()
    const before = process.memoryUsage().rss
    let peak = before
    let sampled = 0
    const sample = (bytes: number): void => {
      if (bytes - sampled < 16 * CHUNK_SIZE) return
      sampled = bytes
      gc()
      peak = Math.max(peak, process.memoryUsage().rss)
    }
    const m = await blobs.ingest(generated(), { expectedSize: total, onProgress: sample, signal })
    expect(m.size).toBe(total)
    expect(m.chunks).toHaveLength(512)
    expect(peak - before).toBeLessThan(64 * 1024 * 1024)
    await blobs.remove(m.digest)
  })
})

describe('BlobStore partial transfers', () => {
  const data = randomBytes(5 * CHUNK_SIZE + 777)
  const m = manifestOf(data)

  it('assembles chunks written out of order into the verified file', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const p = await blobs.openPartial(m)
    expect(p.missing()).toEqual([0, 1, 2, 3, 4, 5])
    await writeAll(p, data, [4, 1, 5, 0, 3, 2])
    expect(p.missing()).toEqual([])
    expect(p.have).toBe(6)
    await p.flush()
    await p.complete()
    await p.close()
    expect(blobs.has(m.digest)).toBe(true)
    expect(sha256hex(readFileSync(blobs.path(m.digest)))).toBe(m.digest.slice(7))
    expect(Buffer.compare(readFileSync(blobs.path(m.digest)), data)).toBe(0)
    expect(ls(join(env.blobs, 'partial'))).toEqual([])
    expect(blobs.list()).toEqual([{ digest: m.digest, state: 'complete', have: 6, total: 6, size: data.length }])
  })

  it('refuses a chunk with wrong bytes or length, and does not mark it', async () => {
    const blobs = await openBlobs(freshEnv())
    const p = await blobs.openPartial(m)
    const bad = Uint8Array.from(chunkOf(data, m, 2))
    bad[100] ^= 1
    const err = await errorOf(p.writeChunk(2, bad))
    expect(err.name).toBe('ChunkMismatchError')
    expect(err.code).toBe('CHUNK_MISMATCH')
    expect((await errorOf(p.writeChunk(5, chunkOf(data, m, 5).subarray(1)))).name).toBe('ChunkMismatchError')
    expect(p.has(2)).toBe(false)
    expect(p.missing()).toEqual([0, 1, 2, 3, 4, 5])
    expect(await blobs.readChunk(m.digest, 2)).toBeUndefined()
    expect((await errorOf(p.complete())).code).toBe('BLOB_INCOMPLETE')
    await p.close()
  })

  it('resumes after a restart with exactly the unflushed and unwritten chunks missing', async () => {
    const env = freshEnv()
    let blobs = await openBlobs(env)
    let p = await blobs.openPartial(m)
    await writeAll(p, data, [0, 3])
    await p.flush()
    await writeAll(p, data, [5]) // written, never flushed
    await p.close()
    blobs = await openBlobs(env)
    expect(blobs.list()).toEqual([{ digest: m.digest, state: 'partial', have: 2, total: 6, size: data.length }])
    p = await blobs.openPartial(m)
    expect(p.missing()).toEqual([1, 2, 4, 5])
    expect(p.has(0) && p.has(3)).toBe(true)
    await writeAll(p, data, p.missing())
    await p.complete()
    await p.close()
    expect(sha256hex(readFileSync(blobs.path(m.digest)))).toBe(m.digest.slice(7))
  })

  it('serves chunks from complete and partial blobs, only those held', async () => {
    const blobs = await openBlobs(freshEnv())
    const small = randomBytes(2 * CHUNK_SIZE + 5)
    const done = await blobs.ingest(pieces(small))
    expect(same(await blobs.readChunk(done.digest, 2), small.subarray(2 * CHUNK_SIZE))).toBe(true)
    expect(same(await blobs.readChunk(done.digest, 0), small.subarray(0, CHUNK_SIZE))).toBe(true)
    expect(await blobs.readChunk(done.digest, 3)).toBeUndefined()
    expect(await blobs.readChunk(`sha256:${'0'.repeat(64)}`, 0)).toBeUndefined()
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [1])
    expect(same(await blobs.readChunk(m.digest, 1), chunkOf(data, m, 1))).toBe(true)
    expect(await blobs.readChunk(m.digest, 0)).toBeUndefined()
    await p.close()
  })

  it('reports bitmaps LSB first, all ones when complete', async () => {
    const blobs = await openBlobs(freshEnv())
    const big = randomBytes(10 * MIN_CHUNK_SIZE)
    const bm = manifestOf(big, MIN_CHUNK_SIZE)
    const p = await blobs.openPartial(bm)
    expect(blobs.bitmap(bm.digest)).toEqual(new Uint8Array([0, 0]))
    await writeAll(p, big, [0, 9])
    expect(blobs.bitmap(bm.digest)).toEqual(new Uint8Array([0x01, 0x02]))
    await writeAll(p, big, p.missing())
    await p.complete()
    await p.close()
    expect(blobs.bitmap(bm.digest)).toEqual(new Uint8Array([0xff, 0x03]))
    expect(blobs.bitmap(`sha256:${'0'.repeat(64)}`)).toBeUndefined()
  })

  it('leaves the partial, with its chunks unmarked, when the whole digest does not match', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const lying = { ...m, digest: `sha256:${'1'.repeat(64)}` }
    const p = await blobs.openPartial(lying)
    await writeAll(p, data, p.missing())
    const err = await errorOf(p.complete())
    expect(err.name).toBe('DigestMismatchError')
    expect(blobs.has(lying.digest)).toBe(false)
    expect(ls(join(env.blobs, 'sha256'))).toEqual([])
    expect(p.missing()).toEqual([0, 1, 2, 3, 4, 5])
    expect(blobs.bitmap(lying.digest)).toEqual(new Uint8Array([0]))
    await p.close()
  })

  it('hashes the whole file while chunks arrive, reading them back from the file in order', async () => {
    const blobs = await openBlobs(freshEnv())
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [2, 1])
    expect(p.hashed).toBe(0) // chunk 0 is missing: nothing continues the prefix
    await writeAll(p, data, [0, 4])
    await until(() => p.hashed === 3)
    await writeAll(p, data, [3, 5])
    await until(() => p.hashed === 6)
    await p.complete()
    await p.close()
    expect(blobs.has(m.digest)).toBe(true)
  })

  it('checks the whole digest against the file on disk: a chunk changed there after its check is fetched again', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [1, 2, 3, 4, 5])
    // Behind the store's back (a disk fault, another process): chunk 2 changes on disk before the prefix hash reads it.
    const fd = openSync(join(env.blobs, 'partial', m.digest.slice(7)), 'r+')
    writeSync(fd, Buffer.from('corrupt'), 0, 7, 2 * CHUNK_SIZE + 10)
    closeSync(fd)
    await writeAll(p, data, [0])
    const err = await errorOf(p.complete())
    expect(err.name).toBe('DigestMismatchError')
    expect(p.missing()).toEqual([2])
    expect(blobs.has(m.digest)).toBe(false)
    await writeAll(p, data, [2])
    await p.complete()
    await p.close()
    expect(sha256hex(readFileSync(blobs.path(m.digest)))).toBe(m.digest.slice(7))
  })

  it('reads served chunks through a kept handle that is let go when the file is removed', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    // Two transfers of one digest with different bytes (the first one's manifest lied): the second must be served its own bytes.
    const other = randomBytes(data.length)
    const lying = { ...manifestOf(other), digest: m.digest }
    const first = await blobs.openPartial(lying)
    await writeAll(first, other, [0])
    expect(same(await blobs.readChunk(m.digest, 0), chunkOf(other, lying, 0))).toBe(true)
    const file = join(env.blobs, 'partial', m.digest.slice(7))
    expect(openFds().filter(f => f === file).length).toBeGreaterThan(1) // the transfer's handle and the kept read handle
    await blobs.remove(m.digest)
    await first.close()
    await until(() => !openFds().some(f => f.startsWith(file)))
    const second = await blobs.openPartial(m)
    await writeAll(second, data, [0])
    expect(same(await blobs.readChunk(m.digest, 0), chunkOf(data, m, 0))).toBe(true)
    await writeAll(second, data, second.missing())
    await second.complete()
    await second.close()
    expect(same(await blobs.readChunk(m.digest, 5), chunkOf(data, m, 5))).toBe(true)
    blobs.close()
    await until(() => !openFds().some(f => f.startsWith(join(env.blobs, 'sha256'))))
  })

  it('lets an upload of the same content supersede a transfer in progress', async () => {
    const env = freshEnv()
    const blobs = await openBlobs(env)
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [0])
    await blobs.ingest(pieces(data))
    expect(blobs.has(m.digest)).toBe(true)
    expect(p.missing()).toEqual([])
    await p.writeChunk(1, chunkOf(data, m, 1))
    await p.flush()
    await p.complete()
    await p.close()
    expect(ls(join(env.blobs, 'partial'))).toEqual([])
    expect(blobs.list()).toHaveLength(1)
  })
})

describe('BlobStore housekeeping', () => {
  it('removes files, index and manifest', async () => {
    const env = freshEnv()
    let blobs = await openBlobs(env)
    const a = await blobs.ingest(pieces(randomBytes(1000)))
    const data = randomBytes(2 * CHUNK_SIZE)
    const m = manifestOf(data)
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [1])
    await p.flush()
    await blobs.remove(a.digest)
    await blobs.remove(m.digest)
    expect((await errorOf(p.writeChunk(0, chunkOf(data, m, 0)))).code).toBe('BLOB_CLOSED')
    await p.close()
    expect(blobs.has(a.digest)).toBe(false)
    expect(blobs.manifest(a.digest)).toBeUndefined()
    expect(blobs.list()).toEqual([])
    expect(ls(join(env.blobs, 'sha256'))).toEqual([])
    expect(ls(join(env.blobs, 'partial'))).toEqual([])
    blobs = await openBlobs(env)
    expect(blobs.list()).toEqual([])
    expect((await errorOf(blobs.remove('not-a-digest'))).code).toBe('DIGEST_INVALID')
  })

  it('at start-up deletes interrupted uploads and drops entries whose files vanished', async () => {
    const env = freshEnv()
    let blobs = await openBlobs(env)
    const a = await blobs.ingest(pieces(randomBytes(1000)))
    const keep = await blobs.ingest(pieces(randomBytes(2000)))
    const data = randomBytes(2 * CHUNK_SIZE)
    const m = manifestOf(data)
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [0])
    await p.flush()
    await p.close()
    await closeEnv(env)
    writeFileSync(join(env.blobs, 'tmp', 'leftover'), 'half an upload')
    rmSync(blobs.path(a.digest))
    rmSync(join(env.blobs, 'partial', m.digest.slice(7)))
    const stray = `sha256:${'2'.repeat(64)}`
    writeFileSync(join(env.blobs, 'sha256', stray.slice(7)), 'not indexed')
    blobs = await openBlobs(env)
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
    expect(blobs.list().map(e => e.digest)).toEqual([keep.digest])
    expect(blobs.manifest(m.digest)).toBeUndefined()
    expect(ls(join(env.blobs, 'sha256'))).toEqual([keep.digest.slice(7)])
    // The dropped transfer starts over.
    const again = await blobs.openPartial(m)
    expect(again.missing()).toEqual([0, 1])
    await again.close()
  })

  it('does not trust a complete file truncated behind its back: the entry is dropped', async () => {
    const env = freshEnv()
    let blobs = await openBlobs(env)
    const a = await blobs.ingest(pieces(randomBytes(CHUNK_SIZE + 10)))
    await closeEnv(env)
    truncateSync(blobs.path(a.digest), 0)
    blobs = await openBlobs(env)
    expect(blobs.has(a.digest)).toBe(false)
    expect(blobs.list()).toEqual([])
    expect(ls(join(env.blobs, 'sha256'))).toEqual([])
  })

  it('refuses transfers and uploads that do not fit, writing nothing', async () => {
    const env = freshEnv()
    const have = 1024 ** 3
    const blobs = await openBlobs(env, { freeSpace: async () => have })
    const huge: ManifestView = { digest: `sha256:${'3'.repeat(64)}`, size: Math.round(2.1 * 1024 ** 3), chunkSize: CHUNK_SIZE, chunks: [] }
    huge.chunks = Array.from({ length: Math.ceil(huge.size / CHUNK_SIZE) }, () => new Uint8Array(32))
    const err = await errorOf(blobs.openPartial(huge)) as Error & { code?: string, need?: number, have?: number }
    expect(err.name).toBe('InsufficientSpaceError')
    expect(err.code).toBe('INSUFFICIENT_SPACE')
    expect(err.message).toBe('insufficient space (need 2.1 GiB, have 1.0 GiB)')
    expect([err.need, err.have]).toEqual([huge.size, have])
    let pulled = false
    async function * source (): AsyncGenerator<Uint8Array> { pulled = true; yield new Uint8Array(1) }
    expect((await errorOf(blobs.ingest(source(), { expectedSize: 2 * 1024 ** 3 }))).name).toBe('InsufficientSpaceError')
    expect(pulled).toBe(false)
    expect(blobs.list()).toEqual([])
    for (const dir of ['sha256', 'partial', 'tmp']) expect(ls(join(env.blobs, dir))).toEqual([])
  })

  it('checks space only for the chunks a resumed transfer still misses', async () => {
    const env = freshEnv()
    let free = 10 * CHUNK_SIZE
    let blobs = await openBlobs(env, { freeSpace: async () => free })
    const data = randomBytes(4 * CHUNK_SIZE)
    const m = manifestOf(data)
    const p = await blobs.openPartial(m)
    await writeAll(p, data, [0, 1, 2])
    await p.flush()
    await p.close()
    free = CHUNK_SIZE
    blobs = await openBlobs(env, { freeSpace: async () => free })
    const again = await blobs.openPartial(m)
    expect(again.missing()).toEqual([3])
    await again.close()
  })
})

describe('BlobStore crash safety (kill -9)', () => {
  let code = ''
  beforeAll(async () => {
    const { build } = await import('esbuild')
    const out = await build({
      entryPoints: [join(REPO, 'test/fixtures/blob-writer.ts')],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      packages: 'external',
      write: false,
      logLevel: 'silent'
    })
    code = out.outputFiles[0].text
  })

  interface Run { lines: string[], exited: Promise<NodeJS.Signals | number | null>, until: (pred: (line: string) => boolean) => Promise<void>, kill: () => void }

  /** Start the writer fixture (bundled) as its own process, with the repository as cwd so bare imports resolve. */
  function writer (args: WriterArgs): Run {
    const child = spawn(process.execPath, ['--input-type=module', '-', JSON.stringify(args)], { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] })
    child.stdin.end(code)
    const lines: string[] = []
    const waiters: Array<() => void> = []
    let stderr = ''
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
    createInterface({ input: child.stdout }).on('line', line => {
      lines.push(line)
      for (const w of waiters) w()
    })
    const exited = new Promise<NodeJS.Signals | number | null>(resolve => {
      child.on('exit', (status, signal) => { resolve(signal ?? status) })
    })
    return {
      lines,
      exited,
      kill: () => { child.kill('SIGKILL') },
      until: async pred => await new Promise<void>((resolve, reject) => {
        const check = (): void => { if (lines.some(pred)) resolve() }
        waiters.push(check)
        void exited.then(status => { if (!lines.some(pred)) reject(new Error(`writer exited (${status}) first: ${lines.slice(-3).join(' | ')} ${stderr}`)) })
        check()
      })
    }
  }

  function flushedIn (lines: string[]): number[] {
    const last = lines.filter(l => l.startsWith('flushed ')).at(-1)
    return last == null ? [] : last.slice('flushed '.length).split(',').filter(s => s !== '').map(Number)
  }

  /** After a crash: nothing complete is wrong, every bit set is a right chunk, every flushed chunk is set. */
  async function checkAfterCrash (env: Env, data: Uint8Array, m: ManifestView, flushed: number[]): Promise<void> {
    const blobs = await openBlobs(env)
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
    if (blobs.has(m.digest)) {
      const file = readFileSync(blobs.path(m.digest))
      expect(file.length).toBe(m.size)
      expect(sha256hex(file)).toBe(m.digest.slice(7))
    } else {
      const bitmap = blobs.bitmap(m.digest)
      expect(bitmap, 'the transfer was opened before the kill').toBeDefined()
      const held = m.chunks.map((_, i) => ((bitmap as Uint8Array)[i >> 3] >> (i & 7) & 1) === 1)
      for (const i of flushed) expect(held[i], `flushed chunk ${i} is held`).toBe(true)
      for (let i = 0; i < held.length; i++) {
        if (held[i]) expect(sha256hex(await blobs.readChunk(m.digest, i) ?? new Uint8Array()), `chunk ${i}`).toBe(sha256hex(chunkOf(data, m, i)))
      }
      const p = await blobs.openPartial(m)
      expect(p.missing()).toEqual(held.flatMap((h, i) => h ? [] : [i]))
      await p.close()
    }
    await closeEnv(env)
  }

  function setup (): { env: Env, data: Uint8Array, m: ManifestView, args: WriterArgs } {
    const env = freshEnv()
    const data = randomBytes(8 * CHUNK_SIZE + 12_345)
    const m = manifestOf(data)
    mkdirSync(env.dir, { recursive: true })
    writeFileSync(join(env.dir, 'source'), data)
    writeFileSync(join(env.dir, 'manifest'), encodeManifest(m))
    return { env, data, m, args: { mode: 'fetch', root: env.blobs, storeDir: env.storeDir, source: join(env.dir, 'source'), manifest: join(env.dir, 'manifest') } }
  }

  it('never leaves a corrupt complete file or a falsely held chunk, and the transfer finishes', async () => {
    const { env, data, m, args } = setup()
    for (let round = 0; round < 6; round++) {
      const run = writer({ ...args, flushEvery: 2 + round % 3, delayMs: 2 })
      await run.until(l => l.startsWith('ready'))
      // Kill after a random number of the chunks still missing, or after a random time.
      const have = Number(run.lines.find(l => l.startsWith('ready'))?.split(' ')[1])
      const k = 1 + Math.floor(Math.random() * (m.chunks.length - have))
      if (round % 2 === 0) await run.until(l => l.startsWith('complete') || run.lines.filter(w => w.startsWith('wrote ')).length >= k)
      else await new Promise(resolve => setTimeout(resolve, Math.random() * 50))
      run.kill()
      await run.exited
      await checkAfterCrash(env, data, m, flushedIn(run.lines))
    }
    const last = writer(args)
    expect(await last.exited).toBe(0)
    expect(last.lines.at(-1)).toBe(`complete ${m.digest}`)
    const blobs = await openBlobs(env)
    expect(blobs.has(m.digest)).toBe(true)
    expect(execFileSync('sha256sum', [blobs.path(m.digest)], { encoding: 'utf8' }).split(' ')[0]).toBe(m.digest.slice(7))
  })

  it('recovers a transfer killed between its "completing" record and the rename', async () => {
    const { env, data, m, args } = setup()
    expect(await writer({ ...args, killAt: 'completing' }).exited).toBe('SIGKILL')
    await checkAfterCrash(env, data, m, m.chunks.map((_, i) => i))
    const blobs = await openBlobs(env)
    const p = await blobs.openPartial(m)
    expect(p.missing()).toEqual([])
    await p.complete()
    await p.close()
    expect(sha256hex(readFileSync(blobs.path(m.digest)))).toBe(m.digest.slice(7))
  })

  it('keeps a transfer killed after the rename but before its "complete" record', async () => {
    const { env, data, m, args } = setup()
    expect(await writer({ ...args, killAt: 'complete' }).exited).toBe('SIGKILL')
    await checkAfterCrash(env, data, m, [])
    const blobs = await openBlobs(env)
    expect(blobs.has(m.digest)).toBe(true)
    expect(ls(join(env.blobs, 'partial'))).toEqual([])
  })

  it('leaves no trace of an upload killed mid-way or before its rename, and keeps one killed after', async () => {
    const { env, m, args } = setup()
    const upload: WriterArgs = { ...args, mode: 'ingest', delayMs: 1 }
    const mid = writer(upload)
    await mid.until(l => l.startsWith('progress ') && Number(l.split(' ')[1]) > 3 * CHUNK_SIZE)
    mid.kill()
    await mid.exited
    let blobs = await openBlobs(env)
    expect(blobs.list()).toEqual([])
    expect(ls(join(env.blobs, 'tmp'))).toEqual([])
    await closeEnv(env)

    expect(await writer({ ...upload, delayMs: 0, killAt: 'completing' }).exited).toBe('SIGKILL')
    blobs = await openBlobs(env)
    expect(blobs.list()).toEqual([])
    for (const dir of ['sha256', 'partial', 'tmp']) expect(ls(join(env.blobs, dir))).toEqual([])
    await closeEnv(env)

    expect(await writer({ ...upload, delayMs: 0, killAt: 'complete' }).exited).toBe('SIGKILL')
    blobs = await openBlobs(env)
    expect(blobs.has(m.digest)).toBe(true)
    expect(sha256hex(readFileSync(blobs.path(m.digest)))).toBe(m.digest.slice(7))
  })
})
