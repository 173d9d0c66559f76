import { EdgelinkError } from '../errors.js'

/** A token that cannot be used: `code` says which way it is wrong. */
export class TokenError extends EdgelinkError {
  static override name = 'TokenError'
  constructor (message: string, code: string, status = 400) { super(message, code, status) }
}

/** The join was refused or could not complete; `code` mirrors the leader's JoinStatus. */
export class JoinError extends EdgelinkError {
  static override name = 'JoinError'
  constructor (message: string, code: string, status = 400) { super(message, code, status) }
}

/** A roster change could not reach a majority of members. */
export class NoQuorumError extends EdgelinkError {
  static override name = 'NoQuorumError'
  readonly reachable: number
  readonly total: number
  constructor (reachable: number, total: number, detail = '') {
    super(`no quorum (${reachable} of ${total} reachable)${detail}; bring members back online, or use --force to remove unreachable members (unsafe: see the README)`, 'NO_QUORUM', 503)
    this.reachable = reachable
    this.total = total
  }
}

/** The operation needs a role or state this host does not have. */
export class GroupStateError extends EdgelinkError {
  static override name = 'GroupStateError'
  constructor (message: string, code: string, status = 409) { super(message, code, status) }
}

/** A roster record failed verification. */
export class RosterError extends EdgelinkError {
  static override name = 'RosterError'
  constructor (message: string, code = 'ROSTER_INVALID') { super(message, code, 400) }
}
