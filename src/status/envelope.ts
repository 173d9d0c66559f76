/**
 * The sealed envelope on the group topic: ChaCha20-Poly1305 under the group key, with
 * the key id in clear (so members can tell a rotation from a forgery) and the group
 * id, key id and sending PeerId bound as associated data. A host without the current
 * key can neither read nor forge group traffic. Pure functions.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { Envelope, GroupMessage } from '../wire/group.js'
import { u8 } from '../util/bytes.js'

export const ENVELOPE_VERSION = 1
const NONCE_BYTES = 12
const TAG_BYTES = 16

export interface GroupKeyRef {
  id: number
  key: Uint8Array
}

export function sealMessage (m: GroupMessage, key: GroupKeyRef, groupId: Uint8Array, sender: Uint8Array): Uint8Array {
  const nonce = randomBytes(NONCE_BYTES)
  const plain = GroupMessage.encode(m)
  const cipher = createCipheriv('chacha20-poly1305', key.key, nonce, { authTagLength: TAG_BYTES })
  cipher.setAAD(aad(groupId, key.id, sender), { plaintextLength: plain.length })
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()])
  return Envelope.encode({ version: ENVELOPE_VERSION, keyId: key.id, nonce: u8(nonce), ciphertext: u8(ciphertext) })
}

export type OpenResult =
  | { ok: true, message: GroupMessage }
  | { ok: false, reason: 'malformed' | 'version' | 'unknown-key' | 'old-key' | 'forged' }

/** Open an envelope with the key we hold; tells a key we lack apart from a bad seal. */
export function openMessage (data: Uint8Array, key: GroupKeyRef, groupId: Uint8Array, sender: Uint8Array): OpenResult {
  let e: Envelope
  try {
    e = Envelope.decode(data)
  } catch {
    return { ok: false, reason: 'malformed' }
  }
  if (e.version !== ENVELOPE_VERSION) return { ok: false, reason: 'version' }
  if (e.keyId > key.id) return { ok: false, reason: 'unknown-key' }
  if (e.keyId < key.id) return { ok: false, reason: 'old-key' }
  if (e.nonce.length !== NONCE_BYTES || e.ciphertext.length < TAG_BYTES) return { ok: false, reason: 'malformed' }
  let plain: Buffer
  try {
    const decipher = createDecipheriv('chacha20-poly1305', key.key, e.nonce, { authTagLength: TAG_BYTES })
    const body = e.ciphertext.subarray(0, e.ciphertext.length - TAG_BYTES)
    decipher.setAAD(aad(groupId, e.keyId, sender), { plaintextLength: body.length })
    decipher.setAuthTag(e.ciphertext.subarray(e.ciphertext.length - TAG_BYTES))
    plain = Buffer.concat([decipher.update(body), decipher.final()])
  } catch {
    return { ok: false, reason: 'forged' }
  }
  try {
    return { ok: true, message: GroupMessage.decode(plain) }
  } catch {
    return { ok: false, reason: 'malformed' }
  }
}

function aad (groupId: Uint8Array, keyId: number, sender: Uint8Array): Buffer {
  const id = Buffer.alloc(4)
  id.writeUInt32BE(keyId)
  return Buffer.concat([Buffer.from('edgelink group v1\0'), groupId, id, sender])
}
