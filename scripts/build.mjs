#!/usr/bin/env node
/**
 * `npm run build`: bundle the CLI and the agent into dist/ with esbuild.
 *
 *   node scripts/build.mjs [--analyze] [--no-minify] [--outdir=DIR]
 *
 *   --analyze     also write DIR/meta.json and print the biggest inputs of each output file
 *   --no-minify   keep whitespace, syntax and local identifiers as written
 *   --outdir=DIR  build somewhere else than dist/ (for A/B benchmarks with --bin)
 *
 * Why a bundle: loading the agent as ~520 separate ES modules from node_modules took about
 * 850 ms of its start; one bundle (split in a few chunks) loads in a fraction of that.
 * Type checking is not done here: `npm run typecheck` (tsc) does it, and CI runs both.
 *
 * Layout: the one entry point is src/cli/main.ts → dist/cli/main.js. With code splitting,
 * everything reachable only through `await import(...)` (the agent: libp2p, fastify, level,
 * pino; YAML for --print-config) lands in separate chunks under dist/chunks/, so
 * `edgelink status` loads commander and the CLI alone. `classic-level` stays external
 * (native addon, resolved from node_modules at run time).
 */
import { build } from 'esbuild'
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')

function parseArgs (argv) {
  const a = { analyze: false, minify: true, outdir: join(ROOT, 'dist') }
  for (const arg of argv) {
    if (arg === '--analyze') a.analyze = true
    else if (arg === '--no-minify') a.minify = false
    else if (arg.startsWith('--outdir=')) a.outdir = resolve(arg.slice('--outdir='.length))
    else {
      process.stderr.write(`build: unknown argument ${arg}\nusage: node scripts/build.mjs [--analyze] [--no-minify] [--outdir=DIR]\n`)
      process.exit(2)
    }
  }
  return a
}

// CommonJS packages inside an ESM bundle still call require() (for node builtins and the
// external classic-level) and read __filename/__dirname; define them in every output file.
const BANNER = [
  "import { createRequire as __edgelinkCreateRequire } from 'node:module';",
  "import { fileURLToPath as __edgelinkFileURLToPath } from 'node:url';",
  "import { dirname as __edgelinkDirname } from 'node:path';",
  'const require = __edgelinkCreateRequire(import.meta.url);',
  'const __filename = __edgelinkFileURLToPath(import.meta.url);',
  'const __dirname = __edgelinkDirname(__filename);'
].join('\n')

async function main () {
  const args = parseArgs(process.argv.slice(2))
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
  const t0 = performance.now()

  // Build into a fresh directory next to the target, then swap it in, so that no stale
  // file from an older build (or from the former tsc output) survives, and an agent that
  // is running from dist/ while we build sees either the old tree or the new one.
  const tmp = `${args.outdir}.tmp-${process.pid}`
  rmSync(tmp, { recursive: true, force: true })
  let result
  try {
    result = await build({
      absWorkingDir: ROOT,
      entryPoints: { 'cli/main': 'src/cli/main.ts' },
      outdir: tmp,
      bundle: true,
      splitting: true,
      chunkNames: 'chunks/[name]-[hash]',
      platform: 'node',
      format: 'esm',
      target: 'node20.19',
      external: ['classic-level'],
      // Minified identifiers make the agent's idle heap about 6 MiB smaller (V8 keeps every
      // module's source and its scope names in memory), which keeps idle RSS under
      // issue 2's 80 MiB. Error classes rely on .name (and esbuild would otherwise also
      // rename a class that two modules declare alike), so names are always kept; stack
      // traces map back to src/ with NODE_OPTIONS=--enable-source-maps.
      keepNames: true,
      minify: args.minify,
      sourcemap: 'linked',
      sourcesContent: false,
      legalComments: 'none',
      banner: { js: BANNER },
      define: { __EDGELINK_VERSION__: JSON.stringify(pkg.version) },
      metafile: true,
      logLevel: 'warning'
    })
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true })
    throw err
  }
  if (args.analyze) writeFileSync(join(tmp, 'meta.json'), JSON.stringify(result.metafile))

  const old = `${args.outdir}.old-${process.pid}`
  if (existsSync(args.outdir)) renameSync(args.outdir, old)
  renameSync(tmp, args.outdir)
  rmSync(old, { recursive: true, force: true })

  const outputs = Object.entries(result.metafile.outputs).filter(([f]) => f.endsWith('.js'))
  const total = outputs.reduce((s, [, o]) => s + o.bytes, 0)
  const ms = Math.round(performance.now() - t0)
  process.stdout.write(`build: ${outputs.length} files, ${(total / 1024).toFixed(0)} KiB in ${shown(args.outdir)}/ (${ms} ms)\n`)
  if (args.analyze) analyze(result.metafile, tmp, args.outdir)
}

/** A path relative to the checkout when it is inside it. */
function shown (path) {
  const rel = relative(ROOT, path)
  return rel.startsWith('..') ? path : rel
}

/** Per output file: size, and its biggest contributing packages. */
function analyze (metafile, tmp, outdir) {
  const pkgOf = (input) => {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(input)
    return m != null ? m[1] : (input.startsWith('src/') ? 'src' : input)
  }
  for (const [file, out] of Object.entries(metafile.outputs)) {
    if (!file.endsWith('.js')) continue
    const byPkg = new Map()
    for (const [input, { bytesInOutput }] of Object.entries(out.inputs)) {
      byPkg.set(pkgOf(input), (byPkg.get(pkgOf(input)) ?? 0) + bytesInOutput)
    }
    const top = [...byPkg].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([p, b]) => `${p} ${(b / 1024).toFixed(0)}K`)
    const name = join(outdir, relative(tmp, join(ROOT, file)))
    process.stdout.write(`  ${shown(name)}  ${(out.bytes / 1024).toFixed(0)} KiB: ${top.join(', ')}\n`)
  }
}

main().catch((err) => {
  process.stderr.write(`build: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
})
