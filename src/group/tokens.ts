/**
 * The leader's token book. A token is stored by id with only a hash of its secret;
 * proofs are compared in constant time; 5 failed proofs revoke it; it is used once.
 */
import type { Sublevel } from '../store/index.js'
import { hashSecret, hex, newSecret, newTokenId, secretMatches } from './token.js'

/** Failed proofs after which a token is revoked: enough for typos, too few to guess 128 bits. */
export const MAX_FAILED_PROOFS = 5
/** Finished tokens (used, revoked, expired) stay listed this long, then are pruned. */
export const TOKEN_HISTORY_MS = 24 * 60 * 60 * 1000

export type TokenState = 'active' | 'used' | 'revoked' | 'expired'

export interface TokenRecord {
  id: string
  groupId: string
  secretHash: string
  createdAt: number
  expiresAt: number
  state: 'active' | 'used' | 'revoked'
  failures: number
  usedBy?: string
  /** `used` by a join that has been offered and not yet committed (see markUsed). */
  reserved?: boolean
  revokedReason?: string
}

/** A token as listed to operators: never the secret or its hash. */
export interface TokenView {
  id: string
  groupId: string
  createdAt: string
  expiresAt: string
  state: TokenState
  failures: number
  usedBy?: string
  revokedReason?: string
}

export type CheckResult =
  | { ok: true, record: TokenRecord }
  | { ok: false, status: 'UNKNOWN_TOKEN' | 'EXPIRED' | 'USED' | 'REVOKED' | 'BAD_SECRET' | 'WRONG_GROUP', message: string, revokedNow?: boolean, record?: TokenRecord }

export class TokenBook {
  private readonly db: Sublevel<TokenRecord>

  constructor (db: Sublevel<TokenRecord>) {
    this.db = db
  }

  async create (groupId: string, ttlMs: number, now = Date.now()): Promise<{ record: TokenRecord, secret: Uint8Array, tokenId: Uint8Array }> {
    await this.prune(now)
    const tokenId = newTokenId()
    const secret = newSecret()
    const record: TokenRecord = {
      id: hex(tokenId), groupId, secretHash: hashSecret(secret), createdAt: now, expiresAt: now + ttlMs, state: 'active', failures: 0
    }
    await this.db.put(record.id, record)
    return { record, secret, tokenId }
  }

  async get (id: string): Promise<TokenRecord | undefined> {
    return await this.db.get(id)
  }

  async list (now = Date.now()): Promise<TokenView[]> {
    const out: TokenView[] = []
    for await (const [, r] of this.db.iterator()) out.push(view(r, now))
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  /** Check a proof. A wrong secret counts a failure and revokes the token at the limit. */
  async check (id: string, groupId: string, secret: Uint8Array, now = Date.now()): Promise<CheckResult> {
    const r = await this.db.get(id)
    if (r == null) return { ok: false, status: 'UNKNOWN_TOKEN', message: 'the leader does not know this token (it was never issued here, or was pruned); ask the leader for a new token' }
    if (r.groupId !== groupId) return { ok: false, status: 'WRONG_GROUP', message: 'this token belongs to another group; ask this group\'s leader for a token' }
    if (r.state === 'revoked') return { ok: false, status: 'REVOKED', message: `this token was revoked${r.revokedReason != null ? ` (${r.revokedReason})` : ''}; ask the leader for a new token` }
    if (r.state === 'used') return { ok: false, status: 'USED', message: 'this token was already used (tokens are single-use); ask the leader for a new token' }
    if (now >= r.expiresAt) return { ok: false, status: 'EXPIRED', message: `this token expired at ${new Date(r.expiresAt).toISOString()}; ask the leader for a new token` }
    if (!secretMatches(secret, r.secretHash)) {
      r.failures++
      let revokedNow = false
      if (r.failures >= MAX_FAILED_PROOFS) {
        r.state = 'revoked'
        r.revokedReason = `${MAX_FAILED_PROOFS} failed proofs`
        revokedNow = true
      }
      await this.db.put(r.id, r)
      return {
        ok: false,
        status: 'BAD_SECRET',
        message: revokedNow
          ? `the token's secret is wrong; after ${MAX_FAILED_PROOFS} failed proofs the token is now revoked: ask the leader for a new token`
          : 'the token\'s secret is wrong (the token was altered or mistyped); copy it again from the leader',
        revokedNow,
        record: r
      }
    }
    return { ok: true, record: r }
  }

  /**
   * Reserve a token for the join being offered: `used`, so no second join can take it,
   * until confirm() (committed) or revoke() (the join did not complete: the offer showed
   * the group key, so the token is not put back). A token revoked meanwhile stays
   * revoked, and the join is not committed (see stillReserved).
   */
  async markUsed (id: string, by: string): Promise<void> {
    const r = await this.db.get(id)
    if (r == null) return
    await this.db.put(id, { ...r, state: 'used', usedBy: by, reserved: true })
  }

  /** The token is still reserved for a join by `by` (not revoked since the offer). */
  async stillReserved (id: string, by: string): Promise<boolean> {
    const r = await this.db.get(id)
    return r?.state === 'used' && r.reserved === true && r.usedBy === by
  }

  /** The join it was reserved for is committed: used for good. */
  async confirm (id: string): Promise<void> {
    const r = await this.db.get(id)
    if (r == null || r.state !== 'used' || r.reserved !== true) return
    const { reserved: _reserved, ...rest } = r
    await this.db.put(id, rest)
  }

  /**
   * Revoke one token; undefined if it does not exist. A token reserved by a join still
   * being offered is revoked too (that join is then not committed); revoking a token used
   * by a committed join, or already revoked, changes nothing.
   */
  async revoke (id: string, reason: string): Promise<TokenRecord | undefined> {
    const r = await this.db.get(id)
    if (r == null) return undefined
    if (revocable(r)) {
      const { reserved: _reserved, ...rest } = r
      const next: TokenRecord = { ...rest, state: 'revoked', revokedReason: reason }
      await this.db.put(id, next)
      return next
    }
    return r
  }

  async revokeAll (reason: string): Promise<number> {
    let n = 0
    for await (const [id, r] of this.db.iterator()) {
      if (revocable(r)) {
        const { reserved: _reserved, ...rest } = r
        await this.db.put(id, { ...rest, state: 'revoked', revokedReason: reason })
        n++
      }
    }
    return n
  }

  private async prune (now: number): Promise<void> {
    const old: string[] = []
    for await (const [id, r] of this.db.iterator()) {
      const finished = r.state !== 'active' || now >= r.expiresAt
      if (finished && now - Math.max(r.expiresAt, r.createdAt) > TOKEN_HISTORY_MS) old.push(id)
    }
    if (old.length > 0) await this.db.batch(old.map(key => ({ type: 'del' as const, key })))
  }
}

export function view (r: TokenRecord, now = Date.now()): TokenView {
  const state: TokenState = r.state === 'active' && now >= r.expiresAt ? 'expired' : r.state
  return {
    id: r.id,
    groupId: r.groupId,
    createdAt: new Date(r.createdAt).toISOString(),
    expiresAt: new Date(r.expiresAt).toISOString(),
    state,
    failures: r.failures,
    ...(r.usedBy != null ? { usedBy: r.usedBy } : {}),
    ...(r.revokedReason != null ? { revokedReason: r.revokedReason } : {})
  }
}

/** Active, or reserved by a join not yet committed. */
function revocable (r: TokenRecord): boolean {
  return r.state === 'active' || (r.state === 'used' && r.reserved === true)
}
