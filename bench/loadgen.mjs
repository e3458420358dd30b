// The load generator of bench/run.py: many y-websocket clients in one Node process.
//
// Each client holds a real Yjs document and speaks the y-websocket binary protocol
// (y-protocols' sync step 1 / step 2 / update over `ws`) to the server under test; for
// Hocuspocus every message carries its framing (the document name first, then the
// message; an Auth token message before sync). Every wait has a deadline, every loop
// a bound, and the process exits after `hardLimitMs` whatever happens.
//
//   node bench/loadgen.mjs '<json config>'      (see README.md and run.py for the fields)
//
// Modes:
//   w1     fan-out: docs x clientsPerDoc clients edit a Y.Map (closed loop with a window,
//          or open loop at a fixed rate); latency from send to receipt at the others;
//          then convergence is verified against fresh clients.
//   w2     initial sync: build one document (many single-edit updates, or one big
//          update), then time fresh clients from socket creation to the state applied
//          (warm: the builder stays connected so the document stays in memory).
//   w2sync one fresh client against an already built document (cold, after a restart).
//   w3     connections: open N sockets, each to its own document, with the full
//          handshake, at most `concurrency` opening at once; hold them until stdin
//          says "close" (or holdMs passes).
//
// Output: JSON lines on stdout; the last one is the result ({"result": {...}}).

import WebSocket, { WebSocketServer } from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { cfg, emit, now, sleep, urlFor, waitFor } from './driven.mjs'

const HOCUS = cfg.proto === 'hocuspocus'
const REMOTE = Symbol('remote')

// -- one client -------------------------------------------------------------------------

const MSG_SYNC = 0
const MSG_AWARENESS = 1
const MSG_AUTH = 2
const MSG_SYNC_REPLY = 4 // Hocuspocus: a sync message that does not ask for step 1 back
const STEP1 = 0
const STEP2 = 1
const UPDATE = 2

class Client {
  constructor (docIndex, name, doc = new Y.Doc()) {
    this.docIndex = docIndex
    this.name = name
    this.doc = doc
    this.ws = null
    this.synced = false
    this.closed = false
    this.closeInfo = null
    this.received = 0 // update messages received
    this.lazy = false
    this.pending = []
    this.doc.on('update', (update, origin) => {
      if (origin !== REMOTE && this.ws !== null && this.ws.readyState === WebSocket.OPEN) {
        this.send(MSG_SYNC, UPDATE, update)
      }
    })
  }

  frame (writeBody) {
    const enc = encoding.createEncoder()
    if (HOCUS) encoding.writeVarString(enc, this.name)
    writeBody(enc)
    return encoding.toUint8Array(enc)
  }

  send (type, syncType, payload) {
    this.ws.send(this.frame((enc) => {
      encoding.writeVarUint(enc, type)
      encoding.writeVarUint(enc, syncType)
      encoding.writeVarUint8Array(enc, payload)
    }))
  }

  // Resolves with {connectMs, openMs} once the server's step 2 is applied.
  connect (timeoutMs) {
    return new Promise((resolve, reject) => {
      const t0 = now()
      let tOpen = null
      let done = false
      const finish = (err) => {
        if (done) return
        done = true
        clearTimeout(timer)
        if (err) reject(err)
        else resolve({ connectMs: now() - t0, openMs: now() - tOpen })
      }
      const timer = setTimeout(() => finish(new Error(`${this.name}: not synced within ${timeoutMs} ms`)), timeoutMs)
      const ws = new WebSocket(urlFor(this.docIndex, this.name), { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 })
      ws.binaryType = 'nodebuffer'
      this.ws = ws
      this.onSynced = () => finish(null)
      ws.on('open', () => {
        tOpen = now()
        if (HOCUS) {
          ws.send(this.frame((enc) => {
            encoding.writeVarUint(enc, MSG_AUTH)
            encoding.writeVarUint(enc, 0) // token
            encoding.writeVarString(enc, cfg.hocuspocusToken ?? 'bench')
            encoding.writeVarString(enc, '4.8.0') // provider version
          }))
        }
        this.send(MSG_SYNC, STEP1, Y.encodeStateVector(this.doc))
      })
      ws.on('message', (data) => this.onMessage(data))
      ws.on('error', (err) => finish(new Error(`${this.name}: ${err.message}`)))
      ws.on('close', (code, reason) => {
        this.closed = true
        this.closeInfo = `${code} ${reason}`
        finish(new Error(`${this.name}: closed ${code} ${reason}`))
      })
    })
  }

  onMessage (data) {
    const dec = decoding.createDecoder(data)
    if (HOCUS) decoding.readVarString(dec)
    const type = decoding.readVarUint(dec)
    if (type === MSG_SYNC || type === MSG_SYNC_REPLY) {
      const syncType = decoding.readVarUint(dec)
      const payload = decoding.readVarUint8Array(dec)
      if (syncType === STEP1) {
        this.send(MSG_SYNC, STEP2, Y.encodeStateAsUpdate(this.doc, payload))
      } else if (syncType === STEP2 || syncType === UPDATE) {
        this.received++
        if (this.lazy) { // W1 under load: note what arrived, apply it all afterwards
          this.pending.push(payload)
          this.onRemoteUpdate(payload)
          return
        }
        const tApply = now()
        Y.applyUpdate(this.doc, payload, REMOTE)
        if (syncType === STEP2) this.applyMs = (this.applyMs ?? 0) + now() - tApply
        this.onApplied?.()
        if (syncType === STEP2 && !this.synced) {
          this.synced = true
          this.onSynced?.()
        }
      }
    } else if (type === MSG_AUTH && HOCUS) {
      const authType = decoding.readVarUint(dec)
      if (authType === 1) { // permission denied
        this.ws.close()
      }
    }
    // awareness (1), query awareness (3), Hocuspocus' sync status (8) and the rest: ignored
  }

  // Apply what arrived while `lazy`, in one transaction.
  applyPending () {
    const pending = this.pending
    this.pending = []
    this.lazy = false
    Y.transact(this.doc, () => { for (const u of pending) Y.applyUpdate(this.doc, u, REMOTE) }, REMOTE)
  }

  close () {
    if (this.ws !== null && this.ws.readyState <= WebSocket.OPEN) this.ws.close()
    this.doc.destroy()
  }
}

// The W1 edit index (the `i` of `{name, sets, reps, weight, i}`) of each Y.Map entry an
// update carries, with the Yjs client id that wrote it: a reader of the v1 update format
// that decodes only what W1 needs, so that the load generator's core is spent on the
// protocol rather than on keeping 200 replicas or building objects it throws away.
// An entry that is not such an object gives `null`; item content other than JSON
// values (which W1 never writes) throws. The final convergence check applies every
// update in full.
function readEditIndexes (update, onEdit) {
  const dec = decoding.createDecoder(update)
  const groups = decoding.readVarUint(dec)
  for (let g = 0; g < groups; g++) {
    const structs = decoding.readVarUint(dec)
    const client = decoding.readVarUint(dec)
    decoding.readVarUint(dec) // clock
    for (let s = 0; s < structs; s++) {
      const info = decoding.readUint8(dec)
      const ref = info & 31
      if (ref === 0 || ref === 10) { decoding.readVarUint(dec); continue } // GC, Skip
      if (info & 128) { decoding.readVarUint(dec); decoding.readVarUint(dec) } // origin
      if (info & 64) { decoding.readVarUint(dec); decoding.readVarUint(dec) } // right origin
      if ((info & 192) === 0) { // parent info
        if (decoding.readVarUint(dec) === 1) skipVarString(dec)
        else { decoding.readVarUint(dec); decoding.readVarUint(dec) }
        if (info & 32) skipVarString(dec) // parentSub: the map key
      }
      if (ref === 1) { decoding.readVarUint(dec); continue } // ContentDeleted
      if (ref !== 8) throw new Error(`unexpected item content ${ref}`)
      const len = decoding.readVarUint(dec)
      for (let k = 0; k < len; k++) onEdit(client, readEditIndex(dec))
    }
  }
}

const skipVarString = (dec) => {
  const len = decoding.readVarUint(dec) // first: reading the length moves dec.pos
  dec.pos += len
}
const KEY_I = 'i'.charCodeAt(0)

// One lib0 `any` value (the tags of lib0's writeAny), skipped without building it;
// returns its integer `i` if it is an object that has one, else null.
function readEditIndex (dec) {
  const tag = decoding.readUint8(dec)
  if (tag !== 118) { skipAny(dec, tag); return null }
  let index = null
  for (let n = decoding.readVarUint(dec); n > 0; n--) {
    const keyLen = decoding.readVarUint(dec)
    const isI = keyLen === 1 && dec.arr[dec.pos] === KEY_I
    dec.pos += keyLen
    const valueTag = decoding.readUint8(dec)
    if (isI && valueTag === 125) index = decoding.readVarInt(dec)
    else skipAny(dec, valueTag)
  }
  return index
}

function skipAny (dec, tag) {
  switch (tag) {
    case 127: case 126: case 121: case 120: return // undefined, null, false, true
    case 125: decoding.readVarInt(dec); return
    case 124: dec.pos += 4; return // float32
    case 123: case 122: dec.pos += 8; return // float64, bigint64
    case 119: case 116: skipVarString(dec); return // string, Uint8Array: length + bytes
    case 118: // object
      for (let n = decoding.readVarUint(dec); n > 0; n--) { skipVarString(dec); skipAny(dec, decoding.readUint8(dec)) }
      return
    case 117: // array
      for (let n = decoding.readVarUint(dec); n > 0; n--) skipAny(dec, decoding.readUint8(dec))
      return
    default: throw new Error(`unknown any tag ${tag}`)
  }
}

// Open clients with at most `limit` handshakes in flight; returns per-client timings.
async function openAll (clients, limit, timeoutMs) {
  const times = new Array(clients.length)
  let next = 0
  let failed = 0
  let firstError = null
  const worker = async () => {
    while (next < clients.length) {
      const i = next++
      try {
        times[i] = await clients[i].connect(timeoutMs)
      } catch (err) {
        failed++
        firstError ??= err.message
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, clients.length) }, worker))
  return { times, failed, firstError }
}

// JSON with object keys sorted: a server built on yrs re-encodes a plain object's
// entries in its own order, which is the same content.
const canonical = (v) => {
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']'
  if (v !== null && typeof v === 'object') {
    return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + canonical(v[k])).join(',') + '}'
  }
  return JSON.stringify(v)
}

const stateKey = (doc) => Buffer.from(Y.encodeStateVector(doc)).toString('base64')

const percentile = (sorted, p) => sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]

const cpuStart = () => ({ cpu: process.cpuUsage(), t: now() })
const cpuPct = (start) => {
  const used = process.cpuUsage(start.cpu)
  return 100 * (used.user + used.system) / 1000 / Math.max(now() - start.t, 1e-6)
}

// -- W1: fan-out -------------------------------------------------------------------------

async function w1 () {
  const { docs, clientsPerDoc, edits, window: win, durationMs, rate } = cfg
  const prefix = cfg.docPrefix
  const clients = []
  for (let d = 0; d < docs; d++) {
    for (let c = 0; c < clientsPerDoc; c++) clients.push(new Client(d, `${prefix}-${d}`))
  }
  const open = await openAll(clients, cfg.concurrency ?? 200, cfg.connectTimeoutMs ?? 30000)
  if (open.failed > 0) {
    return { ok: false, error: `${open.failed} clients could not connect: ${open.firstError}` }
  }
  const maxEdits = rate ? Math.ceil(rate * durationMs / 1000) + 1 : edits
  const n = clients.length
  const others = clientsPerDoc - 1
  const sentAt = clients.map(() => new Float64Array(maxEdits))
  const seen = clients.map(() => new Uint16Array(maxEdits))
  const sent = new Int32Array(n)
  const inflight = new Int32Array(n)
  let completed = 0
  let completedInWindow = 0
  let deliveries = 0
  let deliveriesInWindow = 0
  let unknown = 0
  let lat = new Float64Array(1 << 16)
  let latN = 0
  let stopSending = false
  let tEnd = null
  let tStart = 0
  let deadline = 0
  const value = (i) => ({ name: 'bench press', sets: 3, reps: 8, weight: 60 + (i % 40) / 2, i })

  const sendEdit = (ci) => {
    const seq = sent[ci]++
    inflight[ci]++
    sentAt[ci][seq] = now()
    const client = clients[ci]
    client.doc.getMap('workouts').set(`${ci}:${seq % 16}`, value(seq))
  }
  const pump = (ci) => {
    if (rate) return
    while (!stopSending && inflight[ci] < win && sent[ci] < edits) sendEdit(ci)
  }
  let allDone = null
  const allDonePromise = new Promise((resolve) => { allDone = resolve })
  const totalPlanned = () => rate ? null : n * edits
  const maybeAllDone = () => {
    const planned = totalPlanned()
    if (planned !== null && completed === planned) allDone()
    if (stopSending && sent.reduce((a, b) => a + b, 0) === completed) allDone()
  }

  const byClientId = new Map(clients.map((c, ci) => [c.doc.clientID, ci]))
  let parseErrors = 0
  clients.forEach((client, ci) => {
    client.lazy = true
    client.onRemoteUpdate = (payload) => {
      const t = now()
      try {
        readEditIndexes(payload, (clientId, seq) => {
          const from = byClientId.get(clientId)
          if (from === ci) return // Hocuspocus and pycrdt-websocket echo the sender's own
          if (from === undefined || seq === null || seq < 0 || seq >= sent[from]) {
            unknown++
            return
          }
          if (lat.length === latN) {
            const bigger = new Float64Array(lat.length * 2)
            bigger.set(lat)
            lat = bigger
          }
          lat[latN++] = t - sentAt[from][seq]
          deliveries++
          if (tEnd === null && t <= deadline) deliveriesInWindow++
          if (++seen[from][seq] === others) {
            completed++
            inflight[from]--
            if (tEnd === null && t <= deadline) completedInWindow++
            pump(from)
            maybeAllDone()
          }
        })
      } catch (err) {
        parseErrors++
      }
    }
  })

  emit({ event: 'load-start' })
  const cpu = cpuStart()
  tStart = now()
  deadline = tStart + durationMs
  const timers = []
  if (rate) {
    const period = 1000 / rate
    clients.forEach((_, ci) => {
      const phase = Math.random() * period
      let k = 0
      const tick = () => {
        if (stopSending || k >= maxEdits) return
        sendEdit(ci)
        k++
        const due = tStart + phase + k * period
        if (due >= deadline) return
        timers.push(setTimeout(tick, Math.max(0, due - now())))
      }
      timers.push(setTimeout(tick, phase))
    })
  } else {
    clients.forEach((_, ci) => pump(ci))
  }
  const limit = setTimeout(() => { stopSending = true; maybeAllDone() }, durationMs)
  await Promise.race([allDonePromise, sleep(durationMs)])
  tEnd = Math.min(now(), deadline)
  stopSending = true
  const cpuPctLoad = cpuPct(cpu)
  emit({ event: 'load-end' })
  const elapsed = (tEnd - tStart) / 1000
  // Drain what is still on its way, bounded.
  const drainUntil = now() + (cfg.drainMs ?? 15000)
  while (completed < sent.reduce((a, b) => a + b, 0) && now() < drainUntil) await sleep(20)
  clearTimeout(limit)
  timers.forEach(clearTimeout)
  const totalSent = sent.reduce((a, b) => a + b, 0)
  const tApply = now()
  clients.forEach((c) => c.applyPending())
  const applyS = (now() - tApply) / 1000

  const sorted = lat.subarray(0, latN).sort()
  const result = {
    ok: true,
    clients: n,
    edits_sent: totalSent,
    edits_completed: completed,
    edits_completed_in_window: completedInWindow,
    deliveries,
    deliveries_expected: totalSent * others,
    unknown_changes: unknown,
    parse_errors: parseErrors,
    apply_after_s: applyS,
    elapsed_s: elapsed,
    edits_per_s: completedInWindow / elapsed,
    deliveries_per_s: deliveriesInWindow / elapsed,
    latency_p50_ms: percentile(sorted, 0.5),
    latency_p99_ms: percentile(sorted, 0.99),
    latency_max_ms: sorted.length ? sorted[sorted.length - 1] : null,
    client_cpu_pct: cpuPctLoad,
    connect_p50_ms: percentile(open.times.map((t) => t.connectMs).sort((a, b) => a - b), 0.5)
  }
  Object.assign(result, await verifyConvergence(clients, docs, clientsPerDoc, sent))
  clients.forEach((c) => c.close())
  return result
}

// Every client of a document ends with the state of a fresh client synced from the
// server, and that state holds the last value each client wrote to each of its keys.
async function verifyConvergence (clients, docs, clientsPerDoc, sent) {
  const settleUntil = now() + (cfg.settleMs ?? 15000)
  const docClients = (d) => clients.slice(d * clientsPerDoc, (d + 1) * clientsPerDoc)
  const agreed = () => {
    for (let d = 0; d < docs; d++) {
      const group = docClients(d)
      const sv = stateKey(group[0].doc)
      if (group.some((c) => stateKey(c.doc) !== sv)) return false
    }
    return true
  }
  while (!agreed() && now() < settleUntil) await sleep(100)
  const fresh = []
  for (let d = 0; d < docs; d++) fresh.push(new Client(d, `${cfg.docPrefix}-${d}`))
  const open = await openAll(fresh, 50, cfg.connectTimeoutMs ?? 30000)
  let error = null
  if (open.failed > 0) error = `${open.failed} fresh clients could not sync: ${open.firstError}`
  for (let d = 0; d < docs && error === null; d++) {
    const ref = fresh[d]
    const refSv = stateKey(ref.doc)
    const refMap = ref.doc.getMap('workouts')
    const refJson = canonical(refMap.toJSON())
    for (const [k, c] of docClients(d).entries()) {
      if (c.closed) { error = `doc ${d} client ${k} was closed (${c.closeInfo})`; break }
      if (stateKey(c.doc) !== refSv) { error = `doc ${d} client ${k}: state vector differs from a fresh client's`; break }
      if (canonical(c.doc.getMap('workouts').toJSON()) !== refJson) {
        error = `doc ${d} client ${k}: content differs from a fresh client's`
        break
      }
      const ci = d * clientsPerDoc + k
      for (let slot = 0; slot < 16 && slot < sent[ci] && error === null; slot++) {
        let last = sent[ci] - 1
        while (last % 16 !== slot) last--
        const v = refMap.get(`${ci}:${slot}`)
        if (v === undefined || v.i !== last) {
          error = `doc ${d}: key ${ci}:${slot} holds ${v === undefined ? 'nothing' : v.i}, its writer last wrote ${last}`
        }
      }
      if (error !== null) break
    }
  }
  fresh.forEach((c) => c.close())
  return { converged: error === null, convergence_error: error, fresh_clients: fresh.length }
}

// -- W2: initial sync ---------------------------------------------------------------------

// A fresh client, timed from its socket's creation until it holds the whole document:
// normally the server's step 2 carries it all; a server that answers before it has
// loaded the document (y-websocket-server with LevelDB does) sends the rest as updates
// after step 2, and the clock runs until they have arrived (bounded).
async function syncFresh (name, expectSv, expectKeys) {
  const client = new Client(0, name)
  try {
    const t0 = now()
    const t = await client.connect(cfg.connectTimeoutMs ?? 120000)
    let connectMs = t.connectMs
    let afterStep2 = false
    if (expectSv != null && stateKey(client.doc) !== expectSv) {
      afterStep2 = true
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, cfg.completeTimeoutMs ?? 30000)
        client.onApplied = () => {
          if (stateKey(client.doc) === expectSv) { clearTimeout(timer); resolve() }
        }
      })
      connectMs = now() - t0
    }
    const keys = client.doc.getMap('workouts').size
    const svOk = expectSv == null || stateKey(client.doc) === expectSv
    const ok = svOk && (expectKeys == null || keys === expectKeys)
    // apply_ms: the client applying the server's step 2, which no server can make faster
    return { ok, connect_ms: connectMs, step2_ms: t.connectMs, open_ms: t.openMs, apply_ms: client.applyMs, completed_after_step2: afterStep2, keys, error: ok ? null : `fresh client has ${keys} keys (expected ${expectKeys}), state vector ${svOk ? 'equal' : 'differs'}` }
  } catch (err) {
    return { ok: false, error: err.message }
  } finally {
    client.close()
  }
}

// Apply a document like the one about to be synced, off the clock and off the wire, so
// Yjs' decoder is JIT-compiled as in a running app (a fresh Node process otherwise
// takes about twice as long for its first large update, whatever the server).
function jitWarmup (entries) {
  const n = Math.max(100, Math.min(entries ?? 1000, 30000))
  for (let r = 0; r < 3; r++) {
    const src = new Y.Doc()
    const map = src.getMap('workouts')
    src.transact(() => {
      for (let i = 0; i < n; i++) map.set(`warmup-${i}`, { name: 'bench press', sets: 3, reps: 8, weight: 60 + (i % 40) / 2, i })
    })
    Y.applyUpdate(new Y.Doc(), Y.encodeStateAsUpdate(src))
  }
}

async function w2 () {
  const name = cfg.docName
  const builder = new Client(0, name)
  const observer = new Client(0, name)
  await builder.connect(cfg.connectTimeoutMs ?? 30000)
  await observer.connect(cfg.connectTimeoutMs ?? 30000)
  const map = builder.doc.getMap('workouts')
  let updates = 0
  let updateBytes = 0
  builder.doc.on('update', (u, origin) => { if (origin !== REMOTE) { updates++; updateBytes += u.length } })
  const t0 = now()
  const value = (i) => ({ name: 'bench press', sets: 3, reps: 8, weight: 60 + (i % 40) / 2, i })
  if (cfg.build === 'edits') {
    for (let i = 0; i < cfg.edits; i++) {
      map.set(`w${i}`, value(i))
      if (i % 500 === 499) await new Promise(setImmediate)
    }
  } else {
    builder.doc.transact(() => {
      for (let i = 0; i < cfg.entries; i++) map.set(crypto.randomUUID(), value(i))
    })
  }
  const target = stateKey(builder.doc)
  const until = now() + (cfg.buildTimeoutMs ?? 180000)
  while (stateKey(observer.doc) !== target && now() < until) await sleep(50)
  if (stateKey(observer.doc) !== target) {
    builder.close(); observer.close()
    return { ok: false, error: `the server did not pass on the whole document within ${cfg.buildTimeoutMs ?? 180000} ms` }
  }
  const buildS = (now() - t0) / 1000
  observer.close()
  const keys = map.size
  const stateBytes = Y.encodeStateAsUpdate(builder.doc).length
  // Let run.py wait until a store that writes in the background has caught up.
  emit({ event: 'built' })
  await waitFor('go', cfg.holdMs ?? 300000)
  const warm = []
  const warmApply = []
  let error = null
  jitWarmup(keys)
  for (let r = 0; r < (cfg.warmReps ?? 3); r++) {
    const res = await syncFresh(name, target, keys)
    if (!res.ok) { error = res.error; break }
    warm.push(res.connect_ms)
    warmApply.push(res.apply_ms)
    await sleep(100)
  }
  builder.close()
  return { ok: error === null, error, doc: name, updates, update_bytes: updateBytes, state_bytes: stateBytes, keys, state_vector: target, build_s: buildS, warm_ms: warm, warm_apply_ms: warmApply }
}

// Sync a document like the one about to be synced from a throwaway y-websocket-style
// server inside this process, off the clock: a fresh Node process's first sync loads
// and compiles its HTTP, crypto, ws and Yjs code paths (about 70 ms here), which a
// running app has long done. The server under test sees nothing of it.
async function syncWarmup (entries) {
  const n = Math.max(100, Math.min(entries ?? 1000, 30000))
  const src = new Y.Doc()
  src.transact(() => {
    const map = src.getMap('workouts')
    for (let i = 0; i < n; i++) map.set(`warmup-${i}`, { name: 'bench press', sets: 3, reps: 8, weight: 60 + (i % 40) / 2, i })
  })
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise((resolve) => wss.once('listening', resolve))
  wss.on('connection', (sock) => sock.on('message', (data) => {
    const dec = decoding.createDecoder(new Uint8Array(data))
    decoding.readVarUint(dec)
    decoding.readVarUint(dec)
    const sv = decoding.readVarUint8Array(dec)
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_SYNC)
    encoding.writeVarUint(enc, STEP2)
    encoding.writeVarUint8Array(enc, Y.encodeStateAsUpdate(src, sv))
    sock.send(encoding.toUint8Array(enc))
  }))
  for (let r = 0; r < 3; r++) {
    const doc = new Y.Doc()
    const ws = new WebSocket(`ws://127.0.0.1:${wss.address().port}/warmup`, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 })
    ws.binaryType = 'nodebuffer'
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
    const got = new Promise((resolve) => ws.once('message', (data) => {
      const dec = decoding.createDecoder(data)
      decoding.readVarUint(dec)
      decoding.readVarUint(dec)
      Y.applyUpdate(doc, decoding.readVarUint8Array(dec), REMOTE)
      resolve(stateKey(doc))
    }))
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_SYNC)
    encoding.writeVarUint(enc, STEP1)
    encoding.writeVarUint8Array(enc, Y.encodeStateVector(doc))
    ws.send(encoding.toUint8Array(enc))
    await got
    ws.close()
    doc.destroy()
  }
  await new Promise((resolve) => wss.close(resolve))
}

async function w2sync () {
  jitWarmup(cfg.expectKeys)
  await syncWarmup(cfg.expectKeys)
  const res = await syncFresh(cfg.docName, cfg.expectStateVector, cfg.expectKeys)
  return res
}

// -- W3: connections ----------------------------------------------------------------------

async function w3 () {
  const clients = []
  for (let i = 0; i < cfg.connections; i++) clients.push(new Client(i, `${cfg.docPrefix}-${i}`))
  emit({ event: 'load-start' })
  const cpu = cpuStart()
  const t0 = now()
  const open = await openAll(clients, cfg.concurrency ?? 200, cfg.connectTimeoutMs ?? 60000)
  const openS = (now() - t0) / 1000
  const clientCpu = cpuPct(cpu)
  const opened = clients.length - open.failed
  const times = open.times.filter(Boolean).map((t) => t.connectMs).sort((a, b) => a - b)
  emit({ event: 'opened', opened, failed: open.failed })
  await waitFor('close', cfg.holdMs ?? 60000) // hold until told to close, bounded
  const stillOpen = clients.filter((c) => c.synced && !c.closed).length
  clients.forEach((c) => c.close())
  return {
    ok: open.failed === 0 && stillOpen === opened,
    error: open.failed ? `${open.failed} connections failed: ${open.firstError}` : (stillOpen !== opened ? `${opened - stillOpen} connections were closed while held` : null),
    connections: clients.length,
    opened,
    still_open: stillOpen,
    open_s: openS,
    opens_per_s: opened / openS,
    handshake_p50_ms: percentile(times, 0.5),
    handshake_p99_ms: percentile(times, 0.99),
    client_cpu_pct: clientCpu
  }
}

const modes = { w1, w2, w2sync, w3 }
try {
  const result = await modes[cfg.mode]()
  emit({ result })
  process.exit(0)
} catch (err) {
  emit({ result: { ok: false, error: String(err?.stack ?? err) } })
  process.exit(1)
}
