/**
 * Regressions from a review of the content operator path (commit 074d656), on real
 * `bin/edgelink` processes:
 *
 * - `content add` of a file that shrinks during the upload ends (exit 1, "became
 *   shorter", nothing added); of one that grows, sends the bytes it announced and warns
 * - `content get --out` a directory (or a path ending in `/`) is a usage error before
 *   anything is downloaded; a stored copy that is corrupted or short is refused at once,
 *   and no output or temporary file is left
 * - a stalled upload does not hold up the agent's stop
 * - names with control or invisible format characters, or blank, are refused; `content
 *   ls` prints such characters escaped when a catalog carries them anyway
 * - `content add --wait` says which host it waits for when one is down
 * - `content get` and `content add` end (exit 1, nothing written or added) when the agent
 *   stops sending or taking bytes for EDGELINK_API_TIMEOUT; they used to wait for ever
 *
 * Races are made deterministic by stopping the leader (SIGSTOP) while the source file
 * changes: the upload has begun (the leader's blobs/tmp/ holds it) and cannot end (the
 * leader answers only once the file is out of tmp/).
 * The API side (CATALOG_FULL, names and repeated query parameters) is in
 * test/unit/content-review.test.ts.
 */
import { createHash, randomBytes } from 'node:crypto'
import { appendFileSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { createServer } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { CatalogItemView } from '../../src/content/catalog.js'
import type { ContentItemView } from '../../src/content/service.js'
import {
  apiGet,
  failureLine,
  randomFile,
  type Source,
  assertBuilt,
  cleanEnv,
  cleanup,
  cleanupKept,
  keep,
  runCli,
  spawnCli,
  stackLines,
  startAgent,
  stopAgent,
  tempDataDir,
  withDeadline,
  type AgentProcess,
  type CliResult
} from '../helpers/cli.js'
import { waitFor } from '../helpers/wait.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

/** The leader of a group of one (h2 links in the last test). */
let h1: AgentProcess
/** Source files, copies, configs. */
let work = ''
let config = ''
/** A small file already in the catalog, for `content get`. */
let small: Source


beforeAll(async () => {
  assertBuilt()
  work = mkdtempSync(join(tmpdir(), 'el-crv-work-'))
  config = join(work, 'agent.yaml')
  writeFileSync(config, [
    'status:',
    '  interval: 1s',
    '  probeInterval: 200ms',
    '  suspectAfter: 1s',
    '  downAfter: 2s',
    '  antiEntropyInterval: 1s',
    'group:',
    '  reconnectInterval: 500ms',
    '  antiEntropyInterval: 1s',
    ''
  ].join('\n'))
  h1 = await startAgent(tempDataDir('el-crv-'), ['--hostname', 'h1', '--config', config])
  keep(h1)
  // A token makes h1 the leader of a group of one.
  expect((await el(h1, ['token', 'create', '--json'])).code).toBe(0)
  small = randomFile(work, 'small.bin', 300_001)
  const item = okJson<CatalogItemView>(await el(h1, ['content', 'add', small.path, '--json']))
  expect(item.digest).toBe(small.digest)
})
afterEach(async () => { await cleanup() })
afterAll(async () => {
  await cleanupKept()
  if (work !== '') rmSync(work, { recursive: true, force: true })
})

// ---- helpers ------------------------------------------------------------------

async function el (a: AgentProcess, args: string[], timeoutMs?: number): Promise<CliResult> {
  return await runCli([...args, '--data-dir', a.dataDir], { timeoutMs })
}

function okJson<T> (res: CliResult): T {
  expect(res.code, `stdout: ${res.stdout}\nstderr: ${res.stderr}`).toBe(0)
  return JSON.parse(res.stdout) as T
}



async function catalog (a: AgentProcess): Promise<ContentItemView[]> {
  const res = await apiGet(a.dataDir, '/api/v1/content')
  expect(res.status).toBe(200)
  return res.body as ContentItemView[]
}

async function digests (a: AgentProcess): Promise<string[]> {
  return (await catalog(a)).map(i => i.digest).sort()
}

function blobDir (a: AgentProcess, sub: 'sha256' | 'tmp'): string {
  return join(a.dataDir, 'blobs', sub)
}

function hexOf (digest: string): string {
  return digest.slice('sha256:'.length)
}

/** Every `*.part-*` file under `dir`. */
function partFiles (dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).filter(f => f.includes('.part-'))
}

/** The process's state letter from /proc (T: stopped). */
function procState (pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
}

/**
 * Run `change` while the agent is stopped (SIGSTOP) with an upload still in its tmp/:
 * the upload has begun, and the CLI cannot have had its answer (the agent answers only
 * once the file is out of tmp/).
 */
async function whileUploadHeld (a: AgentProcess, change: () => void): Promise<void> {
  const pid = a.proc.pid ?? 0
  a.proc.kill('SIGSTOP')
  try {
    await waitFor(() => procState(pid) === 'T', { timeout: 5_000, interval: 1, what: 'the agent to be stopped' })
    expect(readdirSync(blobDir(a, 'tmp')), 'the upload ended before the agent was stopped').not.toEqual([])
    change()
  } finally {
    a.proc.kill('SIGCONT')
  }
}

/** Start `content add ARGS` on h1 and wait until its upload is in h1's tmp/. */
async function uploadStarted (args: string[], env?: NodeJS.ProcessEnv): Promise<ReturnType<typeof spawnCli>> {
  const s = spawnCli(['content', 'add', ...args, '--data-dir', h1.dataDir], { env })
  s.proc.stdin?.end()
  await waitFor(() => readdirSync(blobDir(h1, 'tmp')).length > 0 || s.proc.exitCode !== null,
    { timeout: 20_000, interval: 2, what: 'the upload to reach the leader\'s tmp/' })
  expect(s.proc.exitCode, `content add ended before its upload was seen: ${s.stderr()}`).toBeNull()
  return s
}

// ---- content add ------------------------------------------------------------------

describe('content add of a file that changes during the upload', () => {
  it('a file that shrinks: exit 1 "became shorter" (no hang), nothing added, the leader\'s tmp/ empty', async () => {
    // Sparse: 1 GiB the CLI cannot have read by the time the agent is stopped.
    const path = join(work, 'shrinks.bin')
    writeFileSync(path, '')
    truncateSync(path, GiB)
    const before = await digests(h1)
    const blobs = readdirSync(blobDir(h1, 'sha256')).sort()
    const s = await uploadStarted([path])
    await whileUploadHeld(h1, () => { truncateSync(path, 5 * MiB) })
    const line = failureLine(await withDeadline(s, 15_000, 'content add of a file that shrank'))
    expect(line).toContain(path)
    expect(line).toMatch(/became shorter while it was being uploaded \(\d+ of 1073741824 bytes read\); nothing was added/)
    await waitFor(() => readdirSync(blobDir(h1, 'tmp')).length === 0, { timeout: 10_000, what: 'the leader to delete the cut-off upload' })
    expect(await digests(h1)).toEqual(before)
    expect(readdirSync(blobDir(h1, 'sha256')).sort()).toEqual(blobs)
    expect(h1.proc.exitCode).toBeNull()
    rmSync(path)
  })

  it('a file that grows: exit 0, the item has the original size and digest, and a warning says the file changed', async () => {
    const src = randomFile(work, 'grows.bin', 128 * MiB)
    const s = await uploadStarted([src.path, '--json'])
    await whileUploadHeld(h1, () => { appendFileSync(src.path, randomBytes(4 * MiB)) })
    const res = await withDeadline(s, 30_000, 'content add of a file that grew')
    const item = okJson<CatalogItemView>(res)
    expect(item).toMatchObject({ digest: src.digest, size: src.size, name: 'grows.bin' })
    expect(res.stderr).toMatch(new RegExp(`^warning: ${src.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} changed while it was being uploaded; the group holds the ${src.size} bytes that were read \\(${src.digest}\\)`))
    expect(stackLines(res.stderr)).toEqual([])
    const listed = (await catalog(h1)).find(i => i.digest === src.digest)
    expect(listed).toMatchObject({ size: src.size, complete: 1 })
    const stored = join(blobDir(h1, 'sha256'), hexOf(src.digest))
    expect(statSync(stored).size).toBe(src.size)
    expect('sha256:' + createHash('sha256').update(readFileSync(stored)).digest('hex')).toBe(src.digest)
    expect(readdirSync(blobDir(h1, 'tmp'))).toEqual([])
    expect((await el(h1, ['content', 'rm', src.digest])).code).toBe(0)
    rmSync(src.path)
  })
})

// ---- content get ------------------------------------------------------------------

describe('content get refuses what it cannot write and copies it cannot trust', () => {
  it('--out an existing directory, and --out sub/: exit 2 naming it, nothing downloaded, no .part file', async () => {
    const dir = join(work, 'outdir')
    mkdirSync(dir)
    const top = readdirSync(work).sort()
    const line = failureLine(await el(h1, ['content', 'get', small.digest, '--out', dir]), 2)
    expect(line).toBe(`edgelink: ${dir} is a directory; give the file to write, e.g. --out ${join(dir, 'FILE')}`)
    expect(readdirSync(dir)).toEqual([])
    expect(readdirSync(work).sort()).toEqual(top)

    const sub = join(work, 'sub') + '/'
    const line2 = failureLine(await el(h1, ['content', 'get', small.digest, '--out', sub]), 2)
    expect(line2).toContain(`${sub} names a directory`)
    expect(existsSync(join(work, 'sub'))).toBe(false)
    expect(readdirSync(work).sort()).toEqual(top)
    expect(partFiles(work)).toEqual([])
  })

  it('a stored copy corrupted in place: "does not match", no output file, no .part; a short one: BLOB_DAMAGED at once', async () => {
    const a = randomFile(work, 'corrupt.bin', 3 * MiB + 7)
    okJson(await el(h1, ['content', 'add', a.path, '--json']))
    const storedA = join(blobDir(h1, 'sha256'), hexOf(a.digest))
    const fd = openSync(storedA, 'r+')
    writeSync(fd, Buffer.from('these bytes are not the upload'), 0, 30, MiB + 5)
    closeSync(fd)
    expect(statSync(storedA).size).toBe(a.size)
    const outA = join(work, 'corrupt.copy')
    const line = failureLine(await el(h1, ['content', 'get', a.digest, '--out', outA], 15_000))
    expect(line).toContain(`the copy of ${a.digest} does not match it`)
    expect(line).toContain(`nothing was written to ${outA}`)
    expect(existsSync(outA)).toBe(false)
    expect(partFiles(work)).toEqual([])

    const b = randomFile(work, 'short.bin', 2 * MiB + 3)
    okJson(await el(h1, ['content', 'add', b.path, '--json']))
    const storedB = join(blobDir(h1, 'sha256'), hexOf(b.digest))
    truncateSync(storedB, MiB)
    const outB = join(work, 'short.copy')
    // Before the fix the response ended short of its Content-Length and the CLI waited
    // for the rest until the connection timed out: the deadline is the assertion.
    const line2 = failureLine(await el(h1, ['content', 'get', b.digest, '--out', outB], 8_000))
    expect(line2).toMatch(new RegExp(`the stored file of ${b.digest} is ${MiB} bytes, not ${b.size} bytes: it is damaged`))
    expect(existsSync(outB)).toBe(false)
    expect(partFiles(work)).toEqual([])

    for (const d of [a.digest, b.digest]) expect((await el(h1, ['content', 'rm', d])).code).toBe(0)
  })
})

// ---- names --------------------------------------------------------------------------

describe('content names', () => {
  it('control characters, U+202E and a blank name are refused (exit 1) and nothing is added', async () => {
    const before = await digests(h1)
    const names: Array<[string, RegExp]> = [
      ['two\nlines.bin', /control or invisible formatting characters/],
      ['\u001b[2Jclear.bin', /control or invisible formatting characters/],
      ['report\u202efdp.exe', /control or invisible formatting characters/],
      ['   ', /must not be blank/]
    ]
    for (const [name, why] of names) {
      const line = failureLine(await el(h1, ['content', 'add', small.path, '--name', name]))
      expect(line, JSON.stringify(name)).toMatch(why)
    }
    // The file's own name, when no --name is given.
    const odd = join(work, 'odd\nname.bin')
    writeFileSync(odd, 'odd')
    expect(failureLine(await el(h1, ['content', 'add', odd]))).toMatch(/control .*give another with --name/)
    expect(await digests(h1)).toEqual(before)
  })

  it('content ls prints control and invisible format characters of a catalog escaped', async () => {
    // A catalog from elsewhere (an older leader) may carry such names: a stand-in agent API serves one.
    const dir = tempDataDir('el-crv-fake-')
    const item: ContentItemView = {
      digest: 'sha256:' + 'ab'.repeat(32),
      name: 'two\nlines\u001b[31mred\u202egnp.exe',
      kind: 'file',
      size: 10,
      chunkSize: MiB,
      manifestDigest: 'cd'.repeat(32),
      addedAt: new Date().toISOString(),
      hosts: [{ peerId: '12D3KooWfake', hostname: 'h\u0007x', state: 'error', have: 0, total: 1, percent: 0, error: 'disk\u001b[2J full' }],
      complete: 0
    }
    const server = createServer((req, res) => {
      res.setHeader('content-type', 'application/json')
      if (req.url === '/api/v1/content') { res.end(JSON.stringify([item])); return }
      res.statusCode = 404
      res.end(JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no' } }))
    })
    await new Promise<void>(resolve => { server.listen(join(dir, 'api.sock'), resolve) })
    try {
      const res = await runCli(['content', 'ls', '--data-dir', dir])
      expect(res.code, res.stderr).toBe(0)
      const rows = res.stdout.split('\n').filter(l => l !== '')
      expect(rows, res.stdout).toHaveLength(2)
      expect(res.stdout.replace(/\n/g, '')).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069]/)
      expect(rows[1]).toContain('two\\u000alines\\u001b[31mred\\u202egnp.exe')
      expect(rows[1]).toContain('h\\u0007x: error: disk\\u001b[2J full')
    } finally {
      await new Promise<void>(resolve => { server.close(() => { resolve() }) })
    }
  })
})

// ---- the agent's stop ------------------------------------------------------------------

describe('agent stop', () => {
  it('a stalled upload (fewer bytes than its Content-Length) does not hold up SIGTERM', async () => {
    const a = await startAgent(tempDataDir('el-crv-'), ['--hostname', 'stall'])
    expect((await el(a, ['token', 'create', '--json'])).code).toBe(0)
    const sock = connect(join(a.dataDir, 'api.sock'))
    let closed = false
    sock.on('error', () => {})
    sock.on('close', () => { closed = true })
    try {
      // Announces 100 MiB, sends 1 MiB, then nothing: a client that never gives up.
      sock.write(`POST /api/v1/content?name=stalled&kind=file HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: ${100 * MiB}\r\n\r\n`)
      sock.write(Buffer.alloc(MiB, 7))
      await waitFor(() => readdirSync(join(a.dataDir, 'blobs', 'tmp')).length > 0, { timeout: 10_000, what: 'the upload to reach the agent' })
      const started = Date.now()
      // Before the fix the agent waited for the client (fastify's close waits for open requests).
      const res = await stopAgent(a, 15_000)
      expect(Date.now() - started).toBeLessThan(15_000)
      expect(res.code, res.stderr).toBe(0)
      await waitFor(() => closed, { timeout: 5_000, what: 'the stalled upload\'s connection to be closed' })
      expect(existsSync(join(a.dataDir, 'api.sock'))).toBe(false)
    } finally {
      sock.destroy()
    }
  })
})

// ---- a stalled agent ---------------------------------------------------------------

describe('a stalled agent: content add and get give up after EDGELINK_API_TIMEOUT without a byte', () => {
  const quick = cleanEnv({ EDGELINK_API_TIMEOUT: '1s' })

  /** Stop h1 (SIGSTOP) once `ready()`, run `during`, then let it go on. */
  async function whileStopped (ready: () => boolean, during: () => Promise<void>): Promise<void> {
    await waitFor(ready, { timeout: 20_000, interval: 1, what: 'the transfer to begin' })
    const pid = h1.proc.pid ?? 0
    h1.proc.kill('SIGSTOP')
    try {
      await waitFor(() => procState(pid) === 'T', { timeout: 5_000, interval: 1, what: 'the agent to be stopped' })
      await during()
    } finally {
      h1.proc.kill('SIGCONT')
    }
  }

  it('content get from an agent stopped mid-send: exit 1 "sent nothing for 1s", no output, no .part; a retry once it runs again succeeds', async () => {
    const big = randomFile(work, 'stall-get.bin', 128 * MiB)
    okJson<CatalogItemView>(await el(h1, ['content', 'add', big.path, '--json'], 60_000))
    const out = join(work, 'stall-get.out')
    const s = spawnCli(['content', 'get', big.digest, '--out', out, '--data-dir', h1.dataDir], { env: quick })
    s.proc.stdin?.end()
    // The .part file appears once the answer has begun; 128 MiB cannot all be sent by then.
    await whileStopped(() => partFiles(work).length > 0 || s.proc.exitCode !== null, async () => {
      const line = failureLine(await withDeadline(s, 15_000, 'content get from a stopped agent'))
      const m = /^edgelink: download failed: the agent sent nothing for 1s \((\d+) bytes received\); nothing was written to (.+)\. Check that it is running/.exec(line)
      expect(m, line).not.toBeNull()
      expect(Number(m?.[1])).toBeLessThan(big.size)
      expect(m?.[2]).toBe(out)
      expect(existsSync(out)).toBe(false)
      expect(partFiles(work)).toEqual([])
    })
    const again = okJson<{ size: number }>(await el(h1, ['content', 'get', big.digest, '--out', out, '--json'], 60_000))
    expect(again.size).toBe(big.size)
    expect('sha256:' + createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(big.digest)
    expect((await el(h1, ['content', 'rm', big.digest])).code).toBe(0)
    rmSync(out)
    rmSync(big.path)
  })

  it('content add to an agent stopped mid-upload: exit 1 "took no bytes", nothing added, and the agent drops the cut-off upload once it runs again', async () => {
    const path = join(work, 'stall-add.bin')
    writeFileSync(path, '')
    truncateSync(path, GiB) // sparse: the CLI cannot have sent it all by the time the agent stops
    const before = await digests(h1)
    const s = await uploadStarted([path], quick)
    await whileStopped(() => true, async () => {
      const line = failureLine(await withDeadline(s, 15_000, 'content add to a stopped agent'))
      expect(line).toMatch(/^edgelink: upload failed: the agent took no bytes and said nothing for 1s \(\d+ of 1073741824 bytes sent\); nothing was added\./)
    })
    await waitFor(() => readdirSync(blobDir(h1, 'tmp')).length === 0, { timeout: 10_000, what: 'the agent to delete the cut-off upload' })
    expect(await digests(h1)).toEqual(before)
    expect(h1.proc.exitCode).toBeNull()
    rmSync(path)
  })

  it('content add whose every byte was sent waits longer for the answer (the agent may be flushing the file to disk)', async () => {
    // An API that takes the whole body and answers 3 s later, as an agent whose fsync takes
    // that long: with a 1 s timeout the CLI still waits for it and prints the item.
    const dir = mkdtempSync(join(tmpdir(), 'el-crv-slow-'))
    const src = randomFile(work, 'slow-answer.bin', 3 * MiB)
    let received = 0
    const server = createServer((req, res) => {
      res.setHeader('content-type', 'application/json')
      if (req.method === 'GET' && req.url === '/api/v1/status') { res.end(JSON.stringify({ role: 'leader', leader: null })); return }
      req.on('data', (c: Buffer) => { received += c.length })
      req.on('end', () => {
        setTimeout(() => { res.end(JSON.stringify({ digest: src.digest, name: 'slow-answer.bin', kind: 'file', size: src.size })) }, 3_000)
      })
    })
    await new Promise<void>(resolve => { server.listen(join(dir, 'api.sock'), resolve) })
    try {
      const res = await runCli(['content', 'add', src.path, '--json', '--data-dir', dir], { env: quick, timeoutMs: 15_000 })
      expect(okJson<CatalogItemView>(res).digest).toBe(src.digest)
      expect(received).toBe(src.size)
    } finally {
      server.closeAllConnections()
      await new Promise(resolve => server.close(resolve))
      rmSync(dir, { recursive: true, force: true })
      rmSync(src.path)
    }
  })

  it('an EDGELINK_API_TIMEOUT that is not a duration from 1s to 1d is a usage error naming it', async () => {
    for (const bad of ['abc', '0', '-1s', '1e3', '2d', '999ms', ' ']) {
      const res = await runCli(['status', '--data-dir', h1.dataDir], { env: cleanEnv({ EDGELINK_API_TIMEOUT: bad }) })
      expect(failureLine(res, 2)).toBe(`edgelink: EDGELINK_API_TIMEOUT must be a duration from 1s to 1d, such as 30s or 5m; got "${bad}"`)
    }
    expect((await runCli(['status', '--data-dir', h1.dataDir], { env: cleanEnv({ EDGELINK_API_TIMEOUT: '2m' }) })).code).toBe(0)
  })
})

// ---- content add --wait -----------------------------------------------------------------

describe('content add --wait', () => {
  it('with a follower stopped, says it waits for that host and that it is down', async () => {
    const h2 = await startAgent(tempDataDir('el-crv-'), ['--hostname', 'h2', '--config', config])
    keep(h2)
    const token = okJson<{ token: string }>(await el(h1, ['token', 'create', '--json'])).token
    const linked = await el(h2, ['link', token])
    expect(linked.code, linked.stderr).toBe(0)
    const liveness = async (): Promise<string | undefined> => {
      const rows = (await apiGet(h1.dataDir, '/api/v1/hosts')).body as Array<{ peerId: string, liveness: string }>
      return rows.find(r => r.peerId === h2.peerId)?.liveness
    }
    await waitFor(async () => await liveness() === 'alive', { timeout: 20_000, what: 'h1 to hear h2' })
    await stopAgent(h2)
    await waitFor(async () => ['down', 'suspect'].includes(await liveness() ?? ''), { timeout: 10_000, what: 'h1 to notice h2 is gone' })

    const src = randomFile(work, 'wait.bin', 10_000)
    const s = spawnCli(['content', 'add', src.path, '--wait', '--data-dir', h1.dataDir])
    s.proc.stdin?.end()
    // Before the fix it waited without a word (only hosts in error were named, and only with --json).
    await waitFor(() => /^waiting: h2: (down|suspect) \(its agent is not answering/m.test(s.stderr()) || s.proc.exitCode !== null,
      { timeout: 8_000, what: 'a waiting: line naming h2' })
    expect(s.proc.exitCode, `stdout: ${s.stdout()}\nstderr: ${s.stderr()}`).toBeNull()
    expect(stackLines(s.stderr())).toEqual([])
    s.proc.kill('SIGINT')
    await withDeadline(s, 10_000, 'content add --wait after SIGINT')
  })
})
