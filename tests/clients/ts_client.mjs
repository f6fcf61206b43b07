// One MCP session with the official TypeScript SDK (@modelcontextprotocol/sdk,
// Streamable HTTP transport) through Envoy + agentplane, for
// tests/e2e/clients.rs. Prints one JSON line describing what the SDK
// handed its caller at each step; the Rust test asserts on it.
//
//   node ts_client.mjs <url> <protocol version to offer>
//   MCP_TOKEN: the bearer token (in the environment, never on the command line)
//
// The SDK always offers its LATEST_PROTOCOL_VERSION in `initialize` and then
// speaks whatever version the server chose (every one in
// SUPPORTED_PROTOCOL_VERSIONS). To drive an older era with the same SDK
// code, the custom fetch rewrites only the offered version in the
// initialize body; everything after that is the SDK's own behaviour for
// the version the server answered with.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  EmptyResultSchema,
  LATEST_PROTOCOL_VERSION,
  SUPPORTED_PROTOCOL_VERSIONS,
} from "@modelcontextprotocol/sdk/types.js";

const [url, offered = LATEST_PROTOCOL_VERSION] = process.argv.slice(2);
const token = process.env.MCP_TOKEN;
if (!url || !token) {
  console.error("usage: MCP_TOKEN=... node ts_client.mjs <url> [protocol version]");
  process.exit(2);
}

// Every HTTP exchange the SDK made: method, JSON-RPC method, the version
// header it sent, the status it got. A transport error is visible here as
// a non-2xx status.
const http = [];
async function recordingFetch(input, init = {}) {
  let body = init.body;
  let rpc = null;
  if (typeof body === "string") {
    const msg = JSON.parse(body);
    rpc = msg.method ?? "response";
    if (msg.method === "initialize" && offered !== LATEST_PROTOCOL_VERSION) {
      msg.params.protocolVersion = offered;
      body = JSON.stringify(msg);
    }
  }
  const headers = new Headers(init.headers);
  const res = await fetch(input, { ...init, body });
  http.push({
    method: init.method ?? "GET",
    rpc,
    version: headers.get("mcp-protocol-version"),
    auth: headers.has("authorization"),
    status: res.status,
  });
  return res;
}

// A thrown error as data: a JSON-RPC error (McpError) has a numeric code;
// a transport error (StreamableHTTPError) carries the HTTP status as code.
const failure = (e) => ({ threw: e?.constructor?.name ?? "Error", code: e?.code ?? null, message: String(e?.message ?? e) });
async function step(f) {
  try {
    return await f();
  } catch (e) {
    return failure(e);
  }
}

const transport = new StreamableHTTPClientTransport(new URL(url), {
  fetch: recordingFetch,
  requestInit: { headers: { authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "agentplane-e2e-ts", version: "1.0.0" });
const out = { sdk: "typescript", offered, supported: SUPPORTED_PROTOCOL_VERSIONS };
const timer = setTimeout(() => {
  out.timeout = true;
  console.log(JSON.stringify({ ...out, http }));
  process.exit(3);
}, 30000);

try {
  await client.connect(transport);
  out.negotiated = transport.protocolVersion ?? null;
  out.server = client.getServerVersion()?.name ?? null;
  out.session = transport.sessionId !== undefined;
  out.tools = await step(async () => (await client.listTools()).tools.map((t) => t.name).sort());
  out.allowed = await step(() => client.callTool({ name: "search_docs", arguments: { query: "vpn" } }));
  // Another team's ticket: the policy's reason must reach the model as a
  // tool result (isError), not as an exception from callTool.
  out.denied = await step(() =>
    client.callTool({ name: "lookup_ticket", arguments: { team: "ml", id: "T-9" } }),
  );
  // A method other than tools/call the token may not use, and one no
  // action maps: JSON-RPC errors the SDK raises as McpError.
  out.denied_method = await step(() => client.listResources());
  out.unmapped = await step(() => client.request({ method: "agentplane/unknown", params: {} }, EmptyResultSchema));
  out.terminated = await step(async () => {
    await transport.terminateSession();
    return transport.sessionId === undefined;
  });
} catch (e) {
  out.connect = failure(e);
}
clearTimeout(timer);
out.http = http;
await client.close().catch(() => {});
console.log(JSON.stringify(out));
