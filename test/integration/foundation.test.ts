/**
 * Two real agents in one process on 127.0.0.1 with mDNS off: they connect from a
 * configured peer address or an explicit dial, list each other, and start and stop
 * cleanly.
 */
import { chmodSync, existsSync, mkdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import { waitFor } from '../helpers/wait.js'
import type { Agent } from '../../src/agent/agent.js'
import type { PeerEntry } from '../../src/net/peers.js'
import { AgentSet, tempDir } from '../helpers/agents.js'
import { ApiServer } from '../../src/api/server.js'
import { ReplServer } from '../../src/repl/server.js'

const agents = new AgentSet()
afterEach(async () => { await agents.stopAll() })

async function apiGet<T> (agent: Agent, path: string): Promise<{ status: number, body: T }> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath: agent.paths.apiSocket, method: 'GET', path, timeout: 5_000 }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as T })
        } catch (err) {
          reject(err)
        }
      })
    })
    req.on('timeout', () => { req.destroy(new Error(`GET ${path} timed out`)) })
    req.on('error', reject)
    req.end()
  })
}

/** The first listen address of `agent`, ending in /p2p/<PeerId>. */
function addressOf (agent: Agent): string {
  const address = agent.hostStatus().addresses.find(a => a.startsWith('/ip4/127.0.0.1/tcp/'))
  expect(address).toMatch(new RegExp(`/p2p/${agent.peerId}$`))
  return address as string
}

function entryFor (peers: PeerEntry[], peerId: string): PeerEntry | undefined {
  return peers.find(p => p.peerId === peerId)
}

async function waitConnected (a: Agent, b: Agent): Promise<void> {
  await waitFor(() => entryFor(a.peerList(), b.peerId)?.connected === true && entryFor(b.peerList(), a.peerId)?.connected === true, {
    timeout: 10_000,
    what: `${a.config.hostname} and ${b.config.hostname} to list each other as connected`
  })
}

describe('two agents on 127.0.0.1 without mDNS', () => {
  it('an agent configured with the other\'s address connects at start; both list each other as connected, in peerList() and GET /api/v1/peers', async () => {
    const a = await agents.start({ name: 'a' })
    const b = await agents.start({ name: 'b', config: { peers: [addressOf(a)] } })
    await waitConnected(a, b)

    const bSeesA = entryFor(b.peerList(), a.peerId)
    expect(bSeesA?.via).toContain('config')
    expect(bSeesA?.addresses).toContain(addressOf(a))
    expect(entryFor(a.peerList(), b.peerId)?.via).toContain('inbound')

    for (const [self, other] of [[a, b], [b, a]] as const) {
      const res = await apiGet<PeerEntry[]>(self, '/api/v1/peers')
      expect(res.status).toBe(200)
      expect(entryFor(res.body, other.peerId)).toMatchObject({ peerId: other.peerId, connected: true })
      // An agent never lists itself.
      expect(entryFor(res.body, self.peerId)).toBeUndefined()
    }
  })

  it('agent.dial() connects to the other agent and returns its PeerId; both list each other', async () => {
    const a = await agents.start({ name: 'a' })
    const b = await agents.start({ name: 'b' })
    expect(a.peerList()).toEqual([])
    expect(await a.dial(addressOf(b))).toBe(b.peerId)
    await waitConnected(a, b)
    expect(entryFor(a.peerList(), b.peerId)?.via).toContain('outbound')
    expect((await apiGet<PeerEntry[]>(b, '/api/v1/peers')).body.map(p => p.peerId)).toEqual([a.peerId])
    expect(await a.ping(b.peerId)).toBeGreaterThanOrEqual(0)
  })

  it('a peer that stopped is still listed, as not connected', async () => {
    const a = await agents.start({ name: 'a' })
    const b = await agents.start({ name: 'b' })
    const bId = b.peerId
    await a.dial(addressOf(b))
    await waitConnected(a, b)
    await b.stop()
    await waitFor(() => entryFor(a.peerList(), bId)?.connected === false, {
      timeout: 10_000,
      what: 'a to stop listing b as connected after b stopped'
    })
    expect(a.peerList().map(p => p.peerId)).toEqual([bId])
  })

  it('an unreachable configured peer does not stop the agent from starting', async () => {
    const a = await agents.start({ name: 'a' })
    const address = addressOf(a)
    await a.stop()
    const b = await agents.start({ name: 'b', config: { peers: [address] } })
    expect(b.status).toBe('running')
    expect((await apiGet<{ peerId: string }>(b, '/api/v1/status')).body.peerId).toBe(b.peerId)
  })
})

describe('agent lifecycle', () => {
  it('start twice and stop twice are harmless; stop removes api.sock, repl.sock and agent.pid', async () => {
    const a = await agents.start({ name: 'a' })
    const peerId = a.peerId
    await a.start()
    expect(a.status).toBe('running')
    expect(a.peerId).toBe(peerId)
    for (const p of [a.paths.apiSocket, a.paths.replSocket, a.paths.pidFile]) expect(existsSync(p), p).toBe(true)

    await a.stop()
    await a.stop()
    expect(a.status).toBe('stopped')
    for (const p of [a.paths.apiSocket, a.paths.replSocket, a.paths.pidFile]) expect(existsSync(p), p).toBe(false)
  })

  it('a store that fails to close fails the stop (a supervisor sees it), after everything else is stopped and removed', async () => {
    const a = await agents.start({ name: 'a' })
    const store = (a as unknown as { state: { store: { close: () => Promise<void> } } }).state.store
    const close = store.close.bind(store)
    store.close = async () => { await close(); throw new Error('EIO: i/o error, fsync') }
    await expect(a.stop()).rejects.toThrow(/store did not close cleanly \(EIO: i\/o error, fsync\); the last changes may not be on disk/)
    expect(a.status).toBe('stopped')
    for (const p of [a.paths.apiSocket, a.paths.replSocket, a.paths.pidFile]) expect(existsSync(p), p).toBe(false)
    // And it starts again on the same data dir.
    await a.start()
    expect(a.status).toBe('running')
  })

  it('the API and REPL sockets are 0600, and opening them leaves the process umask alone (a directory another task creates meanwhile stays usable)', async () => {
    const a = await agents.start({ name: 'a' })
    const dir = tempDir()
    chmodSync(dir, 0o700)
    for (const [name, server] of [['api', new ApiServer(a, join(dir, 'api.sock'), a.log)], ['repl', new ReplServer(a, join(dir, 'repl.sock'), a.log)]] as const) {
      const started = server.start()
      // What the rest of the agent does while the listen is awaited, e.g. a fetch making a blob directory.
      mkdirSync(join(dir, `made-meanwhile-${name}`), { mode: 0o755 })
      await started
      try {
        expect(statSync(join(dir, `made-meanwhile-${name}`)).mode & 0o700, name).toBe(0o700)
        expect(statSync(join(dir, `${name}.sock`)).mode & 0o777, name).toBe(0o600)
      } finally {
        await server.stop()
      }
    }
  })

  it('a stopped agent starts again with the same PeerId', async () => {
    const a = await agents.start({ name: 'a' })
    const peerId = a.peerId
    await a.stop()
    await a.start()
    expect(a.peerId).toBe(peerId)
    expect((await apiGet<{ peerId: string }>(a, '/api/v1/status')).body.peerId).toBe(peerId)
  })

  it('a new Agent on the same data dir after a stop keeps the PeerId', async () => {
    const dataDir = tempDir('el-same-')
    const first = await agents.start({ name: 'first', dataDir })
    const peerId = first.peerId
    await first.stop()
    const second = await agents.start({ name: 'second', dataDir })
    expect(second.peerId).toBe(peerId)
  })

  it('a second Agent on a data dir in use fails to start with DataDirLockedError and leaves the first running', async () => {
    const dataDir = tempDir('el-locked-')
    const first = await agents.start({ name: 'first', dataDir })
    let thrown: unknown
    try {
      await agents.start({ name: 'second', dataDir })
    } catch (err) {
      thrown = err
    }
    expect((thrown as Error | undefined)?.name).toBe('DataDirLockedError')
    expect((thrown as Error).message).toContain(dataDir)
    expect(existsSync(first.paths.apiSocket)).toBe(true)
    expect(existsSync(first.paths.pidFile)).toBe(true)
    expect((await apiGet<{ peerId: string }>(first, '/api/v1/status')).body.peerId).toBe(first.peerId)
  })

  it('a start() called while another start() is in progress resolves only once the agent is running', async () => {
    const a = await agents.start({ name: 'a' })
    await a.stop()
    const firstStart = a.start()
    const statusWhenSecondResolved = await a.start().then(() => a.status)
    await firstStart
    expect(statusWhenSecondResolved).toBe('running')
  })

  it('a stop() called while another stop() is in progress resolves only once the agent has stopped and its sockets are gone', async () => {
    const a = await agents.start({ name: 'a' })
    const firstStop = a.stop()
    const seenWhenSecondResolved = await a.stop().then(() => ({ status: a.status, apiSocket: existsSync(a.paths.apiSocket) }))
    await firstStop
    expect(seenWhenSecondResolved).toEqual({ status: 'stopped', apiSocket: false })
  })

  it('a stop() called while start() is in progress leaves the agent stopped', async () => {
    const a = await agents.start({ name: 'a' })
    await a.stop()
    const starting = a.start()
    const stopping = a.stop()
    await Promise.allSettled([starting, stopping])
    expect(a.status).toBe('stopped')
    expect(existsSync(a.paths.apiSocket)).toBe(false)
  })
})
