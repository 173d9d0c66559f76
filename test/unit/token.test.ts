import { crc32 } from 'node:zlib'
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { fromString, toString } from 'uint8arrays'
import {
  decodeToken, encodeToken, hashSecret, hex, isExpired, MAX_TOKEN_ADDRS, MAX_TOKEN_LENGTH, newGroupId, newSecret, newTokenId,
  secretMatches, TOKEN_PREFIX, type TokenFields
} from '../../src/group/token.js'
import { TokenError } from '../../src/group/errors.js'
import { AddrList, TokenPayload } from '../../src/wire/join.js'

const BASE58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'
const LEADER_ADDR = '/ip4/127.0.0.1/tcp/40123'

const leader = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
const otherPeer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))

function fields (over: Partial<TokenFields> = {}): TokenFields {
  return {
    groupId: newGroupId(),
    leader,
    tokenId: newTokenId(),
    secret: newSecret(),
    expiresAt: Date.now() + 120_000,
    addrs: [multiaddr(LEADER_ADDR), multiaddr('/ip6/::1/tcp/40124')],
    ...over
  }
}

const sample = fields()
const token = encodeToken(sample)
const body = token.slice(TOKEN_PREFIX.length)

/** Decode `text`, expecting a TokenError (and no other type); returns it. */
function tokenErrorOf (text: string): TokenError {
  let thrown: unknown
  try {
    decodeToken(text)
  } catch (err) {
    thrown = err
  }
  expect(thrown, `expected decodeToken to throw for ${JSON.stringify(text.slice(0, 80))}`).toBeInstanceOf(TokenError)
  return thrown as TokenError
}

function codeOf (text: string): string {
  return tokenErrorOf(text).code
}

/** The binary payload of a token (without the CRC). */
function payloadOf (text: string): Uint8Array {
  const raw = fromString(text.slice(TOKEN_PREFIX.length), 'base58btc')
  return raw.subarray(0, raw.length - 4)
}

/** Wrap payload bytes as token text with a correct CRC, as a forger would. */
function wrap (payload: Uint8Array): string {
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(payload, 0))
  return TOKEN_PREFIX + toString(Buffer.concat([payload, crc]), 'base58btc')
}

/** Edit a token's decoded payload and re-encode it with a recomputed CRC. */
function forge (text: string, edit: (p: TokenPayload) => TokenPayload): string {
  return wrap(TokenPayload.encode(edit(TokenPayload.decode(payloadOf(text)))))
}

function flipFirstByte (b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(b)
  out[0] ^= 0x01
  return out
}

function indexOfBytes (haystack: Uint8Array, needle: Uint8Array): number {
  return Buffer.from(haystack).indexOf(Buffer.from(needle))
}

describe('token encoding', () => {
  it('round-trips every field, and the sealed addresses come back equal', () => {
    const t = decodeToken(token)
    expect(hex(t.groupId)).toBe(hex(sample.groupId))
    expect(t.leader.toString()).toBe(leader.toString())
    expect(t.leader.equals(leader)).toBe(true)
    expect(hex(t.tokenId)).toBe(hex(sample.tokenId))
    expect(hex(t.secret)).toBe(hex(sample.secret))
    expect(t.expiresAt).toBe(sample.expiresAt)
    expect(t.addrs.map(a => a.toString())).toEqual([LEADER_ADDR, '/ip6/::1/tcp/40124'])
  })

  it('round-trips a token with no addresses', () => {
    const t = decodeToken(encodeToken(fields({ addrs: [] })))
    expect(t.addrs).toEqual([])
  })

  it(`keeps at most ${MAX_TOKEN_ADDRS} addresses, in order`, () => {
    const addrs = Array.from({ length: MAX_TOKEN_ADDRS + 4 }, (_, i) => multiaddr(`/ip4/10.0.0.${i + 1}/tcp/4001`))
    const t = decodeToken(encodeToken(fields({ addrs })))
    expect(t.addrs.map(String)).toEqual(addrs.slice(0, MAX_TOKEN_ADDRS).map(String))
  })

  it('tolerates surrounding whitespace and newlines from copy-paste', () => {
    expect(hex(decodeToken(`  ${token}\n`).tokenId)).toBe(hex(sample.tokenId))
    expect(hex(decodeToken(`\t${token}\r\n`).secret)).toBe(hex(sample.secret))
  })

  it('seals with a fresh nonce: the same fields give different texts that decode alike', () => {
    const again = encodeToken(sample)
    expect(again).not.toBe(token)
    expect(decodeToken(again).addrs.map(String)).toEqual(decodeToken(token).addrs.map(String))
  })

  it('is one copy-pasteable word: the prefix, then only base58 characters', () => {
    expect(token.startsWith('elt1_')).toBe(true)
    expect(body).toMatch(/^[1-9A-HJ-NP-Za-km-z]+$/)
    expect(token).not.toMatch(/\s/)
    expect(token.length).toBeLessThanOrEqual(MAX_TOKEN_LENGTH)
  })

  it('does not show the leader\'s address, in the text or in the decoded payload bytes', () => {
    expect(token).not.toContain('127.0.0.1')
    expect(token).not.toContain('40123')
    const payload = payloadOf(token)
    const ma = multiaddr(LEADER_ADDR)
    // The multiaddr's bytes, the bare IPv4 bytes, and the address as text are all absent.
    expect(indexOfBytes(payload, ma.bytes)).toBe(-1)
    expect(indexOfBytes(payload, new Uint8Array([127, 0, 0, 1]))).toBe(-1)
    expect(indexOfBytes(payload, new TextEncoder().encode('127.0.0.1'))).toBe(-1)
    expect(indexOfBytes(payload, new TextEncoder().encode('40123'))).toBe(-1)
    // And the sealed field is not the plaintext AddrList.
    const plain = AddrList.encode({ addrs: sample.addrs.map(a => a.bytes as Uint8Array<ArrayBuffer>) })
    expect(indexOfBytes(TokenPayload.decode(payload).sealedAddrs, plain)).toBe(-1)
  })
})

describe('token errors: each failure has its own code', () => {
  it('empty or whitespace-only input is TOKEN_EMPTY', () => {
    for (const s of ['', ' ', '   ', '\n', '\t\r\n ']) expect(codeOf(s)).toBe('TOKEN_EMPTY')
  })

  it(`input longer than ${MAX_TOKEN_LENGTH} characters is TOKEN_OVERSIZED, whatever it holds`, () => {
    expect(codeOf(TOKEN_PREFIX + '2'.repeat(MAX_TOKEN_LENGTH))).toBe('TOKEN_OVERSIZED')
    expect(codeOf('x'.repeat(MAX_TOKEN_LENGTH + 1))).toBe('TOKEN_OVERSIZED')
    expect(codeOf(token + '2'.repeat(MAX_TOKEN_LENGTH))).toBe('TOKEN_OVERSIZED')
    // The limit is on the trimmed text: exactly MAX_TOKEN_LENGTH is not oversized.
    expect(codeOf('x'.repeat(MAX_TOKEN_LENGTH))).toBe('TOKEN_FOREIGN')
    expect(codeOf(`  ${'x'.repeat(MAX_TOKEN_LENGTH)}  `)).toBe('TOKEN_FOREIGN')
  })

  it('text without the prefix, another product\'s token, a JWT or random words is TOKEN_FOREIGN', () => {
    const foreign = [
      body, // the token without its prefix
      'hello world',
      'correct horse battery staple',
      'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U',
      'ghp_16C7e42F292c6912E7710c838347Ae178B4a',
      'K10831ce3e8b2f4d1a2ab0e6d2f0c0f7b3::server:5f2d3b1c9a8e7d6c',
      'xoxb-1234-5678-abcdefghijkl',
      'ELT1_' + body,
      'elt1' + body,
      'elt_' + body
    ]
    for (const s of foreign) expect(codeOf(s), s).toBe('TOKEN_FOREIGN')
  })

  it('a token truncated at every possible length is an error, TOKEN_DAMAGED once the prefix is complete', () => {
    for (let n = 0; n < token.length; n++) {
      const cut = token.slice(0, n)
      const expected = n === 0 ? 'TOKEN_EMPTY' : n < TOKEN_PREFIX.length ? 'TOKEN_FOREIGN' : 'TOKEN_DAMAGED'
      expect(codeOf(cut), `truncated to ${n} characters`).toBe(expected)
    }
  })

  it('a token missing characters at the front of its body is TOKEN_DAMAGED', () => {
    for (let n = 1; n < body.length; n++) {
      expect(codeOf(TOKEN_PREFIX + body.slice(n)), `first ${n} body characters lost`).toBe('TOKEN_DAMAGED')
    }
  })

  it('a single changed base58 character anywhere in the body is TOKEN_DAMAGED (the CRC catches it)', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: body.length - 1 }),
      fc.constantFrom(...BASE58),
      (i, c) => {
        fc.pre(body[i] !== c)
        const typo = TOKEN_PREFIX + body.slice(0, i) + c + body.slice(i + 1)
        expect(codeOf(typo)).toBe('TOKEN_DAMAGED')
      }
    ), { numRuns: 500 })
  })

  it('every single-character change in the body is TOKEN_DAMAGED (exhaustive over positions)', () => {
    for (let i = 0; i < body.length; i++) {
      const c = body[i] === 'z' ? 'y' : 'z'
      expect(codeOf(TOKEN_PREFIX + body.slice(0, i) + c + body.slice(i + 1)), `position ${i}`).toBe('TOKEN_DAMAGED')
    }
  })

  it('a character that base58 never uses (0 O I l, punctuation) is TOKEN_DAMAGED', () => {
    for (const c of ['0', 'O', 'I', 'l', '-', '.', '+', '/', '=', 'é', ' ']) {
      const i = Math.floor(body.length / 2)
      expect(codeOf(TOKEN_PREFIX + body.slice(0, i) + c + body.slice(i + 1)), JSON.stringify(c)).toBe('TOKEN_DAMAGED')
    }
  })

  it('an empty or tiny body after the prefix is TOKEN_DAMAGED', () => {
    for (const s of [TOKEN_PREFIX, TOKEN_PREFIX + '1', TOKEN_PREFIX + '2', TOKEN_PREFIX + 'zzzzzz']) {
      expect(codeOf(s), s).toBe('TOKEN_DAMAGED')
    }
  })

  describe('a re-encoded payload with a recomputed CRC is TOKEN_TAMPERED', () => {
    it('forging helper is faithful: an unedited re-encode still decodes', () => {
      expect(hex(decodeToken(forge(token, p => p)).secret)).toBe(hex(sample.secret))
    })

    it('altered group id', () => {
      expect(codeOf(forge(token, p => ({ ...p, groupId: flipFirstByte(p.groupId) })))).toBe('TOKEN_TAMPERED')
    })

    it('altered leader PeerId (another valid PeerId)', () => {
      expect(codeOf(forge(token, p => ({ ...p, leader: otherPeer.toMultihash().bytes as Uint8Array<ArrayBuffer> })))).toBe('TOKEN_TAMPERED')
    })

    it('leader bytes that are not a PeerId', () => {
      expect(codeOf(forge(token, p => ({ ...p, leader: new Uint8Array([0xde, 0xad, 0xbe, 0xef]) })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, leader: new Uint8Array(0) })))).toBe('TOKEN_TAMPERED')
    })

    it('altered token id', () => {
      expect(codeOf(forge(token, p => ({ ...p, tokenId: flipFirstByte(p.tokenId) })))).toBe('TOKEN_TAMPERED')
    })

    it('altered expiry (later or earlier by 1 ms, or beyond a safe integer)', () => {
      expect(codeOf(forge(token, p => ({ ...p, expiresAt: p.expiresAt + 1n })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, expiresAt: p.expiresAt - 1n })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, expiresAt: p.expiresAt + 3_600_000n * 24n * 365n })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, expiresAt: BigInt(Number.MAX_SAFE_INTEGER) + 1n })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, expiresAt: 2n ** 64n - 1n })))).toBe('TOKEN_TAMPERED')
    })

    it('altered secret', () => {
      expect(codeOf(forge(token, p => ({ ...p, secret: flipFirstByte(p.secret) })))).toBe('TOKEN_TAMPERED')
    })

    it('altered sealed addresses (ciphertext, tag or nonce), or sealed part too short', () => {
      for (const at of [0, 12, -1]) {
        expect(codeOf(forge(token, p => {
          const s = new Uint8Array(p.sealedAddrs)
          s[at < 0 ? s.length + at : at] ^= 0x80
          return { ...p, sealedAddrs: s }
        })), `sealed byte ${at}`).toBe('TOKEN_TAMPERED')
      }
      expect(codeOf(forge(token, p => ({ ...p, sealedAddrs: p.sealedAddrs.subarray(0, 27) })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, sealedAddrs: new Uint8Array(0) })))).toBe('TOKEN_TAMPERED')
    })

    it('fields of the wrong size', () => {
      expect(codeOf(forge(token, p => ({ ...p, groupId: p.groupId.subarray(1) })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, tokenId: new Uint8Array(9) })))).toBe('TOKEN_TAMPERED')
      expect(codeOf(forge(token, p => ({ ...p, secret: p.secret.subarray(0, 8) })))).toBe('TOKEN_TAMPERED')
    })

    it('a checksummed payload that is not a protobuf at all', () => {
      expect(codeOf(wrap(new Uint8Array([0x0f])))).toBe('TOKEN_TAMPERED')
      expect(codeOf(wrap(new Uint8Array([0x12, 0xff, 0xff, 0xff, 0x0f])))).toBe('TOKEN_TAMPERED')
    })

    it('property: replacing group id, leader, token id, secret or expiry with other values is TOKEN_TAMPERED', () => {
      const field = fc.oneof(
        fc.uint8Array({ minLength: 16, maxLength: 16 }).map(b => (p: TokenPayload): TokenPayload => ({ ...p, groupId: b as Uint8Array<ArrayBuffer> })),
        fc.uint8Array({ minLength: 8, maxLength: 8 }).map(b => (p: TokenPayload): TokenPayload => ({ ...p, tokenId: b as Uint8Array<ArrayBuffer> })),
        fc.uint8Array({ minLength: 16, maxLength: 16 }).map(b => (p: TokenPayload): TokenPayload => ({ ...p, secret: b as Uint8Array<ArrayBuffer> })),
        fc.uint8Array({ maxLength: 40 }).map(b => (p: TokenPayload): TokenPayload => ({ ...p, leader: b as Uint8Array<ArrayBuffer> })),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(e => (p: TokenPayload): TokenPayload => ({ ...p, expiresAt: e }))
      )
      const original = TokenPayload.decode(payloadOf(token))
      fc.assert(fc.property(field, edit => {
        const edited = edit(original)
        fc.pre(Buffer.compare(TokenPayload.encode(edited), TokenPayload.encode(original)) !== 0)
        expect(codeOf(wrap(TokenPayload.encode(edited)))).toBe('TOKEN_TAMPERED')
      }), { numRuns: 300 })
    })
  })

  it('another format version is TOKEN_VERSION', () => {
    expect(codeOf(forge(token, p => ({ ...p, version: 2 })))).toBe('TOKEN_VERSION')
    expect(codeOf(forge(token, p => ({ ...p, version: 0 })))).toBe('TOKEN_VERSION')
    expect(codeOf(forge(token, p => ({ ...p, version: 0xffffffff })))).toBe('TOKEN_VERSION')
  })

  it('error messages never contain the secret or the token text', () => {
    const secretHex = hex(sample.secret)
    const texts = [
      token.slice(0, -3),
      forge(token, p => ({ ...p, expiresAt: p.expiresAt + 1n })),
      forge(token, p => ({ ...p, version: 2 })),
      body
    ]
    for (const t of texts) {
      const err = tokenErrorOf(t)
      expect(err.message).not.toContain(secretHex)
      expect(err.message).not.toContain(body.slice(0, 20))
    }
  })

  it('property: arbitrary strings only ever throw TokenError', () => {
    fc.assert(fc.property(
      fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 300 })),
      s => { tokenErrorOf(s) }
    ), { numRuns: 400 })
    fc.assert(fc.property(
      fc.string({ minLength: MAX_TOKEN_LENGTH - 10, maxLength: MAX_TOKEN_LENGTH + 10 }),
      s => { tokenErrorOf(s) }
    ), { numRuns: 50 })
  })

  it('property: the prefix followed by arbitrary base58 or arbitrary text only ever throws TokenError', () => {
    fc.assert(fc.property(
      fc.oneof(
        fc.string({ unit: fc.constantFrom(...BASE58), maxLength: 400 }),
        fc.string({ unit: 'binary', maxLength: 200 })
      ),
      s => { tokenErrorOf(TOKEN_PREFIX + s) }
    ), { numRuns: 400 })
  })

  it('property: the longest accepted base58 input is refused with TokenError in bounded time', () => {
    // base58 decoding is quadratic; the length cap is what bounds it.
    fc.assert(fc.property(
      fc.string({ unit: fc.constantFrom(...BASE58), minLength: MAX_TOKEN_LENGTH - TOKEN_PREFIX.length - 20, maxLength: MAX_TOKEN_LENGTH - TOKEN_PREFIX.length }),
      s => {
        const started = performance.now()
        expect(tokenErrorOf(TOKEN_PREFIX + s).code).toBe('TOKEN_DAMAGED')
        expect(performance.now() - started).toBeLessThan(2_000)
      }
    ), { numRuns: 15 })
  })

  it('property: arbitrary payload bytes with a correct CRC are TOKEN_TAMPERED or TOKEN_VERSION, never anything else', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 1, maxLength: 300 }), bytes => {
      expect(['TOKEN_TAMPERED', 'TOKEN_VERSION']).toContain(codeOf(wrap(bytes)))
    }), { numRuns: 500 })
  })
})

describe('isExpired', () => {
  it('is true from the expiry instant on', () => {
    expect(isExpired({ expiresAt: 1000 }, 999)).toBe(false)
    expect(isExpired({ expiresAt: 1000 }, 1000)).toBe(true)
    expect(isExpired({ expiresAt: 1000 }, 1001)).toBe(true)
  })

  it('defaults to the current time', () => {
    expect(isExpired({ expiresAt: Date.now() + 60_000 })).toBe(false)
    expect(isExpired({ expiresAt: Date.now() - 1 })).toBe(true)
  })

  it('a decoded token keeps its expiry, so the caller can tell expired from malformed', () => {
    const old = decodeToken(encodeToken(fields({ expiresAt: Date.now() - 60_000 })))
    expect(isExpired(old)).toBe(true)
  })
})

describe('secret hashing', () => {
  it('hashSecret is 64 hex characters, stable, and never the secret\'s hex', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), s => {
      const h = hashSecret(s)
      expect(h).toMatch(/^[0-9a-f]{64}$/)
      expect(h).toBe(hashSecret(s))
      expect(h).not.toBe(hex(s))
      expect(h).not.toContain(hex(s))
    }))
  })

  it('different secrets hash differently', () => {
    const a = newSecret()
    const b = new Uint8Array(a)
    b[15] ^= 0x01
    expect(hashSecret(a)).not.toBe(hashSecret(b))
  })

  it('secretMatches is true only for the right secret', () => {
    const secret = newSecret()
    const stored = hashSecret(secret)
    expect(secretMatches(secret, stored)).toBe(true)
    expect(secretMatches(new Uint8Array(secret), stored)).toBe(true)
    for (let bit = 0; bit < secret.length * 8; bit++) {
      const wrong = new Uint8Array(secret)
      wrong[bit >> 3] ^= 1 << (bit & 7)
      expect(secretMatches(wrong, stored), `bit ${bit}`).toBe(false)
    }
    expect(secretMatches(secret.subarray(0, 15), stored)).toBe(false)
    expect(secretMatches(new Uint8Array(0), stored)).toBe(false)
    expect(secretMatches(newSecret(), stored)).toBe(false)
  })

  it('secretMatches is false (and does not throw) for a stored hash that is empty, short or not hex', () => {
    const secret = newSecret()
    for (const stored of ['', 'zz', hashSecret(secret).slice(0, 62), hex(secret), 'not a hash at all']) {
      expect(secretMatches(secret, stored), stored).toBe(false)
    }
  })

  it('property: secretMatches(s, hashSecret(t)) holds exactly when s equals t', () => {
    fc.assert(fc.property(
      fc.uint8Array({ minLength: 16, maxLength: 16 }),
      fc.uint8Array({ minLength: 16, maxLength: 16 }),
      (s, t) => {
        expect(secretMatches(s, hashSecret(t))).toBe(Buffer.compare(s, t) === 0)
        expect(secretMatches(s, hashSecret(s))).toBe(true)
      }
    ))
  })
})
