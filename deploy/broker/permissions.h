/*
 * Topic permissions derived from a verified token's claims, the way Azure Event Grid's
 * MQTT broker derives them from a custom JWT:
 *
 *  - claim lists: a claim holding an MQTT topic filter (string) or a list of them grants
 *    exactly those filters (for identity providers that put the grant in the token);
 *  - topic templates: `${client.authenticationName}` (the token's `sub`) and
 *    `${client.attributes.<claim>}` are filled from the claims; claims of type int32,
 *    string or array of strings are attributes (`iss`, `sub`, `aud`, `exp`, `nbf` never
 *    are); a string-array attribute expands to one filter per value; a template whose
 *    attribute is missing grants nothing.
 *
 * Kept free of the broker API (only libmosquitto's topic helpers and cJSON) so that the
 * same code runs inside the plugin and in the shared-vector test program.
 */
#ifndef FIELDGATE_PERMISSIONS_H
#define FIELDGATE_PERMISSIONS_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

/* Upper bound on the filters one template may expand to (cartesian product of array attributes). */
#define FG_MAX_EXPANSION 1024

typedef struct {
	char **items;
	size_t count;
} fg_list;

typedef struct {
	const char *publish_claim;   /* claim listing publish filters, NULL = none */
	const char *subscribe_claim; /* claim listing subscribe filters, NULL = none */
	fg_list publish_templates;
	fg_list subscribe_templates;
} fg_perm_config;

typedef struct {
	fg_list publish;
	fg_list subscribe;
} fg_grants;

int fg_list_add(fg_list *list, const char *item);
void fg_list_free(fg_list *list);

/* NULL when the template is well formed, else a static description of what is wrong. */
const char *fg_template_check(const char *tmpl);

/* Appends the filters `tmpl` grants for these claims to `out`; 0 on success, -1 on out of memory. */
int fg_template_expand(const char *tmpl, const cJSON *claims, const char *auth_name, fg_list *out);

/* Fills `out` (zeroed by the caller) from the claims; 0 on success, -1 on out of memory. */
int fg_grants_from_claims(const fg_perm_config *cfg, const cJSON *claims, const char *auth_name,
		fg_grants *out);
void fg_grants_free(fg_grants *grants);

/* True when `filter` (which may hold wildcards) only ever matches topics `grant` matches. */
bool fg_filter_covers(const char *grant, const char *filter);

bool fg_publish_allowed(const fg_grants *grants, const char *topic);
bool fg_subscribe_allowed(const fg_grants *grants, const char *filter);
/* Delivery of a message on `topic` to the client: allowed when a subscribe grant matches it. */
bool fg_read_allowed(const fg_grants *grants, const char *topic);

#endif
