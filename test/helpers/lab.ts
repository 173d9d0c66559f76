/**
 * A LAN of network namespaces for e2e tests: a thin wrapper over `scripts/lab.sh`.
 *
 * ```ts
 * const lab = await Lab.up(3)          // h1..h3 on 10.213.0.11-13, one bridge
 * await lab.start('h1')                // resolves once the agent's API answers
 * const peers = (await lab.cli('h1', ['peers', '--json'])).json<PeerEntry[]>()
 * await lab.down()                     // in afterAll, always
 * ```
 *
 * Lab addresses exist only inside namespaces the lab creates; agents never see any
 * other network. A lab that a crashed run leaves behind is torn down by lab.sh's
 * watchdog after `ttl` (default 10 minutes here).
 */
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { request } from 'node:http'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const LAB_SH = join(REPO, 'scripts', 'lab.sh')
/** First three octets of the lab subnet (lab.sh's default). */
export const LAB_NET = '10.213.0'
/** Port every lab agent listens on. */
export const LAB_PORT = 4100

export interface RunResult {
  code: number
  stdout: string
  stderr: string
  /** stdout parsed as JSON; throws with the output quoted if it is not JSON. */
  json: <T = unknown>() => T
}

export interface RunOptions {
  timeoutMs?: number
  /** Resolve with a non-zero `code` instead of throwing. @default true for cli/exec */
  allowFailure?: boolean
}

export interface StartedAgent {
  host: string
  /** `Date.now()` when the agent's API first answered. */
  readyAt: number
  /** Milliseconds from `lab.sh start` to the API answering. */
  startMs: number
}

export interface LabOptions {
  /** Lab name ([A-Za-z0-9_], at most 24); default unique per process. */
  name?: string
  /** Watchdog delay passed to lab.sh as LAB_TTL (e.g. '10m'). */
  ttl?: string
}

function result (code: number, stdout: string, stderr: string, what: string): RunResult {
  return {
    code,
    stdout,
    stderr,
    json<T = unknown> (): T {
      try {
        return JSON.parse(stdout) as T
      } catch {
        throw new Error(`${what}: stdout is not JSON (exit ${code}): ${stdout.slice(0, 500)} ${stderr.slice(0, 500)}`)
      }
    }
  }
}

/** Run a program without a shell; resolves with its exit code and output. */
export async function run (file: string, args: string[], opts: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<RunResult> {
  const what = [file, ...args].join(' ')
  return await new Promise((resolve, reject) => {
    execFile(file, args, {
      env: opts.env ?? process.env,
      timeout: opts.timeoutMs ?? 60_000,
      killSignal: 'SIGKILL',
      maxBuffer: 64 * 1024 * 1024,
      encoding: 'utf8'
    }, (err, stdout, stderr) => {
      if (err == null) { resolve(result(0, stdout, stderr, what)); return }
      const e = err as NodeJS.ErrnoException & { code?: number | string, killed?: boolean, signal?: string }
      if (typeof e.code === 'number') { resolve(result(e.code, stdout, stderr, what)); return }
      if (e.killed === true || e.signal != null) {
        reject(new Error(`${what}: killed by ${e.signal ?? 'SIGKILL'} after ${opts.timeoutMs ?? 60_000} ms; stderr: ${stderr}`))
        return
      }
      reject(new Error(`${what}: ${e.message}`))
    })
  })
}

interface CheckResult { ok: boolean, lines: Map<string, string>, error?: string }
let checked: CheckResult | undefined

/** `lab.sh check`, once per process: lines such as `netns=ok` or `netem=missing: why`. */
function labCheck (): CheckResult {
  if (checked != null) return checked
  const parse = (out: string): Map<string, string> => new Map(out.split('\n').filter(l => l.includes('=')).map(l => {
    const i = l.indexOf('=')
    return [l.slice(0, i), l.slice(i + 1)] as [string, string]
  }))
  try {
    const out = execFileSync('bash', [LAB_SH, 'check'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 })
    checked = { ok: true, lines: parse(out) }
  } catch (err) {
    const e = err as { stdout?: string, message: string }
    checked = { ok: false, lines: parse(e.stdout ?? ''), error: e.message }
  }
  return checked
}

/**
 * Why a lab cannot be built here, or null if it can: Linux, root, iproute2 and working
 * network namespaces with veth and bridge (`lab.sh check` probes in a throwaway namespace).
 */
export function labUnavailableReason (): string | null {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'network namespaces need root (run the e2e tests as root, as CI does)'
  const c = labCheck()
  if (c.ok) return null
  // netem and nft are optional extras (delay, loss): a lab is built without them.
  const missing = [...c.lines].filter(([k, v]) => k !== 'netem' && k !== 'nft' && k !== 'tbf' && v.startsWith('missing')).map(([k, v]) => `${k} ${v}`)
  return missing.length > 0 ? missing.join('; ') : `lab.sh check failed: ${c.error ?? 'unknown error'}`
}

export function labAvailable (): boolean {
  return labUnavailableReason() === null
}

/** Why `tc netem` is unavailable (some kernels are built without sch_netem), or null. */
export function netemUnavailableReason (): string | null {
  const lab = labUnavailableReason()
  if (lab != null) return lab
  const v = labCheck().lines.get('netem')
  return v == null || v.startsWith('ok') ? null : v.replace(/^missing: /, '')
}

/** Why `lab.sh rate` (tc tbf) is unavailable, or null. */
export function rateUnavailableReason (): string | null {
  const lab = labUnavailableReason()
  if (lab != null) return lab
  const v = labCheck().lines.get('tbf')
  return v == null ? 'lab.sh check did not report tbf' : v.startsWith('ok') ? null : v.replace(/^missing: /, '')
}

/** Why `lab.sh loss` (nftables random drop) is unavailable, or null. */
export function lossUnavailableReason (): string | null {
  const lab = labUnavailableReason()
  if (lab != null) return lab
  const v = labCheck().lines.get('nft')
  return v == null ? 'lab.sh check did not report nft' : v.startsWith('ok') ? null : v.replace(/^missing: /, '')
}

/** True where e2e tests must run rather than skip (CI, or EDGELINK_E2E=require). */
export function labRequired (): boolean {
  return process.env.CI === 'true' || process.env.CI === '1' || process.env.EDGELINK_E2E === 'require'
}

export interface WaitOptions {
  timeoutMs: number
  intervalMs?: number
  /** Describes the last observed state in the timeout error. */
  describe?: () => string
}

/**
 * Poll `check` until it returns a value other than undefined/false/null. Returns the value
 * and when it was seen; throws with `describe()` after the deadline.
 */
/** Thrown by a `waitFor` check to stop waiting at once (the condition can no longer become true). */
export class GiveUp extends Error {}

export async function waitFor<T> (what: string, check: () => Promise<T | undefined | null | false>, opts: WaitOptions): Promise<{ value: T, at: number }> {
  const deadline = Date.now() + opts.timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const v = await check()
      if (v !== undefined && v !== null && v !== false) return { value: v, at: Date.now() }
    } catch (err) {
      if (err instanceof GiveUp) throw err
      lastError = err
    }
    if (Date.now() >= deadline) {
      const state = opts.describe?.() ?? ''
      const cause = lastError instanceof Error ? ` (last error: ${lastError.message})` : ''
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what}${cause}${state === '' ? '' : `; last state: ${state}`}`)
    }
    await new Promise(resolve => setTimeout(resolve, opts.intervalMs ?? 100))
  }
}

/** GET a path on an agent's API over its unix socket. */
async function apiGet (socketPath: string, path: string, timeoutMs = 2_000): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', timeout: timeoutMs }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }) })
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`no answer on ${socketPath} within ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end()
  })
}

const open = new Set<Lab>()
process.once('exit', () => {
  // Last resort if afterAll never ran: tear down synchronously (the watchdog is the next line of defence).
  for (const lab of open) {
    try { execFileSync('bash', [LAB_SH, 'down'], { env: lab.env, stdio: 'ignore', timeout: 30_000 }) } catch { /* the watchdog will */ }
  }
})

let counter = 0

export class Lab {
  readonly name: string
  readonly dir: string
  readonly hosts: string[]
  /** Environment for lab.sh calls on this lab. */
  readonly env: NodeJS.ProcessEnv
  /** Keep LAB_DIR (logs, data dirs) at `down`; set it when a test fails. */
  keepFiles = process.env.EDGELINK_KEEP_LAB === '1'
  private isDown = false

  private constructor (name: string, n: number, ttl: string) {
    this.name = name
    this.dir = join(REPO, '.lab', name)
    this.hosts = Array.from({ length: n }, (_, i) => `h${i + 1}`)
    const env: NodeJS.ProcessEnv = { ...process.env, LAB: name, LAB_DIR: this.dir, LAB_TTL: ttl, LAB_NODE: process.execPath }
    delete env.LAB_NET
    this.env = env
  }

  /** Build a lab of `n` hosts (h1..hn). Tears down whatever it built if that fails. */
  static async up (n: number, opts: LabOptions = {}): Promise<Lab> {
    const reason = labUnavailableReason()
    if (reason != null) throw new Error(`cannot build a network namespace lab here: ${reason}`)
    if (!existsSync(join(REPO, 'dist', 'cli', 'main.js'))) throw new Error('the CLI is not built: run `npm run build` (npm test does it in pretest)')
    const name = opts.name ?? `t${process.pid}x${(counter++).toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`
    const lab = new Lab(name, n, opts.ttl ?? '10m')
    open.add(lab)
    try {
      await lab.sh(['up', String(n)])
    } catch (err) {
      await lab.down().catch(() => {})
      throw err
    }
    return lab
  }

  /** This host's current lab address, e.g. 10.213.0.11 for h1. */
  defaultAddr (host: string): string {
    return `${LAB_NET}.${10 + this.index(host)}`
  }

  /** Run lab.sh with this lab's environment; throws on a non-zero exit unless allowFailure. */
  async sh (args: string[], opts: RunOptions = {}): Promise<RunResult> {
    const r = await run('bash', [LAB_SH, ...args], { env: this.env, timeoutMs: opts.timeoutMs })
    if (r.code !== 0 && opts.allowFailure !== true) {
      throw new Error(`lab.sh ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`)
    }
    return r
  }

  /**
   * Start the agent on `host` (extra agent args allowed, and leading EDGELINK_*=VALUE words)
   * and wait until its API answers. Fails with the log's tail if the agent dies.
   */
  async start (host: string, args: string[] = [], opts: { timeoutMs?: number } = {}): Promise<StartedAgent> {
    const t0 = Date.now()
    await this.sh(['start', host, ...args])
    const readyAt = await this.waitReady(host, opts.timeoutMs ?? 30_000)
    return { host, readyAt, startMs: readyAt - t0 }
  }

  /** Poll the agent's API socket directly (no process per poll) until `/api/v1/status` answers 200. */
  async waitReady (host: string, timeoutMs = 30_000): Promise<number> {
    const socket = join(this.dir, host, 'api.sock')
    const { at } = await waitFor(`the agent on ${host} to answer on ${socket}`, async () => {
      // An agent that died will not come back: report its log at once instead of timing out.
      if (!this.agentAlive(host)) throw new GiveUp(`the agent on ${host} is not running; end of its log:\n${this.logTail(host, 20)}`)
      const r = await apiGet(socket, '/api/v1/status').catch(() => undefined)
      return r?.status === 200
    }, { timeoutMs, intervalMs: 25, describe: () => `log tail:\n${this.logTail(host, 10)}` })
    return at
  }

  /**
   * GET an API path straight from the host's unix socket (no CLI process): cheap enough to
   * poll every few milliseconds, for timing measurements. Throws unless HTTP 200.
   */
  async api<T = unknown> (host: string, path: string): Promise<T> {
    const r = await apiGet(join(this.dir, host, 'api.sock'), path)
    if (r.status !== 200) throw new Error(`GET ${path} on ${host}: HTTP ${r.status}: ${r.body.slice(0, 300)}`)
    return JSON.parse(r.body) as T
  }

  async stop (host: string): Promise<void> { await this.sh(['stop', host]) }
  async kill (host: string): Promise<void> { await this.sh(['kill', host]) }

  /** `bin/edgelink ARGS --data-dir LAB_DIR/host`; never throws on a non-zero exit. */
  async cli (host: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return await this.sh(['cli', host, ...args], { allowFailure: true, ...opts })
  }

  /** Run a command inside the host's namespace; never throws on a non-zero exit. */
  async exec (host: string, cmd: string[], opts: RunOptions = {}): Promise<RunResult> {
    return await this.sh(['exec', host, ...cmd], { allowFailure: true, ...opts })
  }

  /** `tc netem` on the host's lab interface, e.g. netem('h1', 'delay', '20ms', 'loss', '5%'); netem('h1', 'clear'). */
  async netem (host: string, ...args: string[]): Promise<void> { await this.sh(['netem', host, ...args]) }
  /**
   * Drop `percent` % of the IP packets the host receives, sends, or both (default), at
   * random, with nftables in its namespace (`lab.sh loss`): packet loss where the kernel
   * has no netem. `loss(host, 'clear')` removes it.
   */
  async loss (host: string, percent: number | 'clear', dir: 'in' | 'out' | 'both' = 'both'): Promise<void> {
    await this.sh(percent === 'clear' ? ['loss', host, 'clear'] : ['loss', host, String(percent), dir])
  }

  /**
   * Cap the host's link at `rate` (tc units: '200mbit', '1gbit') with tc tbf (`lab.sh rate`):
   * 'out' caps what it sends (its lan0), 'in' what it receives (its switch port's egress),
   * 'both' (default) each direction. `rate(host, 'clear')` removes the caps.
   */
  async rate (host: string, rate: string, dir: 'in' | 'out' | 'both' = 'both'): Promise<void> {
    await this.sh(rate === 'clear' ? ['rate', host, 'clear'] : ['rate', host, rate, dir])
  }

  /** SIGSTOP the host's agent (a hung process: its kernel still ACKs TCP). */
  async pause (host: string): Promise<void> { await this.sh(['pause', host]) }
  /** SIGCONT the host's agent. */
  async resume (host: string): Promise<void> { await this.sh(['resume', host]) }

  /** Kernel byte counters of the host's lab interface (lan0). */
  async bytes (host: string): Promise<{ rx: number, tx: number }> {
    const [rx, tx] = (await this.sh(['bytes', host])).stdout.trim().split(/\s+/).map(Number)
    return { rx, tx }
  }

  /** Cut the host's cable (its switch port goes down). */
  async partition (host: string): Promise<void> { await this.sh(['partition', host]) }
  async heal (host: string): Promise<void> { await this.sh(['heal', host]) }
  /** Give the host a new lab address (restart its agent to listen there). */
  async addr (host: string, ip: string): Promise<void> { await this.sh(['addr', host, ip]) }

  async list (): Promise<string> { return (await this.sh(['list'])).stdout }

  /** Last lines of the host's agent log ('' if none). */
  logTail (host: string, lines = 40): string {
    const file = join(this.dir, `${host}.log`)
    if (!existsSync(file)) return ''
    return readFileSync(file, 'utf8').split('\n').slice(-lines - 1).join('\n')
  }

  /** Print every host's log tail on stderr (call it when a test fails). */
  dumpLogs (lines = 40): void {
    for (const h of this.hosts) {
      const tail = this.logTail(h, lines)
      if (tail !== '') process.stderr.write(`----- ${this.name}/${h}.log (last ${lines} lines) -----\n${tail}\n`)
    }
  }

  /**
   * Stop the agents and remove the namespaces (idempotent). LAB_DIR is removed too unless
   * `keepFiles` is set (then its path is printed).
   */
  async down (): Promise<void> {
    if (this.isDown) return
    const args = this.keepFiles ? ['down'] : ['down', '--purge']
    await this.sh(args, { timeoutMs: 90_000 })
    this.isDown = true
    open.delete(this)
    if (this.keepFiles) process.stderr.write(`lab ${this.name}: logs and data dirs kept in ${this.dir}\n`)
  }

  private agentAlive (host: string): boolean {
    const pidFile = join(this.dir, `${host}.pid`)
    if (!existsSync(pidFile)) return false
    const pid = Number(readFileSync(pidFile, 'utf8').trim())
    if (!Number.isInteger(pid) || pid <= 0) return false
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
      return state !== 'Z' && state !== 'X'
    } catch {
      return false
    }
  }

  private index (host: string): number {
    const m = /^h(\d+)$/.exec(host)
    const i = m == null ? NaN : Number(m[1])
    if (!(i >= 1 && i <= this.hosts.length)) throw new Error(`lab ${this.name} has no host ${host} (hosts: ${this.hosts.join(', ')})`)
    return i
  }
}
