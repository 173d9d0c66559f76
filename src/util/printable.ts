/**
 * Characters that must not reach a terminal as they are: controls (line breaks, escape
 * sequences), invisible format characters (a right-to-left override can disguise
 * "gnp.exe"), line and paragraph separators, and lone surrogates.
 */
const UNPRINTABLE = '[\\p{Cc}\\p{Cf}\\p{Zl}\\p{Zp}\\p{Cs}]'

/** `s` holds a character of UNPRINTABLE. */
export function hasUnprintable (s: string): boolean {
  return new RegExp(UNPRINTABLE, 'u').test(s)
}

/** `s` with every character of UNPRINTABLE written as a \u escape. */
export function printable (s: string): string {
  return s.replace(new RegExp(UNPRINTABLE, 'gu'), c => `\\u${c.codePointAt(0)?.toString(16).padStart(4, '0') ?? ''}`)
}
