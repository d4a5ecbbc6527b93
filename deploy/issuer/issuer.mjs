// fieldgate's local token issuer: node-oidc-provider (an OpenID Certified OAuth 2.0 / OpenID Connect
// server) configured to issue Event Grid-style custom JWTs by the client-credentials grant.
//
//   node issuer.mjs serve --port N --issuer URL --audience URL --keys DIR --clients DIR [--token-ttl S]
//   node issuer.mjs add-client --clients DIR --client-id ID --public-key PEM [--claim NAME=VALUE ...]
//   node issuer.mjs disable-client|enable-client|remove-client --clients DIR --client-id ID
//   node issuer.mjs list-clients --clients DIR
//
// Everything OAuth is the provider's: client authentication (private_key_jwt: the assertion's signature
// under the client's registered JWKS, iss = sub = client id, aud, exp, single-use jti), the grant, token
// lifetimes, signing. This file only configures it:
// - the access token is a JWT for one resource server, the broker (aud = --audience);
// - its header says typ "JWT", which Event Grid and our broker require (the provider's default is RFC 9068's
//   "at+jwt");
// - it carries nbf (= iat; Event Grid requires nbf, RFC 9068 tokens have none) and the client's own claims
//   (`fieldgate_claims` in its registration: the token's sub and attributes such as site);
// - clients are JSON files in a directory (one per client, written atomically), read on every request, so a
//   client added, disabled or enabled takes effect at the next token request without a restart.
// Nothing logged here ever contains a key, an assertion or a token.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

const RESERVED = new Set(['iss', 'aud', 'exp', 'nbf', 'iat', 'jti', 'client_id', 'scope', 'cnf']);
const ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

function log(message) {
  process.stderr.write(`${new Date().toISOString()} issuer: ${message}\n`);
}

function fail(message) {
  process.stderr.write(`issuer.mjs: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const options = { claim: [] };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!arg.startsWith('--')) fail(`unexpected argument ${arg}`);
    const name = arg.slice(2);
    const value = argv[i + 1];
    if (value === undefined) fail(`${arg} needs a value`);
    i += 1;
    if (name === 'claim') options.claim.push(value);
    else options[name] = value;
  }
  return options;
}

function need(options, ...names) {
  for (const name of names) {
    if (options[name] === undefined || options[name] === '') fail(`--${name} is required`);
  }
}

// -- the client registry: <clients>/<client id>.json ---------------------------------------------------

function clientPath(dir, clientId) {
  if (!ID_PATTERN.test(clientId)) fail(`client id must match ${ID_PATTERN}`);
  return path.join(dir, `${clientId}.json`);
}

function readClient(dir, clientId) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, `${clientId}.json`), 'utf8'));
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
}

function writeClient(dir, record) {
  // Write then rename: the server reads these files on every request and must never see half of one.
  const target = clientPath(dir, record.client_id);
  const temporary = `${target}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o644 });
  fs.renameSync(temporary, target);
}

function parseClaim(text) {
  // NAME=VALUE sets a string; NAME:=JSON sets any JSON value (a number, an array of strings...).
  const json = text.indexOf(':=');
  const plain = text.indexOf('=');
  if (json > 0 && json < plain) return [text.slice(0, json), JSON.parse(text.slice(json + 2))];
  if (plain > 0) return [text.slice(0, plain), text.slice(plain + 1)];
  return fail(`--claim wants NAME=VALUE or NAME:=JSON, got ${text}`);
}

function addClient(options) {
  need(options, 'clients', 'client-id', 'public-key');
  fs.mkdirSync(options.clients, { recursive: true });
  const jwk = crypto.createPublicKey(fs.readFileSync(options['public-key'])).export({ format: 'jwk' });
  if (jwk.kty !== 'RSA') fail('the client key must be an RSA public key (the assertion is RS256)');
  jwk.kid = crypto.createHash('sha256').update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n }))
    .digest('base64url');
  jwk.use = 'sig';
  jwk.alg = 'RS256';
  const claims = Object.fromEntries(options.claim.map(parseClaim));
  for (const name of Object.keys(claims)) {
    if (RESERVED.has(name)) fail(`claim ${name} is set by the issuer, not per client`);
  }
  writeClient(options.clients, {
    client_id: options['client-id'],
    // Standard client metadata (RFC 7591): a machine client that authenticates with a key, never a secret.
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks: { keys: [jwk] },
    // Ours (declared as extraClientMetadata): the claims its tokens carry, and the on/off switch.
    fieldgate_claims: claims,
    fieldgate_disabled: false,
  });
  process.stdout.write(`client ${options['client-id']} registered (key ${jwk.kid})\n`);
}

function setDisabled(options, disabled) {
  need(options, 'clients', 'client-id');
  const record = readClient(options.clients, options['client-id']);
  if (!record) fail(`no client ${options['client-id']} in ${options.clients}`);
  record.fieldgate_disabled = disabled;
  writeClient(options.clients, record);
  process.stdout.write(`client ${options['client-id']} ${disabled ? 'disabled' : 'enabled'}\n`);
}

function removeClient(options) {
  need(options, 'clients', 'client-id');
  fs.rmSync(clientPath(options.clients, options['client-id']), { force: true });
  process.stdout.write(`client ${options['client-id']} removed\n`);
}

function listClients(options) {
  need(options, 'clients');
  for (const name of fs.readdirSync(options.clients).filter((n) => n.endsWith('.json')).sort()) {
    const record = JSON.parse(fs.readFileSync(path.join(options.clients, name), 'utf8'));
    const state = record.fieldgate_disabled ? 'disabled' : 'enabled';
    process.stdout.write(`${record.client_id}\t${state}\t${JSON.stringify(record.fieldgate_claims || {})}\n`);
  }
}

// -- the server ------------------------------------------------------------------------------------------

async function serve(options) {
  need(options, 'port', 'issuer', 'audience', 'keys', 'clients');
  const { default: Provider, errors } = await import('oidc-provider');
  const { default: MemoryAdapter } = await import('oidc-provider/lib/adapters/memory_adapter.js');
  const ttl = Number(options['token-ttl'] || 3600);
  if (!Number.isInteger(ttl) || ttl < 1) fail('--token-ttl must be a whole number of seconds');
  const clientsDir = options.clients;
  fs.mkdirSync(clientsDir, { recursive: true });

  const signing = crypto.createPrivateKey(fs.readFileSync(path.join(options.keys, 'signing.key')))
    .export({ format: 'jwk' });
  const publicPart = { e: signing.e, kty: signing.kty, n: signing.n };
  signing.kid = crypto.createHash('sha256').update(JSON.stringify(publicPart)).digest('base64url');
  signing.use = 'sig';
  signing.alg = 'RS256';

  // Clients come from their files, everything else (replay detection of assertion jtis, issued tokens)
  // lives in memory: the issuer is stateless across restarts except for who its clients are.
  class Adapter {
    constructor(model) {
      this.model = model;
      this.memory = model === 'Client' ? undefined : new MemoryAdapter(model);
    }

    async find(id) {
      if (this.memory) return this.memory.find(id);
      if (!ID_PATTERN.test(id)) return undefined;
      const record = readClient(clientsDir, id);
      if (!record) {
        log(`token request from unknown client '${id}' refused`);
        return undefined;
      }
      if (record.fieldgate_disabled) {
        log(`token request from disabled client '${id}' refused`);
        return undefined;
      }
      return record;
    }

    async upsert(id, payload, expiresIn) { return this.memory?.upsert(id, payload, expiresIn); }

    async findByUid(uid) { return this.memory?.findByUid(uid); }

    async findByUserCode(code) { return this.memory?.findByUserCode(code); }

    async consume(id) { return this.memory?.consume(id); }

    async destroy(id) { return this.memory?.destroy(id); }

    async revokeByGrantId(grantId) { return this.memory?.revokeByGrantId(grantId); }
  }

  const provider = new Provider(options.issuer, {
    adapter: Adapter,
    jwks: { keys: [signing] },
    extraClientMetadata: {
      properties: ['fieldgate_claims', 'fieldgate_disabled'],
      validator(ctx, key, value) {
        if (key === 'fieldgate_claims' && value !== undefined
            && (typeof value !== 'object' || value === null || Array.isArray(value))) {
          throw new errors.InvalidClientMetadata('fieldgate_claims must be an object');
        }
      },
    },
    // No interactive flows here, so no cookie ever matters; random keys keep the provider from warning.
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    clientAuthMethods: ['private_key_jwt'],
    enabledJWA: { clientAuthSigningAlgValues: ['RS256'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // A gateway need not send `resource`: its token is for the broker.
        defaultResource: () => options.audience,
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resourceIndicator) {
          if (resourceIndicator !== options.audience) {
            throw new errors.InvalidTarget(`this issuer only issues tokens for ${options.audience}`);
          }
          return {
            audience: options.audience,
            scope: 'mqtt.publish mqtt.subscribe',
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    formats: {
      customizers: {
        jwt(ctx, token, jwt) {
          // The header fields given here override the provider's typ "at+jwt".
          jwt.header = { typ: 'JWT' };
          const claims = token.client?.fieldgate_claims || {};
          for (const [name, value] of Object.entries(claims)) {
            if (!RESERVED.has(name)) jwt.payload[name] = value;
          }
          jwt.payload.nbf = jwt.payload.iat;
        },
      },
    },
    ttl: { ClientCredentials: ttl },
    // Tolerate a little clock difference in client assertions (the gateway signs them with its own clock).
    clockTolerance: 5,
    routes: { token: '/token', jwks: '/jwks' },
  });
  provider.proxy = false;

  provider.on('grant.success', (ctx) => {
    const client = ctx.oidc.client?.clientId;
    const claims = ctx.oidc.client?.fieldgate_claims || {};
    log(`issued an access token to client '${client}' (sub ${claims.sub || client}, ttl ${ttl} s)`);
  });
  provider.on('grant.error', (ctx, err) => {
    const client = ctx.oidc.client?.clientId || ctx.oidc.params?.client_id || '?';
    log(`token request from client '${client}' refused: ${err.error} (${err.error_detail || err.message})`);
  });
  provider.on('server_error', (ctx, err) => log(`server error: ${err.message}`));

  const server = provider.listen(Number(options.port), '127.0.0.1', () => {
    log(`listening on http://127.0.0.1:${options.port} (issuer ${options.issuer}, audience ${options.audience}, token ttl ${ttl} s)`);
  });
  server.on('error', (err) => {
    log(`cannot listen on 127.0.0.1:${options.port}: ${err.code || err.message}`);
    process.exit(1);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

const [command, ...rest] = process.argv.slice(2);
const options = parseArgs(rest);
switch (command) {
  case 'serve': await serve(options); break;
  case 'add-client': addClient(options); break;
  case 'disable-client': setDisabled(options, true); break;
  case 'enable-client': setDisabled(options, false); break;
  case 'remove-client': removeClient(options); break;
  case 'list-clients': listClients(options); break;
  default: fail('usage: issuer.mjs serve|add-client|disable-client|enable-client|remove-client|list-clients ...');
}
