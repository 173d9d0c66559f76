/**
 * The roster: the group's membership record (group id, term, version, leader,
 * members), signed by the leader of its term. Pure domain logic: encode, sign,
 * verify, decide whether a received roster replaces the one we hold, and count
 * quorums. No I/O.
 */
import { peerIdFromMultihash, peerIdFromString } from '@libp2p/peer-id'
import * as Digest from 'multiformats/hashes/digest'
import { multiaddr } from '@multiformats/multiaddr'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { Handover, Member, Role, RosterBody, SignedHandover, SignedRoster } from '../wire/roster.js'
import { RosterError } from './errors.js'
import { GROUP_ID_BYTES, hex } from './token.js'
import { u8 } from '../util/bytes.js'
import { context, equalBytes, signWith, verifyWith } from '../util/signing.js'

/** Most members a roster may list; far above a site's host count, bounds decoding. */
export const MAX_MEMBERS = 256
/** Most addresses kept per member. */
export const MAX_MEMBER_ADDRS = 16
/** Handovers a roster carries, so a member that missed up to this many terms can verify each step. */
export const MAX_HANDOVER_CHAIN = 16
/** Largest encoded SignedRoster accepted from the network. */
export const MAX_ROSTER_BYTES = 256 * 1024

const ROSTER_CONTEXT = context('roster v1')
const HANDOVER_CONTEXT = context('handover v1')

export type MemberRole = 'leader' | 'follower'

export interface RosterMember {
  peerId: string
  hostname: string
  addresses: string[]
  role: MemberRole
  joinedAt: number
  agentVersion: string
}

export interface Roster {
  groupId: string // hex
  term: number
  version: number
  leader: string
  members: RosterMember[]
  updatedAt: number
  keyId: number
  /** SignedHandover bytes proving how `leader` became leader of `term` (term > 1). */
  handover?: Uint8Array
  /** Earlier SignedHandovers, oldest first (at most MAX_HANDOVER_CHAIN - 1). */
  handoverChain?: Uint8Array[]
}

/** A roster with the exact bytes that were signed, as stored and sent. */
export interface SignedRosterRecord {
  roster: Roster
  /** SignedRoster encoding. */
  bytes: Uint8Array
}

export function majority (n: number): number {
  return Math.floor(n / 2) + 1
}

export function isMember (roster: Roster, peerId: string): boolean {
  return roster.members.some(m => m.peerId === peerId)
}

export function memberOf (roster: Roster, peerId: string): RosterMember | undefined {
  return roster.members.find(m => m.peerId === peerId)
}

export async function signRoster (roster: Roster, key: PrivateKey): Promise<SignedRosterRecord> {
  const signer = peerIdFromPrivateKeyString(key)
  if (signer !== roster.leader) throw new RosterError(`only the leader of term ${roster.term} may sign its roster`, 'ROSTER_SIGNER')
  const body = RosterBody.encode(toWire(roster))
  const signature = await signWith(key, ROSTER_CONTEXT, body)
  const bytes = SignedRoster.encode({ body, signature: u8(signature) })
  return { roster, bytes }
}

/**
 * Decode a SignedRoster and check its signature against its leader's key.
 * Throws RosterError for anything malformed or forged.
 */
export async function verifyRoster (bytes: Uint8Array): Promise<SignedRosterRecord> {
  if (bytes.length > MAX_ROSTER_BYTES) throw new RosterError(`roster is ${bytes.length} bytes, over the ${MAX_ROSTER_BYTES} limit`)
  let signed: SignedRoster
  let body: RosterBody
  try {
    signed = SignedRoster.decode(bytes)
    body = RosterBody.decode(signed.body, { limits: { members: MAX_MEMBERS, handoverChain: MAX_HANDOVER_CHAIN } })
  } catch (err) {
    throw new RosterError(`roster is malformed: ${(err as Error).message}`)
  }
  // Only the exact encoding the leader produced: otherwise unsigned envelope bytes could be altered and relayed.
  if (!equalBytes(SignedRoster.encode(signed), bytes)) throw new RosterError('roster is not in its canonical encoding')
  const roster = fromWire(body)
  const leader = peerIdFromString(roster.leader)
  if (leader.publicKey == null) throw new RosterError('roster leader has no embedded public key')
  if (!await verifyWith(leader, ROSTER_CONTEXT, signed.body, signed.signature)) {
    throw new RosterError('roster signature does not verify: it was not signed by its leader', 'ROSTER_SIGNATURE')
  }
  return { roster, bytes }
}

export interface HandoverRecord {
  groupId: string
  term: number
  newLeader: string
  previousLeader: string
  issuedAt: number
  bytes: Uint8Array
}

export async function signHandover (h: Omit<HandoverRecord, 'bytes'>, key: PrivateKey): Promise<HandoverRecord> {
  const body = Handover.encode({
    groupId: u8(Buffer.from(h.groupId, 'hex')),
    term: BigInt(h.term),
    newLeader: u8(peerIdFromString(h.newLeader).toMultihash().bytes),
    previousLeader: u8(peerIdFromString(h.previousLeader).toMultihash().bytes),
    issuedAt: BigInt(h.issuedAt)
  })
  const signature = await signWith(key, HANDOVER_CONTEXT, body)
  return { ...h, bytes: SignedHandover.encode({ body, signature: u8(signature) }) }
}

export async function verifyHandover (bytes: Uint8Array): Promise<HandoverRecord> {
  let signed: SignedHandover
  let h: Handover
  try {
    signed = SignedHandover.decode(bytes)
    h = Handover.decode(signed.body)
  } catch (err) {
    throw new RosterError(`handover is malformed: ${(err as Error).message}`)
  }
  if (!equalBytes(SignedHandover.encode(signed), bytes)) throw new RosterError('handover is not in its canonical encoding')
  const previous = peerFromBytes(h.previousLeader)
  if (!await verifyWith(previous, HANDOVER_CONTEXT, signed.body, signed.signature)) {
    throw new RosterError('handover signature does not verify', 'ROSTER_SIGNATURE')
  }
  return {
    groupId: hex(h.groupId),
    term: safeNumber(h.term, 'handover term'),
    newLeader: peerFromBytes(h.newLeader).toString(),
    previousLeader: previous.toString(),
    issuedAt: safeNumber(h.issuedAt, 'handover time'),
    bytes
  }
}

/** Why a received roster is or is not adopted. */
export type AdoptDecision =
  | { adopt: true }
  | { adopt: false, reason: 'same' | 'older' | 'wrong-group' | 'bad-term' | 'term-gap' }

/**
 * Decide whether `incoming` (already signature-checked) replaces `current`.
 * - another group: never;
 * - an older term, or the same term and a version not newer: no;
 * - the same term: only from the same leader;
 * - a newer term: only with a chain of handovers, one per term from ours to the
 *   new one, each signed by the previous term's leader, starting from the leader we
 *   know. No follower or outsider can declare itself leader.
 */
export async function decideAdopt (current: Roster | undefined, incoming: Roster): Promise<AdoptDecision> {
  if (current == null) return { adopt: true }
  if (incoming.groupId !== current.groupId) return { adopt: false, reason: 'wrong-group' }
  if (incoming.term < current.term) return { adopt: false, reason: 'older' }
  if (incoming.term === current.term) {
    if (incoming.leader !== current.leader) return { adopt: false, reason: 'bad-term' }
    if (incoming.version > current.version) return { adopt: true }
    return { adopt: false, reason: incoming.version === current.version ? 'same' : 'older' }
  }
  if (incoming.version <= current.version || incoming.handover == null) return { adopt: false, reason: 'bad-term' }
  const byTerm = new Map<number, HandoverRecord>()
  for (const bytes of [...(incoming.handoverChain ?? []), incoming.handover]) {
    try {
      const h = await verifyHandover(bytes)
      if (h.groupId === incoming.groupId) byTerm.set(h.term, h)
    } catch {
      return { adopt: false, reason: 'bad-term' }
    }
  }
  let leader = current.leader
  for (let term = current.term + 1; term <= incoming.term; term++) {
    const h = byTerm.get(term)
    if (h == null) return { adopt: false, reason: 'term-gap' }
    if (h.previousLeader !== leader) return { adopt: false, reason: 'bad-term' }
    leader = h.newLeader
  }
  return leader === incoming.leader ? { adopt: true } : { adopt: false, reason: 'bad-term' }
}

/** The handover chain a roster of the next term carries: the previous roster's, plus its handover. */
export function nextHandoverChain (previous: Roster): Uint8Array[] {
  const chain = [...(previous.handoverChain ?? []), ...(previous.handover != null ? [previous.handover] : [])]
  return chain.slice(-(MAX_HANDOVER_CHAIN - 1))
}

export function toWire (r: Roster): RosterBody {
  return {
    groupId: u8(Buffer.from(r.groupId, 'hex')),
    term: BigInt(r.term),
    version: BigInt(r.version),
    leader: u8(peerIdFromString(r.leader).toMultihash().bytes),
    members: r.members.map(m => ({
      peerId: u8(peerIdFromString(m.peerId).toMultihash().bytes),
      hostname: m.hostname,
      addrs: m.addresses.slice(0, MAX_MEMBER_ADDRS).map(a => u8(multiaddr(a).bytes)),
      role: m.role === 'leader' ? Role.LEADER : Role.FOLLOWER,
      joinedAt: BigInt(m.joinedAt),
      agentVersion: m.agentVersion
    })),
    updatedAt: BigInt(r.updatedAt),
    keyId: r.keyId,
    handover: r.handover != null ? u8(r.handover) : new Uint8Array(0),
    handoverChain: (r.handoverChain ?? []).map(u8)
  }
}

/** Validate a decoded RosterBody and turn it into a Roster. */
export function fromWire (b: RosterBody): Roster {
  if (b.groupId.length !== GROUP_ID_BYTES) throw new RosterError('roster group id has the wrong size')
  const term = safeNumber(b.term, 'roster term')
  const version = safeNumber(b.version, 'roster version')
  if (term < 1 || version < 1) throw new RosterError('roster term and version start at 1')
  const leader = peerFromBytes(b.leader).toString()
  const seen = new Set<string>()
  const members = b.members.map((m: Member): RosterMember => {
    const peerId = peerFromBytes(m.peerId).toString()
    if (seen.has(peerId)) throw new RosterError('roster lists a member twice')
    seen.add(peerId)
    if (m.hostname.length === 0 || m.hostname.length > 253) throw new RosterError('roster member hostname is empty or too long')
    if (m.addrs.length > MAX_MEMBER_ADDRS) throw new RosterError('roster member has too many addresses')
    if (m.role !== Role.LEADER && m.role !== Role.FOLLOWER) throw new RosterError('roster member has no role')
    let addresses: string[]
    try {
      addresses = m.addrs.map(a => multiaddr(a).toString())
    } catch {
      throw new RosterError('roster member address is not a multiaddr')
    }
    return {
      peerId,
      hostname: m.hostname,
      addresses,
      role: m.role === Role.LEADER ? 'leader' : 'follower',
      joinedAt: safeNumber(m.joinedAt, 'joined-at'),
      agentVersion: m.agentVersion.slice(0, 64)
    }
  })
  const leaders = members.filter(m => m.role === 'leader')
  if (leaders.length !== 1 || leaders[0].peerId !== leader) throw new RosterError('roster must list its leader as the one member with the leader role')
  if (b.handoverChain.length >= MAX_HANDOVER_CHAIN) throw new RosterError('roster carries too many handovers')
  return {
    groupId: hex(b.groupId),
    term,
    version,
    leader,
    members,
    updatedAt: safeNumber(b.updatedAt, 'roster time'),
    keyId: b.keyId,
    handover: b.handover.length > 0 ? b.handover : undefined,
    handoverChain: b.handoverChain.length > 0 ? b.handoverChain : undefined
  }
}

function peerFromBytes (b: Uint8Array): PeerId {
  try {
    return peerIdFromMultihash(Digest.decode(b))
  } catch {
    throw new RosterError('roster holds an invalid PeerId')
  }
}

function safeNumber (v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RosterError(`${what} is out of range`)
  return Number(v)
}

function peerIdFromPrivateKeyString (key: PrivateKey): string {
  return peerIdFromMultihash(key.publicKey.toMultihash()).toString()
}

