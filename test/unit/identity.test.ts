import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { generateKeyPair, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateIdentity } from '../../src/identity/index.js'

const root = mkdtempSync(join(tmpdir(), 'el-identity-'))
afterAll(() => { rmSync(root, { recursive: true, force: true }) })

/** identity.key in a fresh dir of its own. */
function keyPath (): string {
  return join(mkdtempSync(join(root, 'd-')), 'identity.key')
}

/** A valid key file's bytes and the PeerId it holds. */
async function validKey (): Promise<{ bytes: Buffer, peerId: string }> {
  const key = await generateKeyPair('Ed25519')
  return { bytes: Buffer.from(privateKeyToProtobuf(key)), peerId: peerIdFromPrivateKey(key).toString() }
}

/** Load `file`, expecting an IdentityError; returns it. */
async function identityErrorOf (file: string): Promise<Error> {
  let thrown: unknown
  try {
    await loadOrCreateIdentity(file)
  } catch (err) {
    thrown = err
  }
  expect(thrown, 'expected loadOrCreateIdentity to throw').toBeInstanceOf(Error)
  expect((thrown as Error).name).toBe('IdentityError')
  return thrown as Error
}

describe('host identity', () => {
  it('is created on first load with file mode 0600', async () => {
    const file = keyPath()
    const id = await loadOrCreateIdentity(file)
    expect(id.created).toBe(true)
    expect(id.privateKey.type).toBe('Ed25519')
    expect(statSync(file).mode & 0o777).toBe(0o600)
    // The atomic write leaves no temp file behind.
    expect(readdirSync(join(file, '..'))).toEqual(['identity.key'])
  })

  it('gives the same PeerId on reload and leaves the file untouched', async () => {
    const file = keyPath()
    const first = await loadOrCreateIdentity(file)
    const bytes = readFileSync(file)
    const second = await loadOrCreateIdentity(file)
    expect(second.created).toBe(false)
    expect(second.tightened).toBe(false)
    expect(peerIdFromPrivateKey(second.privateKey).toString()).toBe(peerIdFromPrivateKey(first.privateKey).toString())
    expect(readFileSync(file).equals(bytes)).toBe(true)
  })

  it('a key file readable by others is tightened to 0600 and still loads the same PeerId', async () => {
    const file = keyPath()
    const { bytes, peerId } = await validKey()
    writeFileSync(file, bytes)
    chmodSync(file, 0o644)
    const id = await loadOrCreateIdentity(file)
    expect(id.tightened).toBe(true)
    expect(statSync(file).mode & 0o777).toBe(0o600)
    expect(peerIdFromPrivateKey(id.privateKey).toString()).toBe(peerId)
  })

  it('an empty key file is an IdentityError naming the file and how to recover; the file is not replaced', async () => {
    const file = keyPath()
    writeFileSync(file, '')
    const err = await identityErrorOf(file)
    expect(err.message).toContain(file)
    expect(err.message).toMatch(/corrupt/)
    expect(err.message).toMatch(/backup/)
    expect(readFileSync(file).length).toBe(0)
  })

  it('a key file truncated at any length is an IdentityError and its bytes are unchanged', async () => {
    const file = keyPath()
    const { bytes } = await validKey()
    for (let len = 0; len < bytes.length; len++) {
      const truncated = bytes.subarray(0, len)
      writeFileSync(file, truncated)
      await identityErrorOf(file)
      expect(readFileSync(file).equals(truncated), `truncated to ${len} bytes`).toBe(true)
    }
  })

  it('garbage bytes in the key file give an IdentityError and the file is never overwritten', async () => {
    const file = keyPath()
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), async (garbage) => {
      writeFileSync(file, garbage)
      await identityErrorOf(file)
      expect(readFileSync(file).equals(Buffer.from(garbage))).toBe(true)
    }), { numRuns: 200 })
  })

  it('a key of another type (secp256k1) is refused: edgelink needs Ed25519', async () => {
    const file = keyPath()
    const other = Buffer.from(privateKeyToProtobuf(await generateKeyPair('secp256k1')))
    writeFileSync(file, other)
    const err = await identityErrorOf(file)
    expect(err.message).toMatch(/Ed25519/)
    expect(readFileSync(file).equals(other)).toBe(true)
  })

  it('a key file with any single bit flipped loads the same working identity or is refused, never a silently broken one', async () => {
    const file = keyPath()
    const { bytes, peerId } = await validKey()
    const message = Uint8Array.from([1, 2, 3])
    await fc.assert(fc.asyncProperty(fc.nat({ max: bytes.length * 8 - 1 }), async (bit) => {
      const corrupt = Buffer.from(bytes)
      corrupt[bit >> 3] ^= 1 << (bit & 7)
      writeFileSync(file, corrupt)
      let loaded
      try {
        loaded = await loadOrCreateIdentity(file)
      } catch (err) {
        expect((err as Error).name).toBe('IdentityError')
        expect(readFileSync(file).equals(corrupt)).toBe(true)
        return
      }
      // Accepted: then it must be the very same identity, able to sign as that PeerId.
      expect(peerIdFromPrivateKey(loaded.privateKey).toString()).toBe(peerId)
      const signature = await loaded.privateKey.sign(message)
      expect(await loaded.privateKey.publicKey.verify(message, signature)).toBe(true)
    }), { numRuns: 200 })
  })

  it('an unreadable key path (a directory) is an IdentityError and nothing is created', async () => {
    const file = keyPath()
    mkdirSync(file) // occupy the name with a directory
    const err = await identityErrorOf(file)
    expect(err.message).toMatch(/cannot read identity key file/)
    expect(err.message).toContain(file)
    expect(statSync(file).isDirectory()).toBe(true)
    expect(existsSync(`${file}.tmp-${process.pid}`)).toBe(false)
  })
})
