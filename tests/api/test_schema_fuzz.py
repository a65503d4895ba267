"""Property-based tests of both APIs against their own OpenAPI schemas (schemathesis): whatever a client
sends, valid or not, the server answers without a server error (no 5xx).

The fuzzed app allows few pixels per job and a short queue, so the valid jobs it is sent stay cheap (the
rest are refused before they are queued); its jobs are cancelled when the test ends.
"""

from __future__ import annotations

import collections

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from .conftest import start

EXAMPLES = 60  # per operation and mode


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    url, demo = start(tmp_path_factory.mktemp("api-fuzz"), max_pixels=64 * 64 * 2, queue_size=6, queue_per_user=3)
    yield url
    for status in demo.service.owner_jobs("api"):
        if not status.finished:
            demo.service.interrupt("api", status.id)
    demo.close()


def fuzz(url: str, path: str, modes: tuple[GenerationMode, ...], keep=lambda label: True) -> list[str]:
    """Send EXAMPLES generated requests per operation and mode; returns what answered with a 5xx.

    (Driven through hypothesis directly: schemathesis' own pytest integration does not run under pytest 9.)
    """
    schema = schemathesis.openapi.from_url(f"{url}{path}")
    failures: list[str] = []
    seen: collections.Counter[str] = collections.Counter()  # answers by operation and status, for -s
    for result in schema.get_all_operations():
        operation = result.ok()
        if not keep(operation.label):
            continue
        for mode in modes:
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                      phases=[Phase.generate])
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                response = case.call(timeout=30)
                seen[f"{operation.label} {response.status_code}"] += 1
                if response.status_code >= 500:
                    failures.append(f"{operation.label} {mode.value}: {response.status_code} {response.text[:200]} "
                                    f"for {case.path_parameters} {case.query} {str(case.body)[:200]}")

            try:
                check()
            except Unsatisfiable:  # negative mode: an operation with no input has no invalid input
                assert mode is GenerationMode.NEGATIVE, operation.label
    print(f"\n{path}: {sum(seen.values())} requests; by operation and status: {dict(sorted(seen.items()))}")
    return failures


ALL_MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
GENERATION = ("POST /txt2img", "POST /img2img")


def test_native_api_never_fails_with_a_server_error(fuzz_app):
    assert fuzz(fuzz_app, "/api/v1/openapi.json", ALL_MODES, lambda label: "events" not in label) == []


def test_a1111_api_never_fails_with_a_server_error(fuzz_app):
    assert fuzz(fuzz_app, "/sdapi/v1/openapi.json", ALL_MODES, lambda label: label not in GENERATION) == []


def test_a1111_generation_refuses_invalid_input_without_a_server_error(fuzz_app):
    """Invalid input only: valid requests would wait for whole generations."""
    assert fuzz(fuzz_app, "/sdapi/v1/openapi.json", (GenerationMode.NEGATIVE,), lambda label: label in GENERATION) == []


def test_the_fuzzed_app_still_generates(fuzz_app):
    response = requests.post(f"{fuzz_app}/sdapi/v1/interrupt", timeout=30)
    assert response.status_code == 200
    ok = requests.post(f"{fuzz_app}/sdapi/v1/txt2img", json={"prompt": "after", "width": 64, "height": 64, "steps": 2},
                       timeout=120)
    assert ok.status_code in (200, 429), ok.text  # 429: the fuzzer's jobs may still fill the queue
