// Drives Debian's chromium through playwright-core for tests/test_webapp.py: one JSON
// command a line on stdin, one JSON reply a line on stdout ({"seq", "ok", ...}); events
// the test may look at (console errors, page errors) are lines without a "seq".
// No browser is downloaded: the executable is the one the test names.
import { chromium } from 'playwright-core'
import { createInterface } from 'node:readline'

let browser = null
const pages = new Map() // id -> { context, page }

const emit = (message) => process.stdout.write(JSON.stringify(message) + '\n')
const page = (id) => {
  const entry = pages.get(id)
  if (!entry) throw new Error(`no context ${id}`)
  return entry.page
}

// What a user sees of the app, read from the page.
function readApp () {
  const text = (id) => document.getElementById(id)?.textContent.trim() ?? null
  const items = (id) => [...document.querySelectorAll(`#${id} li > span`)].map((el) => el.textContent)
  return {
    signedIn: !document.getElementById('app-view').hidden,
    authShown: !document.getElementById('auth-view').hidden,
    authMessage: text('auth-message'),
    connection: document.getElementById('connection').dataset.state,
    connectionText: text('connection'),
    pending: Number(document.getElementById('pending').dataset.count),
    devices: Number(document.getElementById('devices').dataset.count),
    devicesText: text('devices'),
    workouts: items('workouts'),
    weights: items('weights'),
    foodLogs: items('food-logs'),
    foodMessage: text('food-message'),
    calories: text('m-calories'),
    macrosNote: text('macros-note'),
    controlled: navigator.serviceWorker?.controller != null
  }
}

const commands = {
  async launch ({ executablePath }) {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      // as root in a container chromium's sandbox cannot start; the pages are our own
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu']
    })
    return { version: browser.version() }
  },
  async context ({ id, baseURL }) {
    const context = await browser.newContext({ baseURL, viewport: { width: 900, height: 1100 } })
    const p = await context.newPage()
    p.on('console', (msg) => { if (msg.type() === 'error') emit({ event: 'console', id, text: msg.text() }) })
    p.on('pageerror', (err) => emit({ event: 'pageerror', id, text: String(err) }))
    pages.set(id, { context, page: p })
    return {}
  },
  async goto ({ id, path }) {
    const resp = await page(id).goto(path, { waitUntil: 'load' })
    return { status: resp?.status() ?? null, fromServiceWorker: resp?.fromServiceWorker() ?? null }
  },
  async reload ({ id }) {
    const resp = await page(id).reload({ waitUntil: 'load' })
    return { status: resp?.status() ?? null, fromServiceWorker: resp?.fromServiceWorker() ?? null }
  },
  async offline ({ id, offline }) {
    await pages.get(id).context.setOffline(offline)
    return {}
  },
  async fill ({ id, fields }) {
    for (const [selector, value] of Object.entries(fields)) {
      const el = page(id).locator(selector)
      if (await el.evaluate((e) => e.tagName === 'SELECT')) await el.selectOption(String(value))
      else await el.fill(String(value))
    }
    return {}
  },
  async click ({ id, selector }) {
    await page(id).locator(selector).click()
    return {}
  },
  async press ({ id, selector, key }) {
    await page(id).locator(selector).press(key)
    return {}
  },
  async wait ({ id, until, ms }) {
    // `until`: a JS expression over `app` (readApp's answer), judged here: the page's
    // CSP allows no eval, and it is kept as served.
    const test = new Function('app', `return (${until})`)
    const deadline = Date.now() + (ms ?? 20000)
    let app
    for (;;) {
      app = await page(id).evaluate(readApp)
      if (test(app)) return { app }
      if (Date.now() > deadline) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    throw new Error(`${until} not true within ${ms ?? 20000} ms; the app shows ${JSON.stringify(app)}`)
  },
  async read ({ id }) {
    return { app: await page(id).evaluate(readApp) }
  },
  async evaluate ({ id, expression }) {
    return { value: await page(id).evaluate(expression) }
  },
  async screenshot ({ id, path }) {
    await page(id).screenshot({ path, fullPage: true })
    return {}
  }
}

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (!line.trim()) continue
  const { seq, cmd, ...args } = JSON.parse(line)
  try {
    if (!commands[cmd]) throw new Error(`unknown command ${cmd}`)
    emit({ seq, ok: true, ...(await commands[cmd](args)) })
  } catch (err) {
    emit({ seq, ok: false, error: String(err?.stack ?? err) })
  }
}
for (const { context } of pages.values()) await context.close().catch(() => {})
if (browser) await browser.close()
