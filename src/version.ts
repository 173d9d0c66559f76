import { readFileSync } from 'node:fs'

/**
 * Set by the bundler (scripts/build.mjs, esbuild `define`) to package.json's version.
 * Undefined when src/ runs as is (vitest, tsx): then package.json is read next to src/.
 */
declare const __EDGELINK_VERSION__: string | undefined

/** The agent version: injected at build time, else read once from package.json. */
export const AGENT_VERSION: string = typeof __EDGELINK_VERSION__ === 'string'
  ? __EDGELINK_VERSION__
  : (() => {
      try {
        const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string }
        return pkg.version ?? '0.0.0'
      } catch {
        return '0.0.0'
      }
    })()

/** libp2p user agent, so identify tells other agents what we are. */
export const USER_AGENT = `edgelink/${AGENT_VERSION}`
