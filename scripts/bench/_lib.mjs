/**
 * Shared helpers for benchmark modules (files named `_*.mjs` are helpers, not benchmarks).
 *
 * Everything a benchmark spawns or creates goes through here, so run.mjs can stop every
 * agent and remove every temp dir on success, error, SIGINT or SIGTERM (`cleanupAll`).
 *
 * Network safety: agents started here always get `--no-mdns --listen /ip4/127.0.0.1/tcp/0`
 * and a hermetic environment (no EDGELINK_HOME / EDGELINK_CONFIG), and `startAgent`
 * refuses an agent that reports an address outside 127.0.0.1.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const BIN = join(ROOT, 'bin', 'edgelink')
/** The node binary running the bench; every child is spawned with it directly (no shell, no env wrapper). */
export const NODE = process.execPath
/** Flags every benchmark agent runs with: no LAN discovery, loopback only. */
export const SAFE_AGENT_ARGS = ['--no-mdns', '--listen', '/ip4/127.0.0.1/tcp/0']

export const now = () => performance.now()

// ---------------------------------------------------------------- statistics

const sorted = xs => [...xs].sort((a, b) => a - b)

export function median (xs) {
  if (xs.length === 0) return NaN
  const s = sorted(xs)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Nearest-rank percentile, p in (0, 100]. */
export function percentile (xs, p) {
  if (xs.length === 0) return NaN
  const s = sorted(xs)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]
}

/** `min–max` of samples, for notes. */
export function spread (xs, digits = 0) {
  const s = sorted(xs)
  return `${s[0].toFixed(digits)}–${s[s.length - 1].toFixed(digits)}`
}

// ---------------------------------------------------------------- tracking and cleanup

const children = new Set()
const dirs = new Set()

/** Environment for children: the caller's, minus anything that would point an agent elsewhere. */
export function childEnv (extra = {}) {
  const env = { ...process.env, ...extra }
  delete env.EDGELINK_HOME
  delete env.EDGELINK_CONFIG
  return env
}

/**
 * spawn() that run.mjs knows about: killed at the end of the run whatever happens.
 * stdout/stderr are piped and their last 8 KiB kept in `child.tail()` for error messages;
 * the full stdout is kept in `child.stdoutText()` unless `keepStdout: false`.
 */
export function spawnTracked (cmd, args, opts = {}) {
  const { keepStdout = true, ...spawnOpts } = opts
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(), ...spawnOpts })
  children.add(child)
  let tail = ''
  const out = []
  const keep = (chunk) => { tail = (tail + chunk.toString()).slice(-8192) }
  child.stdout?.on('data', (c) => { keep(c); if (keepStdout) out.push(c) })
  child.stderr?.on('data', keep)
  child.tail = () => tail.trim()
  child.stdoutText = () => Buffer.concat(out).toString('utf8')
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => { children.delete(child); resolve({ code, signal }) })
    child.once('error', (err) => { children.delete(child); resolve({ code: null, signal: null, error: err }) })
  })
  child.closed = new Promise((resolve) => { child.once('close', resolve); child.once('error', resolve) })
  return child
}

/** A fresh temp dir (short path: unix socket paths are limited to 107 bytes), removed at the end. */
export function tempDir (prefix = 'edgelink-bench-') {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  dirs.add(dir)
  return dir
}

/** Stop a child: SIGTERM, then SIGKILL after `graceMs`. Resolves once it has exited. */
export async function stopChild (child, graceMs = 5000) {
  if (child.exitCode !== null || child.signalCode !== null) return await child.exited
  child.kill('SIGTERM')
  const timer = setTimeout(() => { child.kill('SIGKILL') }, graceMs)
  try { return await child.exited } finally { clearTimeout(timer) }
}

/** Stop every tracked child and remove every temp dir. Safe to call more than once. */
export async function cleanupAll () {
  await Promise.all([...children].map(c => stopChild(c, 3000)))
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
  dirs.clear()
}

/** Last resort from a synchronous 'exit' handler: SIGKILL what is left, remove temp dirs. */
export function cleanupAllSync () {
  for (const c of children) { try { c.kill('SIGKILL') } catch { /* already gone */ } }
  for (const d of dirs) { try { rmSync(d, { recursive: true, force: true }) } catch { /* best effort */ } }
}

export function liveChildren () { return children.size }

// ---------------------------------------------------------------- processes

/**
 * Spawn `node ...args`, wait until it exits and its output is closed; returns the
 * wall time from just before spawn() to then, with exit status and stdout.
 */
export async function timeNode (args, opts = {}) {
  const t0 = now()
  const child = spawnTracked(NODE, args, opts)
  const [{ code, signal, error }] = await Promise.all([child.exited, child.closed])
  const ms = now() - t0
  if (error != null) throw error
  return { ms, code, signal, stdout: child.stdoutText(), tail: child.tail() }
}

/** Wall time of a bare `node -e ""` start and exit: the floor for any CLI command. */
export async function timeBareNode () {
  const r = await timeNode(['-e', ''])
  if (r.code !== 0) throw new Error(`node -e "" exited with ${r.code ?? r.signal}`)
  return r.ms
}

/** Resident set size of a process, in MiB, from /proc (Linux only); checks it is a node process. */
export function readRss (pid) {
  const exe = realpathSync(`/proc/${pid}/exe`)
  if (exe !== realpathSync(NODE)) throw new Error(`pid ${pid} runs ${exe}, not ${NODE}; not measuring a wrapper's memory`)
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (field) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)
    if (m == null) throw new Error(`no ${field} in /proc/${pid}/status`)
    return Number(m[1])
  }
  return { rssMiB: kb('VmRSS') / 1024, hwmMiB: kb('VmHWM') / 1024 }
}

// ---------------------------------------------------------------- the agent's API

/**
 * One GET over a unix socket on a new connection (as a CLI process would make it).
 * Resolves `{ statusCode, body }`; rejects on connection errors (ENOENT before the agent listens).
 */
export function apiGet (socketPath, path, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', agent: false, timeout: timeoutMs }, (res) => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        let body
        try { body = text === '' ? undefined : JSON.parse(text) } catch { body = text }
        resolve({ statusCode: res.statusCode, body })
      })
    })
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out after ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end()
  })
}

/** Time one GET from this process, in ms; throws unless it answers 200. */
export async function timeApiGet (socketPath, path) {
  const t0 = now()
  const r = await apiGet(socketPath, path)
  const ms = now() - t0
  if (r.statusCode !== 200) throw new Error(`GET ${path} answered HTTP ${r.statusCode}`)
  return ms
}

// ---------------------------------------------------------------- agents

/**
 * Start `bin/edgelink agent` (as `node bin/edgelink`, so the pid is the node process; `bin`
 * picks another build, for A/B runs) on a
 * data dir, and poll `GET /api/v1/status` on its socket every `pollMs` until it answers 200.
 * Returns `{ child, pid, dataDir, socket, readyMs, status, stop() }`; `readyMs` is from just
 * before spawn() to the first 200. Throws (with the agent's last output) if it exits first
 * or is not ready within `timeoutMs`.
 */
export async function startAgent ({ bin = BIN, dataDir = tempDir(), args = [], logLevel = 'warn', pollMs = 5, timeoutMs = 20_000 } = {}) {
  const socket = join(dataDir, 'api.sock')
  const argv = [bin, 'agent', '--data-dir', dataDir, ...SAFE_AGENT_ARGS, '--log-level', logLevel, ...args]
  const t0 = now()
  const child = spawnTracked(NODE, argv, { keepStdout: false })
  let exited = null
  child.exited.then(r => { exited = r })
  for (;;) {
    if (exited != null) {
      throw new Error(`agent exited before its API was ready (${exited.error?.message ?? exited.code ?? exited.signal}): ${child.tail() || '(no output)'}`)
    }
    if (now() - t0 > timeoutMs) {
      await stopChild(child)
      throw new Error(`agent API not ready after ${timeoutMs} ms: ${child.tail() || '(no output)'}`)
    }
    if (existsSync(socket)) {
      try {
        const r = await apiGet(socket, '/api/v1/status', 2000)
        if (r.statusCode === 200) {
          const readyMs = now() - t0
          const foreign = (r.body?.addresses ?? []).filter(a => !a.startsWith('/ip4/127.0.0.1/'))
          if (foreign.length > 0) {
            await stopChild(child)
            throw new Error(`benchmark agent reports addresses outside 127.0.0.1 (${foreign.join(', ')}); refusing to continue`)
          }
          return {
            child,
            pid: child.pid,
            dataDir,
            socket,
            readyMs,
            status: r.body,
            /** SIGTERM and wait; returns the ms from signal to exit. */
            async stop () {
              const s0 = now()
              const r = await stopChild(child)
              return { ms: now() - s0, ...r }
            }
          }
        }
      } catch (err) {
        if (err.code !== 'ENOENT' && err.code !== 'ECONNREFUSED' && err.code !== 'ECONNRESET') throw err
      }
    }
    await sleep(pollMs)
  }
}

/** One JSON request with a body over a unix socket; resolves `{ statusCode, body }`. */
export function apiRequest (socketPath, method, path, payload, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    const data = payload === undefined ? undefined : Buffer.from(JSON.stringify(payload))
    const headers = data == null ? {} : { 'content-type': 'application/json', 'content-length': data.length }
    const req = request({ socketPath, path, method, agent: false, timeout: timeoutMs, headers }, (res) => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        let body
        try { body = text === '' ? undefined : JSON.parse(text) } catch { body = text }
        resolve({ statusCode: res.statusCode, body })
      })
    })
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out after ${timeoutMs} ms`)))
    req.on('error', reject)
    if (data != null) req.write(data)
    req.end()
  })
}
