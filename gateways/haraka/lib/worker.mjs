// A worker thread holding one gateway instance and its open sessions. It
// compiles and configures the component when it starts, then says
// `{ ready: true }` (or `{ ready: false, error }`). The plugin sends one
// call at a time and terminates the thread when a call overruns its time
// budget. An exception from inside the component discards the instance
// and its sessions (a new instance is made for the next call); a refusal
// of the worker's own (an unknown session) discards nothing.
//
// Messages in:  { id, op: 'open', session, facts } | { id, op: 'mail', session, sender }
//               | { id, op: 'rcpt', session, recipient } | { id, op: 'close', session }
// Messages out: { id, verdict } | { id, ok: true } | { id, error, output }

import { parentPort, workerData } from 'node:worker_threads';
import { compile, instantiate, sessionFacts } from './gateway.mjs';

/** Sessions one worker holds at most; past it the oldest is closed. */
const MAX_SESSIONS = 10000;

/** A call the worker refuses itself: the instance is fine. */
class Refusal extends Error {}

let compiled;
let instance = null;
const sessions = new Map();

function drop(session) {
  const s = sessions.get(session);
  sessions.delete(session);
  s?.[Symbol.dispose]?.();
}

function call({ op, session, ...args }) {
  instance ??= instantiate(compiled, workerData.configuration);
  switch (op) {
    case 'open': {
      drop(session);
      if (sessions.size >= MAX_SESSIONS) drop(sessions.keys().next().value);
      sessions.set(session, new instance.api.Session(sessionFacts(args.facts)));
      return { ok: true };
    }
    case 'mail':
    case 'rcpt': {
      const s = sessions.get(session);
      if (!s) throw new Refusal('no open session (closed, or its instance was discarded)');
      const v = op === 'mail' ? s.mailFrom(args.sender) : s.rcptTo(args.recipient);
      return { verdict: v };
    }
    case 'close':
      drop(session);
      return { ok: true };
    default:
      throw new Refusal(`unknown operation ${op}`);
  }
}

parentPort.on('message', (message) => {
  try {
    parentPort.postMessage({ id: message.id, ...call(message) });
  } catch (e) {
    const output = instance?.output.text ?? '';
    if (!(e instanceof Refusal)) {
      // After a trap the instance's state is unknown: never reuse it.
      instance = null;
      sessions.clear();
    }
    parentPort.postMessage({ id: message.id, error: String(e?.payload ?? e?.message ?? e), output });
  }
});

try {
  compiled = await compile(workerData.dist, { maxMemoryBytes: workerData.maxMemoryBytes });
  instance = instantiate(compiled, workerData.configuration);
  parentPort.postMessage({ ready: true });
} catch (e) {
  parentPort.postMessage({ ready: false, error: String(e?.payload ?? e?.message ?? e) });
}
