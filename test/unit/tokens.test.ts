import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { Store } from '../../src/store/index.js'
import { MAX_FAILED_PROOFS, TOKEN_HISTORY_MS, TokenBook, type CheckResult, type TokenRecord } from '../../src/group/tokens.js'
import { hashSecret, hex, newGroupId, newSecret } from '../../src/group/token.js'

const root = mkdtempSync(join(tmpdir(), 'el-tokens-'))
afterAll(() => { rmSync(root, { recursive: true, force: true }) })

const opened: Store[] = []
afterEach(async () => {
  await Promise.all(opened.splice(0).map(async s => { await s.close() }))
})

const GROUP = hex(newGroupId())
const OTHER_GROUP = hex(newGroupId())
const T0 = Date.parse('2026-01-01T00:00:00Z')
const TTL = 2 * 60 * 1000
const HOUR = 60 * 60 * 1000

/** A token book over a real store in a fresh temp dir. */
async function freshBook (): Promise<{ book: TokenBook, store: Store, location: string }> {
  const location = join(mkdtempSync(join(root, 'store-')), 'store')
  const store = await Store.open({ location })
  opened.push(store)
  return { book: new TokenBook(store.sublevel<TokenRecord>('tokens')), store, location }
}

function wrongSecret (secret: Uint8Array): Uint8Array {
  const w = new Uint8Array(secret)
  w[0] ^= 0xff
  return w
}

function failure (r: CheckResult): Extract<CheckResult, { ok: false }> {
  expect(r.ok, 'expected the check to fail').toBe(false)
  return r as Extract<CheckResult, { ok: false }>
}

describe('TokenBook', () => {
  it('create stores an active token listed without its secret or the secret\'s hash', async () => {
    const { book } = await freshBook()
    const { record, secret, tokenId } = await book.create(GROUP, TTL, T0)
    expect(record).toMatchObject({ id: hex(tokenId), groupId: GROUP, createdAt: T0, expiresAt: T0 + TTL, state: 'active', failures: 0 })
    expect(secret).toHaveLength(16)
    expect(tokenId).toHaveLength(8)

    const list = await book.list(T0)
    expect(list).toEqual([{
      id: hex(tokenId),
      groupId: GROUP,
      createdAt: new Date(T0).toISOString(),
      expiresAt: new Date(T0 + TTL).toISOString(),
      state: 'active',
      failures: 0
    }])
    const json = JSON.stringify(list)
    expect(json).not.toContain(hex(secret))
    expect(json).not.toContain(hashSecret(secret))
    expect(json).not.toContain(Buffer.from(secret).toString('base64'))
    expect(json).not.toMatch(/secret/i)
  })

  it('stores only the hash of the secret, never the secret', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    const stored = await book.get(record.id)
    expect(stored?.secretHash).toBe(hashSecret(secret))
    expect(JSON.stringify(stored)).not.toContain(hex(secret))
  })

  it('issues distinct ids and secrets', async () => {
    const { book } = await freshBook()
    const a = await book.create(GROUP, TTL, T0)
    const b = await book.create(GROUP, TTL, T0 + 1)
    expect(a.record.id).not.toBe(b.record.id)
    expect(hex(a.secret)).not.toBe(hex(b.secret))
    expect((await book.list(T0 + 2)).map(v => v.id)).toEqual([a.record.id, b.record.id])
  })

  it('check with the right secret is ok and counts no failure', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    const r = await book.check(record.id, GROUP, secret, T0 + 1000)
    expect(r.ok).toBe(true)
    expect((await book.get(record.id))?.failures).toBe(0)
    expect((await book.get(record.id))?.state).toBe('active')
  })

  it(`wrong secrets count failures; the ${MAX_FAILED_PROOFS}th revokes the token, and then even the right secret is REVOKED`, async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    for (let i = 1; i < MAX_FAILED_PROOFS; i++) {
      const r = failure(await book.check(record.id, GROUP, wrongSecret(secret), T0 + i))
      expect(r.status).toBe('BAD_SECRET')
      expect(r.revokedNow).toBe(false)
      expect((await book.get(record.id))?.failures).toBe(i)
      expect((await book.get(record.id))?.state).toBe('active')
    }
    const fifth = failure(await book.check(record.id, GROUP, wrongSecret(secret), T0 + 10))
    expect(fifth.status).toBe('BAD_SECRET')
    expect(fifth.revokedNow).toBe(true)
    expect(fifth.message).toMatch(/revoked/)
    expect((await book.get(record.id))?.state).toBe('revoked')

    const sixth = failure(await book.check(record.id, GROUP, secret, T0 + 11))
    expect(sixth.status).toBe('REVOKED')
    expect(sixth.message).toContain(`${MAX_FAILED_PROOFS} failed proofs`)
    expect((await book.list(T0 + 12))[0]).toMatchObject({ state: 'revoked', failures: MAX_FAILED_PROOFS })
  })

  it('a right secret between wrong ones does not reset the failure count', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    for (let i = 0; i < MAX_FAILED_PROOFS - 1; i++) await book.check(record.id, GROUP, wrongSecret(secret), T0)
    expect((await book.check(record.id, GROUP, secret, T0)).ok).toBe(true)
    expect(failure(await book.check(record.id, GROUP, wrongSecret(secret), T0)).revokedNow).toBe(true)
  })

  it('failure counts survive reopening the store', async () => {
    const { book, store, location } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    await book.check(record.id, GROUP, wrongSecret(secret), T0)
    await book.check(record.id, GROUP, wrongSecret(secret), T0)
    await store.close()
    const again = await Store.open({ location })
    opened.push(again)
    const reopened = new TokenBook(again.sublevel<TokenRecord>('tokens'))
    expect((await reopened.get(record.id))?.failures).toBe(2)
  })

  it('markUsed makes the token USED (single use), and records who used it', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    await book.markUsed(record.id, 'peer-a')
    const r = failure(await book.check(record.id, GROUP, secret, T0 + 1))
    expect(r.status).toBe('USED')
    expect((await book.list(T0 + 1))[0]).toMatchObject({ state: 'used', usedBy: 'peer-a' })
  })

  it('a reserved token whose join did not complete is revoked, with the reason, and never active again', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    await book.markUsed(record.id, 'peer-a')
    await book.revoke(record.id, 'a join with it was offered and did not complete')
    expect(failure(await book.check(record.id, GROUP, secret, T0 + 1)).message).toBe('this token was revoked (a join with it was offered and did not complete); ask the leader for a new token')
    await book.confirm(record.id)
    expect((await book.list(T0 + 1))[0]).toMatchObject({ state: 'revoked' })
  })

  it('markUsed of an unknown id changes nothing', async () => {
    const { book } = await freshBook()
    await book.markUsed('0000000000000000', 'peer-a')
    expect(await book.list(T0)).toEqual([])
  })

  it('an expired token is EXPIRED from its expiry instant on, even with the right secret', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    expect((await book.check(record.id, GROUP, secret, T0 + TTL - 1)).ok).toBe(true)
    const r = failure(await book.check(record.id, GROUP, secret, T0 + TTL))
    expect(r.status).toBe('EXPIRED')
    expect(r.message).toContain(new Date(T0 + TTL).toISOString())
  })

  it('a wrong secret on an expired token is EXPIRED and counts no failure', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    expect(failure(await book.check(record.id, GROUP, wrongSecret(secret), T0 + TTL + 1)).status).toBe('EXPIRED')
    expect((await book.get(record.id))?.failures).toBe(0)
  })

  it('an unknown id is UNKNOWN_TOKEN', async () => {
    const { book } = await freshBook()
    await book.create(GROUP, TTL, T0)
    expect(failure(await book.check('0123456789abcdef', GROUP, newSecret(), T0)).status).toBe('UNKNOWN_TOKEN')
  })

  it('a token checked for another group is WRONG_GROUP and counts no failure', async () => {
    const { book } = await freshBook()
    const { record, secret } = await book.create(GROUP, TTL, T0)
    expect(failure(await book.check(record.id, OTHER_GROUP, secret, T0)).status).toBe('WRONG_GROUP')
    expect(failure(await book.check(record.id, OTHER_GROUP, wrongSecret(secret), T0)).status).toBe('WRONG_GROUP')
    expect((await book.get(record.id))?.failures).toBe(0)
  })

  it('revoke of an unknown id is undefined', async () => {
    const { book } = await freshBook()
    expect(await book.revoke('0123456789abcdef', 'operator')).toBeUndefined()
  })

  it('revoke marks an active token revoked with its reason; revoking a used token changes nothing', async () => {
    const { book } = await freshBook()
    const a = await book.create(GROUP, TTL, T0)
    const b = await book.create(GROUP, TTL, T0)
    expect(await book.revoke(a.record.id, 'by operator')).toMatchObject({ state: 'revoked', revokedReason: 'by operator' })
    expect(failure(await book.check(a.record.id, GROUP, a.secret, T0 + 1)).status).toBe('REVOKED')

    await book.markUsed(b.record.id, 'peer-b')
    await book.confirm(b.record.id)
    expect(await book.revoke(b.record.id, 'late')).toMatchObject({ state: 'used', usedBy: 'peer-b' })
    expect((await book.get(b.record.id))?.revokedReason).toBeUndefined()
  })

  it('a token reserved by a join still being offered can be revoked, and then is not confirmed', async () => {
    const { book } = await freshBook()
    const a = await book.create(GROUP, TTL, T0)
    await book.markUsed(a.record.id, 'peer-a')
    expect(await book.stillReserved(a.record.id, 'peer-a')).toBe(true)
    expect(await book.stillReserved(a.record.id, 'peer-x')).toBe(false)
    expect(await book.revoke(a.record.id, 'leaked')).toMatchObject({ state: 'revoked', revokedReason: 'leaked' })
    expect(await book.stillReserved(a.record.id, 'peer-a')).toBe(false)
    // The join that reserved it ends: a confirm does not bring the token back.
    await book.confirm(a.record.id)
    expect(failure(await book.check(a.record.id, GROUP, a.secret, T0 + 1)).status).toBe('REVOKED')
  })

  it('revokeAll revokes every active token and counts them', async () => {
    const { book } = await freshBook()
    const a = await book.create(GROUP, TTL, T0)
    const b = await book.create(GROUP, TTL, T0 + 1)
    const c = await book.create(GROUP, TTL, T0 + 2)
    await book.markUsed(c.record.id, 'peer-c')
    await book.confirm(c.record.id)
    expect(await book.revokeAll('group dissolved')).toBe(2)
    for (const t of [a, b]) {
      const r = failure(await book.check(t.record.id, GROUP, t.secret, T0 + 3))
      expect(r.status).toBe('REVOKED')
      expect(r.message).toContain('group dissolved')
    }
    expect((await book.get(c.record.id))?.state).toBe('used')
    expect(await book.revokeAll('again')).toBe(0)
  })

  it('list shows an active token past its expiry as expired', async () => {
    const { book } = await freshBook()
    const { record } = await book.create(GROUP, TTL, T0)
    expect((await book.list(T0 + TTL - 1))[0].state).toBe('active')
    expect((await book.list(T0 + TTL))[0].state).toBe('expired')
    // The stored record itself is unchanged.
    expect((await book.get(record.id))?.state).toBe('active')
  })

  it('list keeps used and revoked states past expiry', async () => {
    const { book } = await freshBook()
    const a = await book.create(GROUP, TTL, T0)
    const b = await book.create(GROUP, TTL, T0 + 1)
    await book.markUsed(a.record.id, 'peer-a')
    await book.revoke(b.record.id, 'operator')
    expect((await book.list(T0 + TTL + HOUR)).map(v => v.state)).toEqual(['used', 'revoked'])
  })

  it('finished tokens (used, revoked, expired) are pruned 24 h after their expiry, on the next create', async () => {
    const { book } = await freshBook()
    const used = await book.create(GROUP, TTL, T0)
    const revoked = await book.create(GROUP, TTL, T0)
    const expired = await book.create(GROUP, TTL, T0)
    await book.markUsed(used.record.id, 'peer-a')
    await book.revoke(revoked.record.id, 'operator')
    const finished = [used, revoked, expired].map(t => t.record.id)

    // Exactly 24 h after expiry: still listed.
    const keep = await book.create(GROUP, TTL, T0 + TTL + TOKEN_HISTORY_MS)
    expect((await book.list(keep.record.createdAt)).map(v => v.id).sort()).toEqual([...finished, keep.record.id].sort())

    // 1 ms later: the three finished tokens are gone; the fresh ones stay.
    const later = await book.create(GROUP, TTL, T0 + TTL + TOKEN_HISTORY_MS + 1)
    expect((await book.list(later.record.createdAt)).map(v => v.id)).toEqual([keep.record.id, later.record.id])
    for (const id of finished) expect(await book.get(id)).toBeUndefined()
    expect(failure(await book.check(expired.record.id, GROUP, expired.secret, later.record.createdAt)).status).toBe('UNKNOWN_TOKEN')
  })

  it('an active token that has not expired is never pruned, however old', async () => {
    const { book } = await freshBook()
    const long = await book.create(GROUP, 72 * HOUR, T0)
    await book.create(GROUP, TTL, T0 + 48 * HOUR)
    expect(await book.get(long.record.id)).toMatchObject({ state: 'active' })
    expect((await book.check(long.record.id, GROUP, long.secret, T0 + 48 * HOUR)).ok).toBe(true)
  })
})
