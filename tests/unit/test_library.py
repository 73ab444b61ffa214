"""The library's pure parts: declared entries resolve to their tags, loaders dispatch by the
declared templates, and wrong wiring is refused before anything runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import pgbust
from pgbust.declaration import DeclarationError, UndeclaredEntry, parse
from pgbust.loaders import Loaded, Loaders, UnknownEntry, import_loaders
from pgbust.settings import CacheSettings

SHOP = """
[tables."public.orders"]
key = ["id"]
depends = ["customer_id"]
entries = ["order:{id}"]
tags = ["row:orders:{id}", { tag = "customer:{customer_id}:orders", when = ["insert", "delete"] }]

[entries."order:{id}"]

[entries."customer:{customer_id}:orders:{page}"]
tags = ["customer:{customer_id}:orders"]
rows = ["row:orders:{id}"]
"""


def test_a_declared_name_resolves_to_the_tags_it_is_filed_under() -> None:
    shop = parse(SHOP, "shop.toml")
    entry, tags = shop.resolve("customer:a%3Ab:orders:2")
    assert tags == ("customer:a%3Ab:orders",)
    assert entry.template.text == "customer:{customer_id}:orders:{page}"
    assert shop.resolve("order:7")[1] == ()


def test_an_undeclared_name_is_refused_with_the_file_that_lacks_it() -> None:
    with pytest.raises(UndeclaredEntry, match=r"'invoice:1'.*shop\.toml"):
        parse(SHOP, "shop.toml").resolve("invoice:1")


def test_render_escapes_values_and_names_a_missing_one() -> None:
    shop = parse(SHOP, "shop.toml")
    assert shop.render("order:{id}", {"id": "a:b c"}) == "order:a%3Ab%20c"
    with pytest.raises(ValueError, match=r"\{page\}"):
        shop.render("customer:{customer_id}:orders:{page}", {"customer_id": 1})
    with pytest.raises(UndeclaredEntry):
        shop.render("order:{number}", {"number": 1})


def test_row_tags_come_from_the_loaded_rows_in_order_without_repeats() -> None:
    entry, _ = parse(SHOP, "shop.toml").resolve("customer:1:orders:0")
    rows: list[dict[str, Any]] = [{"id": 3}, {"id": "x:y"}, {"id": 3}]
    assert entry.row_tags(rows) == ("row:orders:3", "row:orders:x%3Ay")
    with pytest.raises(ValueError, match="no column 'id'"):
        entry.row_tags([{"number": 1}])


def test_a_row_tag_no_table_bumps_is_refused_at_its_line() -> None:
    text = SHOP.replace('rows = ["row:orders:{id}"]', 'rows = ["row:order:{id}"]')
    with pytest.raises(DeclarationError, match=r"shop\.toml:12: .*rows\[0\].*row:order:\{id\}"):
        parse(text, "shop.toml")


def test_loaders_dispatch_by_template_with_unescaped_text_values() -> None:
    loaders = Loaders()
    seen: list[dict[str, Any]] = []

    @loaders.entry("customer:{customer_id}:orders:{page}")
    async def page(conn: object, **values: str) -> Loaded:
        seen.append(values)
        return Loaded(b"[]", rows=[{"id": 1}])

    @loaders.entry("order:{id}")
    async def order(conn: object, id: str) -> bytes | None:
        return None if id == "0" else id.encode()

    async def run() -> None:
        loaded = await loaders.load(None, "customer:a%3Ab:orders:2")
        assert loaded == Loaded(b"[]", rows=[{"id": 1}])
        assert seen == [{"customer_id": "a:b", "page": "2"}]
        assert await loaders.load(None, "order:7") == Loaded(b"7")
        assert await loaders.load(None, "order:0") is None
        with pytest.raises(UnknownEntry):
            await loaders.load(None, "invoice:1")

    asyncio.run(run())


def test_a_loader_that_returns_anything_but_bytes_loaded_or_none_is_named() -> None:
    loaders = Loaders()

    @loaders.entry("order:{id}")
    async def order(conn: object, id: str) -> Any:
        return {"id": id}

    with pytest.raises(TypeError, match=r"order:1.*returned dict"):
        asyncio.run(loaders.load(None, "order:1"))


def test_one_template_has_one_loader() -> None:
    loaders = Loaders()
    loaders.entry("order:{id}")(lambda conn, id: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="already registered"):
        loaders.entry("order:{id}")(lambda conn, id: None)  # type: ignore[arg-type,return-value]


def test_a_cache_refuses_a_loader_for_an_entry_its_declaration_does_not_declare() -> None:
    loaders = Loaders()
    loaders.entry("invoice:{id}")(lambda conn, id: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match=r"'invoice:\{id\}'.*shop\.toml"):
        pgbust.Cache(CacheSettings(), parse(SHOP, "shop.toml"), loaders)


def test_the_declared_loaders_must_be_a_loaders_object() -> None:
    assert import_loaders("api.loaders:LOADERS").templates
    with pytest.raises(ImportError, match="cannot import no_such_module"):
        import_loaders("no_such_module:LOADERS")
    with pytest.raises(ImportError, match=r"is not a pgbust\.Loaders"):
        import_loaders("api.loaders:load_entry")
