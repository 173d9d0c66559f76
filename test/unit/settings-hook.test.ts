import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { waitFor } from '../helpers/wait.js'
import { afterAll, describe, expect, it } from 'vitest'
import { DEFAULT_MAX_OUTPUT_BYTES, MAX_MESSAGE_CHARS, runSettingsHook, type HookInput } from '../../src/settings/hook.js'

const dir = mkdtempSync(join(tmpdir(), 'el-hook-'))
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

const input: HookInput = {
  version: 7,
  settings: { 'ntp.server': '10.0.0.1', motd: 'line one\nline "two" ünïcode' },
  issuedAt: '2025-01-02T03:04:05.000Z',
  issuer: '12D3KooWExampleIssuer',
  hostname: 'edge-7'
}

let count = 0
/** A `#!/bin/sh` hook with `body`, mode 0755; returns its path. */
function hook (body: string, mode = 0o755): string {
  const path = join(dir, `hook-${++count}.sh`)
  writeFileSync(path, `#!/bin/sh\n${body}\n`)
  chmodSync(path, mode)
  return path
}

/** A file the hook may write to, unique per call. */
function scratch (name: string): string {
  return join(dir, `${name}-${++count}`)
}

function exists (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false
    throw err
  }
}

/** A zombie is dead, only waiting for its new parent (pid 1) to reap it, which may take a while. */
function isZombie (pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? false
  } catch {
    return false
  }
}

/** True once `pid` is dead: kill(pid, 0) fails with ESRCH, or it is a zombie. */
async function isGone (pid: number): Promise<boolean> {
  try {
    await waitFor(() => !exists(pid) || isZombie(pid), { interval: 10, timeout: 1000 })
    return true
  } catch {
    return false
  }
}

function readPid (path: string): number {
  const pid = Number(readFileSync(path, 'utf8').trim())
  expect(pid).toBeGreaterThan(1)
  return pid
}

const opts = { timeoutMs: 5000 }

describe('settings hook', () => {
  describe('exit 0', () => {
    it('with empty stdout is applied', async () => {
      const result = await runSettingsHook(hook('exit 0'), input, opts)
      expect(result).toMatchObject({ state: 'applied', message: 'applied', exitCode: 0, signal: null, stdout: '', stderr: '' })
      expect(result.durationMs).toBeGreaterThanOrEqual(0)
    })

    it('with only whitespace on stdout is applied, and stderr does not matter', async () => {
      const result = await runSettingsHook(hook('printf "  \\n\\n"; echo "warning: noisy" >&2'), input, opts)
      expect(result).toMatchObject({ state: 'applied', message: 'applied', stderr: 'warning: noisy\n' })
    })

    it('with a JSON report takes its status and message', async () => {
      const applied = await runSettingsHook(hook('echo \'{"status":"applied","message":"ntp restarted"}\''), input, opts)
      expect(applied).toMatchObject({ state: 'applied', message: 'ntp restarted', exitCode: 0 })
      const failed = await runSettingsHook(hook('echo \'{"status":"failed","message":"unknown key motd","extra":1}\''), input, opts)
      expect(failed).toMatchObject({ state: 'failed', message: 'unknown key motd', exitCode: 0 })
      const bare = await runSettingsHook(hook('echo \'{"status":"failed"}\''), input, opts)
      expect(bare).toMatchObject({ state: 'failed', message: 'failed' })
    })

    it('caps a long message at 500 characters', async () => {
      const result = await runSettingsHook(hook(`printf '{"status":"failed","message":"%s"}' "${'x'.repeat(2000)}"`), input, opts)
      expect(result.state).toBe('failed')
      expect(result.message).toHaveLength(MAX_MESSAGE_CHARS)
      expect(result.message.startsWith('xxxx')).toBe(true)
    })

    it.each([
      ['garbage', 'echo "done, all good"; echo second line', '"done, all good"'],
      ['a JSON array', 'echo \'[{"status":"applied"}]\'', '"[{\\"status\\":\\"applied\\"}]"'],
      ['an unknown status', 'echo \'{"status":"ok"}\'', '"{\\"status\\":\\"ok\\"}"'],
      ['a non-string message', 'echo \'{"status":"applied","message":3}\'', 'message\\":3'],
      ['two JSON objects', 'echo \'{"status":"applied"}\'; echo \'{"status":"applied"}\'', '"{\\"status\\":\\"applied\\"}"']
    ])('with %s on stdout is failed, quoting the first line', async (_what, body, quoted) => {
      const result = await runSettingsHook(hook(body), input, opts)
      expect(result.state).toBe('failed')
      expect(result.exitCode).toBe(0)
      expect(result.message).toContain('not the expected JSON')
      expect(result.message).toContain(quoted)
      expect(result.message).not.toContain('second line')
    })
  })

  it('gets the input as exact JSON on stdin, cwd / and a minimal environment', async () => {
    const stdinFile = scratch('stdin')
    const envFile = scratch('env')
    const cwdFile = scratch('cwd')
    const path = hook(`cat > '${stdinFile}'; env > '${envFile}'; pwd > '${cwdFile}'`)
    const result = await runSettingsHook(path, input, { ...opts, env: { HOOK_EXTRA: 'yes', EDGELINK_SETTINGS_VERSION: 'spoofed' } })
    expect(result).toMatchObject({ state: 'applied' })
    const received = readFileSync(stdinFile, 'utf8')
    expect(JSON.parse(received)).toEqual(input)
    expect(received.trim()).toBe(JSON.stringify(input))
    expect(readFileSync(cwdFile, 'utf8').trim()).toBe('/')
    const env = readFileSync(envFile, 'utf8').split('\n')
    expect(env).toContain('EDGELINK_SETTINGS_VERSION=7')
    expect(env).toContain('HOOK_EXTRA=yes')
    expect(env.some(l => l.startsWith('PATH='))).toBe(true)
    expect(env.some(l => l.startsWith('HOME='))).toBe(false)
  })

  it('a hook that exits without reading a large input is not an error (EPIPE)', async () => {
    const big = { ...input, settings: { blob: 'z'.repeat(4 * 1024 * 1024) } }
    const result = await runSettingsHook(hook('exit 0'), big, opts)
    expect(result).toMatchObject({ state: 'applied', message: 'applied' })
  })

  describe('non-zero exit', () => {
    it('is failed with the exit code and the last stderr line', async () => {
      const result = await runSettingsHook(hook('echo "progress" ; echo "first problem" >&2; echo "chrony.conf: permission denied" >&2; echo >&2; exit 3'), input, opts)
      expect(result).toMatchObject({ state: 'failed', message: 'exit code 3: chrony.conf: permission denied', exitCode: 3, signal: null })
    })

    it('falls back to the last stdout line, then to the bare code', async () => {
      const fromStdout = await runSettingsHook(hook('echo "step 1"; echo "step 2 broke"; exit 4'), input, opts)
      expect(fromStdout.message).toBe('exit code 4: step 2 broke')
      const bare = await runSettingsHook(hook('exit 5'), input, opts)
      expect(bare.message).toBe('exit code 5')
    })
  })

  it('a crash is failed with the signal', async () => {
    const result = await runSettingsHook(hook('ulimit -c 0; kill -SEGV $$'), input, opts)
    expect(result).toMatchObject({ state: 'failed', message: 'killed by SIGSEGV', exitCode: null, signal: 'SIGSEGV' })
  })

  describe('timeout', () => {
    it('kills a hanging hook and its grandchildren', async () => {
      const pidFile = scratch('pid')
      const result = await runSettingsHook(hook(`sleep 60 & echo $! > '${pidFile}'; wait`), input, { timeoutMs: 300 })
      expect(result.state).toBe('failed')
      expect(result.message).toBe('timed out after 0.3s')
      expect(result.signal).toBe('SIGTERM')
      expect(result.durationMs).toBeGreaterThanOrEqual(290)
      expect(result.durationMs).toBeLessThan(2000)
      expect(await isGone(readPid(pidFile))).toBe(true)
    })

    it('SIGKILLs a hook that ignores SIGTERM after the grace period', async () => {
      const pidFile = scratch('pid')
      const result = await runSettingsHook(hook(`trap '' TERM; sleep 60 & echo $! > '${pidFile}'; wait`), input, { timeoutMs: 300, killGraceMs: 200 })
      expect(result.state).toBe('failed')
      expect(result.message).toMatch(/^timed out after 0\.3s; it ignored SIGTERM for 0\.2s and was killed with SIGKILL$/)
      expect(result.signal).toBe('SIGKILL')
      expect(result.durationMs).toBeGreaterThanOrEqual(490)
      expect(result.durationMs).toBeLessThan(2000)
      expect(await isGone(readPid(pidFile))).toBe(true)
    })
  })

  it('kills what a hook left running in its process group when it exits', async () => {
    const pidFile = scratch('pid')
    const result = await runSettingsHook(hook(`sleep 60 & echo $! > '${pidFile}'; exit 0`), input, opts)
    expect(result).toMatchObject({ state: 'applied' })
    expect(result.durationMs).toBeLessThan(2000)
    expect(await isGone(readPid(pidFile))).toBe(true)
  })

  describe('output', () => {
    it('a flood on stdout is cut at 64 KiB and still gives a result', async () => {
      const result = await runSettingsHook(hook('yes | head -c 50000000'), input, opts)
      expect(result.stdout).toHaveLength(DEFAULT_MAX_OUTPUT_BYTES)
      expect(result.state).toBe('failed')
      expect(result.message).toContain('not the expected JSON')
      expect(result.message).toContain('"y"')
    })

    it('a flood on stderr is cut at maxOutputBytes', async () => {
      const result = await runSettingsHook(hook('yes "err" | head -c 5000000 >&2; exit 2'), input, { ...opts, maxOutputBytes: 1000 })
      expect(result.stderr).toHaveLength(1000)
      expect(result.message).toMatch(/^exit code 2: /)
    })
  })

  describe('a hook that cannot run is failed, not thrown', () => {
    it('missing', async () => {
      const path = join(dir, 'no-such-hook')
      const result = await runSettingsHook(path, input, opts)
      expect(result).toMatchObject({ state: 'failed', exitCode: null, signal: null, stdout: '', stderr: '' })
      expect(result.message).toMatch(new RegExp(`^settings hook ${path} not found`))
    })

    it('not executable', async () => {
      const path = hook('exit 0', 0o644)
      const result = await runSettingsHook(path, input, opts)
      expect(result.state).toBe('failed')
      expect(result.message).toMatch(new RegExp(`^settings hook ${path} is not executable \\(mode 0644\\)`))
    })

    it('a directory', async () => {
      const path = join(dir, 'hooks.d')
      mkdirSync(path)
      chmodSync(path, 0o755)
      const result = await runSettingsHook(path, input, opts)
      expect(result.state).toBe('failed')
      expect(result.message).toMatch(new RegExp(`^settings hook ${path} is a directory`))
    })

    it('with a missing #! interpreter', async () => {
      const path = join(dir, 'bad-interpreter')
      writeFileSync(path, '#!/nonexistent/interpreter\n')
      chmodSync(path, 0o755)
      const result = await runSettingsHook(path, input, opts)
      expect(result.state).toBe('failed')
      expect(result.message).toContain(`settings hook ${path} could not be started`)
    })

    it('with an invalid timeout', async () => {
      const result = await runSettingsHook(hook('exit 0'), input, { timeoutMs: Number.NaN })
      expect(result.state).toBe('failed')
      expect(result.message).toContain('timeout must be a positive number')
    })
  })
})
