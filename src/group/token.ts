/**
 * Join tokens: one copy-pasteable string that lets one more host join a group.
 *
 *   elt1_<base58btc( TokenPayload || crc32(TokenPayload) )>
 *
 * The payload carries the group id, the leader's PeerId (pinned: the follower
 * refuses a leader whose Noise identity differs), a token id, a 128-bit secret, the
 * expiry, and the leader's addresses sealed with ChaCha20-Poly1305 under a key
 * derived from the secret (HKDF-SHA256). The AEAD's associated data binds the group
 * id, leader, token id and expiry, so changing any of them is detected. The CRC
 * tells a damaged copy (truncated, mistyped) apart from a deliberate change.
 * Pure functions; no I/O.
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto'
import { crc32 } from 'node:zlib'
import { fromString, toString } from 'uint8arrays'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { peerIdFromMultihash } from '@libp2p/peer-id'
import * as Digest from 'multiformats/hashes/digest'
import type { PeerId } from '@libp2p/interface'
import { AddrList, TokenPayload } from '../wire/join.js'
import { TokenError } from './errors.js'
import { u8 } from '../util/bytes.js'

export const TOKEN_PREFIX = 'elt1_'
export const TOKEN_FORMAT_VERSION = 1
/** Longest token text accepted; a real one is about 200 characters (base58 decoding is quadratic, so keep this small). */
export const MAX_TOKEN_LENGTH = 1024
export const GROUP_ID_BYTES = 16
export const TOKEN_ID_BYTES = 8
export const SECRET_BYTES = 16
const NONCE_BYTES = 12
const TAG_BYTES = 16
/**
 * Fewest bytes a real token decodes to: fixed fields, a 38-byte PeerId, an empty
 * sealed address list and the CRC. Shorter input that fails its CRC was cut off.
 */
const MIN_TOKEN_BYTES = 2 + 18 + 40 + 10 + 18 + 3 + 2 + NONCE_BYTES + TAG_BYTES + 4
/** About how many characters that is in base58 (log(256)/log(58) ≈ 1.37 per byte), plus the prefix. */
const MIN_TOKEN_CHARS = Math.round(MIN_TOKEN_BYTES * 1.37) + TOKEN_PREFIX.length
/** At most this many sealed addresses; a host has a handful. */
export const MAX_TOKEN_ADDRS = 16

export interface TokenFields {
  groupId: Uint8Array
  leader: PeerId
  tokenId: Uint8Array
  secret: Uint8Array
  expiresAt: number
  addrs: Multiaddr[]
}

/** Encode and seal a token. */
export function encodeToken (t: TokenFields): string {
  const leader = t.leader.toMultihash().bytes
  const key = sealKey(t.secret)
  const nonce = randomBytes(NONCE_BYTES)
  const cipher = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_BYTES })
  const plain = AddrList.encode({ addrs: t.addrs.slice(0, MAX_TOKEN_ADDRS).map(a => u8(a.bytes)) })
  cipher.setAAD(associatedData(t.groupId, leader, t.tokenId, t.expiresAt), { plaintextLength: plain.length })
  const sealed = Buffer.concat([nonce, cipher.update(plain), cipher.final(), cipher.getAuthTag()])
  const payload = TokenPayload.encode({
    version: TOKEN_FORMAT_VERSION,
    groupId: u8(t.groupId),
    leader,
    tokenId: u8(t.tokenId),
    secret: u8(t.secret),
    expiresAt: BigInt(t.expiresAt),
    sealedAddrs: sealed
  })
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(payload, 0))
  return TOKEN_PREFIX + toString(Buffer.concat([payload, crc]), 'base58btc')
}

/**
 * Decode, check and unseal a token. Throws TokenError with a distinct `code` for
 * each way a token can be wrong: empty, oversized, not a token, damaged
 * (truncated or mistyped), unsupported version, tampered.
 * Expiry is not checked here (see `isExpired`), so the caller can say "expired"
 * separately from "malformed".
 */
export function decodeToken (text: string): TokenFields {
  const s = text.trim()
  if (s === '') throw new TokenError('the token is empty; paste the whole token printed by `edgelink token create` on the leader', 'TOKEN_EMPTY')
  if (s.length > MAX_TOKEN_LENGTH) throw new TokenError(`the input is ${s.length} characters long, far longer than a token (at most ${MAX_TOKEN_LENGTH}); paste only the token`, 'TOKEN_OVERSIZED')
  if (!s.startsWith(TOKEN_PREFIX)) throw new TokenError(`this is not an edgelink token (tokens start with "${TOKEN_PREFIX}"); create one on the leader with \`edgelink token create\``, 'TOKEN_FOREIGN')
  let raw: Uint8Array
  try {
    raw = fromString(s.slice(TOKEN_PREFIX.length), 'base58btc')
  } catch {
    throw new TokenError('the token contains characters a token never has; it was mistyped or damaged: copy it again from the leader', 'TOKEN_DAMAGED')
  }
  if (raw.length < 5) throw new TokenError('the token is truncated; copy the whole token again from the leader', 'TOKEN_DAMAGED')
  const payload = raw.subarray(0, raw.length - 4)
  const crc = Buffer.from(raw.subarray(raw.length - 4)).readUInt32BE()
  if (crc32(payload, 0) !== crc) {
    if (raw.length < MIN_TOKEN_BYTES) {
      throw new TokenError(`the token is truncated (${s.length} characters; a whole token is about ${MIN_TOKEN_CHARS} or more); copy the whole token again from the leader`, 'TOKEN_DAMAGED')
    }
    throw new TokenError('the token is damaged: a character was changed or mistyped; copy it again from the leader', 'TOKEN_DAMAGED')
  }

  let p: TokenPayload
  try {
    p = TokenPayload.decode(payload)
  } catch {
    throw new TokenError('the token is tampered: its checksum is right but its content is not a token', 'TOKEN_TAMPERED')
  }
  if (p.version !== TOKEN_FORMAT_VERSION) {
    throw new TokenError(`the token has format version ${p.version}; this agent reads version ${TOKEN_FORMAT_VERSION}: use agents of the same edgelink version`, 'TOKEN_VERSION')
  }
  if (p.groupId.length !== GROUP_ID_BYTES || p.tokenId.length !== TOKEN_ID_BYTES || p.secret.length !== SECRET_BYTES ||
    p.sealedAddrs.length < NONCE_BYTES + TAG_BYTES || p.expiresAt > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new TokenError('the token is tampered: a field has the wrong size', 'TOKEN_TAMPERED')
  }
  let leader: PeerId
  try {
    leader = peerIdFromMultihash(Digest.decode(p.leader))
  } catch {
    throw new TokenError('the token is tampered: its leader identity is not a valid PeerId', 'TOKEN_TAMPERED')
  }
  const expiresAt = Number(p.expiresAt)
  let plain: Buffer
  try {
    const nonce = p.sealedAddrs.subarray(0, NONCE_BYTES)
    const tag = p.sealedAddrs.subarray(p.sealedAddrs.length - TAG_BYTES)
    const body = p.sealedAddrs.subarray(NONCE_BYTES, p.sealedAddrs.length - TAG_BYTES)
    const decipher = createDecipheriv('chacha20-poly1305', sealKey(p.secret), nonce, { authTagLength: TAG_BYTES })
    decipher.setAAD(associatedData(p.groupId, p.leader, p.tokenId, expiresAt), { plaintextLength: body.length })
    decipher.setAuthTag(tag)
    plain = Buffer.concat([decipher.update(body), decipher.final()])
  } catch {
    throw new TokenError('the token is tampered: its sealed part does not match its other fields (group, leader, id or expiry were changed)', 'TOKEN_TAMPERED')
  }
  let addrs: Multiaddr[]
  try {
    addrs = AddrList.decode(plain, { limits: { addrs: MAX_TOKEN_ADDRS } }).addrs.map(b => multiaddr(b))
  } catch {
    throw new TokenError('the token is tampered: its sealed addresses are not valid', 'TOKEN_TAMPERED')
  }
  return { groupId: p.groupId, leader, tokenId: p.tokenId, secret: p.secret, expiresAt, addrs }
}

export function isExpired (t: { expiresAt: number }, now = Date.now()): boolean {
  return now >= t.expiresAt
}

/** What the leader stores instead of the secret. */
export function hashSecret (secret: Uint8Array): string {
  return createHash('sha256').update('edgelink token secret v1\0').update(secret).digest('hex')
}

/** Constant-time comparison of a presented secret with the stored hash. */
export function secretMatches (secret: Uint8Array, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(secret), 'hex')
  const b = Buffer.from(storedHash, 'hex')
  return a.length === b.length && timingSafeEqual(a, b)
}

export function newTokenId (): Uint8Array { return randomBytes(TOKEN_ID_BYTES) }
export function newSecret (): Uint8Array { return randomBytes(SECRET_BYTES) }
export function newGroupId (): Uint8Array { return randomBytes(GROUP_ID_BYTES) }

export function hex (b: Uint8Array): string { return Buffer.from(b).toString('hex') }

function sealKey (secret: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, 'edgelink token', 'edgelink token addrs v1', 32))
}

function associatedData (groupId: Uint8Array, leader: Uint8Array, tokenId: Uint8Array, expiresAt: number): Buffer {
  const exp = Buffer.alloc(8)
  exp.writeBigUInt64BE(BigInt(expiresAt))
  return Buffer.concat([Buffer.from('edgelink token v1\0'), groupId, leader, tokenId, exp])
}
