/*
 * fieldgate_auth: a mosquitto 2.0 plugin (API v5) that authenticates MQTT v5 clients the way
 * Azure Event Grid's MQTT broker does with custom JWTs:
 *
 *   CONNECT  Authentication Method = "CUSTOM-JWT" (configurable), Authentication Data = JWT (RS256)
 *   AUTH     reason 0x19 with a fresh JWT re-authenticates the live connection (same `sub` only)
 *   expiry   a client whose token expires without re-authentication is disconnected
 *   ACL      publish / subscribe only where the token's claims grant it (permissions.c)
 *
 * Every decision is logged with the client id and the reason; the token itself never is.
 *
 * Options (plugin_opt_<name>):
 *   method            authentication method (default CUSTOM-JWT)
 *   issuer            required `iss` (required)
 *   audience          the namespace's audience (required); `aud` (a string or an array of strings)
 *                     must hold the same host in one of Event Grid's documented spellings:
 *                     `host`, `host/` or `https://host/`
 *   max_auth_data     largest Authentication Data (token) in bytes (default 8192, Event Grid's limit)
 *   max_sub_length    longest `sub` (authentication name) in characters (default 128)
 *   public_key_file   issuer public key, PEM (required)
 *   public_key_file_2 second issuer public key for rotation (optional)
 *   nbf_skew          seconds of clock skew tolerated on `nbf` (default 5)
 *   publish_claim     claim listing publish topic filters (default publish_topics, "-" = none)
 *   subscribe_claim   claim listing subscribe topic filters (default subscribe_topics, "-" = none)
 *   publish_template  Event Grid topic template granting publish (repeatable)
 *   subscribe_template Event Grid topic template granting subscribe (repeatable)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "permissions.h"

#define LOG_PREFIX "fieldgate_auth: "
#define MAX_KEYS 2
#define MAX_KEY_BYTES (64 * 1024)

/*
 * One record per authenticated connection. mosquitto 2.0.11 calls the disconnect callback
 * before it publishes the client's will, so a record outlives its connection (live = false)
 * for WILL_GRACE seconds, long enough for a will delayed by Event Grid's maximum (300 s), so
 * that the will is checked against the grants the connection had. Lookups for
 * authentication only see live records: the context's memory may be reused by a new client.
 */
struct fg_client {
	struct mosquitto *client; /* dereferenced only while live */
	char *id;                 /* client id, for log lines once the connection is gone */
	char *sub;
	time_t exp;
	fg_grants grants;
	bool expiry_handled;
	time_t kicked_at;         /* when the expired connection was last asked to go */
	bool live;
	time_t gone_at;
	struct fg_client *next;
};

#define WILL_GRACE 310
/* An expired connection still live this long after its kick is kicked again: a kick that meets the
 * connection in the middle of another state change can be lost. */
#define KICK_AGAIN_AFTER 2

struct fg_plugin {
	mosquitto_plugin_id_t *identifier;
	char *method;
	char *issuer;
	char *audience;
	char *audience_host; /* `audience` without scheme and trailing '/': what every spelling names */
	long max_auth_data;
	long max_sub_length;
	EVP_PKEY *keys[MAX_KEYS]; /* RSA public keys of the issuer */
	int key_count;
	long nbf_skew;
	char *publish_claim;
	char *subscribe_claim;
	fg_perm_config perm;
	struct fg_client *clients;
};

static struct fg_plugin plugin;

/* Outcome of verifying one token; on success the caller owns sub, claims and grants. */
struct fg_verified {
	char *sub;
	time_t exp;
	cJSON *claims;
	fg_grants grants;
};

static const char *client_id_of(const struct mosquitto *client)
{
	const char *id = client ? mosquitto_client_id(client) : NULL;
	return id ? id : "(no client id)";
}

static time_t now_seconds(void)
{
	/* Token times are wall-clock seconds; the tick event's own time fields are zero in 2.0.11. */
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec;
}

static struct fg_client *find_client(const struct mosquitto *client, bool live)
{
	/* Newest first: records are pushed at the head. */
	for(struct fg_client *c = plugin.clients; c; c = c->next){
		if(c->client == client && c->live == live) return c;
	}
	return NULL;
}

static void free_client(struct fg_client *c)
{
	free(c->id);
	free(c->sub);
	fg_grants_free(&c->grants);
	free(c);
}

static void purge_gone_clients(time_t now)
{
	struct fg_client **link = &plugin.clients;
	while(*link){
		struct fg_client *c = *link;
		if(!c->live && now - c->gone_at > WILL_GRACE){
			*link = c->next;
			free_client(c);
		}else{
			link = &c->next;
		}
	}
}

static void free_verified(struct fg_verified *v)
{
	free(v->sub);
	cJSON_Delete(v->claims);
	fg_grants_free(&v->grants);
	memset(v, 0, sizeof(*v));
}

/* base64url without padding -> bytes (NUL-terminated, length in *out_len if given); NULL on
 * malformed input. */
static char *base64url_decode_n(const char *in, size_t len, size_t *out_len)
{
	char *out = malloc(len * 3 / 4 + 4);
	if(!out) return NULL;
	unsigned int acc = 0;
	int bits = 0;
	size_t n = 0;
	for(size_t i = 0; i < len; i++){
		char ch = in[i];
		int v;
		if(ch >= 'A' && ch <= 'Z') v = ch - 'A';
		else if(ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
		else if(ch >= '0' && ch <= '9') v = ch - '0' + 52;
		else if(ch == '-') v = 62;
		else if(ch == '_') v = 63;
		else if(ch == '=') break;
		else{
			free(out);
			return NULL;
		}
		acc = (acc << 6) | (unsigned int)v;
		bits += 6;
		if(bits >= 8){
			bits -= 8;
			out[n++] = (char)((acc >> bits) & 0xFF);
		}
	}
	out[n] = '\0';
	if(out_len) *out_len = n;
	return out;
}

static char *base64url_decode(const char *in, size_t len)
{
	return base64url_decode_n(in, len, NULL);
}

/*
 * RS256: RSASSA-PKCS1-v1_5 with SHA-256 over "header.payload". The plugin verifies itself
 * (OpenSSL) instead of through libjwt 1.10, which takes the algorithm from the token and
 * refuses any `typ` but JWT, while Event Grid's page names the type JWS.
 */
static bool rs256_verifies(EVP_PKEY *key, const char *input, size_t input_len, const unsigned char *sig,
		size_t sig_len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1
			&& EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)input, input_len) == 1;
	EVP_MD_CTX_free(ctx);
	return ok;
}

/*
 * Reads the JOSE header: only RS256 is verified, whatever the token claims, so an HS256 token
 * HMAC'd with the public key text or an unsigned `none` token never verifies.
 */
static const char *check_header(const char *token)
{
	const char *dot1 = strchr(token, '.');
	if(!dot1) return "not a JWT (no '.')";
	const char *dot2 = strchr(dot1 + 1, '.');
	if(!dot2 || strchr(dot2 + 1, '.')) return "not a compact JWS (needs exactly three parts)";
	char *header_json = base64url_decode(token, (size_t)(dot1 - token));
	if(!header_json) return "header is not base64url";
	cJSON *header = cJSON_Parse(header_json);
	free(header_json);
	if(!cJSON_IsObject(header)){
		cJSON_Delete(header);
		return "header is not a JSON object";
	}
	const char *problem = NULL;
	const cJSON *alg = cJSON_GetObjectItemCaseSensitive(header, "alg");
	const cJSON *typ = cJSON_GetObjectItemCaseSensitive(header, "typ");
	if(!cJSON_IsString(alg)){
		problem = "header has no alg";
	}else if(strcmp(alg->valuestring, "RS256")){
		problem = "alg is not RS256";
	}else if(!typ){
		/* Event Grid requires `typ`; its page says JWS, its example shows JWT: both pass. */
		problem = "header has no typ";
	}else if(!cJSON_IsString(typ) || (strcasecmp(typ->valuestring, "JWT") && strcasecmp(typ->valuestring, "JWS"))){
		problem = "typ is neither JWT nor JWS";
	}
	cJSON_Delete(header);
	return problem;
}

/*
 * The host an audience names: "https://host/", "host/" and "host" all name "host" (Event Grid
 * documents these three spellings of the namespace's host). Writes at most `size` bytes; false
 * for other shapes (another scheme, a path, an empty host).
 */
static bool audience_host(const char *aud, char *out, size_t size)
{
	const char *start = aud;
	bool https = !strncasecmp(start, "https://", 8);
	if(https) start += 8;
	size_t len = strlen(start);
	if(len && start[len - 1] == '/') len--;
	else if(https) return false; /* the documented URL form ends with '/' */
	if(len == 0 || len >= size || memchr(start, '/', len)) return false;
	memcpy(out, start, len);
	out[len] = '\0';
	return true;
}

static bool audience_item_matches(const cJSON *item)
{
	char host[256];
	return cJSON_IsString(item) && audience_host(item->valuestring, host, sizeof(host))
			&& !strcasecmp(host, plugin.audience_host);
}

static bool audience_matches(const cJSON *aud)
{
	if(cJSON_IsString(aud)) return audience_item_matches(aud);
	if(cJSON_IsArray(aud)){
		const cJSON *item;
		cJSON_ArrayForEach(item, aud){
			if(audience_item_matches(item)) return true;
		}
	}
	return false;
}

/* Characters (code points) in a UTF-8 string: Event Grid counts the name's characters, not bytes. */
static long utf8_length(const char *s)
{
	long n = 0;
	for(; *s; s++){
		if(((unsigned char)*s & 0xC0) != 0x80) n++;
	}
	return n;
}

/* NULL and `out` filled when the token is good; otherwise a static reason (never token text). */
static const char *verify_token(const void *data, uint16_t len, struct fg_verified *out)
{
	memset(out, 0, sizeof(*out));
	if(!data || len == 0) return "no authentication data (token) in packet";
	/* Event Grid's Authentication Data limit (8 KB): a bigger token never reaches the verifier. */
	if((long)len > plugin.max_auth_data){
		/* mosquitto runs plugins on one thread: a static buffer is safe for the caller's log line. */
		static char reason[160];
		snprintf(reason, sizeof(reason), "authentication data is %u bytes, over the limit of %ld", (unsigned)len,
				plugin.max_auth_data);
		return reason;
	}
	char *token = malloc((size_t)len + 1);
	if(!token) return "out of memory";
	memcpy(token, data, len);
	token[len] = '\0';
	if(strlen(token) != len){
		free(token);
		return "token contains a NUL byte";
	}

	/* check_header makes sure of the alg (RS256 only) and of exactly three parts. */
	const char *problem = check_header(token);
	char *claims_json = NULL;
	if(!problem){
		const char *dot1 = strchr(token, '.');
		const char *dot2 = strchr(dot1 + 1, '.');
		size_t sig_len = 0;
		char *sig = base64url_decode_n(dot2 + 1, strlen(dot2 + 1), &sig_len);
		problem = "signature does not verify with any issuer key";
		for(int i = 0; sig && i < plugin.key_count; i++){
			if(rs256_verifies(plugin.keys[i], token, (size_t)(dot2 - token), (unsigned char *)sig, sig_len)){
				problem = NULL;
				break;
			}
		}
		free(sig);
		if(!problem){
			claims_json = base64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1));
			if(!claims_json) problem = "claims are not base64url";
		}
	}
	free(token);

	if(claims_json){
		out->claims = cJSON_Parse(claims_json);
		free(claims_json);
		if(!cJSON_IsObject(out->claims)) problem = "claims are not a JSON object";
	}
	if(problem){
		free_verified(out);
		return problem;
	}

	const cJSON *iss = cJSON_GetObjectItemCaseSensitive(out->claims, "iss");
	const cJSON *sub = cJSON_GetObjectItemCaseSensitive(out->claims, "sub");
	const cJSON *aud = cJSON_GetObjectItemCaseSensitive(out->claims, "aud");
	const cJSON *exp = cJSON_GetObjectItemCaseSensitive(out->claims, "exp");
	const cJSON *nbf = cJSON_GetObjectItemCaseSensitive(out->claims, "nbf");
	time_t now = now_seconds();
	if(!cJSON_IsString(iss)) problem = "iss missing";
	else if(strcmp(iss->valuestring, plugin.issuer)) problem = "iss is not the configured issuer";
	else if(!cJSON_IsString(sub) || sub->valuestring[0] == '\0') problem = "sub missing";
	else if(utf8_length(sub->valuestring) > plugin.max_sub_length){
		static char reason[160];
		snprintf(reason, sizeof(reason), "sub is %ld characters, over the authentication name limit of %ld",
				utf8_length(sub->valuestring), plugin.max_sub_length);
		problem = reason;
	}
	else if(!aud) problem = "aud missing";
	else if(!audience_matches(aud)) problem = "aud does not contain the configured audience";
	else if(!cJSON_IsNumber(exp)) problem = "exp missing";
	else if(exp->valuedouble <= (double)now) problem = "token expired (exp in the past)";
	else if(!cJSON_IsNumber(nbf)) problem = "nbf missing";
	else if(nbf->valuedouble > (double)(now + plugin.nbf_skew)) problem = "token not yet valid (nbf in the future)";
	if(problem){
		free_verified(out);
		return problem;
	}
	out->sub = strdup(sub->valuestring);
	/* Clamp absurd values before the conversion (a double beyond time_t is undefined behaviour). */
	out->exp = exp->valuedouble > 1e15 ? (time_t)1e15 : (time_t)exp->valuedouble;
	if(!out->sub || fg_grants_from_claims(&plugin.perm, out->claims, out->sub, &out->grants)){
		free_verified(out);
		return "out of memory";
	}
	return NULL;
}

static int on_auth_start(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_extended_auth *ed = event_data;
	const char *cid = client_id_of(ed->client);
	struct fg_client *existing = find_client(ed->client, true);
	const char *what = existing ? "re-authentication" : "connect";

	if(!ed->auth_method || strcmp(ed->auth_method, plugin.method)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "client '%s' %s refused: authentication method '%s' is not '%s'",
				cid, what, ed->auth_method ? ed->auth_method : "", plugin.method);
		/* NOT_SUPPORTED makes mosquitto answer 0x8C (bad authentication method). */
		return MOSQ_ERR_NOT_SUPPORTED;
	}

	struct fg_verified v;
	const char *problem = verify_token(ed->data_in, ed->data_in_len, &v);
	if(problem){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "client '%s' %s refused: %s", cid, what, problem);
		return MOSQ_ERR_AUTH;
	}
	time_t now = now_seconds();

	if(existing){
		if(strcmp(existing->sub, v.sub)){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					LOG_PREFIX "client '%s' re-authentication refused: sub '%s' differs from the connection's '%s'",
					cid, v.sub, existing->sub);
			free_verified(&v);
			return MOSQ_ERR_AUTH;
		}
		fg_grants_free(&existing->grants);
		existing->grants = v.grants;
		memset(&v.grants, 0, sizeof(v.grants));
		existing->exp = v.exp;
		existing->expiry_handled = false;
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				LOG_PREFIX "client '%s' re-authenticated as '%s': token valid %lds, %zu publish / %zu subscribe grants",
				cid, existing->sub, (long)(existing->exp - now), existing->grants.publish.count,
				existing->grants.subscribe.count);
		free_verified(&v);
		return MOSQ_ERR_SUCCESS;
	}

	const char *username = mosquitto_client_username(ed->client);
	if(username && strcmp(username, v.sub)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				LOG_PREFIX "client '%s' connect refused: username '%s' is not the token's sub '%s'",
				cid, username, v.sub);
		free_verified(&v);
		return MOSQ_ERR_AUTH;
	}
	struct fg_client *c = calloc(1, sizeof(*c));
	if(!c){
		free_verified(&v);
		return MOSQ_ERR_NOMEM;
	}
	if(!(c->id = strdup(cid))){
		free(c);
		free_verified(&v);
		return MOSQ_ERR_NOMEM;
	}
	c->client = ed->client;
	c->live = true;
	c->sub = v.sub;
	v.sub = NULL;
	c->exp = v.exp;
	c->grants = v.grants;
	memset(&v.grants, 0, sizeof(v.grants));
	c->next = plugin.clients;
	plugin.clients = c;
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			LOG_PREFIX "client '%s' connect accepted as '%s': token valid %lds, %zu publish / %zu subscribe grants",
			cid, c->sub, (long)(c->exp - now), c->grants.publish.count, c->grants.subscribe.count);
	free_verified(&v);
	return MOSQ_ERR_SUCCESS;
}

static int on_auth_continue(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_extended_auth *ed = event_data;
	/* JWT authentication is a single step: nothing ever asks the client to continue. */
	mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "client '%s' refused: unexpected AUTH continue",
			client_id_of(ed->client));
	return MOSQ_ERR_AUTH;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			LOG_PREFIX "client '%s' connect refused: no authentication method (expected '%s')",
			client_id_of(ed->client), plugin.method);
	return MOSQ_ERR_AUTH;
}

static const char *access_name(int access)
{
	switch(access){
		case MOSQ_ACL_WRITE: return "publish";
		case MOSQ_ACL_SUBSCRIBE: return "subscribe";
		case MOSQ_ACL_READ: return "delivery";
		case MOSQ_ACL_UNSUBSCRIBE: return "unsubscribe";
		default: return "access";
	}
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;

	const char *cid = client_id_of(ed->client);
	struct fg_client *c = find_client(ed->client, true);
	if(!c){
		if(ed->access == MOSQ_ACL_READ){
			/* An offline persistent session queueing a message: mosquitto checks the queue
			 * again against the new token's grants when the client reconnects. */
			return MOSQ_ERR_SUCCESS;
		}
		struct fg_client *gone = ed->access == MOSQ_ACL_WRITE ? find_client(ed->client, false) : NULL;
		if(gone){
			/* The will of a connection that just ended: judged by the grants it had, even
			 * when the connection ended because its token expired. */
			bool allowed = fg_publish_allowed(&gone->grants, ed->topic);
			mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "client '%s' will on '%s' %s '%s'",
					gone->id, ed->topic, allowed ? "allowed, granted to" : "denied: not granted to", gone->sub);
			return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		}
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "client '%s' %s '%s' denied: not authenticated",
				cid, access_name(ed->access), ed->topic);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(now_seconds() >= c->exp){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "client '%s' %s '%s' denied: token expired",
				cid, access_name(ed->access), ed->topic);
		return MOSQ_ERR_ACL_DENIED;
	}
	bool allowed;
	switch(ed->access){
		case MOSQ_ACL_WRITE: allowed = fg_publish_allowed(&c->grants, ed->topic); break;
		case MOSQ_ACL_SUBSCRIBE: allowed = fg_subscribe_allowed(&c->grants, ed->topic); break;
		case MOSQ_ACL_READ: allowed = fg_read_allowed(&c->grants, ed->topic); break;
		default: allowed = false; break;
	}
	if(allowed){
		/* Allowed traffic is logged at debug level only: it is the hot path. */
		mosquitto_log_printf(MOSQ_LOG_DEBUG, LOG_PREFIX "client '%s' %s '%s' allowed",
				cid, access_name(ed->access), ed->topic);
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_log_printf(ed->access == MOSQ_ACL_READ ? MOSQ_LOG_DEBUG : MOSQ_LOG_NOTICE,
			LOG_PREFIX "client '%s' %s '%s' denied: not granted to '%s'",
			cid, access_name(ed->access), ed->topic, c->sub);
	return MOSQ_ERR_ACL_DENIED;
}

static bool kick_due(const struct fg_client *c, time_t now)
{
	if(!c->live || now < c->exp) return false;
	return !c->expiry_handled || now - c->kicked_at >= KICK_AGAIN_AFTER;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	time_t now = now_seconds();
	purge_gone_clients(now);
	/* Kicking re-enters on_disconnect (and may publish wills): collect the ids first. */
	size_t count = 0;
	for(struct fg_client *c = plugin.clients; c; c = c->next){
		if(kick_due(c, now)) count++;
	}
	if(count == 0) return MOSQ_ERR_SUCCESS;
	char **ids = calloc(count, sizeof(char *));
	if(!ids) return MOSQ_ERR_NOMEM;
	size_t n = 0;
	for(struct fg_client *c = plugin.clients; c && n < count; c = c->next){
		if(!kick_due(c, now)) continue;
		const char *id = mosquitto_client_id(c->client);
		if(!c->expiry_handled){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					LOG_PREFIX "client '%s' token for '%s' expired %lds ago without re-authentication: disconnecting",
					id ? id : "(no client id)", c->sub, (long)(now - c->exp));
		}
		c->expiry_handled = true;
		c->kicked_at = now;
		/* Never kick with a NULL id: mosquitto reads that as "every client". */
		if(id) ids[n++] = strdup(id);
	}
	for(size_t i = 0; i < n; i++){
		if(ids[i]) mosquitto_kick_client_by_clientid(ids[i], true);
		free(ids[i]);
	}
	free(ids);
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_disconnect *ed = event_data;
	struct fg_client *c = find_client(ed->client, true);
	if(c){
		c->live = false;
		c->gone_at = now_seconds();
	}
	return MOSQ_ERR_SUCCESS;
}

static const char *option(struct mosquitto_opt *options, int count, const char *key)
{
	for(int i = 0; i < count; i++){
		if(!strcmp(options[i].key, key)) return options[i].value;
	}
	return NULL;
}

static int load_key(const char *path)
{
	FILE *f = fopen(path, "rb");
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot open public key file %s: %s", path, strerror(errno));
		return -1;
	}
	unsigned char *buf = malloc(MAX_KEY_BYTES + 1);
	size_t len = buf ? fread(buf, 1, MAX_KEY_BYTES, f) : 0;
	fclose(f);
	if(!buf || len == 0 || len == MAX_KEY_BYTES){
		free(buf);
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "public key file %s is empty or too large", path);
		return -1;
	}
	buf[len] = '\0';
	EVP_PKEY *key = NULL;
	if(strstr((char *)buf, "-----BEGIN PUBLIC KEY-----")){
		BIO *bio = BIO_new_mem_buf(buf, (int)len);
		key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
		BIO_free(bio);
	}
	free(buf);
	if(!key || EVP_PKEY_base_id(key) != EVP_PKEY_RSA){
		EVP_PKEY_free(key);
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "public key file %s holds no PEM RSA public key", path);
		return -1;
	}
	plugin.keys[plugin.key_count++] = key;
	return 0;
}

static void release_config(void)
{
	for(int i = 0; i < plugin.key_count; i++) EVP_PKEY_free(plugin.keys[i]);
	free(plugin.method);
	free(plugin.issuer);
	free(plugin.audience);
	free(plugin.audience_host);
	free(plugin.publish_claim);
	free(plugin.subscribe_claim);
	fg_list_free(&plugin.perm.publish_templates);
	fg_list_free(&plugin.perm.subscribe_templates);
	while(plugin.clients){
		struct fg_client *next = plugin.clients->next;
		free_client(plugin.clients);
		plugin.clients = next;
	}
	memset(&plugin, 0, sizeof(plugin));
}

static char *dup_or_null(const char *s)
{
	return (s && s[0] && strcmp(s, "-")) ? strdup(s) : NULL;
}

/* A positive integer option, or `fallback` when absent; -1 (logged) when malformed. */
static int parse_limit(struct mosquitto_opt *options, int count, const char *key, long fallback, long *out)
{
	const char *text = option(options, count, key);
	*out = fallback;
	if(!text || !text[0]) return 0;
	char *end = NULL;
	errno = 0;
	*out = strtol(text, &end, 10);
	if(errno || !end || *end || *out < 1){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "plugin_opt_%s '%s' is not a positive number", key, text);
		return -1;
	}
	return 0;
}

static int configure(struct mosquitto_opt *options, int count)
{
	const char *method = option(options, count, "method");
	const char *issuer = option(options, count, "issuer");
	const char *audience = option(options, count, "audience");
	const char *key1 = option(options, count, "public_key_file");
	const char *key2 = option(options, count, "public_key_file_2");
	const char *skew = option(options, count, "nbf_skew");
	const char *pub_claim = option(options, count, "publish_claim");
	const char *sub_claim = option(options, count, "subscribe_claim");

	if(!issuer || !issuer[0] || !audience || !audience[0] || !key1 || !key1[0]){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				LOG_PREFIX "plugin_opt_issuer, plugin_opt_audience and plugin_opt_public_key_file are required");
		return -1;
	}
	plugin.method = strdup(method && method[0] ? method : "CUSTOM-JWT");
	plugin.issuer = strdup(issuer);
	plugin.audience = strdup(audience);
	plugin.publish_claim = pub_claim ? dup_or_null(pub_claim) : strdup("publish_topics");
	plugin.subscribe_claim = sub_claim ? dup_or_null(sub_claim) : strdup("subscribe_topics");
	plugin.perm.publish_claim = plugin.publish_claim;
	plugin.perm.subscribe_claim = plugin.subscribe_claim;
	plugin.nbf_skew = 5;
	if(skew){
		char *end = NULL;
		plugin.nbf_skew = strtol(skew, &end, 10);
		if(!end || *end || plugin.nbf_skew < 0){
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "plugin_opt_nbf_skew '%s' is not a number of seconds", skew);
			return -1;
		}
	}
	if(parse_limit(options, count, "max_auth_data", 8192, &plugin.max_auth_data)) return -1;
	if(parse_limit(options, count, "max_sub_length", 128, &plugin.max_sub_length)) return -1;
	char host[256];
	if(!audience_host(audience, host, sizeof(host)) || !(plugin.audience_host = strdup(host))){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				LOG_PREFIX "plugin_opt_audience '%s' is not 'host', 'host/' or 'https://host/'", audience);
		return -1;
	}
	if(load_key(key1)) return -1;
	if(key2 && key2[0] && load_key(key2)) return -1;

	for(int i = 0; i < count; i++){
		bool pub = !strcmp(options[i].key, "publish_template");
		bool sub = !strcmp(options[i].key, "subscribe_template");
		if(!pub && !sub) continue;
		const char *problem = fg_template_check(options[i].value);
		if(problem){
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "plugin_opt_%s '%s': %s", options[i].key, options[i].value, problem);
			return -1;
		}
		if(fg_list_add(pub ? &plugin.perm.publish_templates : &plugin.perm.subscribe_templates, options[i].value)){
			return -1;
		}
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			LOG_PREFIX "method '%s', issuer '%s', audience host '%s', %d issuer key(s), token <= %ld bytes, sub <= %ld characters, claims '%s'/'%s', %zu publish / %zu subscribe templates",
			plugin.method, plugin.issuer, plugin.audience_host, plugin.key_count, plugin.max_auth_data,
			plugin.max_sub_length,
			plugin.publish_claim ? plugin.publish_claim : "", plugin.subscribe_claim ? plugin.subscribe_claim : "",
			plugin.perm.publish_templates.count, plugin.perm.subscribe_templates.count);
	return 0;
}

struct registration {
	int event;
	MOSQ_FUNC_generic_callback cb;
};

static const struct registration registrations[] = {
	{MOSQ_EVT_EXT_AUTH_START, on_auth_start},
	{MOSQ_EVT_EXT_AUTH_CONTINUE, on_auth_continue},
	{MOSQ_EVT_BASIC_AUTH, on_basic_auth},
	{MOSQ_EVT_ACL_CHECK, on_acl_check},
	{MOSQ_EVT_TICK, on_tick},
	{MOSQ_EVT_DISCONNECT, on_disconnect},
};

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
		int option_count)
{
	memset(&plugin, 0, sizeof(plugin));
	plugin.identifier = identifier;
	*userdata = &plugin;
	if(configure(options, option_count)){
		release_config();
		return MOSQ_ERR_INVAL;
	}
	for(size_t i = 0; i < sizeof(registrations) / sizeof(registrations[0]); i++){
		int rc = mosquitto_callback_register(identifier, registrations[i].event, registrations[i].cb, NULL, &plugin);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot register callback for event %d (rc %d)",
					registrations[i].event, rc);
			return rc;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	for(size_t i = 0; i < sizeof(registrations) / sizeof(registrations[0]); i++){
		mosquitto_callback_unregister(plugin.identifier, registrations[i].event, registrations[i].cb, NULL);
	}
	release_config();
	return MOSQ_ERR_SUCCESS;
}
