import pytest

from db.delivery_status import (
    CLAIMABLE,
    COMPLETED,
    INITIAL,
    REPLAYABLE,
    TRANSITIONS,
    DeliveryStatus,
    InvalidDeliveryTransition,
    check_transition,
    is_completed,
)


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(DeliveryStatus)


def test_the_statuses_are_the_ones_the_api_and_the_check_constraint_name() -> None:
    from db.models import DELIVERY_STATUS_VALUES

    assert [s.value for s in DeliveryStatus] == ["pending", "sending", "succeeded", "failed"]
    assert DELIVERY_STATUS_VALUES == "'pending', 'sending', 'succeeded', 'failed'"


def test_a_new_delivery_starts_pending() -> None:
    assert INITIAL is DeliveryStatus.pending


def test_due_deliveries_and_those_whose_sender_died_can_be_claimed() -> None:
    assert CLAIMABLE == {DeliveryStatus.pending, DeliveryStatus.sending}


def test_completed_deliveries_are_exactly_succeeded_and_failed() -> None:
    assert COMPLETED == {DeliveryStatus.succeeded, DeliveryStatus.failed}
    assert is_completed(DeliveryStatus.failed)
    assert not is_completed(DeliveryStatus.pending)


def test_a_replay_never_takes_a_delivery_from_the_attempt_in_flight() -> None:
    assert REPLAYABLE == {DeliveryStatus.pending, DeliveryStatus.succeeded, DeliveryStatus.failed}


@pytest.mark.parametrize("completed", sorted(COMPLETED))
@pytest.mark.parametrize("target", list(DeliveryStatus))
def test_only_a_replay_moves_a_completed_delivery(completed: DeliveryStatus, target: DeliveryStatus) -> None:
    if target is DeliveryStatus.pending:
        check_transition(completed, target)
    else:
        with pytest.raises(InvalidDeliveryTransition):
            check_transition(completed, target)


@pytest.mark.parametrize("target", [DeliveryStatus.pending, DeliveryStatus.succeeded, DeliveryStatus.failed])
def test_an_attempt_ends_in_a_retry_a_success_or_a_failure(target: DeliveryStatus) -> None:
    check_transition(DeliveryStatus.sending, target)


def test_a_pending_delivery_cannot_succeed_without_being_sent() -> None:
    with pytest.raises(InvalidDeliveryTransition, match="pending delivery cannot become succeeded"):
        check_transition(DeliveryStatus.pending, DeliveryStatus.succeeded)


def test_a_410_ends_the_targets_waiting_deliveries_without_sending_them() -> None:
    check_transition(DeliveryStatus.pending, DeliveryStatus.failed)


@pytest.mark.parametrize("target", [DeliveryStatus.pending, DeliveryStatus.succeeded, DeliveryStatus.failed])
def test_finishing_an_attempt_writes_the_status_from_the_table(target: DeliveryStatus) -> None:
    import uuid

    from db.webhooks import finish_attempt_stmt

    params = finish_attempt_stmt(uuid.uuid4(), 1, target).compile().params
    assert params["status"] == target.value
    # The compare-and-set: only the claim (sending, attempt 1) that made the attempt writes its result.
    assert DeliveryStatus.sending.value in params.values()
