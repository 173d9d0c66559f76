/** The group key as it travels in roster and join messages (see protocols/roster.md). */
import { GroupKey } from '../wire/roster.js'
import { RosterError } from './errors.js'
import type { GroupKeyMaterial } from './state.js'

export const GROUP_KEY_BYTES = 32

export function decodeKey (bytes: Uint8Array): GroupKeyMaterial {
  let k: GroupKey
  try {
    k = GroupKey.decode(bytes)
  } catch {
    throw new RosterError('group key is malformed')
  }
  if (k.key.length !== GROUP_KEY_BYTES || k.id < 1) throw new RosterError('group key has the wrong size or id')
  return { id: k.id, key: k.key }
}
