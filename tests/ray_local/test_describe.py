"""Describe-and-Dissect and verification on Ray: the DESCRIBE tasks (chunks of units) and VERIFY tasks run as
Ray tasks, the backends built in the workers, the summariser a server on loopback; the tables are the same
as in-process, and a re-run on Ray reaches no backend."""

from __future__ import annotations

import pytest
from rich.console import Console

from discover_ray import Store, dissect, load_run, read_labels
from tests.tiny_llm import LoopbackChatServer
from tests.unit.dissection.test_describe import config, summary_reply, world_files  # noqa: F401  (a fixture)

QUIET = Console(quiet=True)


@pytest.mark.usefixtures("ray_cluster")
def test_describe_and_verify_on_ray_match_in_process_and_a_rerun_calls_nothing(world_files, tmp_path):  # noqa: F811
    with LoopbackChatServer(summary_reply) as server:
        summarizer = {"kind": "openai", "model": "loopback-llm", "base_url": server.base_url, "api_key_env": None}
        on_ray = config(world_files, tmp_path / "ray", summarizer=summarizer,
                        params={"unit_chunk": 2, "draw_chunk": 2, "layers": ["fc"]})  # tasks of both rounds
        result = dissect(on_ray, executor="ray", console=QUIET)
        asked = len(server.requests)
        local = dissect(config(world_files, tmp_path / "local", summarizer=summarizer,
                               params={"unit_chunk": 2, "draw_chunk": 2, "layers": ["fc"]}), executor="local", console=QUIET)
        again = dissect(on_ray, executor="ray", console=QUIET)
        assert [s.stage for s in again.record.recomputed()] == ["PREPARE"]
        # the in-process run had its own (empty) cache: it asked the server for the same replies once more
        assert len(server.requests) == 2 * asked
    assert result.run_id == local.run_id
    (_, ray_table), = read_labels(result.store, result.run_id, "fc", method="describe_and_dissect")
    (_, local_table), = read_labels(local.store, local.run_id, "fc", method="describe_and_dissect")
    assert ray_table.ranked() == local_table.ranked() and ray_table.ranked()
    assert ray_table.failures() == local_table.failures()
    record = load_run(Store(result.store), result.run_id)
    assert record.executor["executor"] == "ray"
    assert {(v.method, v.source): round(v.auc_mean, 6) for v in record.verification if v.auc_mean is not None} == {
        (v.method, v.source): round(v.auc_mean, 6) for v in load_run(Store(local.store), local.run_id).verification
        if v.auc_mean is not None}
