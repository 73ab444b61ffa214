import pytest

from db.queries import parse_queries, query


def test_named_blocks_are_split_with_their_comments() -> None:
    text = "-- name: a\nSELECT 1;\n\n-- name: b\n-- why b\nSELECT 2;\n"
    assert parse_queries(text) == {"a": "SELECT 1;", "b": "-- why b\nSELECT 2;"}


def test_a_name_defined_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_unknown_query_names_the_file() -> None:
    with pytest.raises(KeyError, match=r"queries\.sql"):
        query("no_such_query")


def test_shipped_queries_load() -> None:
    assert b"generate_series" in query("seed_products")
