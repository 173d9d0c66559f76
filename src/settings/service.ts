/**
 * Host settings (Palette's "change host settings"): the leader issues a signed,
 * versioned settings change for a host; every member keeps the newest change per
 * host (so any of them can hand it to a target that was down); the target checks that
 * the issuer led the group in the change's term, applies it through the configured
 * hook, persists the applied version and reports `pending`, `applied` or `failed` in
 * its status. See protocols/group.md.
 */
import type { PrivateKey } from '@libp2p/interface'
import type { AgentConfig } from '../agent/config.js'
import type { Logger } from '../agent/logger.js'
import type { AuditLog } from '../audit/index.js'
import type { Store, Sublevel } from '../store/index.js'
import type { GroupService } from '../group/service.js'
import type { StatusService, SettingsHooks } from '../status/service.js'
import { BadRequestError, errorMessage, NotFoundError } from '../errors.js'
import { GroupStateError } from '../group/errors.js'
import { Mutex } from '../util/mutex.js'
import { sameBytes, u8 } from '../util/bytes.js'
import { mapToLabels, MAX_SETTINGS, NO_SETTINGS_STATE, peerBytes, signSettings, verifySettings, type SettingsChangeView, type SettingsStateView, type Verified } from '../status/records.js'
import { runSettingsHook } from './hook.js'

const KEY_RE = /^[A-Za-z_][\w.-]{0,63}$/
const MAX_VALUE = 1024

export interface SettingsComponents {
  store: Store
  privateKey: PrivateKey
  config: AgentConfig
  log: Logger
  audit: AuditLog
  group: GroupService
  status: StatusService
}

/** `settings show` for one host. */
export interface SettingsView {
  peerId: string
  hostname: string
  version: number
  settings: Record<string, string>
  issuedAt: string | null
  issuer: string | null
  state: SettingsStateView
}

/** As stored by builds before the state carried a term. */
type StoredState = Omit<SettingsStateView, 'term'> & { term?: number }

/**
 * Whether change `a` (version, term) comes after `b`. Versions first; on an equal version
 * the later term wins. Within a term only its leader issues, one version at a time per host,
 * so no two different changes for a host share both: every member ends on the same one.
 * Versions alone did not: a leader's change that reached only some members before a
 * handover, and the new leader's next change for that host (issued without it, so with
 * the same version), were each kept by the members that had it first, for good.
 */
export function settingsAfter (a: { version: number, term: number }, b: { version: number, term: number } | undefined): boolean {
  if (b == null) return true
  return a.version > b.version || (a.version === b.version && a.term > b.term)
}

/** A hook still running after this long is reported `pending` to the group (see setState). */
export const PENDING_REPORT_AFTER_MS = 250

export class SettingsService implements SettingsHooks {
  private readonly c: SettingsComponents
  private readonly self: string
  private readonly db: Sublevel<string | StoredState>
  private readonly changes = new Map<string, Verified<SettingsChangeView>>()
  private own: SettingsStateView = NO_SETTINGS_STATE
  private readonly applyLock = new Mutex()
  private pendingReport?: NodeJS.Timeout
  /** Aborted at stop: a hook still running is ended (its process group), not left behind. */
  private readonly stopping = new AbortController()

  constructor (c: SettingsComponents, self: string) {
    this.c = c
    this.self = self
    this.db = c.store.sublevel<string | StoredState>('settings')
  }

  async start (): Promise<void> {
    let stored: StoredState | undefined
    for await (const [key, value] of this.db.iterator()) {
      if (key === 'state') { stored = value as StoredState; continue }
      try {
        const v = await verifySettings(Buffer.from(value as string, 'base64'))
        this.changes.set(v.view.target, v)
      } catch (err) {
        this.c.log.warn({ key, err: errorMessage(err) }, 'dropping a stored settings change that does not verify')
        await this.db.del(key)
      }
    }
    const mine = this.changes.get(this.self)
    if (stored != null) {
      // A state stored without a term (an earlier build) belongs to the change we hold if the version matches.
      const term = stored.term ?? (mine != null && mine.view.version === stored.version ? mine.view.term : 0)
      this.own = { ...stored, term }
    }
    this.c.status.attachSettings(this)
    // A change stored but not applied (the agent stopped mid-way, or it arrived while we were down).
    if (mine != null && (settingsAfter(mine.view, this.own) || this.own.state === 'pending')) this.applySoon(mine)
  }

  /**
   * End a hook that is still running (SIGTERM to its process group, SIGKILL after the
   * grace) and wait for it, so it does not outlive the agent and run again beside the
   * next start's. Its change stays `pending` in the store and is applied at the next start.
   */
  async stop (): Promise<void> {
    this.stopping.abort()
    clearTimeout(this.pendingReport)
    this.pendingReport = undefined
    await this.applyLock.run(async () => {})
  }

  // ---- operator ------------------------------------------------------------

  /** Issue a settings change for `host` (leader only). */
  async set (host: string, settings: Record<string, string>): Promise<SettingsView> {
    const entries = Object.entries(settings)
    if (entries.length === 0) throw new BadRequestError('give at least one KEY=VALUE', 'SETTINGS_EMPTY')
    if (entries.length > MAX_SETTINGS) throw new BadRequestError(`at most ${MAX_SETTINGS} settings at once`, 'SETTINGS_TOO_MANY')
    for (const [k, v] of entries) {
      if (!KEY_RE.test(k)) throw new BadRequestError(`setting name "${k.slice(0, 80)}" is not valid: use letters, digits, _ . - (starting with a letter or _), at most 64 characters`, 'SETTINGS_INVALID')
      if (typeof v !== 'string' || v.length > MAX_VALUE) throw new BadRequestError(`setting ${k} must be a string of at most ${MAX_VALUE} characters`, 'SETTINGS_INVALID')
    }
    const r = this.c.group.requireMembership().record.roster
    if (r.leader !== this.self) {
      throw new GroupStateError(`only the leader (${r.leader}) can change host settings; run this on the leader`, 'NOT_LEADER', 403)
    }
    const target = this.c.group.resolveHost(host)
    const version = (this.changes.get(target.peerId)?.view.version ?? 0) + 1
    const record = await signSettings({
      groupId: u8(Buffer.from(r.groupId, 'hex')),
      target: peerBytes(target.peerId),
      version: BigInt(version),
      settings: mapToLabels(settings),
      issuedAt: BigInt(Date.now()),
      issuer: peerBytes(this.self),
      term: BigInt(r.term)
    }, this.c.privateKey)
    await this.keep(record)
    this.c.audit.record('settings.issued', { target: target.peerId, hostname: target.hostname, version, keys: Object.keys(settings) })
    await this.c.status.publishSettings(record.bytes)
    if (target.peerId === this.self) this.applySoon(record)
    else await this.c.status.pushSettings(target.peerId, record.bytes)
    return this.show(target.peerId)
  }

  show (host?: string): SettingsView {
    const m = host == null ? undefined : this.c.group.resolveHost(host)
    const peer = m?.peerId ?? this.self
    const change = this.changes.get(peer)?.view
    let state: SettingsStateView
    if (peer === this.self) state = this.own
    else {
      try {
        state = this.c.status.statusOf(peer).settings
      } catch (err) {
        if (!(err instanceof NotFoundError)) throw err
        state = { version: 0, term: 0, state: change != null ? 'pending' : 'none', message: 'no status from this host yet', at: null }
      }
      // An earlier build reports no term (0): its version alone then says whether it has the change.
      const reported = state.term === 0 && change != null ? { version: state.version, term: change.term } : state
      if (change != null && settingsAfter(change, reported) && state.state !== 'pending') {
        state = { ...state, state: 'pending', message: `version ${change.version} not yet reported by the host` }
      }
    }
    return {
      peerId: peer,
      hostname: m?.hostname ?? this.c.config.hostname,
      version: change?.version ?? 0,
      settings: change?.settings ?? {},
      issuedAt: change?.issuedAt ?? null,
      issuer: change?.issuer ?? null,
      state
    }
  }

  // ---- SettingsHooks -----------------------------------------------------------

  state (): SettingsStateView { return this.own }

  records (): Uint8Array[] {
    return [...this.changes.entries()].filter(([p]) => p === this.self || this.c.group.isMemberPeer(p)).map(([, v]) => v.bytes)
  }

  /**
   * A change from the network. Kept only if it verifies, is for this group, was
   * issued by whoever led the group in its term, and is newer than what we hold.
   * The target applies it: a change from a non-leader is refused here, on the target,
   * whatever the sender checked.
   */
  async receive (bytes: Uint8Array, via: string): Promise<'stored' | 'stale' | 'refused'> {
    // An exact copy of a record we hold (pulls repeat them) needs no signature check.
    for (const held of this.changes.values()) if (sameBytes(held.bytes, bytes)) return 'stale'
    let v: Verified<SettingsChangeView>
    try {
      v = await verifySettings(bytes)
    } catch (err) {
      this.c.log.debug({ via, err: errorMessage(err) }, 'settings record refused')
      return 'refused'
    }
    const r = this.c.group.roster
    const c = v.view
    if (r == null || c.groupId !== r.groupId || c.term > r.term || (c.target !== this.self && !this.c.group.isMemberPeer(c.target))) return 'refused'
    const leader = await this.c.group.leaderOfTerm(c.term).catch(() => undefined)
    if (leader == null || leader !== c.issuer) {
      this.c.audit.record('settings.refused', { target: c.target, version: c.version, issuer: c.issuer, via, reason: 'issuer did not lead the group in that term' })
      return 'refused'
    }
    const held = this.changes.get(c.target)
    if (held != null && !settingsAfter(c, held.view)) return 'stale'
    await this.keep(v)
    if (c.target === this.self) this.applySoon(v)
    return 'stored'
  }

  // ---- applying -----------------------------------------------------------------

  private async keep (v: Verified<SettingsChangeView>): Promise<void> {
    this.changes.set(v.view.target, v)
    await this.db.put(`change/${v.view.target}`, Buffer.from(v.bytes).toString('base64'))
  }

  private applySoon (v: Verified<SettingsChangeView>): void {
    this.apply(v).catch(err => { this.c.log.error({ version: v.view.version, err: errorMessage(err) }, 'applying settings failed') })
  }

  /** Apply the newest change for this host, one at a time; an older one queued behind a newer is skipped. */
  private async apply (v: Verified<SettingsChangeView>): Promise<void> {
    await this.applyLock.run(async () => {
      if (this.stopping.signal.aborted) return
      const newest = this.changes.get(this.self)
      if (newest == null || newest.view.version !== v.view.version || newest.view.term !== v.view.term) return
      if (this.own.version === v.view.version && this.own.term === v.view.term && this.own.state !== 'pending') return
      const { version, term } = v.view
      await this.setState({ version, term, state: 'pending', message: 'applying', at: new Date().toISOString() })
      const hook = this.c.config.settings.hook
      let state: SettingsStateView
      if (hook == null) {
        state = { version, term, state: 'applied', message: 'stored; no settings hook is configured (settings.hook)', at: new Date().toISOString() }
      } else {
        const result = await runSettingsHook(hook, {
          version: v.view.version,
          settings: v.view.settings,
          issuedAt: v.view.issuedAt,
          issuer: v.view.issuer,
          hostname: this.c.config.hostname
        }, { timeoutMs: this.c.config.settings.hookTimeout, signal: this.stopping.signal })
        if (this.stopping.signal.aborted) {
          this.c.log.info({ version: v.view.version }, 'settings hook ended because the agent is stopping; the change is applied at the next start')
          return
        }
        state = { version, term, state: result.state, message: result.message, at: new Date().toISOString() }
        this.c.log.info({ version: v.view.version, state: result.state, exitCode: result.exitCode, durationMs: result.durationMs }, 'settings hook finished')
      }
      await this.setState(state)
      this.c.audit.record('settings.applied', { version: state.version, state: state.state, message: state.message })
    })
  }

  /**
   * Persist this host's settings state and report it. `pending` is reported only if the
   * hook is still running PENDING_REPORT_AFTER_MS later: most hooks (and applying with
   * none) finish sooner, and then members get one status message for the change (its
   * result) rather than two a few milliseconds apart. The local API shows `pending` at once.
   */
  private async setState (s: SettingsStateView): Promise<void> {
    this.own = s
    await this.db.put('state', s)
    clearTimeout(this.pendingReport)
    this.pendingReport = undefined
    if (s.state === 'pending') {
      this.pendingReport = setTimeout(() => {
        this.pendingReport = undefined
        void this.c.status.publish(true)
      }, PENDING_REPORT_AFTER_MS)
      this.pendingReport.unref()
      return
    }
    await this.c.status.publish(true)
  }
}
