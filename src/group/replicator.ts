/**
 * Commits a roster change the way DESIGN.md "Consistency" asks: the change counts
 * only once a majority of the voters (members before and after the change) stored
 * it. Before signing anything the leader checks that a majority is reachable, so a
 * change that cannot succeed fails fast with nothing changed. A member heard from
 * within the last heartbeat interval on a connection that is still open counts as
 * reachable without a ping; the others are pinged.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'
import type { EdgelinkNode } from '../net/node.js'
import { GroupKey } from '../wire/roster.js'
import { NoQuorumError } from './errors.js'
import { isMember, majority, type Roster, type SignedRosterRecord } from './roster.js'
import { rosterCall, RosterRequestType, RosterStatus } from './roster-protocol.js'
import type { GroupKeyMaterial } from './state.js'
import { u8 } from '../util/bytes.js'

/**
 * Resolve with the number of promises that resolved true, as soon as `needed` of
 * them did (or all settled). `needed <= 0` resolves at once with 0.
 */
export async function countUntil (promises: Array<Promise<boolean>>, needed: number): Promise<number> {
  if (needed <= 0 || promises.length === 0) return 0
  return await new Promise<number>(resolve => {
    let yes = 0
    let settled = 0
    for (const p of promises) {
      p.then(ok => { if (ok) yes++ }, () => {}).finally(() => {
        settled++
        if (yes >= needed || settled === promises.length) resolve(yes)
      })
    }
  })
}

export interface ReplicatorComponents {
  node: EdgelinkNode
  log: Logger
  dialTimeoutMs: number
  rpcTimeoutMs: number
  /**
   * True if `peer` was heard from (heartbeat, gossip) within the last beat or so and is
   * still connected: as good as a ping for the reachability check, and free.
   */
  recentlyHeard?: (peer: string) => boolean
}

export interface PushPlan {
  current: Roster
  next: SignedRosterRecord
  key: GroupKeyMaterial
  /** Voters that already stored the new roster (the leader itself, a joiner that acked). */
  acked: Set<string>
  /** Skip the reachability check and accept fewer acks: removes unreachable members (unsafe). */
  force?: boolean
}

export interface PushOutcome {
  acked: number
  voters: number
}

export class RosterReplicator {
  private readonly c: ReplicatorComponents

  constructor (c: ReplicatorComponents) {
    this.c = c
  }

  /** Members of either roster: a change needs a majority of them. */
  voters (current: Roster, next: Roster): string[] {
    return [...new Set([...current.members, ...next.members].map(m => m.peerId))]
  }

  /** Throws NoQuorumError unless a majority of voters is connected or dialable now. */
  async checkReachable (current: Roster, next: Roster, acked: Set<string>): Promise<void> {
    const voters = this.voters(current, next)
    const needed = majority(voters.length)
    const others = voters.filter(v => !acked.has(v))
    const fresh = others.filter(v => this.c.recentlyHeard?.(v) === true)
    const rest = others.filter(v => !fresh.includes(v))
    const known = acked.size + fresh.length
    const reachable = known + await countUntil(rest.map(async v => await this.reachable(v)), needed - known)
    if (reachable < needed) throw new NoQuorumError(reachable, voters.length)
  }

  /** Push the new roster to every voter not yet acked; resolve once a majority stored it. */
  async push (plan: PushPlan): Promise<PushOutcome> {
    const voters = this.voters(plan.current, plan.next.roster)
    const needed = majority(voters.length)
    const acked = new Set(plan.acked)
    const keyBytes = GroupKey.encode({ id: plan.key.id, key: u8(plan.key.key) })
    const targets = voters.filter(v => !acked.has(v))
    // Resolve as soon as a majority stored it; pushes to the rest finish in the background.
    const gained = await countUntil(targets.map(async peer => {
      try {
        const res = await rosterCall(this.c.node, peerIdFromString(peer), {
          type: RosterRequestType.PUSH,
          groupId: u8(Buffer.from(plan.next.roster.groupId, 'hex')),
          roster: u8(plan.next.bytes),
          // Only members of the new roster get the key: a removed host must not read later traffic.
          groupKey: isMember(plan.next.roster, peer) ? keyBytes : new Uint8Array(0)
        }, this.c.rpcTimeoutMs)
        if (res.status === RosterStatus.ROSTER_OK) return true
        // A host this roster removes may have learned it first (its own anti-entropy pull
        // reads the roster the leader already stored) and left: "not in that group" is then
        // its acknowledgement, as a repeated push to a member is answered OK.
        if (res.status === RosterStatus.NOT_MEMBER && !isMember(plan.next.roster, peer)) return true
        this.c.log.warn({ peer, status: res.status, message: res.message }, 'member did not store the roster')
      } catch (err) {
        this.c.log.info({ peer, err: errorMessage(err) }, 'cannot push roster to member')
      }
      return false
    }), needed - acked.size)
    const stored = acked.size + gained
    if (stored < needed && plan.force !== true) {
      throw new NoQuorumError(stored, voters.length, `: roster v${plan.next.roster.version} was stored by ${stored} of ${voters.length} members and will reach the others when they return`)
    }
    return { acked: stored, voters: voters.length }
  }

  /**
   * A round trip, not just an open connection: a connection to a host that just
   * stopped can linger until its close is noticed, and must not count as a vote.
   */
  private async reachable (peer: string): Promise<boolean> {
    try {
      await this.c.node.services.ping.ping(peerIdFromString(peer), { signal: AbortSignal.timeout(this.c.dialTimeoutMs) })
      return true
    } catch {
      return false
    }
  }
}
