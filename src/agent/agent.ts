/**
 * The composition root: one Agent per host owns every service (identity, store,
 * libp2p node, peer table, local API, debug REPL) and their lifecycle. The HTTP API,
 * the CLI and the REPL are thin clients of this object.
 */
import '../polyfill.js'
import { existsSync, rmSync, writeFileSync } from 'node:fs'
import { arch, cpus, loadavg, platform, release } from 'node:os'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { AgentConfig } from './config.js'
import { prepareDataDir, type DataDirPaths } from './datadir.js'
import { createLogger, type Logger } from './logger.js'
import { loadOrCreateIdentity } from '../identity/index.js'
import { Store } from '../store/index.js'
import { createNode, type EdgelinkNode } from '../net/node.js'
import { PeerTable, type PeerEntry } from '../net/peers.js'
import { ApiServer } from '../api/server.js'
import { AuditLog } from '../audit/index.js'
import { GroupService, type HostRow } from '../group/service.js'
import { StatusService, type MemberLiveness } from '../status/service.js'
import { SettingsService } from '../settings/service.js'
import { ContentService } from '../content/service.js'
import type { FetchOptions } from '../content/fetcher.js'
import { ReplServer } from '../repl/server.js'
import { AGENT_VERSION } from '../version.js'
import { EdgelinkError, errorMessage, IdentityError } from '../errors.js'
import { Mutex } from '../util/mutex.js'

export interface AgentInit {
  /** Absolute path of the data dir. */
  dataDir: string
  config: AgentConfig
  /** Logger to use; by default JSON lines on stdout at `config.logLevel`. */
  logger?: Logger
  /** Content fetch tuning (tests shorten timeouts). */
  contentTuning?: Partial<FetchOptions>
  /** Free space of the blob store's file system (tests simulate a full disk). */
  contentFreeSpace?: () => Promise<number>
}

/** This host as the API reports it. Group fields are null until the host is linked. */
export interface HostStatus {
  peerId: string
  hostname: string
  addresses: string[]
  agentVersion: string
  uptimeMs: number
  startedAt: string
  os: { platform: string, release: string, arch: string }
  cpus: number
  load: number[]
  groupId: string | null
  role: 'leader' | 'follower' | null
  leader: string | null
  term: number | null
  rosterVersion: number | null
}

interface Running {
  status: 'running'
  store: Store
  node: EdgelinkNode
  peers: PeerTable
  group: GroupService
  hostStatus: StatusService
  settings: SettingsService
  content: ContentService
  api: ApiServer
  repl: ReplServer
  startedAt: number
}

type AgentState =
  | { status: 'stopped' }
  | { status: 'starting' }
  | Running
  | { status: 'stopping' }

export class Agent {
  readonly config: AgentConfig
  readonly paths: DataDirPaths
  readonly log: Logger
  private readonly contentTuning?: Partial<FetchOptions>
  private readonly contentFreeSpace?: () => Promise<number>
  private state: AgentState = { status: 'stopped' }
  private readonly lifecycle = new Mutex()

  constructor (init: AgentInit) {
    this.config = init.config
    this.paths = prepareDataDir(init.dataDir).paths
    this.log = init.logger ?? createLogger({ level: init.config.logLevel, name: init.config.hostname })
    this.contentTuning = init.contentTuning
    this.contentFreeSpace = init.contentFreeSpace
  }

  get status (): AgentState['status'] {
    return this.state.status
  }

  /** The libp2p node; throws if the agent is not running. */
  get node (): EdgelinkNode { return this.running().node }
  get store (): Store { return this.running().store }
  get peerId (): string { return this.running().node.peerId.toString() }
  get group (): GroupService { return this.running().group }
  get hostState (): StatusService { return this.running().hostStatus }
  get settings (): SettingsService { return this.running().settings }
  get content (): ContentService { return this.running().content }

  /** The linked hosts table with each member's liveness and health. */
  hostsTable (): Array<HostRow & MemberLiveness & { content: { complete: number, total: number } }> {
    const r = this.running()
    return r.group.hosts().map(h => {
      const l = r.hostStatus.memberLiveness(h.peerId)
      return { ...h, ...l, content: r.content.summary(h.peerId), lastSeen: h.self ? h.lastSeen : (l.lastHeard ?? h.lastSeen) }
    })
  }

  /**
   * Start every service. Fails (leaving nothing running) if another agent holds the
   * data dir, the identity key is unreadable, or a listen address is taken.
   * Starts and stops run one after another: a start called during a stop waits for
   * the stop, and a stop called during a start stops the agent once it has started.
   */
  async start (): Promise<void> {
    await this.lifecycle.run(async () => { await this.doStart() })
  }

  /** Stop every service: network first so no new work arrives, store last. Idempotent. */
  async stop (): Promise<void> {
    await this.lifecycle.run(async () => { await this.doStop() })
  }

  private async doStart (): Promise<void> {
    if (this.state.status === 'running') return
    this.state = { status: 'starting' }
    const started = Date.now()
    const undo: Array<() => Promise<void>> = []
    try {
      const { tightened } = prepareDataDir(this.paths.root)
      if (tightened) this.log.warn({ dataDir: this.paths.root }, 'data dir was readable by others; permissions tightened to 0700')
      const store = await Store.open({ location: this.paths.store, pidFile: this.paths.pidFile })
      undo.push(async () => { await store.close() })
      // We hold the store lock, so we own the data dir: the pid file and any sockets left here are ours or stale.
      writeFileSync(this.paths.pidFile, JSON.stringify({ pid: process.pid, startedAt: new Date(started).toISOString() }) + '\n', { mode: 0o600 })
      undo.push(async () => { rmSync(this.paths.pidFile, { force: true }) })

      const identity = await this.loadIdentity(store)
      if (identity.tightened) this.log.warn({ file: this.paths.identityKey }, 'identity key file was readable by others; permissions tightened to 0600')
      const node = await createNode(this.config, identity.privateKey)
      const peers = new PeerTable(node, (peer, err) => { this.log.debug({ peer, err: errorMessage(err) }, 'cannot dial discovered agent') })
      peers.start()
      await node.start()
      undo.push(async () => { peers.stop(); await node.stop() })
      const audit = new AuditLog(this.paths.auditLog, this.log.child({ component: 'agent:audit' }))
      const group = new GroupService({ node, store, privateKey: identity.privateKey, config: this.config, log: this.log.child({ component: 'agent:group' }), audit })
      await group.start()
      undo.push(async () => { await group.stop() })
      const status = new StatusService({ node, store, privateKey: identity.privateKey, config: this.config, log: this.log.child({ component: 'agent:status' }), audit, group, dataDir: this.paths.root })
      group.useLiveness((peer) => status.heardRecently(peer))
      const settings = new SettingsService({ store, privateKey: identity.privateKey, config: this.config, log: this.log.child({ component: 'agent:settings' }), audit, group, status }, node.peerId.toString())
      // Settings first: the first status this host publishes must carry its stored settings state.
      await settings.start()
      undo.push(async () => { await settings.stop() })
      await status.start()
      undo.push(async () => { await status.stop() })
      const content = new ContentService({ node, store, privateKey: identity.privateKey, config: this.config, log: this.log.child({ component: 'agent:content' }), audit, group, status, blobsDir: this.paths.blobs, fetch: this.contentTuning, freeSpace: this.contentFreeSpace })
      await content.start()
      undo.push(async () => { await content.stop() })

      const api = new ApiServer(this, this.paths.apiSocket, this.log.child({ component: 'agent:api' }))
      const repl = new ReplServer(this, this.paths.replSocket, this.log.child({ component: 'agent:repl' }))
      this.state = { status: 'running', store, node, peers, group, hostStatus: status, settings, content, api, repl, startedAt: started }
      await api.start()
      undo.push(async () => { await api.stop() })
      await repl.start()
      undo.push(async () => { await repl.stop() })
      if (this.config.ui != null) {
        // Accepted so that configs written for it do not fail; nothing listens yet.
        this.log.warn({ ui: this.config.ui }, 'the Local UI is not part of this version yet: nothing listens on the ui address; use the CLI')
      }

      this.log.info({
        peerId: node.peerId.toString(),
        hostname: this.config.hostname,
        addresses: node.getMultiaddrs().map(String),
        mdns: this.config.mdns.enabled,
        created: identity.created,
        startMs: Date.now() - started
      }, 'agent started')
      this.dialConfiguredPeers()
    } catch (err) {
      for (const fn of undo.reverse()) {
        await fn().catch(e => { this.log.error({ err: errorMessage(e) }, 'cleanup after failed start') })
      }
      this.state = { status: 'stopped' }
      throw err
    }
  }

  /**
   * The host key, checked against the PeerId this data dir's store was written by (kept in
   * `meta` from the first start). A lost key used to be replaced silently: the host came
   * back under a new PeerId with a roster that did not list it, unable to unlink or link.
   */
  private async loadIdentity (store: Store): Promise<Awaited<ReturnType<typeof loadOrCreateIdentity>>> {
    const meta = store.sublevel<string>('meta')
    const owner = await meta.get('peerId')
    const fresh = `remove ${this.paths.store} too, to start this host afresh (it must then be linked to its group again)`
    if (owner != null && !existsSync(this.paths.identityKey)) {
      throw new IdentityError(`identity key file ${this.paths.identityKey} is missing, but this data dir belongs to host ${owner}; restore the file from a backup, or ${fresh}`)
    }
    const identity = await loadOrCreateIdentity(this.paths.identityKey)
    const self = peerIdFromPrivateKey(identity.privateKey).toString()
    if (owner == null) await meta.put('peerId', self)
    else if (owner !== self) {
      throw new IdentityError(`identity key file ${this.paths.identityKey} is host ${self}'s, but this data dir belongs to host ${owner}; put that host's key back, or ${fresh}`)
    }
    return identity
  }

  private async doStop (): Promise<void> {
    if (this.state.status !== 'running') return
    const running = this.state
    this.state = { status: 'stopping' }
    const step = async (what: string, fn: () => Promise<void> | void): Promise<void> => {
      try { await fn() } catch (err) { this.log.error({ err: errorMessage(err) }, `error while stopping ${what}`) }
    }
    await step('repl', async () => { await running.repl.stop() })
    await step('api', async () => { await running.api.stop() })
    await step('content', async () => { await running.content.stop() })
    await step('settings', async () => { await running.settings.stop() })
    await step('status', async () => { await running.hostStatus.stop() })
    await step('group', async () => { await running.group.stop() })
    await step('peer table', () => { running.peers.stop() })
    await step('libp2p', async () => { await running.node.stop() })
    // The one step whose failure the caller must hear of: writes LevelDB had not flushed
    // may be lost, and a supervisor should see a failed exit, not a clean one.
    let storeError: unknown
    try { await running.store.close() } catch (err) { storeError = err }
    rmSync(this.paths.pidFile, { force: true })
    this.state = { status: 'stopped' }
    if (storeError != null) {
      this.log.error({ err: errorMessage(storeError) }, 'error while stopping store')
      throw new EdgelinkError(`the store did not close cleanly (${errorMessage(storeError)}); the last changes may not be on disk: check the agent's state after the next start`, 'STORE_CLOSE')
    }
    this.log.info('agent stopped')
  }

  hostStatus (): HostStatus {
    const r = this.running()
    return {
      peerId: r.node.peerId.toString(),
      hostname: this.config.hostname,
      addresses: r.node.getMultiaddrs().map(String),
      agentVersion: AGENT_VERSION,
      uptimeMs: Date.now() - r.startedAt,
      startedAt: new Date(r.startedAt).toISOString(),
      os: { platform: platform(), release: release(), arch: arch() },
      cpus: cpus().length,
      load: loadavg(),
      ...r.group.statusFields()
    }
  }

  peerList (): PeerEntry[] {
    return this.running().peers.list()
  }

  /** Dial a multiaddr (it must end in /p2p/<PeerId>); returns the remote PeerId. */
  async dial (address: string, signal?: AbortSignal): Promise<string> {
    const r = this.running()
    const ma = multiaddr(address)
    const conn = await r.node.dial(ma, { signal: signal ?? AbortSignal.timeout(10_000) })
    return conn.remotePeer.toString()
  }

  /** Round-trip time to a peer in milliseconds. */
  async ping (peer: string, signal?: AbortSignal): Promise<number> {
    const r = this.running()
    const target = peer.startsWith('/') ? multiaddr(peer) : peerIdFromString(peer)
    return await r.node.services.ping.ping(target, { signal: signal ?? AbortSignal.timeout(10_000) })
  }

  private dialConfiguredPeers (): void {
    const r = this.running()
    for (const address of this.config.peers) {
      const ma = multiaddr(address)
      const id = ma.getComponents().find(c => c.name === 'p2p')?.value
      if (id != null) r.peers.noteConfigured(peerIdFromString(id), address)
      r.node.dial(ma, { signal: AbortSignal.timeout(10_000) }).then(conn => {
        this.log.info({ peer: conn.remotePeer.toString(), address }, 'connected to configured peer')
      }, err => {
        this.log.warn({ address, err: errorMessage(err) }, 'cannot reach configured peer; will keep listening for it')
      })
    }
  }

  private running (): Running {
    if (this.state.status !== 'running') {
      throw new EdgelinkError(`the agent is ${this.state.status}`, 'AGENT_NOT_RUNNING', 503)
    }
    return this.state
  }
}
