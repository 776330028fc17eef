// The OpenID provider of the interop tests (tests/interop_*.rs): panva's certified
// `oidc-provider`, configured for what the tests need, on 127.0.0.1 only.
//
//   node interop/provider.mjs --port 9000 [--ttl 4] [--mtls-dir <dir>] [--mcp-resource <url>]
//
// With --mtls-dir (holding ca.pem, server.pem, server.key), it serves https, asks for
// client certificates of that CA, and has mTLS (RFC 8705) on: the client `mtls-client`
// (tls_client_auth, subject `CN=client A`) gets certificate-bound access tokens.
//
// With --mcp-resource (an MCP server's canonical URI), it is that server's
// authorization server, as MCP's authorization spec has it: dynamic client
// registration (RFC 7591) open to anyone, the URI a resource indicator (RFC 8707)
// whose tokens are JWTs with the scopes `read` and `admin`, PKCE (S256) for every
// authorization code.
//
// With --fapi, the FAPI 2.0 Security Profile is on for the client `fapi-client`
// (private_key_jwt with tests/keys/ec256.key, kid `fapi-ec`, ES256; a native
// application's loopback redirect; DPoP-bound tokens): pushed authorization requests
// (RFC 9126) required of every client (`require_pushed_authorization_requests` in the
// metadata), request objects (RFC 9101) accepted, PKCE and `iss` on the redirect as
// the profile has them. With --mtls-dir too, the client `fapi-mtls-client`
// (tls_client_auth as `CN=client A`, certificate-bound tokens) is the same login with
// mTLS; start node with NODE_EXTRA_CA_CERTS=<dir>/ca.pem so that /_test/browse trusts
// the provider's own certificate.
//
// Prints one line `ready <issuer> <kid>` on stdout once it listens. Every start signs
// with a fresh RSA key, so a restart on the same port is a key rotation.
//
// Test-only routes, next to the provider's own (not part of any standard):
//   GET  /_test/counts          requests per endpoint and grant type, as JSON
//                               (`token:<grant>:dpop` for those with a DPoP proof,
//                               `token:<grant>:use_dpop_nonce` for their nonce answers)
//
// Besides its own grants, it serves the JWT-bearer grant (RFC 7523 §2.1) for the
// service account `robot@tower-bearer.test` (tests/keys/rsa.key) and token exchange
// (RFC 8693) of its own access tokens, through its extension point.
//   POST /_test/fail?status=503 the token endpoint answers that status (0: stops)
//   POST /_test/approve         body `user_code=…`: a person approves a device login
//                               through the provider's own pages (dev interactions)
//   POST /_test/browse          body `url=…[&decline=1]`: a person's browser opens an
//                               authorization URL, logs in and consents (or cancels),
//                               and follows the redirect back to the client; answers
//                               `{ status, body }` of the client's page

import { createPublicKey, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import Provider, { errors } from 'oidc-provider';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

// The issuer names the port, so it is chosen by the caller.
const port = Number(arg('port', ''));
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node provider.mjs --port <port> [--ttl <seconds>]');
  process.exit(2);
}
// The lifetime of every access token, in seconds.
const ttl = Number(arg('ttl', '4'));

// The resource servers a client may ask tokens for (RFC 8707 resource indicators).
const RESOURCES = {
  'https://api.jwt.test': { format: 'jwt', scope: 'read write' },
  'https://api.opaque.test': { format: 'opaque', scope: 'read write' },
  'https://other.opaque.test': { format: 'opaque', scope: 'read write' },
};
const mcpResource = arg('mcp-resource', '');
const fapi = process.argv.includes('--fapi');
// The clients the FAPI 2.0 profile applies to (with --fapi); the others keep their ways.
const FAPI_CLIENTS = new Set(['fapi-client', 'fapi-mtls-client']);
if (mcpResource) {
  RESOURCES[mcpResource] = { format: 'jwt', scope: 'read admin' };
}

const kid = randomBytes(8).toString('hex');
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };

const counts = {};
function count(key) {
  counts[key] = (counts[key] || 0) + 1;
}
let failStatus = 0;

// The public halves of the test keys (tests/keys/), for the clients that
// authenticate with private_key_jwt.
function publicJwk(file, kid) {
  const pem = readFileSync(new URL(`../tests/keys/${file}`, import.meta.url));
  return { ...createPublicKey(pem).export({ format: 'jwk' }), kid, use: 'sig' };
}

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
// The service account of the JWT-bearer grant: its issuer and public key.
const SERVICE_ACCOUNT = 'robot@tower-bearer.test';
const SERVICE_ACCOUNT_KEY = createPublicKey(
  readFileSync(new URL('../tests/keys/rsa.pub.pem', import.meta.url)),
);

const clients = [
  {
    client_id: 'svc-basic',
    client_secret: 'basic-secret-0123456789',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  {
    client_id: 'svc-post',
    client_secret: 'post-secret-0123456789',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  {
    // A command-line tool: a public client logging people in with the device flow,
    // or in the browser with PKCE on a loopback redirect (RFC 8252: a native
    // application, whose loopback redirect may use any port).
    client_id: 'cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
    scope: 'openid offline_access read write',
  },
  {
    // A service authenticating with a signed assertion (RFC 7523 §2.2).
    client_id: 'svc-private-key-jwt',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [publicJwk('ec256.pub.pem', 'svc-ec'), publicJwk('ed25519.pub.pem', 'svc-ed')] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  {
    // The same with an HS256 assertion keyed with the client secret.
    client_id: 'svc-client-secret-jwt',
    client_secret: 'jwt-secret-0123456789abcdef0123456789',
    token_endpoint_auth_method: 'client_secret_jwt',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  {
    // A service account (the Google shape): its signed assertion is the credential
    // (RFC 7523 §2.1, the JWT-bearer grant registered below).
    client_id: 'svc-jwt-bearer',
    token_endpoint_auth_method: 'none',
    grant_types: [JWT_BEARER],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  {
    // A service that delegates: exchanges the tokens it is sent for its own
    // (RFC 8693, the token-exchange grant registered below).
    client_id: 'svc-exchange',
    client_secret: 'exchange-secret-0123456789',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [TOKEN_EXCHANGE, 'client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  {
    // The protected API: introspects the opaque tokens it is sent.
    client_id: 'api',
    client_secret: 'api-secret-0123456789',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
];

// mTLS (RFC 8705): https with client certificates, only with --mtls-dir.
const mtlsDir = arg('mtls-dir', '');
const tls = mtlsDir
  ? {
    ca: readFileSync(`${mtlsDir}/ca.pem`),
    cert: readFileSync(`${mtlsDir}/server.pem`),
    key: readFileSync(`${mtlsDir}/server.key`),
  }
  : null;
if (tls) {
  clients.push({
    client_id: 'mtls-client',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: 'CN=client A',
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  });  if (fapi) {
    // The FAPI 2.0 client with mTLS: certificate A authenticates it and binds its
    // tokens (RFC 8705), no key of its own.
    clients.push({
      client_id: 'fapi-mtls-client',
      application_type: 'native',
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: 'CN=client A',
      tls_client_certificate_bound_access_tokens: true,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
      scope: 'openid offline_access read write',
    });
  }
}
if (fapi) {
  clients.push({
    // A FAPI 2.0 client: a command-line tool logging people in through the
    // browser, with a key of its own (RFC 7523) and DPoP-bound tokens (RFC 9449).
    client_id: 'fapi-client',
    application_type: 'native',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    request_object_signing_alg: 'ES256',
    jwks: { keys: [publicJwk('ec256.pub.pem', 'fapi-ec')] },
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
    dpop_bound_access_tokens: true,
    scope: 'openid offline_access read write',
  });
}
const mTLS = {
  enabled: true,
  certificateBoundAccessTokens: true,
  tlsClientAuth: true,
  // The peer's certificate of this TLS connection (node verified it against the CA
  // when `authorized`).
  getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.(),
  certificateAuthorized: (ctx) => ctx.socket.authorized === true,
  certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
    && ctx.socket.getPeerX509Certificate?.()?.subject === expected.replace(/,\s*/g, '\n'),
};

const configuration = {
  clients,
  ...(tls ? {
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'client_secret_jwt',
      'private_key_jwt', 'none', 'tls_client_auth'],
  } : {}),
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // An MCP server's authorization server: PKCE for every authorization code, and a
  // client registered with some of the MCP server's scopes (those of its first
  // challenge) may ask later for the others (a step-up on `insufficient_scope`).
  ...(mcpResource ? {
    pkce: { required: () => true },
    extraClientMetadata: {
      properties: ['mcp_step_up'],
      validator(ctx, key, _value, metadata) {
        if (key === 'mcp_step_up' && ctx?.oidc?.route === 'registration' && metadata.scope) {
          const scopes = new Set([...metadata.scope.split(' '), ...RESOURCES[mcpResource].scope.split(' ')]);
          metadata.scope = [...scopes].join(' ');
        }
      },
    },
  } : {}),
  // Every refresh spends the refresh token and answers a new one.
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  scopes: ['openid', 'offline_access', 'read', 'write', ...(mcpResource ? ['admin'] : [])],
  // An exchanged token names the client that exchanged it as its actor (RFC 8693 §4.1).
  extraTokenClaims: async (ctx, token) => (token.gty === 'token_exchange'
    ? { act: { sub: ctx.oidc.client.clientId } }
    : undefined),
  ttl: {
    AccessToken: ttl,
    ClientCredentials: ttl,
    DeviceCode: 120,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 300,
    RefreshToken: 3600,
    Session: 3600,
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    introspection: {
      enabled: true,
      // The API may introspect any token (the default lets confidential clients).
      allowedPolicy: async () => true,
    },
    // Signed introspection answers (RFC 9701) for a client that asks for them with
    // `Accept: application/token-introspection+jwt` (RS256, the provider's key, the
    // default `introspection_signed_response_alg`); plain JSON for the others.
    jwtIntrospection: { enabled: true },
    revocation: { enabled: true },
    ...(mcpResource ? { registration: { enabled: true } } : {}),
    // DPoP-bound tokens (RFC 9449) for clients that send a proof; a client that
    // sends none gets bearer tokens as before. Every proof must carry the
    // provider's nonce (§8): a client's first token request is answered
    // `use_dpop_nonce`, and the nonce rotates.
    dPoP: {
      enabled: true,
      nonceSecret: randomBytes(32),
      requireNonce: () => true,
    },
    ...(tls ? { mTLS } : {}),
    ...(fapi ? {
      // The profile for its client only: the other clients keep their ways.
      fapi: { enabled: true, profile: (_ctx, client) => (FAPI_CLIENTS.has(client?.clientId) ? '2.0' : undefined) },
      pushedAuthorizationRequests: { enabled: true, requirePushedAuthorizationRequests: true },
      requestObjects: { enabled: true },
    } : {}),
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        const known = RESOURCES[resource];
        if (!known) {
          throw new errors.InvalidTarget();
        }
        return {
          audience: resource,
          scope: known.scope,
          accessTokenTTL: ttl,
          accessTokenFormat: known.format,
          ...(known.format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
        };
      },
    },
  },
};

const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
const provider = new Provider(issuer, configuration);

// The grants oidc-provider leaves to its extension point, implemented here with
// node's own verifier. Each issues an access token of the provider's own, which its
// introspection endpoint then describes.
async function issueAccessToken(ctx, accountId, scope, gty) {
  const { client } = ctx.oidc;
  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  if (scope) grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const token = new provider.AccessToken({
    accountId, client, grantId, scope: scope || undefined, gty,
  });
  return { access_token: await token.save(), token_type: 'Bearer', expires_in: token.expiration, scope };
}

// Only the scopes the client may ask for.
function allowedScope(ctx) {
  const asked = (ctx.oidc.params.scope || '').split(' ').filter(Boolean);
  const allowed = new Set((ctx.oidc.client.scope || '').split(' '));
  const bad = asked.find((s) => !allowed.has(s));
  if (bad) throw new errors.InvalidScope('scope not allowed', bad);
  return asked.join(' ');
}

// RFC 7523 §2.1 and §3: an RS256 assertion of the service account, for this token
// endpoint (or the issuer), unexpired, each `jti` used once.
const seenJti = new Set();
provider.registerGrantType(JWT_BEARER, async (ctx) => {
  const parts = String(ctx.oidc.params.assertion || '').split('.');
  const fail = (why) => { throw new errors.InvalidGrant(why); };
  if (parts.length !== 3) fail('the assertion is not a JWT');
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    fail('the assertion does not parse');
  }
  if (header.alg !== 'RS256') fail('the assertion is not RS256');
  const signed = verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), SERVICE_ACCOUNT_KEY, Buffer.from(parts[2], 'base64url'));
  if (!signed) fail('the assertion signature is invalid');
  const now = Math.floor(Date.now() / 1000);
  if (claims.iss !== SERVICE_ACCOUNT) fail('unknown assertion issuer');
  const audiences = [].concat(claims.aud);
  if (!audiences.includes(`${issuer}/token`) && !audiences.includes(issuer)) fail('the assertion is for another audience');
  if (typeof claims.exp !== 'number' || claims.exp <= now) fail('the assertion has expired');
  if (typeof claims.iat === 'number' && claims.iat > now + 5) fail('the assertion is issued in the future');
  if (claims.jti) {
    if (seenJti.has(claims.jti)) fail('the assertion was used before');
    seenJti.add(claims.jti);
  }
  const scope = claims.scope || allowedScope(ctx);
  ctx.body = await issueAccessToken(ctx, claims.sub || claims.iss, scope, 'jwt_bearer');
}, ['assertion', 'scope']);

// RFC 8693: a subject token the provider issued itself (an access token or a client
// credentials token) for a new access token of the same subject, with the client
// as the actor.
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  const subject = (await provider.AccessToken.find(params.subject_token))
    || (await provider.ClientCredentials.find(params.subject_token));
  if (!subject || subject.isExpired) throw new errors.InvalidGrant('the subject token is not active');
  const sub = subject.accountId || subject.clientId;
  const scope = allowedScope(ctx);
  const answer = await issueAccessToken(ctx, sub, scope, 'token_exchange');
  ctx.body = { ...answer, issued_token_type: ACCESS_TOKEN_TYPE };
}, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'audience', 'scope']);

// Counts and failure injection, around the provider's own routes.
provider.use(async (ctx, next) => {
  if (ctx.path === '/_test/counts' && ctx.method === 'GET') {
    ctx.body = counts;
    return;
  }
  if (ctx.path === '/_test/fail' && ctx.method === 'POST') {
    failStatus = Number(ctx.query.status || 0);
    ctx.body = { fail: failStatus };
    return;
  }
  if (ctx.path === '/_test/approve' && ctx.method === 'POST') {
    const body = await readBody(ctx.req);
    const userCode = new URLSearchParams(body).get('user_code');
    try {
      await approve(userCode);
      ctx.body = { approved: userCode };
    } catch (e) {
      ctx.status = 500;
      ctx.body = { error: String(e && e.message) };
    }
    return;
  }
  if (ctx.path === '/_test/browse' && ctx.method === 'POST') {
    const form = new URLSearchParams(await readBody(ctx.req));
    try {
      ctx.body = await browse(form.get('url'), form.get('decline') === '1');
    } catch (e) {
      ctx.status = 500;
      ctx.body = { error: String(e && e.message) };
    }
    return;
  }
  if (ctx.path === '/token' && failStatus) {
    count('token:failed');
    ctx.status = failStatus;
    ctx.body = { error: 'temporarily_unavailable', error_description: 'injected by the test' };
    return;
  }
  await next();
  const route = ctx.oidc && ctx.oidc.route;
  if (route === 'token') {
    const grant = (ctx.oidc.params && ctx.oidc.params.grant_type) || 'unknown';
    count(`token:${grant}`);
    if (ctx.status >= 400) count(`token:${grant}:error`);
    if (ctx.get('DPoP')) {
      count(`token:${grant}:dpop`);
      if (ctx.body && ctx.body.error === 'use_dpop_nonce') count(`token:${grant}:use_dpop_nonce`);
    }
  } else if (route === 'introspection' || route === 'revocation' || route === 'device_authorization'
    || route === 'registration' || route === 'authorization') {
    count(route);
  } else if (route === 'discovery' || route === 'jwks') {
    count(route);
  } else if (route === 'pushed_authorization_request') {
    // `par`, `par:error`, `par:dpop` (a proof on the push, RFC 9449 §10.1),
    // `par:request_object` (a signed request pushed, RFC 9101), `par:dpop_jkt`.
    const body = ctx.oidc.body || {};
    count('par');
    if (ctx.status >= 400) count('par:error');
    if (ctx.get('DPoP')) count('par:dpop');
    if (body.request) count('par:request_object');
    if (body.dpop_jkt) count('par:dpop_jkt');
  }
  if (route === 'authorization' && ctx.method === 'GET') {
    // What the browser brought: a reference to a pushed request, or the request.
    count(ctx.query.request_uri ? 'authorization:request_uri' : 'authorization:plain');
  }
});

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

// A browser: keeps cookies, follows nothing by itself.
function browser() {
  const jar = new Map();
  const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  async function go(method, url, form) {
    const res = await fetch(new URL(url, issuer), {
      method,
      redirect: 'manual',
      headers: {
        cookie: cookieHeader(),
        ...(form ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      },
      body: form ? new URLSearchParams(form).toString() : undefined,
    });
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const eq = pair.indexOf('=');
      jar.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    return { res, text: await res.text() };
  }
  return go;
}

// A person at a browser: opens an authorization URL, logs in and consents on the
// provider's dev interaction pages (or cancels), then the browser follows the
// redirect to the client's loopback listener, whose page is the answer.
async function browse(url, decline) {
  const go = browser();
  let page = await go('GET', url);
  for (let step = 0; step < 12; step += 1) {
    const location = page.res.headers.get('location');
    if (location) {
      const next = new URL(location, issuer);
      if (next.origin !== issuer) {
        // The redirect back to the client: the browser shows the client's page.
        const res = await fetch(next, { redirect: 'manual' });
        return { status: res.status, body: await res.text(), redirect: next.href };
      }
      page = await go('GET', next.href);
      continue;
    }
    const action = formAction(page.text);
    if (!action) throw new Error(`browse: stuck at HTTP ${page.res.status}: ${page.text.slice(0, 300)}`);
    if (decline) {
      const m = page.text.match(/href="([^"]*\/abort)"/);
      if (!m) throw new Error('browse: no cancel link');
      page = await go('GET', m[1]);
    } else if (page.text.includes('name="login"')) {
      page = await go('POST', action, { prompt: 'login', login: 'alice', password: 'any' });
    } else {
      page = await go('POST', action, { prompt: 'consent' });
    }
  }
  throw new Error('browse: too many steps');
}

const hidden = (html, name) => {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  return m && m[1];
};
const formAction = (html) => {
  const m = html.match(/<form[^>]*action="([^"]+)"/);
  return m && m[1];
};

// A person at a browser: enters the user code, logs in and consents on the
// provider's dev interaction pages. Cookies are kept as a browser keeps them.
async function approve(userCode) {
  const go = browser();
  // The code input page, then the confirmation page.
  let { text } = await go('GET', '/device');
  let page = await go('POST', formAction(text) || '/device', { xsrf: hidden(text, 'xsrf'), user_code: userCode });
  page = await go('POST', formAction(page.text) || '/device', {
    xsrf: hidden(page.text, 'xsrf'),
    user_code: hidden(page.text, 'user_code') || userCode,
    confirm: 'yes',
  });
  // Redirects through the interactions: login, then consent, then back to /device.
  for (let step = 0; step < 10; step += 1) {
    const location = page.res.headers.get('location');
    if (location) {
      page = await go('GET', location);
      continue;
    }
    const action = formAction(page.text);
    if (page.text.includes('Sign-in Success')) return;
    if (!action) throw new Error(`approve: stuck at HTTP ${page.res.status}: ${page.text.slice(0, 300)}`);
    if (page.text.includes('name="login"')) {
      page = await go('POST', action, { prompt: 'login', login: 'alice', password: 'any' });
    } else {
      page = await go('POST', action, { prompt: 'consent' });
    }
  }
  throw new Error('approve: too many steps');
}

const server = (tls
  // Certificates asked for, not required: node's verdict is `certificateAuthorized`.
  ? createServer({ ...tls, requestCert: true, rejectUnauthorized: false }, provider.callback())
  : provider).listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer} ${kid}`);
});
server.on('error', (e) => {
  console.error(`cannot listen: ${e.message}`);
  process.exit(1);
});
process.on('SIGTERM', () => process.exit(0));
// The test may stop reading: the provider keeps serving.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});
