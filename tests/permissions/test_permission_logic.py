"""The gateway's permission model: the shared vectors (the broker plugin passes the same ones), the
MQTT matcher's properties, hints for denied topics, and differences between two permission sets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt_topics import grant_template_problem
from gateway.permissions.grants import (
    PermissionsConfig,
    PermissionSet,
    filter_covers,
    template_would_allow,
    topic_matches,
    valid_filter,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "permissions.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text())["cases"]


def permissions_for(case: dict[str, Any]) -> PermissionSet:
    claim = case.get("filter_claim")
    if case["action"] == "publish":
        config = PermissionsConfig(
            publish_templates=tuple(case["templates"]), publish_claim=claim, subscribe_claim=None
        )
    else:
        config = PermissionsConfig(
            subscribe_templates=tuple(case["templates"]), subscribe_claim=claim, publish_claim=None
        )
    return PermissionSet.from_claims(config, case["claims"])


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_the_gateway_agrees_with_the_shared_vector(case: dict[str, Any]) -> None:
    verdict = permissions_for(case).allows(case["action"], case["topic"])
    assert verdict == case["allowed"], (
        f"{case['action']} {case['topic']!r} with templates {case['templates']} and claims {case['claims']}"
    )


# -- the matcher, against a straightforward reference --------------------------------------------------
def reference_match(grant: str, topic: str) -> bool:
    """MQTT matching written as a regular expression, independently of the implementation."""
    if topic.startswith("$") and grant[:1] in ("+", "#"):
        return False
    pattern = ""
    levels = grant.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            pattern = pattern[:-1] + "(/.*)?" if i else ".*"
            break
        pattern += ("[^/]*" if level == "+" else re.escape(level)) + ("/" if i < len(levels) - 1 else "")
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


level_text = st.text(alphabet="ab$-", min_size=0, max_size=3)
topics = st.lists(level_text, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(level_text, st.just("+")), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    text = "/".join(levels)
    return text or "+"


@given(filters(), topics)
def test_matching_agrees_with_a_regular_expression_reference(grant: str, topic: str) -> None:
    assert topic_matches(grant, topic) == reference_match(grant, topic)


@given(topics)
def test_a_topic_is_granted_by_itself_by_hash_and_by_its_parents_with_hash(topic: str) -> None:
    assert topic_matches(topic, topic)
    levels = topic.split("/")
    for i in range(1, len(levels) + 1):
        assert topic_matches("/".join(levels[:i]) + "/#", topic)
    assert topic_matches("#", topic) == (not topic.startswith("$"))


@given(topics, st.data())
def test_replacing_a_level_by_plus_still_matches_unless_it_is_a_dollar_first_level(
    topic: str, data: st.DataObject
) -> None:
    levels = topic.split("/")
    i = data.draw(st.integers(0, len(levels) - 1))
    grant = "/".join([*levels[:i], "+", *levels[i + 1 :]])
    assert topic_matches(grant, topic) == (not (i == 0 and topic.startswith("$")))


@st.composite
def instances(draw: st.DrawFn, requested: str) -> str:
    """A topic the filter ``requested`` matches."""
    out: list[str] = []
    for level in requested.split("/"):
        if level == "+":
            out.append(draw(level_text))
        elif level == "#":
            out += draw(st.lists(level_text, max_size=3))
        else:
            out.append(level)
    return "/".join(out)


@settings(max_examples=300)
@given(filters(), filters(), st.data())
def test_a_covering_grant_matches_every_topic_the_requested_filter_matches(
    grant: str, requested: str, data: st.DataObject
) -> None:
    if not filter_covers(grant, requested):
        return
    topic = data.draw(instances(requested))
    if topic and topic_matches(requested, topic):
        assert topic_matches(grant, topic)


@given(filters())
def test_a_filter_covers_itself_and_hash_covers_filters_outside_dollar_topics(requested: str) -> None:
    assert filter_covers(requested, requested)
    assert filter_covers("#", requested) == (not requested.startswith("$"))


@given(filters())
def test_generated_filters_are_valid_and_invalid_shapes_are_refused(text: str) -> None:
    assert valid_filter(text)
    assert not valid_filter(text + "x#")
    assert not valid_filter(text + "/x+")
    assert not valid_filter("a#/" + text)
    assert not topic_matches(text, "a/+")  # a topic to publish to never holds wildcards


# -- templates --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("plants/${client.attributes.site}/#", None),
        ("devices/${client.authenticationName}/t", None),
        ("plants/${client.attributes.site", "unterminated ${ in template"),
        ("plants/${client.name}/#", "unknown variable"),
        ("plants/${client.attributes.}/#", "unknown variable"),
        ("plants/#/x", "not a valid MQTT topic filter"),
        ("plants/${client.attributes.site}+", "not a valid MQTT topic filter"),
        ("", "not a valid MQTT topic filter"),
    ],
)
def test_template_problems_are_named(template: str, problem: str | None) -> None:
    found = grant_template_problem(template)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem))


def test_a_denied_topic_names_the_template_and_value_that_would_allow_it() -> None:
    config = PermissionsConfig(publish_templates=("sites/${client.attributes.site}/#",))
    perms = PermissionSet.from_claims(config, {"sub": "gw-1", "site": "a"})
    assert perms.may_publish("sites/a/gw-1/boiler/telemetry")
    assert not perms.may_publish("sites/b/gw-1/boiler/telemetry")
    assert perms.publish_grant("sites/a/x") is not None
    assert perms.publish_grant("sites/a/x").rule == "template sites/${client.attributes.site}/#"  # type: ignore[union-attr]
    assert perms.explain_denial("publish", "sites/b/gw-1/boiler/telemetry") == (
        'template sites/${client.attributes.site}/# with client.attributes.site = "b" would allow it; '
        'the token has site = "a"'
    )
    assert perms.explain_denial("publish", "other/x") == (
        "not granted by claim publish_topics or no configured template matches this topic"
    )


def test_a_variable_used_twice_must_take_one_value() -> None:
    template = "${client.attributes.a}/x/${client.attributes.a}"
    assert template_would_allow(template, "p/x/p") == (("client.attributes.a", "p"),)
    assert template_would_allow(template, "p/x/q") is None
    assert template_would_allow("id-${client.authenticationName}/t", "id-gw-9/t") == (
        ("client.authenticationName", "gw-9"),
    )


def test_a_refresh_that_adds_a_site_is_a_difference_not_a_new_list() -> None:
    config = PermissionsConfig(
        publish_templates=("sites/${client.attributes.site}/#",),
        subscribe_templates=("cmd/${client.authenticationName}/#",),
    )
    before = PermissionSet.from_claims(config, {"sub": "gw-1", "site": ["a"]})
    after = PermissionSet.from_claims(config, {"sub": "gw-1", "site": ["a", "b"]})
    change = before.diff(after)
    assert change.granted_publish == ("sites/b/#",)
    assert change.revoked_publish == ()
    assert str(change) == "publish granted: sites/b/#"
    assert not before.diff(before)
    assert str(after.diff(before)) == "publish revoked: sites/b/#"


@given(
    st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True),
)
def test_applying_a_difference_to_the_old_set_gives_the_new_one(old: list[str], new: list[str]) -> None:
    config = PermissionsConfig(publish_templates=("s/${client.attributes.site}/#",))
    before = PermissionSet.from_claims(config, {"sub": "g", "site": old})
    after = PermissionSet.from_claims(config, {"sub": "g", "site": new})
    change = before.diff(after)
    applied = ({g.filter for g in before.publish} | set(change.granted_publish)) - set(change.revoked_publish)
    assert applied == {g.filter for g in after.publish}


site_values = st.text(alphabet="abc-1", min_size=1, max_size=4)


@given(st.lists(site_values, min_size=1, max_size=3), st.data())
def test_every_granted_topic_is_explained_by_its_template_with_the_tokens_own_values(
    sites: list[str], data: st.DataObject
) -> None:
    template = "plants/${client.attributes.site}/id-${client.authenticationName}/+/#"
    perms = PermissionSet.from_claims(
        PermissionsConfig(publish_templates=(template,)), {"sub": "g1", "site": sites}
    )
    site = data.draw(st.sampled_from(sites))
    topic = f"plants/{site}/id-g1/" + "/".join(
        data.draw(st.lists(level_text.filter(bool), min_size=1, max_size=3))
    )
    assert perms.may_publish(topic)
    assert template_would_allow(template, topic) == (
        ("client.attributes.site", site),
        ("client.authenticationName", "g1"),
    )
