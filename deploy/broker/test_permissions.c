/*
 * Runs the shared permission vectors (tests/vectors/permissions.json) through permissions.c,
 * the code the broker plugin uses. Prints one line per case:
 *   <ok|FAIL>\t<name>\t<computed allowed: true|false>
 * and exits 1 if any case disagrees with its expected `allowed`, 2 on a malformed file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>

#include "permissions.h"

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if(!f) return NULL;
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)len + 1);
	if(buf && fread(buf, 1, (size_t)len, f) != (size_t)len){
		free(buf);
		buf = NULL;
	}
	fclose(f);
	if(buf) buf[len] = '\0';
	return buf;
}

static int run_case(const cJSON *c, bool *computed)
{
	const cJSON *claims = cJSON_GetObjectItemCaseSensitive(c, "claims");
	const cJSON *templates = cJSON_GetObjectItemCaseSensitive(c, "templates");
	const cJSON *filter_claim = cJSON_GetObjectItemCaseSensitive(c, "filter_claim");
	const cJSON *action = cJSON_GetObjectItemCaseSensitive(c, "action");
	const cJSON *topic = cJSON_GetObjectItemCaseSensitive(c, "topic");
	if(!cJSON_IsObject(claims) || !cJSON_IsString(action) || !cJSON_IsString(topic)) return -1;
	bool publish = !strcmp(action->valuestring, "publish");
	if(!publish && strcmp(action->valuestring, "subscribe")) return -1;

	fg_perm_config cfg = {0};
	fg_list *list = publish ? &cfg.publish_templates : &cfg.subscribe_templates;
	const cJSON *t;
	cJSON_ArrayForEach(t, templates){
		if(!cJSON_IsString(t) || fg_list_add(list, t->valuestring)) return -1;
	}
	const char *claim_name = cJSON_IsString(filter_claim) ? filter_claim->valuestring : NULL;
	if(publish) cfg.publish_claim = claim_name;
	else cfg.subscribe_claim = claim_name;

	const cJSON *sub = cJSON_GetObjectItemCaseSensitive(claims, "sub");
	fg_grants grants = {0};
	int rc = fg_grants_from_claims(&cfg, claims, cJSON_IsString(sub) ? sub->valuestring : NULL, &grants);
	if(rc == 0){
		*computed = publish ? fg_publish_allowed(&grants, topic->valuestring)
			: fg_subscribe_allowed(&grants, topic->valuestring);
	}
	fg_grants_free(&grants);
	fg_list_free(&cfg.publish_templates);
	fg_list_free(&cfg.subscribe_templates);
	return rc;
}

int main(int argc, char **argv)
{
	if(argc != 2){
		fprintf(stderr, "usage: %s tests/vectors/permissions.json\n", argv[0]);
		return 2;
	}
	char *text = read_file(argv[1]);
	cJSON *root = text ? cJSON_Parse(text) : NULL;
	free(text);
	const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
	if(!cJSON_IsArray(cases)){
		fprintf(stderr, "%s: no \"cases\" array\n", argv[1]);
		cJSON_Delete(root);
		return 2;
	}
	int failures = 0;
	const cJSON *c;
	cJSON_ArrayForEach(c, cases){
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
		const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(c, "allowed");
		bool computed = false;
		if(!cJSON_IsString(name) || !cJSON_IsBool(allowed) || run_case(c, &computed)){
			fprintf(stderr, "malformed case: %s\n", cJSON_IsString(name) ? name->valuestring : "(no name)");
			cJSON_Delete(root);
			return 2;
		}
		bool ok = computed == (bool)cJSON_IsTrue(allowed);
		if(!ok) failures++;
		printf("%s\t%s\t%s\n", ok ? "ok" : "FAIL", name->valuestring, computed ? "true" : "false");
	}
	cJSON_Delete(root);
	return failures ? 1 : 0;
}
