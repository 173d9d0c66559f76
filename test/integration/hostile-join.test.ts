import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import fc from 'fast-check'
import { lpStream } from '@libp2p/utils'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'
import { JOIN_PROTOCOL, MAX_JOIN_REQUEST_BYTES } from '../../src/group/join-protocol.js'
import { ROSTER_PROTOCOL, MAX_ROSTER_FRAME } from '../../src/group/roster-protocol.js'
import { JoinRequest, JoinResponse, JoinStatus } from '../../src/wire/join.js'
import { RosterRequest, RosterRequestType, RosterResponse, RosterStatus } from '../../src/wire/roster.js'

/**
 * A hostile peer on the LAN speaks the join and roster protocols with garbage:
 * random frames, oversized frames, well-formed messages with bad fields. The leader
 * must answer or reset the stream, keep running, change nothing, and still admit a
 * valid follower afterwards.
 */
describe('hostile peers on the join and roster protocols', () => {
  const set = new AgentSet()
  let leader: Agent
  let member: Agent
  let hostile: Agent

  // Short deadlines so a frame that never completes costs little test time.
  const SHORT = { group: { joinTimeout: 1500, rpcTimeout: 1000 } }

  beforeAll(async () => {
    leader = await set.start({ name: 'lead', config: SHORT })
    member = await set.start({ name: 'member' })
    hostile = await set.start({ name: 'hostile' })
    await member.group.link((await leader.group.createToken()).token)
  })
  afterAll(async () => { await set.stopAll() })

  /** Send raw bytes on a fresh stream; return whatever comes back (or the error). */
  async function sendRaw (protocol: string, frames: Uint8Array[], lengthPrefixed: boolean): Promise<Uint8Array | Error> {
    try {
      const stream = await hostile.node.dialProtocol(leader.node.getMultiaddrs(), protocol, { signal: AbortSignal.timeout(5000) })
      const lp = lpStream(stream, { maxDataLength: MAX_ROSTER_FRAME + 1 })
      for (const f of frames) {
        if (lengthPrefixed) await lp.write(f)
        else stream.send(f)
      }
      // Half-close: the leader sees the end of input at once instead of waiting out its deadline.
      const closing = stream.close().catch(() => {})
      const reply = await lp.read({ signal: AbortSignal.timeout(3000) })
      stream.abort(new Error('done'))
      await closing
      return reply.subarray()
    } catch (err) {
      return err as Error
    }
  }

  function snapshot (): string {
    return JSON.stringify({ status: leader.hostStatus().rosterVersion, hosts: leader.group.hosts().map(h => h.peerId) })
  }

  it('random and oversized join frames are refused and change nothing', async () => {
    const before = snapshot()
    await fc.assert(fc.asyncProperty(
      fc.array(fc.uint8Array({ minLength: 0, maxLength: 2048 }), { minLength: 1, maxLength: 3 }),
      fc.boolean(),
      async (frames, lengthPrefixed) => {
        const reply = await sendRaw(JOIN_PROTOCOL, frames, lengthPrefixed)
        if (reply instanceof Uint8Array) {
          // Anything the leader answers to garbage is a refusal.
          const res = JoinResponse.decode(reply)
          expect(res.status).not.toBe(JoinStatus.OK)
        }
        expect(snapshot()).toBe(before)
      }
    ), { numRuns: 40 })
    const big = await sendRaw(JOIN_PROTOCOL, [new Uint8Array(MAX_JOIN_REQUEST_BYTES + 1)], true)
    if (big instanceof Uint8Array) expect(JoinResponse.decode(big).status).toBe(JoinStatus.BAD_REQUEST)
    expect(snapshot()).toBe(before)
  })

  it('well-formed join requests with bad fields get BAD_REQUEST or a token refusal', async () => {
    const before = snapshot()
    await fc.assert(fc.asyncProperty(
      fc.record({
        groupId: fc.uint8Array({ maxLength: 40 }),
        tokenId: fc.uint8Array({ maxLength: 20 }),
        secret: fc.uint8Array({ maxLength: 40 }),
        hostname: fc.string({ maxLength: 300 }),
        agentVersion: fc.string({ maxLength: 100 }),
        addrs: fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 20 })
      }),
      async (req) => {
        const reply = await sendRaw(JOIN_PROTOCOL, [JoinRequest.encode(req as JoinRequest)], true)
        expect(reply).toBeInstanceOf(Uint8Array)
        const res = JoinResponse.decode(reply as Uint8Array)
        expect(res.status).not.toBe(JoinStatus.OK)
        expect(res.message.length).toBeGreaterThan(0)
      }
    ), { numRuns: 40 })
    expect(snapshot()).toBe(before)
  })

  it('random roster frames and forged pushes are refused; a non-member cannot pull the key', async () => {
    const before = snapshot()
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 4096 }), async (frame) => {
      const reply = await sendRaw(ROSTER_PROTOCOL, [frame], true)
      if (reply instanceof Uint8Array) expect(RosterResponse.decode(reply).status).not.toBe(RosterStatus.ROSTER_OK)
      expect(snapshot()).toBe(before)
    }), { numRuns: 40 })
    const groupId = Buffer.from(leader.hostStatus().groupId ?? '', 'hex')
    // A forged push: the hostile host signs a roster naming itself leader of this group.
    await hostile.group.createToken()
    const forged = hostile.group.membership?.record.bytes ?? new Uint8Array()
    const push = await sendRaw(ROSTER_PROTOCOL, [RosterRequest.encode({ type: RosterRequestType.PUSH, groupId, roster: forged } as unknown as RosterRequest)], true)
    expect(RosterResponse.decode(push as Uint8Array).status).not.toBe(RosterStatus.ROSTER_OK)
    // A non-member may learn the roster exists but never receives the group key.
    const pull = await sendRaw(ROSTER_PROTOCOL, [RosterRequest.encode({ type: RosterRequestType.PULL, groupId, knownTerm: 0n, knownVersion: 0n } as unknown as RosterRequest)], true)
    const res = RosterResponse.decode(pull as Uint8Array)
    expect(res.groupKey.length).toBe(0)
    // A non-member cannot ask to leave or take over.
    const leave = await sendRaw(ROSTER_PROTOCOL, [RosterRequest.encode({ type: RosterRequestType.LEAVE, groupId } as unknown as RosterRequest)], true)
    expect(RosterResponse.decode(leave as Uint8Array).status).toBe(RosterStatus.NOT_MEMBER)
    expect(snapshot()).toBe(before)
    await hostile.group.relinquish()
  })

  it('an undecodable request always gets the refusal, not a reset that drops it', async () => {
    // Field 1 as a length-delimited field whose length runs past the frame: it cannot decode.
    const bad = Uint8Array.from([0x0a, 0x7f, 0x01])
    for (let i = 0; i < 20; i++) {
      const join = await sendRaw(JOIN_PROTOCOL, [bad], true)
      expect(join, `join, try ${i}`).toBeInstanceOf(Uint8Array)
      expect(JoinResponse.decode(join as Uint8Array)).toMatchObject({ status: JoinStatus.BAD_REQUEST, message: 'malformed join request' })
      const roster = await sendRaw(ROSTER_PROTOCOL, [bad], true)
      expect(roster, `roster, try ${i}`).toBeInstanceOf(Uint8Array)
      expect(RosterResponse.decode(roster as Uint8Array)).toMatchObject({ status: RosterStatus.INVALID, message: 'malformed roster request' })
    }
  })

  it('after all that, the leader still admits a valid follower', async () => {
    const newcomer = await set.start({ name: 'newcomer' })
    await newcomer.group.link((await leader.group.createToken()).token)
    expect(leader.group.hosts().map(h => h.hostname).sort()).toEqual(['lead', 'member', 'newcomer'])
    expect(leader.status).toBe('running')
  })
})
