"""Reading consumer lag from the ``/jsz`` of several servers: only a consumer's leader counts."""

from __future__ import annotations

from typing import Any

from loom_operator.scaler_loop import consumer_lags, leader_lags, monitor_urls


def jsz(consumers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "account_details": [
            {"name": "$G", "stream_detail": [{"name": "LOOM_TASKS", "consumer_detail": consumers}]}
        ]
    }


def replicated(name: str, leader: str, pending: int) -> dict[str, Any]:
    cluster = {"leader": leader, "replicas": [{"name": "n2"}, {"name": "n3"}]}
    return {"name": name, "num_pending": pending, "num_ack_pending": 1, "cluster": cluster}


def test_a_followers_stale_count_is_not_authoritative() -> None:
    doc = jsz([replicated("worker-a-local", "n1", 9), replicated("worker-b-local", "n2", 0)])
    assert consumer_lags(doc, server_name="n1") == {"worker-a-local": 10, "worker-b-local": None}
    # one server given without a name (a single server): its counts are taken as they are
    assert consumer_lags(doc) == {"worker-a-local": 10, "worker-b-local": 1}


def test_the_leaders_view_wins_whatever_order_the_servers_answer_in() -> None:
    n1 = {"a": 10, "b": None, "c": None}
    n2 = {"a": None, "b": 4, "c": None}
    for views in ([n1, n2], [n2, n1]):
        assert leader_lags(views) == {"a": 10, "b": 4, "c": None}  # c: no leader answered
    assert leader_lags([]) == {}


def test_an_unreplicated_consumer_on_a_cluster_is_read_where_it_lives() -> None:
    doc = jsz([{"name": "r1", "num_pending": 3, "num_ack_pending": 0, "cluster": {"leader": "n3"}}])
    assert consumer_lags(doc, server_name="n3") == {"r1": 3}


def test_monitor_urls_is_a_comma_separated_list() -> None:
    assert monitor_urls(" http://a:8222/ , http://b:8222,,") == ["http://a:8222", "http://b:8222"]
