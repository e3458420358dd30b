// Builds the web client into modi_sync/webapp_dist (or the folder given as the first
// argument): the script and the style bundled by esbuild and named by their content's
// hash, index.html naming them, and the service worker listing them. The server serves
// that folder as it is (modi_sync/api/webapp.py); docs/webapp.md.
import * as esbuild from 'esbuild'
import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = resolve(process.argv[2] ?? join(here, '..', 'modi_sync', 'webapp_dist'))
const src = join(here, 'src')

const bundle = async (entry, options = {}) => {
  const result = await esbuild.build({
    entryPoints: [join(src, entry)],
    bundle: true,
    minify: true,
    write: false,
    legalComments: 'none',
    target: ['es2020', 'chrome90', 'firefox90', 'safari15'],
    logLevel: 'warning',
    ...options
  })
  return Buffer.from(result.outputFiles[0].contents)
}

const hashed = (stem, ext, bytes) =>
  `${stem}.${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}.${ext}`

const js = await bundle('app.js', { format: 'esm' })
const css = await bundle('style.css')
const files = new Map([[hashed('app', 'js', js), js], [hashed('app', 'css', css), css]])
const [jsName, cssName] = files.keys()

const html = (await readFile(join(src, 'index.html'), 'utf8'))
  .replace('{{APP_JS}}', jsName)
  .replace('{{APP_CSS}}', cssName)
files.set('index.html', Buffer.from(html))

// The worker's own name stays sw.js (a new name would be a second worker); its version
// changes with any file of the shell, which makes the browser install it again.
const version = createHash('sha256').update(html).update(js).update(css).digest('hex').slice(0, 16)
const swSource = (await readFile(join(src, 'sw.js'), 'utf8'))
  .replace('{{VERSION}}', version)
  .replace('{{ASSETS}}', JSON.stringify([...files.keys()].filter((n) => n !== 'index.html').map((n) => './' + n)))
const sw = await esbuild.transform(swSource, { minify: true, target: 'es2020', legalComments: 'none' })
files.set('sw.js', Buffer.from(sw.code))

// Written beside, then swapped in whole: a server reading the folder never sees half of it.
const tmp = out + '.tmp'
await rm(tmp, { recursive: true, force: true })
await mkdir(tmp, { recursive: true })
for (const [name, bytes] of files) await writeFile(join(tmp, name), bytes)
await rm(out, { recursive: true, force: true })
await rename(tmp, out)
console.log(`web client built into ${out}: ${[...files.keys()].join(', ')}`)
