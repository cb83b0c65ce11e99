"""contrib/prometheus and contrib/grafana (issue 24): the alert rules pass promtool's check
and their unit tests, a real Prometheus scrapes a real proxy and reads back a known mix of
counts, and every metric the Grafana dashboard queries is one the proxy exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import trio
from ops_support import ROOT, free_port, proxy_process, write_config
from test_ops_metrics import MIX_FILTER, record_a_known_mix, samples

from trio_proxsmtp.daemon.prometheus import PrometheusMetrics
from trio_proxsmtp.testing import FakeUpstream, open_client

PROMETHEUS_DIR = ROOT / "contrib" / "prometheus"
DASHBOARD = ROOT / "contrib" / "grafana" / "proxsmtpd-dashboard.json"


def program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is missing: apt-get install prometheus")
    return found


@pytest.mark.integration
def test_the_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = program("promtool")
    for args in (
        ["check", "rules", "proxsmtpd.rules.yml"],
        ["test", "rules", "proxsmtpd.rules.test.yml"],
    ):
        done = subprocess.run(
            [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict[str, object]] = answer["data"]["result"]
    return result


def values_by_status(port: int) -> dict[str, float]:
    try:
        result = query(port, "sum by (status) (proxsmtpd_messages_total)")
    except OSError:
        return {}  # Prometheus is not listening yet
    # Every status exists from start-up at zero (docs/behaviour.md §11.11): the mix is the rest.
    values = {str(r["metric"]["status"]): float(r["value"][1]) for r in result}  # type: ignore[index]
    return {status: value for status, value in values.items() if value}


@pytest.mark.integration
async def test_a_real_prometheus_reads_a_known_mix_from_a_real_proxy(tmp_path: Path) -> None:
    prometheus = program("prometheus")
    (tmp_path / "filter.sh").write_text(MIX_FILTER)
    port, metrics_port, web_port = free_port(), free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {PROMETHEUS_DIR / 'proxsmtpd.rules.yml'}\n"
        "scrape_configs:\n  - job_name: proxsmtpd\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    with trio.fail_after(40):
        async with FakeUpstream() as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\n"
                f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'}\n"
                f"MetricsListen: 127.0.0.1:{metrics_port}\nWorkers: 2\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)
                for subject in ("deliver", "deliver", "reject", "deliver", "reject"):
                    async with open_client("127.0.0.1", port) as client:
                        body = f"Subject: {subject}\r\n\r\nbody\r\n".encode()
                        replies = await client.send_message("a@x", ["b@x"], body)
                        assert replies[-1].code == (550 if subject == "reject" else 250)
                        await client.quit()
                out = (tmp_path / "prometheus.out").open("wb")
                server = subprocess.Popen(
                    [
                        prometheus,
                        f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{web_port}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                )
                try:
                    expected = {"FILTERED": 3.0, "REJECTED": 2.0}
                    while (
                        found := await trio.to_thread.run_sync(values_by_status, web_port)
                    ) != expected:
                        assert server.poll() is None, (tmp_path / "prometheus.out").read_text()
                        await trio.sleep(0.5)
                    [up_sample] = await trio.to_thread.run_sync(
                        query, web_port, 'up{job="proxsmtpd"}'
                    )
                    assert up_sample["value"][1] == "1"  # type: ignore[index]
                    accepted = await trio.to_thread.run_sync(
                        query, web_port, "sum(proxsmtpd_connections_accepted_total)"
                    )
                    assert float(accepted[0]["value"][1]) == 5  # type: ignore[index]
                finally:
                    server.terminate()
                    try:
                        server.wait(10)
                    except subprocess.TimeoutExpired:
                        server.kill()
                        server.wait()
                    out.close()
    assert found == expected


# --- Grafana ---------------------------------------------------------------------------------

_FUNCTIONS_AND_WORDS = {
    "sum", "rate", "irate", "increase", "changes", "resets", "histogram_quantile", "by",
    "without", "on", "ignoring",
    "or", "and", "unless", "le", "clamp_min", "max", "min", "avg", "count", "offset", "bool",
    "vector", "topk", "group_left", "group_right",
}  # fmt: skip
_NAME = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b")


def expressions(dashboard: dict[str, object]) -> list[str]:
    found = []
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            found.append(target["expr"])
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: the identifiers left once label matchers,
    strings, ranges, numbers and grouping label lists are taken out, and that are not
    functions or keywords."""
    stripped = re.sub(
        r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]|\b\d+(\.\d+)?\b'
        r"|\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
        " ",
        expr,
    )
    return {name for name in _NAME.findall(stripped) if name not in _FUNCTIONS_AND_WORDS}


def exported_names() -> set[str]:
    """Every sample name a proxy's /metrics can expose."""
    metrics = PrometheusMetrics()
    record_a_known_mix(metrics)
    metrics.left_after_commit()
    metrics.log_lines_dropped(1)
    return {name for name, _ in samples(metrics.exposition()[0])} | {"up"}


def test_every_grafana_query_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 8
    exported = exported_names()
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, exprs
    assert used <= exported, sorted(used - exported)
    # Every family of the exposition is on the dashboard in some form.
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in exported} - {"up"}
    shown = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in used}
    assert families <= shown, sorted(families - shown)


def test_the_metric_name_parser() -> None:
    histogram = "proxsmtpd_filter_duration_seconds_bucket"
    assert metric_names(
        f'histogram_quantile(0.99, sum by (le) (rate({histogram}{{job="x"}}[$__rate_interval])))'
    ) == {histogram}
    assert metric_names("sum by (status, peer) (x_total) or on(instance) y") == {"x_total", "y"}
    assert metric_names('sum(rate(a_total[5m])) / sum(rate(b_total{x="y"}[5m]))') == {
        "a_total",
        "b_total",
    }


def rule_expressions(text: str) -> list[str]:
    """The `expr:` of each rule of a rules file: one line, or a `|` block below it."""
    found: list[str] = []
    lines = text.splitlines()
    for n, line in enumerate(lines):
        key, _, value = line.strip().partition(":")
        if key != "expr":
            continue
        if value.strip() != "|":
            found.append(value.strip())
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for following in lines[n + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        found.append(" ".join(block))
    return found


def test_every_alert_rule_names_only_exported_metrics() -> None:
    exprs = rule_expressions((PROMETHEUS_DIR / "proxsmtpd.rules.yml").read_text())
    assert len(exprs) >= 8
    used = set().union(*(metric_names(e) for e in exprs))
    assert "proxsmtpd_messages_total" in used
    assert used <= exported_names(), sorted(used - exported_names())
