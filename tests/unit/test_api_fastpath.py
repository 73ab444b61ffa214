"""Which requests the pre-routing L1 fast path may answer: canonical read paths only."""

from __future__ import annotations

import pytest

from api.fastpath import entry_of


@pytest.mark.parametrize(
    "path,query,entry",
    [
        ("/products/7", b"", "product:7"),
        ("/products/9007199254740991", b"", "product:9007199254740991"),  # 2**53 - 1
        ("/categories/3/summary", b"", "category:3:summary"),
        ("/categories/3/products", b"", "category:3:products:20:0"),
        ("/categories/3/products", b"limit=5&offset=10", "category:3:products:5:10"),
        ("/categories/3/products", b"offset=10", "category:3:products:20:10"),
    ],
)
def test_canonical_read_paths_map_to_their_entry(path: str, query: bytes, entry: str) -> None:
    found = entry_of(path, query)
    assert found is not None and found[0] == entry


@pytest.mark.parametrize(
    "path,query",
    [
        ("/products/007", b""),  # FastAPI reads 7: let it (and the cache) decide
        ("/products/0", b""),
        ("/products/-1", b""),
        ("/products/9007199254740992", b""),  # beyond the API's ids: FastAPI answers 422
        ("/products/7/", b""),
        ("/products/7", b"x=1"),
        ("/categories/3/products", b"limit=0"),
        ("/categories/3/products", b"limit=101"),
        ("/categories/3/products", b"limit=5&limit=6"),
        ("/categories/3/products", b"limit=abc"),
        ("/categories/3/products", b"limit=5&other=1"),
        ("/categories/3/products", b"limit"),
        ("/categories/3/products", b"\xff"),
        ("/healthz", b""),
    ],
)
def test_everything_else_falls_through_to_fastapi(path: str, query: bytes) -> None:
    assert entry_of(path, query) is None
