/**
 * `edgelink agent` as a real process: identity across restarts, the data dir lock,
 * SIGTERM, and the JSON output of `status` and `peers`. Agents listen on 127.0.0.1
 * with mDNS off; every process is killed in afterEach whatever the outcome.
 */
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect, createServer } from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  apiGet,
  assertBuilt,
  cleanEnv,
  cleanup,
  cleanupKept,
  keep,
  runCli,
  SAFE_AGENT_FLAGS,
  stackLines,
  startAgent,
  stopAgent,
  tempDataDir,
  waitFor,
  type AgentProcess
} from '../helpers/cli.js'

beforeAll(() => { assertBuilt() })
afterEach(async () => { await cleanup() })

interface StatusJson { peerId: string, hostname: string, addresses: string[], agentVersion: string }
interface PeerJson { peerId: string, connected: boolean, via: string[], addresses: string[] }

/** Parse stdout as exactly one JSON document (JSON.parse refuses trailing text). */
function oneJsonDocument<T> (stdout: string): T {
  expect(stdout.trim()).not.toBe('')
  return JSON.parse(stdout) as T
}

describe('edgelink agent process', () => {
  it('keeps its PeerId across a restart on the same data dir', async () => {
    const dataDir = tempDataDir()
    const first = await startAgent(dataDir)
    expect(first.peerId).toMatch(/^12D3KooW/)
    expect((await stopAgent(first)).code).toBe(0)
    const second = await startAgent(dataDir, [], { env: cleanEnv({ EDGELINK_MDSN: 'false' }) })
    expect(second.peerId).toBe(first.peerId)
    // A variable nothing reads is logged as a warning at start (and the agent runs).
    expect((await stopAgent(second)).code).toBe(0)
    const warned = second.stdout().split('\n').filter(l => l.includes('EDGELINK_MDSN')).map(l => JSON.parse(l) as { level: number, msg: string })
    expect(warned).toEqual([expect.objectContaining({ level: 40, msg: 'environment variable EDGELINK_MDSN is not one edgelink reads, so it changes nothing; did you mean EDGELINK_MDNS?' })])
    expect(first.stdout()).not.toMatch(/is not one edgelink reads/)
  })

  it('a lost or swapped identity key is refused (exit 1, one line) instead of a new identity for a store that is another host\'s', async () => {
    const dataDir = tempDataDir()
    const first = await startAgent(dataDir)
    expect((await stopAgent(first)).code).toBe(0)
    const key = join(dataDir, 'identity.key')
    const saved = readFileSync(key)
    rmSync(key)
    const missing = await runCli(['agent', '--data-dir', dataDir, ...SAFE_AGENT_FLAGS])
    expect(missing.code).toBe(1)
    expect(stackLines(missing.stderr)).toEqual([])
    expect(missing.stderr).toBe(`edgelink: identity key file ${key} is missing, but this data dir belongs to host ${first.peerId}; restore the file from a backup, or remove ${join(dataDir, 'store')} too, to start this host afresh (it must then be linked to its group again)\n`)
    // Before the fix a new key was made here and the agent started as another host.
    expect(existsSync(key)).toBe(false)

    const other = tempDataDir()
    const stranger = await startAgent(other)
    expect((await stopAgent(stranger)).code).toBe(0)
    writeFileSync(key, readFileSync(join(other, 'identity.key')), { mode: 0o600 })
    const swapped = await runCli(['agent', '--data-dir', dataDir, ...SAFE_AGENT_FLAGS])
    expect(swapped.code).toBe(1)
    expect(swapped.stderr).toContain(`is host ${stranger.peerId}'s, but this data dir belongs to host ${first.peerId}`)

    writeFileSync(key, saved, { mode: 0o600 })
    const back = await startAgent(dataDir)
    expect(back.peerId).toBe(first.peerId)
  })

  it('SIGTERM stops it with exit 0 and removes api.sock, repl.sock and agent.pid', async () => {
    const dataDir = tempDataDir()
    const agent = await startAgent(dataDir)
    for (const f of ['api.sock', 'repl.sock', 'agent.pid']) expect(existsSync(join(dataDir, f)), f).toBe(true)
    const pid = (JSON.parse(readFileSync(join(dataDir, 'agent.pid'), 'utf8')) as { pid: number }).pid
    expect(pid).toBe(agent.proc.pid)

    const res = await stopAgent(agent)
    expect(res.signal).toBeNull()
    expect(res.code).toBe(0)
    for (const f of ['api.sock', 'repl.sock', 'agent.pid']) expect(existsSync(join(dataDir, f)), f).toBe(false)
    expect(res.stdout).toMatch(/"msg":"agent stopped"/)
  })

  it('a second agent on the same data dir exits 1 with one line naming the directory; the first keeps running', async () => {
    const dataDir = tempDataDir()
    const first = await startAgent(dataDir)
    const res = await runCli(['agent', '--data-dir', dataDir, ...SAFE_AGENT_FLAGS])
    expect(res.code).toBe(1)
    expect(stackLines(res.stderr)).toEqual([])
    const lines = res.stderr.split('\n').filter(l => l.trim() !== '')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain(dataDir)
    expect(lines[0]).toMatch(/already/)
    expect(lines[0]).toContain(`pid ${String(first.proc.pid)}`)

    // The loser touched nothing: the first agent's pid file, sockets and API are intact.
    expect(first.proc.exitCode).toBeNull()
    expect((JSON.parse(readFileSync(join(dataDir, 'agent.pid'), 'utf8')) as { pid: number }).pid).toBe(first.proc.pid)
    expect(existsSync(join(dataDir, 'repl.sock'))).toBe(true)
    const status = await apiGet(dataDir, '/api/v1/status')
    expect((status.body as StatusJson).peerId).toBe(first.peerId)
  })

  it('--ui is accepted but says in the log that the Local UI is not in this version, and nothing listens there', async () => {
    const dir = tempDataDir()
    const busy = createServer()
    await new Promise<void>(resolve => { busy.listen(0, '127.0.0.1', () => { resolve() }) })
    const port = (busy.address() as { port: number }).port
    busy.close()
    const a = await startAgent(dir, ['--ui', `127.0.0.1:${port}`])
    try {
      await waitFor(() => a.stdout().includes('Local UI is not part of this version'), 'the --ui warning')
      const refused = await new Promise<boolean>(resolve => {
        const s = connect(port, '127.0.0.1')
        s.on('connect', () => { s.destroy(); resolve(false) })
        s.on('error', () => { resolve(true) })
      })
      expect(refused).toBe(true)
    } finally {
      await stopAgent(a)
    }
  })

  it('a listen address already in use exits 1 with one clear line naming the address', async () => {
    const dataDir = tempDataDir()
    const first = await startAgent(dataDir)
    const taken = first.address.replace(/\/p2p\/.*$/, '')
    const otherDir = tempDataDir()
    const res = await runCli(['agent', '--data-dir', otherDir, '--no-mdns', '--listen', taken])
    expect(res.code).toBe(1)
    expect(stackLines(res.stderr), res.stderr).toEqual([])
    const lines = res.stderr.split('\n').filter(l => l.trim() !== '')
    expect(lines, res.stderr).toHaveLength(1)
    expect(lines[0]).toContain(taken)
    expect(lines[0]).toMatch(/in use/)
    // The failed start cleaned up after itself.
    for (const f of ['api.sock', 'repl.sock', 'agent.pid']) expect(existsSync(join(otherDir, f)), f).toBe(false)
  })

  it('a shared directory as --data-dir exits 1 with one line and keeps its mode; an empty --data-dir is a usage error (exit 2)', async () => {
    const shared = tempDataDir()
    chmodSync(shared, 0o1777)
    writeFileSync(join(shared, 'notes.txt'), 'x')
    const res = await runCli(['agent', '--data-dir', shared, ...SAFE_AGENT_FLAGS])
    expect(res.code).toBe(1)
    expect(stackLines(res.stderr), res.stderr).toEqual([])
    expect(res.stderr).toBe(`edgelink: data dir ${shared} is open to other users (mode 1777) and holds files that are not edgelink's (notes.txt); give the agent a directory of its own, e.g. --data-dir ~/.edgelink\n`)
    expect(statSync(shared).mode & 0o7777).toBe(0o1777)
    expect(readdirSync(shared)).toEqual(['notes.txt'])
    for (const args of [['agent', '--data-dir', '', ...SAFE_AGENT_FLAGS], ['status', '--data-dir', '']]) {
      const empty = await runCli(args)
      expect(empty.code, args.join(' ')).toBe(2)
      expect(empty.stderr).toBe('edgelink: --data-dir is empty; give a directory, e.g. --data-dir ~/.edgelink\n')
    }
  })
})

describe('a running agent seen through the CLI', () => {
  // One agent for these read-only checks.
  let agent: AgentProcess
  let dataDir: string
  beforeAll(async () => {
    dataDir = tempDataDir()
    agent = await startAgent(dataDir, ['--hostname', 'cli-host'])
    keep(agent)
  })
  afterAll(async () => { await cleanupKept() })

  it('logs JSON lines on stdout, one of them "agent started" with its PeerId', async () => {
    await waitFor(() => agent.stdout().includes('"agent started"'), 'the "agent started" log line')
    const lines = agent.stdout().split('\n').filter(l => l.trim() !== '')
    const records = lines.map(l => JSON.parse(l) as { msg?: string, peerId?: string })
    expect(records.find(r => r.msg === 'agent started')?.peerId).toBe(agent.peerId)
  })

  it('status --json prints one JSON document describing this host', async () => {
    const res = await runCli(['status', '--json', '--data-dir', dataDir])
    expect(res.code, res.stderr).toBe(0)
    const status = oneJsonDocument<StatusJson>(res.stdout)
    expect(status.peerId).toBe(agent.peerId)
    expect(status.hostname).toBe('cli-host')
    expect(status.addresses.every(a => a.startsWith('/ip4/127.0.0.1/'))).toBe(true)
    expect(res.stderr).toBe('')
  })

  it('status without --json prints the PeerId and hostname for people', async () => {
    const res = await runCli(['status', '--data-dir', dataDir])
    expect(res.code).toBe(0)
    expect(res.stdout).toMatch(new RegExp(`PeerId\\s+${agent.peerId}`))
    expect(res.stdout).toMatch(/Hostname\s+cli-host/)
  })

  it('peers --json prints an empty JSON list when no peer was seen', async () => {
    const res = await runCli(['peers', '--json', '--data-dir', dataDir])
    expect(res.code, res.stderr).toBe(0)
    expect(oneJsonDocument<PeerJson[]>(res.stdout)).toEqual([])
  })
})

describe('two agent processes', () => {
  it('joined with --peer, both list each other as connected in peers --json', async () => {
    const dirA = tempDataDir()
    const dirB = tempDataDir()
    const a = await startAgent(dirA)
    const b = await startAgent(dirB, ['--peer', a.address])

    const peersOf = async (dataDir: string): Promise<PeerJson[]> => {
      const res = await runCli(['peers', '--json', '--data-dir', dataDir])
      expect(res.code, res.stderr).toBe(0)
      return oneJsonDocument<PeerJson[]>(res.stdout)
    }
    // Poll the API (cheap) until both sides see the connection, then check the CLI's output once.
    await waitFor(async () => {
      const [pa, pb] = await Promise.all([apiGet(dirA, '/api/v1/peers'), apiGet(dirB, '/api/v1/peers')])
      return (pa.body as PeerJson[]).some(p => p.peerId === b.peerId && p.connected) &&
        (pb.body as PeerJson[]).some(p => p.peerId === a.peerId && p.connected)
    }, 'both agents to list each other as connected')

    const [seenByA, seenByB] = await Promise.all([peersOf(dirA), peersOf(dirB)])
    expect(seenByA).toEqual([expect.objectContaining({ peerId: b.peerId, connected: true })])
    expect(seenByB).toEqual([expect.objectContaining({ peerId: a.peerId, connected: true })])
    expect(seenByB[0].via).toContain('config')
  })
})
