"""Renders deploy/helm/sluice with its default values and each override in
deploy/check/values-*.yaml, validates every manifest against the Kubernetes
schemas (kubernetes-validate, strict: unknown fields are errors), and checks
what the chart promises: probes on /health and /ready, a non-root, read-only
container, a grace period covering the drain, resources, the config and the
secret mounted. Writes each rendering's sluice.toml to OUT_DIR/<case>.toml so
the test can run `sluice check-config` on it.

Usage: check_chart.py CHART_DIR OUT_DIR; exit status 0 when every case passes.
"""

import copy
import pathlib
import sys

import kubernetes_validate
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from gotemplate import TemplateError, render_chart  # noqa: E402

KUBERNETES_VERSION = "1.30"
# Kinds from CRDs the schemas do not hold, with the fields each must have.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector.matchLabels", "spec.endpoints"],
}


def merged(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def field(doc, path):
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def load_chart(chart_dir):
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    chart = {key[0].upper() + key[1:]: value for key, value in meta.items()}
    templates = {
        str(p.relative_to(chart_dir / "templates")): p.read_text()
        for p in sorted((chart_dir / "templates").glob("*"))
    }
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    return chart, templates, values


def manifests(rendered):
    docs = []
    for name, text in sorted(rendered.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((name, doc))
    return docs


def check_case(case, chart, templates, values, out_dir):
    problems = []
    rendered = render_chart(templates, values, chart=chart)
    docs = manifests(rendered)
    by_kind = {}
    for name, doc in docs:
        kind = (doc.get("apiVersion"), doc.get("kind"))
        by_kind.setdefault(kind[1], []).append(doc)
        if kind in CUSTOM_KINDS:
            for path in CUSTOM_KINDS[kind]:
                if field(doc, path) in (None, [], {}):
                    problems.append(f"{name}: {kind[1]} lacks {path}")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name}: {kind[1]}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema for {kind}: {e}")

    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return problems + [f"expected one Deployment, got {len(deployments)}"]
    pod = deployments[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    expect = {
        "liveness probe on /health": field(container, "livenessProbe.httpGet.path") == "/health",
        "readiness probe on /ready": field(container, "readinessProbe.httpGet.path") == "/ready",
        "startup probe": field(container, "startupProbe.httpGet.path") == "/health",
        "runs as non-root": field(pod, "securityContext.runAsNonRoot") is True
        and (field(pod, "securityContext.runAsUser") or 0) > 0,
        "read-only root filesystem": field(container, "securityContext.readOnlyRootFilesystem") is True,
        "no privilege escalation": field(container, "securityContext.allowPrivilegeEscalation") is False,
        "all capabilities dropped": field(container, "securityContext.capabilities.drop") == ["ALL"],
        "memory limit set": bool(field(container, "resources.limits.memory")),
        "cpu request set": bool(field(container, "resources.requests.cpu")),
        "grace period covers drain and shutdown grace": pod["terminationGracePeriodSeconds"]
        > values["shutdownGraceSeconds"] + values["drainSeconds"],
        "preStop drain": field(container, "lifecycle.preStop.sleep.seconds") == values["drainSeconds"],
        "config mounted": any(m["mountPath"] == "/etc/sluice" for m in container["volumeMounts"]),
        "writable /tmp": any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]),
    }
    problems += [f"Deployment: {what}" for what, ok in expect.items() if not ok]

    secret_ref = container["envFrom"][0]["secretRef"]["name"]
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    if values["secrets"]["existingSecret"]:
        if secret_ref != values["secrets"]["existingSecret"] or secrets:
            problems.append("an existingSecret must be used as is, with no Secret rendered")
    elif secret_ref not in secrets:
        problems.append(f"envFrom names Secret {secret_ref!r}, which the chart does not render")
    elif values["redis"]["url"] and "SLUICE_REDIS_URL" not in secrets[secret_ref]["data"]:
        problems.append("redis.url is set but SLUICE_REDIS_URL is not in the Secret")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = by_kind["ConfigMap"][0]["data"]["sluice.toml"]
    if f'metrics_listen = "0.0.0.0:{ports["metrics"]}"' not in config:
        problems.append("the config's metrics_listen does not match the metrics port")
    (out_dir / f"{case}.toml").write_text(config)

    if values["autoscaling"]["enabled"]:
        hpa = by_kind.get("HorizontalPodAutoscaler", [])
        if not hpa or "replicas" in deployments[0]["spec"]:
            problems.append("autoscaling: an HPA and no fixed replica count expected")
    if values["serviceMonitor"]["enabled"] and not by_kind.get("ServiceMonitor"):
        problems.append("serviceMonitor.enabled but no ServiceMonitor rendered")
    return problems


def main():
    chart_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    chart, templates, defaults = load_chart(chart_dir)
    cases = {"defaults": {
        "secrets": {
            "keyPepper": "pepper-for-the-test",
            "adminKey": "admin-for-the-test",
            "apiKey": "client-key-for-the-test",
        }
    }}
    for path in sorted(pathlib.Path(__file__).parent.glob("values-*.yaml")):
        cases[path.stem] = yaml.safe_load(path.read_text())
    failed = False
    for case, override in cases.items():
        try:
            problems = check_case(case, chart, templates, merged(defaults, override), out_dir)
        except (TemplateError, KeyError, TypeError, yaml.YAMLError) as e:
            problems = [f"rendering failed: {type(e).__name__}: {e}"]
        print(f"{case}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  - {problem}")
        failed |= bool(problems)

    # Rendering without the required secrets must fail, as `helm install` does.
    try:
        render_chart(templates, defaults, chart=chart)
        print("missing secrets: FAILED (rendered without secrets.keyPepper)")
        failed = True
    except TemplateError as e:
        print(f"missing secrets: ok (refused: {e})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
