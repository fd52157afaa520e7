import pytest

from db.status import CANCELABLE, TERMINAL, TRANSITIONS, InvalidTransition, JobStatus, check_transition


def test_terminal_states_are_exactly_succeeded_failed_canceled() -> None:
    assert TERMINAL == {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled}


def test_only_queued_and_running_jobs_can_be_canceled() -> None:
    assert CANCELABLE == {JobStatus.queued, JobStatus.running}


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("target", list(JobStatus))
def test_a_terminal_job_never_changes_again(terminal: JobStatus, target: JobStatus) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(terminal, target)


def test_a_queued_job_cannot_succeed_without_running() -> None:
    with pytest.raises(InvalidTransition, match="queued job cannot become succeeded"):
        check_transition(JobStatus.queued, JobStatus.succeeded)


def test_an_expired_running_job_may_go_back_to_queued() -> None:
    check_transition(JobStatus.running, JobStatus.queued)


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


def test_the_prebuilt_job_insert_covers_every_parameter_of_a_new_job() -> None:
    import uuid
    from datetime import UTC, datetime

    from db.jobs import _NEW_JOB_COLUMNS, NewJob, insert_job_params

    job = NewJob(uuid.uuid4(), uuid.uuid4(), ["liver"], {}, "png", 1, 1, b"x", datetime.now(UTC))
    assert set(insert_job_params(job)[0]) == set(_NEW_JOB_COLUMNS)


def test_the_in_flight_cap_has_headroom_but_stays_below_the_429_threshold() -> None:
    from medparse.settings import Settings

    for per_instance, instances in [(8, 1), (4, 2), (1, 2), (1, 1), (16, 3)]:
        capacity = per_instance * instances
        settings = Settings(endpoint_max_concurrent_per_instance=per_instance, endpoint_instance_count=instances)
        assert capacity <= settings.endpoint_max_in_flight < max(2 * capacity, capacity + 1)
    assert Settings(endpoint_max_concurrent_per_instance=8).endpoint_max_in_flight == 10
    assert Settings(endpoint_in_flight_headroom=0.0).endpoint_max_in_flight == 8
