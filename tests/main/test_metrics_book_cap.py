"""The metrics book keeps a bounded number of label sets, whatever workers report."""

from __future__ import annotations

import pytest

from isolated_api.main.metrics_book import MAX_LABEL_SETS, MetricsBook


def test_metrics_book_label_sets_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    book = MetricsBook()
    book.add_http(((("GET", "/known", 200), 3),))
    book.add_http((("GET", f"/r{i}", 200), 1) for i in range(MAX_LABEL_SETS + 500))
    book.add_http(((("GET", "/known", 200), 2),))
    text = book.render().decode()
    series = [line for line in text.splitlines() if line.startswith("isolated_api_http_requests_total{")]
    # The first MAX_LABEL_SETS sets (the known one included) plus the one overflow series.
    assert len(series) == MAX_LABEL_SETS + 1
    assert 'isolated_api_http_requests_total{method="GET",route="/known",status="200"} 5.0' in series
    overflow = [s for s in series if 'route="(too many label sets)"' in s]
    expected = 'isolated_api_http_requests_total{method="OTHER",route="(too many label sets)",status="0"} 501.0'
    assert overflow == [expected]
    assert sum("too many label sets" in r.getMessage() for r in caplog.records) == 1
