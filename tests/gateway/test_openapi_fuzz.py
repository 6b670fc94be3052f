"""schemathesis against the running app's `/openapi.json`: every operation, with
generated valid and invalid input, as an operator (who may call every route), and no
answer may be a 5xx. Examples are bounded so the whole run takes a minute or two.

(schemathesis's own pytest loader does not work with pytest 9, so each operation's
strategy is driven by Hypothesis here.)
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

pytestmark = pytest.mark.cluster

EXAMPLES_PER_MODE = 15
# Logging out would spend the operator's token for every later case; the
# authorization matrix covers it.
SKIPPED = {("POST", "/api/auth/logout")}


def test_no_input_makes_a_server_error(serve_url: str, new_user) -> None:
    operator = new_user("operator")
    schema = schemathesis.openapi.from_url(f"{serve_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    server_errors: dict[str, str] = {}
    with requests.Session() as session:
        for operation in operations:
            if (operation.method.upper(), operation.path) in SKIPPED:
                continue
            strategy = (operation.as_strategy(GenerationMode.POSITIVE)
                        | operation.as_strategy(GenerationMode.NEGATIVE))

            @given(case=strategy)
            @settings(max_examples=2 * EXAMPLES_PER_MODE, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def call(case: schemathesis.Case) -> None:
                response = case.call(base_url=serve_url, session=session,
                                     headers=operator.headers, timeout=30)
                assert response.status_code < 500, (
                    f"{response.status_code} {response.text[:300]} for {case.as_curl_command()}")

            try:
                call()
            except AssertionError as exc:
                server_errors[operation.label] = str(exc).splitlines()[0]
    assert server_errors == {}
