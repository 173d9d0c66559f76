import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import { AgentSet, tempDir, testConfig, testLogger } from '../helpers/agents.js'
import { Agent } from '../../src/agent/agent.js'
import { SyncRefusedError, SyncSession, SyncStatus } from '../../src/content/sync-protocol.js'
import { waitFor } from '../helpers/wait.js'

const FAST = {
  group: { reconnectInterval: 200, antiEntropyInterval: 500, dialTimeout: 5000, rpcTimeout: 5000, joinTimeout: 5000 },
  status: { interval: 1000, probeInterval: 200, suspectAfter: 800, downAfter: 1600, antiEntropyInterval: 500 }
}
const MiB = 1024 * 1024

async function until (fn: () => boolean | Promise<boolean>, timeout = 60_000): Promise<void> {
  await waitFor(fn, { timeout, interval: 50 })
}

async function * chunks (data: Buffer, size = 256 * 1024): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size)
}

function sha (data: Buffer): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex')
}

function fileDigest (path: string): string {
  return sha(readFileSync(path))
}

describe('content sync between agents in one process', () => {
  const set = new AgentSet()
  let leader: Agent
  let f1: Agent
  let f2: Agent

  async function start (name: string, dataDir?: string): Promise<Agent> {
    return await set.start({ name, config: FAST, ...(dataDir != null ? { dataDir } : {}) })
  }

  beforeEach(async () => {
    leader = await start('lead')
    f1 = await start('f1')
    f2 = await start('f2')
    for (const f of [f1, f2]) await f.group.link((await leader.group.createToken()).token)
    await until(() => [leader, f1, f2].every(a => a.group.hosts().length === 3))
  })
  afterEach(async () => { await set.stopAll() })

  it('a 64 MiB file uploaded on the leader becomes complete on both followers with the same digest', async () => {
    const data = randomBytes(64 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'image.raw', kind: 'provider-image', size: data.length })
    expect(item.digest).toBe(sha(data))
    await until(() => f1.content.blobs.has(item.digest) && f2.content.blobs.has(item.digest))
    expect(fileDigest(f1.content.blobs.path(item.digest))).toBe(item.digest)
    expect(fileDigest(f2.content.blobs.path(item.digest))).toBe(item.digest)
    await until(() => leader.content.list()[0]?.complete === 3, 10_000)
    const row = leader.content.list()[0]
    expect(row.hosts.map(h => h.state)).toEqual(['complete', 'complete', 'complete'])
    expect(leader.hostsTable().every(h => h.content.complete === 1 && h.content.total === 1)).toBe(true)
    // Swarming: the followers served each other chunks, so the leader sent less than two full copies.
    const fromFollowers = [f1, f2].reduce((n, a) => n + [...a.content.traffic.served.values()].reduce((x, y) => x + y, 0), 0)
    const fromLeader = [...leader.content.traffic.served.values()].reduce((x, y) => x + y, 0)
    expect(fromFollowers).toBeGreaterThan(0)
    expect(fromLeader).toBeLessThan(2 * data.length)
  })

  it('a stopped follower resumes from its chunk bitmap and ends with the right digest', async () => {
    const data = randomBytes(48 * MiB)
    const dir = f2.paths.root
    const item = await leader.content.add(chunks(data), { name: 'big', kind: 'file', size: data.length })
    // Stop f2 part-way through (some chunks held, not all).
    await until(() => (f2.content.blobs.list().find(e => e.digest === item.digest)?.have ?? 0) >= 8)
    await f2.stop()
    set.agents.splice(set.agents.indexOf(f2), 1)
    const back = await start('f2', dir)
    const resumedFrom = back.content.blobs.list().find(e => e.digest === item.digest)?.have ?? 0
    expect(resumedFrom).toBeGreaterThan(0)
    await until(() => back.content.blobs.has(item.digest))
    expect(fileDigest(back.content.blobs.path(item.digest))).toBe(item.digest)
    // Chunks verified before the stop were not fetched again.
    const received = [...back.content.traffic.received.values()].reduce((x, y) => x + y, 0)
    expect(received).toBeLessThanOrEqual(data.length - resumedFrom * MiB + MiB)
  })

  it('removing an item deletes it on every member', async () => {
    const data = randomBytes(3 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'gone', kind: 'file', size: data.length })
    await until(() => f1.content.blobs.has(item.digest) && f2.content.blobs.has(item.digest))
    await leader.content.remove(item.digest)
    await until(() => [leader, f1, f2].every(a => !a.content.blobs.has(item.digest) && a.content.list().length === 0 && readdirSync(join(a.paths.blobs, 'sha256')).length === 0))
    for (const a of [leader, f1, f2]) expect(readdirSync(join(a.paths.blobs, 'partial'))).toEqual([])
  })

  it('only the leader adds or removes content', async () => {
    await expect(f1.content.add(chunks(Buffer.from('x')), { name: 'x', kind: 'file', size: 1 })).rejects.toMatchObject({ code: 'NOT_LEADER' })
    const item = await leader.content.add(chunks(Buffer.from('hello')), { name: 'hello', kind: 'file', size: 5 })
    await expect(f1.content.remove(item.digest)).rejects.toMatchObject({ code: 'NOT_LEADER' })
  })

  it('an upload interrupted half way leaves no catalog entry and no file', async () => {
    async function * broken (): AsyncGenerator<Uint8Array> {
      yield randomBytes(2 * MiB)
      throw new Error('client went away')
    }
    await expect(leader.content.add(broken(), { name: 'half', kind: 'file', size: 4 * MiB })).rejects.toThrow()
    expect(leader.content.list()).toEqual([])
    expect(readdirSync(join(leader.paths.blobs, 'sha256'))).toEqual([])
    expect(readdirSync(join(leader.paths.blobs, 'tmp'))).toEqual([])
  })

  it('a host with the whole file sends a chunk to one member at a time (super-seeding), a small file to all', async () => {
    // The followers' own fetchers stay out of it, so only these sessions ask.
    await f1.content.stop()
    await f2.content.stop()
    const big = await leader.content.add(chunks(randomBytes(16 * MiB)), { name: 'big', kind: 'file', size: 16 * MiB })
    const small = await leader.content.add(chunks(randomBytes(MiB)), { name: 'small', kind: 'file', size: MiB })
    const from1 = await SyncSession.open(f1.node, peerIdFromString(leader.peerId), 5000)
    const from2 = await SyncSession.open(f2.node, peerIdFromString(leader.peerId), 5000)
    expect((await from1.chunk(big.digest, 3, MiB)).byteLength).toBe(MiB)
    // Just sent to f1: f2 is told to fetch it from there, and may have any other chunk.
    await expect(from2.chunk(big.digest, 3, MiB)).rejects.toMatchObject({ name: 'SyncRefusedError', status: SyncStatus.SYNC_BUSY })
    expect((await from2.chunk(big.digest, 4, MiB)).byteLength).toBe(MiB)
    expect((await from1.chunk(big.digest, 3, MiB)).byteLength).toBe(MiB)
    // One chunk: no point in waiting for another member to pass it on.
    expect((await from1.chunk(small.digest, 0, MiB)).byteLength).toBe(MiB)
    expect((await from2.chunk(small.digest, 0, MiB)).byteLength).toBe(MiB)
    from1.close()
    from2.close()
  })

  it('a non-member asking for chunks is refused', async () => {
    const item = await leader.content.add(chunks(randomBytes(MiB)), { name: 'secret', kind: 'file', size: MiB })
    const outsider = await start('outsider')
    await outsider.dial(leader.node.getMultiaddrs()[0].toString())
    const session = await SyncSession.open(outsider.node, peerIdFromString(leader.peerId), 5000)
    await expect(session.chunk(item.digest, 0, MiB)).rejects.toBeInstanceOf(Error)
    const again = await SyncSession.open(outsider.node, peerIdFromString(leader.peerId), 5000)
    await expect(again.have(item.digest)).rejects.toBeInstanceOf(SyncRefusedError)
  })
  it('a host that leaves for another group takes none of the old group\'s catalog along: it keeps the new group\'s, and one it leads starts empty', async () => {
    const first = await leader.content.add(chunks(randomBytes(MiB)), { name: 'g1-a', kind: 'file', size: MiB })
    await leader.content.add(chunks(randomBytes(MiB)), { name: 'g1-b', kind: 'file', size: MiB })
    await until(() => [f1, f2].every(f => f.content.list().length === 2 && f.content.blobs.has(first.digest)))
    // f1 leaves and leads a group of its own: its first upload lists that file only.
    await f1.group.unlink()
    await f1.group.createToken()
    const own = await f1.content.add(chunks(randomBytes(MiB)), { name: 'g2-own', kind: 'file', size: MiB })
    expect(f1.content.list().map(i => i.name)).toEqual(['g2-own'])
    // f2 leaves and links to f1's group: it takes that group's catalog (version 1, below the
    // old group's 2), fetches its file, and drops the old group's files.
    await f2.group.unlink()
    await f2.group.link((await f1.group.createToken()).token)
    await until(() => f2.content.blobs.has(own.digest))
    expect(f2.content.list().map(i => i.name)).toEqual(['g2-own'])
    await until(() => !f2.content.blobs.has(first.digest))
  })
})

describe('a member that serves wrong bytes', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  it('is detected: its chunks are never stored, the file is fetched elsewhere and complete with the right digest', async () => {
    const leader = await set.start({ name: 'lead', config: FAST })
    const liar = await set.start({ name: 'liar', config: FAST })
    const dir = tempDir('el-f-')
    // The fetcher gives up on a faulty member after 2 wrong chunks.
    const fetcher = new Agent({ dataDir: dir, config: testConfig('fetcher', FAST), logger: testLogger('fetcher'), contentTuning: { maxFaults: 2, chunkTimeoutMs: 3000 } })
    await fetcher.start()
    set.agents.push(fetcher)
    for (const f of [liar, fetcher]) await f.group.link((await leader.group.createToken()).token)
    await fetcher.stop() // keep it out until the liar holds the whole file
    const data = randomBytes(8 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'img', kind: 'file', size: data.length })
    await until(() => liar.content.blobs.has(item.digest))
    // The liar now corrupts every chunk it serves; chunks are picked at random among holders, so it is asked.
    const real = liar.content.blobs.readChunk.bind(liar.content.blobs)
    liar.content.blobs.readChunk = async (d: string, i: number) => {
      const c = await real(d, i)
      if (c == null) return c
      const bad = Uint8Array.from(c)
      bad[0] ^= 0xff
      return bad
    }
    await fetcher.start()
    await until(() => fetcher.content.blobs.has(item.digest))
    expect(fileDigest(fetcher.content.blobs.path(item.digest))).toBe(item.digest)
    // The liar's chunks were refused (counted as faults) and nothing from it was kept.
    expect(fetcher.content.traffic.faults.get(liar.peerId) ?? 0).toBeGreaterThan(0)
    expect(existsSync(join(dir, 'blobs', 'partial'))).toBe(true)
  })
})

describe('faults while fetching', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  async function group (fetcherInit: Partial<ConstructorParameters<typeof Agent>[0]>): Promise<{ leader: Agent, other: Agent, fetcher: Agent }> {
    const leader = await set.start({ name: 'lead', config: FAST })
    const other = await set.start({ name: 'other', config: FAST })
    const fetcher = new Agent({ dataDir: tempDir('el-f-'), config: testConfig('fetcher', FAST), logger: testLogger('fetcher'), ...fetcherInit })
    await fetcher.start()
    set.agents.push(fetcher)
    for (const f of [other, fetcher]) await f.group.link((await leader.group.createToken()).token)
    return { leader, other, fetcher }
  }

  it('a full disk gives a clear "insufficient space" state, nothing is written, and the fetch resumes when space appears', async () => {
    let free = 1024 * 1024 // 1 MiB free: far too little
    const { leader, fetcher } = await group({ contentFreeSpace: async () => free })
    const data = randomBytes(6 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'big', kind: 'file', size: data.length })
    await until(() => fetcher.content.list()[0]?.hosts.find(h => h.peerId === fetcher.peerId)?.state === 'error')
    const mine = fetcher.content.list()[0].hosts.find(h => h.peerId === fetcher.peerId)
    expect(mine?.error).toMatch(/^insufficient space \(need 6(\.0)? MiB, have 1(\.0)? MiB\)/)
    // Others see it too, through its status.
    await until(() => leader.content.list()[0].hosts.find(h => h.peerId === fetcher.peerId)?.state === 'error')
    expect(readdirSync(join(fetcher.paths.blobs, 'sha256'))).toEqual([])
    free = 100 * 1024 ** 3
    await until(() => fetcher.content.blobs.has(item.digest), 30_000)
    expect(fileDigest(fetcher.content.blobs.path(item.digest))).toBe(item.digest)
  })

  it('a transfer no member can serve any more shows an error saying so (not "syncing" for ever), and completes once a member holds the file again', async () => {
    const { leader, other, fetcher } = await group({ contentTuning: { noSourceMs: 1500, chunkTimeoutMs: 1000 } })
    await other.stop()
    set.agents.splice(set.agents.indexOf(other), 1)
    // The leader answers what it holds, but no chunk: the fetcher has the manifest and a partial file.
    leader.content.blobs.readChunk = async () => await new Promise<never>(() => {})
    const data = randomBytes(6 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'img', kind: 'file', size: data.length })
    await until(() => fetcher.content.blobs.list().some(e => e.digest === item.digest))
    const dir = leader.paths.root
    await leader.stop()
    set.agents.splice(set.agents.indexOf(leader), 1)
    const mine = (): { state: string, error?: string } | undefined => fetcher.content.list()[0]?.hosts.find(h => h.peerId === fetcher.peerId)
    await until(() => mine()?.state === 'error', 20_000)
    expect(mine()?.error).toMatch(new RegExp(`^no member holds the 6 missing chunks of ${item.digest} \\(asked 2 members for 2 s; last answer: .+\\); it is tried again, and completes once a member holds the file$`))
    await set.start({ name: 'lead', dataDir: dir, config: FAST })
    await until(() => fetcher.content.blobs.has(item.digest), 30_000)
    expect(fileDigest(fetcher.content.blobs.path(item.digest))).toBe(item.digest)
    expect(mine()?.state).toBe('complete')
  })

  it('a member that stalls is abandoned after the chunk timeout and the chunks are fetched elsewhere', async () => {
    const { leader, other, fetcher } = await group({ contentTuning: { chunkTimeoutMs: 800 } })
    await fetcher.stop()
    const data = randomBytes(6 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'img', kind: 'file', size: data.length })
    await until(() => other.content.blobs.has(item.digest))
    // `other` now never answers a chunk request.
    other.content.blobs.readChunk = async () => await new Promise<never>(() => {})
    await fetcher.start()
    await until(() => fetcher.content.blobs.has(item.digest), 30_000)
    expect(fileDigest(fetcher.content.blobs.path(item.digest))).toBe(item.digest)
    expect(fetcher.content.traffic.received.get(other.peerId) ?? 0).toBe(0)
    expect(fetcher.content.traffic.received.get(leader.peerId)).toBe(data.length)
  })
})
