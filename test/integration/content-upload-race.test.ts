/**
 * Regression tests for commit cdcede4: an upload is stored in the blob store before the
 * catalog lists it, and schedule() deletes what the catalog does not list. An upload that
 * lands while another catalog change is being issued must survive it; one that is never
 * listed must not stay behind.
 */
import { describe, it, expect, afterEach } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'
import { waitFor } from '../helpers/wait.js'

async function * once (data: Buffer): AsyncGenerator<Uint8Array> {
  yield data
}

function sha (data: Buffer): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex')
}

/** Gates a test made; opened after it, so a failed test leaves nothing waiting. */
const gates: Array<() => void> = []

/** A promise and the function that settles it. */
function gate (): { promise: Promise<void>, open: () => void } {
  let open!: () => void
  const promise = new Promise<void>(resolve => { open = resolve })
  gates.push(open)
  return { promise, open }
}

/** Every blobs.remove() the content service starts, with what it resolved to. */
function spyRemovals (agent: Agent): Array<{ digest: string, result: Promise<boolean> }> {
  const blobs = agent.content.blobs
  const remove = blobs.remove.bind(blobs)
  const calls: Array<{ digest: string, result: Promise<boolean> }> = []
  blobs.remove = async (digest, opts) => {
    const result = remove(digest, opts)
    calls.push({ digest, result })
    return await result
  }
  return calls
}

function filesIn (agent: Agent, dir: 'sha256' | 'partial' | 'tmp'): string[] {
  return readdirSync(join(agent.paths.blobs, dir)).sort()
}

describe('an upload racing a catalog change on the leader', () => {
  const set = new AgentSet()
  afterEach(async () => {
    for (const open of gates.splice(0)) open()
    await set.stopAll()
  })

  it('an upload stored while a removal\'s catalog is being issued is still held afterwards, and listed', async () => {
    const leader = await set.start({ name: 'lead' })
    await leader.group.createToken() // creates the group: this host leads it
    const old = await leader.content.add(once(randomBytes(1000)), { name: 'old', kind: 'file' })

    // The next two catalog publishes wait for their gates: a change that issues a catalog
    // holds the content service's change lock until it is published, and later changes
    // queue behind it.
    const status = leader.hostState
    const publish = status.publishCatalog.bind(status)
    const release = [gate(), gate()]
    const entered = [gate(), gate()]
    let publishes = 0
    status.publishCatalog = async (bytes: Uint8Array) => {
      const n = publishes++
      if (n < release.length) {
        entered[n].open()
        await release[n].promise
      }
      await publish(bytes)
    }
    const removals = spyRemovals(leader)

    const a = leader.content.add(once(randomBytes(2000)), { name: 'a', kind: 'file' })
    await entered[0].promise // a's catalog is being published
    const rm = leader.content.remove(old.digest) // queued behind it
    const dataB = randomBytes(3000)
    const b = leader.content.add(once(dataB), { name: 'b', kind: 'file' })
    // b is in the store, not yet in the catalog: its listing queues behind the removal.
    await waitFor(() => leader.content.blobs.has(sha(dataB)), { timeout: 10_000, what: 'the upload of b to be stored' })
    release[0].open()
    await a
    // The removal's catalog (which does not list b) is kept and being published: the
    // store is told to delete what that catalog does not list, b included, while b's
    // listing still waits.
    await entered[1].promise
    await waitFor(() => removals.some(r => r.digest === sha(dataB)), { timeout: 10_000, what: 'schedule() to consider deleting b' })
    const removedB = await removals.find(r => r.digest === sha(dataB))?.result
    expect(leader.content.blobs.has(sha(dataB)), 'b deleted before its listing').toBe(true)
    expect(removedB).toBe(false)
    release[1].open()
    await rm
    const itemB = await b
    await Promise.allSettled(removals.map(r => r.result))

    expect(itemB.digest).toBe(sha(dataB))
    // Once listed, the upload is held and in the catalog.
    expect(leader.content.list().map(i => i.digest).sort()).toEqual([(await a).digest, itemB.digest].sort())
    expect(leader.content.blobs.has(itemB.digest)).toBe(true)
    expect(filesIn(leader, 'sha256')).toContain(itemB.digest.slice(7))
    expect(leader.content.pathOf(itemB.digest).size).toBe(dataB.length)
    // The removed item is gone.
    expect(leader.content.blobs.has(old.digest)).toBe(false)
    expect(filesIn(leader, 'sha256')).not.toContain(old.digest.slice(7))
  })

  it('an upload that cannot be listed (the host stopped leading while it streamed) leaves no blob behind', async () => {
    const leader = await set.start({ name: 'lead' })
    await leader.group.createToken()
    const kept = await leader.content.add(once(randomBytes(1000)), { name: 'kept', kind: 'file' })

    // The upload streams its bytes, then waits at the gate before it ends.
    const streamed = gate()
    const finish = gate()
    const data = randomBytes(5000)
    async function * slow (): AsyncGenerator<Uint8Array> {
      yield data
      streamed.open()
      await finish.promise
    }
    const upload = leader.content.add(slow(), { name: 'late', kind: 'file' })
    await streamed.promise
    // The host stops leading (a group of one dissolves) while the upload is under way.
    await leader.group.relinquish()
    finish.open()
    await expect(upload).rejects.toMatchObject({ code: 'NOT_LINKED' })

    await waitFor(() => !leader.content.blobs.list().some(e => e.digest === sha(data)) && !filesIn(leader, 'sha256').includes(sha(data).slice(7)),
      { timeout: 5000, what: 'the unlisted upload to be deleted' })
    expect(leader.content.list().map(i => i.digest)).toEqual([kept.digest])
    expect(filesIn(leader, 'sha256')).toEqual([kept.digest.slice(7)])
    expect(filesIn(leader, 'tmp')).toEqual([])
  })
})
