import pytest

from htc_notebook.errors import SpecError
from htc_notebook.spec import RetryPolicy


def test_delays_grow_and_cap():
    p = RetryPolicy(retries=5, backoff=1.5, max_backoff=10)
    assert [p.delay(a) for a in range(0, 6)] == [0.0, 1.5, 3.0, 6.0, 10.0, 10.0]
    assert p.delay(10_000) == 10.0
    assert RetryPolicy().retries == 0 and RetryPolicy(backoff=0).delay(3) == 0.0


@pytest.mark.parametrize("kw, field", [({"retries": -1}, "retries"), ({"retries": 1.0}, "retries"),
                                       ({"backoff": -0.5}, "backoff"), ({"backoff": True}, "backoff"),
                                       ({"backoff": float("nan")}, "backoff"), ({"max_backoff": "10"}, "max_backoff"),
                                       ({"backoff": 5, "max_backoff": 1}, "max_backoff")])
def test_bad_values(kw, field):
    with pytest.raises(SpecError) as info:
        RetryPolicy(**kw)
    assert info.value.model == "RetryPolicy" and info.value.field == field
