/**
 * Group gossip's operator contract, pinned on real `bin/edgelink` processes:
 * `status HOST`, the LIVENESS and HEALTH of `hosts`, and `settings set|show` with a
 * settings hook on the target.
 *
 * - Success: exit 0 with the documented output (`--json`: one JSON document).
 * - Bad input: exit 1, exactly one line on stderr starting `edgelink: `, no stack
 *   trace, nothing on stdout, and nothing changed. Usage errors: exit 2.
 *
 * Agents listen on 127.0.0.1 with mDNS off and shortened status timers (a `--config`
 * YAML file, which also gives each its labels). The file is one story on four agents
 * started once (tests run in order and build on each other's state): h1 leads, h2 and
 * h3 link with tokens, `idle` never links. h2's settings hook records its input; h3's
 * hook fails. h3 is killed with SIGKILL and restarted (liveness); h2 is restarted
 * (settings persist). Conditions are polled through the API with deadlines; the CLI
 * then shows the result.
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { arch, cpus, platform, release, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { HostRow } from '../../src/group/service.js'
import type { SettingsView } from '../../src/settings/service.js'
import type { HostStatusView } from '../../src/status/records.js'
import type { MemberLiveness } from '../../src/status/service.js'
import {
  apiGet,
  failureLine,
  assertBuilt,
  cleanEnv,
  cleanup,
  cleanupKept,
  keep,
  runCli,
  stackLines,
  startAgent,
  stopAgent,
  tempDataDir,
  waitFor,
  type AgentProcess,
  type CliResult
} from '../helpers/cli.js'

type Name = 'h1' | 'h2' | 'h3' | 'idle'
type MemberStatus = HostStatusView & { liveness: string, lastHeard: string | null }
type Row = HostRow & MemberLiveness

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
const SETTINGS = { 'ntp.server': '10.0.0.1', tz: 'UTC' }
const HOOK_ERROR = 'cannot write /etc/ntp.conf: read-only file system'

const agents = {} as Record<Name, AgentProcess>
/** When each agent (re)started, to bound the uptime it reports. */
const startedAt = {} as Record<Name, number>
/** Hook scripts, their output and the agents' config files. */
let work = ''
/** h2's hook appends each JSON input it reads here, one line per run. */
let hookLog = ''

function configFor (name: Name): string {
  const path = join(work, `${name}.yaml`)
  writeFileSync(path, [
    'labels:',
    '  site: shop-7',
    `  box: ${name}-box`,
    'status:',
    '  interval: 1s',
    '  probeInterval: 200ms',
    '  suspectAfter: 600ms',
    '  downAfter: 1200ms',
    // A restarted host is dialled again promptly, and pulls what it missed.
    'group:',
    '  reconnectInterval: 500ms',
    ''
  ].join('\n'))
  return path
}

function hookScript (name: string, body: string): string {
  const path = join(work, name)
  writeFileSync(path, `#!/bin/sh\n${body}\n`)
  chmodSync(path, 0o755)
  return path
}

/** The hook each agent is started with (none for h1 and idle). */
const hooks: Partial<Record<Name, string>> = {}

async function start (name: Name, dataDir?: string): Promise<AgentProcess> {
  const hook = hooks[name]
  const t = Date.now()
  const a = await startAgent(dataDir ?? tempDataDir('el-sts-'), ['--hostname', name, '--config', join(work, `${name}.yaml`)],
    { env: cleanEnv(hook != null ? { EDGELINK_SETTINGS_HOOK: hook } : {}) })
  keep(a)
  agents[name] = a
  startedAt[name] = t
  return a
}

beforeAll(async () => {
  assertBuilt()
  work = mkdtempSync(join(tmpdir(), 'el-sts-work-'))
  hookLog = join(work, 'h2-hook-input.jsonl')
  hooks.h2 = hookScript('record.sh', `cat >> '${hookLog}'`)
  hooks.h3 = hookScript('fail.sh', `cat > /dev/null\necho 'checking ntp.conf' >&2\necho '${HOOK_ERROR}' >&2\nexit 1`)
  const names: Name[] = ['h1', 'h2', 'h3', 'idle']
  for (const n of names) configFor(n)
  await Promise.all(names.map(async n => await start(n)))
  // Link h2 then h3 to h1 with tokens, as an operator would.
  for (const n of ['h2', 'h3'] as const) {
    const token = okJson<{ token: string }>(await el(agents.h1, ['token', 'create', '--json'])).token
    const res = await el(agents[n], ['link', token])
    expect(res.code, res.stderr).toBe(0)
  }
  // Every member knows every other and has a status from each.
  await waitFor(async () => {
    for (const n of ['h1', 'h2', 'h3'] as const) {
      const rows = await api<Row[]>(agents[n], '/api/v1/hosts')
      if (rows.length !== 3 || rows.some(r => r.liveness !== 'alive' || r.health == null)) return false
    }
    return true
  }, 'every member to see 3 alive hosts with a health', 20_000)
})
afterEach(async () => { await cleanup() })
afterAll(async () => {
  await cleanupKept()
  if (work !== '') rmSync(work, { recursive: true, force: true })
})

// ---- helpers ------------------------------------------------------------------

/** `edgelink ARGS --data-dir <agent's dir>`. */
async function el (a: AgentProcess, args: string[]): Promise<CliResult> {
  return await runCli([...args, '--data-dir', a.dataDir])
}

/** Exit 0 and stdout is exactly one JSON document. */
function okJson<T> (res: CliResult): T {
  expect(res.code, `stdout: ${res.stdout}\nstderr: ${res.stderr}`).toBe(0)
  expect(res.stdout.trim()).not.toBe('')
  return JSON.parse(res.stdout) as T
}

async function cliJson<T> (a: AgentProcess, args: string[]): Promise<T> {
  return okJson<T>(await el(a, [...args, '--json']))
}


/** Exit 2 (usage), no stack trace, nothing on stdout. Returns stderr. */
function usageError (res: CliResult): string {
  expect(res.code, `stdout: ${res.stdout}\nstderr: ${res.stderr}`).toBe(2)
  expect(stackLines(res.stderr), res.stderr).toEqual([])
  expect(res.stdout).toBe('')
  return res.stderr
}

/**
 * Run a CLI command until `ok` holds for its result, and return that result. With the
 * shortened timers a member may briefly turn suspect when this machine is loaded, so
 * "everyone is alive" is waited for, not sampled once.
 */
async function cliUntil (a: AgentProcess, args: string[], ok: (res: CliResult) => boolean, what: string, timeoutMs = 10_000): Promise<CliResult> {
  let last: CliResult | undefined
  await waitFor(async () => { last = await el(a, args); return ok(last) }, what, timeoutMs)
  if (last == null) throw new Error(`no result for ${what}`)
  return last
}

function parsed<T> (res: CliResult): T | undefined {
  try { return JSON.parse(res.stdout) as T } catch { return undefined }
}

async function api<T> (a: AgentProcess, path: string): Promise<T> {
  const res = await apiGet(a.dataDir, path)
  expect(res.status, `${path}: ${JSON.stringify(res.body)}`).toBe(200)
  return res.body as T
}

async function rowOf (on: AgentProcess, name: Name): Promise<Row | undefined> {
  return (await api<Row[]>(on, '/api/v1/hosts')).find(r => r.peerId === agents[name].peerId)
}

function lines (text: string): string[] {
  return text.split('\n').filter(l => l.trim() !== '')
}

/** `KEY  value` lines of the human `status`/`settings show` forms, continuation lines joined to their key. */
function fields (text: string): Map<string, string[]> {
  const out = new Map<string, string[]>()
  let key = ''
  for (const l of lines(text)) {
    const m = /^(\S+)\s{2,}(.*)$/.exec(l)
    if (m != null) { key = m[1]; out.set(key, [m[2]]) } else out.get(key)?.push(l.trim())
  }
  return out
}

/** A human table as objects keyed by its header's column names (columns are padded to the header). */
function table (text: string): Array<Record<string, string>> {
  const [head, ...rows] = lines(text)
  const cols = [...head.matchAll(/\S+(?: \S+)*/g)].map(m => ({ name: m[0], at: m.index }))
  return rows.map(r => Object.fromEntries(cols.map((c, i) => [c.name, r.slice(c.at, cols[i + 1]?.at ?? r.length).trim()])))
}

function hookRuns (): unknown[] {
  return existsSync(hookLog) ? lines(readFileSync(hookLog, 'utf8')).map(l => JSON.parse(l) as unknown) : []
}

function auditEvents (a: AgentProcess, event: string): Array<Record<string, unknown>> {
  return lines(readFileSync(join(a.dataDir, 'audit.log'), 'utf8')).map(l => JSON.parse(l) as Record<string, unknown>).filter(e => e.event === event)
}

// ---- status HOST --------------------------------------------------------------

describe('edgelink status HOST', () => {
  function expectStatusOfH2 (s: MemberStatus): void {
    expect(s.peerId).toBe(agents.h2.peerId)
    expect(s.hostname).toBe('h2')
    expect(s.addresses.length).toBeGreaterThan(0)
    for (const a of s.addresses) expect(a).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+/)
    // h2's own listen port is among the addresses it reports.
    const port = /\/tcp\/(\d+)/.exec(agents.h2.address)?.[1]
    expect(s.addresses.some(a => a.includes(`/tcp/${port ?? '?'}`)), JSON.stringify(s.addresses)).toBe(true)
    expect(s.agentVersion).toBe(VERSION)
    expect(s.uptimeMs).toBeGreaterThan(0)
    expect(s.uptimeMs).toBeLessThanOrEqual(Date.now() - startedAt.h2 + 1000)
    // Same machine: the OS facts are this process's.
    expect(s.os).toEqual({ platform: platform(), release: expect.any(String), kernel: release(), arch: arch() })
    expect(s.os.release).not.toBe('')
    expect(s.cpus).toBe(cpus().length)
    expect(s.load).toHaveLength(3)
    for (const l of s.load) expect(l).toBeGreaterThanOrEqual(0)
    expect(s.memory.total).toBe(totalmem())
    expect(s.memory.free).toBeGreaterThan(0)
    expect(s.memory.free).toBeLessThanOrEqual(s.memory.total)
    expect(s.disk.total).toBeGreaterThan(0)
    expect(s.disk.free).toBeGreaterThanOrEqual(0)
    expect(s.disk.free).toBeLessThanOrEqual(s.disk.total)
    expect(s.role).toBe('follower')
    expect(['ok', 'degraded']).toContain(s.health)
    if (s.health === 'degraded') expect(s.healthDetail).not.toBe('')
    expect(s.labels).toEqual({ site: 'shop-7', box: 'h2-box' })
    expect(s.settings).toMatchObject({ version: 0, state: 'none' })
    expect(s.liveness).toBe('alive')
    expect(Date.now() - Date.parse(s.lastHeard ?? '')).toBeLessThan(5_000)
    expect(Number.isNaN(Date.parse(s.at))).toBe(false)
  }

  /** `status HOST --json` on `on`, once HOST is alive there. */
  async function aliveStatus (on: AgentProcess, host: string): Promise<MemberStatus> {
    const res = await cliUntil(on, ['status', host, '--json'], r => r.code === 0 && parsed<MemberStatus>(r)?.liveness === 'alive', `${host} to be alive`)
    return okJson<MemberStatus>(res)
  }

  it('status h2 --json (by hostname) on another member shows h2\'s own status', async () => {
    expectStatusOfH2(await aliveStatus(agents.h3, 'h2'))
  })

  it('status <PeerId> --json shows the same host', async () => {
    expectStatusOfH2(await aliveStatus(agents.h3, agents.h2.peerId))
    const byLeader = await aliveStatus(agents.h1, agents.h2.peerId)
    expect(byLeader).toMatchObject({ peerId: agents.h2.peerId, hostname: 'h2', labels: { box: 'h2-box' }, liveness: 'alive' })
  })

  it('status of the leader on a follower shows role leader and the leader\'s labels', async () => {
    const s = await aliveStatus(agents.h2, 'h1')
    expect(s).toMatchObject({ peerId: agents.h1.peerId, hostname: 'h1', role: 'leader', labels: { site: 'shop-7', box: 'h1-box' }, liveness: 'alive' })
  })

  it('status h2 prints every field for people', async () => {
    const res = await cliUntil(agents.h3, ['status', 'h2'], r => r.code === 0 && /^Liveness\s+alive\b/m.test(r.stdout), 'h2 to be alive')
    const f = fields(res.stdout)
    for (const k of ['Hostname', 'PeerId', 'Role', 'Liveness', 'Health', 'Addresses', 'Version', 'Uptime', 'OS', 'CPU', 'Memory', 'Disk', 'Labels', 'Settings']) {
      expect(f.has(k), `field ${k} in\n${res.stdout}`).toBe(true)
    }
    expect(f.get('Hostname')).toEqual(['h2'])
    expect(f.get('PeerId')).toEqual([agents.h2.peerId])
    expect(f.get('Role')).toEqual(['follower'])
    expect(f.get('Liveness')?.[0]).toMatch(/^alive\b/)
    expect(f.get('Health')?.[0]).toMatch(/^(ok|degraded)\b/)
    expect(f.get('Addresses')?.every(a => a.startsWith('/ip4/127.0.0.1/tcp/'))).toBe(true)
    expect(f.get('Version')).toEqual([VERSION])
    expect(f.get('OS')?.[0]).toContain(release())
    expect(f.get('OS')?.[0]).toContain(arch())
    expect(f.get('CPU')?.[0]).toContain(`${cpus().length} cores`)
    expect(f.get('Memory')?.[0]).toMatch(/GiB/)
    expect(f.get('Disk')?.[0]).toMatch(/GiB/)
    expect(f.get('Labels')?.slice().sort()).toEqual(['box=h2-box', 'site=shop-7'])
    expect(f.get('Settings')).toEqual(['none'])
  })

  it('status nosuchhost exits 1 with one line naming it', async () => {
    expect(failureLine(await el(agents.h1, ['status', 'nosuchhost']))).toContain('nosuchhost')
  })

  it('status with a 150-character name exits 1 saying no linked host has it (not an HTTP detail)', async () => {
    const name = 'n'.repeat(150)
    const line = failureLine(await el(agents.h1, ['status', name]))
    expect(line).toMatch(/no linked host/)
    expect(line).not.toMatch(/\/api\/v1|param/)
    expect(line.length).toBeLessThan(300)
  })

  it('status h2 on an idle host exits 1 with one line naming it and saying it is not a linked host', async () => {
    const line = failureLine(await el(agents.idle, ['status', 'h2']))
    expect(line).toContain('"h2"')
    expect(line).toMatch(/not linked|no linked host/)
  })

  it('status <own hostname> on an idle host shows itself: role idle, alive', async () => {
    const s = await cliJson<MemberStatus>(agents.idle, ['status', 'idle'])
    expect(s).toMatchObject({ peerId: agents.idle.peerId, hostname: 'idle', role: 'idle', liveness: 'alive', labels: { site: 'shop-7', box: 'idle-box' } })
    expect(await cliJson<MemberStatus>(agents.idle, ['status', agents.idle.peerId])).toMatchObject({ hostname: 'idle', role: 'idle' })
  })
})

// ---- hosts: liveness and health ---------------------------------------------------

describe('edgelink hosts liveness and health', () => {
  it('hosts prints LIVENESS and HEALTH columns; every host is alive with a health', async () => {
    const res = await cliUntil(agents.h1, ['hosts'], r => r.code === 0 && table(r.stdout).every(row => row.LIVENESS === 'alive'), 'every host alive in the table')
    expect(lines(res.stdout)[0]).toMatch(/^HOSTNAME\s+ROLE\s+LIVENESS\s+HEALTH\b/)
    expect(lines(res.stdout)[0]).toMatch(/\bPEER ID\b/)
    const rows = table(res.stdout)
    expect(rows.map(r => r['PEER ID']).sort()).toEqual([agents.h1.peerId, agents.h2.peerId, agents.h3.peerId].sort())
    for (const r of rows) {
      expect(r.LIVENESS, JSON.stringify(r)).toBe('alive')
      expect(['ok', 'degraded'], JSON.stringify(r)).toContain(r.HEALTH)
    }
  })

  it('hosts --json rows have liveness and health on every member', async () => {
    const results = await Promise.all((['h1', 'h2', 'h3'] as const).map(async n =>
      await cliUntil(agents[n], ['hosts', '--json'], r => r.code === 0 && (parsed<Row[]>(r)?.every(x => x.liveness === 'alive') ?? false), `every host alive on ${n}`)))
    for (const [i, res] of results.entries()) {
      const n = `h${i + 1}`
      const rows = okJson<Row[]>(res)
      expect(rows, n).toHaveLength(3)
      for (const r of rows) {
        expect(r.liveness, `${n}: ${r.hostname}`).toBe('alive')
        expect(['ok', 'degraded'], `${n}: ${r.hostname}`).toContain(r.health)
      }
    }
  })

  it('a follower killed with SIGKILL is down on the leader within a few seconds, through suspect', async () => {
    agents.h3.proc.kill('SIGKILL')
    await agents.h3.exited
    const t0 = Date.now()
    await waitFor(async () => (await rowOf(agents.h1, 'h3'))?.liveness === 'down', 'h3 to be down on h1', 8_000)
    // suspectAfter 600ms, downAfter 1200ms, probes every 200ms.
    expect(Date.now() - t0).toBeLessThan(5_000)
    const row = (await cliJson<Row[]>(agents.h1, ['hosts'])).find(r => r.hostname === 'h3')
    expect(row).toMatchObject({ liveness: 'down', role: 'follower' })
    const human = table((await el(agents.h1, ['hosts'])).stdout).find(r => r['PEER ID'] === agents.h3.peerId)
    expect(human?.LIVENESS).toBe('down')
    // Its last known status is still shown, with its liveness.
    expect(await cliJson<MemberStatus>(agents.h1, ['status', 'h3'])).toMatchObject({ hostname: 'h3', liveness: 'down' })
    // The leader's audit log tells the story: alive -> suspect -> down.
    const changes = auditEvents(agents.h1, 'liveness.changed').filter(e => e.peer === agents.h3.peerId).map(e => `${String(e.from)}>${String(e.to)}`)
    expect(changes.slice(-2)).toEqual(['alive>suspect', 'suspect>down'])
  })

  it('restarted, it is alive again on the leader', async () => {
    const dataDir = agents.h3.dataDir
    await start('h3', dataDir)
    await waitFor(async () => (await rowOf(agents.h1, 'h3'))?.liveness === 'alive', 'h3 to be alive on h1 again', 10_000)
    const res = await cliUntil(agents.h1, ['hosts', '--json'], r => r.code === 0 && parsed<Row[]>(r)?.find(x => x.hostname === 'h3')?.liveness === 'alive', 'h3 alive in hosts --json')
    const row = okJson<Row[]>(res).find(r => r.hostname === 'h3')
    expect(row).toMatchObject({ liveness: 'alive', connected: true })
    expect(['ok', 'degraded']).toContain(row?.health)
    const back = auditEvents(agents.h1, 'liveness.changed').filter(e => e.peer === agents.h3.peerId).map(e => `${String(e.from)}>${String(e.to)}`)
    expect(back).toContain('down>alive')
    // Its new status (new uptime) reaches the leader.
    await waitFor(async () => (await api<MemberStatus>(agents.h1, `/api/v1/hosts/${agents.h3.peerId}/status`)).uptimeMs < Date.now() - startedAt.h3 + 1000,
      'h3\'s new status to reach h1', 10_000)
  })
})

// ---- settings -------------------------------------------------------------------

describe('edgelink settings', () => {
  async function leaderView (host: string): Promise<SettingsView> {
    return await api<SettingsView>(agents.h1, `/api/v1/settings?host=${encodeURIComponent(host)}`)
  }

  it('settings set h2 k=v k2=v2 on the leader exits 0 and says what it sent', async () => {
    const res = await el(agents.h1, ['settings', 'set', 'h2', 'ntp.server=10.0.0.1', 'tz=UTC'])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toMatch(/^Settings v1 sent to h2; it reports: \w+\. Follow with `edgelink settings show h2`\.\n$/)
  })

  it('settings show h2 --json on the leader becomes applied, version 1, with the settings', async () => {
    await waitFor(async () => (await leaderView('h2')).state.state === 'applied', 'h1 to see h2\'s settings applied', 10_000)
    const v = await cliJson<SettingsView>(agents.h1, ['settings', 'show', 'h2'])
    expect(v).toMatchObject({ peerId: agents.h2.peerId, hostname: 'h2', version: 1, settings: SETTINGS, issuer: agents.h1.peerId })
    expect(v.state).toMatchObject({ version: 1, state: 'applied', message: 'applied' })
    expect(Number.isNaN(Date.parse(v.issuedAt ?? ''))).toBe(false)
  })

  it('h2\'s hook ran once with the settings as JSON on stdin', () => {
    const runs = hookRuns()
    expect(runs).toHaveLength(1)
    const input = runs[0] as { issuedAt: string }
    expect(input).toEqual({ version: 1, settings: SETTINGS, issuedAt: expect.any(String), issuer: agents.h1.peerId, hostname: 'h2' })
    expect(Number.isNaN(Date.parse(input.issuedAt))).toBe(false)
  })

  it('settings show (no HOST) on the target shows its own state, for scripts and for people', async () => {
    const v = await cliJson<SettingsView>(agents.h2, ['settings', 'show'])
    expect(v).toMatchObject({ peerId: agents.h2.peerId, hostname: 'h2', version: 1, settings: SETTINGS, issuer: agents.h1.peerId })
    expect(v.state).toMatchObject({ version: 1, state: 'applied' })
    const res = await el(agents.h2, ['settings', 'show'])
    expect(res.code, res.stderr).toBe(0)
    const f = fields(res.stdout)
    expect(f.get('Host')).toEqual([`h2 (${agents.h2.peerId})`])
    expect(f.get('Version')).toEqual(['1'])
    expect(f.get('Settings')?.slice().sort()).toEqual(['ntp.server=10.0.0.1', 'tz=UTC'])
    expect(f.get('State')?.[0]).toMatch(/^applied\b/)
    expect(f.get('Issued')?.[0]).toContain(agents.h1.peerId)
  })

  it('another member sees the applied settings in h2\'s status', async () => {
    await waitFor(async () => (await api<MemberStatus>(agents.h3, '/api/v1/hosts/h2/status')).settings.state === 'applied', 'h3 to see h2\'s settings applied', 10_000)
    const s = await cliJson<MemberStatus>(agents.h3, ['status', 'h2'])
    expect(s.settings).toMatchObject({ version: 1, state: 'applied' })
    expect(fields((await el(agents.h3, ['status', 'h2'])).stdout).get('Settings')?.[0]).toMatch(/^v1 applied\b/)
  })

  describe('refusals exit 1 (or 2 for usage) and change nothing', () => {
    async function expectUnchanged (): Promise<void> {
      const v = await leaderView('h2')
      expect(v.version).toBe(1)
      expect(v.settings).toEqual(SETTINGS)
      expect(hookRuns()).toHaveLength(1)
      expect(auditEvents(agents.h1, 'settings.issued')).toHaveLength(1)
    }

    it('settings set on a follower: "only the leader"', async () => {
      const line = failureLine(await el(agents.h2, ['settings', 'set', 'h2', 'a=1']))
      expect(line).toMatch(/only the leader/)
      expect(line).toContain(agents.h1.peerId)
      await expectUnchanged()
    })

    it('settings set HOST novalue is a usage error (exit 2) naming the argument', async () => {
      const [novalue, noKey, none] = await Promise.all([['novalue'], ['=v'], []].map(async pairs => await el(agents.h1, ['settings', 'set', 'h2', ...pairs])))
      expect(usageError(novalue)).toContain('novalue')
      expect(usageError(noKey)).toContain('=v')
      usageError(none)
      await expectUnchanged()
    })

    it('settings set HOST \'bad key=1\' exits 1 naming the key', async () => {
      expect(failureLine(await el(agents.h1, ['settings', 'set', 'h2', 'bad key=1']))).toContain('bad key')
      await expectUnchanged()
    })

    it('settings set nosuchhost a=1 exits 1 naming it', async () => {
      expect(failureLine(await el(agents.h1, ['settings', 'set', 'nosuchhost', 'a=1']))).toContain('nosuchhost')
      await expectUnchanged()
    })

    it('settings show nosuchhost exits 1 naming it', async () => {
      expect(failureLine(await el(agents.h1, ['settings', 'show', 'nosuchhost']))).toContain('nosuchhost')
    })

    it('settings show "" is a usage error, not this host; the API refuses an empty or repeated host', async () => {
      expect(usageError(await el(agents.h1, ['settings', 'show', '']))).toMatch(/HOST is empty/)
      const empty = await apiGet(agents.h1.dataDir, '/api/v1/settings?host=')
      expect(empty.status).toBe(400)
      expect(JSON.stringify(empty.body)).toMatch(/host is empty/)
      const twice = await apiGet(agents.h1.dataDir, '/api/v1/settings?host=h2&host=h3')
      expect(twice.status).toBe(400)
      expect(JSON.stringify(twice.body)).toMatch(/give host once/)
    })

    it('settings set HOST __proto__=x is refused by name (exit 2), not silently dropped', async () => {
      expect(usageError(await el(agents.h1, ['settings', 'set', 'h2', '__proto__=x', 'zz=1']))).toMatch(/"__proto__" cannot be a setting name/)
      await expectUnchanged()
    })
  })

  it('a hook that exits 1 gives failed with the last line of its stderr', async () => {
    const r = await cliJson<SettingsView>(agents.h1, ['settings', 'set', 'h3', 'mode=strict'])
    expect(r).toMatchObject({ peerId: agents.h3.peerId, version: 1, settings: { mode: 'strict' } })
    await waitFor(async () => (await leaderView('h3')).state.state === 'failed', 'h1 to see h3\'s settings failed', 10_000)
    const v = await cliJson<SettingsView>(agents.h1, ['settings', 'show', 'h3'])
    expect(v.state).toMatchObject({ version: 1, state: 'failed', message: `exit code 1: ${HOOK_ERROR}` })
    const own = await cliJson<SettingsView>(agents.h3, ['settings', 'show'])
    expect(own.state).toMatchObject({ version: 1, state: 'failed', message: `exit code 1: ${HOOK_ERROR}` })
    const res = await el(agents.h1, ['status', 'h3'])
    expect(fields(res.stdout).get('Settings')?.[0]).toBe(`v1 failed: exit code 1: ${HOOK_ERROR}`)
  })

  /** What the restart below observed: the target's own status right after it came back, and every view the leader had meanwhile. */
  let ownAfterRestart: MemberStatus | undefined
  const leaderViews: string[] = []

  it('settings persist across a restart of the target: still applied v1, and the hook is not run again', async () => {
    const dataDir = agents.h2.dataDir
    await stopAgent(agents.h2)
    // Watch the leader's view of h2 from the restart until well after it heard the new h2.
    let watching = true
    const watcher = (async () => {
      while (watching) {
        try {
          const v = await leaderView('h2')
          leaderViews.push(`v${v.state.version} ${v.state.state}`)
        } catch (err) {
          leaderViews.push(`error: ${(err as Error).message}`)
        }
        await new Promise(resolve => setTimeout(resolve, 25))
      }
    })()
    try {
      await start('h2', dataDir)
      ownAfterRestart = await cliJson<MemberStatus>(agents.h2, ['status', 'h2'])
      const v = await cliJson<SettingsView>(agents.h2, ['settings', 'show'])
      expect(v).toMatchObject({ version: 1, settings: SETTINGS, issuer: agents.h1.peerId })
      expect(v.state).toMatchObject({ version: 1, state: 'applied' })
      // Until the leader holds a status the restarted h2 published more than a status interval (1s) after it
      // started: whatever it reported first has reached the leader and been superseded by then.
      await waitFor(async () => {
        const s = await api<MemberStatus>(agents.h1, '/api/v1/hosts/h2/status')
        return s.uptimeMs < Date.now() - startedAt.h2 + 1000 && Date.parse(s.at) > startedAt.h2 + 1500
      }, 'h1 to hold a status from the restarted h2 published after its first interval', 10_000)
    } finally {
      watching = false
      await watcher
    }
    await waitFor(async () => (await leaderView('h2')).state.state === 'applied', 'h1 to see h2\'s settings applied after its restart', 5_000)
    expect((await cliJson<SettingsView>(agents.h1, ['settings', 'show', 'h2'])).state).toMatchObject({ version: 1, state: 'applied' })
    expect(hookRuns()).toHaveLength(1)
  })

  it('after the restart the target never reports older settings: its own status and the leader\'s view stay v1 applied', () => {
    // The restarted host must not publish a status that says "no settings" before it has loaded its own.
    expect(leaderViews.length).toBeGreaterThan(10)
    const own = ownAfterRestart?.settings
    expect({ own: `v${own?.version ?? '?'} ${own?.state ?? '?'}`, leader: [...new Set(leaderViews)] }).toEqual({ own: 'v1 applied', leader: ['v1 applied'] })
  })
})
