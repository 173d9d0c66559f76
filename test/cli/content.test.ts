/**
 * Content sync's operator contract, pinned on real `bin/edgelink` processes:
 * `content add|ls|rm|get`, the SYNCED column of `hosts`, an upload cut off half way,
 * and a receiving agent killed with SIGKILL at random points of a transfer.
 *
 * - Success: exit 0 with the documented output (`--json`: one JSON document).
 * - Bad input: exit 1, exactly one line on stderr starting `edgelink: `, no stack
 *   trace, nothing on stdout, and nothing changed (every host's catalog, the leader's
 *   upload dir). Usage errors: exit 2.
 *
 * Agents listen on 127.0.0.1 with mDNS off and shortened timers (a `--config` YAML).
 * The file is one story on three agents started once (tests run in order and build on
 * each other's state): h1 leads, h2 and h3 link with tokens. Conditions are polled
 * through the API (the document `content ls --json` prints) with deadlines; the CLI
 * then shows the result.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { CatalogItemView } from '../../src/content/catalog.js'
import type { ContentItemView, HostItemState } from '../../src/content/service.js'
import type { HostRow } from '../../src/group/service.js'
import {
  apiGet,
  failureLine,
  randomFile,
  type Source,
  assertBuilt,
  cleanup,
  cleanupKept,
  keep,
  runCli,
  spawnCli,
  stackLines,
  startAgent,
  tempDataDir,
  waitFor,
  withDeadline,
  type AgentProcess,
  type CliResult
} from '../helpers/cli.js'

type Name = 'h1' | 'h2' | 'h3'
const NAMES: Name[] = ['h1', 'h2', 'h3']
const MiB = 1024 * 1024
/** A refused command exits at once; seconds of slack for a loaded machine. */
const REFUSAL_MS = 10_000

const agents = {} as Record<Name, AgentProcess>
/** Source files, their copies and the agents' config files. */
let work = ''

/** Small files the story adds, gets and removes. */
const files = {} as Record<'img' | 'def' | 'follower', Source>
/** What `content add --json` printed for the first file. */
let added: CatalogItemView | undefined

function configFor (name: Name): string {
  const path = join(work, `${name}.yaml`)
  writeFileSync(path, [
    'status:',
    '  interval: 1s',
    '  probeInterval: 200ms',
    '  suspectAfter: 1s',
    '  downAfter: 2s',
    '  antiEntropyInterval: 1s',
    // A restarted host is dialled again promptly, and pulls what it missed.
    'group:',
    '  reconnectInterval: 500ms',
    '  antiEntropyInterval: 1s',
    ''
  ].join('\n'))
  return path
}

async function start (name: Name, dataDir?: string): Promise<AgentProcess> {
  const a = await startAgent(dataDir ?? tempDataDir('el-cnt-'), ['--hostname', name, '--config', join(work, `${name}.yaml`)])
  keep(a)
  agents[name] = a
  return a
}


function fileDigest (path: string): string {
  return 'sha256:' + createHash('sha256').update(readFileSync(path)).digest('hex')
}

beforeAll(async () => {
  assertBuilt()
  work = mkdtempSync(join(tmpdir(), 'el-cnt-work-'))
  for (const n of NAMES) configFor(n)
  // Sizes that are not a whole number of 1 MiB chunks: the short last chunk is exercised.
  files.img = randomFile(work, 'img.raw', 3 * MiB + 12_345)
  files.def = randomFile(work, 'cluster.yaml', 200_001)
  files.follower = randomFile(work, 'from-follower.bin', 2 * MiB)
  await Promise.all(NAMES.map(async n => await start(n)))
  for (const n of ['h2', 'h3'] as const) {
    const token = okJson<{ token: string }>(await el(agents.h1, ['token', 'create', '--json'])).token
    const res = await el(agents[n], ['link', token])
    expect(res.code, res.stderr).toBe(0)
  }
  await waitFor(async () => {
    for (const n of NAMES) if ((await api<HostRow[]>(agents[n], '/api/v1/hosts')).length !== 3) return false
    return true
  }, 'every member to list 3 hosts', 20_000)
})
afterEach(async () => { await cleanup() })
afterAll(async () => {
  await cleanupKept()
  if (work !== '') rmSync(work, { recursive: true, force: true })
})

// ---- helpers ------------------------------------------------------------------

/** `edgelink ARGS --data-dir <agent's dir>`. */
async function el (a: AgentProcess, args: string[], timeoutMs?: number): Promise<CliResult> {
  return await runCli([...args, '--data-dir', a.dataDir], { timeoutMs })
}

/**
 * Run an upload the agent refuses; `hung` when the command had not exited `REFUSAL_MS`
 * after it started (it is then killed, and its output so far returned).
 */
async function refusedUpload (a: AgentProcess, args: string[]): Promise<CliResult & { hung: boolean }> {
  const s = spawnCli([...args, '--data-dir', a.dataDir])
  s.proc.stdin?.end()
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>(resolve => { timer = setTimeout(() => { resolve('late') }, REFUSAL_MS) })
  const first = await Promise.race([s.exited, late])
  clearTimeout(timer)
  if (first !== 'late') return { ...first, hung: false }
  s.proc.kill('SIGKILL')
  return { ...(await s.exited), hung: true }
}

/** Exit 0 and stdout is exactly one JSON document. */
function okJson<T> (res: CliResult): T {
  expect(res.code, `stdout: ${res.stdout}\nstderr: ${res.stderr}`).toBe(0)
  expect(res.stdout.trim()).not.toBe('')
  return JSON.parse(res.stdout) as T
}


async function api<T> (a: AgentProcess, path: string): Promise<T> {
  const res = await apiGet(a.dataDir, path)
  expect(res.status, `${path}: ${JSON.stringify(res.body)}`).toBe(200)
  return res.body as T
}

async function catalog (a: AgentProcess): Promise<ContentItemView[]> {
  return await api<ContentItemView[]>(a, '/api/v1/content')
}

/** `name`'s own state of `digest` as `name` reports it (undefined: not in its catalog). */
async function ownState (name: Name, digest: string): Promise<HostItemState | undefined> {
  const item = (await catalog(agents[name])).find(i => i.digest === digest)
  return item?.hosts.find(h => h.peerId === agents[name].peerId)
}

function blobDir (a: AgentProcess, sub: 'sha256' | 'partial' | 'tmp'): string {
  return join(a.dataDir, 'blobs', sub)
}

function hexOf (digest: string): string {
  return digest.slice('sha256:'.length)
}

/** Bytes in the files of a directory (0 when it is empty or gone). */
function bytesIn (dir: string): number {
  let n = 0
  try {
    for (const f of readdirSync(dir)) {
      try { n += statSync(join(dir, f)).size } catch { /* deleted meanwhile */ }
    }
  } catch { /* no dir */ }
  return n
}

/** Every host lists exactly `digests` and shows every host complete for each. */
async function allComplete (digests: string[]): Promise<boolean> {
  for (const n of NAMES) {
    const items = await catalog(agents[n])
    if (items.map(i => i.digest).sort().join() !== [...digests].sort().join()) return false
    if (items.some(i => i.complete !== 3 || i.hosts.some(h => h.state !== 'complete'))) return false
  }
  return true
}

interface Unchanged { catalogs: string[], tmp: string[] }

/** Every host's catalog (digests) and the leader's upload dir, to check a refusal changed nothing. */
async function snapshot (): Promise<Unchanged> {
  return {
    catalogs: await Promise.all(NAMES.map(async n => (await catalog(agents[n])).map(i => i.digest).sort().join())),
    tmp: readdirSync(blobDir(agents.h1, 'tmp'))
  }
}

async function expectUnchanged (before: Unchanged): Promise<void> {
  expect(await snapshot()).toEqual(before)
  for (const n of NAMES) expect(agents[n].proc.exitCode, `${n} exited`).toBeNull()
}

interface Traffic { served: Record<string, number>, received: Record<string, number>, faults: Record<string, number> }

async function traffic (a: AgentProcess): Promise<Traffic> {
  return await api<Traffic>(a, '/api/v1/content/traffic')
}

/** Bytes received from every member since the agent started. */
function received (t: Traffic): number {
  return Object.values(t.received).reduce((a, b) => a + b, 0)
}

function lines (text: string): string[] {
  return text.split('\n').filter(l => l.trim() !== '')
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

// ---- add, ls, hosts, get --------------------------------------------------------

describe('edgelink content add, ls and get', () => {
  it('content add FILE --json on the leader prints the catalog record', async () => {
    const item = okJson<CatalogItemView>(await el(agents.h1, ['content', 'add', files.img.path, '--kind', 'provider-image', '--json']))
    expect(item).toEqual({
      digest: files.img.digest,
      name: 'img.raw',
      kind: 'provider-image',
      size: files.img.size,
      chunkSize: MiB,
      manifestDigest: expect.stringMatching(/^[0-9a-f]{64}$/),
      addedAt: expect.any(String)
    })
    expect(Date.now() - Date.parse(item.addedAt)).toBeLessThan(60_000)
    added = item
    // The leader holds it at once, by digest, with the source's bytes.
    expect(fileDigest(join(blobDir(agents.h1, 'sha256'), hexOf(item.digest)))).toBe(files.img.digest)
    expect(readdirSync(blobDir(agents.h1, 'tmp'))).toEqual([])
  })

  it('content ls --json on a follower shows every host complete', async () => {
    await waitFor(async () => await allComplete([files.img.digest]), 'every host to show img.raw complete everywhere', 30_000)
    const items = okJson<ContentItemView[]>(await el(agents.h2, ['content', 'ls', '--json']))
    expect(items).toHaveLength(1)
    expect(items[0]).toMatchObject({ ...added, complete: 3 })
    expect(items[0].hosts.map(h => `${h.hostname} ${h.peerId} ${h.state} ${h.have}/${h.total} ${h.percent}`).sort())
      .toEqual(NAMES.map(n => `${n} ${agents[n].peerId} complete 4/4 100`).sort())
    for (const n of ['h2', 'h3'] as const) expect(fileDigest(join(blobDir(agents[n], 'sha256'), hexOf(files.img.digest))), n).toBe(files.img.digest)
  })

  it('content ls lists the item for people', async () => {
    const res = await el(agents.h3, ['content', 'ls'])
    expect(res.code, res.stderr).toBe(0)
    const out = lines(res.stdout)
    expect(out).toHaveLength(2)
    expect(out[0]).toMatch(/^DIGEST\s+NAME\s+KIND\s+SIZE\s+HOSTS$/)
    expect(out[1]).toMatch(new RegExp(`^${files.img.digest.slice(0, 19)}…\\s+img\\.raw\\s+provider-image\\s+3\\.0 MiB\\s+`))
    for (const n of NAMES) expect(out[1]).toContain(`${n}: complete`)
  })

  it('hosts shows SYNCED 1/1 for every host, on every host', async () => {
    for (const on of NAMES) {
      const res = await el(agents[on], ['hosts'])
      expect(res.code, res.stderr).toBe(0)
      const out = lines(res.stdout)
      const header = out[0]
      expect(header).toMatch(/\bSYNCED\b/)
      const col = header.indexOf('SYNCED')
      expect(out).toHaveLength(4)
      for (const row of out.slice(1)) expect(row.slice(col).split(/\s+/)[0], `${on}: ${row}`).toBe('1/1')
    }
  })

  it('content add FILE --wait --json returns only when every host has the file', async () => {
    const res = await el(agents.h1, ['content', 'add', files.def.path, '--name', 'edge-cluster', '--kind', 'cluster-definition', '--wait', '--json'], 60_000)
    // Sampled the moment the command returned: every follower already holds the verified file.
    for (const n of ['h2', 'h3'] as const) {
      const held = join(blobDir(agents[n], 'sha256'), hexOf(files.def.digest))
      expect(existsSync(held), `${n} holds the file when --wait returns`).toBe(true)
    }
    const item = okJson<ContentItemView>(res)
    expect(item).toMatchObject({ digest: files.def.digest, name: 'edge-cluster', kind: 'cluster-definition', size: files.def.size, complete: 3 })
    expect(item.hosts.map(h => h.state)).toEqual(['complete', 'complete', 'complete'])
    for (const n of ['h2', 'h3'] as const) expect(fileDigest(join(blobDir(agents[n], 'sha256'), hexOf(files.def.digest))), n).toBe(files.def.digest)
    await waitFor(async () => await allComplete([files.img.digest, files.def.digest]), 'every host to show both items complete', 20_000)
  })

  it('content get DIGEST --out F on a follower writes a file identical to the source', async () => {
    const out = join(work, 'img.copy')
    const res = await el(agents.h3, ['content', 'get', files.img.digest, '--out', out])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toBe('Wrote 3.0 MiB to ' + out + '\n')
    expect(readFileSync(out).equals(readFileSync(files.img.path))).toBe(true)
    const out2 = join(work, 'def.copy')
    const r = okJson<{ digest: string, out: string, size: number }>(await el(agents.h2, ['content', 'get', files.def.digest, '--out', out2, '--json']))
    expect(r).toEqual({ digest: files.def.digest, out: out2, size: files.def.size })
    expect(readFileSync(out2).equals(readFileSync(files.def.path))).toBe(true)
    expect(readdirSync(work).filter(f => f.includes('.part-'))).toEqual([])
  })

  it('content get of an unknown digest exits 1 and writes nothing', async () => {
    const out = join(work, 'unknown.copy')
    const line = failureLine(await el(agents.h2, ['content', 'get', 'sha256:' + 'ab'.repeat(32), '--out', out]))
    expect(line).toContain('sha256:' + 'ab'.repeat(32))
    failureLine(await el(agents.h2, ['content', 'get', 'sha256:zz', '--out', out]))
    expect(existsSync(out)).toBe(false)
    expect(readdirSync(work).filter(f => f.startsWith('unknown.copy'))).toEqual([])
  })

  it('content get --out into a missing directory exits 1', async () => {
    const out = join(work, 'no-such-dir', 'img.copy')
    const line = failureLine(await el(agents.h2, ['content', 'get', files.img.digest, '--out', out]))
    expect(line).toMatch(/no-such-dir|ENOENT/)
    expect(existsSync(join(work, 'no-such-dir'))).toBe(false)
  })
})

// ---- refusals -----------------------------------------------------------------------

describe('refused content commands exit 1 (2 for usage) and change nothing', () => {
  // A refused upload must end the command at once, whatever the file's size: the CLI
  // stops sending when the agent answers (2 MiB is more than the socket buffers hold).
  it('content add on a follower: "only the leader", and the command exits promptly', async () => {
    const before = await snapshot()
    const res = await refusedUpload(agents.h2, ['content', 'add', files.follower.path])
    expect(res.stderr).toMatch(/^edgelink: only the leader \(12D3KooW\w+\) can upload content/)
    expect(res.stderr).toContain(agents.h1.peerId)
    await expectUnchanged(before)
    expect(readdirSync(blobDir(agents.h2, 'tmp'))).toEqual([])
    expect(existsSync(join(blobDir(agents.h2, 'sha256'), hexOf(files.follower.digest)))).toBe(false)
    expect(res.hung, `the CLI was still running ${REFUSAL_MS} ms after the agent refused the upload`).toBe(false)
    failureLine(res)
  })

  it('content add /nonexistent', async () => {
    const before = await snapshot()
    expect(failureLine(await el(agents.h1, ['content', 'add', '/nonexistent']))).toMatch(/nonexistent/)
    await expectUnchanged(before)
  })

  it('content add DIR/', async () => {
    const before = await snapshot()
    const dir = join(work, 'a-dir')
    mkdirSync(dir, { recursive: true })
    expect(failureLine(await el(agents.h1, ['content', 'add', dir + '/']))).toMatch(/not a regular file/)
    await expectUnchanged(before)
  })

  it('content add --kind bogus is a usage error (exit 2)', async () => {
    const before = await snapshot()
    const res = await el(agents.h1, ['content', 'add', files.follower.path, '--kind', 'bogus'])
    expect(res.code, res.stderr).toBe(2)
    expect(res.stderr).toMatch(/--kind/)
    expect(stackLines(res.stderr)).toEqual([])
    expect(res.stdout).toBe('')
    await expectUnchanged(before)
  })

  it('content add --name with a slash, and the command exits promptly', async () => {
    const before = await snapshot()
    const res = await refusedUpload(agents.h1, ['content', 'add', files.follower.path, '--name', 'a/b'])
    expect(res.stderr).toMatch(/^edgelink: name must be .* without slashes/)
    await expectUnchanged(before)
    expect(res.hung, `the CLI was still running ${REFUSAL_MS} ms after the agent refused the upload`).toBe(false)
    failureLine(res)
  })

  it('content rm sha256:zz', async () => {
    const before = await snapshot()
    expect(failureLine(await el(agents.h1, ['content', 'rm', 'sha256:zz']))).toMatch(/not a digest/)
    await expectUnchanged(before)
  })

  it('content rm of a digest that is not in the catalog', async () => {
    const before = await snapshot()
    const unknown = 'sha256:' + 'cd'.repeat(32)
    expect(failureLine(await el(agents.h1, ['content', 'rm', unknown]))).toContain(unknown)
    await expectUnchanged(before)
  })

  it('content rm on a follower: "only the leader"', async () => {
    const before = await snapshot()
    expect(failureLine(await el(agents.h3, ['content', 'rm', files.img.digest]))).toMatch(/only the leader/)
    await expectUnchanged(before)
  })
})

// ---- rm ---------------------------------------------------------------------------

describe('edgelink content rm', () => {
  it('content rm DIGEST on the leader: every host deletes the blob', async () => {
    const res = await el(agents.h1, ['content', 'rm', files.img.digest])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toBe(`Removed ${files.img.digest}; every host deletes it.\n`)
    const r = okJson<{ removed: string }>(await el(agents.h1, ['content', 'rm', files.def.digest, '--json']))
    expect(r).toEqual({ removed: files.def.digest })
    await waitFor(async () => {
      for (const n of NAMES) {
        if ((await catalog(agents[n])).length !== 0) return false
        if (readdirSync(blobDir(agents[n], 'sha256')).length !== 0 || readdirSync(blobDir(agents[n], 'partial')).length !== 0) return false
      }
      return true
    }, 'every host to drop both items and delete their files', 20_000)
    const ls = await el(agents.h2, ['content', 'ls'])
    expect(ls.code, ls.stderr).toBe(0)
    expect(ls.stdout).toMatch(/^No content\./)
    expect(okJson<unknown[]>(await el(agents.h3, ['content', 'ls', '--json']))).toEqual([])
    // The removed file can no longer be copied out.
    failureLine(await el(agents.h2, ['content', 'get', files.img.digest, '--out', join(work, 'gone.copy')]))
  })
})

// ---- interrupted transfers -------------------------------------------------------------

describe('interrupted transfers', () => {
  it('an upload killed half way leaves no catalog entry and an empty tmp/, and the agent keeps running', async () => {
    const big = randomFile(work, 'big-upload.bin', 256 * MiB)
    const tmp = blobDir(agents.h1, 'tmp')
    const before = await snapshot()
    const upload = spawnCli(['content', 'add', big.path, '--data-dir', agents.h1.dataDir])
    upload.proc.stdin?.end()
    // Some bytes have reached the agent (not all: the CLI is still running).
    let seen = 0
    await waitFor(() => {
      seen = bytesIn(tmp)
      return seen > 0 || upload.proc.exitCode !== null
    }, 'the upload to reach the agent', 30_000)
    upload.proc.kill('SIGKILL')
    const res = await withDeadline(upload, 10_000, 'the killed upload')
    expect(res.signal, `the upload finished before it was killed (stdout: ${res.stdout})`).toBe('SIGKILL')
    expect(seen).toBeGreaterThan(0)
    expect(seen).toBeLessThan(big.size)
    await waitFor(() => readdirSync(tmp).length === 0, 'the leader to delete the interrupted upload', 10_000)
    expect(agents.h1.proc.exitCode).toBeNull()
    expect((await apiGet(agents.h1.dataDir, '/api/v1/status')).status).toBe(200)
    await expectUnchanged(before)
    expect(existsSync(join(blobDir(agents.h1, 'sha256'), hexOf(big.digest)))).toBe(false)
    expect(readdirSync(blobDir(agents.h1, 'sha256'))).toEqual([])
    rmSync(big.path, { force: true })
  }, 120_000)

  it('a receiving agent killed with SIGKILL at random points resumes after each restart and ends with the right digest', async () => {
    const file = randomFile(work, 'resume.bin', 96 * MiB)
    const total = 96 // chunks of 1 MiB
    const item = okJson<CatalogItemView>(await el(agents.h1, ['content', 'add', file.path, '--json'], 60_000))
    expect(item.digest).toBe(file.digest)
    /** Per round: the kill point, and a lower bound on the bytes h3 still held after the restart (its `have` less what it fetched since). */
    const rounds: Array<{ target: number, killedAt: number, have: number, resumedBytes: number }> = []
    let resumedBytes = 0
    for (let round = 0; round < 3; round++) {
      // A random point 20-35% past what h3 held at its restart (chunks are made durable every
      // 16 chunks or second, so most rounds kill after some were), at most 85%: polled from
      // its own `content ls --json`.
      const floor = Math.floor(Math.max(0, resumedBytes) * 100 / file.size)
      const target = Math.min(85, floor + 20 + Math.floor(Math.random() * 16))
      let last: HostItemState | undefined
      await waitFor(async () => {
        last = await ownState('h3', item.digest).catch(() => undefined)
        return last != null && (last.state === 'complete' || last.percent >= target)
      }, `h3 to reach ${target}% in round ${round + 1}`, 60_000)
      expect(last?.state, `h3 completed before the kill of round ${round + 1} (${target}%)`).not.toBe('complete')
      agents.h3.proc.kill('SIGKILL')
      const dead = await withDeadline(agents.h3, 10_000, 'h3 after SIGKILL')
      expect(dead.signal).toBe('SIGKILL')
      // Restart on the same data dir: what it holds now is what was durable at the kill,
      // plus what it fetched since (counted in its traffic, read after the state).
      await start('h3', agents.h3.dataDir)
      const after = await ownState('h3', item.digest)
      const since = received(await traffic(agents.h3))
      expect(after, 'h3 forgot the item across the restart').toBeDefined()
      expect(after?.total).toBe(total)
      resumedBytes = (after?.have ?? 0) * MiB - since
      rounds.push({ target, killedAt: last?.have ?? 0, have: after?.have ?? 0, resumedBytes })
      if (after?.state === 'complete') break
      // A random pause before the next target is chosen.
      await sleep(Math.floor(Math.random() * 300))
    }
    expect(rounds.length, JSON.stringify(rounds)).toBeGreaterThanOrEqual(2)
    expect(rounds.some(r => r.resumedBytes > 0), `h3 never resumed from its bitmap: ${JSON.stringify(rounds)}`).toBe(true)
    await waitFor(async () => (await ownState('h3', item.digest))?.state === 'complete', 'h3 to complete the file after the last restart', 60_000)
    // Since the last restart h3 fetched only what it lacked, not the whole file again.
    const t = await traffic(agents.h3)
    expect(received(t), JSON.stringify(rounds)).toBeLessThan(file.size)
    expect(received(t), JSON.stringify(rounds)).toBeLessThanOrEqual(file.size - Math.max(0, resumedBytes))
    expect(t.faults).toEqual({})
    const out = join(work, 'resume.copy')
    const got = await el(agents.h3, ['content', 'get', item.digest, '--out', out], 60_000)
    expect(got.code, got.stderr).toBe(0)
    expect(fileDigest(out)).toBe(file.digest)
    expect(readdirSync(blobDir(agents.h3, 'partial'))).toEqual([])
    // The group converges: every host complete, and h2 (syncing alongside) has the same bytes.
    await waitFor(async () => await allComplete([item.digest]), 'every host to show the file complete', 60_000)
    expect(fileDigest(join(blobDir(agents.h2, 'sha256'), hexOf(item.digest)))).toBe(file.digest)
    rmSync(out, { force: true })
    rmSync(file.path, { force: true })
  }, 180_000)
})
