import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'node:http'
import fc from 'fast-check'
import { TopicValidatorResult, type Message } from '@libp2p/gossipsub'
import { randomBytes } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { AgentSet, tempDir } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'
import { topicFor } from '../../src/status/gossip.js'
import { openMessage, sealMessage } from '../../src/status/envelope.js'
import { GroupMessageType } from '../../src/wire/group.js'
import { peerBytes, signSettings, signStatus, mapToLabels } from '../../src/status/records.js'
import { loadOrCreateIdentity } from '../../src/identity/index.js'
import type { LivenessState } from '../../src/status/liveness.js'
import { ALIVE_PROTOCOL, HEARTBEAT, MAX_BYTES_PER_INTERVAL } from '../../src/status/heartbeat.js'
import { waitFor } from '../helpers/wait.js'

/** Shortened timers (serf's testConfig idea): liveness in hundreds of ms, not seconds. */
const FAST = {
  group: { reconnectInterval: 200, antiEntropyInterval: 500, dialTimeout: 5000, rpcTimeout: 5000, joinTimeout: 5000 },
  status: { interval: 1000, probeInterval: 150, suspectAfter: 500, downAfter: 1000, antiEntropyInterval: 500 }
}

async function until (fn: () => boolean | Promise<boolean>, timeout = 10_000): Promise<void> {
  await waitFor(fn, { timeout, interval: 20 })
}

function labelsOf (viewer: Agent, target: Agent): Record<string, string> | undefined {
  try { return viewer.hostState.statusOf(target.peerId).labels } catch { return undefined }
}

async function linkAll (leader: Agent, ...followers: Agent[]): Promise<void> {
  for (const f of followers) await f.group.link((await leader.group.createToken()).token)
  const n = followers.length + 1
  await until(() => [leader, ...followers].every(a => a.group.hosts().length === n))
}

/** Change this agent's labels the way a restart with a new config would, and publish. */
async function relabel (a: Agent, labels: Record<string, string>): Promise<void> {
  a.config.labels = labels
  await a.hostState.publish(true)
}

describe('group gossip: status, liveness, key rotation', () => {
  const set = new AgentSet()
  let leader: Agent
  let f1: Agent
  let f2: Agent

  beforeEach(async () => {
    leader = await set.start({ name: 'lead', config: FAST })
    f1 = await set.start({ name: 'f1', config: FAST })
    f2 = await set.start({ name: 'f2', config: FAST })
    await linkAll(leader, f1, f2)
  })
  afterEach(async () => { await set.stopAll() })

  it('a status change on one host is seen by the others', async () => {
    await until(() => labelsOf(leader, f1) != null && labelsOf(f2, f1) != null)
    await relabel(f1, { rack: 'r7' })
    await until(() => labelsOf(leader, f1)?.rack === 'r7' && labelsOf(f2, f1)?.rack === 'r7', 3000)
    const s = f2.hostState.statusOf('f1')
    expect(s).toMatchObject({ hostname: 'f1', role: 'follower', health: expect.any(String), liveness: 'alive' })
    expect(s.cpus).toBeGreaterThan(0)
    expect(s.disk.total).toBeGreaterThan(0)
    expect(leader.hostState.counters.accepted).toBeGreaterThan(0)
  })

  it('a host whose clock was set back numbers its status on from the newest one a member holds: members do not take its statuses for replays', async () => {
    // f1's record from "before a restart", numbered an hour ahead of f1's clock now.
    const ahead = (BigInt(Date.now()) + 3_600_000n) * 1000n
    const key = (await loadOrCreateIdentity(f1.paths.identityKey)).privateKey
    const old = await signStatus({ ...statusWire(f1.peerId), seq: ahead, hostname: 'f1', labels: mapToLabels({ from: 'before' }) }, key)
    const accept = (leader.hostState as unknown as { acceptStatus: (b: Uint8Array, via: string, how: string) => Promise<boolean> }).acceptStatus.bind(leader.hostState)
    expect(await accept(old.bytes, 'test', 'pull')).toBe(true)
    expect(labelsOf(leader, f1)).toEqual({ from: 'before' })
    // Before the fix f1 numbered from its clock, an hour below, and every member refused it.
    await relabel(f1, { rack: 'r9' })
    await until(() => labelsOf(leader, f1)?.rack === 'r9' && labelsOf(f2, f1)?.rack === 'r9', 8000)
    expect(BigInt(leader.hostState.statusOf('f1').seq)).toBeGreaterThan(ahead)
  })

  it('a stopped host becomes suspect then down everywhere, and alive again when it returns', async () => {
    const seen = { lead: new Set<LivenessState>(), f2: new Set<LivenessState>() }
    const watch = setInterval(() => {
      seen.lead.add(leader.hostState.memberLiveness(f1Id).liveness)
      seen.f2.add(f2.hostState.memberLiveness(f1Id).liveness)
    }, 20)
    const f1Id = f1.peerId
    const dir = f1.paths.root
    try {
      await f1.stop()
      set.agents.splice(set.agents.indexOf(f1), 1)
      await until(() => leader.hostState.memberLiveness(f1Id).liveness === 'down' && f2.hostState.memberLiveness(f1Id).liveness === 'down', 5000)
      expect([...seen.lead]).toContain('suspect')
      expect(leader.hostsTable().find(h => h.peerId === f1Id)?.liveness).toBe('down')
      const events = readFileSync(leader.paths.auditLog, 'utf8').split('\n').filter(l => l.includes('liveness.changed'))
      expect(events.some(l => l.includes('"to":"down"'))).toBe(true)
      await set.start({ name: 'f1', dataDir: dir, config: FAST })
      await until(() => leader.hostState.memberLiveness(f1Id).liveness === 'alive' && f2.hostState.memberLiveness(f1Id).liveness === 'alive', 10_000)
    } finally {
      clearInterval(watch)
    }
  })

  it('GET /api/v1/events streams accepted statuses and liveness changes as NDJSON, and ends when the agent stops', async () => {
    const lines: Array<Record<string, unknown>> = []
    let buf = ''
    let ended = false
    const req = request({ socketPath: leader.paths.apiSocket, path: '/api/v1/events' }, (res) => {
      expect(res.statusCode).toBe(200)
      expect(res.headers['content-type']).toBe('application/x-ndjson')
      res.setEncoding('utf8')
      res.on('data', (d: string) => {
        buf += d
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) { lines.push(JSON.parse(buf.slice(0, i))); buf = buf.slice(i + 1) }
      })
      res.on('end', () => { ended = true })
    })
    req.end()
    await until(() => lines.some(l => l.type === 'hello'))
    expect(lines[0]).toMatchObject({ type: 'hello', peerId: leader.peerId })
    await relabel(f1, { watched: 'yes' })
    await until(() => lines.some(l => l.type === 'status' && l.peer === f1.peerId && l.via === 'gossip'))
    const ev = lines.find(l => l.type === 'status' && l.peer === f1.peerId) as Record<string, string>
    expect(ev).toMatchObject({ hostname: 'f1', seq: expect.any(String), settings: { version: expect.any(Number), state: expect.any(String) } })
    expect(Date.parse(ev.receivedAt)).toBeGreaterThanOrEqual(Date.parse(ev.statusAt))
    const f2Id = f2.peerId
    // Only what follows the stop: with liveness in hundreds of ms, a loaded machine can
    // make f2 flap (suspect, alive) before it, and a "down" then must not end the wait.
    const from = lines.length
    await f2.stop()
    set.agents.splice(set.agents.indexOf(f2), 1)
    const changes = (): unknown[] => lines.slice(from).filter(l => l.type === 'liveness' && l.peer === f2Id).map(l => l.to)
    await until(() => changes().includes('down'), 5000)
    // Through suspect, unless f2 was suspect already when it stopped.
    expect(changes()).toEqual(lines.slice(0, from).filter(l => l.type === 'liveness' && l.peer === f2Id).at(-1)?.to === 'suspect' ? ['down'] : ['suspect', 'down'])
    await leader.stop()
    set.agents.splice(set.agents.indexOf(leader), 1)
    await until(() => ended, 5000)
  })

  it('a member that missed messages while stopped pulls the newest statuses when it returns', async () => {
    await until(() => labelsOf(f2, f1) != null)
    const dir = f2.paths.root
    await f2.stop()
    set.agents.splice(set.agents.indexOf(f2), 1)
    await relabel(f1, { zone: 'north' })
    await until(() => labelsOf(leader, f1)?.zone === 'north')
    const back = await set.start({ name: 'f2', dataDir: dir, config: FAST })
    await until(() => labelsOf(back, f1)?.zone === 'north', 10_000)
  })

  it('an unlinked host can neither read nor inject group messages', async () => {
    const old = f2.group.membership
    if (old == null) throw new Error('f2 not linked')
    const groupId = old.record.roster.groupId
    const topic = topicFor(groupId)
    const f2Id = f2.peerId
    // f2 plays a removed host that keeps its old key and acts on its own: its agent's status
    // service is stopped first, so no status it published in the moment before it learned of
    // the unlink (rejected: it costs gossipsub score) keeps the leader from sending to it.
    await f2.hostState.stop()
    await leader.group.unlink('f2')
    await until(() => f2.group.membership === undefined && leader.group.membership?.key.id === old.key.id + 1)

    // A removed host that keeps its old key and listens on the topic anyway.
    const got: Message[] = []
    const onMsg = (evt: CustomEvent<Message>): void => { if (evt.detail.topic === topic) got.push(evt.detail) }
    f2.node.services.pubsub.addEventListener('message', onMsg)
    f2.node.services.pubsub.topicValidators.delete(topic)
    f2.node.services.pubsub.subscribe(topic)
    await until(() => leader.node.services.pubsub.getSubscribers(topic).some(p => p.toString() === f2Id))
    await until(async () => { await relabel(leader, { n: String(Date.now()) }); return got.length > 0 }, 10_000)
    for (const m of got) {
      expect(openMessage(m.data, old.key, Buffer.from(groupId, 'hex'), m.type === 'signed' ? m.from.toMultihash().bytes : new Uint8Array()).ok).toBe(false)
    }

    // And what it publishes, sealed with the key it still has, is rejected.
    const before = leader.hostState.counters.rejected['not-member']
    const identity = await loadOrCreateIdentity(f2.paths.identityKey)
    const status = await signStatus({ ...statusWire(f2Id), labels: mapToLabels({ injected: 'yes' }) }, identity.privateKey)
    const env = sealMessage({ type: GroupMessageType.STATUS, record: status.bytes as Uint8Array<ArrayBuffer> }, old.key, Buffer.from(groupId, 'hex'), f2.node.peerId.toMultihash().bytes)
    await until(async () => {
      await f2.node.services.pubsub.publish(topic, env).catch(() => undefined)
      return leader.hostState.counters.rejected['not-member'] > before
    }, 10_000)
    expect(() => leader.hostState.statusOf(f2Id)).toThrow()
    f2.node.services.pubsub.removeEventListener('message', onMsg)
  })

  it('a message from a host our roster does not list yet, sealed with a key newer than ours and relayed by a member, is ignored (no penalty) rather than rejected', async () => {
    // We missed a rotation and the join after it: the member that relays it accepted it.
    const m = leader.group.membership
    if (m == null) throw new Error('not linked')
    const topic = topicFor(m.record.roster.groupId)
    const validate = leader.node.services.pubsub.topicValidators.get(topic)
    if (validate == null) throw new Error('no validator')
    const newcomer = await generateKeyPair('Ed25519')
    const newcomerId = peerIdFromPrivateKey(newcomer)
    const env = sealMessage({ type: GroupMessageType.STATUS, record: new Uint8Array(8) }, { id: m.key.id + 1, key: randomBytes(32) }, Buffer.from(m.record.roster.groupId, 'hex'), newcomerId.toMultihash().bytes)
    const msg = { type: 'signed', from: newcomerId, data: env, topic, sequenceNumber: 1n, signature: new Uint8Array(64), key: newcomer.publicKey } as unknown as Message
    const counters = leader.hostState.counters
    const [ignored, rejected] = [counters.ignored['unknown-key'], counters.rejected['not-member']]
    expect(await validate(peerIdFromString(f1.peerId), msg)).toBe(TopicValidatorResult.Ignore)
    expect([counters.ignored['unknown-key'], counters.rejected['not-member']]).toEqual([ignored + 1, rejected])
    // Sent by the newcomer itself, or relayed by a host that is not a member either: anyone
    // can write a larger key id, so that is rejected as before.
    expect(await validate(newcomerId, msg)).toBe(TopicValidatorResult.Reject)
    expect([counters.ignored['unknown-key'], counters.rejected['not-member']]).toEqual([ignored + 1, rejected + 1])
    // And a message sealed with our key id by a non-member is still forged, whoever relays it.
    const forged = sealMessage({ type: GroupMessageType.STATUS, record: new Uint8Array(8) }, { id: m.key.id, key: randomBytes(32) }, Buffer.from(m.record.roster.groupId, 'hex'), newcomerId.toMultihash().bytes)
    expect(await validate(peerIdFromString(f1.peerId), { ...msg, data: forged } as unknown as Message)).toBe(TopicValidatorResult.Reject)
    expect(counters.rejected['not-member']).toBe(rejected + 2)
  })

  it('a non-member on the LAN that subscribes reads nothing and its messages are rejected', async () => {
    const outsider = await set.start({ name: 'outsider', config: FAST })
    const groupId = leader.hostStatus().groupId ?? ''
    const topic = topicFor(groupId)
    await outsider.dial(leader.node.getMultiaddrs()[0].toString())
    const got: Message[] = []
    outsider.node.services.pubsub.addEventListener('message', (evt) => { if (evt.detail.topic === topic) got.push(evt.detail) })
    outsider.node.services.pubsub.subscribe(topic)
    await until(() => leader.node.services.pubsub.getSubscribers(topic).some(p => p.toString() === outsider.peerId))
    await until(async () => { await relabel(leader, { n: String(Date.now()) }); return got.length > 0 }, 10_000)
    // It has no key at all: a guessed key of the right id opens nothing.
    for (const m of got) expect(openMessage(m.data, { id: 1, key: new Uint8Array(32) }, Buffer.from(groupId, 'hex'), new Uint8Array()).ok).toBe(false)
    const before = leader.hostState.counters.rejected['not-member']
    await until(async () => {
      await outsider.node.services.pubsub.publish(topic, new Uint8Array([1, 2, 3])).catch(() => undefined)
      return leader.hostState.counters.rejected['not-member'] > before
    }, 10_000)
    // Rejected messages cost the sender: its gossipsub score on the leader drops below zero
    // (scores are cached for a heartbeat, so poll).
    const pubsub = leader.node.services.pubsub as unknown as { getScore: (p: string) => number }
    await until(() => pubsub.getScore(outsider.peerId) < 0, 5000)
    expect(leader.status).toBe('running')
  })

  it('malformed, forged and replayed envelopes from a member are refused and change nothing', async () => {
    await until(() => labelsOf(leader, f1) != null)
    const m = f1.group.membership
    if (m == null) throw new Error('f1 not linked')
    const groupId = Buffer.from(m.record.roster.groupId, 'hex')
    const topic = topicFor(m.record.roster.groupId)
    const sender = f1.node.peerId.toMultihash().bytes
    const seqBefore = leader.hostState.statusOf('f1').seq
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 2000 }), async (junk) => {
      await f1.node.services.pubsub.publish(topic, junk).catch(() => undefined)
    }), { numRuns: 30 })
    // A sealed message whose record is an old (replayed) status of f1.
    const identity = await loadOrCreateIdentity(f1.paths.identityKey)
    const stale = await signStatus({ ...statusWire(f1.peerId), seq: 1n, labels: mapToLabels({ replayed: 'yes' }) }, identity.privateKey)
    await f1.node.services.pubsub.publish(topic, sealMessage({ type: GroupMessageType.STATUS, record: stale.bytes as Uint8Array<ArrayBuffer> }, m.key, groupId, sender)).catch(() => undefined)
    // An oversized one.
    await f1.node.services.pubsub.publish(topic, new Uint8Array(FAST_MAX + 1)).catch(() => undefined)
    // Messages from one sender are handled in order: once the oversized one (sent last) is
    // rejected, the replay has been seen and must not have replaced the newer status.
    await until(() => leader.hostState.counters.rejected.oversized > 0)
    await until(() => leader.hostState.counters.rejected.malformed + leader.hostState.counters.rejected.forged > 0)
    expect(labelsOf(leader, f1)?.replayed).toBeUndefined()
    await relabel(f1, { after: 'fuzz' })
    await until(() => labelsOf(leader, f1)?.after === 'fuzz')
    expect(labelsOf(leader, f1)?.replayed).toBeUndefined()
    expect(BigInt(leader.hostState.statusOf('f1').seq)).toBeGreaterThan(BigInt(seqBefore))
    expect(leader.status).toBe('running')
  })
})

const FAST_MAX = 64 * 1024

function statusWire (peer: string): Parameters<typeof signStatus>[0] {
  return {
    peerId: peerBytes(peer), seq: BigInt(Date.now()) * 1000n + 999n, at: BigInt(Date.now()), hostname: 'x', addresses: [], agentVersion: '0',
    uptimeMs: 0n, platform: 'linux', osRelease: '', kernel: '', arch: '', cpus: 1, load1: 0, load5: 0, load15: 0,
    memTotal: 0n, memFree: 0n, diskTotal: 0n, diskFree: 0n, role: 'follower', health: 'ok', healthDetail: '', labels: [],
    settings: { version: 0n, term: 0n, state: 'none', message: '', at: 0n },
    content: []
  }
}

/**
 * Liveness comes from heartbeats on `/edgelink/alive/1.0.0`, not from the connection:
 * status and anti-entropy are slowed to a minute here so heartbeats are the only thing
 * that keeps a member alive.
 */
describe('liveness heartbeats', () => {
  const QUIET = { ...FAST, status: { ...FAST.status, interval: 60_000, antiEntropyInterval: 60_000 } }
  const set = new AgentSet()
  let leader: Agent
  let f1: Agent
  let outsider: Agent

  beforeEach(async () => {
    leader = await set.start({ name: 'lead', config: QUIET })
    f1 = await set.start({ name: 'f1', config: QUIET })
    outsider = await set.start({ name: 'outsider', config: QUIET })
    await linkAll(leader, f1)
    await until(() => leader.hostState.heartbeats.outbound.includes(f1.peerId) && f1.hostState.heartbeats.outbound.includes(leader.peerId))
  })
  afterEach(async () => { await set.stopAll() })

  /** Open a heartbeat stream from `from` to `to`, send `bytes`, resolve true once `to` resets it. */
  async function sendAndAwaitReset (from: Agent, to: Agent, bytes: Uint8Array): Promise<boolean> {
    const stream = await from.node.dialProtocol(to.node.getMultiaddrs(), ALIVE_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    const closed = new Promise<boolean>(resolve => { stream.addEventListener('close', () => { resolve(true) }) })
    stream.addEventListener('message', () => {})
    try {
      if (bytes.length > 0) stream.send(bytes)
    } catch {
      return stream.status !== 'open' // already reset by the other side before we wrote
    }
    const reset = await Promise.race([closed, new Promise<boolean>(resolve => setTimeout(() => { resolve(false) }, 5000))])
    if (stream.status === 'open') stream.abort(new Error('done'))
    return reset
  }

  it('a member whose heartbeats stop is down while still connected, and alive as soon as they resume', async () => {
    await f1.hostState.heartbeats.stop()
    await until(() => leader.hostState.memberLiveness(f1.peerId).liveness === 'down', 5000)
    expect(leader.node.getConnections(f1.node.peerId).length).toBeGreaterThan(0)
    await f1.hostState.heartbeats.start()
    await until(() => leader.hostState.memberLiveness(f1.peerId).liveness === 'alive', 5000)
  })

  it('a heartbeat stream that carries no echo is replaced by a new one', async () => {
    // f1 turns into a black hole: it accepts heartbeat streams and reads them, never echoing.
    await f1.node.unhandle(ALIVE_PROTOCOL)
    let accepted = 0
    await f1.node.handle(ALIVE_PROTOCOL, (stream) => { accepted++; stream.addEventListener('message', () => {}) })
    for (const c of leader.node.getConnections(f1.node.peerId)) for (const s of c.streams) if (s.protocol === ALIVE_PROTOCOL) s.abort(new Error('test'))
    await until(() => accepted >= 1, 5000)
    // No echo for STALE_BEATS intervals: the leader gives up on the stream and opens another.
    await until(() => accepted >= 2, 5000)
    expect(leader.status).toBe('running')
  })

  it('a non-member\'s heartbeat stream is reset and does not make it a member', async () => {
    await outsider.dial(leader.node.getMultiaddrs()[0].toString())
    expect(await sendAndAwaitReset(outsider, leader, new Uint8Array([HEARTBEAT]))).toBe(true)
    expect(leader.hostsTable().some(h => h.peerId === outsider.peerId)).toBe(false)
    expect(leader.status).toBe('running')
  })

  it('garbage and floods on a member\'s heartbeat stream reset it; the agent keeps running and the member stays alive', async () => {
    const garbage = fc.uint8Array({ minLength: 1, maxLength: 300 }).filter(b => b.some(x => x !== HEARTBEAT))
    await fc.assert(fc.asyncProperty(garbage, async (junk) => {
      expect(await sendAndAwaitReset(f1, leader, junk)).toBe(true)
    }), { numRuns: 25 })
    expect(await sendAndAwaitReset(f1, leader, new Uint8Array(MAX_BYTES_PER_INTERVAL + 1).fill(HEARTBEAT))).toBe(true)
    expect(leader.status).toBe('running')
    expect(leader.hostState.memberLiveness(f1.peerId).liveness).toBe('alive')
  })

  it('an unlinked host\'s heartbeats are refused', async () => {
    await leader.group.unlink('f1')
    await until(() => f1.group.membership === undefined)
    expect(await sendAndAwaitReset(f1, leader, new Uint8Array([HEARTBEAT]))).toBe(true)
    expect(leader.hostState.heartbeats.outbound).not.toContain(f1.peerId)
  })
})

describe('host settings through a hook', () => {
  const set = new AgentSet()
  let dir: string
  let leader: Agent
  let f1: Agent
  let f2: Agent

  function hook (name: string, body: string): string {
    const p = join(dir, name)
    writeFileSync(p, `#!/bin/sh\n${body}\n`)
    chmodSync(p, 0o755)
    return p
  }

  beforeEach(async () => {
    dir = tempDir('el-hooks-')
    const record = hook('record.sh', `cat > "$(dirname "$0")/applied-$EDGELINK_SETTINGS_VERSION.json"`)
    leader = await set.start({ name: 'lead', config: FAST })
    f1 = await set.start({ name: 'f1', config: { ...FAST, settings: { hook: record, hookTimeout: 5000 } } })
    f2 = await set.start({ name: 'f2', config: { ...FAST, settings: { hook: hook('hang.sh', 'sleep 30'), hookTimeout: 300 } } })
    await linkAll(leader, f1, f2)
  })
  afterEach(async () => { await set.stopAll() })

  it('the leader sets settings; the target runs its hook with them as JSON and reports applied', async () => {
    const r = await leader.settings.set('f1', { ntp: '10.0.0.1', tz: 'UTC' })
    expect(r.version).toBe(1)
    await until(() => leader.settings.show('f1').state.state === 'applied')
    const input = JSON.parse(readFileSync(join(dir, 'applied-1.json'), 'utf8')) as Record<string, unknown>
    expect(input).toMatchObject({ version: 1, settings: { ntp: '10.0.0.1', tz: 'UTC' }, issuer: leader.peerId, hostname: 'f1' })
    expect(f1.settings.show().state).toMatchObject({ version: 1, state: 'applied' })
    expect(f2.settings.show('f1').settings).toEqual({ ntp: '10.0.0.1', tz: 'UTC' })
  })

  it('a change applied at once reaches members as one status (its result); a slow hook is reported pending while it runs', async () => {
    const seen: Array<{ version: number, state: string }> = []
    const off = leader.hostState.events.on(e => { if (e.type === 'status' && e.peer === f1.peerId) seen.push(e.settings) })
    const hookCfg = f1.config.settings.hook
    try {
      f1.config.settings.hook = null
      const quick = await leader.settings.set('f1', { mode: 'quick' })
      await until(() => seen.some(s => s.version === quick.version && s.state === 'applied'))
      expect(seen.filter(s => s.version === quick.version).map(s => s.state)).toEqual(['applied'])

      const release = join(dir, 'release')
      f1.config.settings.hook = hook('gate.sh', `while [ ! -e "${release}" ]; do sleep 0.02; done`)
      const slow = await leader.settings.set('f1', { mode: 'slow' })
      await until(() => leader.settings.show('f1').state.version === slow.version && leader.settings.show('f1').state.state === 'pending')
      writeFileSync(release, '')
      await until(() => leader.settings.show('f1').state.state === 'applied' && leader.settings.show('f1').state.version === slow.version)
      expect(seen.filter(s => s.version === slow.version).map(s => s.state)).toEqual(['pending', 'applied'])
    } finally {
      off()
      f1.config.settings.hook = hookCfg
    }
  })

  it('a hook that hangs gives failed with a message, and the agent keeps running', async () => {
    await leader.settings.set('f2', { a: '1' })
    await until(() => f2.settings.show().state.state === 'failed')
    expect(f2.settings.show().state.message).toMatch(/timed out/)
    await until(() => leader.settings.show('f2').state.state === 'failed')
    expect(f2.status).toBe('running')
  })

  it('only the leader may set settings, and a target refuses a change a follower signed', async () => {
    await expect(f1.settings.set('f2', { a: '1' })).rejects.toMatchObject({ code: 'NOT_LEADER' })
    const r = f1.group.roster
    if (r == null) throw new Error('not linked')
    const identity = await loadOrCreateIdentity(f1.paths.identityKey)
    const forged = await signSettings({
      groupId: Buffer.from(r.groupId, 'hex') as Uint8Array<ArrayBuffer>, target: peerBytes(f2.peerId), version: 99n, settings: mapToLabels({ evil: '1' }),
      issuedAt: BigInt(Date.now()), issuer: peerBytes(f1.peerId), term: BigInt(r.term)
    }, identity.privateKey)
    expect(await f2.settings.receive(forged.bytes, f1.peerId)).toBe('refused')
    expect(f2.settings.show().version).toBe(0)
    expect(readFileSync(f2.paths.auditLog, 'utf8')).toContain('settings.refused')
  })

  it('two changes with the same version from different terms: every member ends on the later term\'s, and the target applies it', async () => {
    // The old leader's change for f1 reached f1 only; after a handover the new leader, not
    // holding it, issues the same version in its term. Versions alone left f1 on the old one.
    const groupId = Buffer.from(leader.group.roster?.groupId ?? '', 'hex') as Uint8Array<ArrayBuffer>
    const change = (issuer: string, term: number, v: string): Parameters<typeof signSettings>[0] => ({
      groupId, target: peerBytes(f1.peerId), version: 1n, settings: mapToLabels({ v }), issuedAt: BigInt(Date.now()), issuer: peerBytes(issuer), term: BigInt(term)
    })
    await leader.group.relinquish('f2')
    await until(() => [leader, f1, f2].every(a => a.group.roster?.term === 2))
    const old = await signSettings(change(leader.peerId, 1, 'old'), (await loadOrCreateIdentity(leader.paths.identityKey)).privateKey)
    const next = await signSettings(change(f2.peerId, 2, 'new'), (await loadOrCreateIdentity(f2.paths.identityKey)).privateKey)
    expect(await f1.settings.receive(old.bytes, leader.peerId)).toBe('stored')
    await until(() => f1.settings.show().state.state === 'applied')
    expect(f1.settings.show().state).toMatchObject({ version: 1, term: 1 })
    expect(await f1.settings.receive(next.bytes, f2.peerId)).toBe('stored')
    await until(() => f1.settings.show().state.term === 2 && f1.settings.show().state.state === 'applied')
    expect(JSON.parse(readFileSync(join(dir, 'applied-1.json'), 'utf8'))).toMatchObject({ settings: { v: 'new' } })
    // The earlier term's change, arriving after, is stale everywhere; all members agree.
    expect(await f1.settings.receive(old.bytes, leader.peerId)).toBe('stale')
    expect(await f2.settings.receive(next.bytes, f2.peerId)).not.toBe('refused')
    expect(await f2.settings.receive(old.bytes, leader.peerId)).toBe('stale')
    await until(() => [leader, f1, f2].every(a => a.settings.show('f1').settings.v === 'new'))
    await until(() => f2.settings.show('f1').state.state === 'applied' && f2.settings.show('f1').state.term === 2)
  })

  it('a hook still running when the agent stops is ended with it, and the change is applied at the next start', async () => {
    const pidFile = join(dir, 'slow.pid')
    f1.config.settings.hook = hook('slow.sh', `echo $$ > "${pidFile}"; exec sleep 30`)
    await leader.settings.set('f1', { slow: '1' })
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '')
    const pid = Number(readFileSync(pidFile, 'utf8'))
    expect(f1.settings.show().state.state).toBe('pending')
    const dataDir = f1.paths.root
    await f1.stop()
    set.agents.splice(set.agents.indexOf(f1), 1)
    // Before the fix the hook (its own process group) outlived the agent.
    const alive = (): boolean => { try { process.kill(pid, 0); return true } catch { return false } }
    await until(() => !alive(), 3000)
    const back = await set.start({ name: 'f1', dataDir, config: { ...FAST, settings: { hook: hook('quick.sh', 'cat > /dev/null'), hookTimeout: 5000 } } })
    await until(() => back.settings.show().state.state === 'applied' && back.settings.show().state.version === 1)
  })

  it('settings survive restarts, and a target that was down applies the newest when it returns', async () => {
    await leader.settings.set('f1', { v: 'one' })
    await until(() => f1.settings.show().state.state === 'applied')
    const dataDir = f1.paths.root
    const cfg = f1.config
    await f1.stop()
    set.agents.splice(set.agents.indexOf(f1), 1)
    await leader.settings.set('f1', { v: 'two' })
    await leader.settings.set('f1', { v: 'three' })
    const back = await set.start({ name: 'f1', dataDir, config: { ...FAST, settings: cfg.settings } })
    await until(() => back.settings.show().state.version === 3 && back.settings.show().state.state === 'applied', 10_000)
    expect(back.settings.show().settings).toEqual({ v: 'three' })
    expect(JSON.parse(readFileSync(join(dir, 'applied-3.json'), 'utf8'))).toMatchObject({ settings: { v: 'three' } })
  })
})
