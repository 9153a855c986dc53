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
// a pool that would starve Haraka.
const MAX_TIMEOUT_MS = 60000
const MAX_MEMORY_MIB = 4096
const MAX_WORKERS = 64
// Calls queued for one worker at most; more answer 451 at once.
const MAX_QUEUE = 1000

const RELAY_FIELDS = /^(x-attributed-tenant|x-attrelay-.*)$/i

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
    this.load_attrelay_config()
    this.pool = new Pool(this, this.settings)
    this.register_hook('mail', 'attrelay_mail')
    this.register_hook('rcpt', 'attrelay_rcpt')
    this.register_hook('data_post', 'attrelay_headers')
    this.register_hook('disconnect', 'attrelay_disconnect')
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
exports.load_attrelay_config = function () {
    const cfg = this.config.get('attrelay.ini', () => this.load_attrelay_config())
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
    this.settings = {
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
    while (cert?.raw && !seen.has(cert.fingerprint256) && chain.length < 10) {
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
        if (st.session) this.pool.close(st)
        st.session = `${connection.uuid}.${(st.opened = (st.opened ?? 0) + 1)}`
        st.worker = this.pool.pick()
        await this.pool.call(st.worker, { op: 'open', session: st.session, facts: facts(connection) })
        const sender = params[0].isNull() ? '' : params[0].format().slice(1, -1)
        const { verdict } = await this.pool.call(st.worker, { op: 'mail', session: st.session, sender })
        this.log_verdict(connection, 'mail', sender, verdict)
        connection.transaction.notes.attrelay = { tenant: undefined, fields: [] }
        return answer(verdict)
    })
}

exports.attrelay_rcpt = function (next, connection, params) {
    this.guard(next, connection, async () => {
        const st = state(connection)
        const tx = connection.transaction.notes.attrelay
        if (!st.session || !tx) return [DENYSOFT, FAILURE]
        const recipient = params[0].format().slice(1, -1)
        const { verdict } = await this.pool.call(st.worker, { op: 'rcpt', session: st.session, recipient })
        if (verdict.action === 'accept') {
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
            this.log_verdict(connection, 'rcpt', recipient, verdict)
            for (const h of verdict.headers) {
                if (!tx.fields.some((f) => f.name === h.name && f.value === h.value)) tx.fields.push(h)
            }
            return answer(verdict)
        }
        this.log_verdict(connection, 'rcpt', recipient, verdict)
        return answer(verdict)
    })
}

exports.attrelay_headers = function (next, connection) {
    try {
        const tx = connection.transaction
        const fields = tx?.notes.attrelay?.fields
        if (!fields) return next(DENYSOFT, FAILURE)
        // The client's own copies of the relay's fields go first.
        for (const name of [...new Set(tx.header.header_list.map((l) => l.split(':')[0].trim()))]) {
            if (RELAY_FIELDS.test(name)) tx.remove_header(name)
        }
        for (const f of fields) tx.add_header(f.name, f.value)
        next()
    } catch (e) {
        connection.logerror(this, `attrelay: ${e.stack ?? e}`)
        next(DENYSOFT, FAILURE)
    }
}

exports.attrelay_disconnect = function (next, connection) {
    try {
        const st = connection.notes.attrelay
        if (st?.session) this.pool.close(st)
    } catch (e) {
        connection.logerror(this, `attrelay: ${e.stack ?? e}`)
    }
    next()
}

// Runs `body` (which returns [code, msg]) and answers with it; any
// exception, rejection or malformed answer becomes 451 4.3.5.
exports.guard = function (next, connection, body) {
    let answered = false
    const reply = (code, msg) => {
        if (answered) return
        answered = true
        next(code, msg)
    }
    try {
        body().then(
            ([code, msg]) => reply(code, msg),
            (e) => {
                connection.logerror(this, `attrelay: policy failure: ${e?.message ?? e}`)
                reply(DENYSOFT, FAILURE)
            },
        )
    } catch (e) {
        connection.logerror(this, `attrelay: policy failure: ${e?.message ?? e}`)
        reply(DENYSOFT, FAILURE)
    }
}

exports.log_verdict = function (connection, stage, address, v) {
    const clean = (s) => String(s ?? '-').replace(/[^\x21-\x7e]/g, '?')
    connection.loginfo(
        this,
        `attrelay verdict stage=${stage} address=<${clean(address)}> code=${v.code} enhanced=${clean(v.enhanced)} tenant=${clean(v.tenant)} reason=${clean(v.reason)} warning=${v.headers.some((h) => h.name === 'X-Attrelay-Warning')}`,
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
        const slot = { worker, queue: [], current: null, timer: null, dead: false }
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

    call(index, message) {
        const slot = this.workers[index]
        return new Promise((resolve, reject) => {
            if (slot.queue.length >= MAX_QUEUE) return reject(new Error('worker queue full'))
            slot.queue.push({ message: { ...message, id: ++this.ids }, resolve, reject })
            this.dispatch(slot)
        })
    }

    close(st) {
        const session = st.session
        st.session = null
        this.call(st.worker, { op: 'close', session }).catch(() => {})
    }

    dispatch(slot) {
        if (slot.current || slot.dead || slot.queue.length === 0) return
        slot.current = slot.queue.shift()
        slot.worker.postMessage(slot.current.message)
        slot.timer = setTimeout(() => {
            this.fail(slot, `call exceeded its ${this.settings.timeoutMs} ms budget`)
        }, this.settings.timeoutMs)
    }

    settle(slot, m) {
        if (m.ready || !slot.current || m.id !== slot.current.message.id) return
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

    // The worker is gone or overran: every call on it fails (451), and a
    // fresh worker takes its place.
    fail(slot, why) {
        if (slot.dead) return
        slot.dead = true
        clearTimeout(slot.timer)
        slot.worker.terminate().catch(() => {})
        const pending = [slot.current, ...slot.queue].filter(Boolean)
        slot.current = null
        slot.queue = []
        for (const p of pending) p.reject(new Error(why))
        const index = this.workers.indexOf(slot)
        if (index >= 0 && !this.stopped) this.workers[index] = this.spawn()
    }

    stop() {
        this.stopped = true
        for (const slot of this.workers) {
            slot.dead = true
            slot.worker.terminate().catch(() => {})
        }
    }
}
