// The gateway component in Node: compiled once, instantiated with deny-all
// WASI (lib/wasi.mjs), configured, and asked per session. Used by the
// plugin's worker threads and by the conformance kit's Node runner.
//
// A host must treat any exception from here as a policy failure (451
// 4.3.5) and discard the instance: after a trap its state is unknown.

import { readFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { denyAll } from './wasi.mjs';

/** WebAssembly pages are 64 KiB. */
const PAGE = 65536;

/**
 * Compiles the transpiled component in `dist` once. With `maxMemoryBytes`,
 * every memory the core modules define gets that maximum: V8 then refuses
 * to grow it further, the component's allocation fails and the call
 * traps (a policy failure), where an uncapped instance could take up to
 * 4 GiB of the process (V8 has no other limit on WebAssembly memory; a
 * worker's resourceLimits cover its JavaScript heap only).
 */
export async function compile(dist, { maxMemoryBytes } = {}) {
  const glue = await import(pathToFileURL(resolve(dist, 'attrelay_gateway.js')).href);
  const modules = new Map();
  const maxPages = maxMemoryBytes ? Math.max(1, Math.floor(maxMemoryBytes / PAGE)) : undefined;
  const getCoreModule = (name) => {
    if (!modules.has(name)) {
      let bytes = readFileSync(resolve(dist, name));
      if (maxPages !== undefined) bytes = capMemory(bytes, maxPages);
      modules.set(name, new WebAssembly.Module(bytes));
    }
    return modules.get(name);
  };
  return { glue, getCoreModule };
}

function readU32(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[at++];
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if ((b & 0x80) === 0) return [value, at];
  }
}

function writeU32(value) {
  const out = [];
  do {
    let b = value & 0x7f;
    value = Math.floor(value / 128);
    if (value !== 0) b |= 0x80;
    out.push(b);
  } while (value !== 0);
  return out;
}

/**
 * `bytes` (a core module) with every memory it defines limited to
 * `maxPages`: the memory section (id 5) rewritten, the rest copied.
 * Refuses a memory whose minimum is already above the cap.
 */
export function capMemory(bytes, maxPages) {
  const out = [bytes.subarray(0, 8)];
  let at = 8;
  while (at < bytes.length) {
    const id = bytes[at];
    const [size, start] = readU32(bytes, at + 1);
    const end = start + size;
    if (id !== 5) {
      out.push(bytes.subarray(at, end));
      at = end;
      continue;
    }
    let [count, p] = readU32(bytes, start);
    const body = writeU32(count);
    for (; count > 0; count--) {
      const flags = bytes[p++];
      if (flags & ~0x01) throw new Error(`memory with flags ${flags} (shared or 64-bit) not supported`);
      let min;
      [min, p] = readU32(bytes, p);
      let max = maxPages;
      if (flags & 0x01) {
        let declared;
        [declared, p] = readU32(bytes, p);
        max = Math.min(declared, maxPages);
      }
      if (min > max) {
        throw new Error(`the component needs ${min} pages of memory at start, more than the cap of ${maxPages}`);
      }
      body.push(0x01, ...writeU32(min), ...writeU32(max));
    }
    out.push(Uint8Array.from([5, ...writeU32(body.length), ...body]));
    at = end;
  }
  return Buffer.concat(out);
}

/**
 * A new, configured instance. `configuration` is
 * `{ directory, directoryFormat: 'toml' | 'json', clientTrustAnchors, settings: {key: value} }`.
 * Throws when the configuration is refused (the message names the key).
 */
export function instantiate(compiled, configuration) {
  const { imports, output } = denyAll();
  const root = compiled.glue.instantiate(compiled.getCoreModule, imports);
  const api = root.gateway;
  try {
    api.configure({
      directory: configuration.directory,
      directoryFormat: configuration.directoryFormat ?? 'toml',
      clientTrustAnchors: configuration.clientTrustAnchors ?? '',
      settings: Object.entries(configuration.settings ?? {}).map(([key, value]) => ({
        key,
        value: String(value),
      })),
    });
  } catch (e) {
    throw new Error(`attrelay gateway configuration refused: ${e.payload ?? e.message}`);
  }
  return { api, output };
}

/** The WIT `ip-address` of a textual address (IPv4-mapped IPv6 as IPv4). */
export function ipAddress(text) {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(text);
  if (mapped) text = mapped[1];
  if (isIPv4(text)) {
    return { tag: 'ipv4', val: text.split('.').map(Number) };
  }
  if (!isIPv6(text)) throw new Error(`not an IP address: ${text}`);
  const [head, tail = ''] = text.split('::');
  const part = (s) => (s ? s.split(':').map((h) => parseInt(h, 16)) : []);
  const h = part(head);
  const t = part(tail);
  const fill = text.includes('::') ? new Array(8 - h.length - t.length).fill(0) : [];
  return { tag: 'ipv6', val: [...h, ...fill, ...t] };
}

/**
 * Session facts as the WIT wants them. `facts` is `{ clientIp, helo,
 * serverHostname, time (Date or seconds), tls?: { protocol, cipher,
 * clientChain: [Uint8Array DER, ...] } }`.
 */
export function sessionFacts(facts) {
  const seconds =
    facts.time instanceof Date ? Math.floor(facts.time.getTime() / 1000) : Number(facts.time);
  return {
    clientIp: ipAddress(facts.clientIp),
    helo: facts.helo ?? '',
    serverHostname: facts.serverHostname ?? '',
    time: { seconds: BigInt(seconds), nanoseconds: 0 },
    tls: facts.tls
      ? {
          protocol: facts.tls.protocol ?? '',
          cipher: facts.tls.cipher ?? '',
          clientChain: (facts.tls.clientChain ?? []).map((d) => new Uint8Array(d)),
        }
      : undefined,
  };
}
