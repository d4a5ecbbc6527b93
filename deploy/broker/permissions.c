/* Topic permissions from token claims: see permissions.h for the model. */
#include "permissions.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#define VAR_OPEN "${"
#define VAR_AUTH_NAME "client.authenticationName"
#define VAR_ATTR_PREFIX "client.attributes."

int fg_list_add(fg_list *list, const char *item)
{
	char *copy = strdup(item);
	if(!copy) return -1;
	char **grown = realloc(list->items, (list->count + 1) * sizeof(char *));
	if(!grown){
		free(copy);
		return -1;
	}
	list->items = grown;
	list->items[list->count++] = copy;
	return 0;
}

void fg_list_free(fg_list *list)
{
	for(size_t i = 0; i < list->count; i++) free(list->items[i]);
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

static bool is_reserved_claim(const char *name)
{
	static const char *const reserved[] = {"iss", "sub", "aud", "exp", "nbf"};
	for(size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++){
		if(!strcmp(name, reserved[i])) return true;
	}
	return false;
}

/* A value may fill a template variable only if it cannot change the filter's shape. */
static bool usable_value(const char *value)
{
	return value[0] != '\0' && strpbrk(value, "/+#") == NULL;
}

/*
 * The values of attribute `name`: appended to `out`; returns false when the claim is not an
 * attribute at all (missing, reserved, or of a type Event Grid does not turn into one).
 */
static bool attribute_values(const cJSON *claims, const char *name, fg_list *out, bool *oom)
{
	*oom = false;
	if(is_reserved_claim(name)) return false;
	const cJSON *claim = cJSON_GetObjectItemCaseSensitive(claims, name);
	if(!claim) return false;
	if(cJSON_IsString(claim)){
		if(fg_list_add(out, claim->valuestring)) *oom = true;
		return true;
	}
	if(cJSON_IsNumber(claim)){
		double v = claim->valuedouble;
		if(v != floor(v) || v < (double)INT32_MIN || v > (double)INT32_MAX) return false;
		char text[16];
		snprintf(text, sizeof(text), "%d", (int)v);
		if(fg_list_add(out, text)) *oom = true;
		return true;
	}
	if(cJSON_IsArray(claim)){
		const cJSON *item;
		cJSON_ArrayForEach(item, claim){
			if(!cJSON_IsString(item)) return false;
		}
		cJSON_ArrayForEach(item, claim){
			if(fg_list_add(out, item->valuestring)){
				*oom = true;
				break;
			}
		}
		return true;
	}
	return false;
}

/* Length of the variable name starting at `p` (just after "${"), or -1 if unterminated. */
static long variable_length(const char *p)
{
	const char *end = strchr(p, '}');
	return end ? (long)(end - p) : -1;
}

const char *fg_template_check(const char *tmpl)
{
	size_t cap = strlen(tmpl) + 1;
	char *shape = malloc(cap);
	if(!shape) return "out of memory";
	size_t n = 0;
	const char *p = tmpl;
	const char *problem = NULL;
	while(*p && !problem){
		if(!strncmp(p, VAR_OPEN, 2)){
			long len = variable_length(p + 2);
			if(len < 0){
				problem = "unterminated ${ in template";
				break;
			}
			const char *name = p + 2;
			bool auth_name = (size_t)len == strlen(VAR_AUTH_NAME) && !strncmp(name, VAR_AUTH_NAME, (size_t)len);
			bool attribute = (size_t)len > strlen(VAR_ATTR_PREFIX)
				&& !strncmp(name, VAR_ATTR_PREFIX, strlen(VAR_ATTR_PREFIX));
			if(!auth_name && !attribute){
				problem = "unknown variable (use ${client.authenticationName} or ${client.attributes.<claim>})";
				break;
			}
			shape[n++] = 'x';
			p += 2 + len + 1;
		}else{
			shape[n++] = *p++;
		}
	}
	shape[n] = '\0';
	if(!problem && (n == 0 || mosquitto_sub_topic_check(shape) != MOSQ_ERR_SUCCESS)){
		problem = "not a valid MQTT topic filter";
	}
	free(shape);
	return problem;
}

/* Replaces `partials` by every partial x value combination (bounded by FG_MAX_EXPANSION). */
static int append_values(fg_list *partials, const fg_list *values)
{
	fg_list next = {0};
	for(size_t i = 0; i < partials->count; i++){
		for(size_t j = 0; j < values->count; j++){
			if(next.count >= FG_MAX_EXPANSION) break;
			size_t len = strlen(partials->items[i]) + strlen(values->items[j]) + 1;
			char *joined = malloc(len);
			if(!joined){
				fg_list_free(&next);
				return -1;
			}
			snprintf(joined, len, "%s%s", partials->items[i], values->items[j]);
			int rc = fg_list_add(&next, joined);
			free(joined);
			if(rc){
				fg_list_free(&next);
				return -1;
			}
		}
	}
	fg_list_free(partials);
	*partials = next;
	return 0;
}

int fg_template_expand(const char *tmpl, const cJSON *claims, const char *auth_name, fg_list *out)
{
	if(fg_template_check(tmpl)) return 0;
	fg_list partials = {0};
	if(fg_list_add(&partials, "")) return -1;
	const char *p = tmpl;
	int rc = 0;
	while(*p && partials.count > 0){
		fg_list values = {0};
		bool oom = false;
		if(!strncmp(p, VAR_OPEN, 2)){
			long len = variable_length(p + 2);
			char *name = strndup(p + 2, (size_t)len);
			if(!name){
				rc = -1;
				break;
			}
			if(!strcmp(name, VAR_AUTH_NAME)){
				if(auth_name && fg_list_add(&values, auth_name)) oom = true;
			}else{
				attribute_values(claims, name + strlen(VAR_ATTR_PREFIX), &values, &oom);
			}
			free(name);
			p += 2 + len + 1;
			/* Drop values that would add levels or wildcards: they grant nothing. */
			fg_list usable = {0};
			for(size_t i = 0; i < values.count && !oom; i++){
				if(usable_value(values.items[i]) && fg_list_add(&usable, values.items[i])) oom = true;
			}
			fg_list_free(&values);
			values = usable;
		}else{
			size_t literal = strcspn(p, "$");
			if(literal == 0) literal = 1; /* a '$' that does not open a variable */
			char *text = strndup(p, literal);
			if(!text || fg_list_add(&values, text)) oom = true;
			free(text);
			p += literal;
		}
		if(oom || append_values(&partials, &values)){
			fg_list_free(&values);
			rc = -1;
			break;
		}
		fg_list_free(&values);
	}
	for(size_t i = 0; rc == 0 && i < partials.count; i++){
		if(mosquitto_sub_topic_check(partials.items[i]) == MOSQ_ERR_SUCCESS){
			if(fg_list_add(out, partials.items[i])) rc = -1;
		}
	}
	fg_list_free(&partials);
	return rc;
}

static int add_claim_filters(const cJSON *claims, const char *claim_name, fg_list *out)
{
	if(!claim_name) return 0;
	const cJSON *claim = cJSON_GetObjectItemCaseSensitive(claims, claim_name);
	if(cJSON_IsString(claim)){
		if(mosquitto_sub_topic_check(claim->valuestring) == MOSQ_ERR_SUCCESS){
			return fg_list_add(out, claim->valuestring);
		}
		return 0;
	}
	if(cJSON_IsArray(claim)){
		const cJSON *item;
		cJSON_ArrayForEach(item, claim){
			if(cJSON_IsString(item) && mosquitto_sub_topic_check(item->valuestring) == MOSQ_ERR_SUCCESS){
				if(fg_list_add(out, item->valuestring)) return -1;
			}
		}
	}
	return 0;
}

int fg_grants_from_claims(const fg_perm_config *cfg, const cJSON *claims, const char *auth_name,
		fg_grants *out)
{
	if(add_claim_filters(claims, cfg->publish_claim, &out->publish)) goto oom;
	if(add_claim_filters(claims, cfg->subscribe_claim, &out->subscribe)) goto oom;
	for(size_t i = 0; i < cfg->publish_templates.count; i++){
		if(fg_template_expand(cfg->publish_templates.items[i], claims, auth_name, &out->publish)) goto oom;
	}
	for(size_t i = 0; i < cfg->subscribe_templates.count; i++){
		if(fg_template_expand(cfg->subscribe_templates.items[i], claims, auth_name, &out->subscribe)) goto oom;
	}
	return 0;
oom:
	fg_grants_free(out);
	return -1;
}

void fg_grants_free(fg_grants *grants)
{
	fg_list_free(&grants->publish);
	fg_list_free(&grants->subscribe);
}

/* Length of the level starting at `p`. */
static size_t level_length(const char *p)
{
	return strcspn(p, "/");
}

bool fg_filter_covers(const char *grant, const char *filter)
{
	if(!strpbrk(filter, "+#")){
		bool result = false;
		return mosquitto_topic_matches_sub(grant, filter, &result) == MOSQ_ERR_SUCCESS && result;
	}
	/* MQTT keeps $-topics out of wildcards in the first level, so a grant starting with one
	 * never covers a filter that names a $-topic. */
	if(filter[0] == '$' && (grant[0] == '+' || grant[0] == '#')) return false;
	const char *g = grant;
	const char *f = filter;
	while(true){
		size_t glen = level_length(g);
		size_t flen = level_length(f);
		if(glen == 1 && g[0] == '#') return true;
		if(flen == 1 && f[0] == '#') return false; /* only '#' covers '#' */
		if(flen == 1 && f[0] == '+'){
			if(!(glen == 1 && g[0] == '+')) return false;
		}else if(!(glen == 1 && g[0] == '+')){
			if(glen != flen || strncmp(g, f, glen)) return false;
		}
		g += glen;
		f += flen;
		if(*f == '\0'){
			/* "a/#" also matches the parent level "a". */
			return *g == '\0' || !strcmp(g, "/#");
		}
		if(*g == '\0') return false;
		g++;
		f++;
	}
}

bool fg_publish_allowed(const fg_grants *grants, const char *topic)
{
	for(size_t i = 0; i < grants->publish.count; i++){
		bool result = false;
		if(mosquitto_topic_matches_sub(grants->publish.items[i], topic, &result) == MOSQ_ERR_SUCCESS && result){
			return true;
		}
	}
	return false;
}

bool fg_subscribe_allowed(const fg_grants *grants, const char *filter)
{
	for(size_t i = 0; i < grants->subscribe.count; i++){
		if(fg_filter_covers(grants->subscribe.items[i], filter)) return true;
	}
	return false;
}

bool fg_read_allowed(const fg_grants *grants, const char *topic)
{
	for(size_t i = 0; i < grants->subscribe.count; i++){
		bool result = false;
		if(mosquitto_topic_matches_sub(grants->subscribe.items[i], topic, &result) == MOSQ_ERR_SUCCESS && result){
			return true;
		}
	}
	return false;
}
