/**
 * The host's identity: an Ed25519 key created on first start and kept in the data
 * dir (mode 0600). The same key, and so the same PeerId, on every restart. A key file
 * that cannot be read or decoded is an error: a silently new identity would make the
 * host a stranger to its group.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, chmodSync, writeSync } from 'node:fs'
import { generateKeyPair, generateKeyPairFromSeed, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { IdentityError } from '../errors.js'

export interface LoadedIdentity {
  privateKey: PrivateKey
  /** True when the key was created by this call. */
  created: boolean
  /** True when the key file's permissions were wider than 0600 and were tightened. */
  tightened: boolean
}

const RECOVERY_HINT = 'restore the file from a backup, or move it and the store directory beside it away to give this host a new identity (it must then be linked to its group again)'

export async function loadOrCreateIdentity (file: string): Promise<LoadedIdentity> {
  let bytes: Buffer
  try {
    bytes = readFileSync(file)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'ENOENT') {
      throw new IdentityError(`cannot read identity key file ${file} (${code ?? 'unknown error'}); fix its permissions or ${RECOVERY_HINT}`, { cause: err })
    }
    const privateKey = await generateKeyPair('Ed25519')
    writeKeyFile(file, privateKeyToProtobuf(privateKey))
    return { privateKey, created: true, tightened: false }
  }
  let privateKey: PrivateKey
  try {
    privateKey = privateKeyFromProtobuf(bytes)
  } catch {
    throw new IdentityError(`identity key file ${file} is corrupt (${bytes.length} bytes, not an encoded Ed25519 key); ${RECOVERY_HINT}`)
  }
  if (privateKey.type !== 'Ed25519') {
    throw new IdentityError(`identity key file ${file} holds a ${privateKey.type} key; edgelink needs Ed25519; ${RECOVERY_HINT}`)
  }
  // An Ed25519 private key stores its public half too; a flipped bit in either half must not
  // load as a different (or non-signing) identity.
  const rederived = await generateKeyPairFromSeed('Ed25519', privateKey.raw.subarray(0, 32))
  if (!rederived.publicKey.equals(privateKey.publicKey)) {
    throw new IdentityError(`identity key file ${file} is corrupt (its public half does not match its private half); ${RECOVERY_HINT}`)
  }
  let tightened = false
  if ((statSync(file).mode & 0o077) !== 0) {
    chmodSync(file, 0o600)
    tightened = true
  }
  return { privateKey, created: false, tightened }
}

/** Write atomically: a crash leaves either no key file or a complete one. */
function writeKeyFile (file: string, bytes: Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`
  const fd = openSync(tmp, 'w', 0o600)
  try {
    writeSync(fd, bytes)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  renameSync(tmp, file)
}
