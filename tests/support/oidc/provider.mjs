// A real OpenID Connect provider for the hub's login tests and the local quick start:
// panva's certified `oidc-provider`, configured from one JSON argument.
//
//   node provider.mjs '{"port": 9000, "clients": [{"client_id": "hub", "client_secret": "s",
//     "redirect_uris": ["http://term.localhost:7112/_hub/oauth/callback"]}],
//     "groups": {"alice": ["dev"]}, "skipConsent": true}'
//
// Its development login form (/interaction/<uid>) accepts any login name with any password;
// "Cancel" on it ends the login with error=access_denied. Userinfo (/me) returns sub,
// preferred_username, name and groups (from "groups", by login name) for scope openid.
// Prints "listening <issuer>" on stdout once it accepts connections.
import Provider from 'oidc-provider';

const options = JSON.parse(process.argv[2] || '{}');
const port = options.port ?? 9000;
const host = options.host ?? '127.0.0.1';
const issuer = options.issuer ?? `http://${host}:${port}`;
const groups = options.groups ?? {};

const clients = (options.clients ?? []).map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));

const configuration = {
  clients,
  findAccount: async (ctx, id) => ({
    accountId: id,
    async claims() {
      return { sub: id, preferred_username: id, name: id, groups: groups[id] ?? [] };
    },
  }),
  claims: { openid: ['sub', 'preferred_username', 'name', 'groups'] },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true, methods: ['S256'] },
  cookies: { keys: ['rediacc-hub-test-provider-cookie-key'] },
  ttl: { AccessToken: 3600, AuthorizationCode: 60, Grant: 3600, Interaction: 600, Session: 3600, IdToken: 3600 },
};

if (options.skipConsent ?? true) {
  // Trust the hub as a first-party client: grant its requested scopes without a consent screen.
  configuration.loadExistingGrant = async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(' ') : 'openid');
    await grant.save();
    return grant;
  };
}

const provider = new Provider(issuer, configuration);
provider.proxy = true;
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = provider.listen(port, host, () => {
  console.log(`listening ${issuer}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
