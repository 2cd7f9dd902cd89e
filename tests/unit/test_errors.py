"""The retry policy is decided by the error tree; these pin it."""

import pytest

from shared import errors


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (201, None),
        (204, None),
        (304, None),
        (400, errors.RemoteRejected),
        (404, errors.RemoteRejected),
        (422, errors.RemoteRejected),
        (401, errors.AuthenticationFailed),
        (403, errors.AuthenticationFailed),
        (408, errors.RemoteUnavailable),
        (409, errors.RemoteConflict),
        (423, errors.RemoteConflict),
        (429, errors.RateLimited),
        (500, errors.RemoteUnavailable),
        (502, errors.RemoteUnavailable),
        (503, errors.RemoteUnavailable),
        (599, errors.RemoteUnavailable),
        (100, None),
        # no HTTP status: the third party broke the protocol, never a success nor a 5xx
        (999, errors.RemoteProtocolError),
        (600, errors.RemoteProtocolError),
        (99, errors.RemoteProtocolError),
        (0, errors.RemoteProtocolError),
    ],
)
def test_http_status_classification(status, expected):
    assert errors.classify_http_status(status) is expected


def test_transient_and_permanent_are_disjoint():
    transient = {c for c in vars(errors).values()
                 if isinstance(c, type) and issubclass(c, errors.TransientError)}
    permanent = {c for c in vars(errors).values()
                 if isinstance(c, type) and issubclass(c, errors.PermanentError)}
    assert not transient & permanent
    assert all(c.retryable for c in transient)
    assert not any(c.retryable for c in permanent)


def test_error_carries_class_name_and_status():
    err = errors.RateLimited("slow down", retry_after=12, http_status=429)
    assert err.error_class == "RateLimited"
    assert err.http_status == 429
    assert err.retry_after == 12
    assert str(err) == "slow down"
