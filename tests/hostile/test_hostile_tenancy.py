"""A tenant against the others, in the production shape with production roles: the gateway logs in
as a member of medparse_app, the worker as a member of medparse_system (migration 0007).

- A tenant that fills its stored-bytes quota gets 429 ``storage_quota_exceeded`` while another
  tenant's job completes (through the system role's dispatcher, worker and sweeper).
- The gateway's role cannot read or write another tenant's rows, whatever session settings it tries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from medparse.settings import Settings
from tests.support.factories import organ_image
from tests.support.stack import HealthWatch, Stack, peak_rss_mb
from tests.support.throwaway import throwaway_login_role


@pytest.fixture
def roles(pg_settings: Settings) -> Iterator[dict[str, str]]:
    """Login roles: ``app`` in medparse_app, ``system`` in medparse_system."""
    with throwaway_login_role("medparse_app") as app, throwaway_login_role("medparse_system") as system:
        yield {"app": app, "system": system}


def _url(settings: Settings, role: str, driver: str = "postgresql+asyncpg") -> str:
    assert settings.database_url is not None
    url = make_url(settings.database_url).set(drivername=driver, username=role, password=None)
    return url.render_as_string(hide_password=False)


def test_a_tenant_filling_its_store_gets_429_and_cannot_reach_another_tenants_rows(
    make_stack: Callable[..., Stack], roles: dict[str, str], pg_settings: Settings
) -> None:
    image, _ = organ_image(320, 240)
    quota = 3 * len(image)
    stack = make_stack(
        MEDPARSE_DATABASE_URL=_url(pg_settings, roles["app"]),
        MEDPARSE_SYSTEM_DATABASE_URL=_url(pg_settings, roles["system"]),
        MEDPARSE_TENANT_MAX_STORED_BYTES=str(quota),
    )
    victim = stack.new_tenant()
    victim_job = stack.submit(victim, image)
    assert victim_job.status_code == 202, victim_job.text
    hog = stack.new_tenant()
    answers: list[httpx.Response] = []
    with HealthWatch(stack.base_url) as watch:
        for _ in range(8):  # far more than fits: the quota, not the disk, says no
            answers.append(stack.submit(hog, image))
    watch.assert_healthy(limit_s=1.0)
    statuses = [a.status_code for a in answers]
    assert statuses[0] == 202 and 429 in statuses, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["code"] == "storage_quota_exceeded" and refused.headers["Retry-After"]
    # Soft across the two gateway processes: each may let one more in before it reads the total.
    assert statuses.count(202) <= 3 + 1, statuses
    with stack.client(hog) as http:
        usage = http.get("/v1/usage").json()
    assert usage["max_stored_bytes"] == quota
    assert usage["stored_bytes"] >= statuses.count(202) * len(image)

    # The victim's job completes meanwhile (the worker's system role), and so does a new tenant's.
    assert stack.wait_done(victim, victim_job.json()["id"])["status"] == "succeeded"
    stack.check_other_tenant_completes()
    stack.assert_gateway_alive()
    rss = {pid: round(peak_rss_mb(pid)) for pid in stack.gateway_pids()}
    print(f"hog statuses {statuses}; /healthz max {watch.max_latency_s:.3f} s; gateway peak RSS MiB {rss}")

    # The hog's key cannot see the victim's job; nor can the gateway's role, whatever it sets.
    with stack.client(hog) as http:
        assert http.get(f"/v1/jobs/{victim_job.json()['id']}").status_code == 404
    with psycopg.connect(_url(pg_settings, roles["app"], "postgresql"), autocommit=True) as conn:
        for attempt in ("SET medparse.scope = 'system'", "RESET ALL",
                        "SELECT set_config('medparse.scope', 'system', false)"):
            conn.execute(attempt)
            assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM job_inputs").fetchone() == (0,)
            assert conn.execute("UPDATE jobs SET priority = 5").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE medparse_system")
