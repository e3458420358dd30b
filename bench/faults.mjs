// The clients of the reliability benchmarks (slow_reader.py, reconnect_storm.py,
// idle_rooms.py, soak.py): many y-websocket clients in one Node process.
//
// Each client speaks the y-websocket binary protocol (y-protocols' sync step 1 / step 2
// / update over `ws`) with a real Yjs document, as bench/loadgen.mjs does. Every wait
// has a deadline, every loop a bound, and the process exits after `hardLimitMs`
// whatever happens.
//
//   node bench/faults.mjs '<json config>'
//
// Modes (the Python script that drives each one says what its fields mean):
//   slow   one room of N editing clients and one more client that stops reading when
//          stdin says "pause"; latency from send to receipt, split by phase
//   storm  connect clients to documents with history, wait for the server to go away
//          and come back, then reconnect every client at once on "go"; verify each
//          holds the expected state
//   open   open documents (connect, sync, check, close), a bounded number at once
//   soak   W1 rate for a long time, with progress lines every `tickMs`
//
// Output: JSON lines on stdout; events are {"event": ...}, the last line is
// {"result": {...}}.

import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as awarenessProtocol from 'y-protocols/awareness'
import { cfg, emit, now, sleep, urlFor, waitFor } from './driven.mjs'

const REMOTE = Symbol('remote')

const MSG_SYNC = 0
const STEP1 = 0
const STEP2 = 1
const UPDATE = 2

// One client. With `apply` off it never applies what the server sends (a W1 writer
// only ever touches its own keys, so its edits stay valid without the others'), and
// hands each update to `onRemote` instead: a client of a long soak then holds only its
// own edits, not every tombstone of the room.
class Peer {
  constructor (tokenIndex, name, { apply = true } = {}) {
    this.tokenIndex = tokenIndex
    this.name = name
    this.apply = apply
    this.doc = new Y.Doc()
    this.ws = null
    this.synced = false
    this.closed = false
    this.closeInfo = null
    this.bytesIn = 0
    this.onRemote = null
    this.doc.on('update', (update, origin) => {
      if (origin !== REMOTE && this.ws !== null && this.ws.readyState === WebSocket.OPEN) {
        this.send(UPDATE, update)
      }
    })
  }

  send (syncType, payload) {
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_SYNC)
    encoding.writeVarUint(enc, syncType)
    encoding.writeVarUint8Array(enc, payload)
    this.ws.send(encoding.toUint8Array(enc))
  }

  // Resolves with the milliseconds from creating the socket to holding the server's
  // step 2; rejects on an error, a close or the timeout.
  connect (timeoutMs) {
    this.synced = false
    this.closed = false
    return new Promise((resolve, reject) => {
      const t0 = now()
      let done = false
      const finish = (err) => {
        if (done) return
        done = true
        clearTimeout(timer)
        if (err) { ws.terminate(); reject(err) } else resolve(now() - t0)
      }
      const timer = setTimeout(() => finish(new Error(`${this.name}: not synced within ${timeoutMs} ms`)), timeoutMs)
      const ws = new WebSocket(urlFor(this.tokenIndex, this.name), { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 })
      ws.binaryType = 'nodebuffer'
      this.ws = ws
      this.onSynced = () => finish(null)
      ws.on('open', () => this.send(STEP1, Y.encodeStateVector(this.doc)))
      ws.on('message', (data) => { this.bytesIn += data.length; this.onMessage(data) })
      ws.on('error', (err) => finish(new Error(`${this.name}: ${err.message}`)))
      ws.on('close', (code, reason) => {
        if (this.ws === ws) {
          this.closed = true
          this.closeInfo = `${code} ${reason}`
          this.onClose?.(code)
        }
        finish(new Error(`${this.name}: closed ${code} ${reason}`))
      })
    })
  }

  onMessage (data) {
    const dec = decoding.createDecoder(data)
    if (decoding.readVarUint(dec) !== MSG_SYNC) return // awareness and the rest
    const syncType = decoding.readVarUint(dec)
    const payload = decoding.readVarUint8Array(dec)
    if (syncType === STEP1) {
      this.send(STEP2, Y.encodeStateAsUpdate(this.doc, payload))
      return
    }
    if (syncType !== STEP2 && syncType !== UPDATE) return
    if (this.apply) Y.applyUpdate(this.doc, payload, REMOTE)
    this.onRemote?.(payload)
    if (syncType === STEP2 && !this.synced) {
      this.synced = true
      this.onSynced?.()
    }
  }

  // Stop reading the socket: the kernel's buffers fill, then the server's.
  pause () { this.ws._socket?.pause() }
  resume () { this.ws._socket?.resume() }

  close () {
    if (this.ws !== null && this.ws.readyState <= WebSocket.OPEN) this.ws.close()
  }

  destroy () {
    if (this.ws !== null) this.ws.terminate()
    this.doc.destroy()
  }
}

// Connect `peers` with at most `limit` handshakes in flight (all at once if `limit` is
// 0); a peer whose attempt fails tries again after `retryMs`, at most `attempts` times.
async function openAll (peers, { limit = 200, timeoutMs = 60000, attempts = 1, retryMs = 250 } = {}) {
  const times = new Array(peers.length).fill(null)
  let next = 0
  let failed = 0
  let retries = 0
  let firstError = null
  const one = async (i) => {
    for (let a = 1; a <= attempts; a++) {
      try {
        times[i] = await peers[i].connect(timeoutMs)
        return
      } catch (err) {
        firstError ??= err.message
        if (a < attempts) { retries++; await sleep(retryMs * (0.5 + Math.random())) }
      }
    }
    failed++
  }
  const worker = async () => { while (next < peers.length) await one(next++) }
  const width = limit > 0 ? Math.min(limit, peers.length) : peers.length
  await Promise.all(Array.from({ length: width }, worker))
  return { times, failed, retries, firstError }
}

const sortedOf = (values) => Float64Array.from(values).sort()
const percentile = (sorted, p) => sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]

// A fixed-size latency histogram (0.05 ms buckets up to 60 s): a soak delivers millions.
class Histogram {
  constructor () { this.counts = new Uint32Array(1200000); this.n = 0; this.max = 0 }
  add (ms) {
    this.counts[Math.min(this.counts.length - 1, Math.max(0, Math.floor(ms * 20)))]++
    this.n++
    if (ms > this.max) this.max = ms
  }

  percentile (p) {
    if (this.n === 0) return null
    const want = Math.min(this.n, Math.floor(p * this.n) + 1)
    let seen = 0
    for (let b = 0; b < this.counts.length; b++) {
      seen += this.counts[b]
      if (seen >= want) return (b + 0.5) / 20
    }
    return this.max
  }
}

// The W1 edit: `i` is the edit's number, so a receiver can tell which edit arrived.
const w1Value = (i, extra) => ({ name: 'bench press', sets: 3, reps: 8, weight: 60 + (i % 40) / 2, i, ...extra })

// Each (writer's Yjs client id, edit number) an update carries, for W1 edits.
function editsIn (update, onEdit) {
  for (const struct of Y.decodeUpdate(update).structs) {
    if (!(struct instanceof Y.Item) || !(struct.content instanceof Y.ContentAny)) continue
    for (const v of struct.content.arr) {
      if (v !== null && typeof v === 'object' && Number.isInteger(v.i)) onEdit(struct.id.client, v.i)
    }
  }
}

// W1 at a fixed rate: `peers` are docs x clientsPerDoc, grouped by document; each sends
// `rate` edits a second until `stop()`. Tracks every delivery and its latency.
function rateLoad (peers, clientsPerDoc, rate, maxEdits, extra = {}) {
  const n = peers.length
  const others = clientsPerDoc - 1
  const sentAt = peers.map(() => new Float64Array(maxEdits))
  const seen = peers.map(() => new Uint8Array(maxEdits))
  const sent = new Int32Array(n)
  const byClientId = new Map(peers.map((p, ci) => [p.doc.clientID, ci]))
  const state = { delivered: 0, duplicates: 0, unknown: 0, parseErrors: 0, stopped: false }
  const listeners = []
  peers.forEach((peer) => {
    peer.onRemote = (payload) => {
      const t = now()
      try {
        editsIn(payload, (clientId, seq) => {
          const from = byClientId.get(clientId)
          if (from === undefined || seq >= sent[from]) { state.unknown++; return }
          if (peers[from] === peer) return // its own edit coming back in a step 2
          if (++seen[from][seq] > others) { state.duplicates++; return }
          state.delivered++
          for (const l of listeners) l(from, seq, t - sentAt[from][seq], sentAt[from][seq])
        })
      } catch (err) {
        state.parseErrors++
      }
    }
  })
  const timers = []
  const t0 = now()
  const period = 1000 / rate
  peers.forEach((peer, ci) => {
    const phase = Math.random() * period
    let k = 0
    const tick = () => {
      if (state.stopped || sent[ci] >= maxEdits) return
      if (!peer.closed) {
        const seq = sent[ci]++
        sentAt[ci][seq] = now()
        peer.doc.getMap('workouts').set(`${ci}:${seq % 16}`, w1Value(seq, extra))
      }
      k++
      timers[ci] = setTimeout(tick, Math.max(0, t0 + phase + k * period - now()))
    }
    timers[ci] = setTimeout(tick, phase)
  })
  return {
    state,
    sent,
    listeners,
    totalSent: () => sent.reduce((a, b) => a + b, 0),
    expected: () => sent.reduce((a, b) => a + b, 0) * others,
    stop () { state.stopped = true; timers.forEach(clearTimeout) },
    // Drain what is still on its way, bounded.
    async drain (ms) {
      const until = now() + ms
      while (state.delivered < this.expected() && now() < until) await sleep(20)
    }
  }
}

// A fresh client per document must hold, under each writer's keys, the last edit it made.
async function verifyLastWrites (prefix, docs, clientsPerDoc, sent, tokenOf) {
  const fresh = []
  for (let d = 0; d < docs; d++) fresh.push(new Peer(tokenOf(d), `${prefix}-${d}`))
  const open = await openAll(fresh, { limit: 50, timeoutMs: 60000 })
  let error = open.failed > 0 ? `${open.failed} fresh clients could not sync: ${open.firstError}` : null
  for (let d = 0; d < docs && error === null; d++) {
    const map = fresh[d].doc.getMap('workouts')
    for (let k = 0; k < clientsPerDoc && error === null; k++) {
      const ci = d * clientsPerDoc + k
      for (let slot = 0; slot < 16 && slot < sent[ci]; slot++) {
        let last = sent[ci] - 1
        while (last % 16 !== slot) last--
        const v = map.get(`${ci}:${slot}`)
        if (v === undefined || v.i !== last) {
          error = `doc ${d}: key ${ci}:${slot} holds ${v === undefined ? 'nothing' : v.i}, its writer last wrote ${last}`
          break
        }
      }
    }
  }
  fresh.forEach((p) => p.destroy())
  return { converged: error === null, convergence_error: error }
}

// -- slow: one client stops reading ------------------------------------------------------

// `clients` peers edit one room at `rate`; one more peer joins and reads until stdin says
// "pause", then stops reading; "dropped" marks the moment the server dropped it (the
// driver reads that from the server's log) and lets the peer read again, so it sees the
// reset; "stop" ends the load. Latency is split by the phase its edit was sent in.
async function slow () {
  const { clients, rate, docPrefix } = cfg
  const docName = `${docPrefix}-0`
  const peers = Array.from({ length: clients }, () => new Peer(0, docName, { apply: false }))
  const laggard = new Peer(0, docName, { apply: false })
  const open = await openAll([...peers, laggard], { limit: 50, timeoutMs: 30000 })
  if (open.failed > 0) return { ok: false, error: `${open.failed} clients could not connect: ${open.firstError}` }
  let laggardUpdates = 0
  laggard.onRemote = () => { laggardUpdates++ }
  // It stops reading, not talking: like a y-websocket provider renewing its awareness
  // state (every 15 s there; every 10 s here, so that each 15 s keep-alive sweep hears
  // it), so what drops it is its send budget, not the keep-alive.
  const awareness = new awarenessProtocol.Awareness(laggard.doc)
  awareness.setLocalState({ user: 'laggard' })
  const renew = setInterval(() => {
    if (laggard.ws.readyState !== WebSocket.OPEN) return
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 1) // awareness
    encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(awareness, [laggard.doc.clientID]))
    laggard.ws.send(encoding.toUint8Array(enc))
  }, cfg.renewMs ?? 10000)
  let laggardClosedAt = null
  laggard.onClose = () => { laggardClosedAt = now() }
  laggard.ws.on('error', () => { laggardClosedAt ??= now() })
  const maxEdits = Math.ceil(rate * (cfg.maxSeconds ?? 600)) + 2
  const load = rateLoad(peers, clients, rate, maxEdits, { notes: 'n'.repeat(cfg.editBytes ?? 0) })
  const marks = { start: now(), pause: null, dropped: null, stop: null }
  const samples = { warmup: [], before: [], while: [], after: [] }
  const warmupUntil = marks.start + (cfg.warmupMs ?? 0) // the first edits pay for JIT and caches
  load.listeners.push((from, seq, ms, sentAt) => {
    const phase = sentAt < warmupUntil ? 'warmup'
      : marks.pause === null || sentAt < marks.pause ? 'before'
      : marks.dropped === null || sentAt < marks.dropped ? 'while' : 'after'
    samples[phase].push(ms)
  })
  emit({ event: 'load-start' })
  const limit = (cfg.maxSeconds ?? 600) * 1000
  let bytesAtPause = null
  if (await waitFor('pause', limit)) {
    marks.pause = now()
    bytesAtPause = laggard.bytesIn
    laggard.pause()
    emit({ event: 'paused' })
    if (await waitFor('dropped', limit)) {
      marks.dropped = now()
      laggard.resume()
      emit({ event: 'marked' })
    }
    await waitFor('stop', limit)
  }
  marks.stop = now()
  clearInterval(renew)
  awareness.destroy()
  load.stop()
  await load.drain(cfg.drainMs ?? 15000)
  // The laggard, reading again, must find its connection gone (bounded wait).
  const until = now() + 10000
  while (laggardClosedAt === null && now() < until) await sleep(50)
  const stats = (values) => {
    const sorted = sortedOf(values)
    return { n: sorted.length, p50_ms: percentile(sorted, 0.5), p99_ms: percentile(sorted, 0.99), max_ms: sorted.length ? sorted[sorted.length - 1] : null }
  }
  const closed = peers.filter((p) => p.closed)
  const result = {
    ok: true,
    clients,
    edits_sent: load.totalSent(),
    deliveries: load.state.delivered,
    deliveries_expected: load.expected(),
    parse_errors: load.state.parseErrors,
    closed: closed.length,
    first_close: closed[0]?.closeInfo ?? null,
    phases: { warmup: stats(samples.warmup), before: stats(samples.before), while: stats(samples.while), after: stats(samples.after) },
    while_s: marks.dropped === null ? null : (marks.dropped - marks.pause) / 1000,
    laggard_bytes_at_pause: bytesAtPause,
    laggard_bytes_read: laggard.bytesIn,
    laggard_updates_read: laggardUpdates,
    laggard_closed: laggardClosedAt !== null,
    laggard_close: laggard.closeInfo
  }
  const errors = []
  if (marks.dropped === null) errors.push('the server never dropped the client that stopped reading')
  if (closed.length) errors.push(`${closed.length} reading clients were closed (${result.first_close})`)
  if (result.deliveries !== result.deliveries_expected) errors.push(`${result.deliveries} of ${result.deliveries_expected} deliveries arrived`)
  if (!result.laggard_closed) errors.push('the client that stopped reading still had its connection when it read again')
  Object.assign(result, await verifyLastWrites(docPrefix, 1, clients, load.sent, () => 0))
  if (!result.converged) errors.push(result.convergence_error)
  result.ok = errors.length === 0
  result.error = errors.join('; ') || null
  peers.forEach((p) => p.destroy())
  laggard.destroy()
  return result
}

// -- storm: everyone reconnects at once -------------------------------------------------

const svEqual = (doc, expectedB64) => {
  const have = Y.decodeStateVector(Y.encodeStateVector(doc))
  const want = Y.decodeStateVector(Buffer.from(expectedB64, 'base64'))
  if (have.size !== want.size) return false
  for (const [client, clock] of want) if (have.get(client) !== clock) return false
  return true
}

// Which peers do not hold `expected[d]` ({keys, sv}: the key count of `workouts` and the
// state vector, base64) of their document.
const mismatched = (peers, clientsPerDoc, expected) => peers.filter((p, i) => {
  const want = expected[Math.floor(i / clientsPerDoc)]
  return p.doc.getMap('workouts').size !== want.keys || !svEqual(p.doc, want.sv)
}).length

// `docs` x `clientsPerDoc` peers sync documents that have history (`before`), then wait
// for "go": by then the server has gone away and come back, with more stored
// (`after`); every peer reconnects at that moment, all at once, and must end up with
// exactly `after`.
async function storm () {
  const { docs, clientsPerDoc, docPrefix, before, after } = cfg
  const peers = []
  for (let d = 0; d < docs; d++) {
    for (let c = 0; c < clientsPerDoc; c++) peers.push(new Peer(d, `${docPrefix}-${d}`))
  }
  const first = await openAll(peers, { limit: 200, timeoutMs: 60000 })
  const firstBad = mismatched(peers, clientsPerDoc, before)
  emit({ event: 'connected', failed: first.failed, mismatched: firstBad })
  if (first.failed > 0 || firstBad > 0) {
    peers.forEach((p) => p.destroy())
    return { ok: false, error: `first sync: ${first.failed} failed (${first.firstError}), ${firstBad} hold the wrong state` }
  }
  if (!await waitFor('go', cfg.waitGoMs ?? 300000)) {
    peers.forEach((p) => p.destroy())
    return { ok: false, error: 'no "go"' }
  }
  const stillOpen = peers.filter((p) => !p.closed).length
  const cpu = process.cpuUsage()
  const t0 = now()
  const storm = await openAll(peers, { limit: 0, timeoutMs: cfg.connectTimeoutMs ?? 60000, attempts: cfg.attempts ?? 20, retryMs: 250 })
  const allSynced = (now() - t0) / 1000
  const used = process.cpuUsage(cpu)
  emit({ event: 'synced' })
  const bad = mismatched(peers, clientsPerDoc, after)
  const times = sortedOf(storm.times.filter((t) => t !== null))
  const result = {
    ok: storm.failed === 0 && bad === 0 && stillOpen === 0,
    clients: peers.length,
    open_when_go: stillOpen,
    failed: storm.failed,
    retries: storm.retries,
    first_error: storm.firstError,
    mismatched: bad,
    all_synced_s: allSynced,
    sync_p50_ms: percentile(times, 0.5),
    sync_p99_ms: percentile(times, 0.99),
    sync_max_ms: times.length ? times[times.length - 1] : null,
    client_cpu_pct: 100 * (used.user + used.system) / 1000 / Math.max(allSynced * 1000, 1e-6)
  }
  if (!result.ok) {
    result.error = stillOpen ? `${stillOpen} clients were never disconnected`
      : `${storm.failed} clients did not sync (${storm.firstError}), ${bad} hold the wrong state`
  }
  peers.forEach((p) => p.destroy())
  return result
}

// -- open: documents opened and closed -------------------------------------------------

// Open `docs` documents named `${docPrefix}-${i}` (token `i % tokens`), at most
// `concurrency` at once: each peer connects, syncs, checks it holds `keys` entries in
// `workouts`, and closes before the next one opens.
async function openDocs () {
  const { docs, docPrefix, keys } = cfg
  let next = 0
  let failed = 0
  let wrong = 0
  let firstError = null
  const t0 = now()
  const worker = async () => {
    while (next < docs) {
      const i = next++
      const peer = new Peer(i, `${docPrefix}-${i}`)
      try {
        await peer.connect(cfg.connectTimeoutMs ?? 60000)
        if (keys != null && peer.doc.getMap('workouts').size !== keys) wrong++
      } catch (err) {
        failed++
        firstError ??= err.message
      }
      await new Promise((resolve) => {
        if (peer.closed || peer.ws === null) { resolve(); return }
        const timer = setTimeout(resolve, 5000)
        peer.ws.once('close', () => { clearTimeout(timer); resolve() })
        if (cfg.drop) peer.ws.terminate() // a phone losing its network: no close frame
        else peer.close()
      })
      peer.destroy()
    }
  }
  await Promise.all(Array.from({ length: Math.min(cfg.concurrency ?? 100, docs) }, worker))
  const seconds = (now() - t0) / 1000
  return {
    ok: failed === 0 && wrong === 0,
    error: failed || wrong ? `${failed} failed (${firstError}), ${wrong} held the wrong number of entries` : null,
    docs,
    failed,
    wrong,
    seconds,
    opens_per_s: docs / seconds
  }
}

// -- soak -----------------------------------------------------------------------------

async function soak () {
  const { docs, clientsPerDoc, rate, durationMs, docPrefix } = cfg
  const peers = []
  for (let d = 0; d < docs; d++) {
    for (let c = 0; c < clientsPerDoc; c++) peers.push(new Peer(d, `${docPrefix}-${d}`, { apply: false }))
  }
  const open = await openAll(peers, { limit: 50, timeoutMs: 30000 })
  if (open.failed > 0) return { ok: false, error: `${open.failed} clients could not connect: ${open.firstError}` }
  const maxEdits = Math.ceil(rate * durationMs / 1000) + 2
  const load = rateLoad(peers, clientsPerDoc, rate, maxEdits)
  const total = new Histogram()
  let tick = []
  load.listeners.push((from, seq, ms) => { total.add(ms); tick.push(ms) })
  emit({ event: 'load-start' })
  const t0 = now()
  const tickMs = cfg.tickMs ?? 30000
  let lastTick = t0
  while (now() - t0 < durationMs) {
    await sleep(Math.min(250, Math.max(0, durationMs - (now() - t0))))
    if (now() - lastTick >= tickMs) {
      lastTick = now()
      const sorted = sortedOf(tick)
      tick = []
      emit({
        event: 'tick',
        t_s: (now() - t0) / 1000,
        sent: load.totalSent(),
        delivered: load.state.delivered,
        closed: peers.filter((p) => p.closed).length,
        p50_ms: percentile(sorted, 0.5),
        p99_ms: percentile(sorted, 0.99)
      })
    }
  }
  load.stop()
  emit({ event: 'load-end' })
  await load.drain(cfg.drainMs ?? 15000)
  const closed = peers.filter((p) => p.closed)
  const result = {
    ok: closed.length === 0 && load.state.delivered === load.expected() && load.state.parseErrors === 0,
    clients: peers.length,
    elapsed_s: (now() - t0) / 1000,
    edits_sent: load.totalSent(),
    deliveries: load.state.delivered,
    deliveries_expected: load.expected(),
    duplicates: load.state.duplicates,
    unknown: load.state.unknown,
    parse_errors: load.state.parseErrors,
    closed: closed.length,
    first_close: closed[0]?.closeInfo ?? null,
    latency_p50_ms: total.percentile(0.5),
    latency_p99_ms: total.percentile(0.99),
    latency_max_ms: total.max
  }
  if (!result.ok) {
    result.error = closed.length ? `${closed.length} clients were closed (${result.first_close})`
      : `${result.deliveries} of ${result.deliveries_expected} deliveries arrived`
  }
  Object.assign(result, await verifyLastWrites(docPrefix, docs, clientsPerDoc, load.sent, (d) => d))
  if (!result.converged) result.error = [result.error, result.convergence_error].filter(Boolean).join('; ')
  result.ok = result.ok && result.converged
  peers.forEach((p) => p.destroy())
  return result
}

const modes = { slow, storm, open: openDocs, soak }
try {
  const result = await modes[cfg.mode]()
  emit({ result })
  process.exit(0)
} catch (err) {
  emit({ result: { ok: false, error: String(err?.stack ?? err) } })
  process.exit(1)
}
