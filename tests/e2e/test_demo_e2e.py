"""The README's first command: `mlsidecar demo` shows real ml_* series within seconds."""

import subprocess
import sys

from tests.harness import free_port, parse, total, wait_for
import urllib.request

FAMILIES = ("ml_predictions_total", "ml_prediction_latency_seconds_count", "ml_prediction_confidence_score_count",
            "ml_model_accuracy_score", "ml_training_loss", "ml_training_current_epoch",
            "ml_training_batch_duration_seconds_count", "ml_pipeline_records_processed_total",
            "ml_pipeline_queue_size", "ml_pipeline_data_freshness_seconds", "ml_process_resident_memory_bytes")


def test_demo_serves_live_ml_metrics(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlsidecar", "demo", "--listen", f"127.0.0.1:{port}",
                             "--state-dir", str(tmp_path / "s"), "--duration", "30", "--rate", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                s = parse(r.read().decode())
            missing = [f for f in FAMILIES if not any(k[0] == f for k in s)]
            return s if not missing else None
        s = wait_for(scrape, timeout=25, what="every demo family on /metrics")
        assert total(s, "ml_predictions_total") > 0
        assert total(s, "ml_process_resident_memory_bytes") > 0
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
