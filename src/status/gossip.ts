/**
 * Wire layer of the group topic (see protocols/group.md): one gossipsub topic per
 * group, sealed envelopes, and a topic validator that accepts only what a current
 * member sent, within size and rate limits, sealed with the current key. Decoded
 * messages go to the logic through `onMessage`; this class makes no decisions about
 * what a message means.
 */
import { TopicValidatorResult, type Message } from '@libp2p/gossipsub'
import { createTopicScoreParams } from '@libp2p/gossipsub/score'
import type { PeerId } from '@libp2p/interface'
import type { Logger } from '../agent/logger.js'
import type { EdgelinkNode } from '../net/node.js'
import { errorMessage } from '../errors.js'
import type { GroupMessage } from '../wire/group.js'
import { openMessage, sealMessage, type GroupKeyRef } from './envelope.js'
import { monotonicMs } from '../util/clock.js'

export function topicFor (groupId: string): string {
  return `/edgelink/group/${groupId}/1`
}

/** What the gossip layer needs to know about the group; undefined when idle. */
export interface GossipGroup {
  groupId: string
  key: GroupKeyRef
  isMember: (peer: string) => boolean
}

export interface GossipLimits {
  /** Largest envelope accepted, in bytes. */
  maxMessageBytes: number
  /** Sustained messages per second accepted from one origin. */
  ratePerSecond: number
  /** Burst above the sustained rate. */
  rateBurst: number
}

export type RejectReason = 'unsigned' | 'oversized' | 'not-member' | 'rate' | 'malformed' | 'version' | 'forged'
export type IgnoreReason = 'unknown-key' | 'old-key' | 'idle' | 'unknown-member'

export interface GossipCounters {
  accepted: number
  published: number
  rejected: Record<RejectReason, number>
  ignored: Record<IgnoreReason, number>
}

interface Bucket { tokens: number, at: number }

export class GroupGossip {
  private readonly node: EdgelinkNode
  private readonly log: Logger
  private readonly limits: GossipLimits
  private readonly onMessage: (from: string, msg: GroupMessage) => void
  private readonly onKeyBehind: (from: string) => void
  private readonly onRosterBehind: (from: string) => void
  private group?: GossipGroup
  private topic?: string
  private readonly buckets = new Map<string, Bucket>()
  /** Messages opened by the validator, so the delivery handler does not decrypt twice. */
  private readonly opened = new WeakMap<Message, GroupMessage>()
  private listener?: (evt: CustomEvent<Message>) => void
  readonly counters: GossipCounters = {
    accepted: 0,
    published: 0,
    rejected: { unsigned: 0, oversized: 0, 'not-member': 0, rate: 0, malformed: 0, version: 0, forged: 0 },
    ignored: { 'unknown-key': 0, 'old-key': 0, idle: 0, 'unknown-member': 0 }
  }

  constructor (node: EdgelinkNode, log: Logger, limits: GossipLimits, onMessage: (from: string, msg: GroupMessage) => void, onKeyBehind: (from: string) => void, onRosterBehind: (from: string) => void) {
    this.node = node
    this.log = log
    this.limits = limits
    this.onMessage = onMessage
    this.onKeyBehind = onKeyBehind
    this.onRosterBehind = onRosterBehind
  }

  start (): void {
    if (this.listener != null) return
    this.listener = (evt) => { this.deliver(evt.detail) }
    this.node.services.pubsub.addEventListener('message', this.listener)
  }

  stop (): void {
    this.setGroup(undefined)
    if (this.listener != null) this.node.services.pubsub.removeEventListener('message', this.listener)
    this.listener = undefined
  }

  /** Follow membership: subscribe to the group's topic, or leave it when idle. */
  setGroup (group: GossipGroup | undefined): void {
    const pubsub = this.node.services.pubsub
    const topic = group == null ? undefined : topicFor(group.groupId)
    this.group = group
    if (topic === this.topic) return
    if (this.topic != null) {
      pubsub.unsubscribe(this.topic)
      pubsub.topicValidators.delete(this.topic)
      delete scoreParams(pubsub).topics[this.topic]
    }
    this.topic = topic
    if (topic == null) return
    // Invalid messages cost the sender's score: one rejected message puts a non-member
    // below the graylist threshold (-80), and the penalty decays within a minute.
    scoreParams(pubsub).topics[topic] = createTopicScoreParams({
      topicWeight: 1,
      timeInMeshWeight: 0,
      firstMessageDeliveriesWeight: 0,
      meshMessageDeliveriesWeight: 0,
      meshFailurePenaltyWeight: 0,
      invalidMessageDeliveriesWeight: -100,
      invalidMessageDeliveriesDecay: 0.9
    })
    pubsub.topicValidators.set(topic, (peer, msg) => this.validate(peer, msg))
    pubsub.subscribe(topic)
  }

  async publish (msg: GroupMessage): Promise<void> {
    const g = this.group
    if (g == null || this.topic == null) return
    const data = sealMessage(msg, g.key, Buffer.from(g.groupId, 'hex'), this.node.peerId.toMultihash().bytes)
    await this.node.services.pubsub.publish(this.topic, data)
    this.counters.published++
  }

  /** PeerIds subscribed to the group topic that we are connected to. */
  subscribers (): string[] {
    return this.topic == null ? [] : this.node.services.pubsub.getSubscribers(this.topic).map(String)
  }

  private validate (relay: PeerId, msg: Message): TopicValidatorResult {
    const g = this.group
    if (g == null) return this.ignore('idle')
    if (msg.type !== 'signed') return this.reject('unsigned', 'unknown')
    const from = msg.from.toString()
    if (msg.data.length > this.limits.maxMessageBytes) return this.reject('oversized', from)
    const opened = openMessage(msg.data, g.key, Buffer.from(g.groupId, 'hex'), msg.from.toMultihash().bytes)
    if (!g.isMember(from)) {
      // Only members are given the group key. A sender that seals with the current key
      // but is not in our roster joined a moment ago and our roster is behind: ignore the
      // message (no penalty) and fetch the newer roster. Anyone else is not a member.
      if (opened.ok) {
        this.onRosterBehind(from)
        return this.ignore('unknown-member')
      }
      // Sealed with a newer key by a host we do not know, and relayed by a member, which
      // accepted it: we missed a rotation and a join after it. Rejecting it would cost
      // that member its score with us; ignore it and take the roster (with the key) from
      // the member. Anyone can write a larger key id, so without a member relaying it,
      // it is refused as before.
      const via = relay.toString()
      if (opened.reason === 'unknown-key' && via !== from && g.isMember(via)) {
        this.onKeyBehind(via)
        return this.ignore('unknown-key')
      }
      return this.reject('not-member', from)
    }
    if (!this.takeToken(from)) return this.reject('rate', from)
    if (!opened.ok) {
      if (opened.reason === 'unknown-key') {
        // A member sealed with a newer key than ours: we missed a rotation. Ask for it.
        this.onKeyBehind(from)
        return this.ignore('unknown-key')
      }
      if (opened.reason === 'old-key') return this.ignore('old-key')
      return this.reject(opened.reason, from)
    }
    this.opened.set(msg, opened.message)
    this.counters.accepted++
    return TopicValidatorResult.Accept
  }

  private deliver (msg: Message): void {
    if (msg.topic !== this.topic || msg.type !== 'signed') return
    const m = this.opened.get(msg)
    if (m == null) return
    try {
      this.onMessage(msg.from.toString(), m)
    } catch (err) {
      this.log.error({ from: msg.from.toString(), err: errorMessage(err) }, 'group message handler failed')
    }
  }

  /** Token bucket per origin. */
  private takeToken (from: string): boolean {
    const now = monotonicMs()
    const b = this.buckets.get(from) ?? { tokens: this.limits.rateBurst, at: now }
    b.tokens = Math.min(this.limits.rateBurst, b.tokens + (now - b.at) / 1000 * this.limits.ratePerSecond)
    b.at = now
    if (b.tokens < 1) { this.buckets.set(from, b); return false }
    b.tokens -= 1
    this.buckets.set(from, b)
    return true
  }

  private reject (reason: RejectReason, from: string): TopicValidatorResult {
    this.counters.rejected[reason]++
    this.log.debug({ from, reason }, 'group message rejected')
    return TopicValidatorResult.Reject
  }

  private ignore (reason: IgnoreReason): TopicValidatorResult {
    this.counters.ignored[reason]++
    return TopicValidatorResult.Ignore
  }
}

interface WithScore { score: { params: { topics: Record<string, unknown> } } }

function scoreParams (pubsub: unknown): { topics: Record<string, unknown> } {
  return (pubsub as WithScore).score.params
}
