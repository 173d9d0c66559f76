/**
 * Run the built `bin/edgelink` as real processes for CLI tests. Agents started here
 * listen on 127.0.0.1 only with mDNS off (traffic never leaves this machine), each in
 * its own temp data dir. Every spawned process is tracked so `cleanup()` (call it in
 * `afterEach`) kills whatever a failed test left running.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs'
import { createHash, randomBytes } from 'node:crypto'
import { expect } from 'vitest'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const BIN = fileURLToPath(new URL('../../bin/edgelink', import.meta.url))
const BUILT_MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))

/** Flags every test agent gets: nothing leaves this machine. */
export const SAFE_AGENT_FLAGS = ['--no-mdns', '--listen', '/ip4/127.0.0.1/tcp/0']

/** Throw a clear error when the CLI has not been built (`npm test` builds it through `pretest`). */
export function assertBuilt (): void {
  if (!existsSync(BUILT_MAIN)) {
    throw new Error(`${BUILT_MAIN} is missing: run \`npm run build\` before the CLI tests (\`npm test\` does it in pretest)`)
  }
}

/** This process's environment without any EDGELINK_* variable, plus `extra`. */
export function cleanEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('EDGELINK_')) env[k] = v
  }
  env.NO_COLOR = '1'
  return { ...env, ...extra }
}

export interface CliResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** A spawned process whose output is collected as it arrives. */
export interface Spawned {
  proc: ChildProcess
  stdout: () => string
  stderr: () => string
  /** Resolves when the process has exited and its output is complete. */
  exited: Promise<CliResult>
}

const live = new Set<ChildProcess>()
const dirs: string[] = []
/** Processes and dirs shared by a whole describe block: spared by `cleanup()`, ended by `cleanupKept()`. */
const keptProcs = new Set<ChildProcess>()
const keptDirs: string[] = []

export function spawnCli (args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Spawned {
  const proc = spawn(BIN, args, { env: opts.env ?? cleanEnv(), stdio: ['pipe', 'pipe', 'pipe'] })
  live.add(proc)
  let out = ''
  let err = ''
  proc.stdout?.setEncoding('utf8').on('data', (s: string) => { out += s })
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => { err += s })
  // Writing to the stdin of a process that already exited must not fail the test run.
  proc.stdin?.on('error', () => {})
  const exited = new Promise<CliResult>((resolve, reject) => {
    proc.once('error', reject)
    proc.once('close', (code, signal) => {
      live.delete(proc)
      resolve({ code, signal, stdout: out, stderr: err })
    })
  })
  return { proc, stdout: () => out, stderr: () => err, exited }
}

/** Run a command to completion; kill it (and fail) if it outlives `timeoutMs`. */
export async function runCli (args: string[], opts: { env?: NodeJS.ProcessEnv, input?: string, timeoutMs?: number } = {}): Promise<CliResult> {
  const s = spawnCli(args, opts)
  s.proc.stdin?.end(opts.input ?? '')
  return await withDeadline(s, opts.timeoutMs ?? 20_000, `edgelink ${args.join(' ')}`)
}

/** Wait for a spawned process to exit, killing it and failing after `timeoutMs`. */
export async function withDeadline (s: Spawned, timeoutMs: number, what: string): Promise<CliResult> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      s.proc.kill('SIGKILL')
      reject(new Error(`${what} did not exit within ${timeoutMs} ms\nstdout: ${s.stdout()}\nstderr: ${s.stderr()}`))
    }, timeoutMs)
  })
  try {
    return await Promise.race([s.exited, deadline])
  } finally {
    clearTimeout(timer)
  }
}

/** A fresh temp data dir, removed by `cleanup()`. Short, so its socket paths fit. */
export function tempDataDir (prefix = 'el-cli-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix))
  dirs.push(d)
  return d
}

export interface ApiAnswer {
  status: number
  body: unknown
}

/** One request to an agent's API over the unix socket in its data dir. */
export async function apiGet (dataDir: string, path: string, timeoutMs = 5_000): Promise<ApiAnswer> {
  return await new Promise<ApiAnswer>((resolve, reject) => {
    const req = request({ socketPath: join(dataDir, 'api.sock'), method: 'GET', path, timeout: timeoutMs }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) })
        } catch {
          reject(new Error(`GET ${path} answered ${res.statusCode ?? '?'} with non-JSON: ${text.slice(0, 200)}`))
        }
      })
    })
    req.on('timeout', () => { req.destroy(new Error(`GET ${path} timed out`)) })
    req.on('error', reject)
    req.end()
  })
}

export interface AgentProcess extends Spawned {
  dataDir: string
  peerId: string
  /** First listen address, with /p2p/<PeerId>. */
  address: string
}

/**
 * Start `edgelink agent` on `dataDir` (127.0.0.1, mDNS off) and wait until its API
 * answers `GET /api/v1/status`. Fails early with its output if it exits first.
 */
export async function startAgent (dataDir: string, extraArgs: string[] = [], opts: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<AgentProcess> {
  const s = spawnCli(['agent', '--data-dir', dataDir, ...SAFE_AGENT_FLAGS, ...extraArgs], opts)
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000)
  let exited: CliResult | undefined
  void s.exited.then(r => { exited = r })
  for (;;) {
    if (exited != null) {
      throw new Error(`the agent exited (code ${String(exited.code)}) before its API answered\nstdout: ${exited.stdout}\nstderr: ${exited.stderr}`)
    }
    try {
      const res = await apiGet(dataDir, '/api/v1/status', 2_000)
      const status = res.body as { peerId: string, addresses: string[] }
      if (res.status === 200) return { ...s, dataDir, peerId: status.peerId, address: status.addresses[0] }
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      s.proc.kill('SIGKILL')
      throw new Error(`the agent's API did not answer within the deadline\nstdout: ${s.stdout()}\nstderr: ${s.stderr()}`)
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/** Send SIGTERM and wait for the process to exit. */
export async function stopAgent (agent: Spawned, timeoutMs = 15_000): Promise<CliResult> {
  agent.proc.kill('SIGTERM')
  return await withDeadline(agent, timeoutMs, 'the agent after SIGTERM')
}

/** Poll `check` until it returns true; fail with `what` after `timeoutMs`. */
export async function waitFor (check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

async function killAll (procs: Iterable<ChildProcess>): Promise<void> {
  await Promise.all([...procs].map(async proc => {
    if (proc.exitCode !== null || proc.signalCode !== null) return
    const gone = new Promise<void>(resolve => { proc.once('close', () => { resolve() }) })
    proc.kill('SIGKILL')
    await gone
  }))
}

/** Kill every process a test left running and remove its temp dirs (for afterEach). */
export async function cleanup (): Promise<void> {
  const procs = [...live].filter(p => !keptProcs.has(p))
  await killAll(procs)
  for (const p of procs) live.delete(p)
  for (const d of dirs.splice(0)) {
    if (!keptDirs.includes(d)) rmSync(d, { recursive: true, force: true })
  }
}

/** Keep an agent (and its data dir) across the tests of a describe block; end it with `cleanupKept()` in afterAll. */
export function keep (agent: Spawned & { dataDir: string }): void {
  keptProcs.add(agent.proc)
  keptDirs.push(agent.dataDir)
}

/** Kill the kept processes and remove the kept dirs (for afterAll). */
export async function cleanupKept (): Promise<void> {
  await killAll(keptProcs)
  for (const p of keptProcs) live.delete(p)
  keptProcs.clear()
  for (const d of keptDirs.splice(0)) rmSync(d, { recursive: true, force: true })
}

/** Lines of stderr that look like a JS stack trace. */
export function stackLines (text: string): string[] {
  return text.split('\n').filter(l => /^\s+at\s/.test(l))
}

/** Exit `code`, one line on stderr starting `edgelink: `, no stack trace, nothing on stdout. Returns the line. */
export function failureLine (res: CliResult, code = 1): string {
  expect(res.code, `stdout: ${res.stdout}\nstderr: ${res.stderr}`).toBe(code)
  expect(stackLines(res.stderr), res.stderr).toEqual([])
  const lines = res.stderr.split('\n').filter(l => l.trim() !== '')
  expect(lines, res.stderr).toHaveLength(1)
  expect(lines[0]).toMatch(/^edgelink: \S/)
  expect(res.stdout).toBe('')
  return lines[0]
}

/** A file to upload, with the digest computed here. */
export interface Source { path: string, size: number, digest: string }

/** A file of `size` random bytes in `dir`, written in pieces (memory stays small), with its digest. */
export function randomFile (dir: string, name: string, size: number): Source {
  const path = join(dir, name)
  const hash = createHash('sha256')
  const fd = openSync(path, 'w', 0o644)
  try {
    for (let done = 0; done < size;) {
      const piece = randomBytes(Math.min(8 * 1024 * 1024, size - done))
      hash.update(piece)
      writeSync(fd, piece)
      done += piece.length
    }
  } finally {
    closeSync(fd)
  }
  return { path, size, digest: 'sha256:' + hash.digest('hex') }
}
