"""Fields added to config dataclasses after runs were recorded: records, resume checks and round-0
fingerprints of earlier runs stay valid while the new field holds its no-op default."""

import dataclasses

from ntkal.added_fields import added_field, stable_repr
from ntkal.experiment.record import _plain, changed_keys


@dataclasses.dataclass(frozen=True)
class Inner:
    a: int = 1
    names: tuple = ("x",)


def _versions():
    """The same config class before and after a field was added (same qualified name)."""
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        lr: float = 0.1
        inner: Inner = Inner()
        extra: dict = dataclasses.field(default_factory=lambda: {"k": [1, (2,)]})
    old = Cfg

    @dataclasses.dataclass(frozen=True)
    class Cfg:  # noqa: F811 (the same class, one field later)
        lr: float = 0.1
        inner: Inner = Inner()
        extra: dict = dataclasses.field(default_factory=lambda: {"k": [1, (2,)]})
        delta: float = added_field(0.0, added_in="test")
    return old, Cfg


def test_stable_repr_is_repr_without_added_fields():
    old, _ = _versions()
    for value in (old(), old(lr=0.2, inner=Inner(3, ("a", "b"))), (old(),), [old(), 1.5, "s"],
                  {"a": (old(), None)}, (), (1,), Inner()):
        assert stable_repr(value) == repr(value)


def test_added_field_at_its_default_is_left_out_of_records_and_fingerprints():
    old, new = _versions()
    assert stable_repr((new(), "data")) == repr((old(), "data"))  # fingerprints of old runs kept
    assert _plain(new()) == _plain(old())  # records of old runs still match
    assert "delta" not in _plain(new())
    changed = new(delta=0.5)  # any other value is a setting like every other
    assert stable_repr(changed) != stable_repr(new()) and "delta=0.5" in stable_repr(changed)
    assert _plain(changed)["delta"] == 0.5
    assert changed_keys(_plain(old()), _plain(changed)) == ["delta: (unset) → 0.5"]
