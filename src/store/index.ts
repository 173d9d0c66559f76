/**
 * The agent's durable state: one LevelDB database under the data dir, with a
 * sublevel per concern and a schema version. LevelDB's LOCK file is an OS lock, so
 * it is also what keeps a second agent off the same data dir (and it is released by
 * the kernel if the agent crashes). Large files never go in here (see content/).
 */
import { readFileSync } from 'node:fs'
import { Level } from 'level'
import { DataDirLockedError, StoreError } from '../errors.js'

/** Schema version this code reads and writes. Bump it with a migration in `MIGRATIONS`. */
export const SCHEMA_VERSION = 1

/** Names of the sublevels; one per concern so keys never collide. */
export const SUBLEVELS = ['meta', 'group', 'tokens', 'peers', 'status', 'settings', 'content', 'catalog', 'links'] as const
export type SublevelName = typeof SUBLEVELS[number]

type Migration = (store: Store) => Promise<void>
/** MIGRATIONS[n] moves a store from schema n to n + 1. */
const MIGRATIONS: Record<number, Migration> = {}

/**
 * `sync: true` makes LevelDB fsync its log before the write resolves: for records whose
 * write is acknowledged to another host (the roster), so an acknowledgement survives a
 * power cut, not only a crash. It cost 0.17 ms median here (0.06 ms without).
 */
export interface WriteOptions { sync?: boolean }

/** The part of a LevelDB sublevel the services use, with JSON values of type V. */
export interface Sublevel<V> {
  get: (key: string) => Promise<V | undefined>
  put: (key: string, value: V, opts?: WriteOptions) => Promise<void>
  del: (key: string, opts?: WriteOptions) => Promise<void>
  batch: (ops: Array<{ type: 'put', key: string, value: V } | { type: 'del', key: string }>, opts?: WriteOptions) => Promise<void>
  iterator: (opts?: { gt?: string, gte?: string, lt?: string, lte?: string, limit?: number, reverse?: boolean }) => AsyncIterable<[string, V]>
  values: (opts?: { gt?: string, gte?: string, lt?: string, lte?: string, limit?: number }) => AsyncIterable<V>
  clear: () => Promise<void>
}

export interface OpenStoreOptions {
  /** Directory of the LevelDB database. */
  location: string
  /** Pid file of the agent, read to name the holder of the lock in the error. */
  pidFile?: string
}

export class Store {
  readonly db: Level<string, unknown>
  readonly location: string

  private constructor (db: Level<string, unknown>, location: string) {
    this.db = db
    this.location = location
  }

  static async open (opts: OpenStoreOptions): Promise<Store> {
    const db = new Level<string, unknown>(opts.location, { valueEncoding: 'json' })
    try {
      await db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') {
        const holder = describeHolder(opts.pidFile)
        throw new DataDirLockedError(`another edgelink agent${holder} is already using data dir ${opts.location.replace(/\/store$/, '')}; stop it first, or start this one with another --data-dir`)
      }
      if (cause?.code === 'LEVEL_CORRUPTION') {
        throw new StoreError(`the store in ${opts.location} is corrupt; restore the data dir from a backup (the agent did not change it)`, { cause: err })
      }
      throw new StoreError(`cannot open the store in ${opts.location}: ${(cause as Error | undefined)?.message ?? (err as Error).message}`, { cause: err })
    }
    const store = new Store(db, opts.location)
    try {
      await store.checkSchema()
    } catch (err) {
      await db.close()
      throw err
    }
    return store
  }

  /** A typed sublevel with JSON values. */
  sublevel<V> (name: SublevelName): Sublevel<V> {
    return this.db.sublevel<string, V>(name, { valueEncoding: 'json' }) as unknown as Sublevel<V>
  }

  async schemaVersion (): Promise<number | undefined> {
    return await this.sublevel<number>('meta').get('schemaVersion')
  }

  private async checkSchema (): Promise<void> {
    const meta = this.sublevel<number>('meta')
    let version: unknown = await meta.get('schemaVersion')
    if (version === undefined) {
      await meta.put('schemaVersion', SCHEMA_VERSION)
      return
    }
    if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) {
      throw new StoreError(`the store in ${this.location} has an unreadable schema version (${JSON.stringify(version)}); restore the data dir from a backup`)
    }
    if (version > SCHEMA_VERSION) {
      throw new StoreError(`the store in ${this.location} was written by a newer edgelink (schema ${version}; this agent reads up to ${SCHEMA_VERSION}); run the newer agent`)
    }
    while (version < SCHEMA_VERSION) {
      const migrate = MIGRATIONS[version]
      if (migrate == null) throw new StoreError(`no migration from store schema ${version} to ${version + 1}`)
      await migrate(this)
      version++
      await meta.put('schemaVersion', version)
    }
  }

  async close (): Promise<void> {
    if (this.db.status === 'open' || this.db.status === 'opening') await this.db.close()
  }
}

function describeHolder (pidFile?: string): string {
  if (pidFile == null) return ''
  try {
    const info = JSON.parse(readFileSync(pidFile, 'utf8')) as { pid?: number, startedAt?: string }
    if (typeof info.pid === 'number') return ` (pid ${info.pid}${info.startedAt != null ? `, started ${info.startedAt}` : ''})`
  } catch {
    // The pid file is informative only; the LevelDB lock is the real guard.
  }
  return ''
}
