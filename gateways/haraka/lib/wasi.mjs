// Deny-all WASI for the gateway component: every import it has, granting
// nothing. No environment, arguments, working directory, files, clocks or
// network reach it; `exit` throws (the call fails, the host answers 451
// and discards the instance); stdin is closed; what the component writes
// to stdout or stderr (a Rust panic message) is kept, bounded and on one
// printable line, for the host's log, never written to the process's
// streams.
//
// @bytecodealliance/preview2-shim is not used: it hands a component the
// process's environment and arguments, and its `exit` ends the process.

import { getRandomValues } from 'node:crypto';

/** Bytes of component output kept per instance (a panic message and more). */
export const MAX_OUTPUT = 4096;

/** Deny-all imports for one instance, and what it wrote. */
export function denyAll() {
  const output = { text: '' };
  const keep = (bytes) => {
    if (output.text.length < MAX_OUTPUT) {
      output.text += Buffer.from(bytes)
        .toString('latin1')
        .replace(/\n/g, ' | ')
        .replace(/[^\x20-\x7e]/g, '?')
        .slice(0, MAX_OUTPUT - output.text.length);
    }
  };

  class IoError {
    toDebugString() {
      return 'denied';
    }
  }
  class Pollable {
    ready() {
      return true;
    }
    block() {}
  }
  class InputStream {
    read() {
      throw { tag: 'closed' };
    }
    blockingRead() {
      throw { tag: 'closed' };
    }
    skip() {
      throw { tag: 'closed' };
    }
    blockingSkip() {
      throw { tag: 'closed' };
    }
    subscribe() {
      return new Pollable();
    }
  }
  class OutputStream {
    checkWrite() {
      return 4096n;
    }
    write(bytes) {
      keep(bytes);
    }
    blockingWriteAndFlush(bytes) {
      keep(bytes);
    }
    flush() {}
    blockingFlush() {}
    writeZeroes() {}
    blockingWriteZeroesAndFlush() {}
    subscribe() {
      return new Pollable();
    }
  }
  class TerminalInput {}
  class TerminalOutput {}

  const stdin = new InputStream();
  const stdout = new OutputStream();
  const stderr = new OutputStream();
  const seed = () => {
    const [a, b] = getRandomValues(new BigUint64Array(2));
    return [a, b];
  };
  const interfaces = {
    'wasi:cli/environment': {
      getEnvironment: () => [],
      getArguments: () => [],
      initialCwd: () => undefined,
    },
    'wasi:cli/exit': {
      exit: () => {
        throw new Error('the component called exit');
      },
    },
    'wasi:cli/stdin': { getStdin: () => stdin },
    'wasi:cli/stdout': { getStdout: () => stdout },
    'wasi:cli/stderr': { getStderr: () => stderr },
    'wasi:cli/terminal-input': { TerminalInput },
    'wasi:cli/terminal-output': { TerminalOutput },
    'wasi:cli/terminal-stdin': { getTerminalStdin: () => undefined },
    'wasi:cli/terminal-stdout': { getTerminalStdout: () => undefined },
    'wasi:cli/terminal-stderr': { getTerminalStderr: () => undefined },
    'wasi:io/error': { Error: IoError },
    'wasi:io/poll': { Pollable, poll: () => new Uint32Array([0]) },
    'wasi:io/streams': { InputStream, OutputStream },
    'wasi:random/insecure-seed': { insecureSeed: seed },
    // Types only: nothing to provide.
    'attrelay:policy/types': {},
  };
  // The glue asks by name without version; the import object's type names
  // them with it. Both point to the same objects.
  const imports = {};
  for (const [name, value] of Object.entries(interfaces)) {
    imports[name] = value;
    imports[`${name}@0.2.6`] = value;
  }
  imports['attrelay:policy/types@0.1.0'] = {};
  imports['attrelay:gateway/types'] = {};
  imports['attrelay:gateway/types@0.1.0'] = {};
  return { imports, output };
}
