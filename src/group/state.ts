/**
 * This host's membership, stored durably: the newest signed roster it holds and
 * the current group key. No record means the host is idle.
 */
import type { Sublevel } from '../store/index.js'
import { verifyRoster, type SignedRosterRecord } from './roster.js'

export interface GroupKeyMaterial {
  id: number
  key: Uint8Array
}

interface StoredGroup {
  roster: string // base64 SignedRoster
  key: { id: number, key: string } // base64
  savedAt: number
}

export interface Membership {
  record: SignedRosterRecord
  key: GroupKeyMaterial
}

export class GroupStore {
  private readonly db: Sublevel<StoredGroup>

  constructor (db: Sublevel<StoredGroup>) {
    this.db = db
  }

  async load (): Promise<Membership | undefined> {
    const s = await this.db.get('membership')
    if (s == null) return undefined
    // Verified again on load: the store is ours, but a roster we cannot verify must not drive decisions.
    const record = await verifyRoster(Buffer.from(s.roster, 'base64'))
    return { record, key: { id: s.key.id, key: Buffer.from(s.key.key, 'base64') } }
  }

  async save (m: Membership): Promise<void> {
    await this.db.put('membership', {
      roster: Buffer.from(m.record.bytes).toString('base64'),
      key: { id: m.key.id, key: Buffer.from(m.key.key).toString('base64') },
      savedAt: Date.now()
    }, { sync: true }) // acknowledged to the leader as stored: must survive a power cut
  }

  async clear (): Promise<void> {
    await this.db.del('membership', { sync: true })
  }
}
