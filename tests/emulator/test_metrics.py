"""What the workspace reports: Prometheus metrics of the real state, and its GCP clusters."""

from __future__ import annotations


def test_metrics_count_the_real_state(api):
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    failing = {"imageName": "opencv-htc-tutorial:v1", "commands": ["python", "-c", "raise SystemExit(1)"]}
    api.submit(project_id, task_id, failing, batch_size=2)
    api.wait_terminal(project_id, task_id, 2)
    response = api.get("/htc/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert f'htc_jobs{{project="{project_id}",status="FAILED"}} 2' in response.text.splitlines()


def test_gcp_clusters_follow_the_configured_regions(api):
    clusters = api.ok("GET", "/htc/gcp/clusters/emulator-workspace")["clusters"]
    gcp_regions = [r["region"] for r in api.ok("GET", "/htc/regions", params={"cloudProvider": "GCP"})]
    assert sorted(c["region"] for c in clusters) == sorted(gcp_regions)
    assert api.get("/htc/gcp/clusters/someone-else").status_code == 404
