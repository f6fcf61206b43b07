// A loopback forwarder that adds `authorization: Bearer $MCP_TOKEN` to every
// request and sends it to Envoy under a path prefix, streaming both ways
// (event streams pass chunk by chunk). The conformance CLI's server mode
// connects with a bare StreamableHTTPClientTransport and has no option for
// headers, so this is how its requests carry a token through jwt_authn.
//
//   MCP_TOKEN=... node auth_forwarder.mjs <envoy port> <path prefix>
// prints {"port": N} once it listens on 127.0.0.1:N.
import http from "node:http";

const [target, prefix = ""] = process.argv.slice(2);
const token = process.env.MCP_TOKEN;
if (!target || !token) {
  console.error("usage: MCP_TOKEN=... node auth_forwarder.mjs <port> [prefix]");
  process.exit(2);
}
const server = http.createServer((req, res) => {
  const headers = { ...req.headers, authorization: `Bearer ${token}` };
  const up = http.request(
    { host: "127.0.0.1", port: Number(target), method: req.method, path: prefix + req.url, headers },
    (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    },
  );
  up.on("error", (e) => {
    if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
    res.end(`forwarder: ${e.message}`);
  });
  req.pipe(up);
  // A client that goes away (an event stream it closed) closes upstream too.
  res.on("close", () => up.destroy());
});
server.listen({ port: 0, host: "127.0.0.1" }, () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
process.on("SIGTERM", () => process.exit(0));
