"""The settle policy: ack, retry on the ladder, or dead-letter — pinned without a broker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.audit.record import Outcome
from shared.errors import (
    InvalidMessage,
    RateLimited,
    RecordBusy,
    RemoteRejected,
    RemoteUnavailable,
    SchemaViolation,
)
from shared.logging import register_secret
from shared.message_context import MessageContext
from shared.messaging.settle import (
    MAX_ERROR_CHARS,
    Ack,
    Dead,
    MessageFacts,
    Retry,
    decide,
    describe_error,
    retry_rung,
)
from shared.messaging.topology import DEAD_EXCHANGE, PULLER, PUSH_EXCHANGE, PUSHER, WorkQueue
from shared.settings import DEFAULT_RETRY_DELAYS

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
QUEUE = WorkQueue(PUSHER, DEFAULT_RETRY_DELAYS)
ROUTING_KEY = "account.update.org1.inst1"
LADDER = QUEUE.retry_delays


def facts(attempt: int = 0, headers: dict[str, object] | None = None,
          exchange: str = PUSH_EXCHANGE, routing_key: str = ROUTING_KEY,
          **context: object) -> MessageFacts:
    fields: dict[str, object] = dict(org_id="org1", instance_id="inst1", entity="account",
                                     record_id="42")
    fields.update(context)
    return MessageFacts(MessageContext("m-1", attempt=attempt, **fields),  # type: ignore[arg-type]
                        exchange, routing_key, headers or {})


@pytest.mark.parametrize("outcome", ["created", "updated", "deleted", "unchanged", "skipped"])
def test_a_returned_outcome_is_acked(outcome: str) -> None:
    assert decide(Outcome(outcome), facts(), QUEUE, NOW) == Ack(Outcome(outcome))


@pytest.mark.parametrize("outcome", [Outcome.DEAD, Outcome.RETRYING, Outcome.FAILED, None, 3])
def test_a_handler_returning_something_else_is_a_bug_retried(outcome: object) -> None:
    decision = decide(outcome, facts(), QUEUE, NOW)  # type: ignore[arg-type]
    assert isinstance(decision, Retry)
    assert decision.error.bug and decision.error.error_class == "ValueError"


@pytest.mark.parametrize("attempt", [0, 1, 2, 3])
def test_transient_errors_walk_the_ladder(attempt: int) -> None:
    decision = decide(RemoteUnavailable("timeout"), facts(attempt), QUEUE, NOW)
    assert isinstance(decision, Retry)
    assert decision.queue == QUEUE.retry_queue(attempt)
    assert decision.attempt == attempt + 1
    assert decision.headers["x-attempt"] == attempt + 1
    assert decision.queue.work_queue == QUEUE.name


def test_after_the_last_rung_a_transient_error_is_dead() -> None:
    decision = decide(RemoteUnavailable("timeout", http_status=504), facts(4), QUEUE, NOW)
    assert isinstance(decision, Dead)
    assert decision.headers["x-attempts"] == 5  # a ladder of 4 allows 5 attempts
    assert decision.headers["x-http-status"] == 504


@pytest.mark.parametrize("error", [RemoteRejected("422", http_status=422),
                                   SchemaViolation("bad"), InvalidMessage("not JSON")])
def test_permanent_errors_are_dead_at_once(error: Exception) -> None:
    decision = decide(error, facts(0), QUEUE, NOW)
    assert isinstance(decision, Dead)
    assert decision.headers["x-attempts"] == 1
    assert decision.exchange == DEAD_EXCHANGE
    assert decision.routing_key == QUEUE.dead_routing_key(ROUTING_KEY)


@pytest.mark.parametrize(("attempt", "retry_after", "rung"), [
    (0, None, 0), (0, 10, 0), (0, 30, 0), (0, 31, 1), (0, 500, 2), (0, 7200, 3),
    (2, 60, 2), (3, 60, 3), (4, 60, None), (5, None, None)])
def test_retry_after_picks_the_first_rung_at_least_that_long(
        attempt: int, retry_after: float | None, rung: int | None) -> None:
    assert retry_rung(attempt, LADDER, retry_after) == rung


def test_rate_limited_uses_its_retry_after() -> None:
    decision = decide(RateLimited("429", retry_after=100, http_status=429), facts(0), QUEUE, NOW)
    assert isinstance(decision, Retry)
    assert decision.queue == QUEUE.retry_queue(1)  # 100 s: the 2-minute rung
    assert decision.attempt == 1


def test_an_unexpected_exception_is_a_bug_treated_as_transient() -> None:
    decision = decide(KeyError("name"), facts(0), QUEUE, NOW)
    assert isinstance(decision, Retry)
    assert decision.error.bug
    assert decision.headers["x-error-class"] == "KeyError"
    assert "bug" in decision.headers["x-error"]
    dead = decide(KeyError("name"), facts(4), QUEUE, NOW)
    assert isinstance(dead, Dead)


def test_dead_letter_headers_carry_everything_an_operator_and_redelivery_need() -> None:
    decision = decide(RemoteRejected("422: name missing", http_status=422), facts(
        2, headers={"x-first-failed-at": "2026-01-01T00:00:00+00:00", "x-attempt": 2,
                    "x-original-routing-key": ROUTING_KEY,
                    "x-original-exchange": PUSH_EXCHANGE, "x-death": [{"count": 1}],
                    "x-first-death-queue": QUEUE.retry_queue(1).name},
        exchange="", routing_key=QUEUE.name), QUEUE, NOW)
    assert isinstance(decision, Dead)
    assert decision.headers == {
        "x-attempt": 2,
        "x-error-class": "RemoteRejected",
        "x-error": "422: name missing",
        "x-http-status": 422,
        "x-attempts": 3,
        "x-first-failed-at": "2026-01-01T00:00:00+00:00",
        "x-org-id": "org1",
        "x-instance-id": "inst1",
        "x-entity": "account",
        "x-record-id": "42",
        "x-original-exchange": PUSH_EXCHANGE,
        "x-original-routing-key": ROUTING_KEY,
        "x-service": PUSHER,
    }
    assert decision.routing_key == QUEUE.dead_routing_key(ROUTING_KEY)


def test_the_failed_step_of_a_multi_request_action_is_a_header_of_its_own() -> None:
    failed = RemoteRejected("step 'address' of the create: POST /addresses answered 422",
                            http_status=422, details={"step": "address", "request": "POST"})
    retry = decide(RemoteUnavailable("503", details={"step": "customer"}),
                   facts(0), QUEUE, NOW)
    dead = decide(failed, facts(1, headers={"x-failed-step": "customer"}), QUEUE, NOW)
    assert isinstance(retry, Retry) and retry.headers["x-failed-step"] == "customer"
    assert isinstance(dead, Dead) and dead.headers["x-failed-step"] == "address"
    assert dead.error.details == {"step": "address", "request": "POST"}


def test_a_failure_of_no_step_drops_the_step_header_of_an_earlier_one() -> None:
    decision = decide(RemoteRejected("422"), facts(1, headers={"x-failed-step": "customer"}),
                      QUEUE, NOW)
    assert "x-failed-step" not in decision.headers  # type: ignore[union-attr]


@pytest.mark.parametrize("step", [None, "", 3, ["a"]])
def test_a_step_detail_that_is_no_name_gives_no_header(step: object) -> None:
    decision = decide(RemoteRejected("422", details={"step": step}), facts(0), QUEUE, NOW)
    assert "x-failed-step" not in decision.headers  # type: ignore[union-attr]


def test_the_first_failure_time_is_set_once() -> None:
    decision = decide(RemoteUnavailable("x"), facts(0), QUEUE, NOW)
    assert decision.headers["x-first-failed-at"] == NOW.isoformat()  # type: ignore[union-attr]
    assert "x-http-status" not in decision.headers  # type: ignore[union-attr]


def test_error_text_is_redacted_and_truncated() -> None:
    register_secret("hunter2-secret-value")
    info = describe_error(RemoteRejected("token hunter2-secret-value " + "x" * 5000))
    assert "hunter2-secret-value" not in info.message
    assert len(info.message) == MAX_ERROR_CHARS
    assert not info.transient and not info.bug


def test_pull_messages_carry_their_external_id() -> None:
    decision = decide(SchemaViolation("bad"), facts(0, record_id=None, external_id="ext-9"),
                      WorkQueue(PULLER), NOW)
    assert isinstance(decision, Dead)
    assert decision.headers["x-external-id"] == "ext-9"
    assert "x-record-id" not in decision.headers
    assert decision.headers["x-service"] == PULLER


def test_no_ladder_takes_a_copy_past_the_envelopes_bound_on_attempt() -> None:
    from shared.messaging.envelope import MAX_ATTEMPT

    ladder = (1.0,) * (MAX_ATTEMPT + 5)
    assert retry_rung(MAX_ATTEMPT - 1, ladder, None) == MAX_ATTEMPT - 1
    assert retry_rung(MAX_ATTEMPT, ladder, None) is None
    assert retry_rung(2**31, LADDER, None) is None


@pytest.mark.parametrize("attempt", [0, 3, 4, 40])
def test_a_busy_record_waits_on_the_first_rung_without_spending_the_ladder(attempt: int) -> None:
    """Another delivery holds the record's claim: not this delivery's failure. It comes
    back after the first rung however often it was busy (a dead holder's claim goes
    stale and is taken over, so the wait ends), and says so in ``x-busy-retries``."""
    decision = decide(RecordBusy("held"), facts(attempt, {"x-busy-retries": attempt}),
                      QUEUE, NOW)
    assert isinstance(decision, Retry)
    assert decision.queue == QUEUE.retry_queue(0)
    assert decision.attempt == attempt + 1
    assert decision.headers["x-busy-retries"] == attempt + 1
    assert decision.headers["x-error-class"] == "RecordBusy"


def test_busy_retries_leave_the_whole_ladder_to_real_failures() -> None:
    """Five busy retries, then a timeout: the first rung, as for a first failure; the
    ladder ends four failures later, as it would have without the busy ones."""
    busy = {"x-busy-retries": 5}
    first = decide(RemoteUnavailable("timeout"), facts(5, busy), QUEUE, NOW)
    assert isinstance(first, Retry) and first.queue == QUEUE.retry_queue(0)
    assert first.headers["x-busy-retries"] == 5  # carried, not raised
    last = decide(RemoteUnavailable("timeout"), facts(8, busy), QUEUE, NOW)
    assert isinstance(last, Retry) and last.queue == QUEUE.retry_queue(len(LADDER) - 1)
    assert isinstance(decide(RemoteUnavailable("timeout"), facts(9, busy), QUEUE, NOW), Dead)


@pytest.mark.parametrize("header", ["7", -1, 10**6, True, 99])
def test_a_busy_count_that_cannot_be_true_counts_as_none_or_as_every_attempt(
        header: object) -> None:
    """``x-busy-retries`` is ours, but a hand-edited copy may carry anything: a value that
    is not a count is ignored, one above the attempts made counts as all of them."""
    decision = decide(RemoteUnavailable("timeout"), facts(3, {"x-busy-retries": header}),
                      QUEUE, NOW)
    assert isinstance(decision, Retry)
    expected = 0 if header == 99 else 3
    assert decision.queue == QUEUE.retry_queue(expected)


def test_a_busy_record_is_dead_at_the_envelopes_bound_on_attempt() -> None:
    from shared.messaging.envelope import MAX_ATTEMPT

    assert isinstance(decide(RecordBusy("held"), facts(MAX_ATTEMPT - 1), QUEUE, NOW), Retry)
    assert isinstance(decide(RecordBusy("held"), facts(MAX_ATTEMPT), QUEUE, NOW), Dead)
