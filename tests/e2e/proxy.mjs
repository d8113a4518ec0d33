// A TCP proxy for the end-to-end tests: forwards every connection to a target address, and
// on SIGUSR1 drops every connection it carries at once, as a network failure would (each
// side sees its socket end, with no WebSocket close frame). New connections are forwarded
// as before.
//
//   node tests/e2e/proxy.mjs TARGET_HOST:PORT ADDR_FILE
//
// Listens on 127.0.0.1 (a free port) and writes its HOST:PORT to ADDR_FILE once listening.

import { createServer, connect } from "node:net";
import { writeFileSync } from "node:fs";

const [target, addrFile] = process.argv.slice(2);
if (!target || !addrFile) throw new Error("usage: proxy.mjs TARGET_HOST:PORT ADDR_FILE");
const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];

const live = new Set();
const server = createServer((inbound) => {
  const outbound = connect(port, host);
  for (const [a, b] of [[inbound, outbound], [outbound, inbound]]) {
    live.add(a);
    a.pipe(b);
    a.on("error", () => b.destroy());
    a.on("close", () => {
      live.delete(a);
      b.destroy();
    });
  }
});
server.listen(0, "127.0.0.1", () => {
  const { address, port: listening } = server.address();
  writeFileSync(addrFile, `${address}:${listening}\n`);
  console.log(`proxy: ${address}:${listening} -> ${target}`);
});
process.on("SIGUSR1", () => {
  console.log(`proxy: dropping ${live.size / 2} connections`);
  // resetAndDestroy sends a TCP RST: nothing buffered goes out, as when a network fails.
  for (const socket of live) socket.resetAndDestroy();
});
process.on("SIGTERM", () => process.exit(0));
