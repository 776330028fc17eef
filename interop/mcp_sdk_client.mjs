// The official MCP TypeScript SDK's client (@modelcontextprotocol/sdk, pinned in
// package.json) against an MCP server protected by tower-bearer
// (tests/interop_mcp_sdk.rs runs it against examples/mcp_server.rs, with
// interop/provider.mjs as the authorization server).
//
//   node interop/mcp_sdk_client.mjs --mcp <server URL> --issuer <provider URL>
//
// The SDK does all of the authorization itself, as a person's MCP client would: it
// gets the server's 401, finds the resource metadata and the authorization server
// from it, registers (RFC 7591), sends the person to log in with PKCE and the
// server as the resource (RFC 8707), and calls tools. The person's browser is the
// provider's `/_test/browse` (its own login and consent pages); the redirect comes
// back to this script's loopback listener.
//
// Then a token the same provider issued for another resource is offered to the
// server, which must refuse it.
//
// Prints one JSON line per step, `{"step": …, …}`, and a last line `{"done": true}`;
// exits non-zero when the SDK fails.

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || !process.argv[i + 1]) {
    console.error('usage: node mcp_sdk_client.mjs --mcp <url> --issuer <url>');
    process.exit(2);
  }
  return process.argv[i + 1];
}

const mcpUrl = new URL(arg('mcp'));
const issuer = arg('issuer');
const report = (step, facts) => console.log(JSON.stringify({ step, ...facts }));

// Every HTTP exchange the SDK makes, as the test wants to see them: method, URL
// (without its query), status, and the challenge of a refusal.
const exchanges = [];
async function observedFetch(input, init) {
  const res = await fetch(input, init);
  const url = new URL(input instanceof Request ? input.url : String(input));
  exchanges.push({
    method: (init && init.method) || 'GET',
    url: `${url.origin}${url.pathname}`,
    status: res.status,
    challenge: res.headers.get('www-authenticate') || undefined,
  });
  return res;
}

// The loopback listener the provider redirects the browser back to (RFC 8252).
const codes = [];
const callback = createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname !== '/callback') {
    res.writeHead(404).end();
    return;
  }
  codes.push(Object.fromEntries(url.searchParams));
  res.writeHead(200, { 'content-type': 'text/plain' }).end('logged in; back to the MCP client');
});
await new Promise((resolve) => { callback.listen(0, '127.0.0.1', resolve); });
const redirectUrl = `http://127.0.0.1:${callback.address().port}/callback`;

// The person at the browser: the provider's own login and consent pages.
async function browse(url) {
  const res = await fetch(new URL('/_test/browse', issuer), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ url: url.href }).toString(),
  });
  const answer = await res.json();
  if (res.status !== 200 || answer.status !== 200) {
    throw new Error(`the login failed: ${JSON.stringify(answer)}`);
  }
}

// The SDK's OAuth client provider, in memory: what a desktop MCP client keeps.
class InMemoryProvider {
  constructor() {
    this.authorizations = [];
    this.registered = undefined;
    this.saved = undefined;
    this.verifier = undefined;
    this.pendingLogin = undefined;
  }

  get redirectUrl() { return redirectUrl; }

  get clientMetadata() {
    return {
      client_name: 'tower-bearer interop: MCP TypeScript SDK',
      redirect_uris: [redirectUrl],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      application_type: 'native',
    };
  }

  state() { return randomBytes(16).toString('hex'); }

  clientInformation() { return this.registered; }

  saveClientInformation(info) {
    this.registered = info;
    report('registered', {
      client_id: info.client_id,
      token_endpoint_auth_method: info.token_endpoint_auth_method,
    });
  }

  tokens() { return this.saved; }

  saveTokens(tokens) {
    this.saved = tokens;
    report('tokens', { token_type: tokens.token_type, scope: tokens.scope });
  }

  redirectToAuthorization(url) {
    const p = url.searchParams;
    this.authorizations.push(url);
    report('authorize', {
      endpoint: `${url.origin}${url.pathname}`,
      resource: p.get('resource'),
      scope: p.get('scope'),
      code_challenge_method: p.get('code_challenge_method'),
      has_code_challenge: Boolean(p.get('code_challenge')),
    });
    // The browser opens; the SDK's caller finishes once it is back.
    this.pendingLogin = browse(url);
  }

  saveCodeVerifier(verifier) { this.verifier = verifier; }

  codeVerifier() { return this.verifier; }
}

const provider = new InMemoryProvider();

// Connects, or runs the login the SDK asks for and connects again.
async function withLogin(action, makeTransport) {
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const transport = makeTransport();
    try {
      return await action(transport);
    } catch (e) {
      if (!(e instanceof UnauthorizedError) || !provider.pendingLogin) throw e;
      await provider.pendingLogin;
      provider.pendingLogin = undefined;
      const { code, iss, error, error_description: why } = codes.at(-1) || {};
      if (!code) throw new Error(`the browser came back without a code: ${error}: ${why}`);
      report('callback', { iss });
      await transport.finishAuth(code);
    }
  }
  throw new Error('no access after three logins');
}

const transportFor = () => new StreamableHTTPClientTransport(mcpUrl, {
  authProvider: provider,
  fetch: observedFetch,
});

const client = new Client({ name: 'tower-bearer-interop', version: '1.0.0' });
await withLogin((t) => client.connect(t), transportFor);
report('connected', { server: client.getServerVersion()?.name });

const { tools } = await client.listTools();
report('tools', { names: tools.map((t) => t.name) });

const echo = await client.callTool({ name: 'echo', arguments: { text: 'hello from the TypeScript SDK' } });
report('echo', { text: echo.content?.[0]?.text, isError: Boolean(echo.isError) });

// A tool that needs more than the first login gave: the server answers 403
// insufficient_scope and the SDK steps up (a new login for the scope named).
const stats = await withLogin(
  () => client.callTool({ name: 'server_stats', arguments: {} }),
  () => client.transport,
);
report('server_stats', { text: stats.content?.[0]?.text, isError: Boolean(stats.isError) });
await client.close();

// A token of the same provider for another resource (client credentials of a
// service, RFC 8707 `resource`), offered to this server.
const basic = Buffer.from('svc-basic:basic-secret-0123456789').toString('base64');
const tokenRes = await fetch(new URL('/token', issuer), {
  method: 'POST',
  headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'read', resource: 'https://api.jwt.test' }).toString(),
});
const other = await tokenRes.json();
if (!other.access_token) throw new Error(`no token for the other resource: ${JSON.stringify(other)}`);
const refused = await fetch(mcpUrl, {
  method: 'POST',
  headers: {
    authorization: `Bearer ${other.access_token}`,
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
  },
  body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: {} }),
});
report('other_resource', { status: refused.status, challenge: refused.headers.get('www-authenticate') });

report('exchanges', { exchanges });
console.log(JSON.stringify({ done: true }));
callback.close();
process.exit(0);
