/**
 * Applies host settings on the target host by running the operator's settings hook.
 *
 * ## The hook contract
 *
 * The hook is any executable file (a `#!/bin/sh` script, a binary). For every settings
 * version to apply, edgelink runs it once:
 *
 * - **How it runs**: spawned directly, without a shell and without arguments, with the
 *   working directory `/`, in a new process group (session) of its own. A relative hook
 *   path is resolved against the agent's working directory.
 * - **Environment**: minimal, never the agent's own: `PATH` (the agent's, or a standard
 *   system path) and `EDGELINK_SETTINGS_VERSION` (the version being applied), plus any
 *   variables the agent is configured to pass.
 * - **Input**: one JSON object on one line on stdin, then stdin is closed:
 *   `{"version":3,"settings":{"ntp.server":"10.0.0.1"},"issuedAt":"2025-01-01T00:00:00.000Z","issuer":"<peer id>","hostname":"edge-7"}`.
 *   A hook that does not need it may exit without reading it.
 * - **Time**: it must exit within the configured timeout. After that it is sent
 *   SIGTERM, and SIGKILL if it is still alive after the grace period (2 s by default);
 *   both go to its whole process group, so a `sleep` it started dies with it.
 * - **Leftovers**: when the hook exits, anything still running in its process group is
 *   killed. A hook that has to leave a long-lived process behind must hand it to the
 *   service manager (`systemctl restart ...`) or detach it into its own session
 *   (`setsid`).
 * - **Output**: stdout and stderr are kept up to 64 KiB each (configurable); the rest
 *   is read and dropped.
 *
 * The result reported in the host's status:
 *
 * | the hook                                                   | state     | message                                              |
 * | ---------------------------------------------------------- | --------- | ---------------------------------------------------- |
 * | exits 0, prints nothing (or only whitespace)               | `applied` | `applied`                                            |
 * | exits 0, prints one JSON object `{"status":"applied"\|"failed","message"?:string}` | that status | its `message` (at most 500 characters), else the status |
 * | exits 0, prints anything else                              | `failed`  | says the output is not the expected JSON, quotes its first line |
 * | exits with code N ≠ 0                                      | `failed`  | `exit code N: <last non-empty line of stderr, else of stdout>` |
 * | is killed by a signal (it crashed)                         | `failed`  | `killed by SIGSEGV`                                  |
 * | does not exit in time                                      | `failed`  | `timed out after 30s ...`                            |
 * | is missing, not executable, a directory, cannot start      | `failed`  | `settings hook /x not found`, `... is not executable` |
 *
 * Unknown keys in the JSON object are ignored, so a hook may add its own. Every
 * message is capped at 500 characters.
 *
 * @example
 * ```ts
 * const result = await runSettingsHook('/etc/edgelink/apply-settings', {
 *   version: 3,
 *   settings: { 'ntp.server': '10.0.0.1' },
 *   issuedAt: new Date().toISOString(),
 *   issuer: leaderPeerId,
 *   hostname: 'edge-7'
 * }, { timeoutMs: 30_000 })
 * if (result.state === 'failed') log.warn({ message: result.message }, 'settings not applied')
 * ```
 *
 * @packageDocumentation
 */

import { spawn, type ChildProcess } from 'node:child_process'
import { constants as fsConstants } from 'node:fs'
import { access, stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'

/** What the hook reads on stdin, as one JSON object. */
export interface HookInput {
  /** Settings version being applied; also in `EDGELINK_SETTINGS_VERSION`. */
  version: number
  /** The complete settings for this host (not a diff). */
  settings: Record<string, string>
  /** When the settings were issued (ISO 8601). */
  issuedAt: string
  /** PeerId of the host that issued them. */
  issuer: string
  /** Hostname of the target host. */
  hostname: string
}

export interface HookResult {
  state: 'applied' | 'failed'
  /** For people: what happened, at most 500 characters. */
  message: string
  /** Exit code, or null when the hook was killed by a signal or never started. */
  exitCode: number | null
  /** Signal that ended the hook (`SIGSEGV`, `SIGKILL`, ...), or null. */
  signal: string | null
  /** From spawn until the result was known. */
  durationMs: number
  /** The hook's stdout, cut at `maxOutputBytes`. */
  stdout: string
  /** The hook's stderr, cut at `maxOutputBytes`. */
  stderr: string
}

export interface HookOptions {
  /** The hook must exit within this many milliseconds. */
  timeoutMs: number
  /**
   * Bytes of stdout and of stderr kept, each; the rest is read and dropped.
   *
   * @default 65536
   */
  maxOutputBytes?: number
  /**
   * Extra environment variables for the hook, added to the minimal environment
   * (`PATH` may be overridden here; `EDGELINK_SETTINGS_VERSION` may not).
   */
  env?: NodeJS.ProcessEnv
  /**
   * After a timeout, how long a hook may take to exit after SIGTERM before SIGKILL.
   *
   * @default 2000
   */
  killGraceMs?: number
  /** Where spawns, kills and stdin errors are logged (debug and warn levels). */
  log?: Logger
  /**
   * Stop the hook early (the agent is stopping): SIGTERM to its process group, SIGKILL
   * after `killGraceMs`, as on a timeout. The result is `failed`, "stopped".
   */
  signal?: AbortSignal
}

/** Enough for any status report or error trace a hook prints, small enough to keep in memory per run. */
export const DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
/** Time for a well-behaved hook to clean up on SIGTERM, short enough that a stuck hook does not hold up the next version. */
export const DEFAULT_KILL_GRACE_MS = 2000
/** Messages end up in gossiped status: long enough for an error line, short enough to keep status small. */
export const MAX_MESSAGE_CHARS = 500
/** A quoted line inside a message, leaving room for the sentence around it. */
const MAX_QUOTE_CHARS = 200
/**
 * After the hook exits (or is SIGKILLed), how long to wait for its output pipes to
 * close. They stay open only if something outside its process group (a `setsid`
 * daemon) inherited them; the result must not wait for that.
 */
const PIPE_DRAIN_MS = 1000
/** Used when the agent itself has no PATH. */
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

const EXPECTED_JSON = '{"status":"applied"|"failed","message":"..."}'

/**
 * Run the settings hook at `hookPath` with `input` on stdin and report the outcome
 * (see the contract at the top of this file). Never rejects: every failure, including
 * a missing hook, is a `failed` result. No process the hook started in its process
 * group is left running when the promise settles.
 */
export async function runSettingsHook (hookPath: string, input: HookInput, opts: HookOptions): Promise<HookResult> {
  const started = performance.now()
  const path = resolve(hookPath)
  const fail = (message: string): HookResult => ({
    state: 'failed', message: cap(message, MAX_MESSAGE_CHARS), exitCode: null, signal: null, durationMs: Math.round(performance.now() - started), stdout: '', stderr: ''
  })
  try {
    if (!(Number.isFinite(opts.timeoutMs) && opts.timeoutMs > 0)) {
      return fail(`settings hook ${path} not run: the hook timeout must be a positive number of milliseconds, got ${opts.timeoutMs}`)
    }
    const problem = await checkHook(path)
    if (problem !== undefined) return fail(problem)
    return await run(path, input, opts, started)
  } catch (err) {
    opts.log?.warn({ hook: path, err }, 'settings hook failed unexpectedly')
    return fail(`settings hook ${path} failed: ${errorMessage(err)}`)
  }
}

/** Why the file at `path` cannot be run as a hook, or undefined if it looks runnable. */
async function checkHook (path: string): Promise<string | undefined> {
  let mode: number
  try {
    const st = await stat(path)
    if (st.isDirectory()) return `settings hook ${path} is a directory, not an executable file: point the hook setting at the script itself`
    if (!st.isFile()) return `settings hook ${path} is not a regular file: point the hook setting at an executable file`
    mode = st.mode
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') return `settings hook ${path} not found: install it or fix the hook path`
    return `settings hook ${path} cannot be read: ${errorMessage(err)}`
  }
  try {
    await access(path, fsConstants.X_OK)
  } catch {
    return `settings hook ${path} is not executable (mode ${(mode & 0o7777).toString(8).padStart(4, '0')}): make it executable with chmod +x`
  }
  return undefined
}

/** Output kept up to a byte limit; later bytes are counted and dropped. */
class BoundedOutput {
  private readonly chunks: Buffer[] = []
  private kept = 0
  dropped = 0

  constructor (private readonly limit: number) {}

  push (chunk: Buffer): void {
    const room = this.limit - this.kept
    if (room >= chunk.length) {
      this.chunks.push(chunk)
      this.kept += chunk.length
    } else {
      if (room > 0) {
        this.chunks.push(chunk.subarray(0, room))
        this.kept += room
      }
      this.dropped += chunk.length - Math.max(room, 0)
    }
  }

  text (): string {
    return Buffer.concat(this.chunks, this.kept).toString('utf8')
  }
}

type Ending =
  | { kind: 'exited', code: number | null, signal: NodeJS.Signals | null }
  | { kind: 'timed-out', code: number | null, signal: NodeJS.Signals | null, escalated: boolean, stopped: boolean }
  | { kind: 'spawn-error', err: Error }

async function run (path: string, input: HookInput, opts: HookOptions, started: number): Promise<HookResult> {
  const maxOutput = Math.max(0, opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES)
  const killGraceMs = Math.max(0, opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS)
  const log = opts.log
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? DEFAULT_PATH,
    ...opts.env,
    EDGELINK_SETTINGS_VERSION: String(input.version)
  }
  const stdout = new BoundedOutput(maxOutput)
  const stderr = new BoundedOutput(maxOutput)

  const ending = await new Promise<Ending>(resolvePromise => {
    let child: ChildProcess
    try {
      // detached: the hook leads a process group of its own, so kill(-pid) reaches
      // everything it started; stdio stays piped to us.
      child = spawn(path, [], { cwd: '/', env, stdio: ['pipe', 'pipe', 'pipe'], detached: true })
    } catch (err) {
      resolvePromise({ kind: 'spawn-error', err: err as Error })
      return
    }
    const pid = child.pid
    log?.debug({ hook: path, pid, version: input.version }, 'settings hook started')

    let settled = false
    let timedOut = false
    let stopped = false
    let escalated = false
    let exit: { code: number | null, signal: NodeJS.Signals | null } | undefined
    let graceTimer: NodeJS.Timeout | undefined
    let drainTimer: NodeJS.Timeout | undefined

    const killGroup = (signal: NodeJS.Signals): void => {
      if (pid === undefined) return
      try {
        process.kill(-pid, signal)
      } catch (err) {
        // ESRCH: the group is already empty, which is what we want.
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') log?.warn({ hook: path, pid, signal, err }, 'could not signal the settings hook process group')
      }
    }

    const finish = (result: Ending): void => {
      if (settled) return
      settled = true
      clearTimeout(timeoutTimer)
      clearTimeout(graceTimer)
      clearTimeout(drainTimer)
      opts.signal?.removeEventListener('abort', onAbort)
      // Whatever still holds the pipes is outside our process group; stop listening to it.
      child.stdout?.destroy()
      child.stderr?.destroy()
      child.stdin?.destroy()
      resolvePromise(result)
    }

    const ended = (): Ending => {
      const code = exit?.code ?? null
      const signal = exit?.signal ?? null
      return timedOut ? { kind: 'timed-out', code, signal, escalated, stopped } : { kind: 'exited', code, signal }
    }

    const terminate = (why: 'timed out' | 'stopped'): void => {
      if (exit !== undefined || timedOut) return
      timedOut = true
      stopped = why === 'stopped'
      log?.debug({ hook: path, pid, timeoutMs: opts.timeoutMs }, `settings hook ${why}, sending SIGTERM`)
      killGroup('SIGTERM')
      graceTimer = setTimeout(() => {
        escalated = true
        log?.debug({ hook: path, pid, killGraceMs }, 'settings hook still running after SIGTERM, sending SIGKILL')
        killGroup('SIGKILL')
        // The leader normally dies at once; if it cannot (stuck in the kernel), report anyway.
        drainTimer = setTimeout(() => { finish(ended()) }, PIPE_DRAIN_MS)
      }, killGraceMs)
    }
    const timeoutTimer = setTimeout(() => { terminate('timed out') }, opts.timeoutMs)
    const onAbort = (): void => { terminate('stopped') }
    if (opts.signal?.aborted === true) setImmediate(onAbort)
    else opts.signal?.addEventListener('abort', onAbort, { once: true })

    child.stdout?.on('data', (chunk: Buffer) => { stdout.push(chunk) })
    child.stderr?.on('data', (chunk: Buffer) => { stderr.push(chunk) })
    child.stdout?.on('error', err => { log?.debug({ hook: path, err }, 'settings hook stdout error') })
    child.stderr?.on('error', err => { log?.debug({ hook: path, err }, 'settings hook stderr error') })
    child.stdin?.on('error', (err: NodeJS.ErrnoException) => {
      // The hook may exit without reading its input; that is its right, not an error.
      if (err.code === 'EPIPE' || err.code === 'ECONNRESET') return
      log?.warn({ hook: path, err }, 'could not write settings to the hook stdin')
    })

    child.on('error', err => {
      // Spawn failures (the #! interpreter is missing, ...). No 'exit' follows.
      if (exit === undefined) finish({ kind: 'spawn-error', err })
      else log?.debug({ hook: path, err }, 'settings hook process error after exit')
    })
    child.on('exit', (code, signal) => {
      exit = { code, signal }
      log?.debug({ hook: path, pid, code, signal }, 'settings hook exited')
      // Leftovers in its group would hold our pipes open (and outlive the hook).
      killGroup('SIGKILL')
      clearTimeout(timeoutTimer)
      clearTimeout(graceTimer)
      clearTimeout(drainTimer)
      drainTimer = setTimeout(() => { finish(ended()) }, PIPE_DRAIN_MS)
    })
    // 'close' comes after 'exit' once stdout and stderr are fully read.
    child.on('close', () => { if (exit !== undefined) finish(ended()) })

    child.stdin?.end(JSON.stringify(input) + '\n')
  })

  const durationMs = Math.round(performance.now() - started)
  const out = stdout.text()
  const err = stderr.text()
  if (stdout.dropped > 0 || stderr.dropped > 0) {
    log?.debug({ hook: path, stdoutDropped: stdout.dropped, stderrDropped: stderr.dropped }, 'settings hook output truncated')
  }
  const base = { durationMs, stdout: out, stderr: err }
  switch (ending.kind) {
    case 'spawn-error': {
      const code = (ending.err as NodeJS.ErrnoException).code
      const hint = code === 'ENOENT' ? ' (is the interpreter on its #! line installed?)' : ''
      return { ...base, state: 'failed', message: cap(`settings hook ${path} could not be started: ${errorMessage(ending.err)}${hint}`, MAX_MESSAGE_CHARS), exitCode: null, signal: null }
    }
    case 'timed-out': {
      const how = ending.escalated ? `; it ignored SIGTERM for ${seconds(killGraceMs)} and was killed with SIGKILL` : ''
      const what = ending.stopped ? 'stopped: the agent was stopping' : `timed out after ${seconds(opts.timeoutMs)}`
      return { ...base, state: 'failed', message: cap(`${what}${how}`, MAX_MESSAGE_CHARS), exitCode: ending.code, signal: ending.signal }
    }
    case 'exited':
      return { ...base, ...interpret(ending.code, ending.signal, out, err), exitCode: ending.code, signal: ending.signal }
  }
}

/** State and message for a hook that exited on its own (or crashed). */
function interpret (code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string): Pick<HookResult, 'state' | 'message'> {
  if (signal !== null) return { state: 'failed', message: `killed by ${signal}` }
  if (code !== 0) {
    const line = lastLine(stderr) ?? lastLine(stdout)
    return { state: 'failed', message: cap(line === undefined ? `exit code ${code}` : `exit code ${code}: ${line}`, MAX_MESSAGE_CHARS) }
  }
  const text = stdout.trim()
  if (text === '') return { state: 'applied', message: 'applied' }
  const report = parseReport(text)
  if (report !== undefined) return report
  const first = cap(text.split('\n', 1)[0].trim(), MAX_QUOTE_CHARS)
  return {
    state: 'failed',
    message: cap(`settings hook exited 0 but printed something that is not the expected JSON ${EXPECTED_JSON} (or nothing): ${JSON.stringify(first)}`, MAX_MESSAGE_CHARS)
  }
}

/** The hook's `{"status", "message"}` report, or undefined when stdout is not one. */
function parseReport (text: string): Pick<HookResult, 'state' | 'message'> | undefined {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined
  const { status, message } = value as { status?: unknown, message?: unknown }
  if (status !== 'applied' && status !== 'failed') return undefined
  if (message !== undefined && typeof message !== 'string') return undefined
  const said = message?.trim() ?? ''
  return { state: status, message: said === '' ? status : cap(said, MAX_MESSAGE_CHARS) }
}

function lastLine (text: string): string | undefined {
  const lines = text.split('\n').map(l => l.trim()).filter(l => l !== '')
  const last = lines.at(-1)
  return last === undefined ? undefined : cap(last, MAX_QUOTE_CHARS * 2)
}

/** At most `max` characters, an ellipsis marking the cut. */
function cap (text: string, max: number): string {
  const chars = Array.from(text)
  return chars.length <= max ? text : chars.slice(0, max - 1).join('') + '…'
}

/** `0.3s`, `30s`, `2.5s`. */
function seconds (ms: number): string {
  return `${Number((ms / 1000).toFixed(3))}s`
}
