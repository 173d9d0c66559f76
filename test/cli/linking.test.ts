/**
 * Issue 3's operator contract for linking, pinned on real `bin/edgelink` processes:
 * `token create|list|revoke`, `link`, `unlink`, `leader relinquish`, `hosts`, `status`
 * and the leader's audit log.
 *
 * - Success: exit 0 with the documented output (`--json`: one JSON document).
 * - Bad input: exit 1, exactly one line on stderr starting `edgelink: `, no stack
 *   trace, nothing on stdout, and nothing changed on either side (the leader's hosts
 *   table and token book, every host's group fields).
 * - Usage errors: exit 2.
 *
 * Agents listen on 127.0.0.1 with mDNS off; a token carries the leader's address, so
 * `edgelink link TOKEN` needs nothing else. The file is one story on four agents that
 * are started once (tests run in order and build on each other's group state):
 * h1 leads, h2 links first, h3 stays idle through the refusals and then links from
 * stdin, and `dead` issues a token and is killed. Then unlink, relinquish, dissolve,
 * and the audit log.
 */
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { toString as u8ToString } from 'uint8arrays'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { CreatedToken, HostRow } from '../../src/group/service.js'
import type { TokenView } from '../../src/group/tokens.js'
import { decodeToken, hashSecret, hex } from '../../src/group/token.js'
import {
  apiGet,
  assertBuilt,
  cleanup,
  cleanupKept,
  keep,
  runCli,
  stackLines,
  startAgent,
  tempDataDir,
  waitFor,
  type AgentProcess,
  type CliResult
} from '../helpers/cli.js'

type Name = 'h1' | 'h2' | 'h3' | 'dead'

interface GroupView {
  groupId: string | null
  role: 'leader' | 'follower' | null
  leader: string | null
  term: number | null
  rosterVersion: number | null
}

const agents = {} as Record<Name, AgentProcess>
/** Every token text each agent issued (successful `token create`), for the audit and secrecy checks. */
const issued: Record<Name, string[]> = { h1: [], h2: [], h3: [], dead: [] }
/** First stderr line of each refused `link`, to check the messages are distinct. */
const refusals = new Map<string, string>()
/** The token h2 linked with, and one the operator revoked (both on h1). */
let usedToken = ''
let revokedToken = ''
let expiredToken = ''

beforeAll(async () => {
  assertBuilt()
  const names: Name[] = ['h1', 'h2', 'h3', 'dead']
  await Promise.all(names.map(async name => {
    const a = await startAgent(tempDataDir('el-lnk-'), ['--hostname', name])
    keep(a)
    agents[name] = a
  }))
})
afterEach(async () => { await cleanup() })
afterAll(async () => { await cleanupKept() })

// ---- helpers ------------------------------------------------------------------

function nameOf (a: AgentProcess): Name {
  return (Object.keys(agents) as Name[]).find(n => agents[n] === a) ?? 'h1'
}

/** `edgelink ARGS --data-dir <agent's dir>`. */
async function el (a: AgentProcess, args: string[], opts: { input?: string, timeoutMs?: number } = {}): Promise<CliResult> {
  return await runCli([...args, '--data-dir', a.dataDir], opts)
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

/**
 * Exit 1, one line on stderr starting `edgelink: `, no stack trace, nothing on stdout,
 * and none of `secrets` in the message. Returns the line.
 */
function failureLine (res: CliResult, secrets: string[] = []): string {
  expect(res.code, `stdout: ${res.stdout}\nstderr: ${res.stderr}`).toBe(1)
  expect(stackLines(res.stderr), res.stderr).toEqual([])
  const lines = res.stderr.split('\n').filter(l => l.trim() !== '')
  expect(lines, res.stderr).toHaveLength(1)
  expect(lines[0]).toMatch(/^edgelink: \S/)
  expect(res.stdout).toBe('')
  for (const s of secrets) expect(lines[0]).not.toContain(s)
  return lines[0]
}

/** The forms in which a token or its secret could leak: the text, its body, the secret (hex, base64, base58) and its stored hash. */
function secretForms (token: string): string[] {
  const t = decodeToken(token)
  const s = Buffer.from(t.secret)
  return [token, token.slice('elt1_'.length), s.toString('hex'), s.toString('base64').replace(/=+$/, ''), s.toString('base64url'),
    u8ToString(t.secret, 'base58btc').slice(1), hashSecret(t.secret)]
}

function idOf (token: string): string {
  return hex(decodeToken(token).tokenId)
}

async function createToken (a: AgentProcess, args: string[] = []): Promise<CreatedToken> {
  const t = await cliJson<CreatedToken>(a, ['token', 'create', ...args])
  issued[nameOf(a)].push(t.token)
  return t
}

function groupView (s: GroupView): GroupView {
  return { groupId: s.groupId, role: s.role, leader: s.leader, term: s.term, rosterVersion: s.rosterVersion }
}

function hostKeys (rows: HostRow[]): string[] {
  return rows.map(r => `${r.peerId} ${r.hostname} ${r.role}`).sort()
}

async function api<T> (a: AgentProcess, path: string): Promise<T> {
  const res = await apiGet(a.dataDir, path)
  expect(res.status, JSON.stringify(res.body)).toBe(200)
  return res.body as T
}

interface Snapshot {
  hosts: string[]
  tokens: string[]
  status: Record<string, GroupView>
}

/** Group state seen through the API: the leader's hosts table and token book, and h1-h3's group fields. */
async function snapshot (leader: AgentProcess = agents.h1): Promise<Snapshot> {
  const [hosts, tokens, ...statuses] = await Promise.all([
    api<HostRow[]>(leader, '/api/v1/hosts'),
    api<TokenView[]>(leader, '/api/v1/tokens'),
    ...(['h1', 'h2', 'h3'] as const).map(async n => await api<GroupView>(agents[n], '/api/v1/status'))
  ])
  return {
    hosts: hostKeys(hosts),
    // An active token turning "expired" with time is not a change anybody made.
    tokens: tokens.map(t => `${t.id} ${t.state === 'expired' ? 'active' : t.state} ${t.failures} ${t.usedBy ?? '-'}`).sort(),
    status: Object.fromEntries((['h1', 'h2', 'h3'] as const).map((n, i) => [n, groupView(statuses[i] as GroupView)]))
  }
}

/** Nothing changed since `before`, also as `hosts --json` on the leader and `status --json` on `host` print it. */
async function expectUnchanged (before: Snapshot, host: AgentProcess, leader: AgentProcess = agents.h1): Promise<void> {
  const [after, hostsCli, statusCli] = await Promise.all([
    snapshot(leader),
    cliJson<HostRow[]>(leader, ['hosts']),
    cliJson<GroupView>(host, ['status'])
  ])
  expect(after).toEqual(before)
  expect(hostKeys(hostsCli)).toEqual(before.hosts)
  expect(groupView(statusCli)).toEqual(before.status[nameOf(host)])
}

/** `link` on `host` is refused with exit 1 and one line matching `pattern`, and nothing changes. */
async function expectLinkRefused (name: string, host: AgentProcess, tokenArg: string, pattern: RegExp, opts: { input?: string, secrets?: string[], timeoutMs?: number } = {}): Promise<{ line: string, ms: number }> {
  const before = await snapshot()
  const t0 = Date.now()
  const res = await el(host, ['link', tokenArg], opts)
  const ms = Date.now() - t0
  // Recorded before the checks, so the distinct-messages test judges wording alone.
  refusals.set(name, lines(res.stderr)[0] ?? '')
  const line = failureLine(res, opts.secrets)
  expect(line).toMatch(pattern)
  await expectUnchanged(before, host)
  return { line, ms }
}

/** A message with its variable parts (times, PeerIds, ids, numbers) replaced, so two messages differ only in wording. */
function shape (line: string): string {
  return line
    .replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, '<time>')
    .replace(/12D3KooW[1-9A-HJ-NP-Za-km-z]+/g, '<peer>')
    .replace(/\b[0-9a-f]{16,}\b/g, '<hex>')
    .replace(/\d+/g, '<n>')
}

function lines (text: string): string[] {
  return text.split('\n').filter(l => l.trim() !== '')
}

// ---- tokens -------------------------------------------------------------------

describe('edgelink token', () => {
  it('token create --json prints {token, id, expiresAt, groupId}; the default lifetime is 2 minutes', async () => {
    const t0 = Date.now()
    const res = await el(agents.h1, ['token', 'create', '--json'])
    const t1 = Date.now()
    const t = okJson<CreatedToken>(res)
    issued.h1.push(t.token)
    expect(Object.keys(t).sort()).toEqual(['expiresAt', 'groupId', 'id', 'token'])
    expect(t.token).toMatch(/^elt1_[1-9A-HJ-NP-Za-km-z]+$/)
    expect(t.id).toMatch(/^[0-9a-f]{16}$/)
    expect(idOf(t.token)).toBe(t.id)
    expect(t.groupId).toMatch(/^[0-9a-f]{32}$/)
    const exp = Date.parse(t.expiresAt)
    expect(exp).toBeGreaterThanOrEqual(t0 + 120_000 - 1000)
    expect(exp).toBeLessThanOrEqual(t1 + 120_000 + 1000)
    expect(res.stderr).toBe('')
    // Issuing made the idle h1 the leader of a new group of one.
    const s = await cliJson<GroupView>(agents.h1, ['status'])
    expect(groupView(s)).toEqual({ groupId: t.groupId, role: 'leader', leader: agents.h1.peerId, term: 1, rosterVersion: 1 })
  })

  it('the human form prints the token alone on stdout (so $(edgelink token create) works) and the explanation on stderr', async () => {
    const res = await el(agents.h1, ['token', 'create'])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toMatch(/^elt1_[1-9A-HJ-NP-Za-km-z]+\n$/)
    const token = res.stdout.trim()
    issued.h1.push(token)
    expect(() => decodeToken(token)).not.toThrow()
    expect(res.stderr).toContain(idOf(token))
    expect(res.stderr).toContain('edgelink link')
    expect(res.stderr).not.toContain(token)
  })

  it('the human explanation says how long the token lives (2m), not "just now"', async () => {
    const res = await el(agents.h1, ['token', 'create'])
    expect(res.code, res.stderr).toBe(0)
    issued.h1.push(res.stdout.trim())
    expect(res.stderr).not.toMatch(/just now/)
    expect(res.stderr).toMatch(/\b(2m|1m5\ds)\b/)
  })

  it('--ttl 90s sets the expiry to about now + 90 s', async () => {
    const t0 = Date.now()
    const t = await createToken(agents.h1, ['--ttl', '90s'])
    const t1 = Date.now()
    const exp = Date.parse(t.expiresAt)
    expect(exp).toBeGreaterThanOrEqual(t0 + 90_000 - 1000)
    expect(exp).toBeLessThanOrEqual(t1 + 90_000 + 1000)
    expect(decodeToken(t.token).expiresAt).toBe(exp)
  })

  it.each(['garbage', '0s', '100d'])('--ttl %s exits 1 with one line naming the allowed range, and issues nothing', async (ttl) => {
    const before = await snapshot()
    const line = failureLine(await el(agents.h1, ['token', 'create', '--ttl', ttl]))
    expect(line).toMatch(/\b1s\b/)
    expect(line).toMatch(/\b24h\b/)
    expect(await snapshot()).toEqual(before)
  })

  it('token list --json lists every issued token and never its text, secret or secret hash', async () => {
    const list = await cliJson<TokenView[]>(agents.h1, ['token', 'list'])
    expect(list.map(t => t.id).sort()).toEqual(issued.h1.map(idOf).sort())
    for (const t of list) {
      expect(t).toMatchObject({ groupId: expect.stringMatching(/^[0-9a-f]{32}$/), state: 'active', failures: 0 })
      for (const k of Object.keys(t)) expect(k).not.toMatch(/secret|token|hash/i)
    }
    const text = JSON.stringify(list)
    for (const token of issued.h1) for (const s of secretForms(token)) expect(text).not.toContain(s)
  })

  it('token revoke with an unknown or malformed id exits 1 with one line', async () => {
    const before = await snapshot()
    expect(failureLine(await el(agents.h1, ['token', 'revoke', 'nosuchid']))).toContain('nosuchid')
    expect(failureLine(await el(agents.h1, ['token', 'revoke', '0123456789abcdef']))).toContain('0123456789abcdef')
    expect(await snapshot()).toEqual(before)
  })

  it('token revoke ID exits 0 and token list shows the token revoked', async () => {
    const t = await createToken(agents.h1)
    revokedToken = t.token
    const res = await el(agents.h1, ['token', 'revoke', t.id])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toBe(`Token ${t.id} is revoked.\n`)
    const list = await cliJson<TokenView[]>(agents.h1, ['token', 'list'])
    expect(list.find(x => x.id === t.id)?.state).toBe('revoked')
  })
})

// ---- linking ------------------------------------------------------------------

describe('edgelink link', () => {
  it('link TOKEN --json on an idle host exits 0 and prints its new group fields', async () => {
    const t = await createToken(agents.h1)
    usedToken = t.token
    const r = okJson<GroupView & { hosts: number }>(await el(agents.h2, ['link', t.token, '--json']))
    expect(r).toEqual({ groupId: t.groupId, role: 'follower', leader: agents.h1.peerId, term: 1, rosterVersion: 2, hosts: 2 })
    const s = await cliJson<GroupView>(agents.h2, ['status'])
    expect(groupView(s)).toEqual({ groupId: t.groupId, role: 'follower', leader: agents.h1.peerId, term: 1, rosterVersion: 2 })
    expect((await cliJson<TokenView[]>(agents.h1, ['token', 'list'])).find(x => x.id === t.id)).toMatchObject({ state: 'used', usedBy: agents.h2.peerId })
  })

  it('token create on a follower exits 1 pointing at the leader, and issues nothing', async () => {
    const before = await snapshot()
    const line = failureLine(await el(agents.h2, ['token', 'create']))
    expect(line).toMatch(/only the leader/)
    expect(line).toContain(agents.h1.peerId)
    await expectUnchanged(before, agents.h2)
    expect(await api<TokenView[]>(agents.h2, '/api/v1/tokens')).toEqual([])
  })

  describe('each bad token exits 1 with its own message and changes nothing on either side', () => {
    it('link with no argument is a usage error (exit 2)', async () => {
      const before = await snapshot()
      const res = await el(agents.h3, ['link'])
      expect(res.code, res.stderr).toBe(2)
      expect(res.stderr).toMatch(/token/)
      expect(stackLines(res.stderr)).toEqual([])
      await expectUnchanged(before, agents.h3)
    })

    it('an expired token', async () => {
      const t = await createToken(agents.h1, ['--ttl', '1s'])
      const exp = Date.parse(t.expiresAt)
      await waitFor(() => Date.now() > exp + 20, 'the 1s token to expire', 5_000)
      expiredToken = t.token
      await expectLinkRefused('expired', agents.h3, t.token, /expired/, { secrets: secretForms(t.token) })
    })

    it('a used token', async () => {
      expect((await api<TokenView[]>(agents.h1, '/api/v1/tokens')).find(x => x.id === idOf(usedToken))?.state).toBe('used')
      await expectLinkRefused('used', agents.h3, usedToken, /already used|single.use/, { secrets: secretForms(usedToken) })
    })

    it('a revoked token', async () => {
      expect((await api<TokenView[]>(agents.h1, '/api/v1/tokens')).find(x => x.id === idOf(revokedToken))?.state).toBe('revoked')
      await expectLinkRefused('revoked', agents.h3, revokedToken, /revoked/, { secrets: secretForms(revokedToken) })
    })

    it('a token with one character changed', async () => {
      const t = await createToken(agents.h1)
      const i = 40
      const changed = t.token.slice(0, i) + (t.token[i] === 'A' ? 'B' : 'A') + t.token.slice(i + 1)
      await expectLinkRefused('one character changed', agents.h3, changed, /mistyped|damaged|altered/, { secrets: secretForms(t.token) })
    })

    it('a truncated token', async () => {
      const t = await createToken(agents.h1)
      const half = t.token.slice(0, Math.ceil(t.token.length / 2))
      await expectLinkRefused('truncated', agents.h3, half, /truncated|incomplete/, { secrets: [t.token] })
    })

    it('an empty string', async () => {
      await expectLinkRefused('empty', agents.h3, '', /empty|no token/)
    })

    it('"hello"', async () => {
      await expectLinkRefused('hello', agents.h3, 'hello', /not an edgelink token/)
    })

    it('a 5000-character string', async () => {
      await expectLinkRefused('5000 characters', agents.h3, 'elt1_' + 'z'.repeat(4995), /longer|too long|characters/)
    })

    it('link - reads the token from stdin', async () => {
      const { line } = await expectLinkRefused('stdin', agents.h3, '-', /not an edgelink token/, { input: 'hello\n' })
      refusals.delete('stdin')
      expect(line).toBe(refusals.get('hello'))
    })

    it('a token whose leader was stopped: "cannot reach the leader" within 10 s', async () => {
      const t = await createToken(agents.dead)
      agents.dead.proc.kill('SIGKILL')
      await agents.dead.exited
      const { ms } = await expectLinkRefused('leader stopped', agents.h3, t.token, /cannot reach the leader/, { secrets: secretForms(t.token), timeoutMs: 20_000 })
      expect(ms).toBeLessThan(10_000)
    })

    it('link on a host that is already linked; the token stays usable', async () => {
      const t = await createToken(agents.h1)
      await expectLinkRefused('already linked', agents.h2, t.token, /already linked/, { secrets: secretForms(t.token) })
      expect((await api<TokenView[]>(agents.h1, '/api/v1/tokens')).find(x => x.id === t.id)?.state).toBe('active')
    })

    it('every refusal has its own message', () => {
      expect(refusals.size).toBe(10)
      const byShape = new Map<string, string[]>()
      for (const [name, line] of refusals) byShape.set(shape(line), [...(byShape.get(shape(line)) ?? []), name])
      const shared = [...byShape.entries()].filter(([, names]) => names.length > 1).map(([line, names]) => `${names.join(' and ')}: ${line}`)
      expect(shared).toEqual([])
    })

    it('the idle host is still idle', async () => {
      expect(groupView(await cliJson<GroupView>(agents.h3, ['status']))).toEqual({ groupId: null, role: null, leader: null, term: null, rosterVersion: null })
    })
  })

  describe('a group of three linked through the CLI', () => {
    let groupId = ''

    it('link - with the token on stdin exits 0 and says which group it joined', async () => {
      const t = await createToken(agents.h1)
      groupId = t.groupId
      const res = await el(agents.h3, ['link', '-'], { input: t.token + '\n' })
      expect(res.code, res.stderr).toBe(0)
      expect(res.stdout).toBe(`Linked to group ${t.groupId} (leader ${agents.h1.peerId}, 3 hosts). See \`edgelink hosts\`.\n`)
    })

    it('hosts --json on every host lists the same 3 rows with peerId, hostname, role, addresses, connected', async () => {
      const trio = [agents.h1, agents.h2, agents.h3]
      // h2 learns of h3 from the leader's push, which may finish just after h3's link returned.
      await waitFor(async () => (await Promise.all(trio.map(async a => (await api<HostRow[]>(a, '/api/v1/hosts')).length))).every(n => n === 3),
        'every host to list 3 linked hosts')
      const expected = [
        `${agents.h1.peerId} h1 leader`, `${agents.h2.peerId} h2 follower`, `${agents.h3.peerId} h3 follower`
      ].sort()
      const tables = await Promise.all(trio.map(async a => await cliJson<HostRow[]>(a, ['hosts'])))
      for (const [i, rows] of tables.entries()) {
        expect(hostKeys(rows), `hosts on h${i + 1}`).toEqual(expected)
        for (const r of rows) {
          expect(r).toMatchObject({ peerId: expect.any(String), hostname: expect.any(String), role: expect.any(String), connected: expect.any(Boolean) })
          expect(Array.isArray(r.addresses) && r.addresses.length > 0 && r.addresses.every(a => a.startsWith('/ip4/127.0.0.1/tcp/'))).toBe(true)
        }
      }
      // The leader has just talked to both followers.
      expect(tables[0].every(r => r.connected)).toBe(true)
    })

    it('status --json on every host has groupId, role, leader, term, rosterVersion', async () => {
      for (const n of ['h1', 'h2', 'h3'] as const) {
        const s = await cliJson<GroupView>(agents[n], ['status'])
        expect(groupView(s), n).toEqual({ groupId, role: n === 'h1' ? 'leader' : 'follower', leader: agents.h1.peerId, term: 1, rosterVersion: 3 })
      }
    })

    it('hosts prints a header and one row per host for people', async () => {
      const res = await el(agents.h2, ['hosts'])
      expect(res.code, res.stderr).toBe(0)
      const out = lines(res.stdout)
      expect(out).toHaveLength(4)
      expect(out[0]).toMatch(/^HOSTNAME\s+ROLE\s+LIVENESS\s+HEALTH\s+SYNCED\s+PEER ID\s+ADDRESSES\s+CONNECTED\b/)
      for (const n of ['h1', 'h2', 'h3'] as const) {
        const row = out.slice(1).find(l => l.includes(agents[n].peerId))
        expect(row, n).toMatch(new RegExp(`^${n}\\b.*\\b${n === 'h1' ? 'leader' : 'follower'}\\b`))
      }
      expect(out.slice(1).find(l => l.startsWith('h2'))).toContain('(this host)')
    })
  })
})

// ---- unlink and leadership ------------------------------------------------------

describe('edgelink unlink and leader relinquish', () => {
  it('leader relinquish with followers and no --to exits 1 naming the followers', async () => {
    const before = await snapshot()
    const line = failureLine(await el(agents.h1, ['leader', 'relinquish']))
    expect(line).toContain('--to')
    expect(line).toMatch(/\bh2\b/)
    expect(line).toMatch(/\bh3\b/)
    await expectUnchanged(before, agents.h1)
  })

  it('unlink without HOST on the leader exits 1: the leader cannot be unlinked', async () => {
    const before = await snapshot()
    expect(failureLine(await el(agents.h1, ['unlink']))).toMatch(/leader cannot be unlinked/)
    await expectUnchanged(before, agents.h1)
  })

  it('unlink nosuchhost exits 1 naming it', async () => {
    const before = await snapshot()
    expect(failureLine(await el(agents.h1, ['unlink', 'nosuchhost']))).toContain('nosuchhost')
    await expectUnchanged(before, agents.h1)
  })

  it('unlink of another host on a follower exits 1 pointing at the leader', async () => {
    const before = await snapshot()
    const line = failureLine(await el(agents.h2, ['unlink', 'h3']))
    expect(line).toMatch(/only the leader/)
    await expectUnchanged(before, agents.h2)
  })

  it('unlink h2 (by hostname) on the leader exits 0; h2 becomes idle', async () => {
    const res = await el(agents.h1, ['unlink', 'h2'])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toBe(`Unlinked h2 (${agents.h2.peerId}).\n`)
    expect(hostKeys(await cliJson<HostRow[]>(agents.h1, ['hosts']))).toEqual([`${agents.h1.peerId} h1 leader`, `${agents.h3.peerId} h3 follower`].sort())
    // The removed host learns it from the leader's push, which may land just after the command returned.
    await waitFor(async () => (await api<GroupView>(agents.h2, '/api/v1/status')).groupId === null, 'h2 to learn it was unlinked')
    expect(groupView(await cliJson<GroupView>(agents.h2, ['status']))).toEqual({ groupId: null, role: null, leader: null, term: null, rosterVersion: null })
  })

  it('leader relinquish --to h3 exits 0 and every member shows h3 as leader', async () => {
    const r = okJson<{ leader: string, term: number, dissolved: boolean }>(await el(agents.h1, ['leader', 'relinquish', '--to', 'h3', '--json']))
    expect(r).toEqual({ leader: agents.h3.peerId, term: 2, dissolved: false })
    const [s1, s3] = await Promise.all([cliJson<GroupView>(agents.h1, ['status']), cliJson<GroupView>(agents.h3, ['status'])])
    expect(s1).toMatchObject({ role: 'follower', leader: agents.h3.peerId, term: 2 })
    expect(s3).toMatchObject({ role: 'leader', leader: agents.h3.peerId, term: 2 })
    expect(s1.groupId).toBe(s3.groupId)
  })

  it('unlink on a follower unlinks itself: exit 0, idle, gone from the leader\'s table', async () => {
    const res = await el(agents.h1, ['unlink'])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toBe(`Unlinked h1 (${agents.h1.peerId}).\n`)
    expect(groupView(await cliJson<GroupView>(agents.h1, ['status']))).toEqual({ groupId: null, role: null, leader: null, term: null, rosterVersion: null })
    expect(hostKeys(await cliJson<HostRow[]>(agents.h3, ['hosts']))).toEqual([`${agents.h3.peerId} h3 leader`])
  })

  it('leader relinquish on a group of one dissolves it', async () => {
    const res = await el(agents.h3, ['leader', 'relinquish'])
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toMatch(/dissolved/)
    expect(groupView(await cliJson<GroupView>(agents.h3, ['status']))).toEqual({ groupId: null, role: null, leader: null, term: null, rosterVersion: null })
    expect(await cliJson<HostRow[]>(agents.h3, ['hosts'])).toEqual([])
  })
})

// ---- audit log ---------------------------------------------------------------------

describe('audit.log', () => {
  interface Entry { time: string, event: string, [k: string]: unknown }
  const read = (a: AgentProcess): { text: string, entries: Entry[] } => {
    const text = readFileSync(join(a.dataDir, 'audit.log'), 'utf8')
    return { text, entries: lines(text).map(l => JSON.parse(l) as Entry) }
  }

  it('the leader\'s audit.log has one JSON line per event', () => {
    const { entries } = read(agents.h1)
    for (const e of entries) {
      expect(Number.isNaN(Date.parse(e.time)), JSON.stringify(e)).toBe(false)
      expect(typeof e.event).toBe('string')
    }
    const of = (event: string): Entry[] => entries.filter(e => e.event === event)
    // Every issued token exactly once; the refused --ttl values issued nothing.
    expect(of('token.issued').map(e => e.tokenId).sort()).toEqual(issued.h1.map(idOf).sort())
    expect(of('join.accepted').map(e => e.peer).sort()).toEqual([agents.h2.peerId, agents.h3.peerId].sort())
    // The leader saw three of the refused links (the others failed before reaching it;
    // an expired one reaches it: the leader decides expiry, not the joiner's clock).
    // The operator's revocation, then the handover's: every token still active when h1 handed over.
    expect(of('token.revoked')).toEqual([
      expect.objectContaining({ tokenId: idOf(revokedToken), reason: 'operator' }),
      expect.objectContaining({ reason: 'leadership was handed over', count: expect.any(Number) })
    ])
    expect(of('join.refused').map(e => ({ reason: e.reason, tokenId: e.tokenId, peer: e.peer })).sort((a, b) => String(a.reason).localeCompare(String(b.reason)))).toEqual([
      { reason: 'EXPIRED', tokenId: idOf(expiredToken), peer: agents.h3.peerId },
      { reason: 'REVOKED', tokenId: idOf(revokedToken), peer: agents.h3.peerId },
      { reason: 'USED', tokenId: idOf(usedToken), peer: agents.h3.peerId }
    ])
    expect(of('unlink')).toEqual([expect.objectContaining({ peer: agents.h2.peerId, hostname: 'h2' })])
    expect(of('leader.changed')).toEqual([expect.objectContaining({ from: agents.h1.peerId, to: agents.h3.peerId, term: 2 })])
    expect(statSync(join(agents.h1.dataDir, 'audit.log')).mode & 0o777).toBe(0o600)
  })

  it('no audit.log and no agent log contains a token or its secret', () => {
    const all = [...issued.h1, ...issued.dead]
    expect(all.length).toBeGreaterThan(5)
    const forms = all.flatMap(secretForms)
    for (const n of ['h1', 'h2', 'h3', 'dead'] as const) {
      const { text } = read(agents[n])
      const log = agents[n].stdout()
      for (const f of forms) {
        expect(text.includes(f), `${n}/audit.log contains a token secret form ${f}`).toBe(false)
        expect(log.includes(f), `${n}'s log contains a token secret form ${f}`).toBe(false)
      }
    }
  })
})
