/**
 * Regressions from a review of the content store and the sync path (commit cdcede4), with
 * real agents in one process: a member unlinked mid-transfer, a local write failure, two
 * items that each fit the disk but not together, an item removed while its manifest is on
 * its way, and catalogs split by a change of leader. Each test waits on conditions and on
 * gates it holds, never on the clock.
 */
import { describe, it, expect, afterEach, vi } from 'vitest'
import { randomBytes } from 'node:crypto'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import { AgentSet, tempDir, testConfig, testLogger } from '../helpers/agents.js'
import { Agent } from '../../src/agent/agent.js'
import type { PartialBlob } from '../../src/content/blobs.js'
import { signCatalog, verifyCatalog, type CatalogView } from '../../src/content/catalog.js'
import { loadOrCreateIdentity } from '../../src/identity/index.js'
import type { HostItemState } from '../../src/content/service.js'
import { SYNC_PROTOCOL, SyncSession, SyncStatus } from '../../src/content/sync-protocol.js'
import { waitFor } from '../helpers/wait.js'

const FAST = {
  group: { reconnectInterval: 200, antiEntropyInterval: 500, dialTimeout: 5000, rpcTimeout: 5000, joinTimeout: 5000 },
  status: { interval: 1000, probeInterval: 200, suspectAfter: 800, downAfter: 1600, antiEntropyInterval: 500 }
}
const MiB = 1024 * 1024

async function until (fn: () => boolean | Promise<boolean>, timeout = 20_000): Promise<void> {
  await waitFor(fn, { timeout, interval: 50 })
}

async function * chunks (data: Buffer, size = 256 * 1024): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size)
}

/** A promise the test resolves when it chooses. */
class Gate {
  readonly passed: Promise<void>
  open: () => void = () => {}
  constructor () {
    this.passed = new Promise<void>(resolve => { this.open = resolve })
  }
}

/** `agent`'s own row for `digest` in its content listing. */
function mine (agent: Agent, digest: string): HostItemState | undefined {
  return agent.content.list().find(i => i.digest === digest)?.hosts.find(h => h.peerId === agent.peerId)
}

/** Bytes `from` has served to `to`. */
function servedBy (from: Agent, to: Agent): number {
  return from.content.traffic.served.get(to.peerId) ?? 0
}

/** Put `write` in front of writeChunk on every transfer `agent`'s store opens from now on (only that agent's). */
function onWrite (agent: Agent, write: (real: PartialBlob['writeChunk'], index: number, data: Uint8Array) => Promise<void>): void {
  const blobs = agent.content.blobs
  const open = blobs.openPartial.bind(blobs)
  blobs.openPartial = async (manifest) => {
    const p = await open(manifest)
    const real = p.writeChunk.bind(p)
    p.writeChunk = async (index, data) => { await write(real, index, data) }
    return p
  }
}

/** Count openPartial calls on `agent`'s store once each has settled (opened or refused). */
function countOpens (agent: Agent, settled: (n: number) => void): void {
  const blobs = agent.content.blobs
  const open = blobs.openPartial.bind(blobs)
  let n = 0
  blobs.openPartial = async (manifest) => {
    try {
      return await open(manifest)
    } finally {
      settled(++n)
    }
  }
}

describe('sync regressions from the store and sync-path review', () => {
  const set = new AgentSet()
  /** Every gate a test holds is opened before the agents stop, so that no stop waits on one. */
  let gates: Gate[] = []

  function gate (): Gate {
    const g = new Gate()
    gates.push(g)
    return g
  }

  async function start (name: string): Promise<Agent> {
    return await set.start({ name, config: FAST })
  }

  async function link (leader: Agent, ...followers: Agent[]): Promise<void> {
    for (const f of followers) await f.group.link((await leader.group.createToken()).token)
  }

  afterEach(async () => {
    for (const g of gates) g.open()
    gates = []
    vi.restoreAllMocks()
    await set.stopAll()
  })

  it('a member unlinked while its sync streams are open is refused on a stream opened before (SYNC_NOT_MEMBER), and on a new one', async () => {
    const leader = await start('lead')
    const f1 = await start('f1')
    const f2 = await start('f2')
    await link(leader, f1, f2)
    // Only this test's sessions ask the leader for anything on f1's behalf.
    await f1.content.stop()
    const item = await leader.content.add(chunks(randomBytes(4 * MiB)), { name: 'secret', kind: 'file', size: 4 * MiB })
    const before = await SyncSession.open(f1.node, peerIdFromString(leader.peerId), 5000)
    try {
      expect((await before.chunk(item.digest, 0, MiB)).byteLength).toBe(MiB)
      await leader.group.unlink('f1')
      expect(leader.group.isMemberPeer(f1.peerId)).toBe(false)
      const served = servedBy(leader, f1)
      // The stream opened while f1 was a member gets nothing more.
      await expect(before.chunk(item.digest, 1, MiB)).rejects.toMatchObject({ name: 'SyncRefusedError', status: SyncStatus.SYNC_NOT_MEMBER })
      expect(servedBy(leader, f1)).toBe(served)
    } finally {
      before.close()
    }
    const fresh = await SyncSession.open(f1.node, peerIdFromString(leader.peerId), 5000)
    try {
      await expect(fresh.have(item.digest)).rejects.toMatchObject({ name: 'SyncRefusedError', status: SyncStatus.SYNC_NOT_MEMBER })
    } finally {
      fresh.close()
    }
  })

  it('an unlinked host ends its running fetch, and the members serve it nothing more', async () => {
    const leader = await start('lead')
    const f1 = await start('f1')
    const f2 = await start('f2')
    await link(leader, f1, f2)
    // f1 writes two chunks, then every write waits: it is mid-download, each worker holding a chunk.
    const writes = gate()
    let calls = 0
    let held = 0
    onWrite(f1, async (real, index, data) => {
      if (calls++ >= 2) { held++; await writes.passed }
      await real(index, data)
    })
    const data = randomBytes(32 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'big', kind: 'file', size: data.length })
    await until(() => held > 0)
    await leader.group.unlink('f1')
    await until(() => f1.group.membership == null)
    writes.open()
    // Its fetch is over (not merely refused by every member and waiting for ever).
    await until(() => f1.content.fetching(item.digest) == null && f1.content.progress().find(p => p.digest === item.digest)?.state !== 'syncing', 10_000)
    const served = servedBy(leader, f1) + servedBy(f2, f1)
    expect(served).toBeLessThan(data.length / 2)
    // Then the group carries on: a new item reaches f2. By then f1 was sent nothing more.
    const next = await leader.content.add(chunks(randomBytes(MiB)), { name: 'next', kind: 'file', size: MiB })
    await until(() => f2.content.blobs.has(next.digest))
    expect(servedBy(leader, f1) + servedBy(f2, f1)).toBe(served)
    expect(f1.content.blobs.has(item.digest)).toBe(false)
  })

  it('a local write failure (ENOSPC) ends the fetch with "insufficient space", blames no member and is not fetched again and again', async () => {
    const leader = await start('lead')
    const fetcher = await start('fetcher')
    await link(leader, fetcher)
    let writes = 0
    onWrite(fetcher, async () => {
      writes++
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' })
    })
    const data = randomBytes(8 * MiB)
    const item = await leader.content.add(chunks(data), { name: 'img', kind: 'file', size: data.length })
    // The fetch ends with the error, or (the bug) the chunks are fetched again and again.
    await until(() => mine(fetcher, item.digest)?.state === 'error' || servedBy(leader, fetcher) >= 2 * data.length, 10_000)
    expect(mine(fetcher, item.digest)?.state).toBe('error')
    expect(mine(fetcher, item.digest)?.error).toMatch(/^insufficient space \(need /)
    expect(writes).toBeGreaterThan(0)
    // The member sent good chunks: no fault is counted against it.
    expect(fetcher.content.traffic.faults.get(leader.peerId) ?? 0).toBe(0)
    // One attempt costs at most the chunks in flight when the write failed, not the file over and over.
    expect(servedBy(leader, fetcher)).toBeLessThan(2 * data.length)
    expect(fetcher.content.blobs.has(item.digest)).toBe(false)
  })

  it('two items that each fit the free space but not together: the second shows "insufficient space", and completes once space appears', async () => {
    let free = 6 * MiB
    const leader = await start('lead')
    const fetcher = new Agent({ dataDir: tempDir('el-f-'), config: testConfig('fetcher', FAST), logger: testLogger('fetcher'), contentFreeSpace: async () => free })
    await fetcher.start()
    set.agents.push(fetcher)
    await link(leader, fetcher)
    // Writes wait until the second item's transfer was asked for: the first is open (and its
    // sparse file empty) when the second is checked for space.
    const writes = gate()
    let opens = 0
    countOpens(fetcher, n => { opens = n; if (n === 2) writes.open() })
    onWrite(fetcher, async (real, index, data) => { await writes.passed; await real(index, data) })
    const a = await leader.content.add(chunks(randomBytes(4 * MiB)), { name: 'a', kind: 'file', size: 4 * MiB })
    await until(() => opens === 1)
    const b = await leader.content.add(chunks(randomBytes(4 * MiB)), { name: 'b', kind: 'file', size: 4 * MiB })
    await until(() => opens === 2 && ['error', 'complete'].includes(mine(fetcher, b.digest)?.state ?? ''))
    expect(mine(fetcher, b.digest)?.state).toBe('error')
    expect(mine(fetcher, b.digest)?.error).toMatch(/^insufficient space \(need /)
    await until(() => fetcher.content.blobs.has(a.digest))
    // Retried every RETRY_MS (5 s, src/content/service.ts).
    free = 100 * 1024 ** 3
    await until(() => fetcher.content.blobs.has(b.digest), 15_000)
    expect(mine(fetcher, b.digest)?.state).toBe('complete')
  })

  it('an item removed while a member is fetching its manifest leaves no partial file and no index entry there', async () => {
    const leader = await start('lead')
    const f1 = await start('f1')
    await link(leader, f1)
    const manifests = gate()
    let asked = false
    const real = SyncSession.prototype.manifest
    // Only f1 asks for manifests (the leader has the file): its answer is held until the item is gone.
    vi.spyOn(SyncSession.prototype, 'manifest').mockImplementation(async function (this: SyncSession, digest: string) {
      const bytes = await real.call(this, digest)
      asked = true
      await manifests.passed
      return bytes
    })
    let opened = 0
    countOpens(f1, n => { opened = n })
    const item = await leader.content.add(chunks(randomBytes(4 * MiB)), { name: 'gone', kind: 'file', size: 4 * MiB })
    await until(() => asked)
    await leader.content.remove(item.digest)
    await until(() => f1.content.list().length === 0)
    expect(opened).toBe(0)
    manifests.open()
    // The fetch goes on to open the transfer (a partial file and an index entry), then must delete them.
    await until(() => opened === 1)
    await until(() => f1.content.blobs.list().length === 0 && readdirSync(join(f1.paths.blobs, 'partial')).length === 0, 10_000)
    expect(f1.content.blobs.has(item.digest)).toBe(false)
  })

  it('stopping a host whose fetch waits on a member that never answers takes no longer than the stop itself', async () => {
    const leader = await start('lead')
    const dir = tempDir('el-patient-')
    // A long request timeout: without cancellation, stop() would wait for it to run out.
    const f1 = new Agent({ dataDir: dir, config: testConfig('f1', FAST), logger: testLogger('f1'), contentTuning: { chunkTimeoutMs: 120_000 } })
    await f1.start()
    set.agents.push(f1)
    await link(leader, f1)
    // The leader now takes sync requests and never answers them.
    const asked = gate()
    await leader.node.unhandle(SYNC_PROTOCOL)
    await leader.node.handle(SYNC_PROTOCOL, async (stream) => { asked.open(); await new Promise<void>(resolve => stream.addEventListener('close', () => { resolve() })) })
    await leader.content.add(chunks(randomBytes(MiB)), { name: 'waiting', kind: 'file', size: MiB })
    await asked.passed
    const stopped = f1.stop().then(() => 'stopped' as const)
    const outcome = await Promise.race([stopped, new Promise<'still waiting'>(resolve => { setTimeout(() => { resolve('still waiting') }, 30_000).unref() })])
    expect(outcome).toBe('stopped')
  })

  /**
   * The leader lists `before` while f1 receives no catalog; then f1 becomes leader and
   * lists 'b' (a catalog of the new term whose version is f1's own next one, 1); then f1
   * hears catalogs again. Returns the three hosts' item names and catalogs (lead, f1, f2).
   */
  async function splitCatalogs (before: string[]): Promise<{ names: () => string[][], views: () => Promise<Array<CatalogView | undefined>> }> {
    const lead = await start('lead')
    const f1 = await start('f1')
    const f2 = await start('f2')
    await link(lead, f1, f2)
    await until(() => [lead, f1, f2].every(a => a.group.hosts().length === 3))
    // f1 misses catalogs for a while (a slow link, a restart).
    let blocked = true
    const receive = f1.content.receive.bind(f1.content)
    f1.content.receive = async (bytes, via) => blocked ? 'stale' : await receive(bytes, via)
    for (const name of before) await lead.content.add(chunks(randomBytes(4096)), { name, kind: 'file', size: 4096 })
    await until(() => f2.content.list().length === before.length)
    expect(f1.content.list()).toEqual([])
    await lead.group.relinquish('f1')
    await until(() => [lead, f1, f2].every(x => x.group.roster?.leader === f1.peerId))
    await f1.content.add(chunks(randomBytes(4096)), { name: 'b', kind: 'file', size: 4096 })
    blocked = false
    return {
      names: () => [lead, f1, f2].map(x => x.content.list().map(i => i.name).sort()),
      views: async () => await Promise.all([lead, f1, f2].map(async x => {
        const bytes = x.content.catalog()
        return bytes == null ? undefined : (await verifyCatalog(bytes)).view
      }))
    }
  }

  it('a new leader that missed the last catalog and issued the same version: every host ends listing both items', async () => {
    // The old leader's catalog is version 1 of term 1, the new leader's version 1 of term 2.
    // Members keep the one they hold (versions only), so the new leader hears the old one
    // in a pull and issues the union, version 2.
    const { names, views } = await splitCatalogs(['a'])
    await until(() => names().every(n => n.join() === 'a,b'))
    for (const v of await views()) expect(v).toMatchObject({ version: 2, term: 2 })
  })

  it('once a newer term is known, a catalog the former leader signs is refused by members: nothing is deleted', async () => {
    const lead = await start('lead')
    const f1 = await start('f1')
    const f2 = await start('f2')
    await link(lead, f1, f2)
    await until(() => [lead, f1, f2].every(a => a.group.hosts().length === 3))
    const item = await lead.content.add(chunks(randomBytes(4096)), { name: 'keep', kind: 'file', size: 4096 })
    await until(() => f2.content.blobs.has(item.digest))
    await lead.group.relinquish('f1')
    await until(() => [lead, f1, f2].every(x => x.group.roster?.leader === f1.peerId))
    // The new leader signs the catalog again in its term.
    await until(async () => { const b = f2.content.catalog(); return b != null && (await verifyCatalog(b)).view.term === 2 })
    // The former leader (compromised, say) signs an empty catalog of its term with a far higher version.
    const identity = await loadOrCreateIdentity(lead.paths.identityKey)
    const forged = await signCatalog({ groupId: lead.group.roster!.groupId, version: 1000, items: [], issuer: lead.peerId, term: 1 }, identity.privateKey)
    expect(await f2.content.receive(forged.bytes, lead.peerId)).toBe('stale')
    expect(f2.content.list().map(i => i.name)).toEqual(['keep'])
    expect(f2.content.blobs.has(item.digest)).toBe(true)
    // Nor does its version count: made leader, f2 signs the catalog again just above its own.
    const held = (await verifyCatalog(f2.content.catalog()!)).view.version
    await f1.group.relinquish('f2')
    await until(async () => { const b = f2.content.catalog(); return b != null && (await verifyCatalog(b)).view.term === 3 })
    expect((await verifyCatalog(f2.content.catalog()!)).view.version).toBe(held + 1)
    // The leader merges it (a union never deletes) and stays above its version.
    await f2.content.receive(forged.bytes, lead.peerId)
    await until(async () => { const b = f1.content.catalog(); return b != null && (await verifyCatalog(b)).view.version > 1000 })
    expect(f1.content.list().map(i => i.name)).toEqual(['keep'])
    expect(f1.content.blobs.has(item.digest)).toBe(true)
  })

  it('a host that joins after a change of leader gets the catalog, signed in the new term', async () => {
    const lead = await start('lead')
    const f1 = await start('f1')
    await link(lead, f1)
    const item = await lead.content.add(chunks(randomBytes(4096)), { name: 'old', kind: 'file', size: 4096 })
    await until(() => f1.content.blobs.has(item.digest))
    await lead.group.relinquish('f1')
    await until(() => [lead, f1].every(x => x.group.roster?.leader === f1.peerId))
    const late = await start('late')
    await link(f1, late)
    await until(() => late.content.blobs.has(item.digest))
    const view = (await verifyCatalog(late.content.catalog()!)).view
    expect(view).toMatchObject({ term: 2, issuer: f1.peerId })
    expect(view.items.map(i => i.name)).toEqual(['old'])
  })

  it('a new leader that missed catalogs of a higher version: once it hears of them, every host lists every item of both', async () => {
    // The old leader's catalog is version 3 of term 1, two versions above the new leader's.
    const { names, views } = await splitCatalogs(['a1', 'a2', 'a3'])
    await until(() => names().every(n => n.join() === 'a1,a2,a3,b'))
    // The new leader issued the union once, above every version it had seen (not 2, then 3 on hearing v3 again).
    for (const v of await views()) expect(v).toMatchObject({ version: 4, term: 2 })
  })
})
