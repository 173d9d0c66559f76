/**
 * What an operator may call content and how it may be labelled. Shared by the agent
 * (which enforces it) and the CLI (which checks before streaming gigabytes at an agent
 * that would refuse them, and whose answer could then be lost to EPIPE).
 */
import { hasUnprintable } from '../util/printable.js'

export const CONTENT_KINDS = ['agent-image', 'provider-image', 'cluster-definition', 'file'] as const
export type ContentKind = typeof CONTENT_KINDS[number]

/** Why `name` is not a valid content name, or undefined if it is. */
export function contentNameProblem (name: string): string | undefined {
  if (name.length === 0 || name.length > 255 || /[\0/\\]/.test(name)) return 'name must be 1-255 characters without slashes'
  // Names are printed in tables on every host (see util/printable.ts).
  if (hasUnprintable(name)) return 'name must not contain control or invisible formatting characters'
  if (name.trim() === '') return 'name must not be blank'
  return undefined
}
