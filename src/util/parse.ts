/**
 * `schema.safeParse` for untrusted input (API bodies, config files) that never throws.
 *
 * zod 4.6 still runs a string's length checks (`.min`, `.max`) on a value that failed
 * the type check, if that value has a `length`; comparing an object `length` throws a
 * TypeError when the object cannot become a number, as `{"length": {"toString": ""}}`
 * (valid JSON or YAML) cannot. The API answered 500 and a config file crashed the
 * loader instead of saying which value is wrong. Such a value now gets an issue of its
 * own, at its path.
 */
import { z } from 'zod'

export function safeParse<T> (schema: z.ZodType<T>, value: unknown): z.ZodSafeParseResult<T> {
  const bad = unconvertibleLength(value, [], 0)
  if (bad != null) return failure(bad, LENGTH_MESSAGE, value)
  try {
    return schema.safeParse(value)
  } catch (err) {
    // Past what the walk below looks at (deeper, or after 100 000 values): no path, but no TypeError either.
    return failure([], `a value has the wrong type (${err instanceof Error ? err.message : String(err)})`, value)
  }
}

const LENGTH_MESSAGE = 'expected text, a number or a list, got a mapping with a "length" that is not a number'

function failure<T> (path: Array<string | number>, message: string, input: unknown): z.ZodSafeParseResult<T> {
  return { success: false, error: new z.ZodError([{ code: 'custom', path, message, input }]) as z.ZodError<T> }
}

/**
 * Path of the first mapping whose `length` throws when made a number. Only what JSON and
 * YAML make is walked (plain mappings and lists, 32 levels down, 100 000 values in all):
 * not a Buffer or a stream a route may get as its body.
 */
function unconvertibleLength (value: unknown, path: Array<string | number>, depth: number, budget = { left: 100_000 }): Array<string | number> | undefined {
  if (--budget.left < 0 || value == null || typeof value !== 'object' || depth > 32) return undefined
  const list = Array.isArray(value)
  if (!list) {
    const proto = Object.getPrototypeOf(value)
    if (proto !== Object.prototype && proto !== null) return undefined
    const length = (value as { length?: unknown }).length
    if (length != null && typeof length === 'object') {
      try {
        void Number(length)
      } catch {
        return path
      }
    }
  }
  for (const [key, v] of Object.entries(value)) {
    const found = unconvertibleLength(v, [...path, list ? Number(key) : key], depth + 1, budget)
    if (found != null) return found
  }
  return undefined
}
