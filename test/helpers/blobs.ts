/**
 * Scaffolding for the blob store's unit tests: data dirs that a test can "restart" (a new
 * Store and BlobStore on the same files), and data whose manifest is computed here,
 * independently of the code under test.
 */
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach } from 'vitest'
import { pino } from 'pino'
import { BlobStore, type BlobStoreOptions } from '../../src/content/blobs.js'
import { CHUNK_SIZE, type ManifestView } from '../../src/content/manifest.js'
import { Store, type Sublevel } from '../../src/store/index.js'

export const silentLog = pino({ level: 'silent' })

/** A data dir: blobs/ and the LevelDB store; one Store open at a time (LevelDB's lock). */
export interface Env { dir: string, blobs: string, storeDir: string, store?: Store }

export interface BlobEnvs {
  /** A new, empty data dir. */
  freshEnv: () => Env
  /**
   * (Re)open the env's store and a new BlobStore on it, as an agent restart would.
   * `wrap` may stand between the store and its database (to make a write fail, say).
   */
  openBlobs: (env: Env, opts?: BlobStoreOptions, wrap?: (db: Sublevel<unknown>) => Sublevel<unknown>) => Promise<BlobStore>
  closeEnv: (env: Env) => Promise<void>
}

/** Data dirs under one temporary root for this test file; closed after each test, deleted after all. */
export function useBlobEnvs (prefix: string): BlobEnvs {
  const root = mkdtempSync(join(tmpdir(), prefix))
  const envs: Env[] = []
  const closeEnv = async (env: Env): Promise<void> => {
    await env.store?.close()
    env.store = undefined
  }
  afterEach(async () => { for (const env of envs.splice(0)) await closeEnv(env) })
  afterAll(() => { rmSync(root, { recursive: true, force: true }) })
  return {
    closeEnv,
    freshEnv: () => {
      const dir = mkdtempSync(join(root, 'dd-'))
      const env = { dir, blobs: join(dir, 'blobs'), storeDir: join(dir, 'store') }
      envs.push(env)
      return env
    },
    openBlobs: async (env, opts, wrap) => {
      await closeEnv(env)
      if (!envs.includes(env)) envs.push(env)
      env.store = await Store.open({ location: env.storeDir })
      const db = env.store.sublevel<unknown>('content')
      const blobs = new BlobStore(env.blobs, wrap == null ? db : wrap(db), silentLog, opts)
      await blobs.init()
      return blobs
    }
  }
}

export function sha256hex (data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/** The manifest of `data`, computed independently of the code under test. */
export function manifestOf (data: Uint8Array, chunkSize = CHUNK_SIZE): ManifestView {
  const chunks: Uint8Array[] = []
  for (let off = 0; off < data.length; off += chunkSize) chunks.push(new Uint8Array(createHash('sha256').update(data.subarray(off, off + chunkSize)).digest()))
  return { digest: `sha256:${sha256hex(data)}`, size: data.length, chunkSize, chunks }
}

export function chunkOf (data: Uint8Array, m: ManifestView, i: number): Uint8Array {
  return data.subarray(i * m.chunkSize, Math.min(data.length, (i + 1) * m.chunkSize))
}

export async function * pieces (data: Uint8Array, size = 100_000): AsyncGenerator<Uint8Array> {
  for (let off = 0; off < data.length; off += size) yield data.subarray(off, off + size)
}

export async function errorOf (p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('expected the promise to reject')
}
