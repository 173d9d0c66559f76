import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { pbStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import { AgentSet } from '../helpers/agents.js'
import { waitFor } from '../helpers/wait.js'
import type { Agent } from '../../src/agent/agent.js'
import { decodeToken } from '../../src/group/token.js'
import { signRoster, type SignedRosterRecord } from '../../src/group/roster.js'
import { JOIN_PROTOCOL, MAX_JOIN_RESPONSE_BYTES } from '../../src/group/join-protocol.js'
import { response, rosterCall, RosterRequestType, RosterStatus } from '../../src/group/roster-protocol.js'
import type { Membership } from '../../src/group/state.js'
import { GroupKey, type RosterRequest, type RosterResponse } from '../../src/wire/roster.js'
import { JoinAck, JoinRequest, JoinResponse, JoinStatus } from '../../src/wire/join.js'
import { u8 } from '../../src/util/bytes.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateIdentity } from '../../src/identity/index.js'

/**
 * Regression tests for the findings of a security review of the group layer:
 * - the group key travels unsigned next to a signed roster, so a member takes it only
 *   from a host that may hand it out (the pushed roster's leader; a pulled roster's
 *   member), never as other bytes under an id it holds, and does not adopt a roster
 *   whose key it would not have;
 * - revoking a token while a join using it is offered revokes it for good;
 * - a leader that hands leadership over revokes its tokens.
 */

/** Shortened timers, as in linking.test.ts, so reconnects and pulls happen in test time. */
const FAST = { group: { reconnectInterval: 200, antiEntropyInterval: 500, dialTimeout: 4000, rpcTimeout: 4000, joinTimeout: 5000 } }

async function linkTo (leader: Agent, follower: Agent): Promise<void> {
  await follower.group.link((await leader.group.createToken()).token)
}

function keyHex (a: Agent): string {
  return Buffer.from(a.group.membership?.key.key ?? []).toString('hex')
}

function peer (a: Agent): PeerId {
  return peerIdFromString(a.peerId)
}

function gidOf (a: Agent): Uint8Array<ArrayBuffer> {
  return u8(Buffer.from(a.group.roster?.groupId ?? '', 'hex'))
}

async function expectCode (p: Promise<unknown>, code: string): Promise<void> {
  const err = await p.then(() => undefined, (e: unknown) => e)
  expect(err, `expected an error with code ${code}`).toBeInstanceOf(Error)
  expect((err as { code?: string }).code).toBe(code)
}

/** Replace how `a` answers roster requests (as a hostile host would); returns the real handler. */
type RosterAnswer = (remote: PeerId, req: RosterRequest) => Promise<RosterResponse>
function answerRoster (a: Agent, fn: (real: RosterAnswer) => RosterAnswer): void {
  const svc = a.group as unknown as { handleRosterRequest: RosterAnswer }
  svc.handleRosterRequest = fn(svc.handleRosterRequest.bind(a.group))
}

describe('security review: who may hand a member its group key', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  interface Stopped { name: string, dir: string, port: string }

  async function stop (a: Agent, name: string): Promise<Stopped> {
    const port = /\/tcp\/(\d+)/.exec(a.node.getMultiaddrs()[0].toString())?.[1] ?? '0'
    const dir = a.paths.root
    await a.stop()
    set.agents.splice(set.agents.indexOf(a), 1)
    return { name, dir, port }
  }

  /** Start a stopped agent again from its data dir; `samePort` so the others find it where it was. */
  async function startAgain (s: Stopped, samePort: boolean): Promise<Agent> {
    return await set.start({ name: s.name, dataDir: s.dir, config: { ...FAST, ...(samePort ? { listen: [`/ip4/127.0.0.1/tcp/${s.port}`] } : {}) } })
  }

  /**
   * A group lead, m, r. m is stopped; meanwhile the leader removes r, so the roster
   * names key 2, which m does not have. `attacker` then gets that roster: r, a former
   * member, pulls it from the leader (with no key); an outsider is refused the pull and
   * is handed the roster. The leader is stopped before m returns, so the
   * attacker reaches m first.
   */
  async function memberMissesRotation (attackerName: 'outsider' | 'r'): Promise<{ leader: Stopped, member: Stopped, attacker: Agent, roster: Uint8Array<ArrayBuffer>, version: number, realKey: string, oldKey: string }> {
    const L = await set.start({ name: 'lead', config: FAST })
    const M = await set.start({ name: 'm', config: FAST })
    const R = await set.start({ name: 'r', config: FAST })
    await linkTo(L, M)
    await linkTo(L, R)
    const attacker = attackerName === 'r' ? R : await set.start({ name: 'outsider', config: FAST })
    await waitFor(() => M.group.roster?.version === L.group.roster?.version, { timeout: 10_000, what: 'm has the roster listing r' })
    expect(M.group.membership?.key.id).toBe(1)
    const oldKey = keyHex(M)
    const member = await stop(M, 'm')
    await L.group.unlink(R.peerId)
    await waitFor(() => R.group.membership == null, { timeout: 10_000, what: 'r is unlinked' })
    expect(L.group.membership?.key.id).toBe(2)
    const realKey = keyHex(L)
    const version = L.group.roster?.version ?? 0
    await attacker.node.dial(L.node.getMultiaddrs()[0])
    const pulled = await rosterCall(attacker.node, peer(L), { type: RosterRequestType.PULL, groupId: gidOf(L), knownTerm: 0n, knownVersion: 0n }, 5000)
    let roster = pulled.roster
    if (attackerName === 'outsider') {
      // PULL answers members and former members only; the outsider gets the roster some
      // other way (a former member hands it over): what it does with it is tested.
      expect(pulled.status).toBe(RosterStatus.NOT_MEMBER)
      roster = u8(L.group.membership?.record.bytes ?? new Uint8Array())
    } else {
      expect(pulled.status).toBe(RosterStatus.ROSTER_OK)
      expect(pulled.groupKey.length).toBe(0)
    }
    const leader = await stop(L, 'lead')
    return { leader, member, attacker, roster, version, realKey, oldKey }
  }

  for (const who of ['outsider', 'r'] as const) {
    const label = who === 'outsider' ? 'an outsider that was never a member' : 'a removed ex-member'
    it(`${label} pushes the newer roster with a key of its choice to a member that missed the key change: the member keeps its key, then takes the real roster and key from the leader`, async () => {
      const s = await memberMissesRotation(who)
      const M = await startAgain(s.member, false)
      expect(M.group.roster?.version).toBe(s.version - 1)
      const evil = randomBytes(32)
      await s.attacker.node.dial(M.node.getMultiaddrs()[0])
      const res = await rosterCall(s.attacker.node, peer(M), { type: RosterRequestType.PUSH, groupId: gidOf(M), roster: s.roster, groupKey: GroupKey.encode({ id: 2, key: u8(evil) }) }, 5000)
      expect(res.status).not.toBe(RosterStatus.NOT_MEMBER) // the push was considered
      expect(keyHex(M)).not.toBe(evil.toString('hex'))
      expect(keyHex(M)).toBe(s.oldKey)
      // Once the leader is back, the member pulls the roster it missed with the key that goes with it.
      await startAgain(s.leader, true)
      await waitFor(() => M.group.roster?.version === s.version && keyHex(M) === s.realKey, { timeout: 10_000, what: 'the returning member holds the leader\'s roster and key' })
      expect(M.group.membership?.key.id).toBe(2)
    })
  }

  it('a removed ex-member answers a returning member\'s pull with the newer roster and a key of its choice: the key is not taken', async () => {
    const s = await memberMissesRotation('r')
    const evil = randomBytes(32)
    let answered = 0
    answerRoster(s.attacker, real => async (remote, req) => {
      if (req.type !== RosterRequestType.PULL) return await real(remote, req)
      answered++
      return response(RosterStatus.ROSTER_OK, '', s.roster, GroupKey.encode({ id: 2, key: u8(evil) }))
    })
    // The returning member still lists r, so it dials r and pulls from it.
    const M = await startAgain(s.member, false)
    await M.group.pullFrom(s.attacker.peerId)
    expect(answered).toBeGreaterThan(0)
    expect(keyHex(M)).not.toBe(evil.toString('hex'))
    expect(keyHex(M)).toBe(s.oldKey)
    await startAgain(s.leader, true)
    await waitFor(() => M.group.roster?.version === s.version && keyHex(M) === s.realKey, { timeout: 10_000, what: 'the returning member holds the leader\'s roster and key' })
  })

  it('other bytes under the member\'s current key id never replace its key: not from an outsider\'s push, a member\'s pull answer, or the leader\'s own push (a newer id from the leader still does)', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const M = await set.start({ name: 'm', config: FAST })
    const F = await set.start({ name: 'f', config: FAST })
    const O = await set.start({ name: 'outsider', config: FAST })
    await linkTo(L, M)
    await linkTo(L, F)
    await waitFor(() => M.group.roster?.version === L.group.roster?.version, { timeout: 10_000, what: 'm has the current roster' })
    const real = keyHex(L)
    expect(keyHex(M)).toBe(real)
    const id = L.group.membership?.key.id ?? 0
    const base = L.group.roster
    if (base == null) throw new Error('the leader has no roster')
    let v = base.version
    // Newer rosters, signed by the leader as it signs every change, that m has not seen yet.
    const next = async (keyId = id): Promise<SignedRosterRecord> => await signRoster({ ...base, version: ++v, updatedAt: Date.now(), keyId }, L.group.c.privateKey)
    const sameId = (): Uint8Array<ArrayBuffer> => GroupKey.encode({ id, key: u8(randomBytes(32)) })

    // An outsider pushes one.
    await O.node.dial(M.node.getMultiaddrs()[0])
    const r1 = await next()
    await rosterCall(O.node, peer(M), { type: RosterRequestType.PUSH, groupId: gidOf(M), roster: u8(r1.bytes), groupKey: sameId() }, 5000)
    expect(M.group.roster?.version, 'the outsider\'s roster is adopted').toBe(v)
    expect(keyHex(M), 'the outsider\'s key is not').toBe(real)

    // A member (listed in the roster it sends) answers m's pull with one.
    const r2 = await next()
    let answered = 0
    answerRoster(F, realAnswer => async (remote, req) => {
      if (req.type !== RosterRequestType.PULL || remote.toString() !== M.peerId) return await realAnswer(remote, req)
      answered++
      return response(RosterStatus.ROSTER_OK, '', u8(r2.bytes), sameId())
    })
    await M.group.pullFrom(F.peerId)
    expect(answered).toBeGreaterThan(0)
    expect(M.group.roster?.version, 'the member\'s roster is adopted').toBe(v)
    expect(keyHex(M), 'the member\'s key is not').toBe(real)

    // The leader's own node pushes one.
    const r3 = await next()
    const res = await rosterCall(L.node, peer(M), { type: RosterRequestType.PUSH, groupId: gidOf(M), roster: u8(r3.bytes), groupKey: sameId() }, 5000)
    expect(res.status).toBe(RosterStatus.ROSTER_OK)
    expect(M.group.roster?.version, 'the leader\'s roster is adopted').toBe(v)
    expect(keyHex(M), 'other bytes under the same id are not, even from the leader').toBe(real)

    // A newer key from the leader (a rotation) is taken.
    const fresh = randomBytes(32)
    const r4 = await next(id + 1)
    const rotated = await rosterCall(L.node, peer(M), { type: RosterRequestType.PUSH, groupId: gidOf(M), roster: u8(r4.bytes), groupKey: GroupKey.encode({ id: id + 1, key: u8(fresh) }) }, 5000)
    expect(rotated.status).toBe(RosterStatus.ROSTER_OK)
    expect(M.group.membership?.key.id).toBe(id + 1)
    expect(keyHex(M)).toBe(fresh.toString('hex'))
  })
})

describe('security review: revoking a token while its join is offered', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  it('the joiner declines the offer after the revoke: the token stays revoked, a second host cannot link with it, and the members get a key the joiner never saw', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const F = await set.start({ name: 'f', config: FAST })
    const X = await set.start({ name: 'x', config: FAST })
    const Y = await set.start({ name: 'y', config: FAST })
    await linkTo(L, F)
    const keyId = L.group.membership?.key.id ?? 0
    const tok = await L.group.createToken()
    const t = decodeToken(tok.token)
    const stream = await X.node.dialProtocol(L.node.getMultiaddrs(), JOIN_PROTOCOL)
    const pb = pbStream(stream, { maxDataLength: MAX_JOIN_RESPONSE_BYTES })
    await pb.write({ groupId: u8(t.groupId), tokenId: u8(t.tokenId), secret: u8(t.secret), hostname: 'x', agentVersion: '0', addrs: [] }, JoinRequest)
    const offer = await pb.read(JoinResponse)
    expect(offer.status).toBe(JoinStatus.OK)
    const seen = GroupKey.decode(offer.groupKey)
    expect(Buffer.from(seen.key).toString('hex'), 'the offer carries the group key').toBe(keyHex(L))
    expect((await L.group.listTokens()).find(v => v.id === tok.id)?.state).toBe('used')
    // The operator revokes the token while the offer is out.
    const revoked = await L.group.revokeToken(tok.id)
    expect(revoked.state).toBe('revoked')
    // X declines; the leader ends the exchange (and closes the stream once it has).
    await pb.write({ persisted: false, message: 'declined' }, JoinAck)
    const after = await pb.read(JoinResponse, { signal: AbortSignal.timeout(5000) }).then(() => 'answered', (err: Error) => err.name)
    expect(after).not.toBe('TimeoutError')
    await stream.close().catch(() => {})
    expect((await L.group.listTokens()).find(v => v.id === tok.id)).toMatchObject({ state: 'revoked' })
    await expectCode(Y.group.link(tok.token), 'TOKEN_REVOKED')
    expect(L.group.hosts().map(h => h.hostname).sort()).toEqual(['f', 'lead'])
    expect(Y.group.membership).toBeUndefined()
    // Before the fix the members kept the key X had seen.
    await waitFor(() => F.group.membership?.key.id === keyId + 1, { timeout: 10_000, what: 'the follower to get the new key' })
    expect(L.group.membership?.key.id).toBe(keyId + 1)
    expect(keyHex(F)).toBe(keyHex(L))
    expect(keyHex(L)).not.toBe(Buffer.from(seen.key).toString('hex'))
    expect(L.group.hosts().map(h => h.hostname).sort()).toEqual(['f', 'lead'])
  })

  it('the joiner accepts the offer after the revoke: the join is not committed and the joiner is not a member', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const X = await set.start({ name: 'x', config: FAST })
    const tok = await L.group.createToken()
    const version = L.group.roster?.version
    // X stores the offer (as link does before acknowledging it); the operator revokes the token just then.
    const svc = X.group as unknown as { store: (m: Membership, o?: { quiet?: boolean }) => Promise<void> }
    const realStore = svc.store.bind(X.group)
    let revokedState: string | undefined
    svc.store = async (m, o) => {
      svc.store = realStore
      revokedState = (await L.group.revokeToken(tok.id)).state
      await realStore(m, o)
    }
    await expectCode(X.group.link(tok.token), 'TOKEN_REVOKED')
    expect(revokedState, 'the offer was made and the token revoked while it was out').toBe('revoked')
    expect(X.group.membership).toBeUndefined()
    expect(L.group.hosts().map(h => h.hostname)).toEqual(['lead'])
    // Not the join; a new key (X stored the offer's), same members.
    expect(L.group.roster?.version).toBe((version ?? 0) + 1)
    expect(L.group.membership?.key.id).toBe(2)
    expect((await L.group.listTokens()).find(v => v.id === tok.id)).toMatchObject({ state: 'revoked' })
    // The leader is not left stuck: a new token admits X.
    await linkTo(L, X)
    expect(L.group.hosts().map(h => h.hostname).sort()).toEqual(['lead', 'x'])
  })

  it('a host that links to another group while a join to its group of one is offered revokes that token too: the join is not committed and the host stays in the group it joined', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const A = await set.start({ name: 'a', config: FAST })
    const Z = await set.start({ name: 'z', config: FAST })
    const tok = await A.group.createToken() // a group of one, led by a
    const t = decodeToken(tok.token)
    const stream = await Z.node.dialProtocol(A.node.getMultiaddrs(), JOIN_PROTOCOL)
    const pb = pbStream(stream, { maxDataLength: MAX_JOIN_RESPONSE_BYTES })
    await pb.write({ groupId: u8(t.groupId), tokenId: u8(t.tokenId), secret: u8(t.secret), hostname: 'z', agentVersion: '0', addrs: [] }, JoinRequest)
    expect((await pb.read(JoinResponse)).status).toBe(JoinStatus.OK)
    // While z's offer is out, a links to lead's group (its own group of one still has no follower).
    await linkTo(L, A)
    const joined = L.group.roster?.groupId
    expect(A.group.roster?.groupId).toBe(joined)
    expect((await A.group.listTokens()).find(v => v.id === tok.id)).toMatchObject({ state: 'revoked' })
    // z accepts the offer now: a must not commit it (that would put a back in its old group).
    await pb.write({ persisted: true, message: '' }, JoinAck)
    const final = await pb.read(JoinResponse, { signal: AbortSignal.timeout(5000) })
    await stream.close().catch(() => {})
    expect(final.status).toBe(JoinStatus.REVOKED)
    expect(A.group.roster?.groupId).toBe(joined)
    expect(A.group.roster?.leader).toBe(L.peerId)
    expect(L.group.hosts().map(h => h.hostname).sort()).toEqual(['a', 'lead'])
  })
})

describe('security review: a leader that hands over leadership revokes its tokens', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  it('tokens issued before a handover are revoked, listed so on the old leader, and refused when leadership comes back', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const B = await set.start({ name: 'b', config: FAST })
    const Y = await set.start({ name: 'y', config: FAST })
    const joined = await L.group.createToken()
    await B.group.link(joined.token)
    const old = await L.group.createToken(60 * 60 * 1000)
    await L.group.relinquish(B.peerId)
    const listed = await L.group.listTokens()
    expect(listed.find(v => v.id === old.id)).toMatchObject({ state: 'revoked', revokedReason: 'leadership was handed over' })
    // The token a committed join used stays "used" (by b).
    expect(listed.find(v => v.id === joined.id)).toMatchObject({ state: 'used', usedBy: B.peerId })
    await waitFor(() => B.group.isLeader && L.group.roster?.leader === B.peerId, { timeout: 10_000, what: 'b leads' })
    await B.group.relinquish(L.peerId)
    await waitFor(() => L.group.isLeader, { timeout: 10_000, what: 'leadership is back on lead' })
    await expectCode(Y.group.link(old.token), 'TOKEN_REVOKED')
    expect(L.group.hosts().map(h => h.hostname).sort()).toEqual(['b', 'lead'])
    expect((await L.group.listTokens()).find(v => v.id === old.id)?.state).toBe('revoked')
  })
})

describe('security review: keys on the way to a member that was behind', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  it('a handover to a follower that missed a key rotation brings it the key: everyone ends on the new leader, the roster without the removed host and the same key', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const A = await set.start({ name: 'a', config: FAST })
    const B = await set.start({ name: 'b', config: FAST })
    const C = await set.start({ name: 'c', config: FAST })
    for (const x of [A, B, C]) await linkTo(L, x)
    await waitFor(() => [A, B, C].every(x => x.group.roster?.version === L.group.roster?.version), { timeout: 10_000, what: 'all on the same roster' })
    // A misses the removal of C and the key rotation that comes with it.
    type Handler = (r: PeerId, q: RosterRequest) => Promise<RosterResponse>
    const svc = A.group as unknown as { handleRosterRequest: Handler, pullFrom: (p: string) => Promise<void> }
    const real = svc.handleRosterRequest.bind(A.group)
    const realPull = svc.pullFrom.bind(A.group)
    svc.handleRosterRequest = async (r, q) => q.type === RosterRequestType.PUSH || q.type === RosterRequestType.PULL ? response(RosterStatus.ROSTER_INTERNAL, 'away') : await real(r, q)
    svc.pullFrom = async () => {}
    await L.group.unlink(C.peerId)
    expect(A.group.membership?.key.id).toBeLessThan(L.group.membership!.key.id)
    svc.handleRosterRequest = real
    svc.pullFrom = realPull
    await L.group.relinquish(A.peerId)
    await waitFor(() => [L, A, B].every(x => x.group.roster?.leader === A.peerId && x.group.roster.term === 2), { timeout: 10_000, what: 'A leads term 2 everywhere' })
    for (const x of [L, A, B]) {
      expect(x.group.roster?.members.map(m => m.hostname).sort()).toEqual(['a', 'b', 'lead'])
      expect(x.group.membership?.key.id).toBe(x.group.roster?.keyId)
      expect(keyHex(x)).toBe(keyHex(L))
    }
  })

  it('a removed member that answers with an old roster still listing it, and a key of a later id, does not plant that key', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const M = await set.start({ name: 'm', config: FAST })
    const X = await set.start({ name: 'x', config: FAST })
    const N = await set.start({ name: 'n', config: FAST })
    await linkTo(L, M)
    await linkTo(L, X)
    await waitFor(() => M.group.roster?.version === L.group.roster?.version, { timeout: 10_000, what: 'm up to date' })
    const mdir = M.paths.root
    await M.stop()
    set.agents.splice(set.agents.indexOf(M), 1)
    await linkTo(L, N)
    await waitFor(() => X.group.roster?.version === L.group.roster?.version, { timeout: 10_000, what: 'x up to date' })
    const listingX = X.group.membership!.record.bytes // a roster that lists x, newer than m's
    await L.group.unlink(X.peerId)
    const realKey = keyHex(L)
    const version = L.group.roster!.version
    const lport = /\/tcp\/(\d+)/.exec(L.node.getMultiaddrs()[0].toString())![1]
    const ldir = L.paths.root
    await L.stop()
    set.agents.splice(set.agents.indexOf(L), 1)
    // x, removed, answers every roster request with that roster and a key of the id after m's.
    const evil = randomBytes(32)
    const svc = X.group as unknown as { handleRosterRequest: (r: PeerId, q: RosterRequest) => Promise<RosterResponse> }
    svc.handleRosterRequest = async () => response(RosterStatus.ROSTER_OK, '', u8(listingX), GroupKey.encode({ id: 2, key: u8(evil) }))
    const M2 = await set.start({ name: 'm', dataDir: mdir, config: FAST })
    await M2.group.pullFrom(X.peerId)
    expect(keyHex(M2)).not.toBe(evil.toString('hex'))
    // When the leader is back, m ends with the real roster and the real key.
    await set.start({ name: 'lead', dataDir: ldir, config: { ...FAST, listen: [`/ip4/127.0.0.1/tcp/${lport}`] } })
    await waitFor(() => M2.group.roster?.version === version && keyHex(M2) === realKey, { timeout: 15_000, what: 'm on the real roster and key' })
  })
})

describe('review: one link at a time', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  it('two links started at once on one host: one is refused (LINK_IN_PROGRESS), and only the other group lists the host', async () => {
    const L1 = await set.start({ name: 'l1', config: FAST })
    const L2 = await set.start({ name: 'l2', config: FAST })
    const F = await set.start({ name: 'ff', config: FAST })
    const t1 = (await L1.group.createToken()).token
    const t2 = (await L2.group.createToken()).token
    const [a, b] = await Promise.allSettled([F.group.link(t1), F.group.link(t2)])
    const outcomes = [a, b].map(r => r.status)
    expect(outcomes.sort()).toEqual(['fulfilled', 'rejected'])
    const refused = [a, b].find(r => r.status === 'rejected') as PromiseRejectedResult
    expect(refused.reason).toMatchObject({ code: 'LINK_IN_PROGRESS' })
    const joined = a.status === 'fulfilled' ? L1 : L2
    const other = joined === L1 ? L2 : L1
    expect(F.group.roster?.groupId).toBe(joined.group.roster?.groupId)
    expect(joined.group.hosts().map(h => h.hostname).sort()).toEqual(['ff', joined === L1 ? 'l1' : 'l2'])
    expect(other.group.hosts().map(h => h.hostname)).toEqual([other === L1 ? 'l1' : 'l2'])
    // The refused token was never offered: it still links another host.
    const G = await set.start({ name: 'gg', config: FAST })
    await G.group.link(joined === L1 ? t2 : t1)
    expect(other.group.hosts().map(h => h.hostname).sort()).toEqual(['gg', other === L1 ? 'l1' : 'l2'].sort())
  })
})

describe('review: a join offered and not completed, and joins the roster cannot take', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  it('a token whose join was offered (the key shown) and not completed is revoked: the same host cannot try again for another look at the new key', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const X = await set.start({ name: 'x', config: FAST })
    const tok = await L.group.createToken()
    const t = decodeToken(tok.token)
    for (let attempt = 0; attempt < 2; attempt++) {
      const stream = await X.node.dialProtocol(L.node.getMultiaddrs(), JOIN_PROTOCOL)
      const pb = pbStream(stream, { maxDataLength: MAX_JOIN_RESPONSE_BYTES })
      await pb.write({ groupId: u8(t.groupId), tokenId: u8(t.tokenId), secret: u8(t.secret), hostname: 'x', agentVersion: '0', addrs: [] }, JoinRequest)
      const offer = await pb.read(JoinResponse)
      if (attempt === 0) {
        expect(offer.status).toBe(JoinStatus.OK)
        // It says it could not store the offer: the leader ends the join.
        await pb.write({ persisted: false, message: 'disk full' }, JoinAck)
        await waitFor(async () => (await L.group.listTokens()).find(v => v.id === tok.id)?.state === 'revoked', { timeout: 5000, what: 'the token to be revoked' })
      } else {
        // Before the fix the token was put back, and each try showed the next key.
        expect([offer.status, offer.groupKey.length]).toEqual([JoinStatus.REVOKED, 0])
        expect(offer.message).toMatch(/a join with it was offered and did not complete/)
      }
      await stream.close().catch(() => {})
    }
  })

  it('a group at its 256 members refuses a join before reserving the token, with a message', async () => {
    // Its 255 other members are made up and unreachable: the leader does not keep redialling them meanwhile.
    // A leader busy with so many members answered a join in up to 3 s here: generous timeouts.
    const slow = { dialTimeout: 20_000, rpcTimeout: 20_000, joinTimeout: 20_000 }
    const L = await set.start({ name: 'lead', config: { group: { ...FAST.group, ...slow, reconnectInterval: 600_000, antiEntropyInterval: 600_000 } } })
    const J = await set.start({ name: 'j', config: { group: { ...FAST.group, ...slow } } })
    await L.group.createToken()
    const m = L.group.membership
    if (m == null) throw new Error('no group')
    const others = await Promise.all(Array.from({ length: 255 }, async (_, i) => ({
      peerId: peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString(), hostname: `h${i}`, addresses: [], role: 'follower' as const, joinedAt: Date.now(), agentVersion: '0'
    })))
    const identity = await loadOrCreateIdentity(L.paths.identityKey)
    const full = await signRoster({ ...m.record.roster, version: m.record.roster.version + 1, members: [...m.record.roster.members, ...others] }, identity.privateKey)
    await L.group.store({ record: full, key: m.key }, { quiet: true })
    const tok = await L.group.createToken()
    const err = await J.group.link(tok.token).then(() => undefined, (e: unknown) => e as Error & { code?: string })
    expect([err?.code, err?.message]).toEqual(['BAD_REQUEST', 'the leader refused: the group has 256 members, the most a group can have; unlink a host first'])
    expect((await L.group.listTokens()).find(v => v.id === tok.id)?.state).toBe('active')
    expect(J.group.membership).toBeUndefined()
  })
})

describe('review: dissolving a group of one while a join to it is offered', () => {
  const set = new AgentSet()
  afterEach(async () => { await set.stopAll() })

  it('relinquish waits for the join, then refuses to dissolve a group that has a follower now; the joiner keeps its leader', async () => {
    const L = await set.start({ name: 'lead', config: FAST })
    const J = await set.start({ name: 'j', config: FAST })
    const tok = await L.group.createToken()
    // The joiner holds the offer a moment before storing it: the leader's lock is held meanwhile.
    let release!: () => void
    const gate = new Promise<void>(resolve => { release = resolve })
    let offered!: () => void
    const offer = new Promise<void>(resolve => { offered = resolve })
    const svc = J.group as unknown as { store: (m: Membership, o?: { quiet?: boolean }) => Promise<void> }
    const store = svc.store.bind(J.group)
    svc.store = async (m, o) => { offered(); await gate; await store(m, o) }
    const linking = J.group.link(tok.token)
    await offer
    const relinquishing = L.group.relinquish().then(() => undefined, (e: unknown) => e as Error & { code?: string })
    release()
    await linking
    const err = await relinquishing
    // Before the fix the leader went idle here, and its new follower had no leader.
    expect(err?.code).toBe('NOT_IDLE')
    expect(err?.message).toMatch(/a host joined this group while it was being dissolved/)
    expect(L.group.roster?.leader).toBe(L.peerId)
    expect(L.group.hosts().map(h => h.hostname).sort()).toEqual(['j', 'lead'])
  })
})
