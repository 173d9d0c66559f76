import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { Level } from 'level'
import { dataDirPaths } from '../../src/agent/datadir.js'
import { SCHEMA_VERSION, Store } from '../../src/store/index.js'

const root = mkdtempSync(join(tmpdir(), 'el-store-'))
afterAll(() => { rmSync(root, { recursive: true, force: true }) })

const opened: Store[] = []
afterEach(async () => {
  await Promise.all(opened.splice(0).map(async s => { await s.close() }))
})

/** A fresh data dir's paths. */
function freshDataDir (): ReturnType<typeof dataDirPaths> {
  return dataDirPaths(mkdtempSync(join(root, 'dd-')))
}

async function open (location: string, pidFile?: string): Promise<Store> {
  const store = await Store.open({ location, pidFile })
  opened.push(store)
  return store
}

/** Open the raw LevelDB to read or plant the schema version behind the Store's back. */
interface RawMeta {
  get: (key: string) => Promise<unknown>
  put: (key: string, value: unknown) => Promise<void>
}

async function withRawMeta<T> (location: string, fn: (meta: RawMeta) => Promise<T>): Promise<T> {
  const db = new Level<string, unknown>(location, { valueEncoding: 'json' })
  await db.open()
  try {
    return await fn(db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }))
  } finally {
    await db.close()
  }
}

async function errorOf (p: Promise<unknown>): Promise<Error> {
  let thrown: unknown
  try {
    await p
  } catch (err) {
    thrown = err
  }
  expect(thrown, 'expected the promise to reject').toBeInstanceOf(Error)
  return thrown as Error
}

describe('store', () => {
  it('writes the current schema version into a fresh store', async () => {
    const paths = freshDataDir()
    const store = await open(paths.store)
    expect(await store.schemaVersion()).toBe(SCHEMA_VERSION)
    await store.close()
    expect(await withRawMeta(paths.store, async meta => await meta.get('schemaVersion'))).toBe(SCHEMA_VERSION)
  })

  it('keeps values across close and reopen', async () => {
    const paths = freshDataDir()
    const first = await open(paths.store)
    await first.sublevel<{ n: number }>('group').put('roster', { n: 3 })
    await first.close()
    const second = await open(paths.store)
    expect(await second.sublevel<{ n: number }>('group').get('roster')).toEqual({ n: 3 })
  })

  it('refuses a store written by a newer schema with a StoreError that says to run the newer agent, and leaves it unchanged', async () => {
    const paths = freshDataDir()
    const store = await open(paths.store)
    await store.close()
    await withRawMeta(paths.store, async meta => { await meta.put('schemaVersion', SCHEMA_VERSION + 1) })
    const err = await errorOf(open(paths.store))
    expect(err.name).toBe('StoreError')
    expect(err.message).toContain(paths.store)
    expect(err.message).toContain(`schema ${SCHEMA_VERSION + 1}`)
    expect(err.message).toMatch(/newer/)
    // Refused without writing, and without keeping the lock.
    expect(await withRawMeta(paths.store, async meta => await meta.get('schemaVersion'))).toBe(SCHEMA_VERSION + 1)
  })

  it('refuses an unreadable schema version with a StoreError', async () => {
    const paths = freshDataDir()
    await (await open(paths.store)).close()
    await withRawMeta(paths.store, async meta => { await meta.put('schemaVersion', 'banana') })
    const err = await errorOf(open(paths.store))
    expect(err.name).toBe('StoreError')
    expect(err.message).toMatch(/schema version/)
  })

  it('a second open of the same store while it is open throws DataDirLockedError naming the data dir', async () => {
    const paths = freshDataDir()
    await open(paths.store, paths.pidFile)
    const err = await errorOf(open(paths.store, paths.pidFile))
    expect(err.name).toBe('DataDirLockedError')
    expect(err.message).toContain(`data dir ${paths.root}`)
    expect((err as Error & { code: string }).code).toBe('DATA_DIR_LOCKED')
  })

  it('the lock error names the holder\'s pid from the pid file', async () => {
    const paths = freshDataDir()
    await open(paths.store, paths.pidFile)
    writeFileSync(paths.pidFile, JSON.stringify({ pid: 4242, startedAt: '2026-01-01T00:00:00.000Z' }))
    const err = await errorOf(open(paths.store, paths.pidFile))
    expect(err.message).toContain('pid 4242')
  })

  it('a garbage pid file does not hide the lock error', async () => {
    const paths = freshDataDir()
    await open(paths.store, paths.pidFile)
    writeFileSync(paths.pidFile, '\u0000not json')
    expect((await errorOf(open(paths.store, paths.pidFile))).name).toBe('DataDirLockedError')
  })

  it('the store can be opened again once the holder has closed it', async () => {
    const paths = freshDataDir()
    const first = await open(paths.store)
    await first.close()
    const second = await open(paths.store)
    expect(await second.schemaVersion()).toBe(SCHEMA_VERSION)
  })

  it('closing twice is harmless', async () => {
    const paths = freshDataDir()
    const store = await open(paths.store)
    await store.close()
    await store.close()
  })

  it('sublevels are independent: same key, separate values, separate iteration and clearing', async () => {
    const paths = freshDataDir()
    const store = await open(paths.store)
    const tokens = store.sublevel<string>('tokens')
    const peers = store.sublevel<string>('peers')
    await tokens.put('k', 'token value')
    await peers.put('k', 'peer value')
    await peers.put('other', 'x')
    expect(await tokens.get('k')).toBe('token value')
    expect(await peers.get('k')).toBe('peer value')

    const tokenEntries: Array<[string, string]> = []
    for await (const e of tokens.iterator()) tokenEntries.push(e)
    expect(tokenEntries).toEqual([['k', 'token value']])

    await peers.clear()
    expect(await peers.get('k')).toBeUndefined()
    expect(await tokens.get('k')).toBe('token value')
    // The schema version lives in its own sublevel and survives clearing others.
    expect(await store.schemaVersion()).toBe(SCHEMA_VERSION)
  })
})
