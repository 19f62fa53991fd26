"""Catalogs: declared event names read by attribute, validated and declared process-wide.

Declarations are process-global, so every test builds its names with a fresh
uuid segment and never collides with another test (or another run).
"""

from __future__ import annotations

import uuid

import pytest

import aevents


def fresh(action: str = "created") -> str:
    """A valid event name no other test declares."""
    return f"test:catalog-{uuid.uuid4().hex}:{action}"


def test_attribute_access_returns_the_declared_name() -> None:
    """``CATALOG.KEY`` is the plain str that was declared."""
    created, changed = fresh("created"), fresh("changed")
    user = aevents.Catalog({"ACCOUNT_CREATED": created, "EMAIL_CHANGED": changed})
    assert created == user.ACCOUNT_CREATED
    assert type(user.ACCOUNT_CREATED) is str
    assert changed == user.EMAIL_CHANGED
    assert user["EMAIL_CHANGED"] == changed


def test_both_seed_styles_can_be_declared() -> None:
    """Colon- and dot-separated names are both accepted in a catalog."""
    token = uuid.uuid4().hex
    catalog = aevents.Catalog(
        {"COLON": f"user:{token}:account-primary-email:changed", "DOT": f"user.{token}.created"}
    )
    assert f"user.{token}.created" == catalog.DOT


def test_unknown_key_names_the_missing_key_and_the_existing_ones() -> None:
    """A typo raises ``UnknownEventError`` naming the missing key and listing the declared keys."""
    user = aevents.Catalog(
        {"ACCOUNT_CREATED": fresh(), "EMAIL_CREATED": fresh()}, name="user-events"
    )
    with pytest.raises(aevents.UnknownEventError) as caught:
        _ = user.PHONE_CREATED
    message = str(caught.value)
    assert "'PHONE_CREATED'" in message
    assert "ACCOUNT_CREATED" in message
    assert "EMAIL_CREATED" in message
    assert "user-events" in message
    assert caught.value.name == "PHONE_CREATED"
    assert caught.value.known == ("ACCOUNT_CREATED", "EMAIL_CREATED")


def test_unknown_key_error_is_an_attribute_error() -> None:
    """Because it is an ``AttributeError``, ``getattr`` defaults and ``hasattr`` just work."""
    catalog = aevents.Catalog({"KNOWN": fresh()})
    with pytest.raises(AttributeError):
        _ = catalog.MISSING
    with pytest.raises(aevents.AeventsError):
        _ = catalog.MISSING
    assert getattr(catalog, "MISSING", "fallback") == "fallback"
    assert not hasattr(catalog, "MISSING")
    assert hasattr(catalog, "KNOWN")


def test_unknown_key_by_subscript_raises_unknown_event_error() -> None:
    """``catalog["MISSING"]`` fails the same way as attribute access."""
    catalog = aevents.Catalog({"KNOWN": fresh()})
    with pytest.raises(aevents.UnknownEventError, match="MISSING"):
        catalog["MISSING"]


def test_unknown_key_in_an_empty_catalog_says_there_are_none() -> None:
    """An empty catalog's error says no keys are declared rather than listing nothing."""
    catalog = aevents.Catalog({})
    with pytest.raises(aevents.UnknownEventError, match=r"\(none\)"):
        _ = catalog.ANYTHING


def test_membership_is_by_name_not_by_key() -> None:
    """``name in catalog`` is true for declared names only; keys and other names are not in it."""
    name = fresh()
    catalog = aevents.Catalog({"ACCOUNT_CREATED": name})
    assert name in catalog
    assert "ACCOUNT_CREATED" not in catalog
    assert fresh() not in catalog
    assert 42 not in catalog


def test_iteration_length_and_items_follow_declaration_order() -> None:
    """A catalog iterates its names, and ``items()`` its pairs, in declaration order."""
    first, second, third = fresh("c"), fresh("a"), fresh("b")
    catalog = aevents.Catalog({"Z": first, "A": second, "M": third})
    assert list(catalog) == [first, second, third]
    assert len(catalog) == 3
    assert catalog.items() == [("Z", first), ("A", second), ("M", third)]


@pytest.mark.parametrize(
    "bad_name", ["", "user::x", "user:*", "user:**", "user created", "user:\x00", "user*"]
)
def test_invalid_names_are_rejected_when_the_catalog_is_built(bad_name: str) -> None:
    """Values are validated as event names at build time."""
    with pytest.raises(aevents.InvalidEventNameError):
        aevents.Catalog({"BAD": bad_name})


def test_non_str_values_are_rejected() -> None:
    """A value that is not a str is not a name."""
    with pytest.raises(aevents.InvalidEventNameError, match="int"):
        aevents.Catalog({"BAD": 42})  # type: ignore[dict-item]


@pytest.mark.parametrize("key", ["not-an-identifier", "1ST", "", "with space", "_PRIVATE", "items"])
def test_keys_must_be_public_identifiers(key: str) -> None:
    """Keys that cannot be read as attributes, private ones and method names are refused."""
    name = fresh()
    with pytest.raises(aevents.InvalidEventNameError, match="catalog key"):
        aevents.Catalog({key: name})
    assert name not in aevents.declared_names()


def test_non_str_keys_are_rejected() -> None:
    """A key must be a str."""
    with pytest.raises(aevents.InvalidEventNameError, match="catalog key"):
        aevents.Catalog({1: fresh()})  # type: ignore[dict-item]


def test_same_name_under_different_keys_in_two_catalogs_raises() -> None:
    """Two catalogs declaring one name under different keys raise ``DuplicateEventError``."""
    name = fresh()
    aevents.Catalog({"FIRST": name}, name="first-catalog")
    with pytest.raises(aevents.DuplicateEventError) as caught:
        aevents.Catalog({"SECOND": name}, name="second-catalog")
    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, aevents.AeventsError)
    assert (error.name, error.key, error.existing_key) == (name, "SECOND", "FIRST")
    assert repr(name) in str(error)
    assert "first-catalog" in str(error)


def test_same_name_under_two_keys_of_one_catalog_raises() -> None:
    """One catalog cannot declare a name twice either."""
    name = fresh()
    with pytest.raises(aevents.DuplicateEventError):
        aevents.Catalog({"ONE": name, "TWO": name})
    assert name not in aevents.declared_names()


def test_redeclaring_a_name_under_the_same_key_is_allowed() -> None:
    """Building the same catalog twice (a re-import, a test) is fine."""
    name = fresh()
    first = aevents.Catalog({"ACCOUNT_CREATED": name})
    second = aevents.Catalog({"ACCOUNT_CREATED": name})
    assert first.ACCOUNT_CREATED == second.ACCOUNT_CREATED == name


def test_a_rejected_catalog_declares_none_of_its_names() -> None:
    """A catalog that fails to build leaves no partial declarations behind."""
    taken, innocent = fresh("taken"), fresh("innocent")
    aevents.Catalog({"TAKEN": taken})
    with pytest.raises(aevents.DuplicateEventError):
        aevents.Catalog({"INNOCENT": innocent, "OTHER": taken})
    assert innocent not in aevents.declared_names()
    with pytest.raises(aevents.InvalidEventNameError):
        aevents.Catalog({"INNOCENT": innocent, "BAD": "bad::name"})
    assert innocent not in aevents.declared_names()


def test_declared_names_include_every_catalog_name() -> None:
    """``declared_names()`` is a frozenset that includes each declared name."""
    first, second = fresh("a"), fresh("b")
    assert first not in aevents.declared_names()
    aevents.Catalog({"A": first})
    aevents.Catalog({"B": second})
    declared = aevents.declared_names()
    assert isinstance(declared, frozenset)
    assert {first, second} <= declared


def test_catalog_defaults_its_label_to_the_calling_module() -> None:
    """Without ``name=``, errors and the repr name the module that built the catalog."""
    catalog = aevents.Catalog({"KNOWN": fresh()})
    assert __name__ in repr(catalog)
    with pytest.raises(aevents.UnknownEventError, match=__name__):
        _ = catalog.MISSING
