import { readFileSync } from 'node:fs'

/** The agent version, read once from package.json (kept next to src/ and dist/). */
export const AGENT_VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string }
    return pkg.version ?? '0.0.0'
  } catch {
    return '0.0.0'
  }
})()

/** libp2p user agent, so identify tells other agents what we are. */
export const USER_AGENT = `edgelink/${AGENT_VERSION}`
