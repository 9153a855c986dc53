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

/** Compiles the transpiled component in `dist` once. */
export async function compile(dist) {
  const glue = await import(pathToFileURL(resolve(dist, 'attrelay_gateway.js')).href);
  const modules = new Map();
  const getCoreModule = (name) => {
    if (!modules.has(name)) {
      modules.set(name, new WebAssembly.Module(readFileSync(resolve(dist, name))));
    }
    return modules.get(name);
  };
  return { glue, getCoreModule };
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
