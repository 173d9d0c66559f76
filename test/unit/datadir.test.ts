import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { homedir, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { dataDirPaths, prepareDataDir, resolveDataDir } from '../../src/agent/datadir.js'

const base = mkdtempSync(join(tmpdir(), 'el-dd-'))
afterAll(() => { rmSync(base, { recursive: true, force: true }) })

/** Longest data dir path whose repl.sock still fits a unix socket address (107 bytes + NUL). */
const MAX_DATA_DIR = 107 - '/repl.sock'.length

/** A path under `base` of exactly `length` characters. */
function pathOfLength (length: number): string {
  const prefix = `${base}/`
  if (length <= prefix.length) throw new Error('base dir is too long for this test')
  return prefix + 'd'.repeat(length - prefix.length)
}

function thrownBy (fn: () => unknown): Error & { code?: string } {
  try {
    fn()
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('expected an error')
}

describe('data dir', () => {
  it('is created (with missing parents) with mode 0700', () => {
    const root = join(base, 'new', 'nested')
    const { paths, tightened } = prepareDataDir(root)
    expect(statSync(root).isDirectory()).toBe(true)
    expect(statSync(root).mode & 0o777).toBe(0o700)
    expect(tightened).toBe(false)
    expect(paths).toEqual(dataDirPaths(root))
  })

  it('an existing dir readable by others is tightened to 0700', () => {
    const root = join(base, 'wide')
    mkdirSync(root)
    chmodSync(root, 0o755)
    expect(prepareDataDir(root).tightened).toBe(true)
    expect(statSync(root).mode & 0o777).toBe(0o700)
  })

  it('a shared dir given by mistake (/tmp-like: 1777, others\' files) is refused and its mode left alone; an old data dir of 0755 is tightened', () => {
    const shared = join(base, 'shared')
    mkdirSync(shared)
    chmodSync(shared, 0o1777)
    writeFileSync(join(shared, 'someone-elses.txt'), 'x')
    const err = thrownBy(() => prepareDataDir(shared))
    expect(err.code).toBe('DATA_DIR_INVALID')
    expect(err.message).toBe(`data dir ${shared} is open to other users (mode 1777) and holds files that are not edgelink's (someone-elses.txt); give the agent a directory of its own, e.g. --data-dir ~/.edgelink`)
    // Before the fix it became 0700 (the sticky bit gone, other users locked out).
    expect(statSync(shared).mode & 0o7777).toBe(0o1777)

    const old = join(base, 'old-data-dir')
    mkdirSync(join(old, 'store'), { recursive: true })
    writeFileSync(join(old, 'identity.key'), 'k', { mode: 0o600 })
    writeFileSync(join(old, 'audit.log.1'), '')
    chmodSync(old, 0o755)
    expect(prepareDataDir(old).tightened).toBe(true)
    expect(statSync(old).mode & 0o777).toBe(0o700)
  })

  it('an existing 0700 dir is left as it is', () => {
    const root = join(base, 'tight')
    mkdirSync(root, { mode: 0o700 })
    expect(prepareDataDir(root).tightened).toBe(false)
  })

  it('a path too long for its unix sockets is rejected with the limit and a hint, before anything is created', () => {
    const root = pathOfLength(MAX_DATA_DIR + 1)
    const err = thrownBy(() => prepareDataDir(root))
    expect(err.code).toBe('DATA_DIR_INVALID')
    expect(err.message).toContain(root)
    expect(err.message).toMatch(/too long/)
    expect(err.message).toContain(String(MAX_DATA_DIR))
    expect(err.message).toContain('--data-dir')
    expect(existsSync(root)).toBe(false)
  })

  it('a path at exactly the limit is accepted and its repl socket can be bound', async () => {
    const root = pathOfLength(MAX_DATA_DIR)
    const { paths } = prepareDataDir(root)
    const server = createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(paths.replSocket, resolve)
    })
    await new Promise<void>(resolve => server.close(() => { resolve() }))
  })

  it('a path that is a file is rejected as not a directory', () => {
    const file = join(base, 'a-file')
    writeFileSync(file, 'x')
    const err = thrownBy(() => prepareDataDir(file))
    expect(err.code).toBe('DATA_DIR_INVALID')
    expect(err.message).toMatch(/not a directory/)
  })

  it('a path under a file cannot be created and says to choose another --data-dir', () => {
    const file = join(base, 'blocker')
    writeFileSync(file, 'x')
    const err = thrownBy(() => prepareDataDir(join(file, 'sub')))
    expect(err.code).toBe('DATA_DIR_INVALID')
    expect(err.message).toMatch(/cannot create data dir/)
    expect(err.message).toContain('--data-dir')
  })

  it('is chosen from the flag, else $EDGELINK_HOME, else ~/.edgelink, always absolute', () => {
    expect(resolveDataDir('rel/dir', { EDGELINK_HOME: '/elsewhere' })).toBe(resolve('rel/dir'))
    expect(resolveDataDir(undefined, { EDGELINK_HOME: '/srv/edgelink' })).toBe('/srv/edgelink')
    expect(resolveDataDir(undefined, {})).toBe(join(homedir(), '.edgelink'))
  })

  it('an empty --data-dir is a usage error (it meant the current directory); an empty $EDGELINK_HOME counts as unset', () => {
    for (const flag of ['', '  ']) {
      const err = thrownBy(() => resolveDataDir(flag, { EDGELINK_HOME: '/srv/edgelink' }))
      expect(err.code).toBe('USAGE')
      expect(err.message).toBe('--data-dir is empty; give a directory, e.g. --data-dir ~/.edgelink')
    }
    expect(resolveDataDir(undefined, { EDGELINK_HOME: '' })).toBe(join(homedir(), '.edgelink'))
  })
})
