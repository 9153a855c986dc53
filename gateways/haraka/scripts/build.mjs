// Transpiles the gateway component for Node with jco, into dist/.
//
//   ATTRELAY_GATEWAY_WASM=path/to/attrelay_gateway.wasm npm run build
//
// Without the variable it takes the build of the repository's workspace:
// `cargo build -p attrelay-gateway --profile gateway --target wasm32-wasip2`
// writes target/wasm32-wasip2/gateway/attrelay_gateway.wasm.
//
// "sync" instantiation: the plugin passes every import itself (lib/wasi.mjs,
// deny-all), so no WASI shim with real capabilities is ever linked.
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { transpile } from '@bytecodealliance/jco';
import { readFile } from 'node:fs/promises';

const here = dirname(fileURLToPath(import.meta.url));
const wasm = resolve(
  process.env.ATTRELAY_GATEWAY_WASM ??
    join(here, '../../../target/wasm32-wasip2/gateway/attrelay_gateway.wasm'),
);
if (!existsSync(wasm)) {
  console.error(`${wasm} does not exist: build it with
  cargo build -p attrelay-gateway --profile gateway --target wasm32-wasip2
or set ATTRELAY_GATEWAY_WASM to a built attrelay_gateway.wasm`);
  process.exit(2);
}
const out = process.env.ATTRELAY_GATEWAY_DIST ?? join(here, '../dist');
const { files } = await transpile(await readFile(wasm), {
  name: 'attrelay_gateway',
  instantiation: { tag: 'sync' },
  noTypescript: true,
  // No automatic rewriting to @bytecodealliance/preview2-shim (which hands
  // a component the process's environment, arguments and exit).
  noWasiShim: true,
  quiet: true,
});
rmSync(out, { recursive: true, force: true });
for (const [name, bytes] of Object.entries(files)) {
  const path = join(out, name);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, bytes);
}
// jco writes ES modules; the plugin around them is CommonJS.
writeFileSync(join(out, 'package.json'), '{ "type": "module" }\n');
console.log(`transpiled ${wasm} into ${out}`);
