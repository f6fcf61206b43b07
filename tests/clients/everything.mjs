// Starts @modelcontextprotocol/server-everything in Streamable HTTP mode on
// 127.0.0.1 and a port the kernel picks, and prints {"port": N} on stdout
// once it listens. The server itself calls app.listen(PORT) on every
// interface; the tests must bind loopback only, and a port chosen here and
// bound there could be taken in between, so listen() is narrowed first.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const cb = args.find((a) => typeof a === "function");
  this.once("listening", () => {
    process.stdout.write(JSON.stringify({ port: this.address().port }) + "\n");
  });
  return listen.call(this, { port: 0, host: "127.0.0.1" }, cb);
};
// The server logs each request on stdout; only the port line goes there.
console.log = (...a) => console.error(...a);
process.on("SIGTERM", () => process.exit(0));
await import("@modelcontextprotocol/server-everything/dist/transports/streamableHttp.js");
