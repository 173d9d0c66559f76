/**
 * The `edgelink` command line. Each command lives in its own file under commands/:
 * parse, call the agent's API, print, return an exit code.
 * Exit status: 0 success; 1 failure with one clear line on stderr; 2 usage error.
 */
import { Command, CommanderError } from 'commander'
import { AGENT_VERSION } from '../version.js'
import { CliError, EXIT_USAGE } from './errors.js'
import { EdgelinkError } from '../errors.js'
import { registerAgent } from './commands/agent.js'
import { registerStatus } from './commands/status.js'
import { registerPeers } from './commands/peers.js'
import { registerRepl } from './commands/repl.js'
import { registerHosts } from './commands/hosts.js'
import { registerToken } from './commands/token.js'
import { registerLink } from './commands/link.js'
import { registerUnlink } from './commands/unlink.js'
import { registerLeader } from './commands/leader.js'
import { registerSettings } from './commands/settings.js'
import { registerContent } from './commands/content.js'

export function buildProgram (): Command {
  const program = new Command('edgelink')
    .description('Link hosts at an edge site into a group over their LAN')
    .version(AGENT_VERSION, '-V, --version')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ writeErr: s => { process.stderr.write(s) } })
  program.addHelpText('after', '\nEvery command takes --data-dir DIR (default $EDGELINK_HOME, else ~/.edgelink) and --json.')
  registerAgent(program)
  registerStatus(program)
  registerPeers(program)
  registerHosts(program)
  registerToken(program)
  registerLink(program)
  registerUnlink(program)
  registerLeader(program)
  registerSettings(program)
  registerContent(program)
  registerRepl(program)
  const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)]
  for (const cmd of all(program)) cmd.exitOverride()
  return program
}

export async function main (argv: string[]): Promise<number> {
  const program = buildProgram()
  try {
    await program.parseAsync(argv, { from: 'user' })
    return typeof process.exitCode === 'number' ? process.exitCode : 0
  } catch (err) {
    if (err instanceof CommanderError) {
      if (['commander.helpDisplayed', 'commander.version'].includes(err.code)) return 0
      // `edgelink` with no command (or `edgelink token` with no subcommand) prints help: a usage error.
      if (err.code === 'commander.help') return EXIT_USAGE
      if (err.code === 'commander.executeSubCommandAsync') return 1
      // Commander already printed the message; a usage error exits 2.
      return EXIT_USAGE
    }
    if (err instanceof CliError) {
      process.stderr.write(`edgelink: ${err.message}\n`)
      return err.exitCode
    }
    if (err instanceof EdgelinkError) {
      process.stderr.write(`edgelink: ${err.message}\n`)
      return err.code === 'USAGE' ? EXIT_USAGE : 1
    }
    // One line, never a stack trace: the agent's log has the details.
    const first = (err instanceof Error ? err.message : String(err)).split('\n')[0]
    process.stderr.write(`edgelink: unexpected error: ${first}\n`)
    return 1
  }
}
