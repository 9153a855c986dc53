// A worker thread holding one gateway instance and its open sessions. The
// plugin sends one call at a time and terminates the thread when a call
// overruns its time budget; an exception inside a call discards the
// instance (a new one is made, and configured, for the next call).
//
// Messages in:  { id, op: 'open', session, facts } | { id, op: 'mail', session, sender }
//               | { id, op: 'rcpt', session, recipient } | { id, op: 'close', session }
// Messages out: { id, verdict } | { id, ok: true } | { id, error, output }

import { parentPort, workerData } from 'node:worker_threads';
import { compile, instantiate, sessionFacts } from './gateway.mjs';

/** Sessions one worker holds at most (the plugin closes them at disconnect). */
const MAX_SESSIONS = 10000;

const compiled = await compile(workerData.dist, { maxMemoryBytes: workerData.maxMemoryBytes });
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
      if (sessions.size >= MAX_SESSIONS) throw new Error(`more than ${MAX_SESSIONS} open sessions`);
      sessions.set(session, new instance.api.Session(sessionFacts(args.facts)));
      return { ok: true };
    }
    case 'mail':
    case 'rcpt': {
      const s = sessions.get(session);
      if (!s) throw new Error('no open session (the worker restarted)');
      const v = op === 'mail' ? s.mailFrom(args.sender) : s.rcptTo(args.recipient);
      return { verdict: v };
    }
    case 'close':
      drop(session);
      return { ok: true };
    default:
      throw new Error(`unknown operation ${op}`);
  }
}

parentPort.on('message', (message) => {
  try {
    parentPort.postMessage({ id: message.id, ...call(message) });
  } catch (e) {
    const output = instance?.output.text ?? '';
    // After a trap the instance's state is unknown: never reuse it.
    instance = null;
    sessions.clear();
    parentPort.postMessage({ id: message.id, error: String(e?.payload ?? e?.message ?? e), output });
  }
});
parentPort.postMessage({ ready: true });
