// What every Node client process a bench script drives shares (loadgen.mjs, faults.mjs):
// its configuration (JSON, the first argument), JSON lines out, a hard time limit,
// go-ahead words from stdin, and the URL of a document.

import * as readline from 'node:readline'

export const cfg = JSON.parse(process.argv[2])
export const now = () => performance.now()
export const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Whatever happens, this process ends.
const hardTimer = setTimeout(() => {
  emit({ result: { ok: false, error: `hard time limit ${cfg.hardLimitMs} ms reached` } })
  process.exit(3)
}, cfg.hardLimitMs ?? 300000)
hardTimer.unref()

// Words from the driving script, one a line on stdin (none with `noStdin`).
const words = []
let wordWaiter = null
let stdinEnded = false
if (!cfg.noStdin) {
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', (line) => { words.push(line.trim()); wordWaiter?.() })
  rl.on('close', () => { stdinEnded = true; wordWaiter?.() })
}

// Wait for `word` on a line of stdin, at most `ms`; false if it did not come.
export const waitFor = async (word, ms) => {
  const until = now() + ms
  while (now() < until) {
    const i = words.indexOf(word)
    if (i >= 0) { words.splice(i, 1); return true }
    if (stdinEnded || cfg.noStdin) return false
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, Math.max(0, until - now()))
      wordWaiter = () => { clearTimeout(timer); resolve() }
    })
    wordWaiter = null
  }
  return false
}

// The URL of document `name` for client `index`, which takes the index-th token
// (round robin) of `cfg.tokens`.
export const urlFor = (index, name) => {
  const tokens = cfg.tokens ?? ['']
  return cfg.urlTemplate.replace('{name}', encodeURIComponent(name))
    .replace('{token}', encodeURIComponent(tokens[index % tokens.length]))
}
