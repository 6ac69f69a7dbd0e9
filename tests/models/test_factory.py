"""models/factory.py: the framework registry."""
import pytest

from models import factory
from models.factory import FRAMEWORKS, register_framework


def test_register_framework_refuses_a_taken_name():
    """A second class under a registered name fails naming the name and both classes, and the
    registry keeps the first (TF4CTR would otherwise be replaced without a word)."""
    factory.custom_objects()  # imports the frameworks, so 'tf4ctr' is registered
    first = FRAMEWORKS["tf4ctr"]

    class OtherTF4CTR:
        pass

    with pytest.raises(ValueError, match=rf"framework 'tf4ctr' is registered twice \({first.__name__}, OtherTF4CTR\)"):
        register_framework("tf4ctr")(OtherTF4CTR)
    assert FRAMEWORKS["tf4ctr"] is first


def test_register_framework_adds_a_new_name():
    class Toy:
        pass

    try:
        assert register_framework("toy_test_only")(Toy) is Toy
        assert FRAMEWORKS["toy_test_only"] is Toy
    finally:
        FRAMEWORKS.pop("toy_test_only", None)
