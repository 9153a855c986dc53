'use strict'
// haraka-plugin-attrelay: attrelay's tenant attribution in Haraka.
//
// MAIL FROM and RCPT TO are answered with the verdict of the attrelay
// gateway component (its code, enhanced code and text), judged from the
// raw facts: the client's address, HELO, the TLS version and cipher and
// the certificate chain the client sent (the component verifies it; Haraka's
// own `tls.verified` is not used). Accepted messages get the header fields
// the attrelay relay writes (X-Attributed-Tenant, X-Attrelay-Warning, the
// policy's), the client's own copies of them removed.
//
// Fail closed: every error answers 451 4.3.5, the plugin's own exceptions
// included (Haraka lets a session continue past a plugin that throws). Each
// call runs in a worker thread under a time budget (the thread is terminated
// past it) and a memory cap; a worker re-instantiates the component after a
// trap.
//
// Haraka cannot split one message into one per tenant as the relay does: a
// recipient of a second tenant in one transaction gets 452 4.5.3, and the
// client sends it again in a transaction of its own.

const path = require('node:path')
const fs = require('node:fs')
const { Worker } = require('node:worker_threads')

const DEFAULTS = {
    timeout_ms: 1000,
    memory_mib: 64,
    workers: 2,
}
// Past these a configuration is refused: a budget a call cannot use, or
// a pool that would starve Haraka. A hook makes up to three calls (the
// queue wait counts as one): 3 x 5 s stays under Haraka's 30 s plugin
// timeout, past which Haraka answers without us.
const MAX_TIMEOUT_MS = 5000
const MAX_MEMORY_MIB = 4096
const MAX_WORKERS = 64
// Calls queued for one worker at most; more answer 451 at once.
const MAX_QUEUE = 1000
// The certificates of a chain the component judges at most.
const MAX_CHAIN = 10

const RELAY_FIELDS = /^(x-attributed-tenant|x-attrelay-.*)$/i
// Runs before every other plugin's MAIL and RCPT hooks: one that answered
// OK first (rcpt_to.in_host_list does for its domains) would skip ours.
const FIRST = -100
// How long a new worker may take to compile and configure the component.
const STARTUP_MS = 30000

// A reply with its own code and enhanced status code: Haraka answers
// with `code` and `reply` of any object whose class is named DSN.
class DSN {
    constructor(code, enhanced, text) {
        this.code = code
        this.reply = `${enhanced} ${text}`
    }
}

const FAILURE = new DSN(451, '4.3.5', 'Policy evaluation failed; try again later')

exports.register = function () {
    this.settings = this.load_attrelay_config(() => this.reload())
    this.pool = new Pool(this, this.settings)
    this.register_hook('mail', 'attrelay_mail', FIRST)
    this.register_hook('rcpt', 'attrelay_rcpt', FIRST)
    this.register_hook('data_post', 'attrelay_headers')
    this.register_hook('disconnect', 'attrelay_disconnect')
}

// attrelay.ini changed: a new pool on the new settings, or, when they do
// not load, the old one kept (an exception here would end Haraka).
exports.reload = function () {
    try {
        const settings = this.load_attrelay_config(() => this.reload())
        const old = this.pool
        this.settings = settings
        this.pool = new Pool(this, settings)
        old?.stop()
        this.loginfo('attrelay: configuration reloaded')
    } catch (e) {
        this.logerror(`attrelay: configuration not reloaded, the previous one stays: ${clean(e?.message ?? e)}`)
    }
}

exports.shutdown = function () {
    this.pool?.stop()
}

// attrelay.ini:
//   [main]
//   directory = tenants.toml     ; the relay's [[tenant]] tables (.toml or .json)
//   client_ca = client-ca.pem    ; trust anchors for client certificates
//   timeout_ms = 1000            ; per call
//   memory_mib = 64              ; per instance
//   workers = 2
//   dist = ...                   ; the transpiled component (default: dist/ of the plugin)
//   [settings]                   ; the policy's settings ([policy.settings])
// Relative paths are relative to Haraka's configuration directory.
exports.load_attrelay_config = function (onChange) {
    const cfg = this.config.get('attrelay.ini', onChange)
    const main = cfg.main ?? {}
    // Haraka's own directory (`haraka -c DIR` sets HARAKA): its config/.
    const root = process.env.HARAKA ? path.join(process.env.HARAKA, 'config') : process.cwd()
    const file = (key, required) => {
        if (!main[key]) {
            if (required) throw new Error(`attrelay.ini: [main] ${key} is required`)
            return undefined
        }
        return path.resolve(root, main[key])
    }
    const number = (key, max) => {
        const value = main[key] === undefined ? DEFAULTS[key] : Number(main[key])
        if (!Number.isInteger(value) || value < 1 || value > max) {
            throw new Error(`attrelay.ini: [main] ${key} = ${main[key]}: a whole number from 1 to ${max}`)
        }
        return value
    }
    const directory = file('directory', true)
    const ca = file('client_ca', false)
    return {
        dist: file('dist', false) ?? path.join(__dirname, 'dist'),
        timeoutMs: number('timeout_ms', MAX_TIMEOUT_MS),
        memoryBytes: number('memory_mib', MAX_MEMORY_MIB) * 1024 * 1024,
        workers: number('workers', MAX_WORKERS),
        configuration: {
            directory: fs.readFileSync(directory, 'utf8'),
            directoryFormat: directory.endsWith('.json') ? 'json' : 'toml',
            clientTrustAnchors: ca ? fs.readFileSync(ca, 'utf8') : '',
            settings: { ...(cfg.settings ?? {}) },
        },
    }
}

// The facts of the session as Haraka has them, the client's chain as it
// was sent (leaf first, DER).
function facts(connection) {
    const tls = connection.tls?.enabled ? tlsFacts(connection) : undefined
    return {
        clientIp: connection.remote.ip,
        helo: connection.hello?.host ?? '',
        serverHostname: connection.local?.host ?? '',
        time: new Date(),
        tls,
    }
}

function tlsFacts(connection) {
    const cipher = connection.tls.cipher ?? {}
    const socket = connection.client?.targetsocket
    const chain = []
    let cert = socket?.getPeerCertificate?.(true)
    const seen = new Set()
    // One more than the component accepts: a longer chain is then judged
    // unverified by it, not cut to a shorter one that might verify.
    while (cert?.raw && !seen.has(cert.fingerprint256) && chain.length <= MAX_CHAIN) {
        seen.add(cert.fingerprint256)
        chain.push(new Uint8Array(cert.raw))
        cert = cert.issuerCertificate
    }
    return {
        protocol: cipher.version ?? '',
        cipher: cipher.standardName ?? cipher.name ?? '',
        clientChain: chain,
    }
}

// The verdict as Haraka's answer.
function answer(v) {
    const dsn = new DSN(v.code, v.enhanced, v.text)
    if (v.action === 'accept') return [OK, dsn]
    return [v.action === 'defer' ? DENYSOFT : DENY, dsn]
}

function state(connection) {
    connection.notes.attrelay ??= { session: null, worker: null }
    return connection.notes.attrelay
}

exports.attrelay_mail = function (next, connection, params) {
    this.guard(next, connection, async () => {
        const st = state(connection)
        const txn = connection.transaction
        if (st.session) this.pool.close(st.session)
        // Everything this call needs, taken now: the connection may end, or
        // a later command start, while it waits on the worker.
        const session = { id: `${connection.uuid}.${(st.opened = (st.opened ?? 0) + 1)}`, worker: this.pool.pick() }
        st.session = session
        const sender = params[0].isNull() ? '' : params[0].format().slice(1, -1)
        await this.pool.call(session.worker, { op: 'open', session: session.id, facts: facts(connection) })
        current(connection, st, session, txn)
        const { verdict } = await this.pool.call(session.worker, { op: 'mail', session: session.id, sender })
        current(connection, st, session, txn)
        this.log_verdict(connection, 'mail', sender, verdict)
        if (verdict.action === 'accept') {
            txn.notes.attrelay = { sender: params[0].format(), tenant: undefined, fields: [], accepted: [] }
        } else {
            // A refused MAIL keeps no session: an idle client holds nothing.
            st.session = null
            this.pool.close(session)
        }
        return answer(verdict)
    })
}

// Throws unless `session` and `txn` are still the connection's: a call
// that finished after its hook was answered (Haraka's plugin timeout) or
// after the connection moved on must not touch what came later.
function current(connection, st, session, txn) {
    if (st.session !== session || connection.transaction !== txn) {
        throw new Error('the session moved on while the call waited')
    }
}

exports.attrelay_rcpt = function (next, connection, params) {
    this.guard(next, connection, async () => {
        const st = state(connection)
        const txn = connection.transaction
        const tx = txn?.notes.attrelay
        const session = st.session
        if (!session || !tx) return [DENYSOFT, FAILURE]
        const recipient = params[0].format().slice(1, -1)
        const { verdict } = await this.pool.call(session.worker, { op: 'rcpt', session: session.id, recipient })
        current(connection, st, session, txn)
        if (verdict.action !== 'accept') {
            this.log_verdict(connection, 'rcpt', recipient, verdict)
            return answer(verdict)
        }
        const tenant = verdict.tenant ?? null
        if (tx.tenant !== undefined && tx.tenant !== tenant) {
            const split = {
                ...verdict,
                action: 'defer',
                code: 452,
                enhanced: '4.5.3',
                text: 'One tenant per message; send this recipient in another transaction',
                reason: 'one-tenant-per-message',
                headers: [],
            }
            this.log_verdict(connection, 'rcpt', recipient, split)
            return answer(split)
        }
        tx.tenant = tenant
        tx.accepted.push(params[0].format())
        for (const h of verdict.headers) {
            if (!tx.fields.some((f) => f.name === h.name && f.value === h.value)) tx.fields.push(h)
        }
        this.log_verdict(connection, 'rcpt', recipient, verdict)
        return answer(verdict)
    })
}

// The relay's fields on the message, the client's copies gone. Refused
// (451) unless this plugin judged the sender and every recipient Haraka
// kept: another plugin that accepted one past us (or a deny override) must
// not relay mail we never judged.
exports.attrelay_headers = function (next, connection) {
    try {
        const txn = connection.transaction
        const tx = txn?.notes.attrelay
        const judged =
            tx &&
            txn.mail_from?.format() === tx.sender &&
            txn.rcpt_to.length > 0 &&
            txn.rcpt_to.every((r) => tx.accepted.includes(r.format()))
        if (!judged) {
            connection.logerror(this, 'attrelay: a recipient or the sender was not judged by attrelay; refused')
            return next(DENYSOFT, FAILURE)
        }
        removeRelayFields(txn.header)
        if (txn.header.header_list.length === 0 && tx.fields.length === 0) {
            // An empty header list makes Haraka write the raw header
            // section, forged fields included.
            return next(DENYSOFT, FAILURE)
        }
        for (const f of tx.fields) txn.add_header(f.name, f.value)
        next()
    } catch (e) {
        connection.logerror(this, `attrelay: ${clean(e?.stack ?? e)}`)
        next(DENYSOFT, FAILURE)
    }
}

// Removes every field whose name, however spaced or cased ("X-Attributed-
// Tenant : x" is obsolete RFC 5322 syntax some readers accept), is one of
// the relay's, from the list Haraka writes onward (in place: the message
// stream holds that very array) and its indexes.
function removeRelayFields(header) {
    const name = (line) => line.split(':')[0].trim()
    const list = header.header_list
    const forged = new Set()
    for (let i = list.length - 1; i >= 0; i--) {
        if (RELAY_FIELDS.test(name(list[i]))) {
            forged.add(name(list[i]))
            list.splice(i, 1)
        }
    }
    for (const n of forged) {
        const key = n.toLowerCase()
        delete header.headers[key]
        delete header.headers_decoded[key]
    }
}

exports.attrelay_disconnect = function (next, connection) {
    try {
        const st = connection.notes.attrelay
        if (st?.session) this.pool.close(st.session)
        if (st) st.session = null
    } catch (e) {
        connection.logerror(this, `attrelay: ${clean(e?.stack ?? e)}`)
    }
    next()
}

// Runs `body` (which returns [code, msg]) and answers with it; any
// exception, rejection or malformed answer becomes 451 4.3.5, and an
// answer is given once.
exports.guard = function (next, connection, body) {
    let answered = false
    const reply = (code, msg) => {
        if (answered) return
        answered = true
        try {
            next(code, msg)
        } catch (e) {
            connection.logerror(this, `attrelay: ${clean(e?.stack ?? e)}`)
        }
    }
    const failed = (e) => {
        connection.logerror(this, `attrelay: policy failure: ${clean(e?.message ?? e)}`)
        reply(DENYSOFT, FAILURE)
    }
    try {
        body().then(([code, msg]) => reply(code, msg), failed)
    } catch (e) {
        failed(e)
    }
}

// Untrusted text as one printable line (component output, errors quoting
// configuration or certificate content).
function clean(text) {
    return String(text ?? '-').replace(/[^\x20-\x7e]/g, '?').slice(0, 2000)
}

// One line per verdict; the address, the only field a client chooses,
// comes last, so that a forged "tenant=" in it never precedes the real one.
exports.log_verdict = function (connection, stage, address, v) {
    const word = (s) => String(s ?? '-').replace(/[^\x21-\x7e]/g, '?')
    const warning = v.headers.some((h) => h.name === 'X-Attrelay-Warning')
    connection.loginfo(
        this,
        `attrelay verdict stage=${stage} code=${v.code} enhanced=${word(v.enhanced)} tenant=${word(v.tenant)} reason=${word(v.reason)} warning=${warning} address=<${word(address)}>`,
    )
}

// Worker threads, each with one gateway instance, one call at a time.
class Pool {
    constructor(plugin, settings) {
        this.plugin = plugin
        this.settings = settings
        this.workers = []
        this.next = 0
        this.ids = 0
        // Consecutive failures: each restart waits longer (up to 10 s), so
        // that a component that cannot start does not spin up threads.
        this.failures = 0
        for (let i = 0; i < settings.workers; i++) this.workers.push(this.spawn())
    }

    spawn() {
        const worker = new Worker(path.join(__dirname, 'lib', 'worker.mjs'), {
            workerData: {
                dist: this.settings.dist,
                configuration: this.settings.configuration,
                maxMemoryBytes: this.settings.memoryBytes,
            },
            // The JavaScript heap of the thread (the component's memory is
            // capped by compile()); the glue needs little.
            resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 16 },
            env: {},
            argv: [],
            stdout: true,
            stderr: true,
        })
        const slot = { worker, queue: [], current: null, timer: null, dead: false, ready: false }
        // Compiling and configuring has a budget of its own, not a call's.
        slot.timer = setTimeout(() => this.fail(slot, `the component did not start within ${STARTUP_MS} ms`), STARTUP_MS)
        worker.on('message', (m) => this.settle(slot, m))
        worker.on('error', (e) => this.fail(slot, `worker error: ${e?.message ?? e}`))
        worker.on('exit', () => this.fail(slot, 'worker exited'))
        worker.unref()
        return slot
    }

    pick() {
        this.next = (this.next + 1) % this.workers.length
        return this.next
    }

    // A call waits in the queue at most one budget, then runs within one.
    call(index, message) {
        const slot = this.workers[index]
        return new Promise((resolve, reject) => {
            if (slot.dead) return reject(new Error('the worker is restarting'))
            if (slot.queue.length >= MAX_QUEUE) return reject(new Error('worker queue full'))
            const queued = Date.now()
            slot.queue.push({ message: { ...message, id: ++this.ids }, resolve, reject, queued })
            this.dispatch(slot)
        })
    }

    close(session) {
        this.call(session.worker, { op: 'close', session: session.id }).catch(() => {})
    }

    dispatch(slot) {
        while (!slot.current && slot.ready && !slot.dead && slot.queue.length > 0) {
            const next = slot.queue.shift()
            if (Date.now() - next.queued > this.settings.timeoutMs) {
                next.reject(new Error(`waited more than ${this.settings.timeoutMs} ms for the worker`))
                continue
            }
            slot.current = next
            slot.worker.postMessage(next.message)
            slot.timer = setTimeout(() => {
                this.fail(slot, `call exceeded its ${this.settings.timeoutMs} ms budget`)
            }, this.settings.timeoutMs)
        }
    }

    settle(slot, m) {
        if (m.ready !== undefined) {
            clearTimeout(slot.timer)
            if (!m.ready) return this.fail(slot, `the component did not start: ${m.error}`)
            slot.ready = true
            this.failures = 0
            return this.dispatch(slot)
        }
        if (!slot.current || m.id !== slot.current.message.id) return
        clearTimeout(slot.timer)
        const { resolve, reject } = slot.current
        slot.current = null
        if (m.error) {
            const output = m.output ? ` (component output: ${m.output.slice(0, 500)})` : ''
            reject(new Error(`${m.error}${output}`))
        } else {
            resolve(m)
        }
        this.dispatch(slot)
    }

    // The worker is gone, overran or could not start: every call on it
    // fails (451), and a fresh worker takes its place, later each time it
    // fails again in a row.
    fail(slot, why) {
        if (slot.dead) return
        slot.dead = true
        clearTimeout(slot.timer)
        slot.worker.terminate().catch(() => {})
        const pending = [slot.current, ...slot.queue].filter(Boolean)
        slot.current = null
        slot.queue = []
        for (const p of pending) p.reject(new Error(why))
        this.plugin.logerror(`attrelay: worker replaced: ${clean(why)}`)
        const index = this.workers.indexOf(slot)
        if (index < 0 || this.stopped) return
        const delay = Math.min(10000, 100 * 2 ** this.failures)
        this.failures += 1
        setTimeout(() => {
            if (!this.stopped && this.workers[index] === slot) this.workers[index] = this.spawn()
        }, slot.ready ? 0 : delay).unref()
    }

    stop() {
        this.stopped = true
        for (const slot of this.workers) {
            slot.dead = true
            clearTimeout(slot.timer)
            slot.worker.terminate().catch(() => {})
        }
    }
}
