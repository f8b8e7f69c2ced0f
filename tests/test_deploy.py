"""deploy/: Prometheus, Grafana, compose, Kubernetes, Dockerfile and systemd files are valid and
agree with the code (metric names, ports, paths, shard assignment).

No Docker engine and no cluster here: the real tools that do run locally are used
(promtool, prometheus, kubectl kustomize, systemd-analyze), each skipped when absent.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamproxy.config import load_config
from streamproxy.metrics import METRIC_NAMES, NOT_PER_CAMERA, CameraMetrics, render_latest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamproxy.json"
ENTRYPOINT = ["streamproxy", "run", "--config", "/etc/streamproxy/streamproxy.yaml"]
MODEL_DIR = "/opt/streamproxy/models"


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/install-system-deps.sh --test installs it)")
    return path


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


# --- Prometheus ---------------------------------------------------------------------------------


def test_promtool_checks_config_and_rules() -> None:
    promtool = _tool("promtool")
    for cmd in (
        [promtool, "check", "config", "deploy/prometheus/prometheus.yml"],
        [promtool, "check", "rules", "deploy/prometheus/alerts.yml"],
        [promtool, "test", "rules", "deploy/prometheus/alerts_test.yml"],
    ):
        r = _run(cmd)
        assert r.returncode == 0, f"{' '.join(cmd[1:])}:\n{r.stdout}\n{r.stderr}"


def test_prometheus_scrapes_streamproxy_metrics_endpoint() -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["streamproxy"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["streamproxy:8080"]


def _exported_families() -> set[str]:
    CameraMetrics("deploy-test-cam")
    body = render_latest()[0].decode()
    return set(re.findall(r"^# TYPE (\S+) \S+$", body, flags=re.MULTILINE))


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords, strings removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range / subquery durations
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    e = re.sub(r"\$\w+", "", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def family_of(series: str, families: set[str]) -> str | None:
    """The exported family a series name belongs to (histograms: _bucket/_sum/_count)."""
    if series in families:
        return series
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series[: -len(suffix)] in families:
            return series[: -len(suffix)]
    return None


def test_promql_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (camera, le) (rate(streamproxy_added_latency_seconds_bucket"
        '{camera=~"$camera", reason!="x"}[$__rate_interval]))) / on (camera) group_left up offset 5m'
    )
    assert promql_metric_names(expr) == {"streamproxy_added_latency_seconds_bucket", "up"}
    fams = {"streamproxy_added_latency_seconds", "streamproxy_frames_in_total"}
    assert family_of("streamproxy_added_latency_seconds_count", fams) == "streamproxy_added_latency_seconds"
    assert family_of("streamproxy_frames_in_total", fams) == "streamproxy_frames_in_total"
    assert family_of("streamproxy_frames_in", fams) is None  # the counter's series end in _total


def test_alert_rules_name_only_exported_metrics() -> None:
    families = _exported_families() | {"up"}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in promql_metric_names(rule["expr"]):
                assert family_of(name, families), f"alert {rule['alert']}: unknown metric {name}"


# --- Grafana ----------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _dashboard()["panels"] for t in p.get("targets", [])]


def test_dashboard_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_dashboard", DEPLOY / "grafana" / "make_dashboard.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert DASHBOARD.read_text(encoding="utf-8") == mod.render(), (
        "deploy/grafana/dashboards/streamproxy.json is stale: run deploy/grafana/make_dashboard.py"
    )


def test_dashboard_queries_name_only_exported_metrics() -> None:
    families = _exported_families()
    used: set[str] = set()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            # label_values(<series selector>, <label>): only the selector names a metric.
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
            assert m, var["definition"]
            exprs.append((f"variable {var['name']}", m.group(1)))
    for title, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        for name in names:
            fam = family_of(name, families)
            assert fam is not None, f"panel {title!r}: {name} is not exported by streamproxy"
            used.add(fam)
    # Every streamproxy family has a place on the dashboard, except build info.
    unused = set(METRIC_NAMES) - used - {"streamproxy_build_info"}
    assert not unused, f"families with no panel: {sorted(unused)}"


def test_dashboard_has_the_panels_operators_need() -> None:
    d = _dashboard()
    assert d["uid"] == "streamproxy"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["camera"]["multi"] and variables["camera"]["includeAll"]
    exprs = "\n".join(e for _, e in _dashboard_exprs())
    for q in ("0.5", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (camera, le) (rate(streamproxy_added_latency_seconds_bucket"
            in exprs
        )
        assert (
            f"histogram_quantile({q}, sum by (camera, le) (rate(streamproxy_detector_seconds_bucket" in exprs
        )
    for needle in (
        "streamproxy_input_fps", "streamproxy_output_fps", "sum by (camera, reason) (rate(streamproxy_frames_dropped_total",
        "streamproxy_fail_closed_frames_total", "sum by (protocol) (streamproxy_viewers", "streamproxy_detector_cadence",
        "streamproxy_faces_detected_total", "streamproxy_tracks_active", "streamproxy_camera_up",
        "streamproxy_reconnects_total",
    ):  # fmt: skip
        assert needle in exprs, needle
    for _, expr in _dashboard_exprs():
        if expr.startswith("streamproxy_") or "(streamproxy_" in expr:
            assert 'camera=~"$camera"' in expr or promql_metric_names(expr) <= NOT_PER_CAMERA, expr
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/streamproxy.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = prov["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in mounts


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body, ctype = render_latest(self.headers.get("Accept", ""))
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _metrics_server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _MetricsHandler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _prom_query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            data: dict[str, Any] = json.load(r)
    except urllib.error.HTTPError as err:  # 400 carries the parse error as JSON
        data = json.load(err)
    return data


@pytest.mark.slow
def test_dashboard_queries_run_on_a_real_prometheus(tmp_path: Path) -> None:
    """A real Prometheus scrapes render_latest() on loopback; every panel query parses and the
    main ones return series for the camera."""
    prometheus = _tool("prometheus")
    m = CameraMetrics("promtest")
    m.set_state("live")
    with _metrics_server() as mport:
        pport = _free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "streamproxy", "static_configs": [{"targets": [f"127.0.0.1:{mport}"]}]}
                    ],
                }
            )
        )
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{pport}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # never read (a pipe left unread and unclosed: a ResourceWarning)
        )
        try:
            # Feed frames while Prometheus scrapes, so that rate() windows hold changing samples.
            deadline = time.monotonic() + 45
            ready = False
            while time.monotonic() < deadline:
                for _ in range(5):
                    m.frame_in()
                    m.frame_out(0.04)
                    m.detection(0.008, 1)
                m.drop("latency_budget")
                m.sent("rtsp", 10_000)
                time.sleep(0.2)
                with contextlib.suppress(OSError, ValueError):
                    res = _prom_query(
                        pport, 'count_over_time(streamproxy_frames_in_total{camera="promtest"}[30s])'
                    )
                    if res.get("status") == "success" and res["data"]["result"]:
                        ready = float(res["data"]["result"][0]["value"][1]) >= 4
                if ready:
                    break
            assert ready, "Prometheus did not scrape the metrics endpoint in 45 s"
            for title, expr in _dashboard_exprs():
                q = expr.replace("$__rate_interval", "10s").replace('=~"$camera"', '=~".*"')
                res = _prom_query(pport, q)
                assert res.get("status") == "success", f"{title}: {res.get('error')} in {q}"
                if "process_" in expr or "reconnects" in expr:
                    continue
                cams = {r["metric"].get("camera") for r in res["data"]["result"]}
                if "by (protocol)" in expr or promql_metric_names(expr) <= NOT_PER_CAMERA:
                    assert res["data"]["result"], f"{title}: no series for {q}"
                else:
                    assert "promtest" in cams, f"{title}: no series for the camera from {q}"
            p99 = _prom_query(
                pport,
                'histogram_quantile(0.99, sum by (le) (rate(streamproxy_added_latency_seconds_bucket{camera="promtest"}[10s])))',
            )
            assert 0.03 <= float(p99["data"]["result"][0]["value"][1]) <= 0.04
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# --- compose ------------------------------------------------------------------------------------


def test_compose_services_files_and_ports() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"streamproxy", "prometheus", "grafana"}
    sp = services["streamproxy"]
    assert (DEPLOY / sp["build"]["context"] / sp["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"compose mounts missing {src}"
    assert "./streamproxy.yaml:/etc/streamproxy/streamproxy.yaml:ro" in sp["volumes"]
    assert sp["read_only"] is True and sp["cap_drop"] == ["ALL"]
    cfg = load_config(DEPLOY / "streamproxy.yaml")
    ports = sp["ports"]
    assert f"{cfg.server.rtsp_port}:8554/tcp" in ports and f"{cfg.server.http_port}:8080/tcp" in ports
    udp = f"{cfg.server.rtp_port_min}-{cfg.server.rtp_port_max}"
    assert f"{udp}:{udp}/udp" in ports
    assert str(cfg.engine.detector.model_dir) == MODEL_DIR
    # Prometheus and Grafana have no auth of their own here: published on loopback only.
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])


# --- Kubernetes -----------------------------------------------------------------------------------


def _k8s_objects() -> dict[str, dict[str, Any]]:
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    objs: dict[str, dict[str, Any]] = {}
    for res in kust["resources"]:
        for doc in _yaml_docs(DEPLOY / "k8s" / res):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), res
            objs[doc["kind"]] = doc
    return objs


def _shard_count(sts: dict[str, Any]) -> int:
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    (count,) = [int(a.split("=", 1)[1]) for a in args if a.startswith("--shard-count=")]
    return count


def test_k8s_statefulset_shards_over_a_headless_service() -> None:
    objs = _k8s_objects()
    assert set(objs) == {"Namespace", "Service", "StatefulSet", "PodDisruptionBudget"}
    svc, sts = objs["Service"], objs["StatefulSet"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    spec = sts["spec"]
    assert spec["serviceName"] == svc["metadata"]["name"]
    labels = spec["template"]["metadata"]["labels"]
    for sel in (
        spec["selector"]["matchLabels"],
        svc["spec"]["selector"],
        objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert sel.items() <= labels.items()
    assert spec["replicas"] == _shard_count(sts), "spec.replicas and --shard-count must be equal"
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert "--shard-index=$(SHARD_INDEX)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert (
        env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"rtsp": 8554, "http": 8080}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/etc/streamproxy"]]["secret"]["secretName"] == "streamproxy-config"
    assert "/tmp" in mounts


def test_k8s_config_is_valid_and_every_camera_has_exactly_one_shard() -> None:
    from streamproxy.app import cameras_for_shard

    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    (gen,) = kust["secretGenerator"]
    (fname,) = gen["files"]
    cfg = load_config(DEPLOY / "k8s" / fname)
    assert str(cfg.engine.detector.model_dir) == MODEL_DIR
    n = _k8s_objects()["StatefulSet"]["spec"]["replicas"]
    shards = [[c.name for c in cameras_for_shard(cfg, i, n)] for i in range(n)]
    assigned = [name for s in shards for name in s]
    assert sorted(assigned) == sorted(c.name for c in cfg.cameras if c.enabled)


def test_readme_shard_table_matches_the_code() -> None:
    from streamproxy.app import cameras_for_shard

    cfg = load_config(DEPLOY / "k8s" / "streamproxy.yaml")
    n = _k8s_objects()["StatefulSet"]["spec"]["replicas"]
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([A-Za-z0-9_.-]+)` \| `streamproxy-(\d+)` \|", readme, flags=re.MULTILINE))
    expected = {c.name: str(i) for i in range(n) for c in cameras_for_shard(cfg, i, n)}
    assert rows == expected, "update the shard table in deploy/README.md"


def test_kubectl_kustomize_renders() -> None:
    kubectl = _tool("kubectl")
    r = _run([kubectl, "kustomize", "deploy/k8s"])
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Namespace", "Secret", "Service", "StatefulSet", "PodDisruptionBudget"}
    secret_name = kinds["Secret"]["metadata"]["name"]
    assert re.fullmatch(r"streamproxy-config-[a-z0-9]{10}", secret_name)
    vols = kinds["StatefulSet"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "secret": {"secretName": secret_name, "defaultMode": 0o440}} in vols
    assert all(d["metadata"].get("namespace") == "streamproxy" for d in docs if d["kind"] != "Namespace")


# --- Dockerfile --------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def test_dockerfile_builds_models_in_and_runs_unprivileged() -> None:
    instrs = _dockerfile()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for i, rest in instrs if i == "ARG" and "=" in rest}
    froms = [
        rest.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
        for i, rest in instrs
        if i == "FROM"
    ]
    assert froms and all(f == "python:3.11-slim-bookworm" for f in froms)
    runs = " ".join(rest for i, rest in instrs if i == "RUN")
    assert "pip install ." in runs
    assert "streamproxy models fetch" in runs
    envs = " ".join(rest for i, rest in instrs if i == "ENV")
    assert f"STREAMPROXY_MODEL_DIR={MODEL_DIR}" in envs
    (user,) = [rest for i, rest in instrs if i == "USER"]
    uid = user.split(":")[0].replace("${UID}", args.get("UID", ""))
    assert uid.isdigit() and int(uid) != 0
    k8s_uid = _k8s_objects()["StatefulSet"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert int(uid) == k8s_uid
    exposed = " ".join(rest for i, rest in instrs if i == "EXPOSE").split()
    assert {"8554/tcp", "8080/tcp", "30000-30999/udp"} <= set(exposed)
    (health,) = [rest for i, rest in instrs if i == "HEALTHCHECK"]
    assert "/healthz" in health
    (entry,) = [rest for i, rest in instrs if i == "ENTRYPOINT"]
    assert json.loads(entry) == ENTRYPOINT


def test_dockerfile_copies_exist_and_are_not_dockerignored() -> None:
    ignore_file = ROOT / ".dockerignore"
    ignored = [
        line.strip().lstrip("/")
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instr, rest in _dockerfile():
        if instr != "COPY" or rest.startswith("--from"):
            continue
        *srcs, _dest = rest.split()
        for src in srcs:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert src.rstrip("/") not in ignored, f"COPY {src}: excluded by .dockerignore"
    # What must never reach the image: the venv, git history, configs with credentials.
    for must in (".git", ".venv", "deploy/streamproxy.yaml"):
        assert must in ignored


# --- systemd -------------------------------------------------------------------------------------------


def _unit() -> dict[str, dict[str, list[str]]]:
    # configparser refuses repeated keys, which systemd allows (Environment=, SystemCallFilter=).
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (DEPLOY / "systemd" / "streamproxy.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_hardened_and_runs_the_venv() -> None:
    unit = _unit()
    assert set(unit) == {"Unit", "Service", "Install"}
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert svc["ExecStart"].startswith("/opt/streamproxy/.venv/bin/streamproxy run --config ")
    cred = svc["LoadCredential"].split(":", 1)
    assert cred[1] == "/etc/streamproxy/streamproxy.yaml"
    assert svc["ExecStart"].endswith(f"${{CREDENTIALS_DIRECTORY}}/{cred[0]}")
    assert svc["Restart"] == "on-failure"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the config (app.py)
    assert svc["ProtectSystem"] == "strict"
    assert svc["DynamicUser"] == "yes" and svc["NoNewPrivileges"] == "yes"
    assert svc["CapabilityBoundingSet"] == ""
    assert svc["CacheDirectory"] == "streamproxy"
    envs = dict(e.split("=", 1) for e in unit["Service"]["Environment"])
    assert envs["STREAMPROXY_MODEL_DIR"].startswith("/var/cache/streamproxy/")
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    sa = _tool("systemd-analyze")
    exe = Path(sys.executable).parent / "streamproxy"
    if not exe.exists():
        exe = Path(shutil.which("true") or "/bin/true")
    text = (DEPLOY / "systemd" / "streamproxy.service").read_text()
    # verify checks that the executables exist: point them at this checkout's.
    unit = tmp_path / "streamproxy.service"
    unit.write_text(text.replace("/opt/streamproxy/.venv/bin/streamproxy", str(exe)))
    r = _run([sa, "verify", str(unit)])
    assert r.returncode == 0 and "streamproxy.service" not in r.stderr, r.stderr
    r = _run([sa, "security", "--offline=true", str(unit)])
    if r.returncode != 0 and "offline" in r.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


# --- the set-up scripts ---------------------------------------------------------------------------


def test_the_demo_installs_only_what_it_needs() -> None:
    """scripts/demo.sh's Debian packages are the camera simulator's; browsers, Prometheus and the
    ffmpeg clients come only with --test (scripts/test.sh, CI)."""
    demo = _run(["bash", "scripts/install-system-deps.sh", "--list"])
    full = _run(["bash", "scripts/install-system-deps.sh", "--test", "--list"])
    assert demo.returncode == 0 and full.returncode == 0, demo.stderr + full.stderr
    demo_set, full_set = set(demo.stdout.split()), set(full.stdout.split())
    assert demo_set < full_set
    assert {"gir1.2-gst-rtsp-server-1.0", "gstreamer1.0-plugins-ugly", "python3-venv"} <= demo_set
    assert not demo_set & {"chromium", "chromium-driver", "firefox-esr", "prometheus", "ffmpeg"}
    assert {"chromium", "firefox-esr", "prometheus", "ffmpeg"} <= full_set
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert "install-system-deps.sh --test" in setup and "fetch-plaza-video.sh" in setup
    assert "setup.sh --test" in (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
