/**
 * This host's membership, stored durably: the newest signed roster it holds and
 * the current group key. No record means the host is idle.
 */
import type { Sublevel } from '../store/index.js'
import { verifyRoster, type Roster, type SignedRosterRecord } from './roster.js'

export interface GroupKeyMaterial {
  id: number
  key: Uint8Array
}

interface StoredGroup {
  roster: string // base64 SignedRoster
  key: { id: number, key: string } // base64
  savedAt: number
  /** PeerIds this host saw removed from the group, newest last (absent in stores written before it was kept). */
  former?: string[]
}

/** Former members remembered; the oldest are forgotten first. */
export const MAX_FORMER_MEMBERS = 256

export interface Membership {
  record: SignedRosterRecord
  key: GroupKeyMaterial
}

export class GroupStore {
  private readonly db: Sublevel<StoredGroup>
  /** The roster last stored or loaded, to tell which members a new one drops. */
  private held?: Roster
  private former: string[] = []

  constructor (db: Sublevel<StoredGroup>) {
    this.db = db
  }

  async load (): Promise<Membership | undefined> {
    const s = await this.db.get('membership')
    if (s == null) return undefined
    // Verified again on load: the store is ours, but a roster we cannot verify must not drive decisions.
    const record = await verifyRoster(Buffer.from(s.roster, 'base64'))
    this.held = record.roster
    this.former = Array.isArray(s.former) ? s.former.filter(p => typeof p === 'string').slice(-MAX_FORMER_MEMBERS) : []
    return { record, key: { id: s.key.id, key: Buffer.from(s.key.key, 'base64') } }
  }

  async save (m: Membership): Promise<void> {
    const next = m.record.roster
    const listed = new Set(next.members.map(x => x.peerId))
    let former: string[] = []
    if (this.held?.groupId === next.groupId) {
      const dropped = this.held.members.map(x => x.peerId).filter(p => !listed.has(p))
      former = [...this.former.filter(p => !listed.has(p) && !dropped.includes(p)), ...dropped].slice(-MAX_FORMER_MEMBERS)
    }
    await this.db.put('membership', {
      roster: Buffer.from(m.record.bytes).toString('base64'),
      key: { id: m.key.id, key: Buffer.from(m.key.key).toString('base64') },
      savedAt: Date.now(),
      former
    }, { sync: true }) // acknowledged to the leader as stored: must survive a power cut
    this.held = next
    this.former = former
  }

  async clear (): Promise<void> {
    await this.db.del('membership', { sync: true })
    this.held = undefined
    this.former = []
  }

  /**
   * `peer` was a member of this group and this host stored a roster without it: it may
   * pull the roster that removed it (see protocols/roster.md, PULL).
   */
  wasMember (peer: string): boolean {
    return this.former.includes(peer)
  }
}
