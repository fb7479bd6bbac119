"""The pure parts of bench/gateway.py: the numbers it prints are only as good as these.

A wrong percentile or a sequence that differs between variants would make the
routing comparison meaningless without any visible failure, and an nginx
configuration without upstream keep-alive would make nginx look slower than it
is; these tests pin all three.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import gateway
from hack import tritonlocal


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert gateway.percentile(values, 50) == pytest.approx(50.5)
    assert gateway.percentile(values, 99) == pytest.approx(99.01)
    assert gateway.percentile(values, 0) == 1.0
    assert gateway.percentile(values, 100) == 100.0
    rng = random.Random(7)
    sample = [rng.lognormvariate(0, 1) for _ in range(1001)]
    for q in (1, 25, 50, 90, 99, 99.9):
        assert gateway.percentile(sample, q) == pytest.approx(float(np.percentile(sample, q)))


def test_percentile_sorts_its_input_and_refuses_nonsense() -> None:
    assert gateway.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert gateway.percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        gateway.percentile([], 50)
    with pytest.raises(ValueError):
        gateway.percentile([1.0], 101)


def test_summarize_reports_milliseconds_and_nothing_for_no_successes() -> None:
    summary = gateway.summarize([0.001, 0.002, 0.003], errors=2)
    assert summary.count == 3
    assert summary.errors == 2
    assert summary.p50_ms == pytest.approx(2.0)
    assert summary.mean_ms == pytest.approx(2.0)
    assert summary.max_ms == pytest.approx(3.0)
    empty = gateway.summarize([], errors=5)
    assert (empty.count, empty.errors, empty.p50_ms, empty.p99_ms) == (0, 5, None, None)


def test_arrival_sequence_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    def sequence(seed: int) -> tuple[gateway.Arrival, ...]:
        return gateway.arrival_sequence(
            rate_per_s=68.0, mean_service_ms=30.0, duration_s=20.0, seed=seed
        )

    first, again, other = sequence(gateway.SEED), sequence(gateway.SEED), sequence(gateway.SEED + 1)
    assert first == again
    assert first != other
    # The published numbers came from this sequence: a change to how it is drawn
    # must show up here, not silently in docs/benchmarks.md.
    assert first[0] == gateway.Arrival(at_s=0.045941, service_ms=46.58)


def test_arrival_sequence_has_the_asked_rate_and_mean_and_stays_in_bounds() -> None:
    arrivals = gateway.arrival_sequence(
        rate_per_s=100.0, mean_service_ms=30.0, duration_s=200.0, seed=1
    )
    times = [a.at_s for a in arrivals]
    assert times == sorted(times)
    assert times[0] > 0 and times[-1] < 200.0
    assert len(arrivals) == pytest.approx(20_000, rel=0.03)
    mean = sum(a.service_ms for a in arrivals) / len(arrivals)
    assert mean == pytest.approx(30.0, rel=0.03)
    assert all(0 <= a.service_ms <= 60_000 for a in arrivals)
    capped = gateway.arrival_sequence(
        rate_per_s=1000.0, mean_service_ms=30.0, duration_s=100.0, seed=1, max_count=50
    )
    assert len(capped) == 50
    with pytest.raises(ValueError):
        gateway.arrival_sequence(rate_per_s=0.0, mean_service_ms=30.0, duration_s=1.0, seed=1)


def test_infer_body_carries_the_service_time_as_a_request_parameter() -> None:
    plain = json.loads(gateway.infer_body())
    assert "parameters" not in plain
    assert plain["inputs"][0]["name"] == "INPUT0"
    timed = json.loads(gateway.infer_body(12.5))
    assert timed["parameters"] == {"service_time_ms": 12.5}


def _sites() -> list[gateway.NginxSite]:
    return [
        gateway.NginxSite("single", 21001, ("127.0.0.101:8000",)),
        gateway.NginxSite(
            "fleet_lc", 21002, ("127.0.0.101:8000", "127.0.0.102:8000"), "least_conn"
        ),
        gateway.NginxSite("fleet_rr", 21003, ("127.0.0.101:8000", "127.0.0.102:8000")),
    ]


def _upstream_block(conf: str, name: str) -> str:
    start = conf.index(f"upstream {name} {{")
    return conf[start : conf.index("}", start)]


def test_nginx_conf_keeps_upstream_connections_alive() -> None:
    conf = gateway.render_nginx_conf(Path("/tmp/prefix"), _sites())
    assert "worker_processes 1;" in conf
    assert conf.count("proxy_http_version 1.1;") == 3
    assert conf.count('proxy_set_header Connection "";') == 3
    for name in ("single", "fleet_lc", "fleet_rr"):
        block = _upstream_block(conf, name)
        assert "keepalive 64;" in block
        assert "keepalive_requests 100000;" in block
    assert "least_conn;" in _upstream_block(conf, "fleet_lc")
    assert "least_conn;" not in _upstream_block(conf, "fleet_rr")
    assert "listen 127.0.0.1:21002;" in conf
    assert "access_log off;" in conf


def test_nginx_conf_writes_only_under_its_prefix() -> None:
    conf = gateway.render_nginx_conf(Path("/tmp/prefix"), _sites())
    for directive in ("pid", "error_log", "client_body_temp_path", "proxy_temp_path"):
        line = next(x for x in conf.splitlines() if x.strip().startswith(directive + " "))
        assert line.split()[1].startswith("/tmp/prefix/"), line
    with pytest.raises(ValueError):
        gateway.render_nginx_conf(Path("/p"), [gateway.NginxSite("x", 1, ("a:1",), "ip_hash")])
    with pytest.raises(ValueError):
        gateway.render_nginx_conf(Path("/p"), [gateway.NginxSite("x", 1, ())])


@pytest.mark.skipif(gateway.find_nginx() is None, reason="nginx is not installed")
def test_nginx_accepts_the_rendered_conf(tmp_path: Path) -> None:
    nginx = gateway.find_nginx()
    assert nginx is not None
    conf = tmp_path / "nginx.conf"
    conf.write_text(gateway.render_nginx_conf(tmp_path, _sites()))
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_single_instance_means_one_instance_and_no_batcher() -> None:
    one = {"instance_group": [{"count": 1, "kind": "KIND_CPU"}]}
    assert gateway.single_instance(one)
    assert not gateway.single_instance({"instance_group": [{"count": 2}]})
    assert not gateway.single_instance({"instance_group": [{"count": 1}, {"count": 1}]})
    assert not gateway.single_instance({**one, "dynamic_batching": {"max_queue_delay": 0}})
    assert not gateway.single_instance({})


def test_the_bench_model_is_single_instance_and_takes_a_per_request_time() -> None:
    """sleepy must say one instance (the live check repeats this) and read the
    request's service_time_ms, or the routing variants would all see one time."""
    model = tritonlocal.MODEL_REPOSITORY / "sleepy"
    text = (model / "config.pbtxt").read_text()
    assert "count: 1" in text
    assert "dynamic_batching" not in text
    assert "request.parameters()" in (model / "1" / "model.py").read_text()


def test_success_count_sums_the_models_series_only() -> None:
    text = "\n".join(
        [
            "# HELP nv_inference_request_success Number of successful inference requests",
            "# TYPE nv_inference_request_success counter",
            'nv_inference_request_success{model="sleepy",version="1"} 120',
            'nv_inference_request_success{model="sleepy",version="2"} 3',
            'nv_inference_request_success{model="other",version="1"} 999',
            'nv_inference_request_failure{model="sleepy",version="1"} 7',
        ]
    )
    assert gateway.success_count(text, "sleepy") == 123
    assert gateway.success_count(text, "missing") == 0


def test_stat_cpu_ticks_survives_a_command_name_with_spaces_and_parens() -> None:
    rest = "S 1 1 1 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 1 0 5 1000 10"
    assert gateway.stat_cpu_ticks(f"4242 (we (ird) name) {rest}") == 290


def test_stat_cpu_ticks_reads_this_process() -> None:
    text = Path("/proc/self/stat").read_text()
    assert gateway.stat_cpu_ticks(text) >= 0
