from app import catalog


def test_find() -> None:
    assert catalog.find("mug") is not None
    assert catalog.find("nope") is None
