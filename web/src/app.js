// The Magni web client (docs/webapp.md): one user's document `default`, kept in
// IndexedDB and synced over /sync/ with y-websocket; accounts and foods over /api/v1.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { IndexeddbPersistence } from 'y-indexeddb'

const API = '/api/v1'
const DOC_NAME = 'default'
const SESSION_KEY = 'magni.session'
const DEVICE_KEY = 'magni.device'
const LOCAL = 'magni-local-edit' // the origin of the app's own transactions
const SESSION_ENDED = 4401
const CONSENT_WITHDRAWN = 4403
const DOCUMENT_DELETED = 4404

const $ = (id) => document.getElementById(id)

// -- the session: tokens in localStorage, refreshed before they expire -----------------

let session = readSession()
let refreshTimer = 0
let sync = null // the open document: { doc, provider, persistence, ... }

function readSession () {
  try { return JSON.parse(localStorage.getItem(SESSION_KEY)) } catch { return null }
}

function saveSession (pair) {
  session = {
    access: pair.access_token,
    refresh: pair.refresh_token,
    expiresAt: Date.now() + pair.expires_in * 1000,
    lifetime: pair.expires_in * 1000,
    user: pair.user,
    deviceToken: pair.device_token ?? session?.deviceToken
  }
  localStorage.setItem(SESSION_KEY, JSON.stringify(session))
  if (pair.device_token) localStorage.setItem(DEVICE_KEY + '.token.' + pair.user.email.toLowerCase(), pair.device_token)
  scheduleRefresh()
  if (sync) sync.provider.params = { token: session.access }
}

function scheduleRefresh () {
  clearTimeout(refreshTimer)
  if (!session) return
  // A quarter of the lifetime before expiry (at least 5 s): a sleeping laptop or a slow
  // network still has time, and no request waits on a refresh.
  const margin = Math.max(5000, session.lifetime / 4)
  refreshTimer = setTimeout(() => refreshTokens(), Math.max(0, session.expiresAt - margin - Date.now()))
}

class HttpError extends Error {
  constructor (status, body) {
    super(body?.error?.message ?? `HTTP ${status}`)
    this.status = status
    this.body = body
  }
}

async function request (method, path, body, token) {
  const headers = {}
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  if (token) headers.Authorization = 'Bearer ' + token
  const resp = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store'
  })
  if (resp.status === 204) return null
  let data = null
  try { data = await resp.json() } catch {}
  if (!resp.ok) throw new HttpError(resp.status, data)
  return data
}

// Refresh tokens are single use, and two refreshes of one token end the session: tabs of
// one browser take turns through a lock, and a tab that finds the token already rotated
// by another takes the new pair instead.
let refreshing = null
function refreshTokens () {
  if (!refreshing) {
    const run = async () => {
      const seen = session?.refresh
      const stored = readSession()
      if (!stored) return signOut('You were signed out.', false)
      if (stored.refresh !== seen) { session = stored; saveSession(toPair(stored)); return }
      try {
        saveSession((await request('POST', '/auth/refresh', { refresh_token: stored.refresh })).data)
      } catch (err) {
        if (err instanceof HttpError && err.status === 401) return signOut('Your session ended. Please sign in again.', false)
        clearTimeout(refreshTimer) // offline or the server busy: try again soon
        refreshTimer = setTimeout(() => refreshTokens(), 15000)
      }
    }
    const locked = navigator.locks ? navigator.locks.request('magni-refresh', run) : run()
    refreshing = locked.finally(() => { refreshing = null })
  }
  return refreshing
}

function toPair (s) {
  return {
    access_token: s.access,
    refresh_token: s.refresh,
    expires_in: Math.max(0, (s.expiresAt - Date.now()) / 1000),
    user: s.user,
    device_token: s.deviceToken
  }
}

// A REST call with the access token, refreshed first if it is about to expire.
async function authed (method, path, body) {
  if (!session) throw new HttpError(401, null)
  if (session.expiresAt - Date.now() < 5000) await refreshTokens()
  try {
    return await request(method, path, body, session.access)
  } catch (err) {
    if (!(err instanceof HttpError) || err.status !== 401 || !session) throw err
    await refreshTokens()
    if (!session) throw err
    return request(method, path, body, session.access)
  }
}

async function signOut (message, endSession) {
  const ending = session
  session = null
  clearTimeout(refreshTimer)
  localStorage.removeItem(SESSION_KEY)
  closeDocument()
  showAuth(message)
  if (endSession && ending) {
    try { await request('POST', '/auth/logout', { refresh_token: ending.refresh }) } catch {}
  }
}

// -- the document: IndexedDB first, then the server -------------------------------------

function openDocument () {
  const user = session.user
  const doc = new Y.Doc()
  const persistence = new IndexeddbPersistence(`magni-${user.id}-${DOC_NAME}`, doc)
  const base = location.origin.replace(/^http/, 'ws') + '/sync'
  const provider = new WebsocketProvider(base, DOC_NAME, doc, {
    params: { token: session.access }, connect: false
  })
  sync = { doc, provider, persistence, user, pending: new Pending(doc, user.id), probes: [], probeTimer: 0 }
  doc.getMap('workouts').observeDeep(renderWorkouts)
  doc.getMap('weights').observeDeep(renderWeights)
  doc.getMap('food_logs').observeDeep((events, tx) => {
    renderFoodLogs()
    if (tx.origin !== LOCAL) refreshSummarySoon()
  })
  doc.on('update', (update, origin) => {
    if (origin === LOCAL) { sync.pending.add(); renderPending(); probeSoon() }
  })

  provider.awareness.setLocalStateField('device', device())
  provider.awareness.on('change', renderDevices)
  provider.on('status', ({ status }) => {
    renderConnection()
    if (status === 'connected') watchSocket(provider.ws)
  })
  provider.on('sync', (synced) => {
    renderConnection()
    if (synced) { probeSoon(); refreshSummarySoon() }
  })
  provider.on('connection-close', () => {
    // An upgrade refused for an expired token (a 401 the browser does not show us):
    // refresh, and the next attempt carries the new token.
    if (session && session.expiresAt - Date.now() < 10000) refreshTokens()
  })
  provider.on('closed', ({ code }) => {
    if (code === SESSION_ENDED) signOut('You were signed out (a session of this account ended). Please sign in again.', true)
    else if (code === CONSENT_WITHDRAWN) setConnection('stopped', 'stopped: consent to processing withdrawn; edits are kept here')
    else if (code === DOCUMENT_DELETED) { persistence.clearData(); signOut('This document was erased on the server.', false) }
  })
  persistence.whenSynced.then(() => {
    if (sync?.doc !== doc) return
    sync.pending.forgetMissing()
    renderAll()
    if (navigator.onLine) connect()
    else renderConnection()
  })
  renderAll()
}

function closeDocument () {
  if (!sync) return
  clearTimeout(sync.probeTimer)
  sync.provider.awareness.setLocalState(null)
  sync.provider.destroy()
  sync.persistence.destroy()
  sync.doc.destroy()
  sync = null
}

async function connect () {
  if (!sync || !session) return
  if (session.expiresAt - Date.now() < 10000) await refreshTokens()
  if (sync && session) { sync.provider.params = { token: session.access }; sync.provider.connect() }
  renderConnection()
}

window.addEventListener('offline', () => { if (sync) { sync.provider.disconnect(); renderConnection() } })
window.addEventListener('online', () => { connect(); renderSummary() })

// -- edits waiting for the server -------------------------------------------------------
//
// Each local edit is remembered as (client id, clock after it), in localStorage so the
// count survives a reload. The server answers a sync step 1 only once everything the
// connection sent before it is stored: so after the first sync, the app sends a step 1
// of its own and, when the step 2 answering it arrives, every edit the document held when
// it was sent is stored.

class Pending {
  constructor (doc, userId) {
    this.doc = doc
    this.key = `magni.pending.${userId}.${DOC_NAME}`
    try { this.edits = JSON.parse(localStorage.getItem(this.key)) ?? [] } catch { this.edits = [] }
  }

  get count () { return this.edits.length }

  add () {
    this.edits.push([this.doc.clientID, Y.getState(this.doc.store, this.doc.clientID)])
    this.save()
  }

  confirm (stateVector) {
    const before = this.edits.length
    this.edits = this.edits.filter(([client, clock]) => (stateVector.get(client) ?? 0) < clock)
    if (this.edits.length !== before) this.save()
    return before - this.edits.length
  }

  forgetMissing () {
    // an edit the tab lost before IndexedDB kept it will never reach the server
    this.confirm(new Map(this.edits.map(([client, clock]) => {
      const have = Y.getState(this.doc.store, client)
      return [client, have < clock ? Infinity : 0]
    })))
  }

  save () { localStorage.setItem(this.key, JSON.stringify(this.edits)) }
}

function probeSoon () {
  if (!sync) return
  clearTimeout(sync.probeTimer)
  sync.probeTimer = setTimeout(probe, 150)
}

function probe () {
  const { provider, doc, pending } = sync ?? {}
  if (!provider?.synced || !provider.ws || provider.ws.readyState !== WebSocket.OPEN || pending.count === 0) return
  const sv = Y.encodeStateVector(doc)
  sync.probes.push(Y.decodeStateVector(sv))
  const msg = new Uint8Array(2 + varUintLength(sv.length) + sv.length)
  msg[0] = 0 // messageSync
  msg[1] = 0 // sync step 1
  const at = writeVarUint(msg, 2, sv.length)
  msg.set(sv, at)
  provider.ws.send(msg)
}

function watchSocket (ws) {
  sync.probes = []
  ws.addEventListener('message', (event) => {
    const bytes = new Uint8Array(event.data)
    // messageSync, sync step 2: the answer to the oldest step 1 this app sent
    if (bytes[0] !== 0 || bytes[1] !== 1 || !sync || sync.provider.ws !== ws) return
    const sv = sync.probes.shift()
    if (!sv) return
    if (sync.pending.confirm(sv) > 0) { renderPending(); refreshSummarySoon() }
    if (sync.pending.count > 0) probeSoon()
  })
}

function varUintLength (n) { let len = 1; while (n > 127) { n = Math.floor(n / 128); len++ } return len }
function writeVarUint (buf, at, n) {
  while (n > 127) { buf[at++] = 128 | (n & 127); n = Math.floor(n / 128) }
  buf[at++] = n
  return at
}

// -- awareness: this browser's device, and the others -----------------------------------

function device () {
  let id = localStorage.getItem(DEVICE_KEY)
  if (!id) { id = uuid(); localStorage.setItem(DEVICE_KEY, id) }
  const ua = navigator.userAgent
  const browser = /Firefox\//.test(ua) ? 'Firefox' : /Edg\//.test(ua) ? 'Edge' : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser'
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : 'web'
  return { id, name: `${browser} on ${os}` }
}

function renderDevices () {
  const el = $('devices')
  if (!sync) { el.textContent = 'none'; el.dataset.count = '0'; return }
  const mine = sync.provider.awareness.getLocalState()?.device?.id
  const others = new Map()
  for (const [client, state] of sync.provider.awareness.getStates()) {
    if (client === sync.doc.clientID || !state.device || state.device.id === mine) continue
    others.set(state.device.id, state.device)
  }
  el.dataset.count = String(others.size)
  el.textContent = others.size === 0
    ? 'none'
    : [...others.values()].map((d) => `${d.name} (${String(d.id).slice(0, 4)})`).join(', ')
}

// -- editing the document (docs/api.md, "The document schema") -------------------------

function uuid () {
  if (crypto.randomUUID) return crypto.randomUUID()
  const b = crypto.getRandomValues(new Uint8Array(16))
  b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

function addEntry (root, fields) {
  sync.doc.transact(() => {
    sync.doc.getMap(root).set(uuid(), new Y.Map(Object.entries(fields)))
  }, LOCAL)
}

function removeEntry (root, id) {
  sync.doc.transact(() => sync.doc.getMap(root).delete(id), LOCAL)
}

function today () {
  const d = new Date()
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`
}

function entries (root) {
  return [...sync.doc.getMap(root).entries()]
    .filter(([, v]) => v instanceof Y.Map)
    .map(([id, v]) => ({ id, ...v.toJSON() }))
}

$('workout-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const f = event.target.elements
  const day = parseInt(f.day.value, 10)
  const order = entries('workouts').filter((w) => w.day === day).length
  addEntry('workouts', {
    name: f.name.value.trim(),
    weight: Number(f.weight.value),
    sets: parseInt(f.sets.value, 10),
    reps: parseInt(f.reps.value, 10),
    notes: f.notes.value.trim(),
    day,
    day_order: order
  })
  f.name.value = ''; f.notes.value = ''
  f.name.focus()
})

$('weight-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const f = event.target.elements
  addEntry('weights', { weight: Number(f.weight.value), date_time: new Date().toISOString() })
  f.weight.value = ''
})

// -- foods: search (network only) and the food log --------------------------------------

const FOOD_CACHE_KEY = 'magni.foods'
let foodCache = {}
try { foodCache = JSON.parse(localStorage.getItem(FOOD_CACHE_KEY)) ?? {} } catch {}
function rememberFood (food) {
  foodCache[food.id] = { name: food.name, brand: food.brand, calories: food.calories }
  localStorage.setItem(FOOD_CACHE_KEY, JSON.stringify(foodCache))
}
let foundFoods = []

$('food-search').addEventListener('submit', async (event) => {
  event.preventDefault()
  const q = event.target.elements.q.value.trim()
  const message = $('food-message')
  if (!navigator.onLine) {
    message.textContent = 'Food search needs a network connection: you are offline.'
    return
  }
  message.textContent = 'Searching…'
  try {
    foundFoods = (await authed('GET', `/foods/search?q=${encodeURIComponent(q)}&limit=10`)).data
  } catch (err) {
    message.textContent = err instanceof HttpError
      ? `Search failed: ${err.message}`
      : 'Food search needs a network connection, and the server cannot be reached.'
    return
  }
  message.textContent = foundFoods.length ? `${foundFoods.length} found.` : 'No food found.'
  const results = $('food-results')
  results.replaceChildren(...foundFoods.map((food, i) => {
    const label = document.createElement('label')
    const radio = document.createElement('input')
    radio.type = 'radio'; radio.name = 'food'; radio.value = food.id; radio.required = true
    if (i === 0) radio.checked = true
    label.append(radio, ` ${food.name}${food.brand ? ` (${food.brand})` : ''}, ${food.calories} kcal per 100 g`)
    return label
  }))
  $('food-form').hidden = foundFoods.length === 0
})

$('food-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const f = event.target.elements
  const food = foundFoods.find((x) => x.id === f.food.value)
  if (!food) return
  rememberFood(food)
  addEntry('food_logs', {
    food_id: food.id, quantity_g: Number(f.quantity.value), meal_type: f.meal.value, date: today()
  })
  $('food-message').textContent = `Logged ${f.quantity.value} g of ${food.name}.`
})

async function nameUnknownFoods (ids) {
  for (const id of ids) {
    try { rememberFood((await authed('GET', `/foods/${id}`)).data) } catch { return }
  }
  renderFoodLogs()
}

// -- today's macros: the server's daily summary -----------------------------------------

let summaryTimer = 0
let lastSummary = null
function refreshSummarySoon () {
  clearTimeout(summaryTimer)
  summaryTimer = setTimeout(renderSummary, 300)
}

async function renderSummary () {
  if (!session || !sync) return
  const note = $('macros-note')
  const key = `magni.summary.${session.user.id}`
  if (!lastSummary) try { lastSummary = JSON.parse(localStorage.getItem(key)) } catch {}
  if (lastSummary?.date !== today()) lastSummary = null
  if (!navigator.onLine) {
    if (lastSummary) showMacros(lastSummary.total)
    note.textContent = lastSummary ? `Offline: as the server had them at ${lastSummary.at}. Updating needs network.` : 'Needs network.'
    return
  }
  let total = { calories: 0, protein: 0, carbs: 0, fat: 0, entries: 0 }
  try {
    total = (await authed('GET', `/food-logs/daily-summary?date=${today()}&doc=${DOC_NAME}`)).data.total
  } catch (err) {
    if (!(err instanceof HttpError) || err.status !== 404) {
      note.textContent = 'Needs network: the server cannot be reached.'
      return
    }
  }
  lastSummary = { total, date: today(), at: new Date().toLocaleTimeString() }
  localStorage.setItem(key, JSON.stringify(lastSummary))
  showMacros(total)
  note.textContent = `${total.entries} ${total.entries === 1 ? 'food' : 'foods'} logged today, as the server has them.`
}

function showMacros (total) {
  for (const k of ['calories', 'protein', 'carbs', 'fat']) {
    $('m-' + k).textContent = k === 'calories' ? `${total[k]} kcal` : `${total[k]} g`
  }
}

// -- rendering ----------------------------------------------------------------------------

function listItem (text, root, id, label) {
  const li = document.createElement('li')
  li.dataset.id = id
  const span = document.createElement('span')
  span.textContent = text
  const button = document.createElement('button')
  button.type = 'button'
  button.textContent = 'Remove'
  button.setAttribute('aria-label', `Remove ${label}`)
  button.addEventListener('click', () => removeEntry(root, id))
  li.append(span, button)
  return li
}

function renderWorkouts () {
  if (!sync) return
  const list = entries('workouts').sort((a, b) => (a.day - b.day) || (a.day_order - b.day_order) || (a.id < b.id ? -1 : 1))
  $('workouts').replaceChildren(...list.map((w) => listItem(
    `Day ${w.day}: ${w.name}, ${w.sets} × ${w.reps} at ${w.weight} kg${w.notes ? ` (${w.notes})` : ''}`,
    'workouts', w.id, w.name)))
}

function renderWeights () {
  if (!sync) return
  const list = entries('weights').sort((a, b) => (a.date_time < b.date_time ? 1 : -1))
  $('weights').replaceChildren(...list.map((w) => listItem(
    `${w.weight} kg, ${new Date(w.date_time).toLocaleString()}`, 'weights', w.id, `${w.weight} kg`)))
}

function renderFoodLogs () {
  if (!sync) return
  const list = entries('food_logs').sort((a, b) => (a.date < b.date ? 1 : a.date > b.date ? -1 : (a.id < b.id ? -1 : 1)))
  const unknown = list.filter((e) => !foodCache[e.food_id]).map((e) => e.food_id)
  $('food-logs').replaceChildren(...list.map((e) => {
    const name = foodCache[e.food_id]?.name ?? 'a food'
    return listItem(`${e.date} ${e.meal_type}: ${e.quantity_g} g of ${name}`, 'food_logs', e.id, name)
  }))
  if (unknown.length && navigator.onLine) nameUnknownFoods([...new Set(unknown)].slice(0, 20))
}

function renderPending () {
  const n = sync?.pending.count ?? 0
  const el = $('pending')
  el.dataset.count = String(n)
  el.textContent = n === 1 ? '1 edit' : `${n} edits`
}

function setConnection (state, text) {
  const el = $('connection')
  el.dataset.state = state
  el.textContent = text
}

function renderConnection () {
  if (!sync) return setConnection('signed-out', 'signed out')
  const p = sync.provider
  if (p.wsconnected && p.synced) setConnection('online', 'online, synced')
  else if (p.wsconnected || p.wsconnecting) setConnection('connecting', 'connecting')
  else setConnection('offline', navigator.onLine ? 'offline: server unreachable' : 'offline')
}

function renderAll () {
  renderWorkouts(); renderWeights(); renderFoodLogs(); renderPending(); renderDevices(); renderConnection()
}

// -- screens --------------------------------------------------------------------------

function showAuth (message) {
  $('app-view').hidden = true
  $('account').hidden = true
  $('auth-view').hidden = false
  $('auth-message').textContent = message ?? ''
  renderPending(); renderDevices(); renderConnection()
  $('auth-email').focus()
}

function showApp () {
  $('auth-view').hidden = true
  $('app-view').hidden = false
  $('account').hidden = false
  $('account-email').textContent = session.user.email
  openDocument()
  scheduleRefresh()
  renderSummary()
}

$('auth-form').addEventListener('submit', async (event) => {
  event.preventDefault()
  const f = event.target.elements
  const register = event.submitter?.value === 'register'
  const email = f.email.value.trim()
  const body = { email, password: f.password.value }
  const deviceToken = localStorage.getItem(DEVICE_KEY + '.token.' + email.toLowerCase())
  if (!register && deviceToken) body.device_token = deviceToken
  $('auth-message').textContent = ''
  try {
    const pair = (await request('POST', register ? '/auth/register' : '/auth/login', body)).data
    f.password.value = ''
    saveSession(pair)
    showApp()
  } catch (err) {
    $('auth-message').textContent = !(err instanceof HttpError)
      ? 'Signing in needs a network connection.'
      : err.status === 401 ? 'Wrong email or password.'
        : err.status === 409 ? 'An account with this email exists: log in instead.'
          : err.message
  }
})

$('logout').addEventListener('click', async () => {
  const data = sync
  if (data && data.pending.count === 0) {
    // nothing is waiting for the server: leave no copy of the user's data in this browser
    await data.persistence.clearData().catch(() => {})
    localStorage.removeItem(`magni.summary.${data.user.id}`)
  }
  signOut('You are signed out.', true)
})

// Another tab signed in or out.
window.addEventListener('storage', (event) => {
  if (event.key !== SESSION_KEY) return
  const stored = readSession()
  if (!stored && session) signOut('You were signed out in another tab.', false)
  else if (stored && !session) { session = stored; showApp() } else if (stored) { session = stored; scheduleRefresh(); if (sync) sync.provider.params = { token: session.access } }
})

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('./sw.js', { scope: './' }).catch(() => {})
}

if (session) showApp()
else showAuth()
