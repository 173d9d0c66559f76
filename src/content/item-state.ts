/**
 * What `content ls` shows for one item on one host: its state, chunks held and percent.
 * This host's comes from its own store and fetches (ContentService); another member's
 * from the progress it reports in its status. Pure functions.
 */
import type { ContentProgressView } from '../status/records.js'
import type { CatalogItemView } from './catalog.js'

/** Per-host state of one item, as `content ls` shows it. */
export type ItemState = 'complete' | 'syncing' | 'queued' | 'error'

export interface HostItemState {
  peerId: string
  hostname: string
  state: ItemState
  have: number
  total: number
  percent: number
  error?: string
}

export interface ContentItemView extends CatalogItemView {
  hosts: HostItemState[]
  complete: number
}

const STATES: readonly string[] = ['complete', 'syncing', 'queued', 'error']

/** A state as this host knows it (`local`), as a row. */
export function hostRow (peerId: string, hostname: string, local: { state: ItemState, have: number, total: number, error?: string }): HostItemState {
  return { peerId, hostname, state: local.state, have: local.have, total: local.total, percent: pct(local.have, local.total), ...(local.error != null ? { error: local.error } : {}) }
}

/** Another member's state, from the progress it reported (queued if it reported none for this item). */
export function reportedRow (peerId: string, hostname: string, item: CatalogItemView, p: ContentProgressView | undefined): HostItemState {
  if (p == null) return { peerId, hostname, state: 'queued', have: 0, total: Math.ceil(item.size / item.chunkSize), percent: 0 }
  const state = (STATES.includes(p.state) ? p.state : 'queued') as ItemState
  return hostRow(peerId, hostname, { state, have: p.have, total: p.total, ...(p.error !== '' ? { error: p.error } : {}) })
}

function pct (have: number, total: number): number {
  return total === 0 ? 100 : Math.floor(have * 100 / total)
}
